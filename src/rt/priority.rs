//! Real-time scheduling for the two threads every message passes through: the reactor and the
//! persister (`[server] realtime_priority`).
//!
//! Why: on a core they share with the store's background threads (the commit log's apply
//! rounds, the checkpoints), the kernel's fair scheduler lets those run for 1-4 ms while the
//! reactor waits, whatever their nice value or `SCHED_IDLE`: it chooses by each thread's lag,
//! and a background thread wakes with the lag it saved (BENCHMARKS.md, "The 10,000 msg/s tail
//! with messages on a schedule"). Under `SCHED_FIFO` the two are always chosen first, and the
//! background threads run when both wait. The kernel still keeps a share of every second for
//! normal threads (`sched_rt_runtime_us`), so a saturated reactor cannot lock a core.
//!
//! `SCHED_RESET_ON_FORK` goes with it: a thread either of them starts later (the store starts
//! its apply thread from the persister) begins at normal priority.

use crate::config::MAX_REALTIME_PRIORITY;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

/// The two threads that may take real-time priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathThread {
    Reactor,
    Persister,
}

impl PathThread {
    fn name(self) -> &'static str {
        match self {
            PathThread::Reactor => "reactor",
            PathThread::Persister => "persister",
        }
    }

    fn taken(self) -> &'static AtomicU8 {
        static REACTOR: AtomicU8 = AtomicU8::new(0);
        static PERSISTER: AtomicU8 = AtomicU8::new(0);
        match self {
            PathThread::Reactor => &REACTOR,
            PathThread::Persister => &PERSISTER,
        }
    }
}

/// The real-time priority the process's reactor and persister run at (0: normal scheduling),
/// as they last took it: what `/status` reports, so an operator sees whether the setting took
/// effect without reading the log.
pub fn taken() -> (u8, u8) {
    (
        PathThread::Reactor.taken().load(Ordering::Relaxed),
        PathThread::Persister.taken().load(Ordering::Relaxed),
    )
}

/// What [`make_realtime`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Priority 0: the thread keeps normal scheduling.
    Off,
    /// The thread now runs under `SCHED_FIFO` at this priority.
    Realtime(u8),
}

/// Puts the calling thread under `SCHED_FIFO` at `priority` (1-99; 0 leaves it as it is).
/// Fails with `EPERM` without `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least `priority`.
pub fn make_realtime(priority: u8) -> io::Result<Outcome> {
    if priority == 0 {
        return Ok(Outcome::Off);
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority.min(MAX_REALTIME_PRIORITY)),
    };
    // SAFETY: pid 0 is the calling thread on Linux; `param` is a valid sched_param.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Outcome::Realtime(priority.min(MAX_REALTIME_PRIORITY)))
}

/// [`make_realtime`] for one of the two threads, the outcome logged and kept for [`taken`]: a
/// failure is a warning saying what the thread runs at instead and what would allow it.
pub fn make_realtime_logged(priority: u8, thread: PathThread) {
    let who = thread.name();
    let took = match make_realtime(priority) {
        Ok(Outcome::Off) => 0,
        Ok(Outcome::Realtime(p)) => {
            log::info!("{who}: real-time priority {p} (SCHED_FIFO)");
            p
        }
        Err(e) => {
            log::warn!(
                "{who}: could not take real-time priority {priority} ({e}); it runs at normal \
                 priority. [server] realtime_priority needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at \
                 least {priority} (systemd: LimitRTPRIO={priority}, without RestrictRealtime=yes)"
            );
            0
        }
    };
    thread.taken().store(took, Ordering::Relaxed);
    if matches!(thread, PathThread::Reactor) {
        // Under SCHED_FIFO the kernel runs the reactor before the store's background threads
        // anyway; their waiting for it (`foreground`) would only cost switches.
        crate::foreground::GATE.stand_down(took > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's policy, with the reset-on-fork flag taken off.
    fn policy() -> (i32, bool) {
        // SAFETY: pid 0 is the calling thread.
        let p = unsafe { libc::sched_getscheduler(0) };
        (
            p & !libc::SCHED_RESET_ON_FORK,
            p & libc::SCHED_RESET_ON_FORK != 0,
        )
    }

    #[test]
    fn priority_zero_leaves_the_thread_alone() {
        std::thread::spawn(|| {
            let before = policy();
            assert_eq!(make_realtime(0).unwrap(), Outcome::Off);
            assert_eq!(policy(), before);
        })
        .join()
        .unwrap();
    }

    /// With the right to it (root, CAP_SYS_NICE or RLIMIT_RTPRIO), the thread runs FIFO and a
    /// thread it starts does not; without, the call fails with EPERM and changes nothing.
    #[test]
    fn a_realtime_thread_starts_normal_threads() {
        std::thread::spawn(|| match make_realtime(3) {
            Ok(outcome) => {
                assert_eq!(outcome, Outcome::Realtime(3));
                assert_eq!(policy(), (libc::SCHED_FIFO, true));
                let child = std::thread::spawn(policy).join().unwrap();
                assert_eq!(child, (libc::SCHED_OTHER, false));
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                assert_eq!(policy(), (libc::SCHED_OTHER, false));
            }
        })
        .join()
        .unwrap();
    }
}
