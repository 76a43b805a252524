//! SQLite's memory on jemalloc, the allocator the server's own code runs on.
//!
//! Left on glibc's `malloc`, the persister's SQLite allocations lived in a thread arena that
//! glibc shrank after every large transaction and grew again in the next (`perf`: `sysmalloc`
//! and `grow_heap` at about 4% of the persister's time in a flat-out p2p run). jemalloc keeps
//! per-thread caches and returns memory on its own schedule (its background thread), and one
//! allocator for the whole process means one set of figures in its statistics.
//!
//! SQLite copies the methods when it is configured, which must happen before its first use in
//! the process (`sqlite3_config` is refused afterwards, and then nothing changes).

use std::os::raw::{c_int, c_void};

use rusqlite::ffi;

/// Routes SQLite's allocations to jemalloc and turns off SQLite's own memory statistics (a
/// global mutex taken on every allocation; the server reports memory from the allocator and
/// /proc instead). Call it before anything in the process opens a database: once SQLite has
/// started, it returns SQLite's refusal (`SQLITE_MISUSE`) and SQLite keeps the allocator it has.
pub fn use_jemalloc() -> Result<(), c_int> {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(sqlite_malloc),
        xFree: Some(sqlite_free),
        xRealloc: Some(sqlite_realloc),
        xSize: Some(sqlite_size),
        xRoundup: Some(sqlite_roundup),
        xInit: Some(sqlite_init),
        xShutdown: Some(sqlite_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to an sqlite3_mem_methods, which SQLite
    // copies before returning; SQLITE_CONFIG_MEMSTATUS takes an int. Both are refused with
    // SQLITE_MISUSE, changing nothing, once SQLite is initialized.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    // SAFETY: as above.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    Ok(())
}

/// Sizes from the C side: SQLite never asks for a negative size, and a zero-byte request gets
/// a real (smallest) allocation, as SQLite's default allocator gives.
fn byte_count(n: c_int) -> usize {
    usize::try_from(n).unwrap_or(0).max(1)
}

extern "C" fn sqlite_malloc(n: c_int) -> *mut c_void {
    // SAFETY: jemalloc's malloc, aligned to at least 16 bytes (SQLite needs 8).
    unsafe { tikv_jemalloc_sys::malloc(byte_count(n)) }
}

extern "C" fn sqlite_free(p: *mut c_void) {
    // SAFETY: `p` came from `sqlite_malloc`/`sqlite_realloc` (SQLite frees only what its
    // allocator gave), or is null.
    unsafe { tikv_jemalloc_sys::free(p) }
}

extern "C" fn sqlite_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: `p` came from this allocator (SQLite passes a non-null earlier allocation).
    unsafe { tikv_jemalloc_sys::realloc(p, byte_count(n)) }
}

extern "C" fn sqlite_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live allocation from this allocator.
    let n = unsafe { tikv_jemalloc_sys::malloc_usable_size(p) };
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

extern "C" fn sqlite_roundup(n: c_int) -> c_int {
    // SAFETY: nallocx only computes the size class of a non-zero request; it allocates nothing.
    let rounded = unsafe { tikv_jemalloc_sys::nallocx(byte_count(n), 0) };
    c_int::try_from(rounded).unwrap_or(n)
}

extern "C" fn sqlite_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

extern "C" fn sqlite_shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_methods_allocate_resize_and_report_sizes() {
        let p = sqlite_malloc(100);
        assert!(!p.is_null());
        assert_eq!(p as usize % 8, 0, "SQLite needs 8-byte alignment");
        let size = sqlite_size(p);
        assert!(size >= 100, "{size}");
        assert_eq!(sqlite_roundup(100), size, "the size class malloc gave");
        // SAFETY: `p` holds at least 100 bytes.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 7, 100) };
        let q = sqlite_realloc(p, 10_000);
        assert!(!q.is_null() && sqlite_size(q) >= 10_000);
        // SAFETY: realloc kept the first 100 bytes.
        let kept = unsafe { std::slice::from_raw_parts(q.cast::<u8>(), 100) };
        assert!(kept.iter().all(|&b| b == 7));
        sqlite_free(q);
        sqlite_free(std::ptr::null_mut());
        assert_eq!(sqlite_size(std::ptr::null_mut()), 0);
        assert!(sqlite_roundup(0) >= 1 && sqlite_roundup(1) >= 1);
        let z = sqlite_malloc(0);
        assert!(!z.is_null());
        sqlite_free(z);
        assert_eq!(sqlite_init(std::ptr::null_mut()), ffi::SQLITE_OK);
    }

    /// Once SQLite runs (here: a database opened first, so no other test can be starting it
    /// at the same moment), the call is refused and SQLite goes on with its allocator.
    #[test]
    fn too_late_is_refused_and_changes_nothing() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        assert_eq!(use_jemalloc(), Err(ffi::SQLITE_MISUSE));
        let n: i64 = conn
            .query_row("SELECT length(zeroblob(100000))", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 100_000);
    }
}
