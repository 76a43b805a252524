//! The bus: pushes for connections held by other wxchat processes, over Redis pub/sub.
//!
//! Each process publishes what it delivers (a committed message, a receipt, a presence change...)
//! on one channel, `<prefix>bus`, as `<origin node>\t<target>\t<push JSON>`, where the target is
//! `c:<conv_id>` (everyone in the conversation) or `u:<uid>,<uid>..` (those users). Every other
//! process delivers it to the connections it holds; the origin skips its own. Publishing is
//! non-blocking for the reactor: envelopes go through a bounded queue to a publisher thread that
//! pipelines them. Pub/sub is at-most-once: an envelope lost to a full queue or a Redis outage
//! costs a live push, never data, since every message is in the database and clients `sync`.

use crate::net::Notifier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Envelopes waiting for the publisher; more are dropped (and counted in the log).
const QUEUE: usize = 64 * 1024;
/// Most envelopes in one pipeline.
const PIPELINE: usize = 512;

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
}

/// A push from another process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub origin: String,
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
        };
        format!("{}\t{target}\t{}", self.origin, self.payload)
    }

    /// None for anything malformed (the channel is ours, but Redis is shared).
    pub fn decode(raw: &[u8]) -> Option<Envelope> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut parts = text.splitn(3, '\t');
        let origin = parts.next()?.to_string();
        let target = parts.next()?;
        let payload = parts.next()?.to_string();
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
        } else {
            return None;
        };
        Some(Envelope {
            origin,
            target,
            payload,
        })
    }
}

pub struct Bus {
    node: String,
    tx: Option<SyncSender<String>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    dropped: std::cell::Cell<u64>,
}

impl Bus {
    /// Starts the subscriber and the publisher. `deliver` runs on the subscriber thread for each
    /// envelope from another process and must hand it to the reactor (through `notifier`).
    pub fn start<C: Send + 'static>(
        url: &str,
        prefix: &str,
        node: &str,
        notifier: Notifier<C>,
        deliver: impl Fn(Envelope) -> C + Send + 'static,
    ) -> Result<Bus, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad [redis] url: {e}"))?;
        let channel = format!("{prefix}bus");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let sub = {
            let (client, channel, stop, node) = (
                client.clone(),
                channel.clone(),
                stop.clone(),
                node.to_string(),
            );
            std::thread::Builder::new()
                .name("bus-sub".into())
                .spawn(move || subscribe_loop(&client, &channel, &node, &stop, &notifier, &deliver))
                .map_err(|e| format!("cannot start the bus: {e}"))?
        };
        let publ = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bus-pub".into())
                .spawn(move || publish_loop(&client, &channel, &rx, &stop))
                .map_err(|e| format!("cannot start the bus: {e}"))?
        };
        Ok(Bus {
            node: node.to_string(),
            tx: Some(tx),
            stop,
            threads: vec![sub, publ],
            dropped: std::cell::Cell::new(0),
        })
    }

    /// Queues a push for the other processes (never blocks).
    pub fn publish(&self, target: Target, payload: &str) {
        let Some(tx) = &self.tx else { return };
        let envelope = Envelope {
            origin: self.node.clone(),
            target,
            payload: payload.to_string(),
        }
        .encode();
        match tx.try_send(envelope) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.get() + 1;
                self.dropped.set(n);
                if n.is_power_of_two() {
                    log::warn!("bus: {n} pushes dropped (publisher behind or Redis down)");
                }
            }
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(6)).min(5000))
}

fn subscribe_loop<C>(
    client: &redis::Client,
    channel: &str,
    node: &str,
    stop: &AtomicBool,
    notifier: &Notifier<C>,
    deliver: &dyn Fn(Envelope) -> C,
) {
    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let result = (|| -> redis::RedisResult<()> {
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
            let mut pubsub = conn.as_pubsub();
            pubsub.subscribe(channel)?;
            // Wake up now and then to notice a stop.
            pubsub.set_read_timeout(Some(Duration::from_millis(500)))?;
            if failures > 0 {
                log::info!("bus: subscribed again after {failures} failed attempts");
            }
            failures = 0;
            while !stop.load(Ordering::SeqCst) {
                let msg = match pubsub.get_message() {
                    Ok(m) => m,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => return Err(e),
                };
                match Envelope::decode(msg.get_payload_bytes()) {
                    Some(env) if env.origin != node => {
                        if !notifier.send(deliver(env)) {
                            return Ok(()); // the reactor is gone
                        }
                    }
                    Some(_) => {}
                    None => log::warn!("bus: ignored a malformed envelope"),
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures += 1;
            if failures == 1 {
                log::warn!("bus: subscription lost: {e}; reconnecting");
            }
            std::thread::sleep(backoff(failures));
        }
    }
}

fn publish_loop(client: &redis::Client, channel: &str, rx: &Receiver<String>, stop: &AtomicBool) {
    let mut conn: Option<redis::Connection> = None;
    let mut failures = 0u32;
    let mut batch: Vec<String> = Vec::with_capacity(PIPELINE);
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(first) => batch.push(first),
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < PIPELINE {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            match client.get_connection_with_timeout(Duration::from_secs(2)) {
                Ok(c) => {
                    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    conn = Some(c);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        log::warn!("bus: cannot publish: {e}");
                    }
                    // These pushes are lost; the messages are stored and clients sync.
                    batch.clear();
                    std::thread::sleep(backoff(failures));
                    continue;
                }
            }
        }
        let mut pipe = redis::pipe();
        for e in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(channel).arg(e).ignore();
        }
        if let Some(c) = conn.as_mut() {
            match pipe.query::<()>(c) {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        log::warn!("bus: publish failed: {e}");
                    }
                    conn = None;
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
        ] {
            let e = Envelope {
                origin: "n1".into(),
                target,
                payload: r#"{"cmd":"message","data":{"msg":"a\tb"}}"#.into(),
            };
            assert_eq!(Envelope::decode(e.encode().as_bytes()), Some(e));
        }
        assert_eq!(Envelope::decode(b"n1\tx:1\t{}"), None);
        assert_eq!(Envelope::decode(b"n1\tu:1,x\t{}"), None);
        assert_eq!(Envelope::decode(b"n1"), None);
        assert_eq!(Envelope::decode(b"n1\tl:7\t"), None);
        assert_eq!(Envelope::decode(&[0xff, b'\t']), None);
    }
}
