//! The router: the client listener's routes and WebSocket endpoints, and the reactor's
//! [`Handler`]. It owns nothing but the routing table and which endpoint each WebSocket is on;
//! every request is handed to the feature that answers it, with the state owner (`rt::App`).
//!
//! Layer: the top of the library (only `server`, the composition root, is above it).

pub mod http_api;
pub mod pages;
pub mod server_api;
pub mod wechat_callback;

use crate::feed::metrics::METRICS;
use crate::feed::Topic;
use crate::http::{Request, Response, RouteMatch, Router};
use crate::net::{CloseInfo, ConnId, ConnMap, Ctx, Handler, Message, Reply, Upgrade};
use crate::rt::{App, Completion};
use pages::Pages;
use serde_json::json;

/// What a WebSocket connection is for (the order of `feed::metrics::ENDPOINTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    /// `/ws/qrlogin`: a browser waiting for an official-account QR-code scan.
    QrLogin,
    Echo,
    /// `/admin/subscribe` on the admin listener.
    Subscriber,
}

impl Endpoint {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        crate::feed::metrics::ENDPOINTS[self.index()]
    }
}

/// The WebSocket path of QR-code scan login.
pub const QRLOGIN_PATH: &str = "/ws/qrlogin";

/// HTTP routes of the client listener.
#[derive(Clone, Copy, Debug)]
enum Route {
    Health,
    DoLogin,
    ServerApi,
    Upload,
    File,
    Me,
    UpdateMe,
    Logout,
    WxLogin,
    WxDecrypt,
    WxCallback,
    WxCallbackDefault,
    Visitor,
    VisitorConvert,
    DemoLogin,
}

/// Bytes an open WebSocket's endpoint takes in the router's table (reserved up front, so not
/// seen by an allocation count; tests/memory_profile.rs adds it).
pub const ENDPOINT_SLOT_BYTES: usize = ConnMap::<Endpoint>::SLOT_BYTES;

/// The reactor's handler: the routing table around the state owner.
pub struct Front {
    pub app: App,
    routes: Router<Route>,
    /// Each open WebSocket's endpoint, dense by slab key (a slot of 8 bytes per connection).
    endpoints: ConnMap<Endpoint>,
    pages: Pages,
}

impl Front {
    /// The router around a state owner the composition root has built.
    pub fn new(app: App) -> Front {
        let max_connections = app.config.server.max_connections;
        let mut routes = Router::new();
        routes.add("GET", "/healthz", Route::Health);
        routes.add("POST", "/api/doLogin", Route::DoLogin);
        routes.add(
            "POST",
            "/index.php/online_chat/chat/doLogin",
            Route::DoLogin,
        );
        routes.add("POST", "/api/server/{action}", Route::ServerApi);
        routes.add("POST", "/api/upload", Route::Upload);
        routes.add("GET", "/files/{name}", Route::File);
        routes.add("GET", "/api/me", Route::Me);
        routes.add("POST", "/api/me", Route::UpdateMe);
        routes.add("POST", "/api/logout", Route::Logout);
        routes.add("POST", "/api/wx/login", Route::WxLogin);
        routes.add("POST", "/api/wx/decrypt", Route::WxDecrypt);
        routes.add("POST", "/api/service/visitor", Route::Visitor);
        routes.add("POST", "/api/demo/login", Route::DemoLogin);
        routes.add(
            "POST",
            "/api/service/visitor/convert",
            Route::VisitorConvert,
        );
        for method in ["GET", "POST"] {
            routes.add(method, "/wechat/{app}/callback", Route::WxCallback);
            routes.add(method, "/wechat/callback", Route::WxCallbackDefault);
        }
        let pages = Pages::new(&app.config);
        Front {
            app,
            routes,
            endpoints: ConnMap::for_connections(max_connections),
            pages,
        }
    }

    fn endpoint_of(&self, path: &str) -> Option<Endpoint> {
        let ws = &self.app.config.ws;
        if path == ws.path {
            Some(Endpoint::Chat)
        } else if !ws.echo_path.is_empty() && path == ws.echo_path {
            Some(Endpoint::Echo)
        } else if path == QRLOGIN_PATH {
            Some(Endpoint::QrLogin)
        } else {
            None
        }
    }
}

/// 200 `{"status":"ok",..}`; with the Redis bus, its round trip too, and 503
/// `{"status":"unhealthy","reason":..}` when the bus has not round-tripped within its bound.
fn health(app: &App, ctx: &dyn Ctx<Completion>) -> Response {
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": app.started.elapsed().as_secs(),
        "connections": ctx.connection_count(),
    });
    let mut status = 200;
    if let Some(bus) = &app.bus {
        let h = bus.health();
        body["bus"] = json!({
            "last_read_age_ms": h.last_read_age.map(|d| d.as_millis() as u64),
            "round_trip_ms": h.round_trip.map(|d| d.as_secs_f64() * 1000.0),
            "round_trip_age_ms": h.round_trip_age.as_millis() as u64,
        });
        if let Some(reason) = h.problem {
            status = 503;
            body["status"] = json!("unhealthy");
            body["reason"] = json!(reason);
        }
    }
    Response::json(status, &body)
}

/// A login refused at once (bad request, bad sign, stale time) is a failed login too.
fn refused_login(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    method: &'static str,
    reply: Reply,
) -> Reply {
    if let Reply::Now(resp) = &reply {
        app.feed.login_response(ctx, conn, method, resp);
    }
    reply
}

/// Tells systemd's watchdog the reactor is alive, then again after `every`: sent from the
/// loop itself, so a stuck loop stops the pings and systemd restarts the service.
fn watchdog(app: &mut App, ctx: &mut dyn Ctx<Completion>, every: std::time::Duration) {
    crate::sd_notify::notify("WATCHDOG=1");
    app.after(ctx, every, move |app, ctx| watchdog(app, ctx, every));
}

impl Handler for Front {
    type Completion = Completion;

    fn is_websocket_path(&self, path: &str) -> bool {
        self.endpoint_of(path).is_some() || path == crate::admin::SUBSCRIBE_PATH
    }

    fn on_request(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: Request) -> Reply {
        if ctx.listener_of(conn) == Some(crate::admin::ADMIN_LISTENER) {
            return crate::admin::on_request(&mut self.app, ctx, conn, &req);
        }
        match self.routes.find(&req.method, &req.path) {
            RouteMatch::Found { handler, params } => match *handler {
                Route::Upload => http_api::upload(&mut self.app, ctx, conn, req),
                Route::File => {
                    let name = params
                        .iter()
                        .find(|(k, _)| k == "name")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    http_api::serve_file(&mut self.app, ctx, conn, &name)
                }
                Route::Health => Reply::Now(health(&self.app, ctx)),
                Route::Me => http_api::me(&mut self.app, ctx, conn, &req),
                Route::UpdateMe => http_api::update_me(&mut self.app, ctx, conn, &req),
                Route::Logout => http_api::logout(&mut self.app, ctx, conn, &req),
                Route::WxLogin => {
                    let reply = crate::login::wechat::login(&mut self.app, ctx, conn, &req);
                    refused_login(&mut self.app, ctx, conn, "wx", reply)
                }
                Route::WxDecrypt => crate::login::wechat::decrypt(&mut self.app, ctx, conn, &req),
                Route::WxCallback => {
                    let name = params
                        .iter()
                        .find(|(k, _)| k == "app")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    wechat_callback::handle(&mut self.app, ctx, conn, &req, Some(&name))
                }
                Route::WxCallbackDefault => {
                    wechat_callback::handle(&mut self.app, ctx, conn, &req, None)
                }
                Route::DoLogin => {
                    let reply = crate::login::dologin::do_login(&mut self.app, ctx, conn, &req);
                    refused_login(&mut self.app, ctx, conn, "dologin", reply)
                }
                Route::Visitor => {
                    let reply = crate::chat::visitor::create(&mut self.app, ctx, conn, &req);
                    refused_login(&mut self.app, ctx, conn, "visitor", reply)
                }
                Route::VisitorConvert => {
                    crate::chat::visitor::convert_request(&mut self.app, ctx, conn, &req)
                }
                Route::DemoLogin => {
                    let reply = crate::login::demo::login(&mut self.app, ctx, conn, &req);
                    refused_login(&mut self.app, ctx, conn, "demo", reply)
                }
                Route::ServerApi => {
                    let action = params
                        .iter()
                        .find(|(k, _)| k == "action")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    server_api::handle(&mut self.app, ctx, conn, &req, &action)
                }
            },
            RouteMatch::NotFound if self.pages.serves(&req) => {
                self.pages.serve(&mut self.app, ctx, conn, &req.path)
            }
            RouteMatch::NotFound => Reply::Now(Response::error(404, "no such endpoint")),
            RouteMatch::MethodNotAllowed { allow } => Reply::Now(
                Response::error(405, "method not allowed").with_header("Allow", &allow.join(", ")),
            ),
        }
    }

    fn on_upgrade(
        &mut self,
        ctx: &mut dyn Ctx<Completion>,
        conn: ConnId,
        req: &Request,
    ) -> Upgrade {
        if ctx.listener_of(conn) == Some(crate::admin::ADMIN_LISTENER) {
            return crate::admin::on_upgrade(&self.app, ctx, conn, req);
        }
        match self.endpoint_of(&req.path) {
            Some(Endpoint::QrLogin) if crate::login::qr::app_for(&self.app, req).is_none() => {
                Upgrade::Reject(Response::error(
                    404,
                    "no such official account (name it with ?app= when several are configured)",
                ))
            }
            Some(_) => Upgrade::Accept,
            None => Upgrade::Reject(Response::error(404, "no such endpoint")),
        }
    }

    fn on_open(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) {
        let endpoint = if ctx.listener_of(conn) == Some(crate::admin::ADMIN_LISTENER) {
            Endpoint::Subscriber
        } else {
            match self.endpoint_of(&req.path) {
                Some(e) => e,
                None => return,
            }
        };
        self.endpoints.insert(conn, endpoint);
        self.app.websockets[endpoint.index()] += 1;
        METRICS.ws_opened[endpoint.index()].inc();
        if endpoint != Endpoint::Subscriber {
            let peer = ctx.peer_addr(conn);
            let trusted = &self.app.config.http.trusted_proxies;
            self.app.feed.emit(ctx, Topic::Connection, || {
                json!({
                    "event": "open",
                    "conn": conn.to_string(),
                    "endpoint": endpoint.name(),
                    "peer": peer.map(|p| p.to_string()),
                    // Behind nginx: the client's own address, as a trusted proxy names it.
                    "client": peer.map(|p| crate::http::client_ip(p.ip(), req, trusted).to_string()),
                })
            });
        }
        match endpoint {
            Endpoint::Chat => crate::chat::on_open(&mut self.app, ctx, conn, req),
            Endpoint::QrLogin => crate::login::qr::on_open(&mut self.app, ctx, conn, req),
            Endpoint::Subscriber => crate::admin::on_open(&mut self.app, conn),
            Endpoint::Echo => {}
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
            Some(Endpoint::Chat) => crate::chat::on_message(&mut self.app, ctx, conn, message),
            Some(Endpoint::Subscriber) => {
                crate::admin::on_message(&mut self.app, ctx, conn, message)
            }
            // The browser only listens; anything it says is ignored.
            Some(Endpoint::QrLogin) | None => {}
        }
    }

    fn on_close(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, info: CloseInfo) {
        let Some(endpoint) = self.endpoints.remove(&conn) else {
            return;
        };
        self.app.websockets[endpoint.index()] -= 1;
        METRICS.closed(info.code);
        let uid = match endpoint {
            Endpoint::Chat => crate::chat::on_close(&mut self.app, ctx, conn),
            Endpoint::QrLogin => {
                crate::login::qr::on_close(&mut self.app, ctx, conn);
                None
            }
            Endpoint::Subscriber => {
                crate::admin::on_close(&mut self.app, conn);
                return;
            }
            Endpoint::Echo => None,
        };
        if info.code == crate::ws::close_code::POLICY {
            // The reactor closes slow consumers (and oversize queues) with 1008.
            self.app.feed.emit(ctx, Topic::Error, || {
                json!({
                    "kind": "connection_closed",
                    "conn": conn.to_string(),
                    "endpoint": endpoint.name(),
                    "uid": uid,
                    "code": info.code,
                    "msg": info.reason,
                })
            });
        }
        self.app.feed.emit(ctx, Topic::Connection, || {
            json!({
                "event": "close",
                "conn": conn.to_string(),
                "endpoint": endpoint.name(),
                "uid": uid,
                "code": info.code,
                "reason": info.reason,
            })
        });
    }

    fn on_completion(&mut self, ctx: &mut dyn Ctx<Completion>, completion: Completion) {
        completion.run(&mut self.app, ctx);
    }

    /// Every timer is an [`App::after`] closure.
    fn on_timer(&mut self, ctx: &mut dyn Ctx<Completion>, token: u64) {
        self.app.fire(ctx, token);
    }

    fn on_start(&mut self, ctx: &mut dyn Ctx<Completion>) {
        // The listeners are open and the loop is about to run: ready for systemd (Type=notify).
        crate::sd_notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        if let Some(every) = crate::sd_notify::watchdog_interval() {
            watchdog(&mut self.app, ctx, every);
        }
        crate::admin::start(&mut self.app, ctx);
        // The periodic purge of idle visitors ([service] visitor_purge_after_s).
        crate::chat::visitor::start_purge(&mut self.app, ctx);
    }

    fn on_shutdown(&mut self, ctx: &mut dyn Ctx<Completion>) {
        crate::sd_notify::notify("STOPPING=1");
        crate::chat::on_shutdown(&mut self.app, ctx);
    }

    fn has_pending_work(&self) -> bool {
        self.app.in_flight > 0
    }
}

#[cfg(test)]
mod tests {
    //! The handler driven through the in-memory backend: no sockets, a manual clock.
    use super::*;
    use crate::auth;
    use crate::config::Config;
    use crate::net::memory::Driver;
    use std::time::Duration;

    fn request(path: &str, query: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            http_minor: 1,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn driver(dir: &std::path::Path) -> Driver<Front> {
        let mut config = Config::default();
        config.server.data_dir = dir.to_path_buf();
        config.ws.echo_path = "/echo".into();
        config.chat.auth_timeout_s = 5;
        Driver::build(|notifier| crate::server::handler(config, notifier).unwrap())
    }

    #[test]
    fn echo_and_auth_timeout_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(dir.path());
        let echo = d.open(request("/echo", "")).unwrap();
        d.text(echo, "hi");
        assert_eq!(d.take_sent(echo), vec!["hi"]);
        let chat = d.open(request("/ws", "")).unwrap();
        d.text(chat, r#"{"cmd":"conversations","req_id":1}"#);
        let sent = d.take_sent(chat);
        assert!(sent[0].contains("\"code\":401"), "{sent:?}");
        d.advance(Duration::from_secs(4));
        assert!(d.record(chat).unwrap().closed.is_none());
        d.advance(Duration::from_secs(2));
        assert_eq!(
            d.record(chat).unwrap().closed.as_ref().map(|c| c.0),
            Some(4002)
        );
        assert!(d.open(request("/nope", "")).is_err());
    }

    #[test]
    fn token_auth_completes_through_a_worker() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(dir.path());
        let token = auth::new_token().unwrap();
        d.handler
            .app
            .backends
            .tokens
            .put(&auth::token_hash(&token), 42, 60)
            .unwrap();
        let c = d.open(request("/ws", &format!("token={token}"))).unwrap();
        assert_eq!(d.complete(1, Duration::from_secs(5)), 1);
        assert_eq!(
            d.take_sent(c),
            vec![r#"{"cmd":"auth","code":200,"data":{"uid":42}}"#]
        );
        assert!(d.handler.app.chat.is_online(42));
        d.disconnect(c, 1000);
        assert!(!d.handler.app.chat.is_online(42));
    }
}
