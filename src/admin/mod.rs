//! The admin listener: info topics for subscribers (WebSocket `/admin/subscribe`), Prometheus
//! metrics (`GET /metrics`) and live figures (`GET /status`, which `server status` prints), and
//! the client side of both (`client`, `format`: the `subscriber` CLI and `server status`). The
//! topics and their events are the feed's (`feed/`); this is its front door.
//!
//! Layer: beside `chat`, above the state owner (`rt`).
//!
//! Access: peers on loopback need no token; every other peer must send
//! `Authorization: Bearer <[admin] token>` (and a token that is sent must be right).

pub mod client;
pub mod format;

use crate::feed::metrics::{self, Gauges, METRICS};
pub use crate::feed::Subscription;
use crate::feed::Topic;
use crate::http::{Request, Response};
use crate::net::{ConnId, Ctx, Message, Reply, Upgrade};
use crate::proto::{self, code};
use crate::rt::{App, Completion};
use serde_json::{json, Value};
use std::time::Duration;

/// The admin listener's index in the reactor (the client listener is 0).
pub const ADMIN_LISTENER: usize = 1;
/// The subscribers' WebSocket path (admin listener only).
pub const SUBSCRIBE_PATH: &str = "/admin/subscribe";
/// Topic specs one subscriber may hold.
const MAX_SPECS: usize = 16;

/// Runs when the reactor starts: the periodic `serverInfo` tick.
pub fn start(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let every = Duration::from_secs(app.config.admin.server_info_every_s);
    app.after(ctx, every, tick);
}

/// Who may use the admin listener (see the module doc).
fn authorized(app: &App, ctx: &dyn Ctx<Completion>, conn: ConnId, req: &Request) -> bool {
    let loopback = ctx.peer_addr(conn).is_some_and(|p| p.ip().is_loopback());
    let token = &app.config.admin.token;
    match req.bearer() {
        Some(sent) if !token.is_empty() => {
            crate::auth::constant_time_eq(sent.as_bytes(), token.as_bytes())
        }
        // A token sent to a server that has none: fine from loopback.
        Some(_) | None => loopback,
    }
}

/// The periodic tick: rates for `/status` and, when selected, the `serverInfo` event.
fn tick(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    app.rates = app.rates.next(ctx.now());
    report_cluster(app, ctx);
    if app.feed.wants(Topic::ServerInfo) {
        let info = server_info(app, ctx);
        app.feed.publish(ctx, Topic::ServerInfo, info);
    }
    start(app, ctx);
}

/// Publishes this node's figures and reads the cluster's (on a worker: Redis with several
/// nodes). A node that stops reporting drops out of the totals after three ticks.
fn report_cluster(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let node = app.node_id.clone();
    let connections = ctx.connection_count() as u64;
    let ttl = Duration::from_secs(app.config.admin.server_info_every_s.max(1) * 3);
    app.job(
        ctx,
        move |b| b.presence.report(&node, connections, ttl),
        |app, _ctx, r| match r {
            Ok(figures) => app.cluster = Some(figures),
            Err(e) => log::warn!("cluster figures: {e}"),
        },
    );
}

/// The node running the customer-service desk and the consultations' clocks: the desk lease's
/// holder as this node last read it (null until its first read); without a bus, this node.
fn desk_node(app: &App) -> Value {
    if app.chat.role.mine {
        json!(app.node_id)
    } else {
        json!(app.chat.role.owner)
    }
}

/// The cluster part of `serverInfo` and `/status`: totals and every node's share.
fn cluster_json(app: &App, g: &Gauges) -> Value {
    match &app.cluster {
        Some(c) => json!({
            "nodes": c.nodes.len(),
            "desk_node": desk_node(app),
            "users_online": app.cluster_users_online(),
            "connections": c.connections(),
            "by_node": c.nodes.iter().map(|n| json!({
                "node": n.node,
                "users_online": n.users_online,
                "connections": n.connections,
            })).collect::<Vec<_>>(),
        }),
        // Before the first tick: this node alone.
        None => json!({
            "nodes": 1,
            "desk_node": desk_node(app),
            "users_online": g.users_online,
            "connections": g.connections,
            "by_node": [{ "node": app.node_id, "users_online": g.users_online, "connections": g.connections }],
        }),
    }
}

/// The live figures: the `serverInfo` event and `GET /status`.
pub fn server_info(app: &App, ctx: &dyn Ctx<Completion>) -> Value {
    let g = gauges(app, ctx);
    let t = app.rates;
    json!({
        "node": app.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": g.uptime_seconds,
        "connections": g.connections,
        "websockets": g.websockets.iter().sum::<u64>(),
        "users_online": g.users_online,
        "subscribers": g.websockets[3],
        "msgs_in_per_s": round1(t.in_per_s),
        "msgs_out_per_s": round1(t.out_per_s),
        "messages_total": METRICS.messages_total(),
        "persister_queue": g.persister_queue,
        "persister_lag_ms": round1(g.persister_lag_seconds * 1000.0),
        "worker_queue": g.worker_queue,
        "jobs_in_flight": g.jobs_in_flight,
        "service_queue": g.service_queue,
        "consultations": g.consultations_running,
        "rss_bytes": g.resident_memory_bytes,
        "realtime_priority": realtime_json(app.config.server.realtime_priority),
        "cluster": cluster_json(app, &g),
    })
}

/// What `[server] realtime_priority` gave the two threads on every message's path (0: normal
/// scheduling, also when the process lacked the right and logged a warning), and the setting
/// this process runs with (`configured`: its file and environment at its start, which the
/// `server status` that asks need not share).
fn realtime_json(configured: u8) -> Value {
    let (reactor, persister) = crate::rt::priority::taken();
    json!({ "reactor": reactor, "persister": persister, "configured": configured })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn gauges(app: &App, ctx: &dyn Ctx<Completion>) -> Gauges {
    let (persister_queue, lag) = app.persister_load();
    Gauges {
        connections: ctx.connection_count() as u64,
        websockets: app.websockets,
        users_online: app.chat.users_online() as u64,
        persister_queue: persister_queue as u64,
        persister_lag_seconds: lag.as_secs_f64(),
        worker_queue: app.worker_queue() as u64,
        jobs_in_flight: app.in_flight as u64,
        service_queue: app.chat.service_queue_len() as u64,
        consultations_running: app.chat.consultations_live() as u64,
        resident_memory_bytes: metrics::resident_memory_bytes(),
        uptime_seconds: app.started.elapsed().as_secs(),
        start_time_seconds: app.started_unix_s,
        bus: app.bus.as_ref().map(|b| {
            let h = b.health();
            metrics::BusGauges {
                last_read_age_seconds: h.last_read_age.map_or(-1.0, |d| d.as_secs_f64()),
                round_trip_seconds: h.round_trip.map_or(-1.0, |d| d.as_secs_f64()),
                round_trip_age_seconds: h.round_trip_age.as_secs_f64(),
                healthy: h.problem.is_none(),
            }
        }),
    }
}

/// A plain HTTP request on the admin listener.
pub fn on_request(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
) -> Reply {
    if !authorized(app, ctx, conn, req) {
        return Reply::Now(unauthorized());
    }
    let resp = match (req.method.as_str(), req.path.as_str()) {
        ("GET" | "HEAD", "/metrics") => Response::new(200).with_body(
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&gauges(app, ctx), &app.node_id).into_bytes(),
        ),
        ("GET" | "HEAD", "/status") => Response::json(200, &server_info(app, ctx)),
        (_, "/metrics" | "/status") => {
            Response::error(405, "method not allowed").with_header("Allow", "GET, HEAD")
        }
        _ => Response::error(
            404,
            "no such admin endpoint: GET /metrics, GET /status, WebSocket /admin/subscribe",
        ),
    };
    Reply::Now(resp)
}

fn unauthorized() -> Response {
    Response::error(
        401,
        "admin access from this address needs Authorization: Bearer <[admin] token>",
    )
    .with_header("WWW-Authenticate", "Bearer")
}

/// A WebSocket upgrade on the admin listener.
pub fn on_upgrade(app: &App, ctx: &dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Upgrade {
    if req.path != SUBSCRIBE_PATH {
        return Upgrade::Reject(Response::error(404, "no such endpoint"));
    }
    if !authorized(app, ctx, conn, req) {
        return Upgrade::Reject(unauthorized());
    }
    if app.feed.subscriber_count() >= app.config.admin.max_subscribers {
        return Upgrade::Reject(Response::error(
            503,
            "too many subscribers ([admin] max_subscribers)",
        ));
    }
    Upgrade::Accept
}

pub fn on_open(app: &mut App, conn: ConnId) {
    app.feed.add_subscriber(conn);
}

pub fn on_close(app: &mut App, conn: ConnId) {
    app.feed.remove_subscriber(conn);
}

/// A subscriber's command: `{"cmd":"subscribe","topics":["message;uid=1","serverInfo"]}`
/// replaces its specs; `ping` is answered.
pub fn on_message(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    message: Message<'_>,
) {
    let Some(cmd) = crate::rt::reply::command_of(ctx, conn, message) else {
        return;
    };
    let reply = match cmd.cmd.as_str() {
        "ping" => Ok(json!({ "time": crate::store::now_ms() })),
        "subscribe" => subscribe(app, conn, cmd.fields.get("topics")),
        other => Err(format!("unknown cmd {other:?}: subscribe or ping")),
    };
    let text = match reply {
        Ok(data) => proto::ok(&cmd.cmd, &cmd.req_id, &data),
        Err(why) => proto::fail(&cmd.cmd, &cmd.req_id, code::BAD_REQUEST, &why),
    };
    ctx.send_text(conn, &text);
}

fn subscribe(app: &mut App, conn: ConnId, topics: Option<&Value>) -> Result<Value, String> {
    let specs: Vec<&str> = match topics {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or("topics must be strings"))
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => {
            return Err("topics must be a list such as [\"message;uid=1\", \"serverInfo\"]".into())
        }
    };
    if specs.is_empty() || specs.len() > MAX_SPECS {
        return Err(format!("give 1 to {MAX_SPECS} topic specs"));
    }
    let parsed = specs
        .iter()
        .map(|s| Subscription::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if !app.feed.set_specs(conn, parsed) {
        return Err("not a subscriber connection".into());
    }
    Ok(json!({
        "topics": specs,
        "message_bodies": app.feed.message_bodies(),
        "server_info_every_s": app.config.admin.server_info_every_s,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::net::memory::Driver;

    fn status_request(auth: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: "/status".into(),
            query: String::new(),
            http_minor: 1,
            headers: auth
                .map(|a| vec![("Authorization".to_string(), a.as_bytes().to_vec())])
                .unwrap_or_default(),
            body: Vec::new(),
        }
    }

    fn status_of(d: &mut Driver<crate::app::Front>, peer: &str, auth: Option<&str>) -> u16 {
        let conn = d.request_from(peer.parse().unwrap(), ADMIN_LISTENER, status_request(auth));
        d.ctx.conns[&conn].responses[0].status
    }

    #[test]
    fn other_hosts_need_the_token_and_loopback_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        config.admin.token = "0123456789abcdef".into();
        let mut d = Driver::build(|n| crate::server::handler(config, n).unwrap());
        assert_eq!(status_of(&mut d, "10.1.2.3:5000", None), 401);
        assert_eq!(status_of(&mut d, "10.1.2.3:5000", Some("Bearer nope")), 401);
        assert_eq!(
            status_of(&mut d, "10.1.2.3:5000", Some("Bearer 0123456789abcdef")),
            200
        );
        assert_eq!(status_of(&mut d, "127.0.0.1:5000", None), 200);
        assert_eq!(status_of(&mut d, "[::1]:5000", None), 200);
        assert_eq!(
            status_of(&mut d, "127.0.0.1:5000", Some("Bearer nope")),
            401
        );
        // The same request on the client listener is not an admin request at all.
        let conn = d.request_from("127.0.0.1:5000".parse().unwrap(), 0, status_request(None));
        assert_eq!(d.ctx.conns[&conn].responses[0].status, 404);
    }

    #[test]
    fn without_a_token_only_loopback_gets_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        let mut d = Driver::build(|n| crate::server::handler(config, n).unwrap());
        assert_eq!(status_of(&mut d, "10.1.2.3:5000", None), 401);
        assert_eq!(
            status_of(&mut d, "10.1.2.3:5000", Some("Bearer anything")),
            401
        );
        assert_eq!(
            status_of(&mut d, "127.0.0.1:5000", Some("Bearer anything")),
            200
        );
    }

    #[test]
    fn nothing_is_built_without_a_subscriber() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        let mut d = Driver::build(|n| crate::server::handler(config, n).unwrap());
        for topic in Topic::ALL {
            assert!(!d.handler.app.feed.wants(topic));
            d.handler
                .app
                .feed
                .emit(&mut d.ctx, topic, || panic!("built an event nobody reads"));
        }
    }
}
