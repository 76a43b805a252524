//! SQLite on jemalloc, in a process of its own (this test binary), as the server starts it:
//! configured before SQLite's first use, then every SQLite allocation comes from jemalloc.

use rusqlite::ffi;

#[test]
fn sqlite_allocates_from_jemalloc_when_configured_first() {
    // Nothing in this process has touched SQLite yet: this is its only test.
    wxchat::store::sqlite::use_jemalloc().expect("accepted before SQLite starts");

    let dir = tempfile::tempdir().unwrap();
    let store = wxchat::store::sqlite::SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
    drop(store);

    // SQLite's own allocator entry point now hands out jemalloc memory: jemalloc knows its
    // size class (on glibc's memory this lookup would read garbage or crash).
    // SAFETY: sqlite3_malloc returns memory from the configured allocator, freed below.
    let p = unsafe { ffi::sqlite3_malloc(1000) };
    assert!(!p.is_null());
    // SAFETY: `p` is live jemalloc memory (the point of the test).
    let usable = unsafe { tikv_jemalloc_sys::malloc_usable_size(p) };
    // SAFETY: as above; the size SQLite reports comes from the same allocator.
    let reported = unsafe { ffi::sqlite3_msize(p) };
    assert!(usable >= 1000, "{usable}");
    assert_eq!(reported, usable as u64);
    // SAFETY: `p` came from sqlite3_malloc.
    unsafe { ffi::sqlite3_free(p) };

    // Started now: a second configuration is refused, as the server's log then says.
    assert_eq!(
        wxchat::store::sqlite::use_jemalloc(),
        Err(ffi::SQLITE_MISUSE)
    );
}
