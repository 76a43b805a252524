//! The worker pool: a fixed set of threads running blocking jobs (database, Redis, WeChat HTTPS)
//! from a bounded queue. A job reports back by sending a completion through a
//! [`Notifier`](crate::net::Notifier), which wakes the reactor; the reactor never waits on a job.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The sending half of [`bounded`]: refuses instead of blocking once `cap` items wait.
pub struct BoundedTx<T> {
    tx: Sender<T>,
    held: Arc<AtomicUsize>,
    cap: usize,
}

/// The receiving half of [`bounded`].
pub struct BoundedRx<T> {
    rx: Receiver<T>,
    held: Arc<AtomicUsize>,
}

/// A queue of at most `cap` waiting items that holds memory only for the items in it.
///
/// `sync_channel(cap)` allocates all `cap` slots up front and writes a stamp into each, so every
/// page of it is resident from the start: the persister's 65,536 slots of 144 bytes were 9 MiB,
/// nearly half of an idle server's memory. This is the unbounded channel (blocks of slots,
/// allocated and freed as items pass) with the bound kept in a counter.
pub fn bounded<T>(cap: usize) -> (BoundedTx<T>, BoundedRx<T>) {
    let (tx, rx) = channel();
    let held = Arc::new(AtomicUsize::new(0));
    (
        BoundedTx {
            tx,
            held: held.clone(),
            cap,
        },
        BoundedRx { rx, held },
    )
}

// Not derived: that would ask `T: Clone`.
impl<T> Clone for BoundedTx<T> {
    fn clone(&self) -> Self {
        BoundedTx {
            tx: self.tx.clone(),
            held: self.held.clone(),
            cap: self.cap,
        }
    }
}

impl<T> BoundedTx<T> {
    /// Queues `item`, or gives it back when the queue is full or the receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        // Counted before sending, so the receiver's decrement never comes first.
        if self.held.fetch_add(1, Relaxed) >= self.cap {
            self.held.fetch_sub(1, Relaxed);
            return Err(item);
        }
        self.tx.send(item).map_err(|e| {
            self.held.fetch_sub(1, Relaxed);
            e.0
        })
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.held.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> BoundedRx<T> {
    fn took<E>(&self, r: Result<T, E>) -> Result<T, E> {
        if r.is_ok() {
            self.held.fetch_sub(1, Relaxed);
        }
        r
    }

    pub fn recv(&self) -> Result<T, std::sync::mpsc::RecvError> {
        self.took(self.rx.recv())
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.took(self.rx.try_recv())
    }

    pub fn recv_timeout(&self, wait: Duration) -> Result<T, RecvTimeoutError> {
        self.took(self.rx.recv_timeout(wait))
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue is full: the caller answers "busy" instead of waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

pub struct WorkerPool {
    tx: Option<BoundedTx<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `threads` workers sharing a queue of at most `queue` waiting jobs.
    pub fn new(name: &str, threads: usize, queue: usize) -> std::io::Result<WorkerPool> {
        let (tx, rx) = bounded::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker_loop(&rx))?;
            handles.push(handle);
        }
        Ok(WorkerPool {
            tx: Some(tx),
            threads: handles,
        })
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, BoundedTx::len)
    }

    /// Queues a job without blocking.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), QueueFull> {
        let Some(tx) = &self.tx else {
            return Err(QueueFull);
        };
        tx.try_send(Box::new(job)).map_err(|_| QueueFull)
    }
}

fn worker_loop(rx: &Arc<Mutex<BoundedRx<Job>>>) {
    loop {
        let job = {
            let guard = match rx.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.recv()
        };
        match job {
            Ok(job) => {
                // A panicking job must not take the worker down with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    log::error!("a worker job panicked");
                }
            }
            Err(_) => return,
        }
    }
}

impl Drop for WorkerPool {
    /// Lets queued jobs finish, then joins the threads.
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn runs_jobs_and_reports_back() {
        let pool = WorkerPool::new("t", 2, 16).unwrap();
        let (tx, rx) = channel();
        for i in 0..10 {
            let tx = tx.clone();
            pool.submit(move || tx.send(i * i).unwrap()).unwrap();
        }
        let mut got: Vec<i32> = (0..10).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..10).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn full_queue_refuses_instead_of_blocking() {
        let pool = WorkerPool::new("t", 1, 1).unwrap();
        let (block_tx, block_rx) = channel::<()>();
        let (started_tx, started_rx) = channel::<()>();
        pool.submit(move || {
            started_tx.send(()).unwrap();
            let _ = block_rx.recv();
        })
        .unwrap();
        started_rx.recv().unwrap();
        pool.submit(|| {}).unwrap();
        assert_eq!(pool.submit(|| {}), Err(QueueFull));
        block_tx.send(()).unwrap();
    }

    #[test]
    fn bounded_queue_counts_what_waits_and_refuses_past_its_cap() {
        let (tx, rx) = bounded::<u32>(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(3));
        assert_eq!(tx.len(), 2);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.len(), 1);
        assert_eq!(tx.try_send(4), Ok(()));
        assert_eq!(rx.recv(), Ok(2));
        assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(4));
        assert!(rx.try_recv().is_err());
        assert!(tx.is_empty());
        drop(rx);
        assert_eq!(tx.try_send(5), Err(5));
        assert!(tx.is_empty());
    }

    #[test]
    fn panicking_job_does_not_kill_the_worker() {
        let pool = WorkerPool::new("t", 1, 4).unwrap();
        pool.submit(|| panic!("boom")).unwrap();
        let (tx, rx) = channel();
        pool.submit(move || tx.send(1).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 1);
    }
}
