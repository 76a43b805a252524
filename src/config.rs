//! Configuration: `server.toml`, then `WXCHAT_<SECTION>_<KEY>` environment overrides, over defaults
//! that need nothing installed.
//!
//! Unknown keys are errors that name the key: a typo in an operator's config must not silently fall
//! back to a default. The key names are a contract (operators' configs and scripts depend on them).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub ws: WsConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub chat: ChatConfig,
    pub upload: UploadConfig,
    pub redis: RedisConfig,
    pub wechat: WechatConfig,
    pub service: ServiceConfig,
    pub consult: ConsultConfig,
    pub admin: AdminConfig,
    pub web: WebConfig,
}

/// `[web]`: the pages the server serves (agent console, visitor widget, chat demo, QR login)
/// and the JavaScript SDK they load.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// `auto` (serve them while `[server] listen` is a loopback address), `on` or `off`.
    pub enabled: String,
    /// Serve the pages from this directory instead of the copy built into the binary (for
    /// working on them without rebuilding); empty = the built-in copy.
    pub dir: String,
    /// `POST /api/demo/login` hands out tokens without a business backend, for trying the pages
    /// on a developer's machine. It exists only while this is on and the listener is loopback.
    pub demo: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: "auto".into(),
            dir: String::new(),
            demo: true,
        }
    }
}

impl Config {
    /// The client listener is on a loopback address (the pages and the demo login default to
    /// on there only).
    pub fn listener_is_loopback(&self) -> bool {
        self.server
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }

    /// Whether the pages are served (`[web] enabled`).
    pub fn web_enabled(&self) -> bool {
        match self.web.enabled.as_str() {
            "on" => true,
            "off" => false,
            _ => self.listener_is_loopback(),
        }
    }

    /// Whether `POST /api/demo/login` exists.
    pub fn demo_login_enabled(&self) -> bool {
        self.web.demo && self.web_enabled() && self.listener_is_loopback()
    }
}

/// `[admin]`: the admin listener (info topics for `subscriber`, `/metrics`, `/status`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; empty = none. Port 0 picks a free port.
    pub listen: String,
    /// Bearer token required from every peer that is not on loopback; a non-loopback `listen`
    /// needs one.
    pub token: String,
    /// `serverInfo` is published this often (seconds).
    pub server_info_every_s: u64,
    /// The `message` topic carries message bodies (off: ids, sizes and types only).
    pub message_bodies: bool,
    /// Bytes a subscriber may have waiting unread; above it the subscriber is dropped.
    pub subscriber_buffer_bytes: usize,
    /// Subscribers connected at once at most.
    pub max_subscribers: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9502".into(),
            token: String::new(),
            server_info_every_s: 5,
            message_bodies: false,
            subscriber_buffer_bytes: 256 * 1024,
            max_subscribers: 32,
        }
    }
}

/// `[service]`: the customer-service desk (`chat_type` 2).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Open sessions one agent serves at most; further customers wait in the queue.
    pub max_sessions_per_agent: usize,
    /// An agent disconnected longer than this loses their open sessions to the queue.
    pub grace_s: u64,
    /// Office hours, e.g. `"mon-fri 09:00-18:00"` or `"09:00-21:00"`; empty = always open.
    pub office_hours: String,
    /// The office hours' time zone as a UTC offset, e.g. `"+08:00"`.
    pub utc_offset: String,
    /// Sent (as a system message) when a session opens within office hours; empty = none.
    pub welcome: String,
    /// Sent instead of `welcome` outside office hours; empty = none.
    pub offline_message: String,
    /// Sent when the customer has to wait; `{position}` is replaced; empty = none.
    pub queue_message: String,
    /// Sent when a session closes; empty = none.
    pub closing_message: String,
    /// A closed session asks the customer for a rating (`service_rate`).
    pub ask_rating: bool,
    /// Lifetime of an anonymous visitor's token (`POST /api/service/visitor`).
    pub visitor_ttl_s: u64,
    /// Visitor identities one client IP may create per minute (429 above); 0 = unlimited.
    pub visitors_per_ip_per_min: u64,
    /// Anonymous visitors idle this long (no login and no message in their conversation) are
    /// deleted with their conversation by a periodic purge; 0 = never. At least
    /// `visitor_ttl_s`, so that no live token outlives its visitor.
    pub visitor_purge_after_s: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            max_sessions_per_agent: 5,
            grace_s: 60,
            office_hours: String::new(),
            utc_offset: "+08:00".into(),
            welcome: String::new(),
            offline_message: String::new(),
            queue_message: String::new(),
            closing_message: String::new(),
            ask_rating: true,
            visitor_ttl_s: 86_400,
            visitors_per_ip_per_min: 10,
            visitor_purge_after_s: 30 * 86_400,
        }
    }
}

/// `[consult]`: timed consultations (`chat_type` 3).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsultConfig {
    /// Both sides get the remaining time this often while it runs.
    pub report_every_s: u64,
    /// Both sides get a warning when the remaining time falls to each of these (seconds).
    pub warn_at_s: Vec<u64>,
    /// Running consultations' remaining time is saved this often (a crash loses at most this).
    pub save_every_s: u64,
}

impl Default for ConsultConfig {
    fn default() -> Self {
        ConsultConfig {
            report_every_s: 60,
            warn_at_s: vec![300, 60],
            save_every_s: 5,
        }
    }
}

/// `[wechat]`: the WeChat apps (mini-programs, mini-games, official accounts) wxchat serves.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WechatConfig {
    /// Timeout of one WeChat API call (connect + response).
    pub timeout_ms: u64,
    /// A callback whose `timestamp` is further than this from our clock is refused (replays).
    pub callback_window_s: u64,
    /// Lifetime of a login QR code (`/ws/qrlogin`), at most 2592000.
    pub qr_expire_s: u64,
    pub apps: Vec<WechatApp>,
}

impl Default for WechatConfig {
    fn default() -> Self {
        WechatConfig {
            timeout_ms: 5000,
            callback_window_s: 300,
            qr_expire_s: 120,
            apps: Vec::new(),
        }
    }
}

/// One `[[wechat.apps]]` entry.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WechatApp {
    /// Our name for it: `{"app": name}` in logins, `/wechat/<name>/callback`.
    pub name: String,
    /// `miniprogram`, `minigame` or `official`.
    pub kind: String,
    pub appid: String,
    pub secret: String,
    /// Callback verification token (the message-push configuration).
    #[serde(default)]
    pub token: String,
    /// EncodingAESKey for safe-mode callbacks (43 characters).
    #[serde(default)]
    pub aes_key: String,
    /// WeChat API base URL (tests point it at a local fake).
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// `stable` (cgi-bin/stable_token: other fetches do not invalidate it) or `token`
    /// (cgi-bin/token, for accounts that cannot use stable_token).
    #[serde(default = "default_token_endpoint")]
    pub token_endpoint: String,
    /// Refuse plaintext callbacks: only safe mode (`encrypt_type=aes`) is accepted.
    #[serde(default)]
    pub require_encryption: bool,
}

fn default_token_endpoint() -> String {
    "stable".into()
}

fn default_api_base() -> String {
    "https://api.weixin.qq.com".into()
}

/// Secrets never reach logs: Debug shows only whether they are set.
impl fmt::Debug for WechatApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &str| if v.is_empty() { "<unset>" } else { "<set>" };
        f.debug_struct("WechatApp")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("appid", &self.appid)
            .field("secret", &set(&self.secret))
            .field("token", &set(&self.token))
            .field("aes_key", &set(&self.aes_key))
            .field("api_base", &self.api_base)
            .field("token_endpoint", &self.token_endpoint)
            .field("require_encryption", &self.require_encryption)
            .finish()
    }
}

impl WechatConfig {
    /// The app called `name`, or the only app of these kinds when `name` is None.
    pub fn app(&self, name: Option<&str>, kinds: &[&str]) -> Option<&WechatApp> {
        match name {
            Some(n) => self
                .apps
                .iter()
                .find(|a| a.name == n && kinds.contains(&a.kind.as_str())),
            None => {
                let mut of_kind = self
                    .apps
                    .iter()
                    .filter(|a| kinds.contains(&a.kind.as_str()));
                let first = of_kind.next();
                if of_kind.next().is_some() {
                    None
                } else {
                    first
                }
            }
        }
    }
}

/// `[redis]`: tokens, presence, the shared cache and rate-limit counters. Empty `url` = all of
/// them in-process (tokens then live in the database).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` or `redis+unix:///path`; empty = no Redis.
    pub url: String,
    /// Every key starts with this (several deployments can share one Redis).
    pub prefix: String,
    /// Idle connections kept open.
    pub pool: usize,
    /// Connect, read and write timeout of one Redis call.
    pub timeout_ms: u64,
    /// A node's presence entries lapse this long after its last refresh (a crashed node's users
    /// go offline); refreshed every third of it.
    pub presence_ttl_s: u64,
    /// Each node's bus stream (`<prefix>bus:<node>`) keeps about this many entries (`XADD MAXLEN
    /// ~`); a node that falls further behind (or a Redis restart without persistence) loses
    /// live pushes and tells its clients to `resync`.
    pub bus_stream_len: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            prefix: "wxchat:".into(),
            pool: 8,
            timeout_ms: 2000,
            presence_ttl_s: 60,
            bus_stream_len: 100_000,
        }
    }
}

/// `[upload]`: files clients upload for media messages, and where they are kept.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Largest upload (413 above). Other routes keep `[http] max_body_bytes`.
    pub max_bytes: usize,
    /// `local`: files under `data_dir/files` (one node). `s3`: objects in an S3-compatible bucket
    /// (AWS S3, Tencent COS, Aliyun OSS, MinIO), the same for every node of a cluster.
    pub backend: String,
    /// How `GET /files/<name>` answers with `backend = "s3"`: `proxy` (this server reads the
    /// object and sends it, same URL and headers as local files) or `redirect` (302 to a
    /// presigned GET valid `s3_url_ttl_s`; clients must reach `s3_endpoint`).
    pub serve: String,
    /// The store's base URL, `https://cos.ap-guangzhou.myqcloud.com`, `http://127.0.0.1:9000`.
    pub s3_endpoint: String,
    /// The region signatures are made for (`us-east-1` for MinIO).
    pub s3_region: String,
    /// The bucket (it must exist; this server does not create it).
    pub s3_bucket: String,
    /// Access key id.
    pub s3_access_key: String,
    /// Secret access key; better given as `WXCHAT_UPLOAD_S3_SECRET_KEY` than in the file.
    pub s3_secret_key: String,
    /// `true`: `endpoint/bucket/key` (MinIO, an IP address endpoint); `false`:
    /// `bucket.endpoint/key` (AWS, COS, OSS).
    pub s3_path_style: bool,
    /// Object keys are `<s3_prefix>/<sha256>.<ext>` (empty: the bucket's root).
    pub s3_prefix: String,
    /// Validity of a redirect's presigned URL (1..=604800, S3's limit).
    pub s3_url_ttl_s: u64,
    /// Timeout of one object-store call (a worker waits at most this long).
    pub s3_timeout_ms: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            max_bytes: 10 << 20,
            backend: "local".into(),
            serve: "proxy".into(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_bucket: String::new(),
            s3_access_key: String::new(),
            s3_secret_key: String::new(),
            s3_path_style: false,
            s3_prefix: "files".into(),
            s3_url_ttl_s: 300,
            s3_timeout_ms: 10_000,
        }
    }
}

/// The secret key never reaches logs: Debug shows only whether it is set.
impl fmt::Debug for UploadConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadConfig")
            .field("max_bytes", &self.max_bytes)
            .field("backend", &self.backend)
            .field("serve", &self.serve)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_access_key", &self.s3_access_key)
            .field(
                "s3_secret_key",
                &if self.s3_secret_key.is_empty() {
                    "<unset>"
                } else {
                    "<set>"
                },
            )
            .field("s3_path_style", &self.s3_path_style)
            .field("s3_prefix", &self.s3_prefix)
            .field("s3_url_ttl_s", &self.s3_url_ttl_s)
            .field("s3_timeout_ms", &self.s3_timeout_ms)
            .finish()
    }
}

impl UploadConfig {
    /// The `[upload]` values that parse but cannot work.
    fn check(&self) -> Result<(), String> {
        if !matches!(self.serve.as_str(), "proxy" | "redirect") {
            return Err("[upload] serve must be \"proxy\" or \"redirect\"".into());
        }
        match self.backend.as_str() {
            "local" => {
                if self.serve == "redirect" {
                    return Err("[upload] serve = \"redirect\" needs backend = \"s3\" (a local file has no URL of its own)".into());
                }
                return Ok(());
            }
            "s3" => {}
            other => {
                return Err(format!(
                    "[upload] backend = {other:?} is not known (use \"local\" or \"s3\")"
                ))
            }
        }
        let host = self
            .s3_endpoint
            .strip_prefix("https://")
            .or_else(|| self.s3_endpoint.strip_prefix("http://"))
            .unwrap_or("");
        if host.split('/').next().unwrap_or("").is_empty() {
            return Err(format!(
                "[upload] backend = \"s3\" needs s3_endpoint = \"https://host[:port]\" (got {:?})",
                self.s3_endpoint
            ));
        }
        let b = self.s3_bucket.as_str();
        if !(3..=63).contains(&b.len())
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        {
            return Err(format!(
                "[upload] s3_bucket = {b:?} must be 3..63 lowercase letters, digits, '-' or '.'"
            ));
        }
        if self.s3_region.is_empty() {
            return Err("[upload] s3_region must be set (us-east-1 for MinIO)".into());
        }
        if self.s3_access_key.is_empty() || self.s3_secret_key.is_empty() {
            return Err("[upload] backend = \"s3\" needs s3_access_key and s3_secret_key (or WXCHAT_UPLOAD_S3_ACCESS_KEY / WXCHAT_UPLOAD_S3_SECRET_KEY)".into());
        }
        if self.s3_prefix.starts_with('/') {
            return Err("[upload] s3_prefix must not start with '/'".into());
        }
        if !(1..=604_800).contains(&self.s3_url_ttl_s) {
            return Err(
                "[upload] s3_url_ttl_s must be 1..604800 (S3 presigned URLs last at most 7 days)"
                    .into(),
            );
        }
        if self.s3_timeout_ms == 0 {
            return Err("[upload] s3_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// `[store]`: where durable data lives.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (embedded, the default) or `mysql`.
    pub backend: String,
    /// `mysql://user:password@host:3306/database` when `backend = "mysql"`.
    pub mysql_url: String,
    /// Most pooled MySQL connections (the persister has one more of its own).
    pub mysql_pool: usize,
    /// Connect, read and write timeout of MySQL calls.
    pub mysql_timeout_s: u64,
    /// SQLite file; relative paths are under `[server] data_dir`.
    pub sqlite_path: String,
    /// `normal`: commits survive a process crash (kill -9); `full`: also a power loss.
    pub sqlite_synchronous: String,
    /// Most messages written in one transaction by the persister. A batch takes what is queued,
    /// so this only matters under load: large batches share each page they write among more
    /// messages (issue 23: many conversations), and each commit's fixed cost with them. The
    /// default equals the persister's queue bound (65,536): a batch may take the whole queue.
    pub max_batch: usize,
}

/// Messages waiting for the persister at most (sends beyond it are refused as busy); the
/// default `[store] max_batch`, so one batch can take everything queued.
pub const PERSIST_QUEUE_MESSAGES: usize = 64 * 1024;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: "sqlite".into(),
            mysql_url: String::new(),
            mysql_pool: 8,
            mysql_timeout_s: 10,
            sqlite_path: "wxchat.db".into(),
            sqlite_synchronous: "normal".into(),
            max_batch: PERSIST_QUEUE_MESSAGES,
        }
    }
}

/// `[auth]`: logins and tokens.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Key of the online_chat-compatible doLogin signature. Empty: generated on first start and
    /// kept in `data_dir/secrets.toml`.
    pub sign_key: String,
    /// Lifetime of issued tokens.
    pub token_ttl_s: u64,
    /// doLogin `time` must be within this many seconds of the server clock.
    pub time_window_s: u64,
    /// Failed logins (bad signature) from one IP address allowed per `login_failure_window_s`;
    /// more are refused with 429 (counted in Redis when configured, so across nodes). 0 = off.
    pub login_failures_per_ip: u64,
    pub login_failure_window_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            sign_key: String::new(),
            token_ttl_s: 7 * 24 * 3600,
            time_window_s: 30,
            login_failures_per_ip: 20,
            login_failure_window_s: 300,
        }
    }
}

/// `[api]`: the server API for the integrating business backend.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer key of the server API. Empty: generated on first start and kept in
    /// `data_dir/secrets.toml`.
    pub key: String,
}

/// `[chat]`: chat rules and limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Allow one-to-one messages between users who are not friends.
    pub allow_strangers: bool,
    /// Messages per second one connection may send (429 above); 0 = unlimited.
    pub max_msgs_per_sec: u32,
    /// An unauthenticated WebSocket is closed (4002) after this many seconds.
    pub auth_timeout_s: u64,
    /// A sender may recall a message this long after sending it.
    pub recall_window_s: u64,
    /// Largest text or rich-text message body, in bytes (413 above).
    pub max_text_bytes: usize,
    /// Requests one connection may have waiting on the store before it is refused (503).
    pub max_pending_per_conn: usize,
    /// Most members in one group.
    pub max_group_members: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            allow_strangers: false,
            max_msgs_per_sec: 20,
            auth_timeout_s: 10,
            recall_window_s: 120,
            max_text_bytes: 16 * 1024,
            max_pending_per_conn: 64,
            max_group_members: 10_000,
        }
    }
}

/// Highest `SCHED_FIFO` priority Linux accepts (`[server] realtime_priority`).
pub const MAX_REALTIME_PRIORITY: u8 = 99;

/// `[server]`: process-wide settings and per-connection output limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the client listener (HTTP + WebSocket). Port 0 picks a free port.
    pub listen: String,
    /// Directory for the embedded database, pid file, log file and generated keys.
    pub data_dir: PathBuf,
    /// Accepting pauses at this many open connections (accept gating) and resumes below it.
    pub max_connections: usize,
    /// Worker threads for blocking jobs (database, Redis, WeChat HTTPS).
    pub workers: usize,
    /// Hard cap on bytes queued for one connection; over it the connection is closed at once.
    pub max_out_bytes: usize,
    /// Soft cap: a connection whose queue stays above this for `soft_out_secs` is closed. The
    /// server stops reading from a connection above 64 KiB of unsent output, or above this when
    /// it is lower (backpressure).
    pub soft_out_bytes: usize,
    /// Seconds a connection may stay above `soft_out_bytes`.
    pub soft_out_secs: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// This process's name in shared presence; empty = `<hostname>-<pid>-<random>`.
    pub node_id: String,
    /// `server upgrade`: the old process closes its WebSockets (1012) spread over this many
    /// seconds, so their reconnects reach the new one as a stream, not a storm.
    pub drain_s: u64,
    /// `SCHED_FIFO` priority (1-99) for the reactor and the persister; 0 = normal scheduling.
    /// See `rt::priority` for why.
    pub realtime_priority: u8,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:9501".into(),
            data_dir: PathBuf::from("./data"),
            max_connections: 100_000,
            workers: 4,
            max_out_bytes: 16 << 20,
            soft_out_bytes: 1 << 20,
            soft_out_secs: 10,
            log_level: "info".into(),
            node_id: String::new(),
            drain_s: 10,
            realtime_priority: 0,
        }
    }
}

/// `[http]`: limits of the HTTP layer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Request line + headers; over it the answer is 431.
    pub max_header_bytes: usize,
    /// Most headers in one request; over it the answer is 431.
    pub max_headers: usize,
    /// Content-Length bodies over this are answered 413 before the body is read.
    pub max_body_bytes: usize,
    /// An idle keep-alive connection (or one that never finishes its request) is closed after this.
    pub idle_timeout_s: u64,
    /// Peers whose `X-Real-IP` / `X-Forwarded-For` name the client (the nginx in front).
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_body_bytes: 1 << 20,
            idle_timeout_s: 60,
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
        }
    }
}

/// `[ws]`: WebSocket endpoints and limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Path of the chat WebSocket endpoint.
    pub path: String,
    /// Path of the echo endpoint (conformance tests, benchmarks); empty = off.
    pub echo_path: String,
    /// Largest single frame accepted (1009 above).
    pub max_frame_bytes: usize,
    /// Largest reassembled message accepted (1009 above).
    pub max_message_bytes: usize,
    /// The server pings idle peers this often; a peer silent for two intervals is dropped. 0 = off.
    pub ping_interval_s: u64,
    /// A connection must complete its HTTP upgrade within this many seconds.
    pub handshake_timeout_s: u64,
    /// Accepted `Origin` values; empty = any origin.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks, in preference order; empty = none.
    pub subprotocols: Vec<String>,
    /// permessage-deflate (RFC 7692): `off`; `on` (accepted whenever offered, without context
    /// takeover: idle connections hold no compression state); `context_takeover` (each
    /// connection keeps its compressor and inflater, ~300 KiB, for better ratios).
    pub permessage_deflate: String,
    /// Frames with a smaller payload are sent uncompressed.
    pub permessage_deflate_min_bytes: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: "/ws".into(),
            echo_path: String::new(),
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            ping_interval_s: 30,
            handshake_timeout_s: 10,
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            permessage_deflate: "on".into(),
            permessage_deflate_min_bytes: 512,
        }
    }
}

/// A configuration error, with enough context for an operator to fix it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

const ENV_PREFIX: &str = "WXCHAT_";
/// The test suite's own variables (`WXCHAT_TEST_MYSQL_URL`, ...): not configuration, so a
/// developer who exported them can still run the server.
const TEST_ENV_PREFIX: &str = "WXCHAT_TEST_";

impl Config {
    /// Loads `path` (or only defaults when `None`), applies the process environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("cannot read config {}: {e}", p.display())))?,
            None => String::new(),
        };
        let origin = path.map_or_else(|| "defaults".to_string(), |p| p.display().to_string());
        Config::from_parts(&text, &origin, std::env::vars())
    }

    /// Parses TOML `text`, applies `WXCHAT_*` overrides from `env`, validates.
    pub fn from_parts(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(format!("internal: defaults do not serialise: {e}")))?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !k.starts_with(TEST_ENV_PREFIX))
            .collect();
        overrides.sort();
        for (name, value) in overrides {
            apply_env(&mut table, &defaults, &name, &value)?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError(m.to_string()));
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return err(&format!(
                "[server] listen = {:?} is not an address like 127.0.0.1:9501",
                self.server.listen
            ));
        }
        if self.server.max_connections == 0 {
            return err("[server] max_connections must be at least 1");
        }
        if self.server.workers == 0 {
            return err("[server] workers must be at least 1");
        }
        if self.server.soft_out_bytes > self.server.max_out_bytes {
            return err("[server] soft_out_bytes must not exceed max_out_bytes");
        }
        if self.server.realtime_priority > MAX_REALTIME_PRIORITY {
            return err("[server] realtime_priority must be 0 (off) or 1-99");
        }
        if log_level(&self.server.log_level).is_none() {
            return err("[server] log_level must be one of error, warn, info, debug, trace");
        }
        if !self.ws.path.starts_with('/') {
            return err("[ws] path must start with '/'");
        }
        if crate::ws::deflate::Mode::parse(&self.ws.permessage_deflate).is_none() {
            return err("[ws] permessage_deflate must be \"off\", \"on\" or \"context_takeover\"");
        }
        if !["auto", "on", "off"].contains(&self.web.enabled.as_str()) {
            return err("[web] enabled must be \"auto\", \"on\" or \"off\"");
        }
        if !self.ws.echo_path.is_empty() && !self.ws.echo_path.starts_with('/') {
            return err("[ws] echo_path must be empty or start with '/'");
        }
        if self.ws.echo_path == self.ws.path {
            return err("[ws] echo_path must differ from [ws] path");
        }
        if crate::chat::office_hours::OfficeHours::parse(
            &self.service.office_hours,
            &self.service.utc_offset,
        )
        .is_err()
        {
            return err("[service] office_hours must look like \"mon-fri 09:00-18:00\" (or be empty) and utc_offset like \"+08:00\"");
        }
        if self.service.max_sessions_per_agent == 0 {
            return err("[service] max_sessions_per_agent must be at least 1");
        }
        let purge = self.service.visitor_purge_after_s;
        if purge != 0 && purge < self.service.visitor_ttl_s {
            return err("[service] visitor_purge_after_s must be 0 (off) or at least visitor_ttl_s: a visitor's token must not outlive the visitor");
        }
        if !self.admin.listen.is_empty() {
            let Ok(addr) = self.admin.listen.parse::<std::net::SocketAddr>() else {
                return err(&format!(
                    "[admin] listen = {:?} is not an address like 127.0.0.1:9502 (or empty for none)",
                    self.admin.listen
                ));
            };
            if !addr.ip().is_loopback() && self.admin.token.len() < 16 {
                return err("[admin] listen is not a loopback address: set [admin] token (16 characters or more) so only operators can read it");
            }
        }
        if self.admin.server_info_every_s == 0 {
            return err("[admin] server_info_every_s must be at least 1");
        }
        if self.admin.subscriber_buffer_bytes < 4096 {
            return err("[admin] subscriber_buffer_bytes must be at least 4096");
        }
        if self.consult.report_every_s == 0 || self.consult.save_every_s == 0 {
            return err("[consult] report_every_s and save_every_s must be at least 1");
        }
        if self.ws.max_frame_bytes < 125 || self.ws.max_message_bytes < self.ws.max_frame_bytes {
            return err("[ws] needs 125 <= max_frame_bytes <= max_message_bytes");
        }
        match self.store.backend.as_str() {
            "sqlite" => {}
            "mysql" => {
                if !self.store.mysql_url.starts_with("mysql://") {
                    return err(
                        "[store] backend = \"mysql\" needs mysql_url = \"mysql://user:password@host:3306/database\"",
                    );
                }
                if self.store.mysql_pool == 0 {
                    return err("[store] mysql_pool must be at least 1");
                }
                if self.store.mysql_timeout_s == 0 {
                    return err("[store] mysql_timeout_s must be at least 1");
                }
            }
            other => {
                return err(&format!(
                    "[store] backend = {other:?} is not known (use \"sqlite\" or \"mysql\")"
                ))
            }
        }
        if !self.redis.url.is_empty() {
            let url = self.redis.url.as_str();
            if !(url.starts_with("redis://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                return err(&format!(
                    "[redis] url must start with redis:// or redis+unix:// (got {:?})",
                    crate::store::mysql::redact_url(url)
                ));
            }
            if self.redis.timeout_ms == 0 || self.redis.presence_ttl_s < 3 {
                return err("[redis] needs timeout_ms >= 1 and presence_ttl_s >= 3");
            }
            if self.redis.bus_stream_len < 100 {
                return err("[redis] bus_stream_len must be at least 100");
            }
        }
        if !matches!(self.store.sqlite_synchronous.as_str(), "normal" | "full") {
            return err("[store] sqlite_synchronous must be \"normal\" or \"full\"");
        }
        if self.store.max_batch == 0 {
            return err("[store] max_batch must be at least 1");
        }
        if self.auth.token_ttl_s == 0 {
            return err("[auth] token_ttl_s must be at least 1");
        }
        for p in &self.http.trusted_proxies {
            if p.parse::<std::net::IpAddr>().is_err() {
                return err(&format!(
                    "[http] trusted_proxies: {p:?} is not an IP address"
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.wechat.apps {
            let what = format!("[[wechat.apps]] {:?}", a.name);
            if a.name.is_empty()
                || !a
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return err(&format!("{what}: name must be letters, digits, '-' or '_'"));
            }
            if !names.insert(a.name.as_str()) {
                return err(&format!("{what}: two apps have this name"));
            }
            if !matches!(a.kind.as_str(), "miniprogram" | "minigame" | "official") {
                return err(&format!(
                    "{what}: kind must be miniprogram, minigame or official"
                ));
            }
            if a.appid.is_empty() || a.secret.is_empty() {
                return err(&format!("{what}: appid and secret are required"));
            }
            if !a.aes_key.is_empty()
                && crate::wechat::crypto::MsgCrypt::new(&a.aes_key, &a.appid).is_err()
            {
                return err(&format!(
                    "{what}: aes_key must be the 43-character EncodingAESKey"
                ));
            }
            if !matches!(a.token_endpoint.as_str(), "stable" | "token") {
                return err(&format!(
                    "{what}: token_endpoint must be \"stable\" or \"token\""
                ));
            }
            if !(a.api_base.starts_with("https://") || a.api_base.starts_with("http://")) {
                return err(&format!("{what}: api_base must be an http(s) URL"));
            }
            if a.require_encryption && (a.aes_key.is_empty() || a.token.is_empty()) {
                return err(&format!(
                    "{what}: require_encryption needs token and aes_key"
                ));
            }
        }
        if !(1..=2_592_000).contains(&self.wechat.qr_expire_s) {
            return err("[wechat] qr_expire_s must be 1..2592000");
        }
        if self.wechat.callback_window_s == 0 {
            return err("[wechat] callback_window_s must be at least 1");
        }
        if self.wechat.timeout_ms == 0 {
            return err("[wechat] timeout_ms must be at least 1");
        }
        if let Err(e) = self.upload.check() {
            return err(&e);
        }
        if self.http.max_header_bytes < 256 {
            return err("[http] max_header_bytes must be at least 256");
        }
        Ok(())
    }

    /// `data_dir/server.pid`: pid and listen address of the running server.
    pub fn pid_file(&self) -> PathBuf {
        self.server.data_dir.join("server.pid")
    }

    /// The SQLite file.
    pub fn sqlite_file(&self) -> PathBuf {
        self.server.data_dir.join(&self.store.sqlite_path)
    }

    /// `data_dir/server.log`: the daemon's log.
    pub fn log_file(&self) -> PathBuf {
        self.server.data_dir.join("server.log")
    }
}

/// Maps a level name to a `log` filter.
pub fn log_level(name: &str) -> Option<log::LevelFilter> {
    match name.to_ascii_lowercase().as_str() {
        "error" => Some(log::LevelFilter::Error),
        "warn" => Some(log::LevelFilter::Warn),
        "info" => Some(log::LevelFilter::Info),
        "debug" => Some(log::LevelFilter::Debug),
        "trace" => Some(log::LevelFilter::Trace),
        "off" => Some(log::LevelFilter::Off),
        _ => None,
    }
}

/// Applies one `WXCHAT_<SECTION>_<KEY>=value` override. The value's type follows the default's
/// type, so `WXCHAT_SERVER_LISTEN=127.0.0.1:1` stays a string and `..._MAX_CONNECTIONS=10` an
/// integer; lists are comma separated.
fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    name: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let rest = &name[ENV_PREFIX.len()..];
    let unknown = || ConfigError(format!("unknown configuration variable {name}"));
    let (section, key) = defaults
        .iter()
        .find_map(|(section, _)| {
            let upper = section.to_ascii_uppercase();
            rest.strip_prefix(&upper)
                .and_then(|r| r.strip_prefix('_'))
                .map(|k| (section.clone(), k.to_ascii_lowercase()))
        })
        .ok_or_else(unknown)?;
    let default = defaults
        .get(&section)
        .and_then(|s| s.get(&key))
        .ok_or_else(unknown)?;
    let bad = |what: &str| ConfigError(format!("{name}={value:?}: expected {what}"));
    let parsed = match default {
        toml::Value::String(_) => toml::Value::String(value.to_string()),
        toml::Value::Integer(_) => {
            toml::Value::Integer(value.trim().parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(value.trim().parse().map_err(|_| bad("true or false"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(value.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Array(_) => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => {
            return Err(bad(
                "a value this variable cannot take from the environment",
            ))
        }
    };
    let entry = table
        .entry(section.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => {
            t.insert(key, parsed);
            Ok(())
        }
        _ => Err(ConfigError(format!("[{section}] must be a table"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_parts(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn wechat_apps_parse_validate_and_hide_secrets() {
        let text = "[[wechat.apps]]\nname = \"mp\"\nkind = \"miniprogram\"\nappid = \"wx1\"\nsecret = \"s3cr3t\"\n\
                    [[wechat.apps]]\nname = \"oa\"\nkind = \"official\"\nappid = \"wx2\"\nsecret = \"x\"\n";
        let c = Config::from_parts(text, "t", Vec::new()).unwrap();
        assert_eq!(c.wechat.apps[0].api_base, "https://api.weixin.qq.com");
        assert_eq!(
            c.wechat
                .app(None, &["miniprogram", "minigame"])
                .unwrap()
                .appid,
            "wx1"
        );
        assert_eq!(
            c.wechat.app(Some("oa"), &["official"]).unwrap().appid,
            "wx2"
        );
        assert!(c.wechat.app(Some("oa"), &["miniprogram"]).is_none());
        assert!(
            c.wechat.app(None, &["miniprogram", "official"]).is_none(),
            "ambiguous"
        );
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cr3t") && debug.contains("<set>"),
            "{debug}"
        );
        for (bad, why) in [
            (
                text.replace("kind = \"official\"", "kind = \"web\""),
                "kind must be",
            ),
            (text.replace("name = \"oa\"", "name = \"mp\""), "two apps"),
            (
                text.replace("secret = \"x\"", "secret = \"\""),
                "appid and secret",
            ),
        ] {
            let e = Config::from_parts(&bad, "t", Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn realtime_priority_is_off_by_default_and_bounded() {
        assert_eq!(parse("", &[]).unwrap().server.realtime_priority, 0);
        let c = parse("[server]\nrealtime_priority = 99\n", &[]).unwrap();
        assert_eq!(c.server.realtime_priority, 99);
        let e = parse("[server]\nrealtime_priority = 100\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("realtime_priority must be 0 (off) or 1-99"),
            "{e}"
        );
    }

    #[test]
    fn defaults_need_nothing_installed() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9501");
        assert_eq!(c.server.data_dir, PathBuf::from("./data"));
        assert_eq!(c.ws.path, "/ws");
        assert_eq!(c.ws.echo_path, "");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn file_values_are_read() {
        let c = parse(
            "[server]\nlisten = \"0.0.0.0:1234\"\nmax_connections = 7\n[ws]\necho_path = \"/echo\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:1234");
        assert_eq!(c.server.max_connections, 7);
        assert_eq!(c.ws.echo_path, "/echo");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[server]\nlisen = \"x\"\n", &[]).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let e = parse("[srever]\n", &[]).unwrap_err();
        assert!(e.0.contains("srever"), "{e}");
    }

    #[test]
    fn env_overrides_follow_default_types() {
        let c = parse(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("WXCHAT_SERVER_LISTEN", "127.0.0.1:2"),
                ("WXCHAT_SERVER_MAX_CONNECTIONS", "10"),
                (
                    "WXCHAT_WS_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("WXCHAT_WS_ECHO_PATH", "/echo"),
                ("PATH", "/usr/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2");
        assert_eq!(c.server.max_connections, 10);
        assert_eq!(
            c.ws.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(c.ws.echo_path, "/echo");
    }

    #[test]
    fn bad_env_is_named() {
        let e = parse("", &[("WXCHAT_SERVER_MAX_CONNECTIONS", "lots")]).unwrap_err();
        assert!(e.0.contains("WXCHAT_SERVER_MAX_CONNECTIONS"), "{e}");
        let e = parse("", &[("WXCHAT_SERVER_NOPE", "1")]).unwrap_err();
        assert!(e.0.contains("WXCHAT_SERVER_NOPE"), "{e}");
        let e = parse("[web]\nenabled = \"yes\"\n", &[]).unwrap_err();
        assert!(e.0.contains("[web] enabled"), "{e}");
        let public = parse("[server]\nlisten = \"0.0.0.0:9501\"\n", &[]).unwrap();
        assert!(!public.web_enabled() && !public.demo_login_enabled());
        let local = parse("", &[]).unwrap();
        assert!(local.web_enabled() && local.demo_login_enabled());
        // The test suite's variables are not configuration.
        assert!(parse("", &[("WXCHAT_TEST_MYSQL_URL", "mysql://x")]).is_ok());
    }

    #[test]
    fn nonsense_values_are_rejected() {
        assert!(parse("[server]\nlisten = \"nowhere\"\n", &[]).is_err());
        assert!(parse("[ws]\npath = \"ws\"\n", &[]).is_err());
        assert!(parse("[ws]\nmax_frame_bytes = 10\n", &[]).is_err());
        assert!(parse("[server]\nlog_level = \"loud\"\n", &[]).is_err());
        assert!(parse("[admin]\nlisten = \"nowhere\"\n", &[]).is_err());
        // Reachable from other hosts only with a token.
        assert!(parse("[admin]\nlisten = \"0.0.0.0:9502\"\n", &[]).is_err());
        assert!(parse(
            "[admin]\nlisten = \"0.0.0.0:9502\"\ntoken = \"0123456789abcdef\"\n",
            &[]
        )
        .is_ok());
        assert!(parse("[admin]\nlisten = \"\"\n", &[]).is_ok());
        // Visitors are purged only once their tokens have expired.
        let e = parse(
            "[service]\nvisitor_ttl_s = 100\nvisitor_purge_after_s = 99\n",
            &[],
        )
        .unwrap_err();
        assert!(e.0.contains("visitor_purge_after_s"), "{e}");
        for ok in ["visitor_purge_after_s = 100", "visitor_purge_after_s = 0"] {
            assert!(parse(&format!("[service]\nvisitor_ttl_s = 100\n{ok}\n"), &[]).is_ok());
        }
    }

    #[test]
    fn upload_backends_are_validated_and_the_secret_comes_from_the_environment() {
        let s3 = "[upload]\nbackend = \"s3\"\ns3_endpoint = \"http://127.0.0.1:9000\"\n\
                  s3_bucket = \"wx-files\"\ns3_access_key = \"AKID\"\ns3_path_style = true\n";
        // The secret is missing until the environment gives it.
        let e = parse(s3, &[]).unwrap_err();
        assert!(e.0.contains("s3_secret_key"), "{e}");
        let c = parse(s3, &[("WXCHAT_UPLOAD_S3_SECRET_KEY", "sEcReT")]).unwrap();
        assert_eq!(
            (c.upload.s3_secret_key.as_str(), c.upload.serve.as_str()),
            ("sEcReT", "proxy")
        );
        assert!(!format!("{c:?}").contains("sEcReT"));
        let env = [("WXCHAT_UPLOAD_S3_SECRET_KEY", "x")];
        for (extra, named) in [
            ("backend = \"ftp\"", "[upload] backend"),
            ("serve = \"mirror\"", "[upload] serve"),
            ("s3_endpoint = \"cos.example.com\"", "s3_endpoint"),
            ("s3_endpoint = \"https://\"", "s3_endpoint"),
            ("s3_bucket = \"\"", "s3_bucket"),
            ("s3_bucket = \"Upper_Case\"", "s3_bucket"),
            ("s3_region = \"\"", "s3_region"),
            ("s3_access_key = \"\"", "s3_access_key"),
            ("s3_prefix = \"/abs\"", "s3_prefix"),
            ("s3_url_ttl_s = 0", "s3_url_ttl_s"),
            ("s3_url_ttl_s = 604801", "s3_url_ttl_s"),
            ("s3_timeout_ms = 0", "s3_timeout_ms"),
        ] {
            // `extra` replaces the line of its key.
            let key = extra.split(' ').next().unwrap_or_default();
            let text: String = s3
                .lines()
                .filter(|l| l.split(' ').next() != Some(key))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = parse(&format!("{text}{extra}\n"), &env).unwrap_err();
            assert!(e.0.contains(named), "{extra}: {e}");
        }
        assert!(parse(&format!("{s3}serve = \"redirect\"\n"), &env).is_ok());
        // Local files have no URL to redirect to; the S3 keys are ignored with the local backend.
        let e = parse("[upload]\nserve = \"redirect\"\n", &[]).unwrap_err();
        assert!(e.0.contains("redirect"), "{e}");
        assert!(parse("[upload]\ns3_bucket = \"x\"\n", &[]).is_ok());
    }

    #[test]
    fn example_config_parses_to_defaults() {
        let text = include_str!("../server.toml");
        let c = parse(text, &[]).unwrap();
        assert_eq!(c, Config::default());
    }
}
