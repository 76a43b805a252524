//! The backend seam between the network and the application.
//!
//! The application implements [`Handler`]: it is told about HTTP requests, WebSocket opens,
//! messages and closes, job completions and timers. The backend implements [`Ctx`]: it sends
//! bytes, closes connections, answers deferred HTTP requests and runs timers. The mio reactor
//! ([`reactor`]) is the real backend; [`memory`] drives a handler deterministically in unit tests.
//! Chat code depends only on this module's types, so another backend would not touch it.
//!
//! Layer: below the state owner (`rt`), generic over the completion type; imports only the
//! codecs (`ws`, `http`), `config` and `logger`.

pub mod connmap;
pub mod fd_limit;
pub mod memory;
pub mod outqueue;
pub mod reactor;
pub mod timer;

pub use connmap::ConnMap;

use crate::http;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identifies one connection for its whole life: the slab key plus a generation, so a job result
/// or timer for a connection that closed (and whose slot was reused) is dropped, never delivered to
/// the new occupant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub key: u32,
    pub gen: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.key, self.gen)
    }
}

/// A complete, encoded WebSocket frame, shared between recipients: a broadcast is serialised once
/// and every recipient's queue holds the same bytes. Its permessage-deflate form is made once
/// too, the first time a recipient that negotiated stateless compression needs it.
#[derive(Clone)]
pub struct Frame(Arc<FrameData>);

struct FrameData {
    bytes: Box<[u8]>,
    /// The compressed frame (None: too small, or compression would not shrink it).
    deflated: std::sync::OnceLock<Option<Frame>>,
}

impl Frame {
    fn from_vec(bytes: Vec<u8>) -> Frame {
        Frame(Arc::new(FrameData {
            bytes: bytes.into_boxed_slice(),
            deflated: std::sync::OnceLock::new(),
        }))
    }

    /// A text frame carrying `payload`.
    pub fn text(payload: &[u8]) -> Frame {
        Frame::from_vec(crate::ws::frame(crate::ws::OpCode::Text, payload))
    }

    /// A binary frame carrying `payload`.
    pub fn binary(payload: &[u8]) -> Frame {
        Frame::from_vec(crate::ws::frame(crate::ws::OpCode::Binary, payload))
    }

    /// The encoded frame bytes (header + payload).
    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }

    /// The frame compressed without context (RSV1 set), made on first use and shared by every
    /// recipient; None when the payload is under `min_bytes` or would not shrink.
    pub fn deflated(&self, min_bytes: usize) -> Option<&Frame> {
        self.0
            .deflated
            .get_or_init(|| {
                let (opcode, payload) = crate::ws::payload_of(&self.0.bytes)?;
                let mut out = Vec::new();
                deflate_payload(payload, min_bytes, &mut out, |p, o| {
                    crate::ws::deflate::compress_stateless(p, o)
                })?;
                Some(Frame::from_vec(crate::ws::compressed_frame(opcode, &out)))
            })
            .as_ref()
    }
}

/// Compresses `payload` into `out` with `compress` when it is at least `min_bytes` and the
/// result is smaller; None otherwise (send it as it is).
pub fn deflate_payload(
    payload: &[u8],
    min_bytes: usize,
    out: &mut Vec<u8>,
    compress: impl FnOnce(&[u8], &mut Vec<u8>),
) -> Option<()> {
    if payload.len() < min_bytes.max(1) {
        return None;
    }
    out.clear();
    compress(payload, out);
    (out.len() < payload.len()).then_some(())
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Frame {}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.len())
    }
}

/// A complete WebSocket data message as the handler sees it (text is valid UTF-8).
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// Why a WebSocket connection ended, as reported to [`Handler::on_close`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code sent or received; 1006 when the TCP connection dropped without a close frame.
    pub code: u16,
    /// Who started it and why, for logs.
    pub reason: String,
}

/// The handler's answer to an HTTP request.
pub enum Reply {
    /// Send this response now.
    Now(http::Response),
    /// The handler will call [`Ctx::respond`] later (after a job). Requests pipelined behind this
    /// one wait, so responses stay in order.
    Later,
}

/// The handler's answer to a WebSocket upgrade request that passed the RFC 6455 checks.
pub enum Upgrade {
    /// Complete the handshake and open the WebSocket.
    Accept,
    /// Refuse with this HTTP response (the connection is then closed).
    Reject(http::Response),
}

/// Identifies a timer set with [`Ctx::set_timer`], for cancelling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    pub slot: u32,
    pub gen: u32,
}

/// What the application can ask of the backend while handling an event.
pub trait Ctx<C> {
    /// Queues a shared, pre-encoded frame. False when the connection is gone or closing.
    fn send(&mut self, conn: ConnId, frame: &Frame) -> bool;
    /// Encodes one text message straight into the connection's queue (no shared frame needed).
    fn send_text(&mut self, conn: ConnId, text: &str) -> bool;
    /// Encodes one binary message straight into the connection's queue.
    fn send_binary(&mut self, conn: ConnId, data: &[u8]) -> bool;
    /// Answers a request the handler deferred with [`Reply::Later`].
    fn respond(&mut self, conn: ConnId, response: http::Response);
    /// Starts the close handshake with `code` (WebSocket) or closes the HTTP connection.
    fn close(&mut self, conn: ConnId, code: u16, reason: &str);
    /// The peer's address, while the connection lives.
    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr>;
    /// Calls [`Handler::on_timer`] with `token` after `after`.
    fn set_timer(&mut self, after: Duration, token: u64) -> TimerId;
    /// Cancels a timer; a no-op when it already fired.
    fn cancel_timer(&mut self, id: TimerId);
    /// A handle for worker threads to send completions back.
    fn notifier(&self) -> Notifier<C>;
    /// The time of the current event-loop iteration (cheap; no syscall).
    fn now(&self) -> Instant;
    /// Open connections (HTTP and WebSocket).
    fn connection_count(&self) -> usize;
    /// Which listener accepted the connection (0: the client listener; see
    /// `Reactor::add_listener`), while it lives.
    fn listener_of(&self, conn: ConnId) -> Option<usize>;
    /// Bytes queued for the connection and not yet written (0 once it is gone).
    fn queued_bytes(&self, conn: ConnId) -> usize;
    /// Drops queued output the peer has not started receiving (a frame being written is kept
    /// whole), so what is queued next goes out first. For consumers that fell too far behind.
    fn discard_output(&mut self, conn: ConnId);
}

/// The application side of the seam. Every method runs on the reactor thread and must not block:
/// blocking work is submitted to workers, whose completions arrive through `on_completion`.
pub trait Handler {
    /// What worker jobs send back.
    type Completion: Send + 'static;

    /// Is `path` a WebSocket endpoint? Requests to it go through the RFC 6455 handshake.
    fn is_websocket_path(&self, path: &str) -> bool;
    /// A plain HTTP request.
    fn on_request(
        &mut self,
        ctx: &mut dyn Ctx<Self::Completion>,
        conn: ConnId,
        request: http::Request,
    ) -> Reply;
    /// A valid upgrade request for a WebSocket path; on `Accept`, `on_open` follows at once.
    fn on_upgrade(
        &mut self,
        ctx: &mut dyn Ctx<Self::Completion>,
        conn: ConnId,
        request: &http::Request,
    ) -> Upgrade;
    /// The WebSocket is open (the 101 response is queued).
    fn on_open(
        &mut self,
        ctx: &mut dyn Ctx<Self::Completion>,
        conn: ConnId,
        request: &http::Request,
    );
    /// A complete data message.
    fn on_message(
        &mut self,
        ctx: &mut dyn Ctx<Self::Completion>,
        conn: ConnId,
        message: Message<'_>,
    );
    /// The WebSocket closed (called once per opened connection, whoever closed it).
    fn on_close(&mut self, ctx: &mut dyn Ctx<Self::Completion>, conn: ConnId, info: CloseInfo);
    /// A worker's completion.
    fn on_completion(&mut self, ctx: &mut dyn Ctx<Self::Completion>, completion: Self::Completion);
    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut dyn Ctx<Self::Completion>, token: u64);
    /// The event loop is about to start (timers may be set from here on).
    fn on_start(&mut self, _ctx: &mut dyn Ctx<Self::Completion>) {}
    /// Graceful shutdown started: no new connections; finish in-flight work.
    fn on_shutdown(&mut self, _ctx: &mut dyn Ctx<Self::Completion>) {}
    /// True while work accepted before shutdown is still in flight (the reactor waits for it).
    fn has_pending_work(&self) -> bool {
        false
    }
}

/// Sends completions from worker threads to the reactor and wakes it. Wake-ups coalesce; the
/// reactor drains the channel until empty.
pub struct Notifier<C> {
    tx: std::sync::mpsc::Sender<C>,
    /// None for the in-memory backend, which polls its channel itself.
    waker: Option<Arc<mio::Waker>>,
}

impl<C> Clone for Notifier<C> {
    fn clone(&self) -> Self {
        Notifier {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<C> Notifier<C> {
    pub fn new(tx: std::sync::mpsc::Sender<C>, waker: Option<Arc<mio::Waker>>) -> Self {
        Notifier { tx, waker }
    }

    /// Delivers `completion`; false when the reactor is gone (shutting down).
    pub fn send(&self, completion: C) -> bool {
        if self.tx.send(completion).is_err() {
            return false;
        }
        if let Some(waker) = &self.waker {
            if let Err(e) = waker.wake() {
                log::error!("waking the reactor failed: {e}");
            }
        }
        true
    }
}

/// How many connections' records to reserve address space for (the reactor's slab, the
/// application's `ConnMap`s): `max_connections` and the extra listeners' headroom, but never
/// more than the process may open descriptors for, since every connection is one.
pub fn connection_slots(max_connections: usize) -> usize {
    let ceiling = fd_limit::ceiling().map_or(1 << 20, |c| usize::try_from(c).unwrap_or(1 << 20));
    max_connections
        .saturating_add(reactor::EXTRA_LISTENER_HEADROOM)
        .min(ceiling)
        .min(1 << 22)
}

/// The log prefix every connection line shares.
pub fn conn_prefix(conn: ConnId, uid: Option<u64>, peer: Option<SocketAddr>) -> String {
    let uid = uid.map_or_else(|| "-".to_string(), |u| u.to_string());
    let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
    format!("conn={conn} uid={uid} peer={peer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_compressed_once_and_only_when_it_pays() {
        let text = "the same chat words, the same chat words, ".repeat(10);
        let f = Frame::text(text.as_bytes());
        let shared = f.clone();
        let first = f.deflated(128).expect("compressible") as *const Frame;
        let again = shared.deflated(128).expect("cached") as *const Frame;
        assert_eq!(first, again, "every recipient shares one compressed frame");
        let z = f.deflated(128).unwrap();
        assert_eq!(z.bytes()[0], 0xc1, "FIN + RSV1 + text");
        let (_, payload) = crate::ws::payload_of(z.bytes()).unwrap();
        let mut out = Vec::new();
        crate::ws::deflate::inflate_stateless(payload, 1 << 20, &mut out).unwrap();
        assert_eq!(out, text.as_bytes());
        // Under the threshold, or incompressible: sent as it is.
        assert!(Frame::text(b"short").deflated(128).is_none());
        let mut noise = vec![0u8; 400];
        getrandom::getrandom(&mut noise).unwrap();
        assert!(Frame::binary(&noise).deflated(128).is_none());
    }
}
