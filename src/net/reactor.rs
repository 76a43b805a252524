//! The mio backend: one thread, one `Poll`, every connection in a `Slab`.
//!
//! Discipline (see LIFECYCLE.md beside this file):
//! - Sockets are registered once for READABLE | WRITABLE (edge-triggered) and never re-registered.
//! - Reads go into one reactor-wide scratch buffer; a connection keeps only the few bytes of an
//!   incomplete frame header (WebSocket) or an incomplete request (HTTP), so idle connections own
//!   no buffers. Each connection reads at most `READ_BUDGET` bytes per wake-up; the rest waits on
//!   the ready list so one busy peer cannot starve the others.
//! - Output is queued during the iteration and written once per connection before sleeping
//!   (one `writev` for everything queued to it); what a read produces for its own connection is
//!   written right after that read. A full socket leaves the rest queued until the next
//!   WRITABLE edge.
//! - Unsent output above `READ_PAUSE_BYTES` (or `soft_out_bytes`, if lower) stops reading from
//!   that connection (backpressure); staying above `soft_out_bytes` for `soft_out_secs`, or
//!   passing `max_out_bytes`, closes it with 1008.
//! - Closing is deferred: connections are marked, and slots are freed at the end of the iteration.

use super::outqueue::{Flush, OutQueue};
use super::timer::Wheel;
use super::{CloseInfo, ConnId, Ctx, Frame, Handler, Message, Notifier, Reply, TimerId, Upgrade};
use crate::config::Config;
use crate::foreground::{Gate, GATE};
use crate::http;
use crate::ws::{self, close_code, OpCode};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// Listener `i` polls as `Token(LISTENER_BASE - i)`; slab keys never come near.
const LISTENER_BASE: usize = usize::MAX - 16;
/// Extra listeners (the admin listener) accept this many connections beyond `max_connections`,
/// so an operator can still look at a server that is full.
pub const EXTRA_LISTENER_HEADROOM: usize = 64;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes one connection may read per wake-up before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Unsent output above which a connection is not read from until it drains (or
/// `soft_out_bytes`, when that is lower): one read's worth of replies, so a peer that sends
/// faster than it reads is held back by TCP instead of by the server's memory.
const READ_PAUSE_BYTES: usize = 64 * 1024;
/// How long a closing connection waits for the peer's close frame or FIN.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long graceful shutdown waits for peers and in-flight work.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying `accept` after a resource error (EMFILE and friends).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The reactor's limits, taken from [`Config`].
#[derive(Clone, Debug)]
pub struct ReactorConfig {
    pub max_connections: usize,
    pub max_out_bytes: usize,
    pub soft_out_bytes: usize,
    pub soft_out_time: Duration,
    pub http_limits: http::Limits,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub ws_limits: ws::Limits,
    pub ping_interval: Option<Duration>,
    pub allowed_origins: Vec<String>,
    pub subprotocols: Vec<String>,
    pub deflate: ws::deflate::Mode,
    pub deflate_min_bytes: usize,
    /// Where the reactor reports when it has work, for the store's background threads
    /// (`foreground`): the process's gate, or a test's own.
    pub gate: &'static Gate,
}

impl ReactorConfig {
    pub fn from_config(c: &Config) -> ReactorConfig {
        ReactorConfig {
            max_connections: c.server.max_connections,
            max_out_bytes: c.server.max_out_bytes,
            soft_out_bytes: c.server.soft_out_bytes,
            soft_out_time: Duration::from_secs(c.server.soft_out_secs),
            http_limits: http::Limits {
                max_header_bytes: c.http.max_header_bytes,
                max_headers: c.http.max_headers,
                max_body_bytes: c.http.max_body_bytes,
                large_body_path: "/api/upload".into(),
                large_body_bytes: c.upload.max_bytes,
            },
            idle_timeout: Duration::from_secs(c.http.idle_timeout_s),
            handshake_timeout: Duration::from_secs(c.ws.handshake_timeout_s),
            ws_limits: ws::Limits {
                max_frame_bytes: c.ws.max_frame_bytes,
                max_message_bytes: c.ws.max_message_bytes,
            },
            ping_interval: (c.ws.ping_interval_s > 0)
                .then(|| Duration::from_secs(c.ws.ping_interval_s)),
            allowed_origins: c.ws.allowed_origins.clone(),
            subprotocols: c.ws.subprotocols.clone(),
            // Validated with the config.
            deflate: ws::deflate::Mode::parse(&c.ws.permessage_deflate)
                .unwrap_or(ws::deflate::Mode::Off),
            deflate_min_bytes: c.ws.permessage_deflate_min_bytes,
            gate: &GATE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// HTTP/1.1 requests (keep-alive, pipelining) until an upgrade.
    Http,
    /// An open WebSocket.
    Ws,
    /// Our close frame is queued or sent; waiting for the peer's close or FIN.
    Closing,
}

/// One connection's record. Idle, this is all it holds (`CONN_RECORD_BYTES` in the slab, a
/// unit test keeps it small): no read buffer, an empty output queue and decoder, times in
/// 32 bits, the peer's address inline when it is IPv4.
struct Conn {
    gen: u32,
    /// Index of the listener that accepted it (0: the client listener).
    listener: u8,
    stream: TcpStream,
    peer: Peer,
    phase: Phase,
    /// Unparsed input: an incomplete request (HTTP) or frame header (WebSocket).
    inbuf: InBuf,
    out: OutQueue,
    decoder: ws::Decoder,
    /// This connection's own compressor (context takeover, or a smaller window).
    deflater: Option<Box<ws::deflate::Deflater>>,
    /// permessage-deflate without context takeover and with the default window: shared frames
    /// are compressed once for everyone.
    deflate_shared: bool,
    /// The socket may have more to read (edge-triggered readiness memo).
    readable: bool,
    /// The peer's FIN (or an error) was reported: read until it shows, short reads or not.
    peer_shut: bool,
    /// The last write hit WouldBlock; wait for the WRITABLE edge.
    write_blocked: bool,
    in_dirty: bool,
    in_ready: bool,
    dropping: bool,
    /// The handler saw `on_open`, so it must see `on_close` exactly once.
    opened: bool,
    close_notified: bool,
    close_sent: bool,
    close_received: bool,
    fin_sent: bool,
    /// After a protocol error the decoder is poisoned: further input is discarded.
    discard_input: bool,
    /// Bytes left in `inbuf` right after the upgrade must be decoded even without a new read.
    pending_input: bool,
    /// HTTP: close once the output is written (no keep-alive, or an error reply).
    close_after_flush: bool,
    /// HTTP: a deferred reply is awaited: (keep_alive, head_only) of that request.
    awaiting_reply: Option<(bool, bool)>,
    /// HTTP: the request must be complete by then; WebSocket closing: the peer must be done by then.
    io_deadline: Ms,
    last_read: Ms,
    ping_sent: Option<Ms>,
    soft_since: Option<Ms>,
    /// The wheel entry currently in force for this connection.
    armed: Option<Ms>,
}

impl Conn {
    /// The peer's address for a log line ("-" once the socket cannot say).
    fn peer(&self) -> ShownPeer {
        ShownPeer(self.peer.get(&self.stream))
    }
}

/// A time of a connection: milliseconds since the reactor started, in 32 bits (never 0, so an
/// `Option<Ms>` is 32 bits too). They wrap after 49 days, so they are only compared with times
/// less than 24 days away: deadlines, and the last read while pings run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ms(std::num::NonZeroU32);

impl Ms {
    fn from_raw(ms: u64) -> Ms {
        Ms(std::num::NonZeroU32::new(ms as u32).unwrap_or(std::num::NonZeroU32::MIN))
    }

    fn plus(self, d: Duration) -> Ms {
        let d = u32::try_from(d.as_millis())
            .unwrap_or(u32::MAX / 2)
            .min(u32::MAX / 2);
        Ms::from_raw(u64::from(self.0.get().wrapping_add(d)))
    }

    /// Signed milliseconds from `self` to `later`.
    fn until(self, later: Ms) -> i64 {
        i64::from(later.0.get().wrapping_sub(self.0.get()) as i32)
    }

    /// `self` is `at` or later.
    fn reached(self, at: Ms) -> bool {
        at.until(self) >= 0
    }

    fn min(self, other: Ms) -> Ms {
        if self.until(other) < 0 {
            other
        } else {
            self
        }
    }
}

/// A peer's address in 7 bytes: IPv4 and IPv4-mapped IPv6 inline; any other (IPv6 peers,
/// which are rare behind a proxy) is asked of the socket when a log line or the handler wants
/// it.
#[derive(Clone, Copy)]
struct Peer {
    /// 0: ask the socket; 4: IPv4; 6: IPv4-mapped IPv6.
    kind: u8,
    ip: [u8; 4],
    port: [u8; 2],
}

impl Peer {
    fn of(addr: SocketAddr) -> Peer {
        let port = addr.port().to_be_bytes();
        match addr {
            SocketAddr::V4(a) => Peer {
                kind: 4,
                ip: a.ip().octets(),
                port,
            },
            SocketAddr::V6(a) if a.flowinfo() == 0 && a.scope_id() == 0 => {
                match a.ip().to_ipv4_mapped() {
                    Some(v4) => Peer {
                        kind: 6,
                        ip: v4.octets(),
                        port,
                    },
                    None => Peer {
                        kind: 0,
                        ip: [0; 4],
                        port,
                    },
                }
            }
            SocketAddr::V6(_) => Peer {
                kind: 0,
                ip: [0; 4],
                port,
            },
        }
    }

    fn get(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let ip = std::net::Ipv4Addr::from(self.ip);
        let port = u16::from_be_bytes(self.port);
        match self.kind {
            4 => Some(SocketAddr::new(ip.into(), port)),
            6 => Some(SocketAddr::new(ip.to_ipv6_mapped().into(), port)),
            _ => stream.peer_addr().ok(),
        }
    }
}

struct ShownPeer(Option<SocketAddr>);

impl std::fmt::Display for ShownPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A connection's unparsed input: 8 bytes and no allocation while empty, which it is for an
/// idle connection (a WebSocket keeps at most an incomplete frame header here, an HTTP
/// connection an incomplete request).
#[derive(Default)]
#[allow(clippy::box_collection)] // The box is the point: 8 bytes in every record, not 24.
struct InBuf(Option<Box<Vec<u8>>>);

impl InBuf {
    fn bytes(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    fn extend(&mut self, data: &[u8]) {
        if !data.is_empty() {
            self.0
                .get_or_insert_with(Box::default)
                .extend_from_slice(data);
        }
    }

    /// Drops the first `n` bytes; the buffer is freed once nothing is left.
    fn consume(&mut self, n: usize) {
        if let Some(v) = self.0.as_deref_mut() {
            v.drain(..n.min(v.len()));
            if v.is_empty() {
                self.0 = None;
            }
        }
    }

    /// Takes the bytes out (the connection then holds none).
    fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Puts bytes taken with `take` back.
    fn put(&mut self, v: Vec<u8>) {
        self.0 = (!v.is_empty()).then(|| Box::new(v));
    }
}

/// Bytes one connection's record takes in the reactor's slab (`slab` stores `Conn`s in an enum
/// of this shape), whatever the connection is doing; what it holds besides is on the heap.
pub const CONN_RECORD_BYTES: usize = {
    #[allow(dead_code)]
    enum SlabEntry {
        Vacant(usize),
        Occupied(Conn),
    }
    std::mem::size_of::<SlabEntry>()
};

// What an idle connection costs the reactor: a record that grows fails the build
// (BENCHMARKS.md, "Memory per connection"). Debug builds of mio add a selector id to each
// socket.
const _: () = assert!(
    CONN_RECORD_BYTES <= if cfg!(debug_assertions) { 128 } else { 112 },
    "the connection record grew"
);

/// The sending side of permessage-deflate for one connection, as `Conn::deflater` and
/// `Conn::deflate_shared` hold it.
enum DeflateOut<'a> {
    /// Not negotiated.
    Off,
    /// Stateless with the default window: shared frames are compressed once for everyone.
    Shared,
    /// This connection's own compressor (context takeover, or a smaller window).
    Own(&'a mut ws::deflate::Deflater),
}

impl DeflateOut<'_> {
    fn of(own: &mut Option<Box<ws::deflate::Deflater>>, shared: bool) -> DeflateOut<'_> {
        match own {
            Some(d) => DeflateOut::Own(d),
            None if shared => DeflateOut::Shared,
            None => DeflateOut::Off,
        }
    }
}

enum TimerEntry {
    Conn(ConnId, Ms),
    App(TimerId),
}

/// Stops a running reactor from another thread (graceful shutdown).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// Milliseconds over which to spread the WebSocket closes (0: all at once, with 1001).
    drain_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::error!("waking the reactor to stop failed: {e}");
        }
    }

    /// Stops for an upgrade: accepting ends at once (the successor holds the same listening
    /// sockets), and WebSocket peers are closed with 1012 (service restart) spread evenly over
    /// `period`, so their reconnects reach the successor as a stream, not a storm.
    pub fn drain(&self, period: Duration) {
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        self.drain_ms.store(ms, Ordering::SeqCst);
        self.stop();
    }
}

/// WebSocket connections still to be closed by an upgrade's drain.
struct Drain {
    started: Instant,
    period: Duration,
    pending: Vec<ConnId>,
    total: usize,
}

/// Everything the handler may touch through [`Ctx`], split from the handler and the scratch
/// buffer so the three can be borrowed independently.
struct Core<C> {
    cfg: ReactorConfig,
    conns: Slab<Conn>,
    next_gen: u32,
    wheel: Wheel<TimerEntry>,
    app_timers: Slab<(u32, u64)>,
    timer_gen: u32,
    dirty: Vec<usize>,
    ready: Vec<usize>,
    dropping: Vec<usize>,
    close_notices: Vec<(ConnId, CloseInfo)>,
    now: Instant,
    /// When the reactor started: connections keep their times as `Ms` since then.
    epoch: Instant,
    /// `now` as milliseconds since `epoch` (64 bits: never wraps).
    now_ms: u64,
    notifier: Notifier<C>,
    shutting_down: bool,
    /// Where payloads are compressed before they are queued (reused between messages).
    deflate_scratch: Vec<u8>,
}

/// One listening socket and its accept state.
struct Listener {
    /// None once shutdown began.
    socket: Option<TcpListener>,
    addr: SocketAddr,
    /// Connections (all listeners together) at which this one stops accepting.
    limit: usize,
    /// Accepting stopped at the limit or after a resource error; resumed from the loop.
    paused: bool,
    retry_at: Option<Instant>,
}

pub struct Reactor<C> {
    poll: Poll,
    listeners: Vec<Listener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    core: Core<C>,
    completions: Receiver<C>,
    scratch: Vec<u8>,
    stop: StopHandle,
    drain: Option<Drain>,
}

/// Pending connections the kernel may queue for `accept` (it caps this at `net.core.somaxconn`).
/// mio's 1024 overflows when thousands of clients reconnect at once (a restart, a network
/// blip): the dropped handshakes then wait out TCP's retransmission back-off, seconds each.
const LISTEN_BACKLOG: libc::c_int = 65_535;

/// Calling `listen` again on a listening socket only changes its backlog (Linux); failing that
/// leaves mio's.
fn widen_backlog(socket: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `socket` owns and keeps open.
    if unsafe { libc::listen(socket.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        log::warn!("listen backlog: {}", io::Error::last_os_error());
    }
}

impl<C: Send + 'static> Reactor<C> {
    /// Binds the listener. A busy port or a bad address is reported here, before anything runs.
    pub fn bind(cfg: ReactorConfig, addr: SocketAddr) -> io::Result<Reactor<C>> {
        let mut reactor = Reactor::new(cfg)?;
        reactor.add_listener(addr)?;
        Ok(reactor)
    }

    /// A reactor with no listener yet (add them with `add_listener` or `adopt_listener`).
    pub fn new(cfg: ReactorConfig) -> io::Result<Reactor<C>> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = channel();
        let now = Instant::now();
        let slots = super::connection_slots(cfg.max_connections);
        let reactor = Reactor {
            poll,
            listeners: Vec::new(),
            signals: None,
            core: Core {
                cfg,
                // Reserved up front: address space only, pages become resident as records are
                // first written. Grown by doubling instead, the slab's last copy and the freed
                // smaller copies stayed resident (jemalloc keeps freed pages until it decays them).
                conns: Slab::with_capacity(slots),
                next_gen: 0,
                wheel: Wheel::new(now),
                app_timers: Slab::new(),
                timer_gen: 0,
                dirty: Vec::new(),
                ready: Vec::new(),
                dropping: Vec::new(),
                close_notices: Vec::new(),
                now,
                epoch: now,
                now_ms: 0,
                notifier: Notifier::new(tx, Some(waker.clone())),
                shutting_down: false,
                deflate_scratch: Vec::new(),
            },
            completions: rx,
            scratch: vec![0; READ_CHUNK + 64],
            stop: StopHandle {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
                drain_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            },
            drain: None,
        };
        Ok(reactor)
    }

    /// Binds another listener (the admin listener) and returns its index, which
    /// [`Ctx::listener_of`] reports for its connections. It may accept
    /// `EXTRA_LISTENER_HEADROOM` connections beyond `max_connections`.
    pub fn add_listener(&mut self, addr: SocketAddr) -> io::Result<usize> {
        let socket = TcpListener::bind(addr)?;
        widen_backlog(&socket);
        self.register_listener(socket)
    }

    /// Takes over a listening socket another process opened (a zero-downtime upgrade): the
    /// same kernel socket, so nothing queued on it is lost.
    pub fn adopt_listener(&mut self, socket: std::net::TcpListener) -> io::Result<usize> {
        socket.set_nonblocking(true)?;
        self.register_listener(TcpListener::from_std(socket))
    }

    /// The listening sockets' descriptors, in listener order (for handing them over).
    pub fn listener_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.listeners
            .iter()
            .filter_map(|l| l.socket.as_ref().map(|s| s.as_raw_fd()))
            .collect()
    }

    fn register_listener(&mut self, mut socket: TcpListener) -> io::Result<usize> {
        let index = self.listeners.len();
        if index > u8::MAX as usize {
            return Err(io::Error::other("too many listeners"));
        }
        let addr = socket.local_addr()?;
        self.poll.registry().register(
            &mut socket,
            Token(LISTENER_BASE - index),
            Interest::READABLE,
        )?;
        let headroom = if index == 0 {
            0
        } else {
            EXTRA_LISTENER_HEADROOM
        };
        self.listeners.push(Listener {
            socket: Some(socket),
            addr,
            limit: self.core.cfg.max_connections + headroom,
            paused: false,
            retry_at: None,
        });
        Ok(index)
    }

    /// The client listener's bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0].addr
    }

    /// Listener `index`'s bound address.
    pub fn listener_addr(&self, index: usize) -> Option<SocketAddr> {
        self.listeners.get(index).map(|l| l.addr)
    }

    /// A handle for worker threads; the same one `Ctx::notifier` gives.
    pub fn notifier(&self) -> Notifier<C> {
        self.core.notifier.clone()
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Handles SIGTERM/SIGINT (graceful shutdown) and SIGHUP (reopen the log file). Only the
    /// server binary does this; in-process tests stop through [`StopHandle`].
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Runs until stopped (signal or [`StopHandle`]) and the graceful shutdown has finished.
    pub fn run<H: Handler<Completion = C>>(mut self, handler: &mut H) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        let mut shutdown_deadline: Option<Instant> = None;
        self.core.set_now(Instant::now());
        // The store's background threads step off a shared core while this thread has work,
        // including work it has not been scheduled to start on yet: events waiting in the
        // poll (`foreground`). Both are let go before `self` (and the poll) is dropped.
        let gate = self.core.cfg.gate;
        let _watch = gate.watch(self.poll.as_raw_fd());
        let mut foreground = gate.worker();
        foreground.working();
        handler.on_start(&mut self.core);
        loop {
            let now = Instant::now();
            let mut timeout = if self.core.ready.is_empty() {
                self.core.wheel.next_timeout(now)
            } else {
                Some(Duration::ZERO)
            };
            for at in self.listeners.iter().filter_map(|l| l.retry_at) {
                let d = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if shutdown_deadline.is_some() {
                timeout = Some(timeout.map_or(Duration::from_millis(100), |t| {
                    t.min(Duration::from_millis(100))
                }));
            }
            if timeout != Some(Duration::ZERO) {
                foreground.idle();
            }
            let polled = self.poll.poll(&mut events, timeout);
            foreground.working();
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.core.set_now(Instant::now());

            for event in events.iter() {
                match event.token() {
                    WAKER => self.drain_completions(handler),
                    SIGNALS => self.handle_signal_event(),
                    Token(t) if t <= LISTENER_BASE && LISTENER_BASE - t < self.listeners.len() => {
                        self.accept_all(LISTENER_BASE - t)
                    }
                    Token(key) => {
                        let Some(conn) = self.core.conns.get_mut(key) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.readable = true;
                        }
                        if event.is_read_closed() || event.is_error() {
                            conn.peer_shut = true;
                        }
                        let mut flush = false;
                        if event.is_writable() || event.is_write_closed() {
                            conn.write_blocked = false;
                            flush = !conn.out.is_empty();
                        }
                        let read = conn.readable;
                        if flush {
                            self.core.mark_dirty(key);
                        }
                        if read {
                            self.process_input(handler, key);
                        }
                    }
                }
            }

            // Connections that used up their read budget, or whose pipelined input resumes.
            let ready = std::mem::take(&mut self.core.ready);
            for key in ready {
                if let Some(c) = self.core.conns.get_mut(key) {
                    c.in_ready = false;
                }
                self.process_input(handler, key);
            }

            self.core.wheel.expire(self.core.now, &mut expired);
            for entry in expired.drain(..) {
                match entry {
                    TimerEntry::Conn(id, at) => self.conn_timer(id, at),
                    TimerEntry::App(tid) => {
                        let token = match self.core.app_timers.get(tid.slot as usize) {
                            Some(&(gen, token)) if gen == tid.gen => token,
                            _ => continue,
                        };
                        self.core.app_timers.remove(tid.slot as usize);
                        handler.on_timer(&mut self.core, token);
                    }
                }
            }

            if self.stop.flag.swap(false, Ordering::SeqCst) && shutdown_deadline.is_none() {
                shutdown_deadline = Some(self.begin_shutdown(handler));
            }
            self.drain_step();

            self.deliver_close_notices(handler);
            self.flush_dirty();
            self.drop_closed();

            for index in 0..self.listeners.len() {
                let l = &mut self.listeners[index];
                if l.paused
                    && l.retry_at.is_none_or(|at| self.core.now >= at)
                    && self.core.conns.len() < l.limit
                {
                    l.retry_at = None;
                    self.accept_all(index);
                }
            }

            if let Some(deadline) = shutdown_deadline {
                let idle = self.core.conns.is_empty() && !handler.has_pending_work();
                if idle {
                    log::info!("shutdown complete");
                    return Ok(());
                }
                if self.core.now >= deadline {
                    log::warn!(
                        "shutdown timed out with {} connections open and work pending: {}",
                        self.core.conns.len(),
                        handler.has_pending_work()
                    );
                    return Ok(());
                }
            }
        }
    }

    fn handle_signal_event(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        for sig in signals.pending() {
            match sig {
                signal_hook::consts::SIGHUP => {
                    if let Err(e) = crate::logger::reopen() {
                        log::error!("reopening the log file failed: {e}");
                    } else {
                        log::info!("log file reopened (SIGHUP)");
                    }
                }
                _ => {
                    log::info!("signal {sig}: shutting down");
                    self.stop.flag.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    fn begin_shutdown<H: Handler<Completion = C>>(&mut self, handler: &mut H) -> Instant {
        log::info!(
            "graceful shutdown: {} connections open",
            self.core.conns.len()
        );
        self.core.shutting_down = true;
        for l in &mut self.listeners {
            if let Some(mut socket) = l.socket.take() {
                let _ = self.poll.registry().deregister(&mut socket);
            }
            l.paused = false;
        }
        handler.on_shutdown(&mut self.core);
        let drain_ms = self.stop.drain_ms.load(Ordering::SeqCst);
        let ids: Vec<ConnId> = self
            .core
            .conns
            .iter()
            .map(|(k, c)| ConnId {
                key: k as u32,
                gen: c.gen,
            })
            .collect();
        for id in ids {
            let Some(c) = self.core.conn(id) else {
                continue;
            };
            match c.phase {
                Phase::Ws if drain_ms > 0 => {
                    self.drain
                        .get_or_insert_with(|| Drain {
                            started: self.core.now,
                            period: Duration::from_millis(drain_ms),
                            pending: Vec::new(),
                            total: 0,
                        })
                        .pending
                        .push(id);
                }
                Phase::Ws => self
                    .core
                    .close(id, close_code::GOING_AWAY, "server shutting down"),
                Phase::Closing => {}
                Phase::Http => {
                    // Requests being answered finish first; idle keep-alive connections go now.
                    if c.awaiting_reply.is_none() && c.out.is_empty() {
                        self.core.drop_conn(id.key as usize);
                    } else {
                        c.close_after_flush = true;
                    }
                }
            }
        }
        match &mut self.drain {
            Some(d) => {
                d.total = d.pending.len();
                // The first to arrive are closed first: they have been here longest.
                d.pending.reverse();
                log::info!(
                    "upgrade: closing {} WebSockets with 1012 over {} ms",
                    d.total,
                    drain_ms
                );
                self.core.now + d.period + SHUTDOWN_TIMEOUT
            }
            None => self.core.now + SHUTDOWN_TIMEOUT,
        }
    }

    /// Closes the share of the draining WebSockets that is due by now (evenly over the period).
    fn drain_step(&mut self) {
        let Some(d) = &mut self.drain else {
            return;
        };
        let elapsed = self.core.now.saturating_duration_since(d.started);
        let due = if elapsed >= d.period {
            d.total
        } else {
            (d.total as u128 * elapsed.as_millis() / d.period.as_millis().max(1)) as usize + 1
        };
        let closed = d.total - d.pending.len();
        let mut batch = Vec::new();
        for _ in closed..due.min(d.total) {
            if let Some(id) = d.pending.pop() {
                batch.push(id);
            }
        }
        if d.pending.is_empty() {
            self.drain = None;
        }
        for id in batch {
            self.core.close(
                id,
                close_code::SERVICE_RESTART,
                "server restarting: reconnect",
            );
        }
    }

    fn accept_all(&mut self, index: usize) {
        let Some(l) = self.listeners.get_mut(index) else {
            return;
        };
        let Some(listener) = l.socket.as_ref() else {
            return;
        };
        loop {
            if self.core.conns.len() >= l.limit {
                if !l.paused {
                    log::warn!(
                        "connection limit {} reached: accepting on {} paused",
                        l.limit,
                        l.addr
                    );
                }
                l.paused = true;
                return;
            }
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let entry = self.core.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::error!("registering a connection failed: {e}");
                        continue;
                    }
                    // Chat frames are small and latency matters more than packet count; writes
                    // are already batched per loop iteration.
                    let _ = stream.set_nodelay(true);
                    self.core.next_gen = self.core.next_gen.wrapping_add(1);
                    let now = Ms::from_raw(self.core.now_ms);
                    entry.insert(Conn {
                        gen: self.core.next_gen,
                        listener: index as u8,
                        stream,
                        peer: Peer::of(peer),
                        phase: Phase::Http,
                        inbuf: InBuf::default(),
                        out: OutQueue::default(),
                        decoder: ws::Decoder::default(),
                        deflater: None,
                        deflate_shared: false,
                        readable: true,
                        peer_shut: false,
                        write_blocked: false,
                        in_dirty: false,
                        in_ready: false,
                        dropping: false,
                        opened: false,
                        close_notified: false,
                        close_sent: false,
                        close_received: false,
                        fin_sent: false,
                        discard_input: false,
                        pending_input: false,
                        close_after_flush: false,
                        awaiting_reply: None,
                        io_deadline: now.plus(self.core.cfg.handshake_timeout),
                        last_read: now,
                        ping_sent: None,
                        soft_since: None,
                        armed: None,
                    });
                    self.core
                        .arm(key, now.plus(self.core.cfg.handshake_timeout));
                    // Edge-triggered: the request may already be waiting; read it next pass.
                    self.core.mark_ready(key);
                    if l.paused {
                        log::info!("accepting on {} resumed", l.addr);
                        l.paused = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.paused = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: retry shortly rather than spin.
                    log::warn!("accept failed: {e}; retrying in {ACCEPT_RETRY:?}");
                    l.paused = true;
                    l.retry_at = Some(self.core.now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn drain_completions<H: Handler<Completion = C>>(&mut self, handler: &mut H) {
        loop {
            match self.completions.try_recv() {
                Ok(c) => handler.on_completion(&mut self.core, c),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return,
            }
        }
    }

    fn deliver_close_notices<H: Handler<Completion = C>>(&mut self, handler: &mut H) {
        // A handler's on_close may close further connections: loop until quiet.
        while !self.core.close_notices.is_empty() {
            let notices = std::mem::take(&mut self.core.close_notices);
            for (id, info) in notices {
                handler.on_close(&mut self.core, id, info);
            }
        }
    }

    fn process_input<H: Handler<Completion = C>>(&mut self, handler: &mut H, key: usize) {
        let Some(conn) = self.core.conns.get(key) else {
            return;
        };
        if conn.dropping {
            return;
        }
        match conn.phase {
            Phase::Http => self.process_http(handler, key),
            Phase::Ws | Phase::Closing => self.process_ws(handler, key),
        }
        self.deliver_close_notices(handler);
    }

    /// Reads into the scratch buffer after `prefix` bytes. Ok(None) = nothing more now.
    fn read_some(&mut self, key: usize, prefix: usize) -> Result<Option<usize>, String> {
        let need = prefix + READ_CHUNK;
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        let Some(conn) = self.core.conns.get_mut(key) else {
            return Ok(None);
        };
        loop {
            match conn
                .stream
                .read(&mut self.scratch[prefix..prefix + READ_CHUNK])
            {
                Ok(0) => return Err("peer closed the connection".into()),
                Ok(n) => {
                    conn.last_read = Ms::from_raw(self.core.now_ms);
                    conn.ping_sent = None;
                    // A short read emptied the socket: whatever arrives next raises a new edge,
                    // so the read that would only say EAGAIN (one syscall per message in
                    // request/response traffic) is skipped. A FIN already reported is read to
                    // the end instead, since no further edge would announce it.
                    if n < READ_CHUNK && !conn.peer_shut {
                        conn.readable = false;
                    }
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }

    fn process_ws<H: Handler<Completion = C>>(&mut self, handler: &mut H, key: usize) {
        let mut budget = READ_BUDGET;
        if let Some(conn) = self.core.conns.get_mut(key) {
            if conn.pending_input {
                conn.pending_input = false;
                let prefix = conn.inbuf.take();
                self.scratch[..prefix.len()].copy_from_slice(&prefix);
                self.decode_ws(handler, key, prefix.len());
            }
        }
        loop {
            let Some(conn) = self.core.conns.get_mut(key) else {
                return;
            };
            if conn.dropping || !conn.readable {
                return;
            }
            // Backpressure: a peer that does not read its output gets no more input processed,
            // so what waits for it stays in the kernel's buffers and TCP's window, not here.
            if conn.out.len() > self.core.cfg.soft_out_bytes.min(READ_PAUSE_BYTES) {
                return;
            }
            if budget == 0 {
                self.core.mark_ready(key);
                return;
            }
            let prefix = conn.inbuf.take();
            let need = prefix.len() + READ_CHUNK;
            if self.scratch.len() < need {
                self.scratch.resize(need, 0);
            }
            self.scratch[..prefix.len()].copy_from_slice(&prefix);
            match self.read_some(key, prefix.len()) {
                Ok(Some(n)) => {
                    budget = budget.saturating_sub(n);
                    self.decode_ws(handler, key, prefix.len() + n);
                    // What this read produced for its own connection (echoes, replies, pongs)
                    // goes to the socket now, while it is in cache, instead of piling up over
                    // the whole read budget until the end of the pass.
                    self.flush_conn(key, false);
                }
                Ok(None) => {
                    if let Some(conn) = self.core.conns.get_mut(key) {
                        conn.inbuf.put(prefix);
                    }
                    return;
                }
                Err(why) => {
                    self.core.peer_gone(key, &why);
                    return;
                }
            }
        }
    }

    /// Decodes `scratch[..len]` for a WebSocket connection and dispatches what it yields.
    fn decode_ws<H: Handler<Completion = C>>(&mut self, handler: &mut H, key: usize, len: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.discard_input || conn.close_received {
            return;
        }
        let id = ConnId {
            key: key as u32,
            gen: conn.gen,
        };
        let mut decoder = std::mem::take(&mut conn.decoder);
        let mut pos = 0;
        let mut failure: Option<ws::Error> = None;
        while pos < len {
            match decoder.decode(&mut self.scratch[pos..len]) {
                Ok((n, None)) => {
                    pos += n;
                    if n == 0 {
                        break;
                    }
                }
                Ok((n, Some(event))) => {
                    pos += n;
                    let Some(conn) = self.core.conns.get_mut(key) else {
                        return;
                    };
                    let open = conn.phase == Phase::Ws;
                    match event {
                        ws::Event::Text(text) if open => {
                            handler.on_message(&mut self.core, id, Message::Text(text));
                        }
                        ws::Event::Binary(data) if open => {
                            handler.on_message(&mut self.core, id, Message::Binary(data));
                        }
                        ws::Event::Text(_) | ws::Event::Binary(_) => {}
                        ws::Event::Ping(payload) => {
                            if !conn.close_sent {
                                conn.out.push_ws(OpCode::Pong, payload);
                                self.core.mark_dirty(key);
                            }
                        }
                        ws::Event::Pong(_) => {}
                        ws::Event::Close { code, reason } => {
                            log::debug!(
                                "conn={id} peer={} close received code={code:?} reason_len={}",
                                conn.peer(),
                                reason.len()
                            );
                            conn.close_received = true;
                            if !conn.close_sent {
                                // Echo the peer's code (RFC 6455 5.5.1); an empty close gets an
                                // empty close.
                                let frame = match code {
                                    Some(c) => ws::close_frame(c, ""),
                                    None => ws::frame(OpCode::Close, &[]),
                                };
                                conn.out.push_bytes(&frame);
                                conn.close_sent = true;
                            }
                            conn.phase = Phase::Closing;
                            let info = CloseInfo {
                                code: code.unwrap_or(1005),
                                reason: "closed by peer".into(),
                            };
                            self.core.notify_close(key, info);
                            self.core.mark_dirty(key);
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            // The handler may have closed this connection while handling a message.
            match self.core.conns.get(key) {
                Some(c) if c.gen == id.gen && !c.dropping && !c.close_received => {}
                _ => break,
            }
        }
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.gen != id.gen {
            return;
        }
        // What a message in progress needed is freed once it is over: an idle decoder owns no
        // memory.
        decoder.shrink();
        conn.decoder = decoder;
        if let Some(e) = failure {
            log::debug!("conn={id} peer={} protocol error: {e}", conn.peer());
            conn.discard_input = true;
            self.core.close_ws(key, e.close_code(), &e.to_string());
            return;
        }
        if pos < len && !conn.close_received {
            conn.inbuf.extend(&self.scratch[pos..len]);
        }
    }

    fn process_http<H: Handler<Completion = C>>(&mut self, handler: &mut H, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.core.conns.get_mut(key) else {
                return;
            };
            if conn.dropping || conn.phase != Phase::Http || conn.close_after_flush {
                break;
            }
            if conn.awaiting_reply.is_some() || conn.out.len() > self.core.cfg.soft_out_bytes {
                // Pipelined requests wait for the deferred reply (responses stay in order).
                break;
            }
            match http::parse_request(conn.inbuf.bytes(), &self.core.cfg.http_limits) {
                Ok(Some((request, used))) => {
                    conn.inbuf.consume(used);
                    self.handle_request(handler, key, request);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    log::debug!("conn={key} peer={} bad request: {e}", conn.peer());
                    let resp = http::Response::error(e.status(), &e.to_string());
                    conn.out.push_bytes(&resp.to_bytes(false, false));
                    conn.close_after_flush = true;
                    conn.inbuf = InBuf::default();
                    self.core.mark_dirty(key);
                    break;
                }
            }
            if !conn.readable {
                break;
            }
            if budget == 0 {
                self.core.mark_ready(key);
                break;
            }
            match self.read_some(key, 0) {
                Ok(Some(n)) => {
                    budget = budget.saturating_sub(n);
                    if let Some(conn) = self.core.conns.get_mut(key) {
                        conn.inbuf.extend(&self.scratch[..n]);
                    }
                }
                Ok(None) => break,
                Err(why) => {
                    // A peer that half-closes after its request still gets the reply.
                    let Some(conn) = self.core.conns.get_mut(key) else {
                        return;
                    };
                    conn.readable = false;
                    if conn.awaiting_reply.is_some() || !conn.out.is_empty() {
                        conn.close_after_flush = true;
                    } else {
                        log::trace!("conn={key} peer={}: {why}", conn.peer());
                        self.core.drop_conn(key);
                    }
                    break;
                }
            }
        }
    }

    fn handle_request<H: Handler<Completion = C>>(
        &mut self,
        handler: &mut H,
        key: usize,
        request: http::Request,
    ) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        let id = ConnId {
            key: key as u32,
            gen: conn.gen,
        };
        conn.io_deadline = Ms::from_raw(self.core.now_ms).plus(self.core.cfg.idle_timeout);
        if handler.is_websocket_path(&request.path) {
            let hs = ws::handshake::HandshakeConfig {
                allowed_origins: &self.core.cfg.allowed_origins,
                subprotocols: &self.core.cfg.subprotocols,
                deflate: self.core.cfg.deflate,
            };
            let accepted = match ws::handshake::negotiate(
                &request.method,
                request.http_minor,
                &request.headers,
                &hs,
            ) {
                Ok(a) => a,
                Err(rejection) => {
                    let mut resp = http::Response::error(rejection.status, rejection.reason);
                    for (name, value) in &rejection.headers {
                        resp = resp.with_header(name, value);
                    }
                    self.core.queue_http(key, &resp, false, false);
                    return;
                }
            };
            match handler.on_upgrade(&mut self.core, id, &request) {
                Upgrade::Reject(resp) => {
                    self.core.queue_http(key, &resp, false, false);
                }
                Upgrade::Accept => {
                    let Some(conn) = self.core.conns.get_mut(key) else {
                        return;
                    };
                    conn.out.push_bytes(&ws::handshake::response(&accepted));
                    conn.phase = Phase::Ws;
                    conn.opened = true;
                    conn.decoder = ws::Decoder::new(self.core.cfg.ws_limits);
                    if let Some((params, _)) = &accepted.deflate {
                        conn.decoder
                            .enable_deflate(!params.client_no_context_takeover);
                        if params.shares_compressed_frames() {
                            conn.deflate_shared = true;
                        } else {
                            conn.deflater = Some(Box::new(ws::deflate::Deflater::new(
                                params.server_max_window_bits,
                                !params.server_no_context_takeover,
                            )));
                        }
                    }
                    conn.pending_input = !conn.inbuf.is_empty();
                    conn.last_read = Ms::from_raw(self.core.now_ms);
                    log::debug!(
                        "conn={id} peer={} websocket open {}",
                        conn.peer(),
                        request.path
                    );
                    self.core.mark_dirty(key);
                    if let Some(interval) = self.core.cfg.ping_interval {
                        let at = Ms::from_raw(self.core.now_ms).plus(interval);
                        self.core.arm(key, at);
                    }
                    handler.on_open(&mut self.core, id, &request);
                    self.core.mark_ready(key);
                }
            }
            return;
        }
        let keep_alive = request.keep_alive() && !self.core.shutting_down;
        let head_only = request.method == "HEAD";
        match handler.on_request(&mut self.core, id, request) {
            Reply::Now(resp) => self.core.queue_http(key, &resp, keep_alive, head_only),
            Reply::Later => {
                if let Some(conn) = self.core.conns.get_mut(key) {
                    if conn.gen == id.gen {
                        conn.awaiting_reply = Some((keep_alive, head_only));
                    }
                }
            }
        }
    }

    /// A connection's wheel entry fired: time out, ping, or enforce the soft output limit.
    fn conn_timer(&mut self, id: ConnId, at: Ms) {
        let now = Ms::from_raw(self.core.now_ms);
        let cfg_ping = self.core.cfg.ping_interval;
        let soft_time = self.core.cfg.soft_out_time;
        let key = id.key as usize;
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.gen != id.gen || conn.armed != Some(at) || conn.dropping {
            return;
        }
        conn.armed = None;
        // The soft-limit clock stops once the connection is closing: the close deadline frees
        // it. A frame the peer had started receiving stays queued after a slow-consumer close
        // and may still be over the limit; left running, the clock fired again at each close
        // deadline, closed afresh and set a new deadline, and a peer that never read again was
        // never freed.
        let soft_since = conn.soft_since.filter(|_| conn.phase != Phase::Closing);
        if let Some(since) = soft_since {
            if now.reached(since.plus(soft_time)) && conn.out.len() > self.core.cfg.soft_out_bytes {
                log::warn!(
                    "conn={id} peer={} closed: {} bytes queued for over {}s (soft limit {})",
                    conn.peer(),
                    conn.out.len(),
                    soft_time.as_secs(),
                    self.core.cfg.soft_out_bytes
                );
                self.core.overflow(key, "slow consumer");
                return;
            }
        }
        let mut next: Option<Ms> = soft_since.map(|s| s.plus(soft_time));
        match conn.phase {
            Phase::Http => {
                if conn.awaiting_reply.is_none() && now.reached(conn.io_deadline) {
                    log::debug!("conn={id} peer={} http timeout", conn.peer());
                    self.core.drop_conn(key);
                    return;
                }
                let at = if conn.awaiting_reply.is_some() {
                    now.plus(self.core.cfg.idle_timeout)
                } else {
                    conn.io_deadline
                };
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            Phase::Closing => {
                if now.reached(conn.io_deadline) {
                    self.core.drop_conn(key);
                    return;
                }
                next = Some(next.map_or(conn.io_deadline, |n| n.min(conn.io_deadline)));
            }
            Phase::Ws => {
                if let Some(interval) = cfg_ping {
                    let at = match conn.ping_sent {
                        Some(sent) if now.reached(sent.plus(interval)) => {
                            log::debug!("conn={id} peer={} ping timeout", conn.peer());
                            self.core
                                .close_ws(key, close_code::GOING_AWAY, "ping timeout");
                            return;
                        }
                        Some(sent) => sent.plus(interval),
                        None if now.reached(conn.last_read.plus(interval)) => {
                            conn.out.push_ws(OpCode::Ping, b"");
                            conn.ping_sent = Some(now);
                            self.core.mark_dirty(key);
                            now.plus(interval)
                        }
                        None => conn.last_read.plus(interval),
                    };
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        if let Some(at) = next {
            self.core.arm(key, at);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        for key in dirty {
            self.flush_conn(key, true);
        }
    }

    /// Writes one connection's queued output. `resume` puts a connection whose output drained
    /// back on the ready list (its reading may have been paused by backpressure); the read loop
    /// itself flushes with `resume` off, since it is reading that connection already.
    fn flush_conn(&mut self, key: usize, resume: bool) {
        let soft = self.core.cfg.soft_out_bytes;
        let soft_time = self.core.cfg.soft_out_time;
        let now = Ms::from_raw(self.core.now_ms);
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        // Flushed earlier in this pass (by the read loop) and nothing queued since.
        if !conn.in_dirty || conn.dropping {
            return;
        }
        conn.in_dirty = false;
        if !conn.write_blocked {
            match conn.out.write_to(&mut conn.stream) {
                Ok(Flush::Done) => {
                    conn.soft_since = None;
                    if resume && conn.readable && !conn.close_received {
                        self.core.mark_ready(key);
                    }
                    self.core.after_drain(key);
                    return;
                }
                Ok(Flush::Blocked) => conn.write_blocked = true,
                Err(e) => {
                    let why = format!("write error: {e}");
                    self.core.peer_gone(key, &why);
                    return;
                }
            }
        }
        // Still queued (this write or an earlier one blocked): run the soft-limit clock.
        if conn.out.len() <= soft {
            conn.soft_since = None;
        } else if conn.soft_since.is_none() {
            conn.soft_since = Some(now);
            self.core.arm(key, now.plus(soft_time));
        }
    }

    fn drop_closed(&mut self) {
        for key in std::mem::take(&mut self.core.dropping) {
            if let Some(conn) = self.core.conns.try_remove(key) {
                // Dropping the stream closes the socket, which also removes it from epoll.
                log::trace!("conn={}.{} peer={} freed", key, conn.gen, conn.peer());
            }
        }
    }
}

impl<C> Core<C> {
    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.key as usize)
            .filter(|c| c.gen == id.gen && !c.dropping)
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.in_dirty {
                c.in_dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn mark_ready(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.in_ready {
                c.in_ready = true;
                self.ready.push(key);
            }
        }
    }

    /// Makes sure the connection's timer fires no later than `at`.
    fn arm(&mut self, key: usize, at: Ms) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.armed.is_none_or(|a| at.until(a) > 0) {
            c.armed = Some(at);
            let id = ConnId {
                key: key as u32,
                gen: c.gen,
            };
            let ahead = Duration::from_millis(Ms::from_raw(self.now_ms).until(at).max(0) as u64);
            self.wheel
                .insert(self.now + ahead, TimerEntry::Conn(id, at));
        }
    }

    /// Sets the time of this loop iteration.
    fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
    }

    /// `now` as a connection keeps times.
    fn ms(&self) -> Ms {
        Ms::from_raw(self.now_ms)
    }

    fn notify_close(&mut self, key: usize, info: CloseInfo) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.opened && !c.close_notified {
            c.close_notified = true;
            let id = ConnId {
                key: key as u32,
                gen: c.gen,
            };
            self.close_notices.push((id, info));
        }
    }

    /// Marks the connection for freeing at the end of the iteration.
    fn drop_conn(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if !c.dropping {
            c.dropping = true;
            self.dropping.push(key);
        }
    }

    /// The TCP connection is gone (EOF, reset, write error).
    fn peer_gone(&mut self, key: usize, why: &str) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let code = if c.close_received || c.close_sent {
            1000
        } else {
            1006
        };
        log::debug!("conn={key}.{} peer={} gone: {why}", c.gen, c.peer());
        self.notify_close(
            key,
            CloseInfo {
                code,
                reason: why.to_string(),
            },
        );
        self.drop_conn(key);
    }

    /// Starts the WebSocket close handshake from our side.
    fn close_ws(&mut self, key: usize, code: u16, reason: &str) {
        let now = self.ms();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.close_sent {
            return;
        }
        c.out.push_bytes(&ws::close_frame(code, reason));
        c.close_sent = true;
        c.phase = Phase::Closing;
        c.io_deadline = now.plus(CLOSE_TIMEOUT);
        self.notify_close(
            key,
            CloseInfo {
                code,
                reason: reason.to_string(),
            },
        );
        self.mark_dirty(key);
        self.arm(key, now.plus(CLOSE_TIMEOUT));
    }

    /// Output limit exceeded: drop what the peer has not started receiving, tell it why, close.
    fn overflow(&mut self, key: usize, why: &str) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.out.truncate_unstarted();
        c.discard_input = true;
        match c.phase {
            Phase::Http => self.drop_conn(key),
            Phase::Ws | Phase::Closing => {
                // The close frame may never be read by a peer that stopped reading; the close
                // deadline then frees the slot anyway.
                c.close_sent = false;
                c.phase = Phase::Ws;
                self.close_ws(key, close_code::POLICY, why);
            }
        }
    }

    /// Called after a connection's output drained completely.
    fn after_drain(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        match c.phase {
            Phase::Http if c.close_after_flush && c.awaiting_reply.is_none() => self.drop_conn(key),
            Phase::Closing if c.close_sent => {
                if c.close_received {
                    // Handshake complete: the server closes the TCP connection first (RFC 6455 7.1.1).
                    self.drop_conn(key);
                } else if !c.fin_sent {
                    c.fin_sent = true;
                    let _ = c.stream.shutdown(Shutdown::Write);
                }
            }
            _ => {}
        }
    }

    /// Queues an HTTP response for the connection's current request.
    fn queue_http(&mut self, key: usize, resp: &http::Response, keep_alive: bool, head_only: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.out.push_bytes(&resp.to_bytes(keep_alive, head_only));
        if !keep_alive {
            c.close_after_flush = true;
        }
        self.mark_dirty(key);
    }

    /// After queuing to a WebSocket: enforce the hard output cap.
    fn after_queue(&mut self, key: usize) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        if c.out.len() > self.cfg.max_out_bytes {
            log::warn!(
                "conn={key}.{} peer={} closed: {} bytes queued over the hard limit {}",
                c.gen,
                c.peer(),
                c.out.len(),
                self.cfg.max_out_bytes
            );
            self.overflow(key, "output buffer limit");
        } else {
            self.mark_dirty(key);
        }
    }

    /// Queues one data message, compressed when the connection negotiated it and it pays.
    fn send_data(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8]) -> bool {
        let Some(key) = self.ws_target(conn) else {
            return false;
        };
        let min = self.cfg.deflate_min_bytes;
        let c = &mut self.conns[key];
        if c.deflater.is_none() && !c.deflate_shared {
            // No compression (every echo and most chat traffic): queue it and mark the
            // connection for the flush, on the record already in hand.
            c.out.push_ws(opcode, payload);
            if c.out.len() > self.cfg.max_out_bytes {
                self.after_queue(key);
            } else if !c.in_dirty {
                c.in_dirty = true;
                self.dirty.push(key);
            }
            return true;
        }
        let mut out = std::mem::take(&mut self.deflate_scratch);
        let compressed = match DeflateOut::of(&mut c.deflater, c.deflate_shared) {
            DeflateOut::Off => None,
            DeflateOut::Shared => super::deflate_payload(payload, min, &mut out, |p, o| {
                ws::deflate::compress_stateless(p, o)
            }),
            DeflateOut::Own(d) => {
                super::deflate_payload(payload, min, &mut out, |p, o| d.compress(p, o))
            }
        };
        match compressed {
            Some(()) => c.out.push_ws_compressed(opcode, &out),
            None => c.out.push_ws(opcode, payload),
        }
        // The scratch buffer is kept for the next message unless a large one grew it.
        if out.capacity() <= 64 * 1024 {
            self.deflate_scratch = out;
        }
        self.after_queue(key);
        true
    }

    fn ws_target(&mut self, id: ConnId) -> Option<usize> {
        let c = self.conn(id)?;
        (c.phase == Phase::Ws && !c.close_sent).then_some(id.key as usize)
    }
}

impl<C> Ctx<C> for Core<C> {
    fn send(&mut self, conn: ConnId, frame: &Frame) -> bool {
        let Some(key) = self.ws_target(conn) else {
            return false;
        };
        let min = self.cfg.deflate_min_bytes;
        let c = &mut self.conns[key];
        match DeflateOut::of(&mut c.deflater, c.deflate_shared) {
            DeflateOut::Off => c.out.push_frame(frame),
            // Compressed once, on the first recipient that needs it, then shared.
            DeflateOut::Shared => c.out.push_frame(frame.deflated(min).unwrap_or(frame)),
            DeflateOut::Own(d) => match ws::payload_of(frame.bytes()) {
                Some((opcode, payload)) => {
                    let mut out = std::mem::take(&mut self.deflate_scratch);
                    match super::deflate_payload(payload, min, &mut out, |p, o| d.compress(p, o)) {
                        Some(()) => c.out.push_ws_compressed(opcode, &out),
                        None => c.out.push_frame(frame),
                    }
                    self.deflate_scratch = out;
                }
                None => c.out.push_frame(frame),
            },
        }
        self.after_queue(key);
        true
    }

    fn send_text(&mut self, conn: ConnId, text: &str) -> bool {
        self.send_data(conn, OpCode::Text, text.as_bytes())
    }

    fn send_binary(&mut self, conn: ConnId, data: &[u8]) -> bool {
        self.send_data(conn, OpCode::Binary, data)
    }

    fn respond(&mut self, conn: ConnId, response: http::Response) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let Some((keep_alive, head_only)) = c.awaiting_reply.take() else {
            log::error!("conn={conn}: respond() without a deferred request");
            return;
        };
        let keep_alive = keep_alive && !self.shutting_down;
        let key = conn.key as usize;
        self.queue_http(key, &response, keep_alive, head_only);
        // Pipelined requests behind this one can go on now.
        self.mark_ready(key);
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let key = conn.key as usize;
        match c.phase {
            Phase::Http => {
                c.close_after_flush = true;
                if c.out.is_empty() {
                    self.drop_conn(key);
                }
            }
            Phase::Ws | Phase::Closing => self.close_ws(key, code, reason),
        }
    }

    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns
            .get(conn.key as usize)
            .filter(|c| c.gen == conn.gen)
            .and_then(|c| c.peer.get(&c.stream))
    }

    fn set_timer(&mut self, after: Duration, token: u64) -> TimerId {
        self.timer_gen = self.timer_gen.wrapping_add(1);
        let slot = self.app_timers.insert((self.timer_gen, token)) as u32;
        let id = TimerId {
            slot,
            gen: self.timer_gen,
        };
        self.wheel.insert(self.now + after, TimerEntry::App(id));
        id
    }

    fn cancel_timer(&mut self, id: TimerId) {
        if matches!(self.app_timers.get(id.slot as usize), Some(&(gen, _)) if gen == id.gen) {
            self.app_timers.remove(id.slot as usize);
        }
    }

    fn notifier(&self) -> Notifier<C> {
        self.notifier.clone()
    }

    fn now(&self) -> Instant {
        self.now
    }

    fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn listener_of(&self, conn: ConnId) -> Option<usize> {
        self.conns
            .get(conn.key as usize)
            .filter(|c| c.gen == conn.gen)
            .map(|c| usize::from(c.listener))
    }

    fn discard_output(&mut self, conn: ConnId) {
        if let Some(c) = self.conn(conn) {
            c.out.truncate_unstarted();
        }
    }

    fn queued_bytes(&self, conn: ConnId) -> usize {
        self.conns
            .get(conn.key as usize)
            .filter(|c| c.gen == conn.gen)
            .map_or(0, |c| c.out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// A handler for the gate test: no HTTP, no WebSocket; a completion is worked on until the
    /// test lets it go.
    struct Holding {
        inside: std::sync::mpsc::Sender<()>,
        release: Receiver<()>,
    }

    impl Handler for Holding {
        type Completion = ();
        fn is_websocket_path(&self, _: &str) -> bool {
            false
        }
        fn on_request(&mut self, _: &mut dyn Ctx<()>, _: ConnId, _: http::Request) -> Reply {
            Reply::Now(http::Response::new(404))
        }
        fn on_upgrade(&mut self, _: &mut dyn Ctx<()>, _: ConnId, _: &http::Request) -> Upgrade {
            Upgrade::Reject(http::Response::new(404))
        }
        fn on_open(&mut self, _: &mut dyn Ctx<()>, _: ConnId, _: &http::Request) {}
        fn on_message(&mut self, _: &mut dyn Ctx<()>, _: ConnId, _: Message<'_>) {}
        fn on_close(&mut self, _: &mut dyn Ctx<()>, _: ConnId, _: CloseInfo) {}
        fn on_completion(&mut self, _: &mut dyn Ctx<()>, _: ()) {
            self.inside.send(()).unwrap();
            let _ = self.release.recv();
        }
        fn on_timer(&mut self, _: &mut dyn Ctx<()>, _: u64) {}
    }

    /// Waits up to 5 s for `gate.has_work()` to be `want`.
    fn settles(gate: &Gate, want: bool) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while gate.has_work() != want {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The reactor tells the store's background threads when it has work: from when a wake-up
    /// is waiting for it to when it blocks again, and not while it waits for events.
    #[test]
    fn the_reactor_reports_its_work_to_the_gate() {
        static GATE: Gate = Gate::new();
        let mut cfg = ReactorConfig::from_config(&Config::default());
        cfg.gate = &GATE;
        let reactor: Reactor<()> = Reactor::new(cfg).unwrap();
        let (notifier, stop) = (reactor.notifier(), reactor.stop_handle());
        let (inside, entered) = channel();
        let (release, released) = channel();
        let mut handler = Holding {
            inside,
            release: released,
        };
        let running = std::thread::spawn(move || reactor.run(&mut handler));
        assert!(settles(&GATE, false), "idle once it waits for events");
        notifier.send(());
        entered.recv().unwrap();
        assert!(GATE.has_work(), "working on a completion");
        release.send(()).unwrap();
        assert!(settles(&GATE, false), "idle again once it is done");
        stop.stop();
        running.join().unwrap().unwrap();
        assert!(!GATE.has_work(), "and after it stopped");
    }

    /// What an idle connection holds in the reactor is its record: these bounds keep it small
    /// (BENCHMARKS.md, "Memory per connection", has the byte-by-byte table).
    #[test]
    fn an_idle_connection_record_stays_small() {
        assert_eq!(size_of::<Peer>(), 7);
        assert_eq!(size_of::<Option<Ms>>(), 4);
        assert_eq!(size_of::<InBuf>(), 8);
        assert_eq!(size_of::<OutQueue>(), 16);
        assert_eq!(size_of::<ws::Decoder>(), 24);
        #[cfg(not(debug_assertions))]
        assert_eq!(
            size_of::<TcpStream>(),
            4,
            "a descriptor (release builds of mio)"
        );
        assert_eq!(
            size_of::<Conn>(),
            CONN_RECORD_BYTES,
            "no tag beside the record"
        );
    }

    #[test]
    fn connection_times_survive_the_32_bit_wrap() {
        let near_wrap = Ms::from_raw(u64::from(u32::MAX) - 500);
        let later = near_wrap.plus(Duration::from_secs(2));
        assert!(later.0.get() < 2000, "wrapped");
        assert!(later.reached(near_wrap));
        assert!(!near_wrap.reached(later));
        assert_eq!(near_wrap.until(later), 2000);
        assert_eq!(later.min(near_wrap), near_wrap);
        // 0 is never a time, so Option<Ms> stays 32 bits.
        assert_eq!(Ms::from_raw(1 << 32).0.get(), 1);
    }

    #[test]
    fn peer_addresses_are_kept_inline_when_ipv4() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, from) = listener.accept().unwrap();
        let stream = TcpStream::from_std(server_side);
        assert_eq!(Peer::of(from).get(&stream), Some(from));
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:4567".parse().unwrap();
        assert_eq!(Peer::of(mapped).get(&stream), Some(mapped));
        // Any other IPv6 address is asked of the socket (here: the IPv4 peer it really has).
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(Peer::of(v6).kind, 0);
        assert_eq!(Peer::of(v6).get(&stream), Some(from));
        drop(client);
    }

    #[test]
    fn the_read_leftover_is_freed_once_consumed() {
        let mut b = InBuf::default();
        b.extend(b"");
        assert!(b.0.is_none(), "nothing allocated for nothing");
        b.extend(b"GET / HT");
        b.extend(b"TP/1.1");
        assert_eq!(b.bytes(), b"GET / HTTP/1.1");
        b.consume(4);
        assert_eq!(b.bytes(), b"/ HTTP/1.1");
        b.consume(100);
        assert!(b.0.is_none() && b.is_empty());
        b.put(b"ab".to_vec());
        assert_eq!(b.take(), b"ab");
        assert!(b.0.is_none());
    }
}
