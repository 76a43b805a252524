//! QR-code login's tickets on this process, as a pure state machine (no I/O, no clock): which
//! browser waits on which ticket, the timer that expires it, and the WeChat callbacks waiting for
//! their answer. `login/qr.rs` carries it out. The state owner (`rt::App`) holds it, so this file
//! imports nothing above `rt::timer`.
//!
//! A ticket is used at most once: whichever of scan, expiry or the browser leaving comes first
//! takes it ([`QrState::take`]), and the others find nothing.

use crate::net::ConnId;
use crate::rt::timer::AppTimer;
use std::collections::HashMap;

/// A browser waiting for its ticket to be scanned.
#[derive(Debug)]
pub struct Waiter {
    pub conn: ConnId,
    /// Set once the QR code is shown (the ticket's lifetime starts then).
    pub expiry: Option<AppTimer>,
}

/// Browsers waiting for a scan on this process, and callbacks waiting for their answer.
#[derive(Default)]
pub struct QrState {
    waiting: HashMap<String, Waiter>,
    by_conn: HashMap<ConnId, String>,
    answers: HashMap<u64, ConnId>,
    next_answer: u64,
}

impl QrState {
    /// Tickets waiting for a scan.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A browser opened: it waits on `ticket` (drawn at random, so new).
    pub fn open(&mut self, ticket: &str, conn: ConnId) {
        self.waiting
            .insert(ticket.to_string(), Waiter { conn, expiry: None });
        self.by_conn.insert(conn, ticket.to_string());
    }

    /// Is `conn` still the browser waiting on `ticket`? (It may have left while WeChat was asked
    /// for the code.)
    pub fn is_waiting(&self, ticket: &str, conn: ConnId) -> bool {
        self.waiting.get(ticket).map(|w| w.conn) == Some(conn)
    }

    /// The code is shown: the timer that expires `ticket`. False when the ticket is gone.
    pub fn set_expiry(&mut self, ticket: &str, timer: AppTimer) -> bool {
        match self.waiting.get_mut(ticket) {
            Some(w) => {
                w.expiry = Some(timer);
                true
            }
            None => false,
        }
    }

    /// Takes the ticket (scan, expiry, failure): its waiter, at most once.
    pub fn take(&mut self, ticket: &str) -> Option<Waiter> {
        let w = self.waiting.remove(ticket)?;
        self.by_conn.remove(&w.conn);
        Some(w)
    }

    /// The browser `conn` left: its ticket and waiter, if it still held one.
    pub fn leave(&mut self, conn: ConnId) -> Option<(String, Waiter)> {
        let ticket = self.by_conn.get(&conn)?.clone();
        let w = self.take(&ticket)?;
        Some((ticket, w))
    }

    /// A callback waits for its answer: the id to answer it by.
    pub fn park_answer(&mut self, conn: ConnId) -> u64 {
        let id = self.next_answer;
        self.next_answer += 1;
        self.answers.insert(id, conn);
        id
    }

    /// The callback to answer now, at most once (the result or the deadline, whichever first).
    pub fn take_answer(&mut self, id: u64) -> Option<ConnId> {
        self.answers.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u32) -> ConnId {
        ConnId { key: n, gen: 1 }
    }

    #[test]
    fn a_ticket_is_taken_once() {
        let mut q = QrState::default();
        q.open("t1", conn(1));
        assert!(q.is_waiting("t1", conn(1)));
        assert!(!q.is_waiting("t1", conn(2)));
        assert_eq!(q.waiting(), 1);
        assert_eq!(q.take("t1").map(|w| w.conn), Some(conn(1)));
        // The expiry or the browser leaving after the scan find nothing.
        assert!(q.take("t1").is_none());
        assert!(q.leave(conn(1)).is_none());
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn leaving_takes_the_browsers_ticket() {
        let mut q = QrState::default();
        q.open("t1", conn(1));
        q.open("t2", conn(2));
        let (ticket, w) = q.leave(conn(2)).unwrap();
        assert_eq!((ticket.as_str(), w.conn), ("t2", conn(2)));
        assert!(
            q.take("t2").is_none(),
            "a scan after the browser left logs no one in"
        );
        assert!(q.is_waiting("t1", conn(1)));
    }

    #[test]
    fn expiry_is_set_only_on_a_waiting_ticket() {
        let mut q = QrState::default();
        q.open("t1", conn(1));
        let timer = AppTimer::new(crate::net::TimerId { slot: 7, gen: 1 }, 3);
        assert!(q.set_expiry("t1", timer));
        assert_eq!(q.take("t1").unwrap().expiry.map(|t| t.token()), Some(3));
        assert!(!q.set_expiry("t1", timer));
    }

    #[test]
    fn a_callback_is_answered_once() {
        let mut q = QrState::default();
        let a = q.park_answer(conn(5));
        let b = q.park_answer(conn(6));
        assert_ne!(a, b);
        assert_eq!(q.take_answer(a), Some(conn(5)));
        assert_eq!(
            q.take_answer(a),
            None,
            "the deadline after the result answers nothing"
        );
        assert_eq!(q.take_answer(b), Some(conn(6)));
    }
}
