//! The embedded store: one SQLite file in WAL mode. Readers take connections from a small pool;
//! the persister has its own writer connection. `synchronous = NORMAL` makes each commit durable
//! against a process crash (`kill -9`): the WAL is written before the commit returns; only a power
//! loss can take the last commits, and `[store] sqlite_synchronous = "full"` closes that too.

use super::*;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

mod alloc;
pub use alloc::use_jemalloc;
mod commit_log;
mod logged;
mod messages;
mod pacing;
mod service;
mod social;
mod users;
mod wechat;

/// The migration that re-keys `messages` by msg_id (a copy of the table, announced in the log).
const REKEY_MIGRATION: usize = 9;

/// The migrations that write something per stored message, and what the log says they do:
/// writes wait until they are done.
const PER_MESSAGE_MIGRATIONS: &[(usize, &str)] = &[
    (
        REKEY_MIGRATION,
        "copies the messages table (roughly 2.5 s per million messages)",
    ),
    (
        RUNS_MIGRATION,
        "gives each stored message a run row (roughly 0.5 s per million messages)",
    ),
];

/// The migration that replaces the `(conv_id, seq)` index with `message_runs`.
const RUNS_MIGRATION: usize = 11;

/// Migrations in order; PRAGMA user_version records how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../sql/sqlite/001_init.sql"),
    include_str!("../../../sql/sqlite/002_read_cursors_by_conv.sql"),
    include_str!("../../../sql/sqlite/003_wechat_identities.sql"),
    include_str!("../../../sql/sqlite/004_wx_cs_routes.sql"),
    include_str!("../../../sql/sqlite/005_service_sessions.sql"),
    include_str!("../../../sql/sqlite/006_consultations.sql"),
    include_str!("../../../sql/sqlite/007_group_join_seq.sql"),
    include_str!("../../../sql/sqlite/008_visitor_purge.sql"),
    include_str!("../../../sql/sqlite/009_messages_by_id.sql"),
    include_str!("../../../sql/sqlite/010_msg_id_floor.sql"),
    include_str!("../../../sql/sqlite/011_message_runs.sql"),
];

pub struct SqliteStore {
    path: PathBuf,
    synchronous_full: bool,
    readers: Arc<Mutex<Vec<Connection>>>,
    writer: Arc<Mutex<Writer>>,
    /// What numbers messages: last seqs, the next msg id and (while this process is the sole
    /// writer) the commit log. Taken before `writer` by whoever needs both.
    sequencer: Arc<Mutex<Sequencer>>,
    /// Messages in the commit log not yet applied to SQLite (see `logged`).
    pending: Arc<logged::Pending>,
    /// Wakes the checkpointer thread after a commit; dropping it stops the thread.
    checkpointer: Option<mpsc::SyncSender<()>>,
    /// Set when the commit log could not take a batch, too large or with the log full (a heavy
    /// load), cleared by the checkpointer's next round, which then runs straight through (see
    /// `Checkpointer`).
    heavy_load: Arc<AtomicBool>,
    /// Wakes the apply thread (see `logged`); dropping it stops the thread.
    applier: Mutex<Option<mpsc::SyncSender<()>>>,
    /// `CACHED_CONVERSATIONS` (smaller in tests).
    cached_conversations: usize,
}

/// The writer connection's page cache (KiB). A batch across many conversations dirties about
/// two pages per message (each conversation's leaf of the `(conv_id, seq)` index, each
/// sender's leaf of the client-id index; before schema 9, the conversation's leaf of the
/// messages themselves); with 8 MiB, a batch of thousands spilled dirty pages to the WAL before
/// its commit and read them back, and the leaves fell out between batches. 64 MiB holds a
/// large batch's pages: with batches of up to 16,384 (`[store] max_batch`) the persist
/// benchmark over 10,000 conversations went from 20-24k to 47-76k msg/s (65,536: 75-90k;
/// 128 MiB was no faster there). (An earlier note held
/// 64 MiB slower for small commits; the per-commit cache work SQLite does walks the dirty
/// pages, not the cache: see BENCHMARKS.md, issue 23 sixth session, for the small-commit runs.)
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// The checkpoint thread finishes the log (see `start_checkpointer`) once it holds this many
/// frames: 16 MiB of 4 KiB pages, a finishing pass about every 70 ms at 10,000 msg/s.
const FINISH_FRAMES: i64 = 4096;

/// The writer's own checkpoint threshold (pages), only a backstop in case the checkpoint thread
/// falls far behind: the thread finishes the log at a quarter of this.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 4 * FINISH_FRAMES;

/// A WAL file left larger than this after a burst is truncated back to it.
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// The checkpoint thread runs after commits, at most this often: between bursts it finds the
/// whole log copied, and the next commit starts the log over.
const CHECKPOINT_MIN_GAP: Duration = Duration::from_millis(10);

/// After commits stop for this long, the page caches are emptied and their memory given back:
/// the writer's cache (`WRITER_CACHE_KIB`) fills in a burst across many conversations and would
/// otherwise stay resident for as long as the server is quiet (83 MiB above idle after a p2p
/// burst over 10,000 conversations, 3 MiB after release). The next commit reads its pages back
/// from the operating system's cache.
const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(2);

/// ...and it rests this many times the CPU time its last checkpoint used: under a saturating
/// load checkpoints take at most a fifth of the CPU, so they do not starve the persister when
/// both share one core. (CPU time, not wall time: most of a checkpoint's wall time is fsync,
/// and resting after it let the log reach the writer's threshold at 10,000 msg/s.)
const CHECKPOINT_REST_FACTOR: u32 = 4;

/// Conversations whose last seq (`Sequencer`) and read-cursor rows (`Writer`) are kept in memory
/// at most. Past it a cache starts over, read back from the tables as conversations write again
/// (one lookup each). Unbounded, they held every conversation written to since the start, about
/// 160 bytes each: a server running for weeks over millions of conversations only grew. At this
/// bound they hold about 40 MiB; a server with more conversations than this writing at once pays
/// a lookup per message after each start-over.
const CACHED_CONVERSATIONS: usize = 256 * 1024;

/// The persister's connection and what it remembers between batches.
struct Writer {
    conn: Connection,
    /// The users of each conversation known to have a read cursor row (looked up by `&str`,
    /// without building a key per message).
    cursors: HashMap<String, Vec<u64>>,
}

/// How messages get their numbers, and (in log mode) where a small batch is made durable.
struct Sequencer {
    /// Last seq per conversation (authoritative while the process lives: one writer).
    last_seq: HashMap<String, u64>,
    next_msg_id: Option<u64>,
    /// The commit log, while this process is the database's sole writer (log mode).
    log: Option<commit_log::CommitLog>,
    /// Log mode's read connection, for the lookups a batch needs before it is numbered.
    probe: Option<Connection>,
    /// A record being built (kept for its capacity).
    record: Vec<u8>,
}

impl Sequencer {
    /// Forgets the numbers handed out, to be read again from the database. Only while nothing
    /// is pending: the pending messages' numbers are in no table yet.
    fn forget(&mut self) {
        self.last_seq.clear();
        self.next_msg_id = None;
    }

    /// Starts the last-seq cache over once it holds more than `cached` conversations. Only
    /// while nothing is pending (see `forget`).
    fn bound(&mut self, cached: usize) {
        if self.last_seq.len() > cached {
            self.forget();
        }
    }
}

impl Writer {
    /// Starts the cursor-row cache over once it holds more than `cached` conversations (always
    /// safe: a row not known is inserted with `OR IGNORE`).
    fn bound(&mut self, cached: usize) {
        if self.cursors.len() > cached {
            self.cursors.clear();
        }
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating when needed) and migrates the database file.
    pub fn open(path: &Path, synchronous_full: bool) -> StoreResult<SqliteStore> {
        let mut store = SqliteStore {
            path: path.to_path_buf(),
            synchronous_full,
            readers: Arc::new(Mutex::new(Vec::new())),
            writer: Arc::new(Mutex::new(Writer {
                conn: Self::connect_writer(path, synchronous_full)?,
                cursors: HashMap::new(),
            })),
            sequencer: Arc::new(Mutex::new(Sequencer {
                last_seq: HashMap::new(),
                next_msg_id: None,
                log: None,
                probe: None,
                record: Vec::new(),
            })),
            pending: Arc::new(logged::Pending::default()),
            checkpointer: None,
            heavy_load: Arc::new(AtomicBool::new(false)),
            applier: Mutex::new(None),
            cached_conversations: CACHED_CONVERSATIONS,
        };
        store.migrate()?;
        store.checkpointer = Some(Self::start_checkpointer(
            path,
            synchronous_full,
            store.writer.clone(),
            store.readers.clone(),
            store.heavy_load.clone(),
        )?);
        Ok(store)
    }

    /// The persister's connection: a page cache large enough that a batch's index pages stay in
    /// memory (with SQLite's 2 MiB default, a large batch spilled pages to the WAL mid-transaction
    /// and read them back, half the time of a batch).
    fn connect_writer(path: &Path, synchronous_full: bool) -> StoreResult<Connection> {
        let conn = Self::connect(path, synchronous_full)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(unavailable)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
            .map_err(unavailable)?;
        Ok(conn)
    }

    /// Checkpoints run on a thread of their own: a checkpoint copies the WAL into the database
    /// file, which took the persister (and every message waiting for its ack) several
    /// milliseconds each time it ran inside a commit. PASSIVE checkpoints never block the writer.
    ///
    /// Passes cannot bound the WAL alone: under steady writes no pass finds the whole log
    /// copied (a commit lands while it syncs), and SQLite starts the log over only after one
    /// has (the file grew to 4 GiB in the persist benchmark). So once the log is past
    /// `FINISH_FRAMES` the thread finishes it in a pass with the persister held off, and the next
    /// commit starts the log over. That pass is short (about 1.5 ms at 10,000 msg/s) because
    /// the two passes just before it have copied and flushed all but the last milliseconds of
    /// commits; the thread flushes the database file itself after each pass, since SQLite does
    /// so only in a pass that copies the whole log. (When the writer's own autocheckpoint did
    /// this job, its large fsyncs stalled commits for 3-5 ms fifteen times a second at 10,000
    /// msg/s: that was the p99 latency, 2.5-6 ms.)
    fn start_checkpointer(
        path: &Path,
        synchronous_full: bool,
        writer: Arc<Mutex<Writer>>,
        readers: Arc<Mutex<Vec<Connection>>>,
        heavy_load: Arc<AtomicBool>,
    ) -> StoreResult<mpsc::SyncSender<()>> {
        let checkpointer = Checkpointer {
            conn: Self::connect(path, synchronous_full)?,
            db_file: std::fs::File::open(path)
                .map_err(|e| StoreError::unavailable(format!("checkpoint thread: {e}")))?,
            writer,
            readers,
        };
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Until the store is dropped (the sender with it).
                let mut wrote = false;
                loop {
                    match woken.recv_timeout(RELEASE_AFTER_IDLE) {
                        Ok(()) => wrote = true,
                        Err(RecvTimeoutError::Timeout) => {
                            if std::mem::take(&mut wrote) {
                                checkpointer.release_memory();
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    let started = thread_cpu_time();
                    // A light load's rounds make way for the reactor and the persister while
                    // they have work: they may share the core, and this is off their path.
                    // Under a heavy load (batches the log could not take) they run straight
                    // through: a checkpoint that fell behind would leave the log to the
                    // writer's own, whose flushes stall the persister.
                    let light = !heavy_load.swap(false, Ordering::Relaxed);
                    checkpointer.round(light);
                    let rest = thread_cpu_time().saturating_sub(started) * CHECKPOINT_REST_FACTOR;
                    std::thread::sleep(rest.max(CHECKPOINT_MIN_GAP));
                }
                // Last one on a clean shutdown, so the WAL left behind is small.
                let truncate = "PRAGMA wal_checkpoint(TRUNCATE)";
                let _ = checkpointer.conn.query_row(truncate, [], |_| Ok(()));
            })
            .map_err(|e| StoreError::unavailable(format!("checkpoint thread: {e}")))?;
        Ok(wake)
    }

    fn connect(path: &Path, synchronous_full: bool) -> StoreResult<Connection> {
        pacing::register().map_err(|rc| {
            StoreError::unavailable(format!("sqlite: registering the pacing VFS: code {rc}"))
        })?;
        let conn = Connection::open_with_flags_and_vfs(
            path,
            rusqlite::OpenFlags::default(),
            pacing::VFS_NAME,
        )
        .map_err(unavailable)?;
        // A no-op on the reactor's and the persister's threads (see `pacing`).
        conn.progress_handler(pacing::STEPS_PER_CHECK, Some(pacing::on_steps));
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )
        .map_err(unavailable)?;
        Ok(conn)
    }

    fn migrate(&self) -> StoreResult<()> {
        let mut w = self.lock_writer();
        let version: i64 = w
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(unavailable)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            if let Some((n, what)) = PER_MESSAGE_MIGRATIONS.iter().find(|m| m.0 == i + 1) {
                // Say how long writes will wait.
                let messages: Option<i64> = w
                    .conn
                    .query_row("SELECT MAX(msg_id) FROM messages", [], |r| r.get(0))
                    .map_err(unavailable)?;
                let messages = messages.unwrap_or(0);
                if messages > 0 {
                    log::warn!(
                        "store: sqlite migration {n} {what}, about {messages} messages; writes wait until it is done"
                    );
                }
            }
            let tx = w.conn.transaction().map_err(unavailable)?;
            tx.execute_batch(sql).map_err(unavailable)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            log::info!("store: applied sqlite migration {}", i + 1);
        }
        Ok(())
    }

    /// The writer. The apply thread may hold it while it waits for the foreground
    /// (`pacing`); a thread waiting for it here tells the gate, so the apply goes on and lets
    /// go instead of waiting for this thread (the persister, say) to finish.
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        let _need = crate::foreground::GATE.need_background();
        lock_ignoring_poison(&self.writer)
    }

    fn lock_sequencer(&self) -> std::sync::MutexGuard<'_, Sequencer> {
        lock_ignoring_poison(&self.sequencer)
    }

    /// Runs `f` on a pooled reader connection.
    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let pooled = match self.readers.lock() {
            Ok(mut pool) => pool.pop(),
            Err(p) => p.into_inner().pop(),
        };
        let conn = match pooled {
            Some(c) => c,
            None => Self::connect(&self.path, self.synchronous_full)?,
        };
        let result = f(&conn).map_err(unavailable);
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < 16 {
                pool.push(conn);
            }
        }
        result
    }

    /// Runs `f` in a write transaction on a pooled connection (SQLite serialises writers).
    fn with_tx<T>(&self, f: impl FnOnce(&Transaction) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = match self.readers.lock() {
            Ok(mut pool) => pool.pop(),
            Err(p) => p.into_inner().pop(),
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => Self::connect(&self.path, self.synchronous_full)?,
        };
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let value = f(&tx)?;
            tx.commit().map_err(unavailable)?;
            Ok(value)
        })();
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < 16 {
                pool.push(conn);
            }
        }
        result
    }
}

/// CPU time used by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The checkpoint thread's side: its own connection, the database file (to flush it), and the
/// writer (to hold off while it finishes the log).
struct Checkpointer {
    conn: Connection,
    db_file: std::fs::File,
    writer: Arc<Mutex<Writer>>,
    /// The pooled readers, whose caches are emptied with the writer's.
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl Checkpointer {
    /// Empties every connection's page cache and returns the freed memory to the kernel. In the
    /// server SQLite allocates on jemalloc (`use_jemalloc`), whose background thread returns
    /// freed pages on its own; where SQLite was left on the C library's malloc (a process that
    /// opened a database before configuring it, the tests), that malloc keeps freed memory in
    /// its arenas (one per thread that wrote) until trimmed, hence the trim.
    fn release_memory(&self) {
        let release = |c: &Connection| {
            // SAFETY: a valid handle of a live connection this thread holds (the writer's under
            // its lock, the pool's under the pool's): SQLite frees only unpinned cache pages.
            let rc = unsafe { rusqlite::ffi::sqlite3_db_release_memory(c.handle()) };
            if rc != 0 {
                log::debug!("store: releasing sqlite cache memory failed: code {rc}");
            }
        };
        release(&lock_ignoring_poison(&self.writer).conn);
        release(&self.conn);
        if let Ok(pool) = self.readers.lock() {
            pool.iter().for_each(release);
        }
        // SAFETY: malloc_trim only hands free pages of the C allocator back to the kernel; it
        // touches no live allocation.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// One round after commits: a pass, and once the log is past `FINISH_FRAMES` a second one
    /// (so that only the last few milliseconds of commits are left) and the finishing pass with
    /// the writer held off. Returns whether it finished the log.
    ///
    /// (A pass reports the log as it was when it began, and commits go on while it syncs: a
    /// pass that copied every frame it saw has not necessarily finished the log.)
    ///
    /// `paced`: the first pass makes way for the reactor and the persister (`pacing`). The other
    /// two always run straight through, since the last holds the writer off and the persister
    /// may be waiting for it.
    fn round(&self, paced: bool) -> bool {
        pacing::set_background(paced);
        let first = self.pass(true);
        pacing::set_background(false);
        match first {
            Some(log) if log >= FINISH_FRAMES => {
                self.pass(true);
                let _held_off = lock_ignoring_poison(&self.writer);
                // No flush of our own here: SQLite flushes the file after a pass that copies
                // the whole log, which this one does with no commit in between.
                self.pass(false).is_some()
            }
            _ => false,
        }
    }

    /// One PASSIVE checkpoint, then (if `flush`) the database file flushed: SQLite flushes it
    /// only in a pass that copies the whole log. Returns the frames in the log when the pass
    /// began, or None when it failed (logged) or another checkpoint was running.
    fn pass(&self, flush: bool) -> Option<i64> {
        let log = match self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            }) {
            Ok((0, log)) => Some(log),
            Ok(_) => None,
            Err(e) => {
                log::warn!("store: sqlite checkpoint failed: {e}");
                None
            }
        };
        if flush && log.is_some() {
            if let Err(e) = self.db_file.sync_data() {
                log::warn!("store: flushing the sqlite database file failed: {e}");
            }
        }
        log
    }
}

/// The writer's state stays consistent through a panic elsewhere (it is reloaded after any
/// failed batch), so a poisoned lock is taken as it is.
fn lock_ignoring_poison<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match lock.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

const USER_COLS: &str =
    "id, app_uid, name, head_img, user_type, created_at, last_login_at, login_count";

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        uid: r.get::<_, i64>(0)? as u64,
        app_uid: r.get(1)?,
        name: r.get(2)?,
        head_img: r.get(3)?,
        user_type: r.get(4)?,
        created_at: r.get(5)?,
        last_login_at: r.get(6)?,
        login_count: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::messages::tests::runs;
    use super::*;

    pub(super) fn batch(from: u64, n: u64, tag: &str) -> Vec<NewMessage> {
        (0..n)
            .map(|i| NewMessage {
                conv_id: format!("p_{from}_{}", 1_000 + i),
                chat_type: 0,
                from_id: from,
                to_id: 1_000 + i,
                msg_type: 0,
                body: format!("\"{tag} {i}\""),
                client_msg_id: Some(format!("{tag}-{i}")),
                created_at: 1,
            })
            .collect()
    }

    /// Under steady commits no pass finds the log finished, and SQLite starts the log over only
    /// after one has: the rounds must finish it once it is past the threshold, long before the
    /// writer's own backstop (at four times the threshold) would, and keep every message.
    #[test]
    fn idle_release_empties_the_writers_page_cache() {
        fn cache_used(c: &Connection) -> i32 {
            let (mut cur, mut high) = (0, 0);
            // SAFETY: a valid handle of a live connection, and two out-parameters.
            let rc = unsafe {
                rusqlite::ffi::sqlite3_db_status(
                    c.handle(),
                    rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                    &mut cur,
                    &mut high,
                    0,
                )
            };
            assert_eq!(rc, 0);
            cur
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = SqliteStore::open(&path, false).unwrap();
        s.checkpointer = None;
        // The checkpoint thread empties the log as it stops, and a writer that finds the log
        // started over drops its cache: wait for that before filling the cache, or it can
        // land between the batches below and leave only the last ones cached.
        let wal = dir.path().join("t.db-wal");
        let waiting = std::time::Instant::now();
        while std::fs::metadata(&wal).map_or(0, |m| m.len()) > 0 {
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "the log was never emptied"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // 10,000 conversations: their leaves fill the writer's cache (written in conversation
        // order they pack densely: 5,000 came to just over 1 MiB, 10,000 to about 2 MiB).
        for round in 0..10 {
            s.append_batch(&batch(7 + round, 1000, &format!("r{round}")))
                .unwrap();
        }
        let before = cache_used(&s.lock_writer().conn);
        assert!(before > 1 << 20, "the writer's cache holds {before} bytes");
        let cp = Checkpointer {
            conn: SqliteStore::connect(&path, false).unwrap(),
            db_file: std::fs::File::open(&path).unwrap(),
            writer: s.writer.clone(),
            readers: s.readers.clone(),
        };
        cp.release_memory();
        let after = cache_used(&s.lock_writer().conn);
        assert!(after < before / 10, "{before} -> {after} bytes");
        // The store goes on working from a cold cache.
        s.append_batch(&batch(7, 10, "later")).unwrap();
    }

    /// Version 9 re-keys `messages` by msg_id and version 11 finds them through runs: a database
    /// written by version 8 keeps every message, its order in each conversation and its resend
    /// protection, and goes on from the ids it had.
    #[test]
    fn messages_written_before_version_9_survive_the_rekeying() {
        // The log line that announces the copy names the right migration.
        assert!(MIGRATIONS[REKEY_MIGRATION - 1].contains("CREATE TABLE messages_by_id"));
        assert!(MIGRATIONS[RUNS_MIGRATION - 1].contains("CREATE TABLE message_runs"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let mut c = Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            for sql in &MIGRATIONS[..8] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 8).unwrap();
            // Two conversations, interleaved, ids not in (conv_id, seq) order.
            for (msg_id, conv, seq) in [(1, "p_2_9", 1), (2, "p_1_9", 1), (3, "p_2_9", 2)] {
                tx.execute(
                    "INSERT INTO messages (conv_id, seq, msg_id, client_msg_id, from_id, to_id,
                     chat_type, msg_type, body, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 9, 0, 0, ?6, 5)",
                    params![
                        conv,
                        seq,
                        msg_id,
                        format!("c{msg_id}"),
                        &conv[2..3],
                        format!("\"m{msg_id}\"")
                    ],
                )
                .unwrap();
            }
            tx.execute_batch(
                "INSERT INTO conversations (conv_id, chat_type, last_seq, last_msg_id, updated_at)
                 VALUES ('p_2_9', 0, 2, 3, 5), ('p_1_9', 0, 1, 2, 5);
                 INSERT INTO read_cursors (user_id, conv_id, read_seq) VALUES (2, 'p_2_9', 0)",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = SqliteStore::open(&path, false).unwrap();
        let version: i64 = s
            .with_conn(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let got: Vec<(u64, u64, String)> = s
            .sync("p_2_9", 0, 10)
            .unwrap()
            .into_iter()
            .map(|m| (m.msg_id, m.seq, m.body))
            .collect();
        assert_eq!(got, vec![(1, 1, "\"m1\"".into()), (3, 2, "\"m3\"".into())]);
        // Version 11 gave each message written before it a run of its own.
        assert_eq!(runs(&s, "p_2_9"), vec![(1, 1, 1), (2, 3, 1)]);
        assert_eq!(runs(&s, "p_1_9"), vec![(1, 2, 1)]);
        let newest_first: Vec<u64> = s
            .history("p_2_9", 0, 10)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(newest_first, vec![2, 1]);
        let listed = s.conversations(2, 10).unwrap();
        assert_eq!(listed[0].last.as_ref().map(|m| m.msg_id), Some(3));
        assert_eq!(s.message(2).unwrap().unwrap().conv_id, "p_1_9");
        let next = |cmid: &str| NewMessage {
            conv_id: "p_2_9".into(),
            chat_type: 0,
            from_id: 2,
            to_id: 9,
            msg_type: 0,
            body: "\"again\"".into(),
            client_msg_id: Some(cmid.into()),
            created_at: 6,
        };
        // A resend of a message stored before the re-keying is still recognised...
        let out = s.append_batch(&[next("c3")]).unwrap();
        assert!(out[0].duplicate);
        assert_eq!((out[0].message.msg_id, out[0].message.seq), (3, 2));
        // ...and a new message continues both the ids and the conversation's seqs.
        let out = s.append_batch(&[next("c4")]).unwrap();
        assert!(!out[0].duplicate);
        assert_eq!((out[0].message.msg_id, out[0].message.seq), (4, 3));
        assert_eq!(runs(&s, "p_2_9"), vec![(1, 1, 1), (2, 3, 1), (3, 4, 1)]);
        let seqs: Vec<u64> = s
            .sync("p_2_9", 1, 10)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![2, 3]);
    }

    #[test]
    fn rounds_under_steady_commits_finish_the_log_past_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = SqliteStore::open(&path, false).unwrap();
        // This test drives the rounds itself: stop the store's own thread.
        s.checkpointer = None;
        let s = Arc::new(s);
        let cp = Checkpointer {
            conn: SqliteStore::connect(&path, false).unwrap(),
            db_file: std::fs::File::open(&path).unwrap(),
            writer: s.writer.clone(),
            readers: s.readers.clone(),
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committer = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 2_000_000 {
                    s.append_batch(&batch(1 + sent / 100, 100, &format!("m{sent}")))
                        .unwrap();
                    sent += 100;
                }
                sent
            })
        };
        let (mut finished, mut largest) = (0, 0);
        let started = std::time::Instant::now();
        while finished < 3 && started.elapsed() < Duration::from_secs(20) {
            if cp.round(false) {
                finished += 1;
            }
            largest = largest.max(cp.pass(true).unwrap_or(0));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = committer.join().unwrap();
        assert_eq!(finished, 3, "rounds finished the log {finished} times");
        assert!(largest >= FINISH_FRAMES, "the log reached {largest} frames");
        assert!(
            largest < 3 * FINISH_FRAMES,
            "the log grew to {largest} frames: the rounds did not finish it"
        );
        let count: i64 = s
            .with_conn(|c| c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(count as u64, sent);
    }
}
