//! The worker pool: a fixed set of threads running blocking jobs (database, Redis, WeChat HTTPS)
//! from a bounded queue. A job reports back by sending a completion through a
//! [`Notifier`](crate::net::Notifier), which wakes the reactor; the reactor never waits on a job.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue is full: the caller answers "busy" instead of waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

pub struct WorkerPool {
    tx: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs queued and not yet taken by a worker.
    queued: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// Starts `threads` workers sharing a queue of at most `queue` waiting jobs.
    pub fn new(name: &str, threads: usize, queue: usize) -> std::io::Result<WorkerPool> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let queued = queued.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker_loop(&rx, &queued))?;
            handles.push(handle);
        }
        Ok(WorkerPool {
            tx: Some(tx),
            threads: handles,
            queued,
        })
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// Queues a job without blocking.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), QueueFull> {
        let Some(tx) = &self.tx else {
            return Err(QueueFull);
        };
        // Counted before sending, so a worker's decrement never comes first.
        self.queued.fetch_add(1, Relaxed);
        match tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Relaxed);
                Err(QueueFull)
            }
        }
    }
}

fn worker_loop(rx: &Arc<Mutex<Receiver<Job>>>, queued: &AtomicUsize) {
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
                queued.fetch_sub(1, Relaxed);
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
    fn panicking_job_does_not_kill_the_worker() {
        let pool = WorkerPool::new("t", 1, 4).unwrap();
        pool.submit(|| panic!("boom")).unwrap();
        let (tx, rx) = channel();
        pool.submit(move || tx.send(1).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 1);
    }
}
