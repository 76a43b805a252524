//! Lets the store's background threads (the log's apply, the checkpoint) hand the core over
//! in the middle of SQLite's work, so a reactor sharing their core is not held up behind them.
//!
//! Why: at 10,000 msg/s an apply round is about 1.2 ms of CPU (half of it the commit's writes
//! to the WAL) and a checkpoint pass about 1 ms (copying frames to the database file), and
//! neither sleeps. Linux's scheduler (EEVDF, 6.x) lets a thread it has picked run out its slice
//! while another waits, whatever their nice values, unless the waiting one preempts on waking:
//! the reactor, woken by a message meanwhile, waited for most of a round. That was the latency
//! tail at 10,000 msg/s without `[server] realtime_priority` (`perf sched`: of the reactor's
//! waits over 0.3 ms, 46-58 ms in 1.5 s were behind the apply thread and 18-23 ms behind the
//! checkpoint; BENCHMARKS.md, issue 23).
//!
//! How: while a thread has [`set_background`] on, it calls `sched_yield` every `IO_PER_YIELD`
//! file reads and writes SQLite makes (through [`VFS_NAME`], a thin layer over SQLite's default
//! `unix` VFS that changes nothing else) and every `STEPS_PER_YIELD` virtual-machine steps (a
//! progress handler). `sched_yield` returns at once when nothing else is runnable. Other
//! threads (the reactor, the persister, workers) never yield, and the background threads only
//! under a light load: under a heavy one their work must keep up, and the reactor is busy
//! anyway.
//!
//! What it does not do: the kernel may pick the yielding thread again (when the reactor has
//! run more than its share lately, it is not yet eligible), so the waits get shorter, not
//! gone. Measured: p99 1.6-1.95x lower in seven rounds of eight, about 1.1-1.4 ms instead of
//! 2 ms on a slow host; under 1 ms in every run still takes `realtime_priority`.

use rusqlite::ffi;
use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::sync::OnceLock;

/// The VFS every store connection opens its database with.
pub(super) const VFS_NAME: &str = "wxchat-yielding";
const VFS_NAME_C: &CStr = c"wxchat-yielding";

/// File reads and writes between two yields: pages written to the WAL or copied by the
/// checkpoint, some tens of microseconds of them.
const IO_PER_YIELD: u32 = 16;

/// Virtual-machine steps between two yields (about 30-60 us of inserts and updates).
pub(super) const STEPS_PER_YIELD: c_int = 2000;

thread_local! {
    /// File calls left until this thread next yields; 0: it does not yield.
    static IO_LEFT: Cell<u32> = const { Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// Yields after file calls on this thread, for tests.
    static IO_YIELDS: Cell<u64> = const { Cell::new(0) };
}

/// Whether SQLite's work on this thread yields the core now and then, from now on.
pub(super) fn set_background(yields: bool) {
    IO_LEFT.with(|left| left.set(if yields { IO_PER_YIELD } else { 0 }));
}

/// Whether this thread yields.
fn is_background() -> bool {
    IO_LEFT.with(|left| left.get() != 0)
}

/// The progress handler: a background thread yields.
pub(super) fn on_steps() -> bool {
    if is_background() {
        std::thread::yield_now();
    }
    false // go on with the statement
}

/// After a file call: a background thread yields every `IO_PER_YIELD` calls.
fn after_io() {
    IO_LEFT.with(|left| match left.get() {
        0 => {}
        1 => {
            left.set(IO_PER_YIELD);
            #[cfg(test)]
            IO_YIELDS.with(|n| n.set(n.get() + 1));
            std::thread::yield_now();
        }
        n => left.set(n - 1),
    });
}

type ReadFn =
    unsafe extern "C" fn(*mut ffi::sqlite3_file, *mut c_void, c_int, ffi::sqlite3_int64) -> c_int;
type WriteFn =
    unsafe extern "C" fn(*mut ffi::sqlite3_file, *const c_void, c_int, ffi::sqlite3_int64) -> c_int;

/// The default VFS's file methods (and its read and write among them), and a copy of them whose
/// reads and writes call `after_io`.
struct Methods {
    real: *const ffi::sqlite3_io_methods,
    real_read: ReadFn,
    real_write: WriteFn,
    pacing: ffi::sqlite3_io_methods,
}

// SAFETY: all are function pointers or immutable tables of them, living as long as the process
// (the default VFS's are static in SQLite; ours is in a `OnceLock`).
unsafe impl Send for Methods {}
unsafe impl Sync for Methods {}

/// Set by the first file opened; None if the default VFS's files could not be read or written
/// through their methods (never so for `unix`), and then no file is paced.
static METHODS: OnceLock<Option<Methods>> = OnceLock::new();

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
        let found = (*file).pMethods;
        let methods = METHODS.get_or_init(|| {
            let mut pacing = std::ptr::read(found);
            let (real_read, real_write) = (pacing.xRead?, pacing.xWrite?);
            pacing.xRead = Some(read);
            pacing.xWrite = Some(write);
            Some(Methods {
                real: found,
                real_read,
                real_write,
                pacing,
            })
        });
        // `unix` gives every file on Linux the same methods; a file given others (a locking
        // style chosen by URI, say) is left as it is: correct, only not paced.
        if let Some(methods) = methods.as_ref().filter(|m| std::ptr::eq(m.real, found)) {
            (*file).pMethods = &methods.pacing;
        }
    }
    rc
}

/// The default VFS's methods, which every paced file has (`open` installs `pacing` only
/// after setting them).
fn real_methods() -> Option<&'static Methods> {
    METHODS.get()?.as_ref()
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let Some(m) = real_methods() else {
        return ffi::SQLITE_IOERR_READ;
    };
    // SAFETY: the file is the default VFS's, which is what its method expects.
    let rc = (m.real_read)(file, buf, amount, offset);
    after_io();
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let Some(m) = real_methods() else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: as in `read`.
    let rc = (m.real_write)(file, buf, amount, offset);
    after_io();
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
    fn only_a_background_thread_yields_and_it_does_so_every_so_many_file_calls() {
        std::thread::spawn(|| {
            after_io();
            assert!(!is_background(), "a thread does not yield unless told to");
            set_background(true);
            for _ in 0..IO_PER_YIELD - 1 {
                after_io();
            }
            assert_eq!(IO_LEFT.with(Cell::get), 1, "one call left before the yield");
            assert_eq!(IO_YIELDS.with(Cell::get), 0);
            after_io();
            assert_eq!(IO_LEFT.with(Cell::get), IO_PER_YIELD, "counting again");
            assert_eq!(IO_YIELDS.with(Cell::get), 1, "yielded once");
            set_background(false);
            for _ in 0..2 * IO_PER_YIELD {
                after_io();
            }
            assert_eq!(IO_YIELDS.with(Cell::get), 1, "no more once turned off");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_stores_connections_yield_on_a_background_thread_only() {
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
                tx.commit().unwrap();
                let total: i64 = c
                    .query_row("SELECT SUM(length(y)) FROM t", [], |r| r.get(0))
                    .unwrap();
                (total, IO_YIELDS.with(Cell::get))
            })
            .join()
            .unwrap()
        };
        let per_run: i64 = (0..5000).map(|i| i % 700).sum();
        let (total, yields) = write(false);
        assert_eq!((total, yields), (per_run, 0));
        // About 1.7 MB of frames: a few hundred writes to the WAL.
        let (total, yields) = write(true);
        assert_eq!(total, 2 * per_run);
        assert!(yields > 10, "the commit's writes yielded {yields} times");
    }
}
