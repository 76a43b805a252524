//! The runtime and the state owner: [`App`] holds everything the reactor owns (configuration,
//! the store, the workers, the persister, the timers, the feed, and each feature's state), and
//! [`Completion`] carries work finished elsewhere back to it. Like redis's `server.h`, it sits at
//! the bottom: the features (chat, login) and the router (app) import it, and it imports only the
//! layers below it plus the features' pure state types (`chat::state`, `login::qr_state`), never
//! their handlers.
//!
//! A job is a pair: `work` runs on a worker thread with the store; `then` runs afterwards on the
//! reactor with its result. The pair travels back as a [`Completion`]. A timer is a closure run
//! on the reactor after a delay ([`App::after`]): the one timer scheme of the crate.

pub mod persister;
pub mod priority;
pub mod reply;
pub mod timer;
pub mod token;

use crate::chat::state::ChatState;
use crate::config::Config;
use crate::feed::metrics::METRICS;
use crate::feed::{Feed, Rates, Topic};
use crate::http::Response;
use crate::jobs::WorkerPool;
use crate::net::{ConnId, Ctx, Notifier};
use crate::secrets::Secrets;
use crate::store::{Appended, Backends, NewMessage, StoreResult};
use persister::{Busy, Persister};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use timer::AppTimer;

/// The reactor side of a job: runs with the application and the backend.
type Continuation = Box<dyn FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send>;

/// Work finished elsewhere, continued on the reactor.
pub struct Completion(Continuation);

impl Completion {
    pub fn new(f: impl FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send + 'static) -> Completion {
        Completion(Box::new(f))
    }

    /// Continues the work on the reactor.
    pub fn run(self, app: &mut App, ctx: &mut dyn Ctx<Completion>) {
        (self.0)(app, ctx)
    }
}

type TimerFn = Box<dyn FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send>;

/// The state owner (reactor-owned).
pub struct App {
    pub config: Arc<Config>,
    pub secrets: Secrets,
    pub backends: Backends,
    /// This process's name in shared presence and on the bus.
    pub node_id: String,
    /// Pushes to and from other processes (with Redis); set by the composition root.
    pub bus: Option<crate::cluster::bus::Bus>,
    /// The WeChat API client (used on workers).
    pub wx: Arc<crate::wechat::api::Client>,
    /// Every app's access_token, shared with the other processes through the cache.
    pub access_tokens: Arc<crate::wechat::access_token::AccessTokens>,
    /// Uploaded files (`[upload] backend`), used on workers.
    pub files: Arc<dyn crate::upload::FileStore>,
    pub started: Instant,
    pub started_unix_s: u64,
    /// Info topics and their subscribers.
    pub feed: Feed,
    /// Message rates at the last `serverInfo` tick.
    pub rates: Rates,
    /// The cluster's figures as of the last `serverInfo` tick (None until the first).
    pub cluster: Option<crate::store::presence::ClusterFigures>,
    /// Open WebSockets per endpoint (in the order of `feed::metrics::ENDPOINTS`), kept by the
    /// router.
    pub websockets: [u64; 4],
    workers: WorkerPool,
    persister: Persister<Completion>,
    /// Jobs submitted and not yet continued (graceful shutdown waits for them).
    pub in_flight: usize,
    pub chat: ChatState,
    /// QR-code login tickets waiting on this process.
    pub qr: crate::login::qr_state::QrState,
    timers: HashMap<u64, TimerFn>,
    next_timer: u64,
    /// Users of `POST /api/demo/login` on this process (befriended with each other).
    pub demo_users: Vec<u64>,
}

impl App {
    /// Opens the store, loads or generates the secrets, starts the workers and the persister.
    /// The bus and what the features restore are added by the composition root (`server`).
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
            crate::config::PERSIST_QUEUE_MESSAGES,
            config.server.realtime_priority,
            &crate::foreground::GATE,
            move |batch: Vec<Completion>| {
                deliver.send(Completion::new(move |app, ctx| {
                    for c in batch {
                        c.run(app, ctx);
                    }
                }));
            },
        )
        .map_err(|e| format!("cannot start the persister: {e}"))?;
        let node_id = crate::backends::node_id(&config);
        let (feed, publisher) = Feed::new(&config.admin, notifier, from_thread);
        let wx = Arc::new(
            crate::wechat::api::Client::new(Duration::from_millis(config.wechat.timeout_ms))
                .observed_by(crate::feed::wechat_observer(publisher)),
        );
        let access_tokens = Arc::new(crate::wechat::access_token::AccessTokens::new(
            wx.clone(),
            backends.cache.clone(),
            Duration::from_millis(config.wechat.timeout_ms.saturating_mul(3)),
        ));
        let now = Instant::now();
        Ok(App {
            access_tokens,
            wx,
            bus: None,
            chat: ChatState::new(&config),
            node_id,
            config: Arc::new(config),
            secrets,
            backends,
            files,
            started: now,
            started_unix_s: u64::try_from(crate::store::now_ms() / 1000).unwrap_or(0),
            feed,
            rates: Rates::new(now),
            cluster: None,
            websockets: [0; 4],
            workers,
            persister,
            in_flight: 0,
            qr: Default::default(),
            timers: HashMap::new(),
            next_timer: 1,
            demo_users: Vec::new(),
        })
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
        delay: Duration,
        f: impl FnOnce(&mut App, &mut dyn Ctx<Completion>) + Send + 'static,
    ) -> AppTimer {
        let token = self.next_timer;
        self.next_timer += 1;
        self.timers.insert(token, Box::new(f));
        AppTimer::new(ctx.set_timer(delay, token), token)
    }

    /// Cancels a timer set with [`App::after`] (a no-op once it has run).
    pub fn cancel(&mut self, ctx: &mut dyn Ctx<Completion>, t: AppTimer) {
        if self.timers.remove(&t.token()).is_some() {
            ctx.cancel_timer(t.id());
        }
    }

    /// A timer of [`App::after`] fired: runs its closure (none when it was cancelled).
    pub fn fire(&mut self, ctx: &mut dyn Ctx<Completion>, token: u64) {
        if let Some(f) = self.timers.remove(&token) {
            f(self, ctx);
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
        self.feed.login_response(ctx, conn, method, &resp);
        ctx.respond(conn, resp);
    }

    /// Messages waiting for the persister, and its last batch's lag.
    pub fn persister_load(&self) -> (usize, Duration) {
        self.persister.load()
    }

    /// Distinct users online in the cluster: the last figures, never fewer than this node's own
    /// (which may have grown since the last tick).
    pub fn cluster_users_online(&self) -> u64 {
        let here = self.chat.users_online() as u64;
        self.cluster
            .as_ref()
            .map_or(here, |c| c.users_online.max(here))
    }

    /// Jobs waiting for a worker.
    pub fn worker_queue(&self) -> usize {
        self.workers.queued()
    }
}

/// The completion that carries an event published on another thread to the feed.
fn from_thread(topic: Topic, fields: Value) -> Completion {
    Completion::new(move |app, ctx| app.feed.from_thread(ctx, topic, fields))
}

impl Drop for App {
    /// Every queued message is committed, then the store is closed (nothing else writes by
    /// then: the reactor has stopped, and graceful shutdown waited for in-flight jobs).
    fn drop(&mut self) {
        self.persister.finish();
        self.backends.store.close();
    }
}
