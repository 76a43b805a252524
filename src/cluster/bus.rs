//! The bus: pushes for connections held by other wxchat processes, over Redis Streams.
//!
//! - **One stream per node**: `<prefix>bus:<node>`, written with `XADD .. MAXLEN ~
//!   [redis] bus_stream_len`. An entry is one envelope in field `e`, encoded as
//!   `<origin>\t<id>\t<target>\t<push JSON>`; the target is `c:<conv_id>`, `u:<uid>,<uid>..`,
//!   `k:<uid>`, `l:<uid>:<token sha256>`, `q:<ticket>`, or the cache invalidations `f:<uid>,..`
//!   (friend lists changed: to the nodes of those users) and `g:<gid>` (members changed: every
//!   live node). A node's own round-trip pings are
//!   entries with field `ping` instead.
//! - **Routing** (on the publisher thread, never the reactor): a push goes only to the nodes that
//!   hold a recipient, from presence (`Presence::nodes_of`): `Users` to the nodes of those users,
//!   `Kick`/`Logout` to the nodes of that user, `Qr` to the node recorded in the cache under
//!   `qr:<ticket>` (read by the login before its claim deletes the key, then named with
//!   [`Bus::publish_to_node`]). A `Conv` push is published by the hub with the conversation's members it
//!   already knows ([`Bus::publish_to`]: friend, group); a bare [`Bus::publish`] of a `Conv` routes
//!   a friend conversation to its two users and any other (service, consultation: their
//!   recipients live on the node holding the desk or the consultation) to every live node, the
//!   nodes that pinged within [`NODE_LAPSE`] (`<prefix>bus:nodes`, a sorted set by last ping).
//!   The origin never routes to itself: it delivers locally.
//! - **Reading**: each node reads its own stream with `XREAD BLOCK` from the last id it
//!   processed, kept in memory. At start it begins at the stream's current end (a new process
//!   holds no connection yet; clients `sync` when they connect), so nothing is persisted. A Redis
//!   disconnect or restart is retried with backoff (100 ms doubling to 1 s), continuing from the
//!   last id.
//! - **Gaps**: on every reconnect, and whenever a read returns a full batch (the reader is behind),
//!   the reader checks that its last id is still in the stream. If not (trimmed past it, or the
//!   stream vanished with a Redis restart without persistence) entries may be lost: the gap is
//!   counted (`wxchat_bus_gaps_total`), the reader restarts from the beginning of what the stream
//!   holds, and every local chat connection is told `{"cmd":"resync"}` ([`Target::Resync`]) so
//!   the clients `sync`.
//! - **Duplicates**: the publisher retries a pipeline whose reply was lost, so an entry may be
//!   written twice. Envelope ids are `<boot nonce>-<sequence>` per publishing process; the reader
//!   keeps the last [`SEEN`] ids per origin and drops repeats (`wxchat_bus_duplicates_total`).
//!   Clients also dedupe messages by `seq`.
//! - **Health**: every [`PING_EVERY`] the publisher XADDs a ping to its own stream; the reader
//!   measures when it reads it back. [`Bus::health`] is unhealthy when no round trip completed
//!   within [`STUCK_AFTER`] (Redis down, reader or publisher stuck): `/healthz` answers 503.
//!
//! Publishing never blocks the reactor: envelopes go through a bounded queue ([`QUEUE`]; more are
//! dropped and counted) to the publisher thread, which keeps a failed batch and retries it.

use crate::feed::metrics::METRICS;
use crate::jobs::{bounded, BoundedRx, BoundedTx};
use crate::net::Notifier;
use crate::store::cache::SharedCache;
use crate::store::presence::Presence;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Envelopes waiting for the publisher; more are dropped (and counted).
const QUEUE: usize = 64 * 1024;
/// Most envelopes in one pipeline, and most entries in one read.
const PIPELINE: usize = 512;
/// How often a node pings its own stream (and refreshes its entry in the live nodes).
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// No round trip for this long: the bus is unhealthy (`/healthz` 503).
pub const STUCK_AFTER: Duration = Duration::from_secs(15);
/// A node that has not pinged for this long is not sent `Conv` broadcasts.
pub const NODE_LAPSE: Duration = Duration::from_secs(30);
/// Recent envelope ids remembered per origin.
const SEEN: usize = 8192;
/// How long one `XREAD` blocks.
const BLOCK_MS: u64 = 1000;

/// Where a bus push goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every member of the conversation.
    Conv(String),
    /// These users.
    Users(Vec<u64>),
    /// Not a push: close this user's connections (server API `kick`); the payload is unused.
    Kick(u64),
    /// The browser waiting on this QR login ticket (`/ws/qrlogin`).
    Qr(String),
    /// Not a push: a token was revoked (logout); close the connections of this user that it
    /// authenticated. The token's SHA-256 in hex (never the token itself).
    Logout(u64, String),
    /// Never published: this node's stream lost entries; every local chat connection is told to
    /// `resync`.
    Resync,
    /// Not a push: these users' friend lists changed on another node; a node holding one of
    /// them reloads it (the cache authorises sends and presence).
    Friends(Vec<u64>),
    /// Not a push: this group's members changed on another node; every node drops its cached
    /// list (a node may hold it with none of the members online: it is loaded again on use).
    Group(u64),
    /// Not a push: an operation for the customer-service desk and the consultations' clocks
    /// (the payload, JSON; see `chat::desk_lease`), sent to the node holding the desk lease or,
    /// for its questions, to every live node.
    Desk,
    /// A reply to a command forwarded to the desk's node, by the forwarding node's number for
    /// it (which knows the connection).
    Reply(u64),
}

/// Which nodes a push is written to (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The nodes where any of these users is online.
    Users(Vec<u64>),
    /// The node recorded for this QR login ticket.
    Qr(String),
    /// This node.
    Node(String),
    /// Every live node.
    All,
    /// Nowhere.
    None,
}

impl Route {
    /// The route of a push published without recipients.
    pub fn of(target: &Target) -> Route {
        match target {
            Target::Users(uids) => Route::Users(uids.clone()),
            Target::Kick(uid) | Target::Logout(uid, _) => Route::Users(vec![*uid]),
            Target::Qr(ticket) => Route::Qr(ticket.clone()),
            Target::Conv(conv) => match crate::proto::parse_conv(conv) {
                Some(crate::proto::ConvRef::Friend(a, b)) => Route::Users(vec![a, b]),
                Some(_) => Route::All,
                None => Route::None,
            },
            Target::Resync => Route::None,
            Target::Friends(uids) => Route::Users(uids.clone()),
            Target::Group(_) => Route::All,
            // Always published to a node the caller names (or to all).
            Target::Desk | Target::Reply(_) => Route::None,
        }
    }
}

/// A push from another process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub origin: String,
    /// `<boot nonce>-<sequence>`, unique per publishing process: duplicates are dropped by it.
    pub id: String,
    pub target: Target,
    pub payload: String,
}

impl Envelope {
    pub fn encode(&self) -> String {
        let target = match &self.target {
            Target::Conv(c) => format!("c:{c}"),
            Target::Users(u) => {
                let list: Vec<String> = u.iter().map(u64::to_string).collect();
                format!("u:{}", list.join(","))
            }
            Target::Kick(uid) => format!("k:{uid}"),
            Target::Qr(ticket) => format!("q:{ticket}"),
            Target::Logout(uid, hash) => format!("l:{uid}:{hash}"),
            Target::Resync => "r:".to_string(),
            Target::Friends(u) => {
                let list: Vec<String> = u.iter().map(u64::to_string).collect();
                format!("f:{}", list.join(","))
            }
            Target::Group(gid) => format!("g:{gid}"),
            Target::Desk => "d:".to_string(),
            Target::Reply(fid) => format!("a:{fid}"),
        };
        format!("{}\t{}\t{target}\t{}", self.origin, self.id, self.payload)
    }

    /// None for anything malformed (the stream is ours, but Redis is shared).
    pub fn decode(raw: &[u8]) -> Option<Envelope> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut parts = text.splitn(4, '\t');
        let origin = parts.next()?.to_string();
        let id = parts.next()?.to_string();
        let target = parts.next()?;
        let payload = parts.next()?.to_string();
        if origin.is_empty() || id.is_empty() {
            return None;
        }
        let target = if let Some(c) = target.strip_prefix("c:") {
            Target::Conv(c.to_string())
        } else if let Some(u) = target.strip_prefix("u:") {
            let uids: Option<Vec<u64>> = u.split(',').map(|x| x.parse().ok()).collect();
            Target::Users(uids?)
        } else if let Some(t) = target.strip_prefix("q:") {
            Target::Qr(t.to_string())
        } else if let Some(l) = target.strip_prefix("l:") {
            let (uid, hash) = l.split_once(':')?;
            Target::Logout(uid.parse().ok()?, hash.to_string())
        } else if let Some(k) = target.strip_prefix("k:") {
            Target::Kick(k.parse().ok()?)
        } else if let Some(f) = target.strip_prefix("f:") {
            let uids: Option<Vec<u64>> = f.split(',').map(|x| x.parse().ok()).collect();
            Target::Friends(uids?)
        } else if let Some(g) = target.strip_prefix("g:") {
            Target::Group(g.parse().ok()?)
        } else if target == "d:" {
            Target::Desk
        } else if let Some(a) = target.strip_prefix("a:") {
            Target::Reply(a.parse().ok()?)
        } else {
            // `r:` included: a resync is never carried between nodes.
            return None;
        };
        Some(Envelope {
            origin,
            id,
            target,
            payload,
        })
    }
}

/// The last envelope ids seen per origin, bounded.
#[derive(Default)]
pub struct Seen {
    origins: HashMap<String, (HashSet<String>, VecDeque<String>)>,
}

impl Seen {
    /// True the first time this (origin, id) is offered.
    pub fn first(&mut self, origin: &str, id: &str) -> bool {
        if !self.origins.contains_key(origin) {
            if self.origins.len() >= 1024 {
                self.origins.clear(); // origins come and go with restarts; start over
            }
            self.origins.insert(origin.to_string(), Default::default());
        }
        let Some((set, order)) = self.origins.get_mut(origin) else {
            return true;
        };
        if !set.insert(id.to_string()) {
            return false;
        }
        order.push_back(id.to_string());
        if order.len() > SEEN {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

/// The bus's health, as `/healthz` and `/metrics` report it.
#[derive(Clone, Debug, PartialEq)]
pub struct BusHealth {
    /// Since the reader last read an entry (a push or a ping); None before the first.
    pub last_read_age: Option<Duration>,
    /// The last ping's round trip; None before the first.
    pub round_trip: Option<Duration>,
    /// Since the last round trip completed (or the bus started).
    pub round_trip_age: Duration,
    /// Why the bus is unhealthy; None when healthy.
    pub problem: Option<String>,
}

/// Shared between the threads and [`Bus::health`]; times in ms since `start` (0 = never).
struct Shared {
    start: Instant,
    last_read_ms: AtomicU64,
    last_round_trip_ms: AtomicU64,
    round_trip_us: AtomicU64,
    reader_up: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        (self.start.elapsed().as_millis() as u64).max(1)
    }
}

/// Why a bus whose last round trip is `age` old is unhealthy, if it is.
pub fn problem(age: Duration, reader_up: bool) -> Option<String> {
    if age <= STUCK_AFTER {
        return None;
    }
    Some(format!(
        "bus: no round trip through Redis for {} s (bound {} s){}",
        age.as_secs(),
        STUCK_AFTER.as_secs(),
        if reader_up {
            ""
        } else {
            "; the reader is not connected"
        }
    ))
}

/// What the publisher needs to route a push.
pub struct Routing {
    pub presence: Arc<dyn Presence>,
    pub cache: Arc<dyn SharedCache>,
}

/// Names and settings of one bus.
#[derive(Clone)]
struct Keys {
    prefix: String,
    node: String,
    stream_len: u64,
}

impl Keys {
    fn stream(&self, node: &str) -> String {
        format!("{}bus:{node}", self.prefix)
    }

    fn nodes(&self) -> String {
        format!("{}bus:nodes", self.prefix)
    }
}

struct Outgoing {
    entry: String,
    route: Route,
}

pub struct Bus {
    publisher: Option<Publisher>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// The publishing end of the bus, cheap to clone: a command forwarded to the desk's node keeps
/// one to send its replies back (see `chat::request::Pending`).
#[derive(Clone)]
pub struct Publisher {
    node: Arc<str>,
    boot: Arc<str>,
    seq: Arc<AtomicU64>,
    tx: BoundedTx<Outgoing>,
}

impl Publisher {
    /// Queues a push for one node (never blocks).
    pub fn to_node(&self, target: Target, payload: &str, node: &str) {
        self.send(target, payload, Route::Node(node.to_string()));
    }

    fn send(&self, target: Target, payload: &str, route: Route) {
        if route == Route::None || route == Route::Users(Vec::new()) {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Envelope {
            origin: self.node.to_string(),
            id: format!("{}-{seq}", self.boot),
            target,
            payload: payload.to_string(),
        }
        .encode();
        match self.tx.try_send(Outgoing { entry, route }) {
            Ok(()) => {}
            Err(_) => {
                METRICS.bus_dropped.inc();
                let n = METRICS.bus_dropped.get();
                if n.is_power_of_two() {
                    log::warn!("bus: {n} pushes dropped (publisher behind or Redis down)");
                }
            }
        }
    }
}

impl Bus {
    /// Starts the reader and the publisher. `deliver` runs on the reader thread for each
    /// envelope from another process (and for a [`Target::Resync`]) and must hand it to the
    /// reactor (through `notifier`).
    pub fn start<C: Send + 'static>(
        url: &str,
        prefix: &str,
        node: &str,
        stream_len: u64,
        routing: Routing,
        notifier: Notifier<C>,
        deliver: impl Fn(Envelope) -> C + Send + 'static,
    ) -> Result<Bus, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad [redis] url: {e}"))?;
        let keys = Keys {
            prefix: prefix.to_string(),
            node: node.to_string(),
            stream_len: stream_len.max(1),
        };
        let shared = Arc::new(Shared {
            start: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            last_round_trip_ms: AtomicU64::new(0),
            round_trip_us: AtomicU64::new(0),
            reader_up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = bounded::<Outgoing>(QUEUE);
        let reader = {
            let (client, keys, shared) = (client.clone(), keys.clone(), shared.clone());
            std::thread::Builder::new()
                .name("bus-read".into())
                .spawn(move || read_loop(&client, &keys, &shared, &notifier, &deliver))
                .map_err(|e| format!("cannot start the bus: {e}"))?
        };
        let publisher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("bus-pub".into())
                .spawn(move || publish_loop(&client, &keys, &routing, &rx, &shared))
                .map_err(|e| format!("cannot start the bus: {e}"))?
        };
        let mut nonce = [0u8; 4];
        let _ = getrandom::getrandom(&mut nonce);
        Ok(Bus {
            publisher: Some(Publisher {
                node: node.into(),
                boot: format!("{:08x}", u32::from_le_bytes(nonce)).into(),
                seq: Arc::new(AtomicU64::new(0)),
                tx,
            }),
            shared,
            threads: vec![reader, publisher],
        })
    }

    /// Queues a push for the other processes, routed by its target alone ([`Route::of`]; never
    /// blocks).
    pub fn publish(&self, target: Target, payload: &str) {
        let route = Route::of(&target);
        self.send(target, payload, route);
    }

    /// Queues a push for one node the caller knows (a claimed QR ticket's, read before the
    /// claim deleted it; never blocks).
    pub fn publish_to_node(&self, target: Target, payload: &str, node: &str) {
        self.send(target, payload, Route::Node(node.to_string()));
    }

    /// Queues a push for the nodes of these recipients (a conversation's members, known to the
    /// caller; never blocks).
    pub fn publish_to(&self, target: Target, payload: &str, recipients: Vec<u64>) {
        self.send(target, payload, Route::Users(recipients));
    }

    /// Queues a push for every live node (never blocks).
    pub fn publish_all(&self, target: Target, payload: &str) {
        self.send(target, payload, Route::All);
    }

    /// A handle that publishes from anywhere on the reactor (None once stopping).
    pub fn publisher(&self) -> Option<Publisher> {
        self.publisher.clone()
    }

    fn send(&self, target: Target, payload: &str, route: Route) {
        if let Some(p) = &self.publisher {
            p.send(target, payload, route);
        }
    }

    /// The round trip and read ages, and whether the bus is stuck.
    pub fn health(&self) -> BusHealth {
        let s = &self.shared;
        let now = s.now_ms();
        let ago = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        let last_read = s.last_read_ms.load(Ordering::Relaxed);
        let last_rt = s.last_round_trip_ms.load(Ordering::Relaxed);
        let rtt = s.round_trip_us.load(Ordering::Relaxed);
        let round_trip_age = ago(last_rt);
        BusHealth {
            last_read_age: (last_read > 0).then(|| ago(last_read)),
            round_trip: (last_rt > 0).then(|| Duration::from_micros(rtt)),
            round_trip_age,
            problem: problem(round_trip_age, s.reader_up.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.publisher = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// 100 ms doubling to 1 s: the bus threads do nothing else, and a second between attempts is
/// what a Redis restart costs the cluster's live pushes.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(6)).min(1000))
}

/// Sleeps `d` in short steps; false when the bus is stopping.
fn pause(shared: &Shared, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    !shared.stop.load(Ordering::SeqCst)
}

/// One stream entry: its id and fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Entries from an `XRANGE` reply (or one stream of an `XREAD` reply).
fn entries(v: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let redis::Value::Array(pair) = item else {
            continue;
        };
        let (Some(id), Some(redis::Value::Array(kv))) = (pair.first().and_then(text), pair.get(1))
        else {
            continue;
        };
        let fields = kv
            .chunks(2)
            .filter_map(|c| match (c.first().and_then(text), c.get(1)) {
                (Some(k), Some(redis::Value::BulkString(b))) => Some((k, b.clone())),
                _ => None,
            })
            .collect();
        out.push((id, fields));
    }
    out
}

/// Entries of our one stream from an `XREAD` reply (nil on timeout).
fn xread_entries(v: &redis::Value) -> Vec<Entry> {
    match v {
        redis::Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                redis::Value::Array(pair) => pair.get(1).map(entries).unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        redis::Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// Entries may be lost when the last id read is no longer in the stream.
fn lost_entries(
    conn: &mut redis::Connection,
    stream: &str,
    last: &str,
) -> redis::RedisResult<bool> {
    if last == "0-0" {
        return Ok(false);
    }
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(last)
        .arg(last)
        .query(conn)?;
    Ok(entries(&v).is_empty())
}

fn read_loop<C>(
    client: &redis::Client,
    keys: &Keys,
    shared: &Shared,
    notifier: &Notifier<C>,
    deliver: &dyn Fn(Envelope) -> C,
) {
    let stream = keys.stream(&keys.node);
    let mut last: Option<String> = None;
    let mut seen = Seen::default();
    let mut failures = 0u32;
    while !shared.stop.load(Ordering::SeqCst) {
        let result = (|| -> redis::RedisResult<bool> {
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_millis(BLOCK_MS + 3000)))?;
            conn.set_write_timeout(Some(Duration::from_secs(2)))?;
            let mut check = true;
            if last.is_none() {
                // Start at the current end: what was there before concerns connections this
                // process does not hold.
                let v: redis::Value = redis::cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query(&mut conn)?;
                last = Some(entries(&v).first().map_or("0-0".into(), |e| e.0.clone()));
                check = false;
            }
            shared.reader_up.store(true, Ordering::Relaxed);
            if failures > 0 {
                log::info!("bus: reading again after {failures} failed attempts");
            }
            failures = 0;
            while !shared.stop.load(Ordering::SeqCst) {
                let from = last.clone().unwrap_or_else(|| "0-0".into());
                if check && lost_entries(&mut conn, &stream, &from)? {
                    METRICS.bus_gaps.inc();
                    log::warn!("bus: entries after {from} were lost; clients are told to resync");
                    last = Some("0-0".into());
                    let resync = Envelope {
                        origin: keys.node.clone(),
                        id: String::new(),
                        target: Target::Resync,
                        payload: String::new(),
                    };
                    if !notifier.send(deliver(resync)) {
                        return Ok(true);
                    }
                    continue;
                }
                let v: redis::Value = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(PIPELINE)
                    .arg("BLOCK")
                    .arg(BLOCK_MS)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&from)
                    .query(&mut conn)?;
                let batch = xread_entries(&v);
                check = batch.len() >= PIPELINE;
                for (id, fields) in batch {
                    last = Some(id);
                    let now = shared.now_ms();
                    shared.last_read_ms.store(now, Ordering::Relaxed);
                    for (k, value) in fields {
                        match k.as_str() {
                            "ping" => {
                                let sent = std::str::from_utf8(&value)
                                    .ok()
                                    .and_then(|s| s.parse::<u64>().ok());
                                if let Some(sent_us) = sent {
                                    let now_us = shared.start.elapsed().as_micros() as u64;
                                    // A ping from an earlier process of the same node name
                                    // has a time from another clock: ignore it.
                                    if sent_us <= now_us && now_us - sent_us < 60_000_000 {
                                        shared
                                            .round_trip_us
                                            .store(now_us - sent_us, Ordering::Relaxed);
                                        shared.last_round_trip_ms.store(now, Ordering::Relaxed);
                                    }
                                }
                            }
                            "e" => match Envelope::decode(&value) {
                                Some(env) if env.origin == keys.node => {}
                                Some(env) => {
                                    if !seen.first(&env.origin, &env.id) {
                                        METRICS.bus_duplicates.inc();
                                        continue;
                                    }
                                    METRICS.bus_received.inc();
                                    if !notifier.send(deliver(env)) {
                                        return Ok(true); // the reactor is gone
                                    }
                                }
                                None => log::warn!("bus: ignored a malformed envelope"),
                            },
                            _ => {}
                        }
                    }
                }
            }
            Ok(true)
        })();
        match result {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                shared.reader_up.store(false, Ordering::Relaxed);
                failures += 1;
                if failures == 1 {
                    log::warn!("bus: reading {stream} failed: {e}; reconnecting");
                }
                if !pause(shared, backoff(failures)) {
                    return;
                }
            }
        }
    }
}

/// The nodes of every user a batch's `Users` routes name.
fn users_nodes(routing: &Routing, batch: &[Outgoing]) -> Result<HashMap<u64, Vec<String>>, String> {
    let mut uids: Vec<u64> = batch
        .iter()
        .filter_map(|o| match &o.route {
            Route::Users(u) => Some(u.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    if uids.is_empty() {
        return Ok(HashMap::new());
    }
    uids.sort_unstable();
    uids.dedup();
    let nodes = routing
        .presence
        .nodes_by_user(&uids)
        .map_err(|e| e.to_string())?;
    Ok(uids.into_iter().zip(nodes).collect())
}

/// The nodes each route names, resolved for one batch.
fn resolve(
    routing: &Routing,
    conn: &mut redis::Connection,
    keys: &Keys,
    route: &Route,
    by_user: &HashMap<u64, Vec<String>>,
) -> Result<Vec<String>, String> {
    let mut nodes = match route {
        Route::Users(uids) => {
            let mut nodes: Vec<String> = uids
                .iter()
                .filter_map(|u| by_user.get(u))
                .flatten()
                .cloned()
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            nodes
        }
        Route::Qr(ticket) => routing
            .cache
            .get(&format!("qr:{ticket}"))
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect(),
        Route::Node(node) => vec![node.clone()],
        Route::All => {
            let since = crate::store::now_ms() - NODE_LAPSE.as_millis() as i64;
            redis::cmd("ZRANGEBYSCORE")
                .arg(keys.nodes())
                .arg(since)
                .arg("+inf")
                .query::<Vec<String>>(conn)
                .map_err(|e| e.to_string())?
        }
        Route::None => Vec::new(),
    };
    nodes.retain(|n| *n != keys.node);
    Ok(nodes)
}

fn publish_loop(
    client: &redis::Client,
    keys: &Keys,
    routing: &Routing,
    rx: &BoundedRx<Outgoing>,
    shared: &Shared,
) {
    let mut conn: Option<redis::Connection> = None;
    let mut failures = 0u32;
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PIPELINE);
    let mut next_ping = Instant::now();
    let own = keys.stream(&keys.node);
    loop {
        if batch.is_empty() {
            let wait = next_ping.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait.min(Duration::from_millis(500))) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        while batch.len() < PIPELINE {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let ping = Instant::now() >= next_ping;
        if batch.is_empty() && !ping {
            continue;
        }
        let result = (|| -> Result<usize, String> {
            if conn.is_none() {
                let c = client
                    .get_connection_with_timeout(Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                conn = Some(c);
            }
            let Some(c) = conn.as_mut() else {
                return Ok(0);
            };
            let mut pipe = redis::pipe();
            let mut written = 0;
            let mut all: Option<Vec<String>> = None;
            // Where every recipient of the batch is, in one round trip (not one per push).
            let by_user = users_nodes(routing, &batch)?;
            for out in &batch {
                let nodes = match (&out.route, &all) {
                    (Route::All, Some(nodes)) => nodes.clone(),
                    _ => resolve(routing, c, keys, &out.route, &by_user)?,
                };
                if out.route == Route::All {
                    all = Some(nodes.clone());
                }
                for node in nodes {
                    pipe.cmd("XADD")
                        .arg(keys.stream(&node))
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(keys.stream_len)
                        .arg("*")
                        .arg("e")
                        .arg(&out.entry)
                        .ignore();
                    written += 1;
                }
            }
            if ping {
                let sent_us = shared.start.elapsed().as_micros() as u64;
                pipe.cmd("XADD")
                    .arg(&own)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(keys.stream_len)
                    .arg("*")
                    .arg("ping")
                    .arg(sent_us)
                    .ignore();
                pipe.cmd("ZADD")
                    .arg(keys.nodes())
                    .arg(crate::store::now_ms())
                    .arg(&keys.node)
                    .ignore();
                // Nodes gone for ten lapses leave the set.
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(keys.nodes())
                    .arg("-inf")
                    .arg(crate::store::now_ms() - 10 * NODE_LAPSE.as_millis() as i64)
                    .ignore();
            }
            pipe.query::<()>(c).map_err(|e| {
                conn = None;
                e.to_string()
            })?;
            Ok(written)
        })();
        match result {
            Ok(written) => {
                METRICS.bus_published.add(written as u64);
                batch.clear();
                if ping {
                    next_ping = Instant::now() + PING_EVERY;
                }
                if failures > 0 {
                    log::info!("bus: publishing again after {failures} failed attempts");
                }
                failures = 0;
            }
            Err(e) => {
                // The batch is kept and retried: pushes wait for Redis (the queue fills and
                // drops meanwhile). A ping is tried again at the next attempt.
                failures += 1;
                if failures == 1 {
                    log::warn!("bus: publishing failed: {e}; retrying");
                }
                if !pause(shared, backoff(failures)) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_reject_garbage() {
        for target in [
            Target::Conv("g_5".into()),
            Target::Users(vec![1, 22, 333]),
            Target::Kick(4),
            Target::Qr("9f86d081884c7d65".into()),
            Target::Logout(7, "ab".repeat(32)),
            Target::Friends(vec![3, 44]),
            Target::Group(12),
        ] {
            let e = Envelope {
                origin: "n1".into(),
                id: "0badcafe-17".into(),
                target,
                payload: r#"{"cmd":"message","data":{"msg":"a\tb"}}"#.into(),
            };
            assert_eq!(Envelope::decode(e.encode().as_bytes()), Some(e));
        }
        assert_eq!(Envelope::decode(b"n1\t1-1\tx:1\t{}"), None);
        assert_eq!(Envelope::decode(b"n1\t1-1\tu:1,x\t{}"), None);
        assert_eq!(Envelope::decode(b"n1"), None);
        assert_eq!(Envelope::decode(b"n1\t1-1\tl:7\t"), None);
        assert_eq!(Envelope::decode(b"n1\t\tk:7\t"), None);
        assert_eq!(
            Envelope::decode(b"n1\t1-1\tr:\t"),
            None,
            "resync is never carried"
        );
        assert_eq!(Envelope::decode(&[0xff, b'\t']), None);
    }

    #[test]
    fn routes_follow_the_target() {
        assert_eq!(
            Route::of(&Target::Users(vec![3, 4])),
            Route::Users(vec![3, 4])
        );
        assert_eq!(Route::of(&Target::Kick(9)), Route::Users(vec![9]));
        assert_eq!(
            Route::of(&Target::Logout(9, "ab".into())),
            Route::Users(vec![9])
        );
        assert_eq!(Route::of(&Target::Qr("t1".into())), Route::Qr("t1".into()));
        let friend = crate::proto::friend_conv(5, 2);
        assert_eq!(Route::of(&Target::Conv(friend)), Route::Users(vec![2, 5]));
        assert_eq!(Route::of(&Target::Conv("g_5".into())), Route::All);
        assert_eq!(Route::of(&Target::Conv("nonsense".into())), Route::None);
        assert_eq!(Route::of(&Target::Resync), Route::None);
        assert_eq!(
            Route::of(&Target::Friends(vec![3, 4])),
            Route::Users(vec![3, 4])
        );
        assert_eq!(Route::of(&Target::Group(7)), Route::All);
    }

    #[test]
    fn seen_drops_repeats_and_forgets_the_oldest() {
        let mut s = Seen::default();
        assert!(s.first("a", "x-1"));
        assert!(!s.first("a", "x-1"));
        assert!(s.first("b", "x-1"), "ids are per origin");
        for i in 2..=(SEEN as u64 + 1) {
            assert!(s.first("a", &format!("x-{i}")));
        }
        assert!(s.first("a", "x-1"), "forgotten after SEEN more");
    }

    #[test]
    fn health_turns_bad_after_the_bound() {
        assert_eq!(problem(Duration::from_secs(3), true), None);
        let p = problem(STUCK_AFTER + Duration::from_secs(1), false).unwrap();
        assert!(
            p.contains("no round trip") && p.contains("not connected"),
            "{p}"
        );
    }

    #[test]
    fn stream_replies_parse() {
        use redis::Value::*;
        let entry = |id: &str, k: &str, v: &str| {
            Array(vec![
                BulkString(id.into()),
                Array(vec![BulkString(k.into()), BulkString(v.into())]),
            ])
        };
        let reply = Array(vec![Array(vec![
            BulkString(b"p:bus:n1".to_vec()),
            Array(vec![entry("1-0", "e", "x"), entry("2-0", "ping", "5")]),
        ])]);
        let got = xread_entries(&reply);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, "2-0");
        assert_eq!(got[1].1, vec![("ping".to_string(), b"5".to_vec())]);
        assert!(xread_entries(&Nil).is_empty());
    }
}
