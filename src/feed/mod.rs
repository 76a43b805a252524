//! The info feed: the topics admins subscribe to (`all`, `message`, `uid=1`...), the events the
//! features emit on them, and the process-wide metrics counters.
//!
//! Emitting is free when nobody listens: every call site first asks [`Feed::wants`] (one relaxed
//! load of a topic mask) and builds its event only when a subscriber selects that topic. An event
//! is serialised once and the same frame queued to every matching subscriber. A subscriber with
//! more than `[admin] subscriber_buffer_bytes` unread is dropped with a notice: it never slows
//! the chat.
//!
//! Layer: below the state owner (`rt`), which holds a [`Feed`]; generic over the completion type
//! like `rt::persister` and `cluster::bus`, so it imports nothing above `net`. The admin listener
//! (`admin/`) is the subscribers' front door; the features only emit.

pub mod metrics;
pub mod topic;

use crate::http::Response;
use crate::net::{ConnId, Ctx, Frame, Notifier};
use crate::proto::close;
use crate::wechat::api::Observer;
use metrics::METRICS;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
pub use topic::{Subscription, Topic};

/// Events from other threads on their way to the reactor at most; more are dropped and counted.
const MAX_FEED_PENDING: usize = 4096;

/// What the subscribers' topics select, shared with the publishers on other threads.
struct Shared {
    mask: AtomicU8,
    pending: AtomicUsize,
}

/// Publishes from any thread (workers making WeChat API calls): the event travels to the reactor
/// as a completion, made by `wrap`, that hands it to [`Feed::from_thread`].
pub struct Publisher<C> {
    shared: Arc<Shared>,
    notifier: Notifier<C>,
    wrap: fn(Topic, Value) -> C,
}

impl<C> Clone for Publisher<C> {
    fn clone(&self) -> Self {
        Publisher {
            shared: self.shared.clone(),
            notifier: self.notifier.clone(),
            wrap: self.wrap,
        }
    }
}

impl<C: Send + 'static> Publisher<C> {
    /// Does any subscriber select `topic`? (One relaxed load.)
    #[inline]
    pub fn wants(&self, topic: Topic) -> bool {
        self.shared.mask.load(Relaxed) & topic.bit() != 0
    }

    /// Hands the event to the reactor, which filters and sends it.
    pub fn publish(&self, topic: Topic, fields: Value) {
        if !self.wants(topic) {
            return;
        }
        if self.shared.pending.fetch_add(1, Relaxed) >= MAX_FEED_PENDING {
            self.shared.pending.fetch_sub(1, Relaxed);
            METRICS.admin_events_dropped.inc();
            return;
        }
        self.notifier.send((self.wrap)(topic, fields));
    }
}

/// The reactor's side: the subscribers and their specs.
pub struct Feed {
    shared: Arc<Shared>,
    /// Open subscriber connections and their specs (empty until they subscribe).
    subscribers: HashMap<ConnId, Vec<Subscription>>,
    message_bodies: bool,
    buffer_bytes: usize,
}

impl Feed {
    /// The feed and a publisher for other threads; `wrap` makes the completion that carries a
    /// thread's event to [`Feed::from_thread`].
    pub fn new<C>(
        config: &crate::config::AdminConfig,
        notifier: Notifier<C>,
        wrap: fn(Topic, Value) -> C,
    ) -> (Feed, Publisher<C>) {
        let shared = Arc::new(Shared {
            mask: AtomicU8::new(0),
            pending: AtomicUsize::new(0),
        });
        let feed = Feed {
            shared: shared.clone(),
            subscribers: HashMap::new(),
            message_bodies: config.message_bodies,
            buffer_bytes: config.subscriber_buffer_bytes,
        };
        (
            feed,
            Publisher {
                shared,
                notifier,
                wrap,
            },
        )
    }

    #[inline]
    pub fn wants(&self, topic: Topic) -> bool {
        self.shared.mask.load(Relaxed) & topic.bit() != 0
    }

    /// Does the `message` topic carry bodies?
    pub fn message_bodies(&self) -> bool {
        self.message_bodies
    }

    /// Open subscriber connections.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Builds and publishes an event only when someone selects `topic`.
    #[inline]
    pub fn emit<C>(&mut self, ctx: &mut dyn Ctx<C>, topic: Topic, build: impl FnOnce() -> Value) {
        if self.wants(topic) {
            self.publish(ctx, topic, build());
        }
    }

    /// An event a [`Publisher`] sent from another thread, now on the reactor.
    pub fn from_thread<C>(&mut self, ctx: &mut dyn Ctx<C>, topic: Topic, fields: Value) {
        self.shared.pending.fetch_sub(1, Relaxed);
        self.publish(ctx, topic, fields);
    }

    /// Sends an event to every subscriber whose specs match (serialised once).
    pub fn publish<C>(&mut self, ctx: &mut dyn Ctx<C>, topic: Topic, fields: Value) {
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
    fn drop_slow<C>(&mut self, ctx: &mut dyn Ctx<C>, conn: ConnId, queued: usize) {
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
        self.shared.mask.store(mask, Relaxed);
    }

    /// A subscriber connection opened (it selects nothing until it subscribes).
    pub fn add_subscriber(&mut self, conn: ConnId) {
        self.subscribers.insert(conn, Vec::new());
    }

    pub fn remove_subscriber(&mut self, conn: ConnId) {
        if self.subscribers.remove(&conn).is_some() {
            self.update_mask();
        }
    }

    /// Replaces a subscriber's specs. False when `conn` is not a subscriber.
    pub fn set_specs(&mut self, conn: ConnId, specs: Vec<Subscription>) -> bool {
        let Some(slot) = self.subscribers.get_mut(&conn) else {
            return false;
        };
        *slot = specs;
        self.update_mask();
        true
    }

    /// Counts a login and publishes it on `login`. `fields` says who and, on failure, why.
    pub fn login<C>(
        &mut self,
        ctx: &mut dyn Ctx<C>,
        method: &'static str,
        ok: bool,
        fields: Value,
    ) {
        METRICS.login(method, ok);
        self.emit(ctx, Topic::Login, || {
            let mut v = fields;
            v["method"] = json!(method);
            v["ok"] = json!(ok);
            v
        });
    }

    /// A login's HTTP answer, told apart by its status: `uid` from `data`, `code`, `msg` and a
    /// WeChat `errcode` from the body.
    pub fn login_response<C>(
        &mut self,
        ctx: &mut dyn Ctx<C>,
        conn: ConnId,
        method: &'static str,
        resp: &Response,
    ) {
        if !self.wants(Topic::Login) {
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
        self.login(ctx, method, resp.status == 200, fields);
    }
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

/// Message rates, computed at each `serverInfo` tick (for `/status` and the event).
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub at: std::time::Instant,
    pub messages: u64,
    pub deliveries: u64,
    pub in_per_s: f64,
    pub out_per_s: f64,
}

impl Rates {
    pub fn new(at: std::time::Instant) -> Rates {
        Rates {
            at,
            messages: METRICS.messages_total(),
            deliveries: METRICS.deliveries.get(),
            in_per_s: 0.0,
            out_per_s: 0.0,
        }
    }

    /// The rates since `self`, at `now` (unchanged when no time has passed).
    pub fn next(self, now: std::time::Instant) -> Rates {
        let messages = METRICS.messages_total();
        let deliveries = METRICS.deliveries.get();
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return self;
        }
        Rates {
            at: now,
            messages,
            deliveries,
            in_per_s: messages.saturating_sub(self.messages) as f64 / secs,
            out_per_s: deliveries.saturating_sub(self.deliveries) as f64 / secs,
        }
    }
}

/// The server's observer: counts every call in the metrics and publishes it on `wechat` (and
/// failures on `error`) when someone subscribes.
pub fn wechat_observer<C: Send + 'static>(feed: Publisher<C>) -> Observer {
    Box::new(move |call| {
        let i = call.api as usize;
        METRICS.wechat_calls[i].inc();
        METRICS.wechat_seconds.observe_duration(call.took);
        if call.error.is_some() {
            METRICS.wechat_errors[i].inc();
        }
        let (errcode, errmsg) = match call.error {
            None => (0, String::new()),
            Some(crate::wechat::api::WxError::Api { errcode, errmsg }) => {
                (*errcode, errmsg.clone())
            }
            Some(other) => (-2, other.to_string()),
        };
        let event = || {
            serde_json::json!({
                "kind": "api",
                "api": call.api.name(),
                "app": call.app.name,
                "appid": call.app.appid,
                "ok": call.error.is_none(),
                "errcode": errcode,
                "errmsg": errmsg,
                "ms": call.took.as_millis() as u64,
            })
        };
        if feed.wants(Topic::Wechat) {
            feed.publish(Topic::Wechat, event());
        }
        if call.error.is_some() && feed.wants(Topic::Error) {
            feed.publish(Topic::Error, event());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
