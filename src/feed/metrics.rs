//! Process-wide metrics. Counters and histograms are plain atomics in one static, so the reactor,
//! the workers and the persister record without locks or allocation (a relaxed add each); the
//! Prometheus text format is produced only when `/metrics` is scraped, together with the gauges
//! the application reads at that moment ([`Gauges`]).
//!
//! Label sets are fixed arrays (endpoints, chat types, close codes, WeChat APIs), so a hostile
//! peer cannot grow the label space.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A monotonically increasing count.
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

const MAX_BUCKETS: usize = 16;

/// Upper bounds (inclusive) of latency buckets, in microseconds: 100 us to 10 s.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of batch-size buckets (messages per persister transaction).
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];

/// A histogram over integer observations, rendered with `divisor` (1e6 turns microseconds into
/// Prometheus' seconds).
pub struct Histogram {
    bounds: &'static [u64],
    divisor: f64,
    /// Non-cumulative counts per bucket; the +Inf bucket is `count`.
    buckets: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [u64], divisor: f64) -> Histogram {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            divisor,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram in seconds.
    pub const fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_US, 1e6)
    }

    pub fn observe(&self, value: u64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// WebSocket endpoints, as `endpoint` label values.
pub const ENDPOINTS: [&str; 4] = ["chat", "qrlogin", "echo", "subscriber"];
/// `chat_type` 0..=3 as label values.
pub const CHAT_TYPES: [&str; 4] = ["friend", "group", "service", "consult"];
/// Login methods, as `method` label values.
pub const LOGIN_METHODS: [&str; 5] = ["dologin", "wx", "qr", "token", "visitor"];
/// Close codes counted one by one; anything else is `other`.
pub const CLOSE_CODES: [u16; 16] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1013, 4001, 4002, 4003, 4004, 4005,
];
/// WeChat API calls, as `api` label values.
pub const WECHAT_APIS: [&str; 8] = [
    "jscode2session",
    "access_token",
    "check_token",
    "qrcode_create",
    "user_info",
    "custom_send",
    "custom_typing",
    "media_upload",
];

/// Everything counted in this process.
pub struct Metrics {
    pub ws_opened: [Counter; ENDPOINTS.len()],
    /// Indexed like `CLOSE_CODES`, plus `other` last.
    pub ws_closed: [Counter; CLOSE_CODES.len() + 1],
    /// Messages committed, by chat type.
    pub messages: [Counter; CHAT_TYPES.len()],
    /// `send` commands answered with an error.
    pub messages_rejected: Counter,
    /// Message frames queued to recipients' connections.
    pub deliveries: Counter,
    /// `[method][0]` succeeded, `[method][1]` failed.
    pub logins: [[Counter; 2]; LOGIN_METHODS.len()],
    pub store_errors: Counter,
    pub wechat_calls: [Counter; WECHAT_APIS.len()],
    pub wechat_errors: [Counter; WECHAT_APIS.len()],
    pub wechat_seconds: Histogram,
    /// `[0]` accepted, `[1]` refused (signature, timestamp, decryption, format).
    pub wechat_callbacks: [Counter; 2],
    /// Command received to ack queued, for `send`.
    pub ack_seconds: Histogram,
    /// Job submitted to its continuation running on the reactor.
    pub job_seconds: Histogram,
    /// Jobs refused because the worker queue was full.
    pub jobs_rejected: Counter,
    pub persist_batch_seconds: Histogram,
    pub persist_batch_size: Histogram,
    pub admin_events_dropped: Counter,
    pub subscribers_dropped: Counter,
    /// Bus envelopes written to other nodes' streams (one per destination node).
    pub bus_published: Counter,
    /// Bus envelopes read from this node's stream and delivered.
    pub bus_received: Counter,
    /// Bus envelopes read twice (a retried write) and dropped.
    pub bus_duplicates: Counter,
    /// Times this node's stream lost entries it had not read (clients told to resync).
    pub bus_gaps: Counter,
    /// Pushes dropped because the publisher's queue was full.
    pub bus_dropped: Counter,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            ws_opened: [const { Counter::new() }; ENDPOINTS.len()],
            ws_closed: [const { Counter::new() }; CLOSE_CODES.len() + 1],
            messages: [const { Counter::new() }; CHAT_TYPES.len()],
            messages_rejected: Counter::new(),
            deliveries: Counter::new(),
            logins: [const { [const { Counter::new() }; 2] }; LOGIN_METHODS.len()],
            store_errors: Counter::new(),
            wechat_calls: [const { Counter::new() }; WECHAT_APIS.len()],
            wechat_errors: [const { Counter::new() }; WECHAT_APIS.len()],
            wechat_seconds: Histogram::latency(),
            wechat_callbacks: [const { Counter::new() }; 2],
            ack_seconds: Histogram::latency(),
            job_seconds: Histogram::latency(),
            jobs_rejected: Counter::new(),
            persist_batch_seconds: Histogram::latency(),
            persist_batch_size: Histogram::new(BATCH_BOUNDS, 1.0),
            admin_events_dropped: Counter::new(),
            subscribers_dropped: Counter::new(),
            bus_published: Counter::new(),
            bus_received: Counter::new(),
            bus_duplicates: Counter::new(),
            bus_gaps: Counter::new(),
            bus_dropped: Counter::new(),
        }
    }

    /// Counts a closed WebSocket under its close code.
    pub fn closed(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.ws_closed[i].inc();
    }

    /// Counts a login attempt.
    pub fn login(&self, method: &str, ok: bool) {
        if let Some(i) = LOGIN_METHODS.iter().position(|m| *m == method) {
            self.logins[i][usize::from(!ok)].inc();
        }
    }

    /// Messages committed so far, all chat types.
    pub fn messages_total(&self) -> u64 {
        self.messages.iter().map(Counter::get).sum()
    }
}

pub static METRICS: Metrics = Metrics::new();

/// Figures the application reads when `/metrics` is scraped.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub connections: u64,
    /// Open WebSockets, indexed like `ENDPOINTS`.
    pub websockets: [u64; ENDPOINTS.len()],
    pub users_online: u64,
    pub persister_queue: u64,
    pub persister_lag_seconds: f64,
    pub worker_queue: u64,
    pub jobs_in_flight: u64,
    pub service_queue: u64,
    pub consultations_running: u64,
    pub resident_memory_bytes: u64,
    pub uptime_seconds: u64,
    pub start_time_seconds: u64,
    /// With the Redis bus: its health.
    pub bus: Option<BusGauges>,
}

/// The bus's figures (see `cluster::bus`).
#[derive(Clone, Debug, Default)]
pub struct BusGauges {
    /// Since the last entry was read; -1 before the first.
    pub last_read_age_seconds: f64,
    /// The last ping round trip; -1 before the first.
    pub round_trip_seconds: f64,
    /// Since the last round trip completed (or the start).
    pub round_trip_age_seconds: f64,
    pub healthy: bool,
}

/// Builds Prometheus text exposition format 0.0.4.
/// The page being written, and the `node` label every sample carries (several nodes scraped
/// into one Prometheus stay apart even when their instance labels are rewritten).
struct Exposition {
    out: String,
    node: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let out = &mut self.out;
        out.push_str(name);
        out.push('{');
        label(out, "node", &self.node);
        for (k, v) in labels {
            out.push(',');
            label(out, k, v);
        }
        out.push('}');
        let _ = writeln!(out, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.buckets[i].load(Relaxed);
            let le = format_float(*bound as f64 / h.divisor);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative);
        }
        // Read count after the buckets: concurrent observations can only make +Inf larger, which
        // keeps the buckets monotonic.
        let count = h.count.load(Relaxed).max(cumulative);
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, count);
        let sum = h.sum.load(Relaxed) as f64 / h.divisor;
        self.sample(&format!("{name}_sum"), labels, format_float(sum));
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// `k="v"`, the value escaped as the text format asks.
fn label(out: &mut String, k: &str, v: &str) {
    let _ = write!(out, "{k}=\"");
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Prometheus float text: integers without a fraction, others in the shortest exact form.
fn format_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The whole `/metrics` page.
pub fn render(g: &Gauges, node: &str) -> String {
    let m = &METRICS;
    let mut e = Exposition {
        out: String::with_capacity(8 * 1024),
        node: node.to_string(),
    };
    e.family(
        "wxchat_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    e.sample(
        "wxchat_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.single(
        "wxchat_start_time_seconds",
        "gauge",
        "Unix time the server started.",
        g.start_time_seconds,
    );
    e.single(
        "wxchat_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        g.uptime_seconds,
    );
    e.single(
        "wxchat_resident_memory_bytes",
        "gauge",
        "Resident set size of the server process.",
        g.resident_memory_bytes,
    );
    e.single(
        "wxchat_connections",
        "gauge",
        "Open TCP connections (HTTP and WebSocket, both listeners).",
        g.connections,
    );
    e.family("wxchat_websockets", "gauge", "Open WebSockets by endpoint.");
    for (i, name) in ENDPOINTS.iter().enumerate() {
        e.sample("wxchat_websockets", &[("endpoint", name)], g.websockets[i]);
    }
    e.single(
        "wxchat_users_online",
        "gauge",
        "Authenticated users with at least one chat connection on this process.",
        g.users_online,
    );
    e.family(
        "wxchat_websockets_opened_total",
        "counter",
        "WebSockets opened by endpoint.",
    );
    for (i, name) in ENDPOINTS.iter().enumerate() {
        e.sample(
            "wxchat_websockets_opened_total",
            &[("endpoint", name)],
            m.ws_opened[i].get(),
        );
    }
    e.family(
        "wxchat_websockets_closed_total",
        "counter",
        "WebSockets closed by close code (1006: dropped without a close frame).",
    );
    for (i, code) in CLOSE_CODES.iter().enumerate() {
        e.sample(
            "wxchat_websockets_closed_total",
            &[("code", &code.to_string())],
            m.ws_closed[i].get(),
        );
    }
    e.sample(
        "wxchat_websockets_closed_total",
        &[("code", "other")],
        m.ws_closed[CLOSE_CODES.len()].get(),
    );
    e.family(
        "wxchat_messages_total",
        "counter",
        "Messages committed by chat type.",
    );
    for (i, name) in CHAT_TYPES.iter().enumerate() {
        e.sample(
            "wxchat_messages_total",
            &[("chat_type", name)],
            m.messages[i].get(),
        );
    }
    e.single(
        "wxchat_messages_rejected_total",
        "counter",
        "send commands answered with an error code.",
        m.messages_rejected.get(),
    );
    e.single(
        "wxchat_deliveries_total",
        "counter",
        "Message frames queued to recipients' connections.",
        m.deliveries.get(),
    );
    e.histogram(
        "wxchat_message_ack_seconds",
        "From a send command's arrival to its ack (validation, persistence, commit).",
        &[],
        &m.ack_seconds,
    );
    e.family(
        "wxchat_logins_total",
        "counter",
        "Logins by method and result.",
    );
    for (i, method) in LOGIN_METHODS.iter().enumerate() {
        for (j, result) in ["ok", "fail"].iter().enumerate() {
            e.sample(
                "wxchat_logins_total",
                &[("method", method), ("result", result)],
                m.logins[i][j].get(),
            );
        }
    }
    e.single(
        "wxchat_store_errors_total",
        "counter",
        "Database and cache failures (MySQL, SQLite, Redis).",
        m.store_errors.get(),
    );
    e.single(
        "wxchat_persister_queue",
        "gauge",
        "Messages accepted and waiting to be written.",
        g.persister_queue,
    );
    e.single(
        "wxchat_persister_lag_seconds",
        "gauge",
        "How long the oldest message of the last batch waited for its commit.",
        format_float(g.persister_lag_seconds),
    );
    e.histogram(
        "wxchat_persist_batch_seconds",
        "Time to write and commit one batch of messages.",
        &[],
        &m.persist_batch_seconds,
    );
    e.histogram(
        "wxchat_persist_batch_size",
        "Messages per committed batch.",
        &[],
        &m.persist_batch_size,
    );
    e.single(
        "wxchat_worker_queue",
        "gauge",
        "Jobs waiting for a worker thread.",
        g.worker_queue,
    );
    e.single(
        "wxchat_jobs_in_flight",
        "gauge",
        "Jobs and messages submitted and not yet continued on the reactor.",
        g.jobs_in_flight,
    );
    e.single(
        "wxchat_jobs_rejected_total",
        "counter",
        "Jobs refused because the worker queue was full (answered 503).",
        m.jobs_rejected.get(),
    );
    e.histogram(
        "wxchat_job_seconds",
        "From a job's submission to its continuation on the reactor (queue wait included).",
        &[],
        &m.job_seconds,
    );
    e.single(
        "wxchat_service_queue",
        "gauge",
        "Customers waiting for an agent.",
        g.service_queue,
    );
    e.single(
        "wxchat_consultations_running",
        "gauge",
        "Timed consultations held in memory on this process.",
        g.consultations_running,
    );
    e.family(
        "wxchat_wechat_api_calls_total",
        "counter",
        "WeChat API calls by API.",
    );
    for (i, api) in WECHAT_APIS.iter().enumerate() {
        e.sample(
            "wxchat_wechat_api_calls_total",
            &[("api", api)],
            m.wechat_calls[i].get(),
        );
    }
    e.family(
        "wxchat_wechat_api_errors_total",
        "counter",
        "WeChat API calls that failed (an errcode, or no usable answer), by API.",
    );
    for (i, api) in WECHAT_APIS.iter().enumerate() {
        e.sample(
            "wxchat_wechat_api_errors_total",
            &[("api", api)],
            m.wechat_errors[i].get(),
        );
    }
    e.histogram(
        "wxchat_wechat_api_seconds",
        "WeChat API call duration.",
        &[],
        &m.wechat_seconds,
    );
    e.family(
        "wxchat_wechat_callbacks_total",
        "counter",
        "WeChat message pushes by result.",
    );
    e.sample(
        "wxchat_wechat_callbacks_total",
        &[("result", "accepted")],
        m.wechat_callbacks[0].get(),
    );
    e.sample(
        "wxchat_wechat_callbacks_total",
        &[("result", "refused")],
        m.wechat_callbacks[1].get(),
    );
    e.single(
        "wxchat_admin_events_dropped_total",
        "counter",
        "Info-topic events dropped because too many were on their way to the reactor.",
        m.admin_events_dropped.get(),
    );
    e.single(
        "wxchat_subscribers_dropped_total",
        "counter",
        "Subscribers disconnected for reading too slowly.",
        m.subscribers_dropped.get(),
    );
    for (name, help, c) in [
        (
            "wxchat_bus_published_total",
            "Bus envelopes written to other processes' streams (one per destination).",
            &m.bus_published,
        ),
        (
            "wxchat_bus_received_total",
            "Bus envelopes read from this process's stream and delivered.",
            &m.bus_received,
        ),
        (
            "wxchat_bus_duplicates_total",
            "Bus envelopes read twice (a retried write) and dropped.",
            &m.bus_duplicates,
        ),
        (
            "wxchat_bus_gaps_total",
            "Times this process's bus stream lost unread entries (clients told to resync).",
            &m.bus_gaps,
        ),
        (
            "wxchat_bus_dropped_total",
            "Pushes dropped because the bus publisher's queue was full.",
            &m.bus_dropped,
        ),
    ] {
        e.single(name, "counter", help, c.get());
    }
    if let Some(b) = &g.bus {
        e.single(
            "wxchat_bus_last_read_age_seconds",
            "gauge",
            "Seconds since the bus reader last read an entry; -1 before the first.",
            format_float(b.last_read_age_seconds),
        );
        e.single(
            "wxchat_bus_round_trip_seconds",
            "gauge",
            "The last ping's round trip through this process's bus stream; -1 before the first.",
            format_float(b.round_trip_seconds),
        );
        e.single(
            "wxchat_bus_round_trip_age_seconds",
            "gauge",
            "Seconds since the last bus round trip completed (or the start).",
            format_float(b.round_trip_age_seconds),
        );
        e.single(
            "wxchat_bus_healthy",
            "gauge",
            "1 while the bus round-trips within its bound (else /healthz answers 503).",
            u8::from(b.healthy),
        );
    }
    e.out
}

/// Resident set size from `/proc/self/statm` (procfs: answered from kernel memory, never from
/// disk, so reading it on the reactor does not block). 0 where unavailable.
pub fn resident_memory_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::latency();
        h.observe_duration(Duration::from_micros(50));
        h.observe_duration(Duration::from_micros(300));
        h.observe_duration(Duration::from_secs(60));
        let mut e = Exposition {
            out: String::new(),
            node: "n".into(),
        };
        e.histogram("x", "help", &[], &h);
        let text = e.out;
        assert!(
            text.contains("x_bucket{node=\"n\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_bucket{node=\"n\",le=\"0.0005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_bucket{node=\"n\",le=\"10\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_bucket{node=\"n\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("x_sum{node=\"n\"} 60.00035\n"), "{text}");
        assert!(text.contains("x_count{node=\"n\"} 3\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition {
            out: String::new(),
            node: "n\"1".into(),
        };
        e.sample("m", &[("a", "q\"b\\n\nx")], 1);
        assert_eq!(e.out, "m{node=\"n\\\"1\",a=\"q\\\"b\\\\n\\nx\"} 1\n");
    }

    #[test]
    fn every_line_is_a_comment_or_a_sample() {
        let text = render(&Gauges::default(), "n1");
        assert!(text.starts_with("# HELP wxchat_build_info "));
        assert!(text.contains("wxchat_build_info{node=\"n1\",version=\""));
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("wxchat_"), "{line}");
            assert!(
                value == "+Inf" || value.parse::<f64>().is_ok(),
                "bad value: {line}"
            );
        }
    }

    #[test]
    fn unknown_close_codes_count_as_other() {
        let before = METRICS.ws_closed[CLOSE_CODES.len()].get();
        METRICS.closed(4999);
        assert!(METRICS.ws_closed[CLOSE_CODES.len()].get() > before);
    }
}
