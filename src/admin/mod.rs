//! The admin listener: info topics for subscribers (WebSocket `/admin/subscribe`), Prometheus
//! metrics (`GET /metrics`) and live figures (`GET /status`, which `server status` prints).
//!
//! Publishing is free when nobody listens: every call site first asks [`Admin::wants`] (one
//! relaxed load of a topic mask) and builds its event only when a subscriber selects that topic.
//! An event is serialised once and the same frame queued to every matching subscriber. A
//! subscriber with more than `[admin] subscriber_buffer_bytes` unread is dropped with a notice:
//! it never slows the chat.
//!
//! Access: peers on loopback need no token; every other peer must send
//! `Authorization: Bearer <[admin] token>` (and a token that is sent must be right).

pub mod client;
pub mod format;
pub mod metrics;
pub mod topic;

use crate::app::{App, Completion};
use crate::http::{Request, Response};
use crate::net::{ConnId, Ctx, Frame, Message, Notifier, Reply, Upgrade};
use crate::proto::{self, close, code};
use metrics::{Gauges, METRICS};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use topic::{Subscription, Topic};

/// The admin listener's index in the reactor (the client listener is 0).
pub const ADMIN_LISTENER: usize = 1;
/// The subscribers' WebSocket path (admin listener only).
pub const SUBSCRIBE_PATH: &str = "/admin/subscribe";
/// Events from other threads on their way to the reactor at most; more are dropped and counted.
const MAX_FEED_PENDING: usize = 4096;
/// Topic specs one subscriber may hold.
const MAX_SPECS: usize = 16;

/// Publishes from any thread: workers (WeChat API calls) and the reactor share it.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    mask: AtomicU8,
    pending: AtomicUsize,
    notifier: Notifier<Completion>,
}

impl Feed {
    pub fn new(notifier: Notifier<Completion>) -> Feed {
        Feed {
            inner: Arc::new(FeedInner {
                mask: AtomicU8::new(0),
                pending: AtomicUsize::new(0),
                notifier,
            }),
        }
    }

    /// Does any subscriber select `topic`? (One relaxed load.)
    #[inline]
    pub fn wants(&self, topic: Topic) -> bool {
        self.inner.mask.load(Relaxed) & topic.bit() != 0
    }

    /// From a worker thread: hands the event to the reactor, which filters and sends it.
    pub fn publish(&self, topic: Topic, fields: Value) {
        if !self.wants(topic) {
            return;
        }
        if self.inner.pending.fetch_add(1, Relaxed) >= MAX_FEED_PENDING {
            self.inner.pending.fetch_sub(1, Relaxed);
            METRICS.admin_events_dropped.inc();
            return;
        }
        self.inner.notifier.send(Completion::new(move |app, ctx| {
            app.admin.feed.inner.pending.fetch_sub(1, Relaxed);
            app.admin.publish(ctx, topic, fields);
        }));
    }
}

/// Rates computed at each `serverInfo` tick.
#[derive(Clone, Copy, Debug)]
struct Tick {
    at: Instant,
    messages: u64,
    deliveries: u64,
    in_per_s: f64,
    out_per_s: f64,
}

pub struct Admin {
    pub feed: Feed,
    /// Open subscriber connections and their specs (empty until they subscribe).
    subscribers: HashMap<ConnId, Vec<Subscription>>,
    tick: Tick,
    started: Instant,
    started_unix_s: u64,
    token: String,
    message_bodies: bool,
    buffer_bytes: usize,
    max_subscribers: usize,
    every: Duration,
}

impl Admin {
    pub fn new(config: &crate::config::AdminConfig, notifier: Notifier<Completion>) -> Admin {
        let now = Instant::now();
        Admin {
            feed: Feed::new(notifier),
            subscribers: HashMap::new(),
            tick: Tick {
                at: now,
                messages: METRICS.messages_total(),
                deliveries: METRICS.deliveries.get(),
                in_per_s: 0.0,
                out_per_s: 0.0,
            },
            started: now,
            started_unix_s: u64::try_from(crate::store::now_ms() / 1000).unwrap_or(0),
            token: config.token.clone(),
            message_bodies: config.message_bodies,
            buffer_bytes: config.subscriber_buffer_bytes,
            max_subscribers: config.max_subscribers,
            every: Duration::from_secs(config.server_info_every_s),
        }
    }

    #[inline]
    pub fn wants(&self, topic: Topic) -> bool {
        self.feed.wants(topic)
    }

    /// Does the `message` topic carry bodies?
    pub fn message_bodies(&self) -> bool {
        self.message_bodies
    }

    /// Builds and publishes an event only when someone selects `topic`.
    #[inline]
    pub fn emit(
        &mut self,
        ctx: &mut dyn Ctx<Completion>,
        topic: Topic,
        build: impl FnOnce() -> Value,
    ) {
        if self.wants(topic) {
            self.publish(ctx, topic, build());
        }
    }

    /// Sends an event to every subscriber whose specs match (serialised once).
    pub fn publish(&mut self, ctx: &mut dyn Ctx<Completion>, topic: Topic, fields: Value) {
        let Value::Object(fields) = fields else {
            return;
        };
        let mut frame: Option<Frame> = None;
        let mut slow = Vec::new();
        for (conn, specs) in &self.subscribers {
            if !specs.iter().any(|s| s.matches(topic, &fields)) {
                continue;
            }
            let f = frame.get_or_insert_with(|| Frame::text(event_json(topic, &fields).as_bytes()));
            let queued = ctx.queued_bytes(*conn);
            // One event always fits an empty queue, however large (message bodies).
            if queued > 0 && queued + f.len() > self.buffer_bytes {
                slow.push((*conn, queued));
                continue;
            }
            ctx.send(*conn, f);
        }
        for (conn, queued) in slow {
            self.drop_slow(ctx, conn, queued);
        }
    }

    /// A subscriber that does not keep up: a notice (after what it has not read yet), then the
    /// close with 4005. Other subscribers hear about it on `error`.
    fn drop_slow(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, queued: usize) {
        if self.subscribers.remove(&conn).is_none() {
            return;
        }
        self.update_mask();
        METRICS.subscribers_dropped.inc();
        let reason = format!(
            "too slow: {queued} bytes unread, over [admin] subscriber_buffer_bytes = {}",
            self.buffer_bytes
        );
        let peer = ctx.peer_addr(conn);
        log::warn!("subscriber conn={conn} peer={peer:?} dropped: {reason}");
        // What it has not started to receive is dropped, so the notice comes right after what
        // is already on its way.
        ctx.discard_output(conn);
        let mut notice = Map::new();
        notice.insert("event".into(), json!("dropped"));
        notice.insert("reason".into(), json!(reason));
        ctx.send_text(conn, &event_json_named("notice", &notice));
        ctx.close(conn, close::TOO_SLOW, "subscriber too slow");
        self.emit(ctx, Topic::Error, || {
            json!({
                "kind": "subscriber_dropped",
                "peer": peer.map(|p| p.to_string()),
                "msg": reason,
            })
        });
    }

    fn update_mask(&self) {
        let mask = topic::mask_of(self.subscribers.values().flatten());
        self.feed.inner.mask.store(mask, Relaxed);
    }

    /// Runs when the reactor starts: the periodic `serverInfo` tick.
    pub fn start(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
        let every = app.admin.every;
        app.after(ctx, every, tick);
    }

    /// Who may use the admin listener (see the module doc).
    fn authorized(&self, ctx: &dyn Ctx<Completion>, conn: ConnId, req: &Request) -> bool {
        let loopback = ctx.peer_addr(conn).is_some_and(|p| p.ip().is_loopback());
        let sent = req.bearer();
        match sent {
            Some(sent) if !self.token.is_empty() => {
                crate::auth::constant_time_eq(sent.as_bytes(), self.token.as_bytes())
            }
            // A token sent to a server that has none: fine from loopback.
            Some(_) | None => loopback,
        }
    }
}

/// Counts a login and publishes it on `login`. `fields` says who and, on failure, why.
pub fn login(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    method: &'static str,
    ok: bool,
    fields: Value,
) {
    METRICS.login(method, ok);
    app.admin.emit(ctx, Topic::Login, || {
        let mut v = fields;
        v["method"] = json!(method);
        v["ok"] = json!(ok);
        v
    });
}

/// A login's HTTP answer, told apart by its status: `uid` from `data`, `code`, `msg` and a
/// WeChat `errcode` from the body.
pub fn login_response(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    method: &'static str,
    resp: &Response,
) {
    if !app.admin.wants(Topic::Login) {
        METRICS.login(method, resp.status == 200);
        return;
    }
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let fields = json!({
        "uid": body.pointer("/data/uid"),
        "code": resp.status,
        "msg": body.get("msg"),
        "errcode": body.get("errcode"),
        "peer": ctx.peer_addr(conn).map(|p| p.to_string()),
    });
    login(app, ctx, method, resp.status == 200, fields);
}

/// `{"topic":..,"time":..,<fields>}`: topic and time first, for people reading it.
fn event_json(topic: Topic, fields: &Map<String, Value>) -> String {
    event_json_named(topic.name(), fields)
}

fn event_json_named(topic: &str, fields: &Map<String, Value>) -> String {
    let mut out = format!(
        "{{\"topic\":\"{topic}\",\"time\":{}",
        crate::store::now_ms()
    );
    let rest = Value::Object(fields.clone()).to_string();
    if rest.len() > 2 {
        out.push(',');
        out.push_str(&rest[1..]);
    } else {
        out.push('}');
    }
    out
}

/// The periodic tick: rates for `/status` and, when selected, the `serverInfo` event.
fn tick(app: &mut App, ctx: &mut dyn Ctx<Completion>) {
    let now = ctx.now();
    let messages = METRICS.messages_total();
    let deliveries = METRICS.deliveries.get();
    let last = app.admin.tick;
    let secs = now.saturating_duration_since(last.at).as_secs_f64();
    if secs > 0.0 {
        app.admin.tick = Tick {
            at: now,
            messages,
            deliveries,
            in_per_s: messages.saturating_sub(last.messages) as f64 / secs,
            out_per_s: deliveries.saturating_sub(last.deliveries) as f64 / secs,
        };
    }
    if app.admin.wants(Topic::ServerInfo) {
        let info = server_info(app, ctx);
        app.admin.publish(ctx, Topic::ServerInfo, info);
    }
    let every = app.admin.every;
    app.after(ctx, every, tick);
}

/// The live figures: the `serverInfo` event and `GET /status`.
pub fn server_info(app: &App, ctx: &dyn Ctx<Completion>) -> Value {
    let g = gauges(app, ctx);
    let t = app.admin.tick;
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
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn gauges(app: &App, ctx: &dyn Ctx<Completion>) -> Gauges {
    let (persister_queue, lag) = app.persister_load();
    Gauges {
        connections: ctx.connection_count() as u64,
        websockets: app.websockets_by_endpoint(),
        users_online: app.chat.users_online() as u64,
        persister_queue: persister_queue as u64,
        persister_lag_seconds: lag.as_secs_f64(),
        worker_queue: app.worker_queue() as u64,
        jobs_in_flight: app.in_flight as u64,
        service_queue: app.chat.service_queue_len() as u64,
        consultations_running: app.chat.consultations_live() as u64,
        resident_memory_bytes: metrics::resident_memory_bytes(),
        uptime_seconds: app.admin.started.elapsed().as_secs(),
        start_time_seconds: app.admin.started_unix_s,
    }
}

/// A plain HTTP request on the admin listener.
pub fn on_request(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    req: &Request,
) -> Reply {
    if !app.admin.authorized(ctx, conn, req) {
        return Reply::Now(unauthorized());
    }
    let resp = match (req.method.as_str(), req.path.as_str()) {
        ("GET" | "HEAD", "/metrics") => Response::new(200).with_body(
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&gauges(app, ctx)).into_bytes(),
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
    if !app.admin.authorized(ctx, conn, req) {
        return Upgrade::Reject(unauthorized());
    }
    if app.admin.subscribers.len() >= app.admin.max_subscribers {
        return Upgrade::Reject(Response::error(
            503,
            "too many subscribers ([admin] max_subscribers)",
        ));
    }
    Upgrade::Accept
}

pub fn on_open(app: &mut App, conn: ConnId) {
    app.admin.subscribers.insert(conn, Vec::new());
}

pub fn on_close(app: &mut App, conn: ConnId) {
    if app.admin.subscribers.remove(&conn).is_some() {
        app.admin.update_mask();
    }
}

/// A subscriber's command: `{"cmd":"subscribe","topics":["message;uid=1","serverInfo"]}`
/// replaces its specs; `ping` is answered.
pub fn on_message(
    app: &mut App,
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    message: Message<'_>,
) {
    let Some(cmd) = crate::app::command_of(ctx, conn, message) else {
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
    let Some(slot) = app.admin.subscribers.get_mut(&conn) else {
        return Err("not a subscriber connection".into());
    };
    *slot = parsed;
    app.admin.update_mask();
    Ok(json!({
        "topics": specs,
        "message_bodies": app.admin.message_bodies,
        "server_info_every_s": app.admin.every.as_secs(),
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

    fn status_of(d: &mut Driver<App>, peer: &str, auth: Option<&str>) -> u16 {
        let conn = d.request_from(peer.parse().unwrap(), ADMIN_LISTENER, status_request(auth));
        d.ctx.conns[&conn].responses[0].status
    }

    #[test]
    fn other_hosts_need_the_token_and_loopback_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        config.admin.token = "0123456789abcdef".into();
        let mut d = Driver::build(|n| App::new(config, n).unwrap());
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
        let mut d = Driver::build(|n| App::new(config, n).unwrap());
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
        let mut d = Driver::build(|n| App::new(config, n).unwrap());
        for topic in Topic::ALL {
            assert!(!d.handler.admin.wants(topic));
            d.handler
                .admin
                .emit(&mut d.ctx, topic, || panic!("built an event nobody reads"));
        }
    }

    #[test]
    fn events_carry_topic_and_time_first() {
        let mut fields = Map::new();
        fields.insert("uid".into(), json!(7));
        let text = event_json(Topic::Login, &fields);
        assert!(text.starts_with("{\"topic\":\"login\",\"time\":"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["uid"], 7);
        let empty: Value = serde_json::from_str(&event_json(Topic::Error, &Map::new())).unwrap();
        assert_eq!(empty["topic"], "error");
    }
}
