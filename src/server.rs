//! Wires configuration, application and reactor into a server, for the CLI and for in-process
//! integration tests.

use crate::app::Front;
use crate::config::Config;
use crate::net::reactor::{Reactor, ReactorConfig, StopHandle};
use crate::net::Notifier;
use crate::pidfile::{self, PidLock};
use crate::rt::{App, Completion};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The composition root: the state owner from the configuration, the bus between nodes (its
/// envelopes continue in the chat hub), what the features restore from the store, and the
/// router around it all.
pub fn handler(
    config: crate::config::Config,
    notifier: Notifier<Completion>,
) -> Result<Front, String> {
    let mut app = App::new(config, notifier.clone())?;
    if !app.config.redis.url.is_empty() {
        app.bus = Some(crate::cluster::bus::Bus::start(
            &app.config.redis.url,
            &app.config.redis.prefix,
            &app.node_id,
            app.config.redis.bus_stream_len,
            crate::cluster::bus::Routing {
                presence: app.backends.presence.clone(),
                cache: app.backends.cache.clone(),
            },
            notifier.clone(),
            |env| {
                Completion::new(move |app, ctx| match &env.target {
                    crate::cluster::bus::Target::Qr(ticket) => {
                        crate::login::qr::deliver(app, ctx, ticket, &env.payload);
                    }
                    crate::cluster::bus::Target::Desk => {
                        crate::chat::desk_op(app, ctx, &env.origin, &env.payload);
                    }
                    _ => crate::chat::deliver_remote(app, ctx, env),
                })
            },
        )?);
    }
    if app.bus.is_none() {
        // The desk is this node's alone: restored now, its timers set once the reactor is up.
        app.chat.role.mine = true;
        if crate::chat::service_desk::restore(&mut app)? {
            notifier.send(Completion::new(crate::chat::service_desk::start));
        }
    } else {
        // One node of the cluster holds the desk: the lease decides which, once the reactor runs.
        notifier.send(Completion::new(crate::chat::start_desk));
    }
    Ok(Front::new(app))
}

/// A server whose listener is bound but whose loop is not running yet.
pub struct Server {
    reactor: Reactor<Completion>,
    app: Front,
    /// The data directory's pid lock: held from the start, or (the successor of an upgrade)
    /// filled in once the predecessor has exited.
    pid_lock: Arc<Mutex<Option<PidLock>>>,
}

impl Server {
    /// Creates the data directory, binds the listener and builds the application. Every start-up
    /// failure is returned as a message for the operator.
    pub fn bind(config: Config) -> Result<Server, String> {
        std::fs::create_dir_all(&config.server.data_dir).map_err(|e| {
            format!(
                "cannot create data_dir {}: {e}",
                config.server.data_dir.display()
            )
        })?;
        let addr: SocketAddr = config.server.listen.parse().map_err(|_| {
            format!(
                "[server] listen {:?} is not an address",
                config.server.listen
            )
        })?;
        let mut reactor = Reactor::bind(ReactorConfig::from_config(&config), addr)
            .map_err(|e| bind_error(addr, &e))?;
        if !config.admin.listen.is_empty() {
            let admin: SocketAddr = config.admin.listen.parse().map_err(|_| {
                format!("[admin] listen {:?} is not an address", config.admin.listen)
            })?;
            let index = reactor
                .add_listener(admin)
                .map_err(|e| format!("[admin] {}", bind_error(admin, &e)))?;
            debug_assert_eq!(index, crate::admin::ADMIN_LISTENER);
        }
        let app = handler(config, reactor.notifier())?;
        // A server started on its own is its database's only writer (a second one on the same
        // data directory is refused by the pid lock, and the store's own lock covers the rest).
        app.app
            .backends
            .store
            .set_sole_writer(true)
            .map_err(|e| format!("cannot open the store's commit log: {e}"))?;
        Ok(Server {
            reactor,
            app,
            pid_lock: Arc::new(Mutex::new(None)),
        })
    }

    /// `server upgrade`'s new process: takes the listening sockets of the server running on
    /// this data directory (which then stops accepting and drains, 1012), opens the store beside
    /// it (the SQLite persister notices the other writer, see store/sqlite/), and takes the
    /// pid lock once the old process has exited. See `handover`.
    pub fn takeover(config: Config) -> Result<Server, String> {
        let (old_pid, fds) = crate::handover::take(&config.server.data_dir)
            .map_err(|e| format!("cannot take over from the running server: {e}"))?;
        raise_open_file_limit(&config);
        let mut reactor = Reactor::new(ReactorConfig::from_config(&config))
            .map_err(|e| format!("cannot start the event loop: {e}"))?;
        let mut fds = fds.into_iter();
        let client = fds.next().ok_or("the running server sent no listener")?;
        reactor
            .adopt_listener(std::net::TcpListener::from(client))
            .map_err(|e| format!("cannot use the handed-over listener: {e}"))?;
        if !config.admin.listen.is_empty() {
            match fds.next() {
                Some(fd) => reactor.adopt_listener(std::net::TcpListener::from(fd)),
                None => config
                    .admin
                    .listen
                    .parse()
                    .map_err(|_| std::io::Error::other("bad [admin] listen"))
                    .and_then(|a| reactor.add_listener(a)),
            }
            .map_err(|e| format!("[admin] listener: {e}"))?;
        }
        let app = handler(config, reactor.notifier())?;
        let mut server = Server {
            reactor,
            app,
            pid_lock: Arc::new(Mutex::new(None)),
        };
        server.handle_signals()?;
        log::info!("upgrade: took the listeners of pid {old_pid}; it drains its connections");
        // The lock comes free when the old process exits; then the pid file names this one,
        // and this one can hand over in turn.
        let slot = server.pid_lock.clone();
        let config = server.app.app.config.clone();
        let store = server.app.app.backends.store.clone();
        let (addr, admin) = (server.local_addr(), server.admin_addr());
        let fds = server.reactor.listener_fds();
        let stop = server.stop_handle();
        std::thread::Builder::new()
            .name("pid-lock".into())
            .spawn(move || match pidfile::acquire_waiting(&config.pid_file()) {
                Ok(mut lock) => {
                    let admin = admin.map(|a| a.to_string());
                    if let Err(e) =
                        lock.write(std::process::id(), &addr.to_string(), admin.as_deref())
                    {
                        log::error!("cannot write the pid file: {e}");
                    }
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(lock);
                    }
                    log::info!(
                        "upgrade complete: pid {} owns the data directory",
                        std::process::id()
                    );
                    // The predecessor has exited: its writes beside this process are over.
                    if let Err(e) = store.set_sole_writer(true) {
                        log::warn!("store: staying in the shared-writer mode: {e}");
                    }
                    serve_handover(&config, fds, store, stop);
                }
                Err(e) => log::error!("upgrade: {e}"),
            })
            .map_err(|e| format!("cannot start the pid-lock thread: {e}"))?;
        Ok(server)
    }

    /// The binary's start, as the one owner of the data directory: its pid lock first, so a
    /// second server on it is told "already running on this data directory" before it raises
    /// limits, binds a port the first one holds, or opens the store; then the open-file limit,
    /// `bind`, the signal handlers, and pid and addresses written into the pid file (last: its
    /// content tells scripts the server is up and may be signalled). A failure after the lock
    /// removes the pid file again, so it never outlives a start that did not happen.
    pub fn bind_exclusive(config: Config) -> Result<Server, String> {
        let mut lock = lock_data_dir(&config)?;
        raise_open_file_limit(&config);
        let started = Server::bind(config).and_then(|mut server| {
            server.handle_signals()?;
            Ok(server)
        });
        let server = match started {
            Ok(s) => s,
            Err(e) => {
                lock.remove();
                return Err(e);
            }
        };
        let admin = server.admin_addr().map(|a| a.to_string());
        if let Err(e) = lock.write(
            std::process::id(),
            &server.local_addr().to_string(),
            admin.as_deref(),
        ) {
            let msg = format!("cannot write pid file {}: {e}", lock.path().display());
            lock.remove();
            return Err(msg);
        }
        if let Ok(mut slot) = server.pid_lock.lock() {
            *slot = Some(lock);
        }
        serve_handover(
            &server.app.app.config,
            server.reactor.listener_fds(),
            server.app.app.backends.store.clone(),
            server.stop_handle(),
        );
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.reactor.local_addr()
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.reactor.listener_addr(crate::admin::ADMIN_LISTENER)
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.reactor.stop_handle()
    }

    /// Installs SIGTERM/SIGINT/SIGHUP handling (the binary only).
    pub fn handle_signals(&mut self) -> Result<(), String> {
        self.reactor
            .handle_signals()
            .map_err(|e| format!("cannot install signal handlers: {e}"))
    }

    /// Runs the event loop on this thread until a graceful shutdown completes.
    pub fn run(self) -> Result<(), String> {
        let Server {
            reactor,
            mut app,
            pid_lock,
        } = self;
        log::info!(
            "wxchat {} listening on {}{}",
            env!("CARGO_PKG_VERSION"),
            reactor.local_addr(),
            reactor
                .listener_addr(crate::admin::ADMIN_LISTENER)
                .map_or_else(String::new, |a| format!(", admin on {a}"))
        );
        if app.app.config.web_enabled() {
            let a = reactor.local_addr();
            log::info!(
                "pages: http://{a}/ (agent console /agent/, chat demo /demo/, QR login /qrlogin/, visitor widget /widget.js){}",
                if app.app.config.demo_login_enabled() {
                    "; demo logins are on ([web] demo)"
                } else {
                    ""
                }
            );
        }
        // Every message passes through this thread (and the persister's).
        crate::rt::priority::make_realtime_logged(
            app.app.config.server.realtime_priority,
            crate::rt::priority::PathThread::Reactor,
        );
        let result = reactor
            .run(&mut app)
            .map_err(|e| format!("event loop failed: {e}"));
        // The last commits and the store's close happen while the pid file still says a server
        // owns this data directory.
        let data_dir = app.app.config.server.data_dir.clone();
        drop(app);
        let lock = pid_lock.lock().ok().and_then(|mut s| s.take());
        if let Some(lock) = lock {
            // Ours while the lock is: a successor binds its own only after taking the lock.
            let _ = std::fs::remove_file(crate::handover::socket_path(&data_dir));
            lock.remove();
        }
        result
    }

    /// Runs the server on a background thread (integration tests, embedding).
    pub fn spawn(self) -> Result<Running, String> {
        let addr = self.local_addr();
        let admin = self.admin_addr();
        let stop = self.stop_handle();
        let thread = std::thread::Builder::new()
            .name("reactor".into())
            .spawn(move || self.run())
            .map_err(|e| format!("cannot start the reactor thread: {e}"))?;
        Ok(Running {
            addr,
            admin,
            stop,
            thread: Some(thread),
        })
    }
}

/// A server running on its own thread; dropping it stops it gracefully.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when there is one.
    pub admin: Option<SocketAddr>,
    stop: StopHandle,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Running {
    /// Stops gracefully and waits for the loop to finish.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        self.stop.stop();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "reactor thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Waits for a successor (`server upgrade`) to ask for the listeners; then drains.
fn serve_handover(
    config: &Config,
    fds: Vec<std::os::fd::RawFd>,
    store: Arc<dyn crate::store::Store>,
    stop: StopHandle,
) {
    let period = std::time::Duration::from_secs(config.server.drain_s);
    let sole_writer = move |sole: bool| store.set_sole_writer(sole).map_err(std::io::Error::other);
    if let Err(e) = crate::handover::serve(&config.server.data_dir, fds, sole_writer, move || {
        stop.drain(period)
    }) {
        log::warn!("upgrades are not possible: cannot open the handover socket: {e}");
    }
}

/// Creates the data directory and takes its pid lock (an empty pid file until the server is
/// up), reporting a pid file a crashed server left behind.
fn lock_data_dir(config: &Config) -> Result<PidLock, String> {
    std::fs::create_dir_all(&config.server.data_dir).map_err(|e| {
        format!(
            "cannot create data_dir {}: {e}",
            config.server.data_dir.display()
        )
    })?;
    let path = config.pid_file();
    if let Ok(pidfile::Status::Stale { pid }) = pidfile::probe(&path) {
        log::warn!(
            "removing stale pid file {} (pid {} is gone)",
            path.display(),
            pid.map_or_else(|| "?".into(), |p| p.to_string())
        );
    }
    pidfile::acquire(&path)
}

/// One descriptor per connection: the soft limit (often 1,024) goes up to what
/// `max_connections` needs, as far as the hard limit allows. Said once, and only when it falls
/// short: as a warning when the operator chose `max_connections`, at info with the default,
/// which is a ceiling rather than a load anyone asked for.
fn raise_open_file_limit(config: &Config) {
    use crate::net::fd_limit;
    let max = config.server.max_connections as u64;
    match fd_limit::raise_to(max.saturating_add(fd_limit::RESERVED)) {
        Ok(l) => match fd_limit::shortfall(max, l) {
            Some(line)
                if config.server.max_connections != Config::default().server.max_connections =>
            {
                log::warn!("{line}")
            }
            Some(line) => log::info!("{line}"),
            None => log::debug!("open-file limit {} (hard {})", l.soft, l.hard),
        },
        Err(e) => log::warn!("cannot read or raise the open-file limit: {e}"),
    }
}

fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!("cannot listen on {addr}: the port is already in use")
    } else {
        format!("cannot listen on {addr}: {e}")
    }
}
