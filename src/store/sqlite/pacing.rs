//! Lets the store's background threads (the log's apply, the checkpoint) step off the core in
//! the middle of SQLite's work while the reactor or the persister has work, so a message is not
//! held up behind them on a shared core.
//!
//! Why: at 10,000 msg/s an apply round is about 1.2 ms of CPU (half of it the commit's writes
//! to the WAL) and a checkpoint pass about 1 ms (copying frames to the database file), and
//! neither sleeps. Linux's scheduler (EEVDF, 6.x) lets a thread it has picked run on while the
//! reactor waits, whatever their nice values, when the reactor has had more than its share
//! lately. That was the latency tail at 10,000 msg/s without `[server] realtime_priority`
//! (`perf sched`: of the reactor's waits over 0.3 ms, 46-58 ms in 1.5 s were behind the apply
//! thread and 18-23 ms behind the checkpoint; BENCHMARKS.md, issue 23). Calling `sched_yield`
//! here (the seventeenth session) halved it, but the scheduler often picks the yielding thread
//! again; sleeping is what takes it out of the running.
//!
//! How: while a thread has [`set_background`] on, it asks the foreground gate
//! ([`crate::foreground`]) whether the reactor or the persister has work, at most every
//! `CHECK_EVERY`, from every file read and write SQLite makes (through [`VFS_NAME`], a thin
//! layer over SQLite's default `unix` VFS that changes nothing else), from a progress handler
//! every `STEPS_PER_CHECK` virtual-machine steps, and from the apply's own loop ([`pace`]). While
//! they have, it sleeps, up to `WAIT_PER_ROUND` in all between two `set_background(true)`.
//! Other threads (the reactor, the persister, workers) never wait, and the background threads
//! only under a light load: under a heavy one their work must keep up, and the foreground is
//! never idle anyway.

use crate::foreground::GATE;
use rusqlite::ffi;
use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The VFS every store connection opens its database with.
pub(super) const VFS_NAME: &str = "wxchat-pacing";
const VFS_NAME_C: &CStr = c"wxchat-pacing";

/// Time between two checks of a background thread: the longest it holds a shared core while
/// the foreground has work, beyond a single file call or VM step.
const CHECK_EVERY: Duration = Duration::from_micros(50);

/// Virtual-machine steps between two calls of the progress handler (a few microseconds), which
/// checks once `CHECK_EVERY` has passed. SQLite counts steps per statement, so with several
/// statements in turn the handler comes a few times as rarely.
pub(super) const STEPS_PER_CHECK: c_int = 200;

/// How long a background thread may wait for the foreground in one round (an apply round, a
/// checkpoint's first pass): less than the apply thread's 50 ms between rounds, so a
/// foreground that never idles delays a round, never skips one.
const WAIT_PER_ROUND: Duration = Duration::from_millis(20);

thread_local! {
    /// When this thread is next due to check; None: it does not check.
    static NEXT_CHECK: Cell<Option<Instant>> = const { Cell::new(None) };
    /// What is left of this round's `WAIT_PER_ROUND`.
    static WAIT_LEFT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

#[cfg(test)]
thread_local! {
    /// Calls of `pace` on this thread while it is a background one, and checks made, for
    /// tests.
    static CALLS: Cell<u64> = const { Cell::new(0) };
    static CHECKS: Cell<u64> = const { Cell::new(0) };
}

/// Whether SQLite's work on this thread makes way for the foreground from now on; `true`
/// starts a new round (a fresh `WAIT_PER_ROUND`).
pub(super) fn set_background(paced: bool) {
    NEXT_CHECK.with(|next| next.set(paced.then(Instant::now)));
    WAIT_LEFT.with(|w| {
        w.set(if paced {
            WAIT_PER_ROUND
        } else {
            Duration::ZERO
        })
    });
}

/// Whether this thread makes way.
#[cfg(test)]
fn is_background() -> bool {
    NEXT_CHECK.with(|next| next.get().is_some())
}

/// On a background thread, once `CHECK_EVERY` has passed since the last check: waits while
/// the foreground has work, within the round's budget. Otherwise a thread-local read (and a
/// clock read on a background thread). For SQLite's work (file calls, VM steps) and the
/// store's own loops around it.
pub(super) fn pace() {
    let Some(due) = NEXT_CHECK.with(Cell::get) else {
        return;
    };
    #[cfg(test)]
    CALLS.with(|n| n.set(n.get() + 1));
    let now = Instant::now();
    if now < due {
        return;
    }
    #[cfg(test)]
    CHECKS.with(|n| n.set(n.get() + 1));
    WAIT_LEFT.with(|w| {
        let mut left = w.get();
        GATE.make_way(&mut left);
        w.set(left);
    });
    NEXT_CHECK.with(|next| next.set(Some(Instant::now() + CHECK_EVERY)));
}

/// The progress handler: a background thread makes way.
pub(super) fn on_steps() -> bool {
    pace();
    false // go on with the statement
}

type ReadFn =
    unsafe extern "C" fn(*mut ffi::sqlite3_file, *mut c_void, c_int, ffi::sqlite3_int64) -> c_int;
type WriteFn =
    unsafe extern "C" fn(*mut ffi::sqlite3_file, *const c_void, c_int, ffi::sqlite3_int64) -> c_int;

/// One kind of file's methods in the default VFS (`unix` has one for database files and
/// another, without locks, for the WAL and journals), with a copy whose reads and writes call
/// `pace`. `pacing` comes first: a paced file's `pMethods` points at it, and so at the
/// whole.
#[repr(C)]
struct Methods {
    pacing: ffi::sqlite3_io_methods,
    real: *const ffi::sqlite3_io_methods,
    real_read: ReadFn,
    real_write: WriteFn,
}

// SAFETY: all are function pointers or immutable tables of them, living as long as the process
// (the default VFS's are static in SQLite; ours are leaked once per kind).
unsafe impl Send for Methods {}
unsafe impl Sync for Methods {}

/// Kinds of file methods paced so far. More than `MAX_KINDS` (never for `unix`) are left
/// unpaced.
static KINDS: Mutex<Vec<&'static Methods>> = Mutex::new(Vec::new());
const MAX_KINDS: usize = 8;

/// The pacing copy of `found`, made on first sight; None if it cannot be paced (no read or
/// write method, or too many kinds): such files keep their own methods, correct, only not
/// paced.
///
/// # Safety
/// `found` is a file's methods table as the default VFS set it, which lives as long as the
/// process.
unsafe fn pacing_for(found: *const ffi::sqlite3_io_methods) -> Option<&'static Methods> {
    let mut kinds = KINDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = kinds.iter().find(|m| std::ptr::eq(m.real, found)) {
        return Some(known);
    }
    if kinds.len() >= MAX_KINDS {
        return None;
    }
    let mut pacing = std::ptr::read(found);
    let (real_read, real_write) = (pacing.xRead?, pacing.xWrite?);
    pacing.xRead = Some(read);
    pacing.xWrite = Some(write);
    let methods: &'static Methods = Box::leak(Box::new(Methods {
        pacing,
        real: found,
        real_read,
        real_write,
    }));
    kinds.push(methods);
    Some(methods)
}

/// Registers the VFS (once per process); after it, `VFS_NAME` can be opened. Errors are
/// SQLite's result codes.
pub(super) fn register() -> Result<(), c_int> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let rc = *REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, which SQLite never frees.
        // The copy is leaked: a registered VFS must outlive every connection that uses it.
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() {
                return ffi::SQLITE_ERROR;
            }
            let mut vfs = std::ptr::read(real);
            vfs.pNext = std::ptr::null_mut();
            vfs.zName = VFS_NAME_C.as_ptr();
            vfs.pAppData = real.cast::<c_void>();
            vfs.xOpen = Some(open);
            // Every other method is the default VFS's own: `unix`'s ignore the VFS pointer they
            // are called with, and its files record the real VFS (passed on in `open`).
            ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0)
        }
    });
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Opens the file with the default VFS, then gives it the pacing copy of its methods.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: pAppData is the default VFS (set in `register`); `file` has room for its file
    // type, since our szOsFile is its own.
    let real = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
    let Some(real_open) = (*real).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    let rc = real_open(real, name, file, flags, out_flags);
    if rc == ffi::SQLITE_OK && !(*file).pMethods.is_null() {
        if let Some(methods) = pacing_for((*file).pMethods) {
            (*file).pMethods = &methods.pacing;
        }
    }
    rc
}

/// A paced file's methods: its `pMethods` is the `pacing` field of a `Methods`.
///
/// # Safety
/// Only for a file `open` gave a pacing copy (which is every file `read` and `write` are
/// called with).
unsafe fn methods_of(file: *mut ffi::sqlite3_file) -> &'static Methods {
    &*(*file).pMethods.cast::<Methods>()
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls this only through a pacing copy; the file is the default VFS's,
    // which is what its own method expects.
    let rc = (methods_of(file).real_read)(file, buf, amount, offset);
    pace();
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: as in `read`.
    let rc = (methods_of(file).real_write)(file, buf, amount, offset);
    pace();
    rc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    #[test]
    fn a_database_written_through_the_vfs_reads_back_through_the_default_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        register().unwrap();
        let c = Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), VFS_NAME).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            mode, "wal",
            "the layer keeps the shared-memory methods WAL needs"
        );
        c.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT)")
            .unwrap();
        for i in 0..1000 {
            c.execute("INSERT INTO t (y) VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(c);
        let plain = Connection::open(&path).unwrap();
        let (n, last): (i64, String) = plain
            .query_row("SELECT COUNT(*), MAX(y) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, last.as_str()), (1000, "row 999"));
    }

    #[test]
    fn only_a_background_thread_checks_and_at_most_once_in_a_while() {
        std::thread::spawn(|| {
            pace();
            assert!(!is_background(), "a thread does not check unless told to");
            assert_eq!(CHECKS.with(Cell::get), 0);
            set_background(true);
            pace();
            assert_eq!(CHECKS.with(Cell::get), 1, "the first call checks");
            pace();
            pace();
            assert_eq!(CHECKS.with(Cell::get), 1, "not again at once");
            std::thread::sleep(CHECK_EVERY * 2);
            pace();
            assert_eq!(CHECKS.with(Cell::get), 2, "once the time has passed");
            set_background(false);
            std::thread::sleep(CHECK_EVERY * 2);
            pace();
            assert_eq!(CHECKS.with(Cell::get), 2, "no more once turned off");
            assert_eq!(
                CALLS.with(Cell::get),
                4,
                "calls counted while a background thread"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_stores_connections_are_paced_on_a_background_thread_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let write = move |background: bool| {
            let path = path.clone();
            std::thread::spawn(move || {
                set_background(background);
                let mut c = super::super::SqliteStore::connect(&path, false).unwrap();
                c.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY, y BLOB)")
                    .unwrap();
                let tx = c.transaction().unwrap();
                for i in 0..5000 {
                    tx.execute("INSERT INTO t (y) VALUES (zeroblob(?1))", [i % 700])
                        .unwrap();
                }
                let before = CALLS.with(Cell::get);
                tx.commit().unwrap();
                let in_commit = CALLS.with(Cell::get) - before;
                let total: i64 = c
                    .query_row("SELECT SUM(length(y)) FROM t", [], |r| r.get(0))
                    .unwrap();
                (total, in_commit)
            })
            .join()
            .unwrap()
        };
        let per_run: i64 = (0..5000).map(|i| i % 700).sum();
        let (total, calls) = write(false);
        assert_eq!((total, calls), (per_run, 0));
        // About 1.7 MB of frames (some 430 pages), each written to the WAL as a header and a
        // page: some 860 paced calls. The WAL is a file of another kind than the database
        // (`unix` gives it methods without locks); before both kinds were paced, this was 0.
        let (total, calls) = write(true);
        assert_eq!(total, 2 * per_run);
        assert!(calls > 400, "the commit's writes were paced {calls} times");
    }

    /// A background thread's SQLite work sleeps while the foreground has work, up to the
    /// round's budget; another thread's does not wait at all.
    #[test]
    fn a_background_thread_waits_for_a_busy_foreground_within_its_round() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (busy, hold) = std::sync::mpsc::channel::<()>();
        let (started, go) = std::sync::mpsc::channel();
        let foreground = std::thread::spawn(move || {
            let mut w = GATE.worker();
            w.working();
            started.send(()).unwrap();
            let _ = hold.recv(); // until the test is done
        });
        go.recv().unwrap();
        let write = move |background: bool| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = super::super::SqliteStore::connect(&path, false).unwrap();
                c.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY, y BLOB)")
                    .unwrap();
                set_background(background);
                let t = std::time::Instant::now();
                let tx = c.transaction().unwrap();
                for i in 0..2000 {
                    tx.execute("INSERT INTO t (y) VALUES (zeroblob(?1))", [i % 700])
                        .unwrap();
                }
                tx.commit().unwrap();
                (t.elapsed(), WAIT_LEFT.with(Cell::get))
            })
            .join()
            .unwrap()
        };
        let (_, left) = write(false);
        assert_eq!(left, Duration::ZERO, "not a background thread: no budget");
        let (took, left) = write(true);
        assert!(
            took >= WAIT_PER_ROUND,
            "waited for the foreground: {took:?}"
        );
        assert_eq!(left, Duration::ZERO, "the round's budget is spent");
        drop(busy);
        foreground.join().unwrap();
    }
}
