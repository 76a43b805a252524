//! The application handler: the routing table of the client listener and the WebSocket
//! endpoints. Chat lives behind `[ws] path`; `[ws] echo_path` echoes every message.

use crate::config::Config;
use crate::http::{self, Request, Response, RouteMatch, Router};
use crate::net::{CloseInfo, ConnId, Ctx, Handler, Message, Reply, Upgrade};
use serde_json::json;
use std::collections::HashMap;
use std::time::Instant;

/// What a WebSocket connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Echo,
}

/// HTTP routes of the client listener.
#[derive(Clone, Copy, Debug)]
enum Route {
    Health,
}

/// Completions the application's worker jobs send back.
pub enum Completion {}

pub struct App {
    config: Config,
    started: Instant,
    routes: Router<Route>,
    endpoints: HashMap<ConnId, Endpoint>,
}

impl App {
    pub fn new(config: Config) -> App {
        let mut routes = Router::new();
        routes.add("GET", "/healthz", Route::Health);
        App {
            config,
            started: Instant::now(),
            routes,
            endpoints: HashMap::new(),
        }
    }

    fn endpoint_of(&self, path: &str) -> Option<Endpoint> {
        if path == self.config.ws.path {
            Some(Endpoint::Chat)
        } else if !self.config.ws.echo_path.is_empty() && path == self.config.ws.echo_path {
            Some(Endpoint::Echo)
        } else {
            None
        }
    }

    fn health(&self, ctx: &dyn Ctx<Completion>) -> Response {
        Response::json(
            200,
            &json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": self.started.elapsed().as_secs(),
                "connections": ctx.connection_count(),
            }),
        )
    }
}

impl Handler for App {
    type Completion = Completion;

    fn is_websocket_path(&self, path: &str) -> bool {
        self.endpoint_of(path).is_some()
    }

    fn on_request(&mut self, ctx: &mut dyn Ctx<Completion>, _conn: ConnId, req: Request) -> Reply {
        match self.routes.find(&req.method, &req.path) {
            RouteMatch::Found { handler, .. } => match handler {
                Route::Health => Reply::Now(self.health(ctx)),
            },
            RouteMatch::NotFound => Reply::Now(Response::error(404, "no such endpoint")),
            RouteMatch::MethodNotAllowed { allow } => Reply::Now(
                Response::error(405, "method not allowed").with_header("Allow", &allow.join(", ")),
            ),
        }
    }

    fn on_upgrade(
        &mut self,
        _ctx: &mut dyn Ctx<Completion>,
        _conn: ConnId,
        req: &Request,
    ) -> Upgrade {
        match self.endpoint_of(&req.path) {
            Some(_) => Upgrade::Accept,
            None => Upgrade::Reject(http::Response::error(404, "no such endpoint")),
        }
    }

    fn on_open(&mut self, _ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) {
        if let Some(endpoint) = self.endpoint_of(&req.path) {
            self.endpoints.insert(conn, endpoint);
        }
    }

    fn on_message(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, message: Message<'_>) {
        match self.endpoints.get(&conn) {
            Some(Endpoint::Echo) => {
                match message {
                    Message::Text(t) => ctx.send_text(conn, t),
                    Message::Binary(b) => ctx.send_binary(conn, b),
                };
            }
            Some(Endpoint::Chat) => {
                ctx.send_text(
                    conn,
                    r#"{"cmd":"error","code":501,"msg":"chat commands are not enabled in this build"}"#,
                );
            }
            None => {}
        }
    }

    fn on_close(&mut self, _ctx: &mut dyn Ctx<Completion>, conn: ConnId, _info: CloseInfo) {
        self.endpoints.remove(&conn);
    }

    fn on_completion(&mut self, _ctx: &mut dyn Ctx<Completion>, completion: Completion) {
        match completion {}
    }

    fn on_timer(&mut self, _ctx: &mut dyn Ctx<Completion>, _token: u64) {}
}
