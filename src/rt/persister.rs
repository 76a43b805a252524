//! The persister: the one thread that writes messages. It drains its queue into batches, writes
//! each batch in one transaction (group commit), and only then hands the results back to the
//! reactor, so an acknowledged message is always on disk. Seqs are assigned inside that
//! transaction, by the only writer, which is what keeps them gap-free: a failed batch hands out
//! nothing.

use crate::feed::metrics::METRICS;
use crate::foreground::Gate;
use crate::jobs::{bounded, BoundedRx, BoundedTx};
use crate::store::{Appended, NewMessage, Store, StoreResult};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to do with one message's outcome, on the reactor.
pub type Then<C> = Box<dyn FnOnce(StoreResult<Appended>) -> C + Send>;

struct Item<C> {
    message: NewMessage,
    then: Then<C>,
    queued_at: Instant,
}

/// Queue figures shared with the reactor (for `/metrics` and `serverInfo`).
#[derive(Default)]
struct Load {
    /// Messages submitted and not yet taken into a batch.
    queued: AtomicUsize,
    /// How long the oldest message of the last batch waited for its commit (microseconds).
    lag_us: AtomicU64,
}

pub struct Persister<C> {
    tx: Option<BoundedTx<Item<C>>>,
    thread: Option<JoinHandle<()>>,
    load: Arc<Load>,
    /// Where work handed to the thread is counted (`foreground`).
    gate: &'static Gate,
}

/// The queue is full (the store is slower than the traffic): refuse with 503.
#[derive(Debug)]
pub struct Busy;

impl<C: Send + 'static> Persister<C> {
    /// Starts the thread. `deliver` sends a batch's continuations to the reactor in one wake-up.
    /// `gate` is told when the thread has work (the process's `foreground::GATE`, or a test's).
    pub fn start(
        store: Arc<dyn Store>,
        max_batch: usize,
        queue: usize,
        realtime_priority: u8,
        gate: &'static Gate,
        deliver: impl Fn(Vec<C>) + Send + 'static,
    ) -> std::io::Result<Persister<C>> {
        let (tx, rx) = bounded::<Item<C>>(queue);
        let load = Arc::new(Load::default());
        let shared = load.clone();
        let thread = std::thread::Builder::new()
            .name("persister".into())
            .spawn(move || {
                super::priority::make_realtime_logged(
                    realtime_priority,
                    super::priority::PathThread::Persister,
                );
                run(&*store, &rx, max_batch.max(1), &deliver, &shared, gate)
            })?;
        Ok(Persister {
            tx: Some(tx),
            thread: Some(thread),
            load,
            gate,
        })
    }

    /// Messages waiting to be written, and the last batch's lag.
    pub fn load(&self) -> (usize, Duration) {
        (
            self.load.queued.load(Relaxed),
            Duration::from_micros(self.load.lag_us.load(Relaxed)),
        )
    }

    pub fn submit(&self, message: NewMessage, then: Then<C>) -> Result<(), Busy> {
        let Some(tx) = &self.tx else {
            return Err(Busy);
        };
        self.load.queued.fetch_add(1, Relaxed);
        // Counted as the foreground's work until the thread takes it (`foreground`): the
        // store's background threads make way for it before this thread has even woken.
        self.gate.hand_over(1);
        let item = Item {
            message,
            then,
            queued_at: Instant::now(),
        };
        tx.try_send(item).map_err(|_| {
            self.load.queued.fetch_sub(1, Relaxed);
            self.gate.taken(1);
            Busy
        })
    }
}

impl<C> Persister<C> {
    /// Writes everything queued, then stops; later submits are refused (Busy).
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<C> Drop for Persister<C> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Capacity the batch buffers keep between batches. They grow with a burst (a batch may take
/// the whole queue, 65,536 messages: ~9 MB of buffers) and give it back after it, so memory
/// left after the load stays near idle.
const KEPT_BATCH_CAPACITY: usize = 1024;

/// Empties a batch buffer, releasing what a burst grew it to beyond `KEPT_BATCH_CAPACITY`.
fn recycle<T>(buffer: &mut Vec<T>) {
    buffer.clear();
    buffer.shrink_to(KEPT_BATCH_CAPACITY);
}

/// Splits a queued item into the batch's message list and its waiting continuations.
fn take<C>(item: Item<C>, messages: &mut Vec<NewMessage>, waiting: &mut Vec<(Then<C>, Instant)>) {
    messages.push(item.message);
    waiting.push((item.then, item.queued_at));
}

fn run<C>(
    store: &dyn Store,
    rx: &BoundedRx<Item<C>>,
    max_batch: usize,
    deliver: &dyn Fn(Vec<C>),
    load: &Load,
    gate: &Gate,
) {
    // A batch's messages (moved into the store call, never cloned) and, in the same order,
    // what waits on each.
    let mut messages: Vec<NewMessage> = Vec::with_capacity(KEPT_BATCH_CAPACITY.min(max_batch));
    let mut waiting: Vec<(Then<C>, Instant)> =
        Vec::with_capacity(KEPT_BATCH_CAPACITY.min(max_batch));
    // Working from a batch's first message to its delivery; idle only when about to block.
    let mut foreground = gate.worker();
    loop {
        let first = match rx.try_recv() {
            Ok(item) => item,
            Err(TryRecvError::Empty) => {
                foreground.idle();
                match rx.recv() {
                    Ok(item) => item,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        foreground.working();
        take(first, &mut messages, &mut waiting);
        while messages.len() < max_batch {
            match rx.try_recv() {
                Ok(item) => take(item, &mut messages, &mut waiting),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        load.queued.fetch_sub(messages.len(), Relaxed);
        gate.taken(messages.len());
        let started = Instant::now();
        let result = store.append_batch_spending(&mut messages);
        let took = started.elapsed();
        METRICS.persist_batch_seconds.observe_duration(took);
        METRICS.persist_batch_size.observe(messages.len() as u64);
        if let Some(oldest) = waiting.iter().map(|w| w.1).min() {
            let lag = u64::try_from(oldest.elapsed().as_micros()).unwrap_or(u64::MAX);
            load.lag_us.store(lag, Relaxed);
        }
        log::trace!("persisted a batch of {} in {took:?}", messages.len());
        let outcomes: Vec<C> = match result {
            Ok(appended) => waiting
                .drain(..)
                .zip(appended)
                .map(|((then, _), a)| then(Ok(a)))
                .collect(),
            Err(e) => {
                log::error!("persisting {} messages failed: {e}", messages.len());
                waiting
                    .drain(..)
                    .map(|(then, _)| then(Err(e.clone())))
                    .collect()
            }
        };
        recycle(&mut messages);
        recycle(&mut waiting);
        deliver(outcomes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The persister counts as the foreground's work from a message's hand-over to its
    /// batch's delivery, and is idle once it waits for more.
    #[test]
    fn the_persister_reports_its_work_to_the_gate() {
        use crate::store::sqlite::SqliteStore;
        use std::sync::Mutex;
        static GATE: Gate = Gate::new();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("t.db"), false).unwrap());
        let (delivered, got) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let mut persister = Persister::start(store, 16, 64, 0, &GATE, move |out: Vec<bool>| {
            delivered.send(out).unwrap();
            let _ = released.lock().unwrap().recv(); // the delivery takes until released
        })
        .unwrap();
        // Declared after the persister, so a failed assertion lets the delivery go before
        // the persister's drop waits for its thread.
        let release = release;
        assert!(!GATE.has_work(), "nothing handed yet");
        let message = NewMessage {
            conv_id: "p_1_2".into(),
            chat_type: 0,
            from_id: 1,
            to_id: 2,
            msg_type: 0,
            body: "\"hello\"".into(),
            client_msg_id: None,
            created_at: 1,
        };
        persister
            .submit(message, Box::new(|r| r.is_ok()))
            .map_err(|_| "busy")
            .unwrap();
        assert!(GATE.has_work(), "handed over, or being written");
        assert_eq!(got.recv().unwrap(), vec![true]);
        assert!(GATE.has_work(), "working until its delivery is done");
        release.send(()).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while GATE.has_work() {
            assert!(Instant::now() < until, "idle once it waits for more");
            std::thread::sleep(Duration::from_millis(1));
        }
        persister.finish();
        assert!(!GATE.has_work());
    }

    /// A burst's buffer goes back to the kept capacity; a small one keeps what it has.
    #[test]
    fn recycled_buffers_give_back_what_a_burst_grew() {
        let mut big: Vec<u64> = (0..65_536).collect();
        recycle(&mut big);
        assert!(big.is_empty());
        assert!(big.capacity() <= KEPT_BATCH_CAPACITY, "{}", big.capacity());
        let mut small: Vec<u64> = Vec::with_capacity(100);
        small.extend(0..100);
        recycle(&mut small);
        assert!(small.is_empty() && small.capacity() >= 100);
    }
}
