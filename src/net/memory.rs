//! An in-memory backend: drives a [`Handler`] without sockets or threads, with a manual clock, so
//! application logic is unit-tested deterministically. What the handler sends is recorded per
//! connection; timers fire when the test advances the clock.

use super::{CloseInfo, ConnId, Ctx, Frame, Handler, Message, Notifier, Reply, TimerId, Upgrade};
use crate::http;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// What the handler did to one connection.
#[derive(Debug, Default)]
pub struct ConnRecord {
    pub peer: Option<SocketAddr>,
    pub open: bool,
    /// Text messages sent, in order (binary ones are recorded lossily as UTF-8).
    pub sent: Vec<String>,
    pub responses: Vec<http::Response>,
    pub closed: Option<(u16, String)>,
    pub awaiting_reply: bool,
    /// The listener it arrived on (0 unless the test says otherwise).
    pub listener: usize,
}

/// The recording [`Ctx`].
pub struct MemoryCtx<C> {
    pub conns: HashMap<ConnId, ConnRecord>,
    now: Instant,
    timers: BTreeMap<(Instant, u32), (TimerId, u64)>,
    timer_seq: u32,
    notifier: Notifier<C>,
}

impl<C> MemoryCtx<C> {
    fn live(&mut self, id: ConnId) -> Option<&mut ConnRecord> {
        self.conns
            .get_mut(&id)
            .filter(|r| r.open && r.closed.is_none())
    }
}

impl<C> Ctx<C> for MemoryCtx<C> {
    fn send(&mut self, conn: ConnId, frame: &Frame) -> bool {
        let payload = frame_payload(frame.bytes());
        self.send_text(conn, &String::from_utf8_lossy(payload))
    }

    fn send_text(&mut self, conn: ConnId, text: &str) -> bool {
        match self.live(conn) {
            Some(r) => {
                r.sent.push(text.to_string());
                true
            }
            None => false,
        }
    }

    fn send_binary(&mut self, conn: ConnId, data: &[u8]) -> bool {
        self.send_text(conn, &String::from_utf8_lossy(data))
    }

    fn respond(&mut self, conn: ConnId, response: http::Response) {
        if let Some(r) = self.conns.get_mut(&conn) {
            r.awaiting_reply = false;
            r.responses.push(response);
        }
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        if let Some(r) = self.conns.get_mut(&conn) {
            if r.closed.is_none() {
                r.closed = Some((code, reason.to_string()));
            }
        }
    }

    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns.get(&conn).and_then(|r| r.peer)
    }

    fn set_timer(&mut self, after: Duration, token: u64) -> TimerId {
        self.timer_seq += 1;
        let id = TimerId {
            slot: self.timer_seq,
            gen: 0,
        };
        self.timers
            .insert((self.now + after, self.timer_seq), (id, token));
        id
    }

    fn cancel_timer(&mut self, id: TimerId) {
        self.timers.retain(|_, (tid, _)| *tid != id);
    }

    fn notifier(&self) -> Notifier<C> {
        self.notifier.clone()
    }

    fn now(&self) -> Instant {
        self.now
    }

    fn connection_count(&self) -> usize {
        self.conns
            .values()
            .filter(|r| r.closed.is_none() || !r.open)
            .count()
    }

    fn listener_of(&self, conn: ConnId) -> Option<usize> {
        self.conns.get(&conn).map(|r| r.listener)
    }

    /// Nothing is ever queued: sends are recorded at once.
    fn discard_output(&mut self, _conn: ConnId) {}

    /// Nothing is ever queued: sends are recorded at once.
    fn queued_bytes(&self, _conn: ConnId) -> usize {
        0
    }
}

/// The payload of one unmasked server frame (for recording shared frames as text).
fn frame_payload(frame: &[u8]) -> &[u8] {
    let Some(&b1) = frame.get(1) else {
        return &[];
    };
    let start = match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.get(start..).unwrap_or(&[])
}

/// Drives one handler through the in-memory backend.
pub struct Driver<H: Handler> {
    pub handler: H,
    pub ctx: MemoryCtx<H::Completion>,
    completions: Receiver<H::Completion>,
    next_key: u32,
}

impl<H: Handler> Driver<H> {
    pub fn new(handler: H) -> Driver<H> {
        Self::build(|_| handler)
    }

    /// Builds the handler with the notifier its workers will use.
    pub fn build(make: impl FnOnce(Notifier<H::Completion>) -> H) -> Driver<H> {
        let (tx, rx) = channel();
        let handler = make(Notifier::new(tx.clone(), None));
        let mut driver = Driver {
            handler,
            ctx: MemoryCtx {
                conns: HashMap::new(),
                now: Instant::now(),
                timers: BTreeMap::new(),
                timer_seq: 0,
                notifier: Notifier::new(tx, None),
            },
            completions: rx,
            next_key: 0,
        };
        driver.handler.on_start(&mut driver.ctx);
        driver
    }

    fn new_conn(&mut self) -> ConnId {
        self.next_key += 1;
        let id = ConnId {
            key: self.next_key,
            gen: 1,
        };
        self.ctx.conns.insert(
            id,
            ConnRecord {
                peer: "127.0.0.1:40000".parse().ok(),
                ..ConnRecord::default()
            },
        );
        id
    }

    /// Sends an HTTP request; returns the connection (its record holds the response).
    pub fn request(&mut self, request: http::Request) -> ConnId {
        let id = self.new_conn();
        self.dispatch(id, request)
    }

    /// Sends an HTTP request as if from `peer` to listener `listener`.
    pub fn request_from(
        &mut self,
        peer: SocketAddr,
        listener: usize,
        request: http::Request,
    ) -> ConnId {
        let id = self.new_conn();
        if let Some(r) = self.ctx.conns.get_mut(&id) {
            r.peer = Some(peer);
            r.listener = listener;
        }
        self.dispatch(id, request)
    }

    fn dispatch(&mut self, id: ConnId, request: http::Request) -> ConnId {
        match self.handler.on_request(&mut self.ctx, id, request) {
            Reply::Now(resp) => self.ctx.respond(id, resp),
            Reply::Later => {
                if let Some(r) = self.ctx.conns.get_mut(&id) {
                    r.awaiting_reply = true;
                }
            }
        }
        id
    }

    /// Opens a WebSocket with this upgrade request; Err carries the rejection.
    pub fn open(&mut self, request: http::Request) -> Result<ConnId, http::Response> {
        let id = self.new_conn();
        match self.handler.on_upgrade(&mut self.ctx, id, &request) {
            Upgrade::Reject(resp) => Err(resp),
            Upgrade::Accept => {
                if let Some(r) = self.ctx.conns.get_mut(&id) {
                    r.open = true;
                }
                self.handler.on_open(&mut self.ctx, id, &request);
                self.deliver_closes();
                Ok(id)
            }
        }
    }

    /// Delivers a text message from the peer.
    pub fn text(&mut self, id: ConnId, text: &str) {
        if self.ctx.live(id).is_some() {
            self.handler
                .on_message(&mut self.ctx, id, Message::Text(text));
            self.deliver_closes();
        }
    }

    /// The peer goes away.
    pub fn disconnect(&mut self, id: ConnId, code: u16) {
        if let Some(r) = self.ctx.conns.get_mut(&id) {
            if r.open && r.closed.is_none() {
                r.closed = Some((code, "peer".into()));
                self.handler.on_close(
                    &mut self.ctx,
                    id,
                    CloseInfo {
                        code,
                        reason: "peer".into(),
                    },
                );
            }
        }
    }

    /// Handler-initiated closes are reported back to the handler, as the real backend does.
    fn deliver_closes(&mut self) {
        let closed: Vec<(ConnId, u16, String)> = self
            .ctx
            .conns
            .iter_mut()
            .filter(|(_, r)| r.open && r.closed.is_some())
            .map(|(id, r)| {
                r.open = false;
                let (code, reason) = r.closed.clone().unwrap_or((1000, String::new()));
                (*id, code, reason)
            })
            .collect();
        for (id, code, reason) in closed {
            self.handler
                .on_close(&mut self.ctx, id, CloseInfo { code, reason });
        }
    }

    /// Waits (up to `timeout`) for `n` completions from workers and delivers them.
    pub fn complete(&mut self, n: usize, timeout: Duration) -> usize {
        let mut done = 0;
        while done < n {
            match self.completions.recv_timeout(timeout) {
                Ok(c) => {
                    self.handler.on_completion(&mut self.ctx, c);
                    self.deliver_closes();
                    done += 1;
                }
                Err(_) => break,
            }
        }
        done
    }

    /// Moves the clock forward, firing due timers in order.
    pub fn advance(&mut self, by: Duration) {
        let until = self.ctx.now + by;
        while let Some((&(at, seq), _)) = self.ctx.timers.iter().next() {
            if at > until {
                break;
            }
            let Some((_, token)) = self.ctx.timers.remove(&(at, seq)) else {
                break;
            };
            self.ctx.now = at;
            self.handler.on_timer(&mut self.ctx, token);
            self.deliver_closes();
        }
        self.ctx.now = until;
    }

    /// Everything sent to `id` so far, draining it.
    pub fn take_sent(&mut self, id: ConnId) -> Vec<String> {
        self.ctx
            .conns
            .get_mut(&id)
            .map(|r| std::mem::take(&mut r.sent))
            .unwrap_or_default()
    }

    pub fn record(&self, id: ConnId) -> Option<&ConnRecord> {
        self.ctx.conns.get(&id)
    }
}
