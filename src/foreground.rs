//! Whether the threads on every message's path (the reactor, the persister) have work, so the
//! store's background threads can keep off a core they share until it is done.
//!
//! Why: on a shared core, Linux's fair scheduler (EEVDF, 6.x) lets a background thread it has
//! picked run on while the reactor waits, whenever the reactor has had more than its share
//! lately (it is "not eligible"), and it stays so across its short sleeps. Neither a nice value
//! nor `sched_yield` changes that: the scheduler picks the yielding thread again. A thread
//! that sleeps is out of the running, though. So a background thread asks [`Gate::make_way`]
//! now and then, and sleeps while work is waiting on this side (BENCHMARKS.md, issue 23).
//!
//! How work is seen, before the thread that will do it has run ([`GATE`]):
//! - a foreground thread is working from when it wakes to when it goes idle ([`Worker`]);
//! - work handed to one that has not picked it up yet is counted ([`Gate::hand_over`],
//!   [`Gate::taken`]);
//! - the reactor's epoll descriptor is watched ([`Gate::watch`]): a message that has arrived
//!   and not been read, or a persister's wake-up, shows there as the descriptor being readable.
//!
//! A waiting background thread sleeps on a futex that the foreground thread finishing the last
//! counted work wakes, and its waits are capped by a budget, so a foreground that never idles
//! (a heavy load, or a reactor busy on another core) slows the background work but does not
//! stop it. Under `[server] realtime_priority` the gate stands down (the kernel already runs
//! the reactor first). The server's threads share one gate: several servers in one process
//! (tests) only make each other's background threads wait a little more.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Descriptors a gate watches for readiness. One per reactor; more than this (tests only) are
/// not watched.
const WATCH_SLOTS: usize = 8;

/// What the foreground has in hand, and the background threads waiting for it to finish.
#[derive(Debug)]
pub struct Gate {
    /// Foreground threads between waking and going idle.
    working: AtomicU32,
    /// Work handed to foreground threads and not yet picked up.
    handed: AtomicUsize,
    /// Background threads in `make_way`.
    waiters: AtomicU32,
    /// The futex waiters sleep on: moved on when the foreground runs out of work.
    epoch: AtomicU32,
    /// Watched descriptors (-1: a free slot).
    watched: [AtomicI32; WATCH_SLOTS],
    /// Nobody waits: the reactor runs under a real-time policy, so the kernel already runs
    /// the foreground before any background thread.
    stood_down: AtomicBool,
    /// Threads waiting for something a background thread may hold (the store's writer lock):
    /// while any do, background threads do not wait, or they would hold it up.
    needed: AtomicU32,
}

/// The process's gate: the server's reactor and persister report to it, the store's background
/// threads ask it.
pub static GATE: Gate = Gate::new();

/// One foreground thread's part: [`working`](Self::working) from when it wakes to when it goes
/// [`idle`](Self::idle) (which dropping it also does).
pub struct Worker<'g> {
    gate: &'g Gate,
    working: bool,
}

impl Worker<'_> {
    /// This thread has work from now on. Cheap when it already had.
    pub fn working(&mut self) {
        if !self.working {
            self.working = true;
            self.gate.working.fetch_add(1, SeqCst);
        }
    }

    /// This thread has run out of work and is about to block.
    pub fn idle(&mut self) {
        if self.working {
            self.working = false;
            self.gate.working.fetch_sub(1, SeqCst);
            self.gate.release_waiters();
        }
    }
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        self.idle();
    }
}

/// A thread waiting for something a background thread may hold, while this lives.
pub struct Need<'g> {
    gate: &'g Gate,
}

impl Drop for Need<'_> {
    fn drop(&mut self) {
        self.gate.needed.fetch_sub(1, SeqCst);
    }
}

/// A descriptor watched for readiness while this lives.
pub struct Watch<'g> {
    gate: &'g Gate,
    slot: Option<usize>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.gate.watched[slot].store(-1, SeqCst);
        }
    }
}

impl Gate {
    pub const fn new() -> Gate {
        Gate {
            working: AtomicU32::new(0),
            handed: AtomicUsize::new(0),
            waiters: AtomicU32::new(0),
            epoch: AtomicU32::new(0),
            watched: [const { AtomicI32::new(-1) }; WATCH_SLOTS],
            stood_down: AtomicBool::new(false),
            needed: AtomicU32::new(0),
        }
    }

    /// A foreground thread's part, idle to begin with.
    pub fn worker(&self) -> Worker<'_> {
        Worker {
            gate: self,
            working: false,
        }
    }

    /// `n` items were handed to a foreground thread that will pick them up (or that will be
    /// taken back with [`taken`](Self::taken) when the handing failed).
    pub fn hand_over(&self, n: usize) {
        self.handed.fetch_add(n, SeqCst);
    }

    /// `n` handed items were picked up by the thread doing them (which is working by then), or
    /// taken back.
    pub fn taken(&self, n: usize) {
        self.handed.fetch_sub(n, SeqCst);
        self.release_waiters();
    }

    /// Watches `fd` (a reactor's epoll descriptor) until the returned value is dropped, which
    /// must happen before the descriptor is closed. Not watched when every slot is taken.
    pub fn watch(&self, fd: RawFd) -> Watch<'_> {
        let slot = self
            .watched
            .iter()
            .position(|s| s.compare_exchange(-1, fd, SeqCst, SeqCst).is_ok());
        Watch { gate: self, slot }
    }

    /// From now on background threads never wait (`true`: the reactor took a real-time
    /// policy, `[server] realtime_priority`), or wait again (`false`).
    pub fn stand_down(&self, yes: bool) {
        self.stood_down.store(yes, SeqCst);
    }

    /// Taken before waiting for something a background thread may hold while it waits here
    /// (a lock): from then until the returned value is dropped no background thread waits, and
    /// those waiting go on, so the holder gets on and lets go. Without it, a foreground thread
    /// blocked on such a lock would count as work and the holder would wait for it, both
    /// until the holder's budget ran out.
    pub fn need_background(&self) -> Need<'_> {
        self.needed.fetch_add(1, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.wake_waiters();
        }
        Need { gate: self }
    }

    /// Whether any foreground work is waiting or under way.
    pub fn has_work(&self) -> bool {
        self.working.load(SeqCst) > 0 || self.handed.load(SeqCst) > 0 || self.watched_ready()
    }

    /// Whether a watched descriptor is readable: work the reactor has not started on.
    fn watched_ready(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; WATCH_SLOTS];
        let mut n = 0;
        for slot in &self.watched {
            let fd = slot.load(SeqCst);
            if fd >= 0 {
                fds[n] = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                n += 1;
            }
        }
        if n == 0 {
            return false;
        }
        // SAFETY: `fds` holds `n` initialised entries; a zero timeout never blocks. A
        // descriptor closed meanwhile gives POLLNVAL, which is not counted.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, 0) };
        ready > 0 && fds[..n].iter().any(|p| p.revents & libc::POLLIN != 0)
    }

    /// Called by a background thread between two pieces of its work: while foreground work is
    /// waiting, sleeps until it is done, taking the time from `budget`, and does not sleep
    /// once that is spent. Returns whether it slept.
    pub fn make_way(&self, budget: &mut Duration) -> bool {
        if budget.is_zero() || !self.should_wait() {
            return false;
        }
        let started = Instant::now();
        let until = started + *budget;
        self.waiters.fetch_add(1, SeqCst);
        loop {
            // Read before checking: a foreground thread that goes idle after the check moves
            // it on (it sees this waiter), and the futex then does not sleep.
            let epoch = self.epoch.load(SeqCst);
            if !self.should_wait() {
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            futex_wait(&self.epoch, epoch, left);
        }
        self.waiters.fetch_sub(1, SeqCst);
        *budget = budget.saturating_sub(started.elapsed());
        true
    }

    /// Whether a background thread should wait now: the foreground has work, nobody waits for
    /// what a background thread holds, and the gate has not stood down.
    fn should_wait(&self) -> bool {
        !self.stood_down.load(SeqCst) && self.needed.load(SeqCst) == 0 && self.has_work()
    }

    /// Wakes the background threads in `make_way` once nothing counted is left (the watched
    /// descriptors they check themselves).
    fn release_waiters(&self) {
        if self.waiters.load(SeqCst) > 0
            && self.working.load(SeqCst) == 0
            && self.handed.load(SeqCst) == 0
        {
            self.wake_waiters();
        }
    }

    /// Moves the epoch on and wakes every thread sleeping on it: each checks again.
    fn wake_waiters(&self) {
        self.epoch.fetch_add(1, SeqCst);
        futex_wake_all(&self.epoch);
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

/// Sleeps until `word` is woken or no longer `expected`, or `timeout` passes.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Under 10^9, so it fits a c_long on every target.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32; the kernel only reads it and `ts`. Early returns
    // (EAGAIN, EINTR, a timeout) are all handled by the caller checking again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; waking touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_waits_while_the_foreground_is_idle() {
        let gate = Gate::new();
        let mut budget = Duration::from_secs(5);
        assert!(!gate.make_way(&mut budget));
        assert_eq!(budget, Duration::from_secs(5), "nothing spent");
        let mut w = gate.worker();
        w.working();
        w.idle();
        assert!(!gate.make_way(&mut budget), "nor after some work");
    }

    #[test]
    fn a_background_thread_sleeps_until_the_foreground_goes_idle() {
        static GATE: Gate = Gate::new();
        let (started, go) = std::sync::mpsc::channel();
        let foreground = std::thread::spawn(move || {
            let mut w = GATE.worker();
            w.working();
            w.working(); // counted once
            started.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.idle();
        });
        go.recv().unwrap();
        let mut budget = Duration::from_secs(5);
        let t = Instant::now();
        assert!(GATE.make_way(&mut budget));
        let waited = t.elapsed();
        foreground.join().unwrap();
        assert!(waited >= Duration::from_millis(30), "waited {waited:?}");
        assert!(
            waited < Duration::from_secs(2),
            "woken, not timed out: {waited:?}"
        );
        assert!(budget < Duration::from_secs(5) - Duration::from_millis(30));
        assert!(!GATE.has_work());
    }

    #[test]
    fn a_gate_stood_down_never_keeps_a_thread_waiting() {
        let gate = Gate::new();
        gate.hand_over(1);
        gate.stand_down(true);
        let mut budget = Duration::from_secs(5);
        assert!(!gate.make_way(&mut budget));
        gate.stand_down(false);
        let mut budget = Duration::from_millis(5);
        assert!(gate.make_way(&mut budget), "waits again once back");
    }

    /// A thread waiting for a lock a waiting background thread holds lets it go on at once,
    /// instead of both waiting out the budget.
    #[test]
    fn a_thread_needing_the_background_wakes_it_and_keeps_it_from_waiting() {
        static GATE: Gate = Gate::new();
        let mut w = GATE.worker();
        w.working();
        let (started, go) = std::sync::mpsc::channel();
        let background = std::thread::spawn(move || {
            started.send(()).unwrap();
            let mut budget = Duration::from_secs(5);
            let t = Instant::now();
            GATE.make_way(&mut budget);
            t.elapsed()
        });
        go.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let need = GATE.need_background();
        let waited = background.join().unwrap();
        assert!(
            waited < Duration::from_secs(2),
            "woken, not timed out: {waited:?}"
        );
        let mut budget = Duration::from_secs(5);
        assert!(!GATE.make_way(&mut budget), "no waiting while needed");
        drop(need);
        let mut budget = Duration::from_millis(5);
        assert!(GATE.make_way(&mut budget), "waits again after");
        w.idle();
    }

    #[test]
    fn a_worker_dropped_while_working_goes_idle() {
        let gate = Gate::new();
        {
            let mut w = gate.worker();
            w.working();
            assert!(gate.has_work());
        }
        assert!(!gate.has_work());
    }

    #[test]
    fn handed_work_counts_until_taken_and_the_budget_caps_the_wait() {
        let gate = Gate::new();
        gate.hand_over(2);
        assert!(gate.has_work());
        let mut budget = Duration::from_millis(20);
        let t = Instant::now();
        assert!(gate.make_way(&mut budget), "waited for the handed work");
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert!(budget.is_zero(), "the budget is spent: {budget:?}");
        assert!(
            !gate.make_way(&mut budget),
            "and no more waiting this round"
        );
        gate.taken(2);
        assert!(!gate.has_work());
    }

    #[test]
    fn a_readable_watched_descriptor_is_work_waiting() {
        let gate = Gate::new();
        let mut fds = [0; 2];
        // SAFETY: a pipe into a two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        {
            let _w = gate.watch(fds[0]);
            assert!(!gate.has_work(), "an empty pipe is not");
            // SAFETY: one byte from a live buffer into the pipe's write end.
            assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
            assert!(gate.has_work(), "a byte to read is");
        }
        assert!(!gate.has_work(), "not once unwatched");
        // SAFETY: both ends are ours and closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
