//! The application handler: the routing table of the client listener, the WebSocket endpoints,
//! and the plumbing that runs blocking work on workers and continues on the reactor.
//!
//! A job is a pair: `work` runs on a worker thread with the store; `then` runs afterwards on the
//! reactor with its result. The pair travels back as a [`Completion`].

use crate::admin::metrics::METRICS;
use crate::admin::Topic;
use crate::auth;
use crate::chat::persister::{Busy, Persister};
use crate::chat::ChatState;
use crate::config::Config;
use crate::http::{Request, Response, RouteMatch, Router};
use crate::jobs::WorkerPool;
use crate::net::{CloseInfo, ConnId, Ctx, Handler, Message, Notifier, Reply, Upgrade};
use crate::proto::code;
use crate::secrets::Secrets;
use crate::store::{self, Appended, Backends, NewMessage, Profile, StoreError, StoreResult};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The reactor side of a job: runs with the application and the backend.
type Continuation = Box<dyn FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send>;

/// Work finished elsewhere, continued on the reactor.
pub struct Completion(Continuation);

impl Completion {
    pub fn new(f: impl FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send + 'static) -> Completion {
        Completion(Box::new(f))
    }
}

/// What a WebSocket connection is for (the order of `admin::metrics::ENDPOINTS`).
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
        crate::admin::metrics::ENDPOINTS[self.index()]
    }
}

/// The WebSocket path of QR-code scan login.
pub const QRLOGIN_PATH: &str = "/ws/qrlogin";

/// A timer set with [`App::after`], for cancelling it.
#[derive(Clone, Copy, Debug)]
pub struct AppTimer {
    id: crate::net::TimerId,
    token: u64,
}

type TimerFn = Box<dyn FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send>;

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

pub struct App {
    pub config: Arc<Config>,
    pub secrets: Secrets,
    pub backends: Backends,
    /// This process's name in shared presence and on the bus.
    pub node_id: String,
    /// Pushes to and from other processes (with Redis).
    pub bus: Option<crate::cluster::bus::Bus>,
    /// The WeChat API client (used on workers).
    pub wx: Arc<crate::wechat::api::Client>,
    /// Every app's access_token, shared with the other processes through the cache.
    pub access_tokens: Arc<crate::wechat::access_token::AccessTokens>,
    /// Uploaded files (`[upload] backend`), used on workers.
    pub files: Arc<dyn crate::upload::FileStore>,
    started: Instant,
    routes: Router<Route>,
    endpoints: HashMap<ConnId, Endpoint>,
    /// Open WebSockets per endpoint (indexed by `Endpoint::index`).
    open_by_endpoint: [u64; 4],
    /// Info topics, subscribers and the serverInfo tick.
    pub admin: crate::admin::Admin,
    workers: WorkerPool,
    persister: Persister<Completion>,
    /// Jobs submitted and not yet continued (graceful shutdown waits for them).
    pub in_flight: usize,
    pub chat: ChatState,
    /// QR-code login tickets waiting on this process.
    pub qr: crate::wechat::qrlogin::QrState,
    /// Agents' messages on their way to WeChat users.
    pub service_outbox: crate::wechat::service::Outbox,
    timers: HashMap<u64, TimerFn>,
    next_timer: u64,
    /// Users of `POST /api/demo/login` on this process (befriended with each other).
    pub demo_users: Vec<u64>,
    /// `[web] enabled` as decided for this listener.
    web_enabled: bool,
    /// `[web] dir`, when the pages are served from a directory instead of the built-in copy.
    web_dir: Option<std::path::PathBuf>,
}

impl App {
    /// Opens the store, loads or generates the secrets, starts the workers and the persister.
    pub fn new(config: Config, notifier: Notifier<Completion>) -> Result<App, String> {
        let secrets = Secrets::load_or_create(&config)?;
        let backends = crate::backends::open(&config)?;
        let files = crate::upload::open(&config)?;
        let store = backends.store.clone();
        let workers = WorkerPool::new("worker", config.server.workers, 16 * 1024)
            .map_err(|e| format!("cannot start workers: {e}"))?;
        let deliver = notifier.clone();
        let persister = Persister::start(
            store.clone(),
            config.store.max_batch,
            64 * 1024,
            move |batch: Vec<Completion>| {
                deliver.send(Completion::new(move |app, ctx| {
                    for c in batch {
                        (c.0)(app, ctx);
                    }
                }));
            },
        )
        .map_err(|e| format!("cannot start the persister: {e}"))?;
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
        let node_id = crate::backends::node_id(&config);
        let bus = if config.redis.url.is_empty() {
            None
        } else {
            Some(crate::cluster::bus::Bus::start(
                &config.redis.url,
                &config.redis.prefix,
                &node_id,
                notifier.clone(),
                |env| Completion::new(move |app, ctx| crate::chat::deliver_remote(app, ctx, env)),
            )?)
        };
        let admin = crate::admin::Admin::new(&config.admin, notifier.clone());
        let wx = Arc::new(
            crate::wechat::api::Client::new(std::time::Duration::from_millis(
                config.wechat.timeout_ms,
            ))
            .observed_by(crate::wechat::api::report_to(admin.feed.clone())),
        );
        let access_tokens = Arc::new(crate::wechat::access_token::AccessTokens::new(
            wx.clone(),
            backends.cache.clone(),
            std::time::Duration::from_millis(config.wechat.timeout_ms.saturating_mul(3)),
        ));
        let started = notifier.clone();
        let mut app = App {
            access_tokens,
            wx,
            bus,
            chat: ChatState::new(&config),
            node_id,
            config: Arc::new(config),
            secrets,
            backends,
            files,
            started: Instant::now(),
            routes,
            endpoints: HashMap::new(),
            open_by_endpoint: [0; 4],
            admin,
            workers,
            persister,
            in_flight: 0,
            qr: Default::default(),
            service_outbox: Default::default(),
            timers: HashMap::new(),
            next_timer: 1,
            demo_users: Vec::new(),
            web_enabled: false,
            web_dir: None,
        };
        app.web_enabled = app.config.web_enabled();
        if !app.config.web.dir.is_empty() {
            app.web_dir = Some(std::path::PathBuf::from(&app.config.web.dir));
        }
        if crate::chat::service_desk::restore(&mut app)? {
            // Runs first thing once the reactor is up.
            started.send(Completion::new(crate::chat::service_desk::start));
        }
        Ok(app)
    }

    /// Runs `work` on a worker, then `then` on the reactor. False when the queue is full.
    pub fn job<R: Send + 'static>(
        &mut self,
        ctx: &dyn Ctx<Completion>,
        work: impl FnOnce(&Backends) -> R + Send + 'static,
        then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, R) + Send + 'static,
    ) -> bool {
        let backends = self.backends.clone();
        let notifier = ctx.notifier();
        let submitted_at = ctx.now();
        let submitted = self.workers.submit(move || {
            let result = work(&backends);
            notifier.send(Completion::new(move |app, ctx| {
                app.in_flight -= 1;
                METRICS
                    .job_seconds
                    .observe_duration(ctx.now().saturating_duration_since(submitted_at));
                then(app, ctx, result)
            }));
        });
        if submitted.is_ok() {
            self.in_flight += 1;
        } else {
            METRICS.jobs_rejected.inc();
        }
        submitted.is_ok()
    }

    /// Runs `f` on the reactor after `delay`.
    pub fn after(
        &mut self,
        ctx: &mut dyn Ctx<Completion>,
        delay: std::time::Duration,
        f: impl FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send + 'static,
    ) -> AppTimer {
        let token = self.next_timer;
        self.next_timer += 1;
        self.timers.insert(token, Box::new(f));
        AppTimer {
            id: ctx.set_timer(delay, token),
            token,
        }
    }

    /// Cancels a timer set with [`App::after`] (a no-op once it has run).
    pub fn cancel(&mut self, ctx: &mut dyn Ctx<Completion>, t: AppTimer) {
        if self.timers.remove(&t.token).is_some() {
            ctx.cancel_timer(t.id);
        }
    }

    /// Queues a message for the persister; `then` runs on the reactor after the commit.
    pub fn persist(
        &mut self,
        message: NewMessage,
        then: impl FnOnce(&mut App, &mut dyn Ctx<Completion>, StoreResult<Appended>) + Send + 'static,
    ) -> Result<(), Busy> {
        let r = self.persister.submit(
            message,
            Box::new(move |result| {
                Completion::new(move |app, ctx| {
                    app.in_flight -= 1;
                    then(app, ctx, result)
                })
            }),
        );
        if r.is_ok() {
            self.in_flight += 1;
        }
        r
    }

    /// Answers a deferred login request, counting it and publishing it on `login`.
    pub fn respond_login(
        &mut self,
        ctx: &mut dyn Ctx<Completion>,
        conn: ConnId,
        method: &'static str,
        resp: Response,
    ) {
        crate::admin::login_response(self, ctx, conn, method, &resp);
        ctx.respond(conn, resp);
    }

    /// A login refused at once (bad request, bad sign, stale time) is a failed login too.
    fn refused_login(
        &mut self,
        ctx: &mut dyn Ctx<Completion>,
        conn: ConnId,
        method: &'static str,
        reply: Reply,
    ) -> Reply {
        if let Reply::Now(resp) = &reply {
            crate::admin::login_response(self, ctx, conn, method, resp);
        }
        reply
    }

    /// Messages waiting for the persister, and its last batch's lag.
    pub fn persister_load(&self) -> (usize, std::time::Duration) {
        self.persister.load()
    }

    /// Jobs waiting for a worker.
    pub fn worker_queue(&self) -> usize {
        self.workers.queued()
    }

    /// Open WebSockets per endpoint, in the order of `admin::metrics::ENDPOINTS`.
    pub fn websockets_by_endpoint(&self) -> [u64; 4] {
        self.open_by_endpoint
    }

    fn endpoint_of(&self, path: &str) -> Option<Endpoint> {
        if path == self.config.ws.path {
            Some(Endpoint::Chat)
        } else if !self.config.ws.echo_path.is_empty() && path == self.config.ws.echo_path {
            Some(Endpoint::Echo)
        } else if path == QRLOGIN_PATH {
            Some(Endpoint::QrLogin)
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

    /// The online_chat-compatible signed login (protocol-spec 3.1).
    fn do_login(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
        let params = match req.body_params() {
            Ok(p) => p,
            Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
        };
        // PHP keeps the last of a repeated form field, this layer the first: a signed field
        // given twice could be read one way and signed the other, so it is refused.
        for field in auth::DOLOGIN_SIGNED_FIELDS.iter().chain(&["sign"]) {
            if params.iter().filter(|(k, _)| k == field).count() > 1 {
                return Reply::Now(api_error(
                    code::BAD_REQUEST,
                    &format!("field {field} given more than once"),
                ));
            }
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(sign) = get("sign").map(str::to_ascii_lowercase) else {
            return Reply::Now(api_error(code::BAD_REQUEST, "missing field: sign"));
        };
        for field in ["app_uid", "time"] {
            if get(field).is_none_or(str::is_empty) {
                return Reply::Now(api_error(
                    code::BAD_REQUEST,
                    &format!("missing field: {field}"),
                ));
            }
        }
        let expected = auth::dologin_sign(&params, &self.secrets.sign_key);
        let limiter = self.login_limiter(ctx, conn, req);
        if !auth::constant_time_eq(expected.as_bytes(), sign.as_bytes()) {
            let Some(limiter) = limiter else {
                return Reply::Now(api_error(code::UNAUTHORIZED, "bad sign"));
            };
            // Count the failure (shared across processes with Redis), then answer.
            let submitted = self.job(
                ctx,
                move |b| b.cache.incr_window(&limiter.key, limiter.window),
                move |app, ctx, r| {
                    let resp = match r {
                        Ok(n) if n > limiter.max => too_many_failures(),
                        _ => api_error(code::UNAUTHORIZED, "bad sign"),
                    };
                    app.respond_login(ctx, conn, "dologin", resp);
                },
            );
            return if submitted {
                Reply::Later
            } else {
                Reply::Now(api_error(code::UNAUTHORIZED, "bad sign"))
            };
        }
        let now_s = store::now_ms() / 1000;
        let window = self.config.auth.time_window_s;
        match get("time").and_then(|t| t.parse::<i64>().ok()) {
            Some(t) if (now_s - t).unsigned_abs() <= window => {}
            Some(_) => {
                return Reply::Now(api_error(code::UNAUTHORIZED, "stale time: check the clock"))
            }
            None => return Reply::Now(api_error(code::BAD_REQUEST, "time must be Unix seconds")),
        }
        let user_type = match get("user_type").filter(|s| !s.is_empty()) {
            Some(t) => match crate::profile::user_type(t) {
                Ok(v) => Some(v),
                Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
            },
            None => None,
        };
        let app_uid = get("app_uid").unwrap_or_default().to_string();
        if app_uid.len() > 64 {
            return Reply::Now(api_error(code::BAD_REQUEST, "app_uid over 64 bytes"));
        }
        let profile = match profile_of(get("name"), get("head_img"), user_type) {
            Ok(p) => p,
            Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
        };
        let visitor_token = get("visitor_token")
            .filter(|t| !t.is_empty())
            .map(String::from);
        if visitor_token
            .as_deref()
            .is_some_and(|t| !auth::token_well_formed(t))
        {
            return Reply::Now(api_error(code::BAD_REQUEST, "malformed visitor_token"));
        }
        let peer = ctx.peer_addr(conn).map(|a| a.ip());
        let login = DoLogin {
            app_uid,
            profile,
            limiter,
            visitor_token,
            // A signature is good for its whole time window either side of `time`: remember it
            // that long (and a second more).
            replay: ReplayGuard {
                key: format!("dologin_sign:{sign}"),
                ttl: std::time::Duration::from_secs(window.saturating_mul(2).saturating_add(1)),
            },
            is_mobile: crate::http::is_mobile(req.header_str("user-agent")),
            secure_cookie: peer.is_some_and(|ip| {
                crate::http::came_over_tls(ip, req, &self.config.http.trusted_proxies)
            }),
        };
        self.issue_token_for(ctx, conn, login);
        Reply::Later
    }

    /// The failed-login counter of the request's client address, when limiting is on.
    fn login_limiter(
        &self,
        ctx: &dyn Ctx<Completion>,
        conn: ConnId,
        req: &Request,
    ) -> Option<LoginLimiter> {
        let max = self.config.auth.login_failures_per_ip;
        if max == 0 {
            return None;
        }
        let ip = crate::http::client_ip(
            ctx.peer_addr(conn)?.ip(),
            req,
            &self.config.http.trusted_proxies,
        );
        Some(LoginLimiter {
            key: format!("login_fail:{ip}"),
            max,
            window: std::time::Duration::from_secs(self.config.auth.login_failure_window_s.max(1)),
        })
    }

    /// doLogin: refuses a replayed signature, creates or updates the user and answers with a
    /// new token (and the token cookie), after converting the visitor whose `visitor_token`
    /// came along (the outcome is in `data.visitor`).
    fn issue_token_for(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, login: DoLogin) {
        let ttl = self.config.auth.token_ttl_s;
        let DoLogin {
            app_uid,
            profile,
            limiter,
            visitor_token,
            replay,
            is_mobile,
            secure_cookie,
        } = login;
        let work = move |b: &Backends| -> Result<Issued, (u16, String)> {
            let failed = |e: StoreError| (crate::proto::store_code(&e), e.to_string());
            if let Some(l) = &limiter {
                let failures = b.cache.peek_window(&l.key).map_err(failed)?;
                if failures >= l.max {
                    return Err((code::RATE_LIMITED, TOO_MANY_FAILURES.into()));
                }
            }
            // First use of this signature wins (SET NX in Redis, so across processes).
            let Some(claim) = b.cache.try_lock(&replay.key, replay.ttl).map_err(failed)? else {
                return Err((
                    code::UNAUTHORIZED,
                    "sign already used: sign each login afresh".into(),
                ));
            };
            issue_token(b, &app_uid, &profile, true, ttl).map_err(|e| {
                // Nothing was issued: the same signed request may be retried.
                let _ = b.cache.unlock(&replay.key, &claim);
                failed(e)
            })
        };
        let then = move |app: &mut App,
                         ctx: &mut dyn Ctx<Completion>,
                         r: Result<Issued, (u16, String)>| {
            let logged_in = move |data: &Value| {
                let token = data["token"].as_str().unwrap_or_default().to_string();
                logged_in(data, &token, ttl, secure_cookie)
            };
            let Issued {
                mut data,
                user,
                profile_changed,
            } = match r {
                Ok(issued) => issued,
                Err((c, m)) => return app.respond_login(ctx, conn, "dologin", api_error(c, &m)),
            };
            data["is_mobile"] = json!(u8::from(is_mobile));
            if profile_changed {
                crate::chat::profile::changed(app, ctx, &user);
            }
            match visitor_token {
                Some(vt) => {
                    let uid = user.uid;
                    crate::chat::visitor::convert(app, ctx, &vt, uid, move |app, ctx, r| {
                        data["visitor"] = match r {
                            Ok(v) => v,
                            Err((c, m)) => json!({ "code": c, "msg": m }),
                        };
                        app.respond_login(ctx, conn, "dologin", logged_in(&data));
                    });
                }
                None => app.respond_login(ctx, conn, "dologin", logged_in(&data)),
            }
        };
        if !self.job(ctx, work, then) {
            self.respond_login(
                ctx,
                conn,
                "dologin",
                api_error(code::UNAVAILABLE, "server busy, retry"),
            );
        }
    }

    fn server_api(
        &mut self,
        ctx: &mut dyn Ctx<Completion>,
        conn: ConnId,
        req: &Request,
        action: &str,
    ) -> Reply {
        let presented = req
            .bearer()
            .or_else(|| req.header_str("x-api-key"))
            .unwrap_or("");
        if !auth::constant_time_eq(presented.trim().as_bytes(), self.secrets.api_key.as_bytes()) {
            return Reply::Now(api_error(code::UNAUTHORIZED, "bad or missing API key"));
        }
        let body: Value = match req.json() {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Reply::Now(api_error(
                    code::BAD_REQUEST,
                    "the body must be a JSON object",
                ))
            }
        };
        crate::chat::server_api(self, ctx, conn, action, body)
    }
}

impl App {
    /// `POST /api/upload`: token from `Authorization: Bearer`, `?token=` or a `token` form field;
    /// the file is a multipart part (the first with a file name, or the field `file`) or the raw
    /// body. Stored by content hash on a worker.
    fn upload(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: Request) -> Reply {
        if req.body.len() > self.config.upload.max_bytes {
            return Reply::Now(api_error(
                413,
                &format!("upload over {} bytes", self.config.upload.max_bytes),
            ));
        }
        let mut token = req
            .bearer()
            .map(String::from)
            .or_else(|| req.query_param("token"));
        let cookie = cookie_token(&req, &self.config.ws.allowed_origins);
        let content_type = req.header_str("content-type").unwrap_or("").to_string();
        let (data, ext, mime): (Vec<u8>, &'static str, String) =
            match crate::upload::boundary(&content_type) {
                Some(b) => {
                    let parts = match crate::upload::parse_multipart(&req.body, &b) {
                        Ok(p) => p,
                        Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
                    };
                    if token.is_none() {
                        token = parts
                            .iter()
                            .find(|p| p.field == "token" && p.filename.is_none())
                            .and_then(|p| std::str::from_utf8(p.data).ok())
                            .map(|t| t.trim().to_string());
                    }
                    let Some(file) = parts
                        .iter()
                        .find(|p| p.filename.is_some())
                        .or_else(|| parts.iter().find(|p| p.field == "file"))
                    else {
                        return Reply::Now(api_error(
                            code::BAD_REQUEST,
                            "no file part in the upload",
                        ));
                    };
                    let ext = crate::upload::extension_for(
                        file.content_type.as_deref(),
                        file.filename.as_deref(),
                    );
                    (
                        file.data.to_vec(),
                        ext,
                        served_type(ext, file.content_type.as_deref()),
                    )
                }
                None => {
                    let ext = crate::upload::extension_for(
                        Some(&content_type),
                        req.query_param("name").as_deref(),
                    );
                    let mime = served_type(ext, Some(&content_type));
                    (req.body, ext, mime)
                }
            };
        if data.is_empty() {
            return Reply::Now(api_error(code::BAD_REQUEST, "the file is empty"));
        }
        // Last, the doLogin cookie of a page of this site (cookie_token's Origin rule).
        let token = token.filter(|t| auth::token_well_formed(t)).or(cookie);
        let Some(token) = token else {
            return Reply::Now(api_error(code::UNAUTHORIZED, "a valid token is required"));
        };
        let files = self.files.clone();
        let work = move |b: &Backends| -> Result<Value, (u16, String)> {
            match b.tokens.user(&auth::token_hash(&token)) {
                Ok(Some(_)) => {}
                Ok(None) => return Err((code::UNAUTHORIZED, "bad or expired token".into())),
                Err(e) => return Err((crate::proto::store_code(&e), e.to_string())),
            }
            let size = data.len();
            let name = files
                .put(&data, ext)
                .map_err(|e| (code::INTERNAL, format!("cannot store the file: {e}")))?;
            Ok(json!({ "url": format!("/files/{name}"), "size": size, "mime": mime }))
        };
        let then = move |_app: &mut App,
                         ctx: &mut dyn Ctx<Completion>,
                         r: Result<Value, (u16, String)>| {
            ctx.respond(
                conn,
                match r {
                    Ok(v) => api_ok(v),
                    Err((c, m)) => api_error(c, &m),
                },
            );
        };
        later_or_busy(self.job(ctx, work, then))
    }

    /// A GET or HEAD the pages may answer (`[web] enabled`, decided at start).
    fn serves_pages(&self, req: &Request) -> bool {
        self.web_enabled && (req.method == "GET" || req.method == "HEAD")
    }

    /// A page file: the built-in copy answers at once; `[web] dir` is looked up and read on a
    /// worker (a directory lookup is file I/O, which the reactor never does).
    fn serve_page(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, path: &str) -> Reply {
        let Some(dir) = self.web_dir.clone() else {
            return Reply::Now(page_response(None, path));
        };
        let path = path.to_string();
        let ok = self.job(
            ctx,
            move |_b| page_response(Some(&dir), &path),
            move |_app, ctx, resp| ctx.respond(conn, resp),
        );
        later_or_busy(ok)
    }

    /// `GET /files/<sha256>.<ext>`: read on a worker, served with the type of its extension.
    fn serve_file(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, name: &str) -> Reply {
        let Some((hash, ext)) = crate::upload::parse_file_name(name) else {
            return Reply::Now(Response::error(404, "no such file"));
        };
        let hash = hash.to_string();
        let files = self.files.clone();
        let ok = self.job(
            ctx,
            move |_s| files.serve(&hash, ext),
            move |_app, ctx, r| {
                let resp = match r {
                    Ok(Some(crate::upload::Served::Redirect(url))) => Response::new(302)
                        .with_header("Location", &url)
                        .with_header("Cache-Control", "no-store"),
                    Ok(Some(crate::upload::Served::Bytes(data))) => {
                        let ct = crate::upload::content_type_of(ext)
                            .unwrap_or("application/octet-stream");
                        let mut resp = Response::new(200)
                            .with_body(ct, data)
                            .with_header("X-Content-Type-Options", "nosniff")
                            .with_header("Cache-Control", "public, max-age=31536000, immutable");
                        if ext == "bin" {
                            resp = resp.with_header("Content-Disposition", "attachment");
                        }
                        resp
                    }
                    Ok(None) => Response::error(404, "no such file"),
                    Err(e) => Response::error(500, &format!("cannot read the file: {e}")),
                };
                ctx.respond(conn, resp);
            },
        );
        later_or_busy(ok)
    }
}

/// A token just issued: the reply's `data` (`{"uid","token","expires_in","is_new"}`), the user,
/// and whether the login changed their name or avatar (their contacts are then told).
pub struct Issued {
    pub data: Value,
    pub user: crate::store::User,
    pub profile_changed: bool,
}

/// The `mime` an upload reply reports: the type the file will be served with (a `curl -F
/// file=@v.amr` part declares `application/octet-stream` but is stored and served as `audio/amr`);
/// the declared type only for `.bin`, which is served as an attachment.
fn served_type(ext: &str, declared: Option<&str>) -> String {
    crate::upload::content_type_of(ext)
        .map(String::from)
        .unwrap_or_else(|| declared.unwrap_or_default().to_string())
}

/// Creates or updates the user with this business id and issues a token (doLogin and the
/// server API's `user`). The name and avatar are set apart from the upsert, so that a change
/// is known and can be pushed.
pub fn issue_token(
    b: &Backends,
    app_uid: &str,
    profile: &Profile,
    login: bool,
    ttl_s: u64,
) -> Result<Issued, StoreError> {
    let kind = Profile {
        user_type: profile.user_type,
        ..Profile::default()
    };
    let (mut user, created) = b.upsert_app_user(app_uid, &kind, login)?;
    let mut profile_changed = false;
    if profile.name.is_some() || profile.head_img.is_some() {
        if let Some((after, changed)) = b.update_profile(
            user.uid,
            profile.name.as_deref(),
            profile.head_img.as_deref(),
        )? {
            user = after;
            profile_changed = changed && !created;
        }
    }
    let token = crate::store::tokens::mint(&*b.tokens, user.uid, ttl_s)?;
    Ok(Issued {
        data: json!({ "uid": user.uid, "token": token, "expires_in": ttl_s, "is_new": created }),
        user,
        profile_changed,
    })
}

/// The server API's `user` by wxchat uid: sets the name and avatar given and issues a token.
/// NotFound when there is no such user.
pub fn issue_token_for_uid(
    b: &Backends,
    uid: u64,
    profile: &Profile,
    ttl_s: u64,
) -> Result<Issued, StoreError> {
    let (user, changed) = b
        .update_profile(uid, profile.name.as_deref(), profile.head_img.as_deref())?
        .ok_or(StoreError::NotFound("user"))?;
    let token = crate::store::tokens::mint(&*b.tokens, user.uid, ttl_s)?;
    Ok(Issued {
        data: json!({ "uid": user.uid, "token": token, "expires_in": ttl_s, "is_new": false }),
        user,
        profile_changed: changed,
    })
}

/// `name` and `head_img` as given (None when absent), checked by the shared profile rules.
pub fn profile_of(
    name: Option<&str>,
    head_img: Option<&str>,
    user_type: Option<i64>,
) -> Result<Profile, String> {
    Ok(Profile {
        name: name.map(crate::profile::name).transpose()?,
        head_img: head_img.map(crate::profile::head_img).transpose()?,
        user_type,
    })
}

/// The cookie a browser that logged in through doLogin keeps its token in, so that a page on
/// the same site opens the chat WebSocket with no token handling (protocol-spec 3.1).
pub const TOKEN_COOKIE: &str = "wxchat_token";

/// `Set-Cookie` for a token: script cannot read it (HttpOnly), other sites' pages do not send
/// it with their requests (SameSite=Lax), and it travels over TLS only when the login did.
fn token_cookie(token: &str, ttl_s: u64, secure: bool) -> String {
    format!(
        "{TOKEN_COOKIE}={token}; Path=/; Max-Age={ttl_s}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The answer to a GET of a page path: from `dir` when set (the SDK stays built in), else the
/// built-in copy; a folder path redirects to its own URL; anything else is 404.
fn page_response(dir: Option<&std::path::Path>, path: &str) -> Response {
    let Some(target) = crate::web::target(path, |p| crate::web::exists(dir, p)) else {
        return Response::error(404, "no such page");
    };
    let file = match target {
        crate::web::Target::Redirect(to) => return crate::web::redirect(&to),
        crate::web::Target::File(f) => f,
    };
    let from_disk = dir
        .filter(|_| !file.starts_with("/sdk/"))
        .and_then(|d| crate::web::file_in(d, &file));
    let body = match from_disk {
        Some(disk) => match std::fs::read(disk) {
            Ok(body) => body,
            Err(_) => return Response::error(404, "no such page"),
        },
        None => crate::web::built_in(&file).unwrap_or_default().to_vec(),
    };
    crate::web::response(&file, body)
}

/// A login's reply: `{"code":200,"msg":"login ok","data":..}` with the token cookie.
pub fn logged_in(data: &Value, token: &str, ttl_s: u64, secure: bool) -> Response {
    Response::json(
        200,
        &json!({ "code": 200, "msg": "login ok", "data": data }),
    )
    .with_header("Set-Cookie", &token_cookie(token, ttl_s, secure))
}

/// The `Set-Cookie` that removes the token cookie (logout).
fn cleared_token_cookie() -> String {
    format!("{TOKEN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
}

/// The token of a request: `Authorization: Bearer`, else a `token` query or form parameter,
/// else the doLogin cookie (see [`cookie_token`]).
pub fn request_token(req: &Request, allowed_origins: &[String]) -> Option<String> {
    req.bearer()
        .map(String::from)
        .or_else(|| req.query_param("token"))
        .or_else(|| {
            req.body_params()
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v)
        })
        .filter(|t| auth::token_well_formed(t))
        .or_else(|| cookie_token(req, allowed_origins))
}

/// The token in the doLogin cookie, when the request may use it. A browser attaches cookies
/// to requests that other sites' pages make too (cross-site WebSocket hijacking, CSRF), so the
/// cookie counts only when the request carries no `Origin` (not a page: curl, an app), or the
/// `Origin` is this site (its host is the `Host` the request was sent to), or `[ws]
/// allowed_origins` lists it. SameSite=Lax already keeps the cookie off most cross-site
/// requests; this check does not depend on the browser honouring it.
pub fn cookie_token(req: &Request, allowed_origins: &[String]) -> Option<String> {
    let token = req
        .cookie(TOKEN_COOKIE)
        .filter(|t| auth::token_well_formed(t))?;
    let allowed = match req.header_str("origin") {
        None => true,
        Some(origin) => {
            let authority = origin
                .split_once("://")
                .map_or("", |(_, rest)| rest.trim_end_matches('/'));
            let same_site = req
                .header_str("host")
                .is_some_and(|host| !authority.is_empty() && host.eq_ignore_ascii_case(authority));
            same_site || allowed_origins.iter().any(|o| o == origin)
        }
    };
    allowed.then(|| token.to_string())
}

/// HTTP 401 in the shape mini-program front ends expect from a WeChat-style backend.
pub fn not_logged_in() -> Response {
    Response::json(
        401,
        &json!({ "errcode": 40001, "errmsg": "user not logged in" }),
    )
}

/// A doLogin whose signature and fields were checked, on its way to a worker.
struct DoLogin {
    app_uid: String,
    profile: Profile,
    limiter: Option<LoginLimiter>,
    visitor_token: Option<String>,
    replay: ReplayGuard,
    /// online_chat's `data.is_mobile`, from the User-Agent.
    is_mobile: bool,
    /// The login came over TLS (through a trusted proxy): the cookie gets `Secure`.
    secure_cookie: bool,
}

/// A used signature, remembered in the shared cache for as long as it could be accepted.
struct ReplayGuard {
    key: String,
    ttl: std::time::Duration,
}

/// Tells systemd's watchdog the reactor is alive, then again after `every`: sent from the
/// loop itself, so a stuck loop stops the pings and systemd restarts the service.
fn watchdog(app: &mut App, ctx: &mut dyn Ctx<Completion>, every: std::time::Duration) {
    crate::sd_notify::notify("WATCHDOG=1");
    app.after(ctx, every, move |app, ctx| watchdog(app, ctx, every));
}

/// Failed logins counted per client address (`[auth] login_failures_per_ip`).
struct LoginLimiter {
    key: String,
    max: u64,
    window: std::time::Duration,
}

const TOO_MANY_FAILURES: &str = "too many failed logins from this address; retry later";

fn too_many_failures() -> Response {
    api_error(code::RATE_LIMITED, TOO_MANY_FAILURES)
}

/// The reply of a request handed to a worker: answered later, or 503 when the queue was full.
pub fn later_or_busy(submitted: bool) -> Reply {
    if submitted {
        Reply::Later
    } else {
        Reply::Now(api_error(code::UNAVAILABLE, "server busy, retry"))
    }
}

/// A WebSocket message as a command; anything else is answered with `cmd` `error` (400) and
/// None (the connection lives on).
pub fn command_of(
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    message: Message<'_>,
) -> Option<crate::proto::Command> {
    decode_with(ctx, conn, message, crate::proto::parse_command)
}

/// As [`command_of`], with the chat endpoint's decoder (which also reads online_chat's frames).
pub fn chat_command_of(
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    message: Message<'_>,
) -> Option<crate::proto::Command> {
    decode_with(ctx, conn, message, crate::proto::parse_chat_command)
}

fn decode_with(
    ctx: &mut dyn Ctx<Completion>,
    conn: ConnId,
    message: Message<'_>,
    parse: fn(&str) -> Result<crate::proto::Command, &'static str>,
) -> Option<crate::proto::Command> {
    let Message::Text(text) = message else {
        ctx.send_text(
            conn,
            &crate::proto::fail(
                "error",
                &None,
                code::BAD_REQUEST,
                "commands are JSON text frames",
            ),
        );
        return None;
    };
    match parse(text) {
        Ok(c) => Some(c),
        Err(why) => {
            ctx.send_text(
                conn,
                &crate::proto::fail("error", &None, code::BAD_REQUEST, why),
            );
            None
        }
    }
}

/// `{"code":c,"msg":m}` with HTTP status c.
pub fn api_error(c: u16, msg: &str) -> Response {
    Response::json(c, &json!({ "code": c, "msg": msg }))
}

/// `{"code":200,"msg":"ok","data":data}`.
pub fn api_ok(data: Value) -> Response {
    Response::json(200, &json!({ "code": 200, "msg": "ok", "data": data }))
}

impl App {
    /// `GET /api/me`: the user a token belongs to.
    fn me(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
        let Some(token) = request_token(req, &self.config.ws.allowed_origins) else {
            return Reply::Now(not_logged_in());
        };
        let hash = auth::token_hash(&token);
        let ok = self.job(
            ctx,
            move |b| match b.tokens.user(&hash)? {
                Some(uid) => b.user(uid),
                None => Ok(None),
            },
            move |_app, ctx, r| {
                let resp = match r {
                    Ok(Some(user)) => api_ok(json!(user)),
                    Ok(None) => not_logged_in(),
                    Err(e) => api_error(crate::proto::store_code(&e), &e.to_string()),
                };
                ctx.respond(conn, resp);
            },
        );
        later_or_busy(ok)
    }

    /// `POST /api/me`: the caller sets their own `name` and/or `head_img` (JSON or form); the
    /// reply is the user afterwards, and a change is pushed to their contacts (`profile`).
    fn update_me(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
        let Some(token) = request_token(req, &self.config.ws.allowed_origins) else {
            return Reply::Now(not_logged_in());
        };
        let fields = match req.body_params() {
            Ok(f) => f,
            Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, why)),
        };
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("name").is_none() && get("head_img").is_none() {
            return Reply::Now(api_error(
                code::BAD_REQUEST,
                "nothing to change: send name and/or head_img",
            ));
        }
        let profile = match profile_of(get("name"), get("head_img"), None) {
            Ok(p) => p,
            Err(why) => return Reply::Now(api_error(code::BAD_REQUEST, &why)),
        };
        let hash = auth::token_hash(&token);
        let ok = self.job(
            ctx,
            move |b| match b.tokens.user(&hash)? {
                Some(uid) => {
                    b.update_profile(uid, profile.name.as_deref(), profile.head_img.as_deref())
                }
                None => Ok(None),
            },
            move |app, ctx, r| {
                let resp = match r {
                    Ok(Some((user, changed))) => {
                        if changed {
                            crate::chat::profile::changed(app, ctx, &user);
                        }
                        api_ok(json!(user))
                    }
                    Ok(None) => not_logged_in(),
                    Err(e) => api_error(crate::proto::store_code(&e), &e.to_string()),
                };
                ctx.respond(conn, resp);
            },
        );
        later_or_busy(ok)
    }

    /// `POST /api/logout`: revokes the token, closes the WebSockets it opened (4003, on every
    /// process) and clears the token cookie.
    fn logout(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: &Request) -> Reply {
        let Some(token) = request_token(req, &self.config.ws.allowed_origins) else {
            return Reply::Now(not_logged_in());
        };
        let hash = auth::token_hash(&token);
        let ok = self.job(
            ctx,
            move |b| -> StoreResult<Option<u64>> {
                let uid = b.tokens.user(&hash)?;
                b.tokens.revoke(&hash)?;
                Ok(uid)
            },
            move |app, ctx, r| {
                let resp = match r {
                    Ok(uid) => {
                        if let Some(uid) = uid {
                            crate::chat::token_revoked(app, ctx, uid, hash);
                        }
                        api_ok(json!({})).with_header("Set-Cookie", &cleared_token_cookie())
                    }
                    Err(e) => api_error(crate::proto::store_code(&e), &e.to_string()),
                };
                ctx.respond(conn, resp);
            },
        );
        later_or_busy(ok)
    }
}

impl Drop for App {
    /// Every queued message is committed, then the store is closed (nothing else writes by
    /// then: the reactor has stopped, and graceful shutdown waited for in-flight jobs).
    fn drop(&mut self) {
        self.persister.finish();
        self.backends.store.close();
    }
}

impl Handler for App {
    type Completion = Completion;

    fn is_websocket_path(&self, path: &str) -> bool {
        self.endpoint_of(path).is_some() || path == crate::admin::SUBSCRIBE_PATH
    }

    fn on_request(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, req: Request) -> Reply {
        if ctx.listener_of(conn) == Some(crate::admin::ADMIN_LISTENER) {
            return crate::admin::on_request(self, ctx, conn, &req);
        }
        match self.routes.find(&req.method, &req.path) {
            RouteMatch::Found { handler, params } => match *handler {
                Route::Upload => self.upload(ctx, conn, req),
                Route::File => {
                    let name = params
                        .iter()
                        .find(|(k, _)| k == "name")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    self.serve_file(ctx, conn, &name)
                }
                Route::Health => Reply::Now(self.health(ctx)),
                Route::Me => self.me(ctx, conn, &req),
                Route::UpdateMe => self.update_me(ctx, conn, &req),
                Route::Logout => self.logout(ctx, conn, &req),
                Route::WxLogin => {
                    let reply = crate::wechat::login::login(self, ctx, conn, &req);
                    self.refused_login(ctx, conn, "wx", reply)
                }
                Route::WxDecrypt => crate::wechat::login::decrypt(self, ctx, conn, &req),
                Route::WxCallback => {
                    let name = params
                        .iter()
                        .find(|(k, _)| k == "app")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    crate::wechat::callback::handle(self, ctx, conn, &req, Some(&name))
                }
                Route::WxCallbackDefault => {
                    crate::wechat::callback::handle(self, ctx, conn, &req, None)
                }
                Route::DoLogin => {
                    let reply = self.do_login(ctx, conn, &req);
                    self.refused_login(ctx, conn, "dologin", reply)
                }
                Route::Visitor => {
                    let reply = crate::chat::visitor::create(self, ctx, conn, &req);
                    self.refused_login(ctx, conn, "visitor", reply)
                }
                Route::VisitorConvert => {
                    crate::chat::visitor::convert_request(self, ctx, conn, &req)
                }
                Route::DemoLogin => {
                    let reply = crate::demo_login::login(self, ctx, conn, &req);
                    self.refused_login(ctx, conn, "demo", reply)
                }
                Route::ServerApi => {
                    let action = params
                        .iter()
                        .find(|(k, _)| k == "action")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    self.server_api(ctx, conn, &req, &action)
                }
            },
            RouteMatch::NotFound if self.serves_pages(&req) => {
                self.serve_page(ctx, conn, &req.path)
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
            return crate::admin::on_upgrade(self, ctx, conn, req);
        }
        match self.endpoint_of(&req.path) {
            Some(Endpoint::QrLogin) if crate::wechat::qrlogin::app_for(self, req).is_none() => {
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
        self.open_by_endpoint[endpoint.index()] += 1;
        METRICS.ws_opened[endpoint.index()].inc();
        if endpoint != Endpoint::Subscriber {
            let peer = ctx.peer_addr(conn);
            let trusted = &self.config.http.trusted_proxies;
            self.admin.emit(ctx, Topic::Connection, || {
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
            Endpoint::Chat => crate::chat::on_open(self, ctx, conn, req),
            Endpoint::QrLogin => crate::wechat::qrlogin::on_open(self, ctx, conn, req),
            Endpoint::Subscriber => crate::admin::on_open(self, conn),
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
            Some(Endpoint::Chat) => crate::chat::on_message(self, ctx, conn, message),
            Some(Endpoint::Subscriber) => crate::admin::on_message(self, ctx, conn, message),
            // The browser only listens; anything it says is ignored.
            Some(Endpoint::QrLogin) | None => {}
        }
    }

    fn on_close(&mut self, ctx: &mut dyn Ctx<Completion>, conn: ConnId, info: CloseInfo) {
        let Some(endpoint) = self.endpoints.remove(&conn) else {
            return;
        };
        self.open_by_endpoint[endpoint.index()] -= 1;
        METRICS.closed(info.code);
        let uid = match endpoint {
            Endpoint::Chat => crate::chat::on_close(self, ctx, conn),
            Endpoint::QrLogin => {
                crate::wechat::qrlogin::on_close(self, ctx, conn);
                None
            }
            Endpoint::Subscriber => {
                crate::admin::on_close(self, conn);
                return;
            }
            Endpoint::Echo => None,
        };
        if info.code == crate::ws::close_code::POLICY {
            // The reactor closes slow consumers (and oversize queues) with 1008.
            self.admin.emit(ctx, Topic::Error, || {
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
        self.admin.emit(ctx, Topic::Connection, || {
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
        (completion.0)(self, ctx);
    }

    /// Every timer is an [`App::after`] closure.
    fn on_timer(&mut self, ctx: &mut dyn Ctx<Completion>, token: u64) {
        if let Some(f) = self.timers.remove(&token) {
            f(self, ctx);
        }
    }

    fn on_start(&mut self, ctx: &mut dyn Ctx<Completion>) {
        // The listeners are open and the loop is about to run: ready for systemd (Type=notify).
        crate::sd_notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        if let Some(every) = crate::sd_notify::watchdog_interval() {
            watchdog(self, ctx, every);
        }
        crate::admin::Admin::start(self, ctx);
        // The periodic purge of idle visitors ([service] visitor_purge_after_s).
        crate::chat::visitor::start_purge(self, ctx);
    }

    fn on_shutdown(&mut self, ctx: &mut dyn Ctx<Completion>) {
        crate::sd_notify::notify("STOPPING=1");
        crate::chat::on_shutdown(self, ctx);
    }

    fn has_pending_work(&self) -> bool {
        self.in_flight > 0
    }
}

#[cfg(test)]
mod tests {
    //! The handler driven through the in-memory backend: no sockets, a manual clock.
    use super::*;
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

    fn driver(dir: &std::path::Path) -> Driver<App> {
        let mut config = Config::default();
        config.server.data_dir = dir.to_path_buf();
        config.ws.echo_path = "/echo".into();
        config.chat.auth_timeout_s = 5;
        Driver::build(|notifier| App::new(config, notifier).unwrap())
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
        assert!(d.handler.chat.is_online(42));
        d.disconnect(c, 1000);
        assert!(!d.handler.chat.is_online(42));
    }
}
