//! The embedded store: one SQLite file in WAL mode. Readers take connections from a small pool;
//! the persister has its own writer connection. `synchronous = NORMAL` makes each commit durable
//! against a process crash (`kill -9`): the WAL is written before the commit returns; only a power
//! loss can take the last commits, and `[store] sqlite_synchronous = "full"` closes that too.

use super::*;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

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
];

pub struct SqliteStore {
    path: PathBuf,
    synchronous_full: bool,
    readers: Mutex<Vec<Connection>>,
    writer: Arc<Mutex<Writer>>,
    /// Wakes the checkpointer thread after a commit; dropping it stops the thread.
    checkpointer: Option<mpsc::SyncSender<()>>,
}

/// The writer connection's page cache (KiB): 4x SQLite's default. Much larger was slower in
/// the p2p load (SQLite scans its page hash at the end of every write transaction: 10% of the
/// persister's time at 64 MiB).
const WRITER_CACHE_KIB: i64 = 8 * 1024;

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

/// ...and it rests this many times the CPU time its last checkpoint used: under a saturating
/// load checkpoints take at most a fifth of the CPU, so they do not starve the persister when
/// both share one core. (CPU time, not wall time: most of a checkpoint's wall time is fsync,
/// and resting after it let the log reach the writer's threshold at 10,000 msg/s.)
const CHECKPOINT_REST_FACTOR: u32 = 4;

/// The persister's connection and what it remembers between batches.
struct Writer {
    conn: Connection,
    /// Last seq per conversation (authoritative while the process lives: one writer).
    last_seq: HashMap<String, u64>,
    next_msg_id: Option<u64>,
    /// The users of each conversation known to have a read cursor row (looked up by `&str`,
    /// without building a key per message).
    cursors: HashMap<String, Vec<u64>>,
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
            readers: Mutex::new(Vec::new()),
            writer: Arc::new(Mutex::new(Writer {
                conn: Self::connect_writer(path, synchronous_full)?,
                last_seq: HashMap::new(),
                next_msg_id: None,
                cursors: HashMap::new(),
            })),
            checkpointer: None,
        };
        store.migrate()?;
        store.checkpointer = Some(Self::start_checkpointer(
            path,
            synchronous_full,
            store.writer.clone(),
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
    ) -> StoreResult<mpsc::SyncSender<()>> {
        let checkpointer = Checkpointer {
            conn: Self::connect(path, synchronous_full)?,
            db_file: std::fs::File::open(path)
                .map_err(|e| StoreError::unavailable(format!("checkpoint thread: {e}")))?,
            writer,
        };
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Until the store is dropped (the sender with it).
                while woken.recv().is_ok() {
                    let started = thread_cpu_time();
                    checkpointer.round();
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
        let conn = Connection::open(path).map_err(unavailable)?;
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
            let tx = w.conn.transaction().map_err(unavailable)?;
            tx.execute_batch(sql).map_err(unavailable)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            log::info!("store: applied sqlite migration {}", i + 1);
        }
        Ok(())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        lock_ignoring_poison(&self.writer)
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
}

impl Checkpointer {
    /// One round after commits: a pass, and once the log is past `FINISH_FRAMES` a second one
    /// (so that only the last few milliseconds of commits are left) and the finishing pass with
    /// the writer held off. Returns whether it finished the log.
    ///
    /// (A pass reports the log as it was when it began, and commits go on while it syncs: a
    /// pass that copied every frame it saw has not necessarily finished the log.)
    fn round(&self) -> bool {
        match self.pass(true) {
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
fn lock_ignoring_poison(writer: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    match writer.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

const USER_COLS: &str =
    "id, app_uid, name, head_img, user_type, created_at, last_login_at, login_count";

const SESSION_COLS: &str =
    "id, customer_id, agent_id, created_at, assigned_at, closed_at, rating, comment";

const CONSULT_COLS: &str =
    "id, user_id, consultant_id, total_ms, remaining_ms, state, created_at, updated_at";

fn consult_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Consultation> {
    Ok(Consultation {
        id: r.get::<_, i64>(0)? as u64,
        user: r.get::<_, i64>(1)? as u64,
        consultant: r.get::<_, i64>(2)? as u64,
        total_ms: r.get::<_, i64>(3)? as u64,
        remaining_ms: r.get::<_, i64>(4)? as u64,
        ended: r.get::<_, i64>(5)? != 0,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn consult_by_id(c: &Connection, id: u64) -> rusqlite::Result<Option<Consultation>> {
    c.query_row(
        &format!("SELECT {CONSULT_COLS} FROM consultations WHERE id = ?1"),
        params![id as i64],
        consult_row,
    )
    .optional()
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ServiceSession> {
    Ok(ServiceSession {
        id: r.get::<_, i64>(0)? as u64,
        customer: r.get::<_, i64>(1)? as u64,
        agent: r.get::<_, Option<i64>>(2)?.map(|a| a as u64),
        created_at: r.get(3)?,
        assigned_at: r.get(4)?,
        closed_at: r.get(5)?,
        rating: r.get(6)?,
        comment: r.get(7)?,
    })
}

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

const MSG_COLS: &str =
    "msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at";

fn msg_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        msg_id: r.get::<_, i64>(0)? as u64,
        conv_id: r.get(1)?,
        seq: r.get::<_, i64>(2)? as u64,
        chat_type: r.get::<_, i64>(3)? as u8,
        from_id: r.get::<_, i64>(4)? as u64,
        to_id: r.get::<_, i64>(5)? as u64,
        msg_type: r.get::<_, i64>(6)? as u8,
        body: r.get(7)?,
        created_at: r.get(8)?,
    })
}

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group {
        group_id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        owner_id: r.get::<_, i64>(2)? as u64,
        created_at: r.get(3)?,
        history_for_new_members: r.get::<_, i64>(4)? != 0,
    })
}

/// The columns `group_row` reads.
const GROUP_COLS: &str = "g.id, g.name, g.owner_id, g.created_at, g.history_for_new_members";

/// Creates read-cursor rows so a group conversation shows in its members' lists.
fn join_group_conversation(tx: &Transaction, gid: u64, uids: &[u64]) -> rusqlite::Result<()> {
    let conv = format!("g_{gid}");
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO read_cursors (user_id, conv_id, read_seq)
         VALUES (?1, ?2, COALESCE((SELECT last_seq FROM conversations WHERE conv_id = ?2), 0))",
    )?;
    for uid in uids {
        stmt.execute(params![*uid as i64, conv])?;
    }
    Ok(())
}

impl Writer {
    fn append(&mut self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        let Writer {
            conn,
            last_seq,
            next_msg_id,
            cursors,
        } = self;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(batch.len());
        // Seqs and ids handed out in this batch; kept only if the commit succeeds. The batch's
        // own bookkeeping borrows its keys from the batch: no allocation per message.
        let mut seqs: HashMap<&str, u64> = HashMap::new();
        // The caches hold while this writer is the only one. Another process may write to the
        // same file for a moment (a zero-downtime upgrade hands over while the old process
        // drains): every writer numbers messages from MAX(msg_id) + 1 inside its write lock,
        // so a MAX that moved since this writer's last commit means someone else appended, and
        // the cached seqs and cursors are reloaded. One index probe per batch.
        let max: Option<i64> = tx
            .query_row("SELECT MAX(msg_id) FROM messages", [], |r| r.get(0))
            .map_err(unavailable)?;
        let next_free = max.unwrap_or(0) as u64 + 1;
        if *next_msg_id != Some(next_free) {
            if next_msg_id.is_some() {
                log::info!("store: another writer appended to the database; caches reloaded");
            }
            last_seq.clear();
            cursors.clear();
        }
        let mut msg_id = next_free;
        let mut batch_dupes: HashMap<(u64, &str), usize> = HashMap::new();
        let mut new_cursors: Vec<(u64, &str)> = Vec::new();
        let mut sender_reads: HashMap<(u64, &str), u64> = HashMap::new();
        {
            let mut find_dup = tx
                .prepare_cached(&format!(
                    "SELECT {MSG_COLS} FROM messages WHERE from_id = ?1 AND client_msg_id = ?2"
                ))
                .map_err(unavailable)?;
            let mut get_seq = tx
                .prepare_cached("SELECT last_seq FROM conversations WHERE conv_id = ?1")
                .map_err(unavailable)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO messages (conv_id, seq, msg_id, client_msg_id, from_id, to_id,
                     chat_type, msg_type, body, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (from_id, client_msg_id) WHERE client_msg_id IS NOT NULL
                     DO NOTHING",
                )
                .map_err(unavailable)?;
            let mut add_cursor = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO read_cursors (user_id, conv_id, read_seq) VALUES (?1, ?2, 0)",
                )
                .map_err(unavailable)?;
            for m in batch {
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    if let Some(&i) = batch_dupes.get(&(m.from_id, cmid)) {
                        let first: &Appended = &out[i];
                        let message = first.message.clone();
                        out.push(Appended {
                            message,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let prev = match seqs
                    .get(m.conv_id.as_str())
                    .or_else(|| last_seq.get(&m.conv_id))
                {
                    Some(s) => *s,
                    None => get_seq
                        .query_row(params![m.conv_id], |r| r.get::<_, i64>(0))
                        .optional()
                        .map_err(unavailable)?
                        .unwrap_or(0) as u64,
                };
                let seq = prev + 1;
                let id = msg_id;
                // Insert first: the unique index on (from_id, client_msg_id) refuses a resend,
                // and only then is the earlier message looked up. A lookup before every insert
                // cost more than the insert itself.
                let inserted = insert
                    .execute(params![
                        m.conv_id,
                        seq as i64,
                        id as i64,
                        m.client_msg_id,
                        m.from_id as i64,
                        m.to_id as i64,
                        m.chat_type as i64,
                        m.msg_type as i64,
                        m.body,
                        m.created_at
                    ])
                    .map_err(unavailable)?;
                if inserted == 0 {
                    let cmid = m.client_msg_id.as_deref().unwrap_or_default();
                    let message = find_dup
                        .query_row(params![m.from_id as i64, cmid], msg_row)
                        .map_err(unavailable)?;
                    out.push(Appended {
                        message,
                        duplicate: true,
                    });
                    continue;
                }
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    batch_dupes.insert((m.from_id, cmid), out.len());
                }
                seqs.insert(&m.conv_id, seq);
                msg_id += 1;
                // Both sides of a one-to-one conversation list it from its first message on.
                let members: &[u64] = if m.chat_type == 1 {
                    &[]
                } else {
                    &[m.from_id, m.to_id]
                };
                for &uid in members {
                    // (A second message of a new conversation in the same batch inserts again;
                    // the row is there and the insert is ignored.)
                    let known = cursors
                        .get(&m.conv_id)
                        .is_some_and(|users| users.contains(&uid));
                    if uid != 0 && !known {
                        add_cursor
                            .execute(params![uid as i64, m.conv_id])
                            .map_err(unavailable)?;
                        new_cursors.push((uid, &m.conv_id));
                    }
                }
                sender_reads.insert((m.from_id, &m.conv_id), seq);
                out.push(Appended {
                    message: StoredMessage {
                        msg_id: id,
                        conv_id: m.conv_id.clone(),
                        seq,
                        chat_type: m.chat_type,
                        from_id: m.from_id,
                        to_id: m.to_id,
                        msg_type: m.msg_type,
                        body: m.body.clone(),
                        created_at: m.created_at,
                    },
                    duplicate: false,
                });
            }
            let mut upsert_conv = tx
                .prepare_cached(
                    "INSERT INTO conversations (conv_id, chat_type, last_seq, last_msg_id, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(conv_id) DO UPDATE SET last_seq = excluded.last_seq,
                       last_msg_id = excluded.last_msg_id, updated_at = excluded.updated_at",
                )
                .map_err(unavailable)?;
            let mut last_of: HashMap<&str, &Appended> = HashMap::new();
            for a in out.iter().filter(|a| !a.duplicate) {
                last_of.insert(&a.message.conv_id, a);
            }
            for a in last_of.values() {
                let m = &a.message;
                upsert_conv
                    .execute(params![
                        m.conv_id,
                        m.chat_type as i64,
                        m.seq as i64,
                        m.msg_id as i64,
                        m.created_at
                    ])
                    .map_err(unavailable)?;
            }
            // A sender has read their own conversation up to what they sent.
            let mut read = tx
                .prepare_cached(
                    "UPDATE read_cursors SET read_seq = MAX(read_seq, ?3) WHERE user_id = ?1 AND conv_id = ?2",
                )
                .map_err(unavailable)?;
            for ((uid, conv), seq) in &sender_reads {
                read.execute(params![*uid as i64, conv, *seq as i64])
                    .map_err(unavailable)?;
            }
        }
        tx.commit().map_err(unavailable)?;
        for (conv, seq) in seqs {
            match last_seq.get_mut(conv) {
                Some(last) => *last = seq,
                None => {
                    last_seq.insert(conv.to_owned(), seq);
                }
            }
        }
        *next_msg_id = Some(msg_id);
        for (uid, conv) in new_cursors {
            let users = cursors.entry(conv.to_owned()).or_default();
            if !users.contains(&uid) {
                users.push(uid);
            }
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn upsert_app_user(
        &self,
        app_uid: &str,
        profile: &Profile,
        login: bool,
    ) -> StoreResult<(User, bool)> {
        let now = now_ms();
        self.with_tx(|tx| {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM users WHERE app_uid = ?1",
                    params![app_uid],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let created = existing.is_none();
            let id = match existing {
                Some(id) => {
                    tx.execute(
                        "UPDATE users SET name = COALESCE(?2, name), head_img = COALESCE(?3, head_img),
                         user_type = COALESCE(?4, user_type) WHERE id = ?1",
                        params![id, profile.name, profile.head_img, profile.user_type],
                    )
                    .map_err(unavailable)?;
                    id
                }
                None => {
                    tx.execute(
                        "INSERT INTO users (app_uid, name, head_img, user_type, created_at)
                         VALUES (?1, COALESCE(?2, ''), COALESCE(?3, ''), COALESCE(?4, 0), ?5)",
                        params![app_uid, profile.name, profile.head_img, profile.user_type, now],
                    )
                    .map_err(unavailable)?;
                    tx.last_insert_rowid()
                }
            };
            if login {
                tx.execute(
                    "UPDATE users SET last_login_at = ?2, login_count = login_count + 1 WHERE id = ?1",
                    params![id, now],
                )
                .map_err(unavailable)?;
            }
            let user = tx
                .query_row(
                    &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                    params![id],
                    user_row,
                )
                .map_err(unavailable)?;
            Ok((user, created))
        })
    }

    fn user(&self, uid: u64) -> StoreResult<Option<User>> {
        self.with_conn(|c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                params![uid as i64],
                user_row,
            )
            .optional()
        })
    }

    fn existing_users(&self, uids: &[u64]) -> StoreResult<Vec<u64>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
            let mut found = Vec::new();
            for &uid in uids {
                if stmt.exists(params![uid as i64])? {
                    found.push(uid);
                }
            }
            Ok(found)
        })
    }

    fn users(&self, uids: &[u64]) -> StoreResult<Vec<User>> {
        self.with_conn(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"))?;
            let mut found = Vec::with_capacity(uids.len());
            for &uid in uids {
                if let Some(u) = stmt.query_row(params![uid as i64], user_row).optional()? {
                    found.push(u);
                }
            }
            Ok(found)
        })
    }

    fn update_profile(
        &self,
        uid: u64,
        name: Option<&str>,
        head_img: Option<&str>,
    ) -> StoreResult<Option<(User, bool)>> {
        self.with_tx(|tx| {
            let select = format!("SELECT {USER_COLS} FROM users WHERE id = ?1");
            let Some(before) = tx
                .query_row(&select, params![uid as i64], user_row)
                .optional()
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let changed = name.is_some_and(|n| n != before.name)
                || head_img.is_some_and(|h| h != before.head_img);
            if !changed {
                return Ok(Some((before, false)));
            }
            tx.execute(
                "UPDATE users SET name = COALESCE(?2, name), head_img = COALESCE(?3, head_img) WHERE id = ?1",
                params![uid as i64, name, head_img],
            )
            .map_err(unavailable)?;
            let after = tx
                .query_row(&select, params![uid as i64], user_row)
                .map_err(unavailable)?;
            Ok(Some((after, true)))
        })
    }

    fn wechat_login(&self, id: &WechatIdentity, login: bool) -> StoreResult<(User, bool)> {
        let now = now_ms();
        self.with_tx(|tx| {
            let known: Option<i64> = tx
                .query_row(
                    "SELECT user_id FROM wx_identities WHERE appid = ?1 AND openid = ?2",
                    params![id.appid, id.openid],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let (uid, created) = match known {
                Some(uid) => {
                    tx.execute(
                        "UPDATE wx_identities SET session_key = COALESCE(?3, session_key),
                         unionid = COALESCE(?4, unionid), updated_at = ?5
                         WHERE appid = ?1 AND openid = ?2",
                        params![id.appid, id.openid, id.session_key, id.unionid, now],
                    )
                    .map_err(unavailable)?;
                    (uid, false)
                }
                None => {
                    let by_union: Option<i64> = match &id.unionid {
                        Some(u) => tx
                            .query_row("SELECT id FROM users WHERE unionid = ?1", params![u], |r| {
                                r.get(0)
                            })
                            .optional()
                            .map_err(unavailable)?,
                        None => None,
                    };
                    let (uid, created) = match by_union {
                        Some(uid) => (uid, false),
                        None => {
                            tx.execute(
                                "INSERT INTO users (name, created_at) VALUES ('', ?1)",
                                params![now],
                            )
                            .map_err(unavailable)?;
                            (tx.last_insert_rowid(), true)
                        }
                    };
                    tx.execute(
                        "INSERT INTO wx_identities (appid, openid, user_id, unionid, session_key,
                         created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                        params![id.appid, id.openid, uid, id.unionid, id.session_key, now],
                    )
                    .map_err(unavailable)?;
                    (uid, created)
                }
            };
            if let Some(u) = &id.unionid {
                // Learn the unionid (WeChat gives it only once the app is bound to an open
                // platform account); another user holding it already keeps it.
                tx.execute(
                    "UPDATE users SET unionid = ?2 WHERE id = ?1 AND unionid IS NULL
                     AND NOT EXISTS (SELECT 1 FROM users WHERE unionid = ?2)",
                    params![uid, u],
                )
                .map_err(unavailable)?;
            }
            if login {
                tx.execute(
                    "UPDATE users SET last_login_at = ?2, login_count = login_count + 1 WHERE id = ?1",
                    params![uid, now],
                )
                .map_err(unavailable)?;
            }
            let user = tx
                .query_row(
                    &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                    params![uid],
                    user_row,
                )
                .map_err(unavailable)?;
            Ok((user, created))
        })
    }

    fn set_cs_route(&self, uid: u64, appid: &str, openid: &str) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO wx_cs_routes (user_id, appid, openid, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id) DO UPDATE SET appid = excluded.appid,
                 openid = excluded.openid, updated_at = excluded.updated_at",
                params![uid, appid, openid, now],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn cs_route(&self, uid: u64) -> StoreResult<Option<(String, String)>> {
        self.with_tx(|tx| {
            tx.query_row(
                "SELECT appid, openid FROM wx_cs_routes WHERE user_id = ?1",
                params![uid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn open_service_session(&self, customer: u64) -> StoreResult<ServiceSession> {
        let now = now_ms();
        self.with_tx(|tx| {
            let existing = tx
                .query_row(
                    &format!("SELECT {SESSION_COLS} FROM service_sessions WHERE customer_id = ?1 AND closed_at IS NULL"),
                    params![customer as i64],
                    session_row,
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(s) = existing {
                return Ok(s);
            }
            tx.execute(
                "INSERT INTO service_sessions (customer_id, created_at) VALUES (?1, ?2)",
                params![customer as i64, now],
            )
            .map_err(unavailable)?;
            Ok(ServiceSession {
                id: tx.last_insert_rowid() as u64,
                customer,
                agent: None,
                created_at: now,
                assigned_at: None,
                closed_at: None,
                rating: None,
                comment: String::new(),
            })
        })
    }

    fn assign_service_session(&self, customer: u64, agent: Option<u64>) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE service_sessions SET agent_id = ?2,
                     assigned_at = CASE WHEN ?2 IS NULL THEN NULL ELSE ?3 END
                     WHERE customer_id = ?1 AND closed_at IS NULL",
                    params![customer as i64, agent.map(|a| a as i64), now],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound("open service session"));
            }
            Ok(())
        })
    }

    fn close_service_session(&self, customer: u64) -> StoreResult<Option<u64>> {
        let now = now_ms();
        self.with_tx(|tx| {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM service_sessions WHERE customer_id = ?1 AND closed_at IS NULL",
                    params![customer as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(id) = id {
                tx.execute(
                    "UPDATE service_sessions SET closed_at = ?2 WHERE id = ?1",
                    params![id, now],
                )
                .map_err(unavailable)?;
            }
            Ok(id.map(|i| i as u64))
        })
    }

    fn rate_service_session(
        &self,
        id: u64,
        customer: u64,
        rating: u8,
        comment: &str,
    ) -> StoreResult<()> {
        self.with_tx(|tx| {
            let row: Option<(Option<i64>, Option<i64>)> = tx
                .query_row(
                    "SELECT closed_at, rating FROM service_sessions WHERE id = ?1 AND customer_id = ?2",
                    params![id as i64, customer as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            match row {
                None => Err(StoreError::NotFound("service session")),
                Some((None, _)) => Err(StoreError::Conflict("the session is still open")),
                Some((_, Some(_))) => Err(StoreError::Conflict("the session is already rated")),
                Some((Some(_), None)) => {
                    tx.execute(
                        "UPDATE service_sessions SET rating = ?2, comment = ?3 WHERE id = ?1",
                        params![id as i64, rating, comment],
                    )
                    .map_err(unavailable)?;
                    Ok(())
                }
            }
        })
    }

    fn open_service_sessions(&self) -> StoreResult<Vec<ServiceSession>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {SESSION_COLS} FROM service_sessions WHERE closed_at IS NULL
                 ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], session_row)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    fn create_visitor(&self) -> StoreResult<User> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO users (name, user_type, created_at, last_login_at, login_count)
                 VALUES ('访客', ?1, ?2, ?2, 1)",
                params![USER_TYPE_VISITOR, now],
            )
            .map_err(unavailable)?;
            tx.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                params![tx.last_insert_rowid()],
                user_row,
            )
            .map_err(unavailable)
        })
    }

    fn purge_idle_visitors(&self, idle_before: i64, limit: u32) -> StoreResult<Vec<u64>> {
        self.with_tx(|tx| {
            let ids: Vec<i64> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT u.id FROM users u
                         LEFT JOIN conversations c ON c.conv_id = 's_' || u.id
                         WHERE u.user_type = ?1 AND u.last_login_at < ?2
                           AND COALESCE(c.updated_at, 0) < ?2
                           AND NOT EXISTS (SELECT 1 FROM service_sessions s
                                           WHERE s.customer_id = u.id AND s.closed_at IS NULL)
                         ORDER BY u.last_login_at, u.id LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![USER_TYPE_VISITOR, idle_before, limit], |r| r.get(0))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            for id in &ids {
                let conv = format!("s_{id}");
                for sql in [
                    "DELETE FROM messages WHERE conv_id = ?1",
                    "DELETE FROM conversations WHERE conv_id = ?1",
                    "DELETE FROM read_cursors WHERE conv_id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut s| s.execute(params![conv]))
                        .map_err(unavailable)?;
                }
                for sql in [
                    "DELETE FROM tokens WHERE user_id = ?1",
                    "DELETE FROM read_cursors WHERE user_id = ?1",
                    "DELETE FROM users WHERE id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut s| s.execute(params![id]))
                        .map_err(unavailable)?;
                }
            }
            Ok(ids.into_iter().map(|v| v as u64).collect())
        })
    }

    fn convert_visitor(&self, visitor: u64, uid: u64) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            let kind: Option<i64> = tx
                .query_row(
                    "SELECT user_type FROM users WHERE id = ?1",
                    params![visitor as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            match kind {
                None => return Err(StoreError::NotFound("visitor")),
                Some(USER_TYPE_VISITOR) => {}
                Some(_) => return Err(StoreError::Conflict("not a visitor (or already converted)")),
            }
            tx.execute(
                "UPDATE users SET user_type = ?2 WHERE id = ?1",
                params![visitor as i64, USER_TYPE_CONVERTED],
            )
            .map_err(unavailable)?;
            let uid_has_open: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM service_sessions WHERE customer_id = ?1 AND closed_at IS NULL)",
                    params![uid as i64],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            if uid_has_open {
                tx.execute(
                    "UPDATE service_sessions SET closed_at = ?2 WHERE customer_id = ?1 AND closed_at IS NULL",
                    params![visitor as i64, now],
                )
                .map_err(unavailable)?;
            }
            tx.execute(
                "UPDATE service_sessions SET customer_id = ?2 WHERE customer_id = ?1",
                params![visitor as i64, uid as i64],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn create_consultation(
        &self,
        user: u64,
        consultant: u64,
        duration_ms: u64,
    ) -> StoreResult<Consultation> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO consultations (user_id, consultant_id, total_ms, remaining_ms, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?4)",
                params![user as i64, consultant as i64, duration_ms as i64, now],
            )
            .map_err(unavailable)?;
            consult_by_id(tx, tx.last_insert_rowid() as u64)
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound("consultation"))
        })
    }

    fn extend_consultation(&self, id: u64, extra_ms: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE consultations SET total_ms = total_ms + ?2, remaining_ms = remaining_ms + ?2,
                     state = 0, ended_at = NULL, updated_at = ?3 WHERE id = ?1",
                    params![id as i64, extra_ms as i64, now],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound("consultation"));
            }
            consult_by_id(tx, id)
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound("consultation"))
        })
    }

    fn end_consultation(&self, id: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE consultations SET remaining_ms = 0, state = 1,
                     ended_at = COALESCE(ended_at, ?2), updated_at = ?2 WHERE id = ?1",
                    params![id as i64, now],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound("consultation"));
            }
            consult_by_id(tx, id)
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound("consultation"))
        })
    }

    fn consultation(&self, id: u64) -> StoreResult<Option<Consultation>> {
        self.with_conn(|c| consult_by_id(c, id))
    }

    fn active_consultations(&self, uid: u64) -> StoreResult<Vec<Consultation>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CONSULT_COLS} FROM consultations WHERE user_id = ?1 AND state = 0
                 UNION SELECT {CONSULT_COLS} FROM consultations WHERE consultant_id = ?1 AND state = 0
                 ORDER BY id"
            ))?;
            let rows = stmt
                .query_map(params![uid as i64], consult_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    fn use_consultation_time(&self, used: &[(u64, u64, bool)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.with_tx(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE consultations SET remaining_ms = MAX(remaining_ms - ?2, 0),
                     state = CASE WHEN ?3 THEN 1 ELSE state END,
                     ended_at = CASE WHEN ?3 THEN ?4 ELSE ended_at END, updated_at = ?4
                     WHERE id = ?1",
                )
                .map_err(unavailable)?;
            for (id, used_ms, ended) in used {
                stmt.execute(params![*id as i64, *used_ms as i64, *ended, now])
                    .map_err(unavailable)?;
            }
            Ok(())
        })
    }

    fn wechat_session_key(&self, uid: u64, appid: &str) -> StoreResult<Option<String>> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT session_key FROM wx_identities WHERE user_id = ?1 AND appid = ?2
                 AND session_key IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
                params![uid as i64, appid],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn put_token(&self, token_hash: &[u8], uid: u64, expires_at: i64) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            // Expired tokens of this user go at the same time: the table does not grow forever.
            tx.execute(
                "DELETE FROM tokens WHERE user_id = ?1 AND expires_at <= ?2",
                params![uid as i64, now],
            )
            .map_err(unavailable)?;
            tx.execute(
                "INSERT INTO tokens (token_hash, user_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, uid as i64, expires_at, now],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn token_user(&self, token_hash: &[u8], now: i64) -> StoreResult<Option<u64>> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT user_id FROM tokens WHERE token_hash = ?1 AND expires_at > ?2",
                params![token_hash, now],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|u| u as u64))
        })
    }

    fn delete_token(&self, token_hash: &[u8]) -> StoreResult<()> {
        self.with_tx(|tx| {
            tx.execute(
                "DELETE FROM tokens WHERE token_hash = ?1",
                params![token_hash],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn friends(&self, uid: u64) -> StoreResult<Vec<u64>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT friend_id FROM friends WHERE user_id = ?1 ORDER BY friend_id",
            )?;
            let rows = stmt.query_map(params![uid as i64], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|v| v as u64)).collect()
        })
    }

    fn add_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            for (x, y) in [(a, b), (b, a)] {
                tx.execute(
                    "INSERT OR IGNORE INTO friends (user_id, friend_id, created_at) VALUES (?1, ?2, ?3)",
                    params![x as i64, y as i64, now],
                )
                .map_err(unavailable)?;
                tx.execute(
                    "DELETE FROM friend_requests WHERE from_id = ?1 AND to_id = ?2",
                    params![x as i64, y as i64],
                )
                .map_err(unavailable)?;
            }
            Ok(())
        })
    }

    fn remove_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        self.with_tx(|tx| {
            tx.execute(
                "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2) OR (user_id = ?2 AND friend_id = ?1)",
                params![a as i64, b as i64],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn add_friend_request(&self, from: u64, to: u64, note: &str) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO friend_requests (from_id, to_id, note, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(from_id, to_id) DO UPDATE SET note = excluded.note, created_at = excluded.created_at",
                params![from as i64, to as i64, note, now],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn take_friend_request(&self, from: u64, to: u64) -> StoreResult<bool> {
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "DELETE FROM friend_requests WHERE from_id = ?1 AND to_id = ?2",
                    params![from as i64, to as i64],
                )
                .map_err(unavailable)?;
            Ok(n > 0)
        })
    }

    fn friend_requests(&self, uid: u64) -> StoreResult<Vec<(u64, String, i64)>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT from_id, note, created_at FROM friend_requests WHERE to_id = ?1 ORDER BY created_at",
            )?;
            let rows = stmt.query_map(params![uid as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })
    }

    fn create_group(
        &self,
        owner: u64,
        name: &str,
        members: &[u64],
        history_for_new_members: bool,
    ) -> StoreResult<Group> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO groups (name, owner_id, created_at, history_for_new_members)
                 VALUES (?1, ?2, ?3, ?4)",
                params![name, owner as i64, now, i64::from(history_for_new_members)],
            )
            .map_err(unavailable)?;
            let gid = tx.last_insert_rowid() as u64;
            let mut all: Vec<u64> = vec![owner];
            all.extend(members.iter().copied().filter(|m| *m != owner));
            all.sort_unstable();
            all.dedup();
            {
                let mut add = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO group_members (group_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(unavailable)?;
                for uid in &all {
                    add.execute(params![
                        gid as i64,
                        *uid as i64,
                        i64::from(*uid == owner),
                        now
                    ])
                    .map_err(unavailable)?;
                }
            }
            join_group_conversation(tx, gid, &all).map_err(unavailable)?;
            Ok(Group {
                group_id: gid,
                name: name.to_string(),
                owner_id: owner,
                created_at: now,
                history_for_new_members,
            })
        })
    }

    fn group(&self, gid: u64) -> StoreResult<Option<Group>> {
        self.with_conn(|c| {
            c.query_row(
                &format!("SELECT {GROUP_COLS} FROM groups g WHERE g.id = ?1"),
                params![gid as i64],
                group_row,
            )
            .optional()
        })
    }

    fn group_members(&self, gid: u64) -> StoreResult<Option<Vec<u64>>> {
        self.with_conn(|c| {
            if !c
                .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")?
                .exists(params![gid as i64])?
            {
                return Ok(None);
            }
            let mut stmt = c.prepare_cached(
                "SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY user_id",
            )?;
            let rows = stmt.query_map(params![gid as i64], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|v| v as u64))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        })
    }

    fn add_group_members(&self, gid: u64, uids: &[u64]) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            let exists: bool = tx
                .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")
                .and_then(|mut s| s.exists(params![gid as i64]))
                .map_err(unavailable)?;
            if !exists {
                return Err(StoreError::NotFound("group"));
            }
            {
                // The join seq is read in the write transaction: the persister's commits of
                // this conversation are serialised with it, so it is exactly the last seq.
                let mut add = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO group_members (group_id, user_id, role, joined_at, join_seq)
                         VALUES (?1, ?2, 0, ?3, COALESCE((SELECT last_seq FROM conversations WHERE conv_id = ?4), 0))",
                    )
                    .map_err(unavailable)?;
                let conv = format!("g_{gid}");
                for uid in uids {
                    add.execute(params![gid as i64, *uid as i64, now, conv])
                        .map_err(unavailable)?;
                }
            }
            join_group_conversation(tx, gid, uids).map_err(unavailable)?;
            Ok(())
        })
    }

    fn group_history_floor(&self, gid: u64, uid: u64) -> StoreResult<u64> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT CASE WHEN g.history_for_new_members <> 0 THEN 0 ELSE m.join_seq END
                 FROM group_members m JOIN groups g ON g.id = m.group_id
                 WHERE m.group_id = ?1 AND m.user_id = ?2",
                params![gid as i64, uid as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map_or(0, |v| v.max(0) as u64))
        })
    }

    fn remove_group_member(&self, gid: u64, uid: u64) -> StoreResult<()> {
        self.with_tx(|tx| {
            tx.execute(
                "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                params![gid as i64, uid as i64],
            )
            .map_err(unavailable)?;
            tx.execute(
                "DELETE FROM read_cursors WHERE user_id = ?1 AND conv_id = ?2",
                params![uid as i64, format!("g_{gid}")],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn groups_of(&self, uid: u64) -> StoreResult<Vec<Group>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {GROUP_COLS} FROM group_members m
                 JOIN groups g ON g.id = m.group_id WHERE m.user_id = ?1 ORDER BY g.id"
            ))?;
            let rows = stmt.query_map(params![uid as i64], group_row)?;
            rows.collect()
        })
    }

    fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        let mut w = self.lock_writer();
        let result = w.append(batch);
        if let Some(wake) = &self.checkpointer {
            // Full: a wake-up is already pending, which covers this commit too.
            let _ = wake.try_send(());
        }
        if result.is_err() {
            // What was handed out in the failed transaction is void: reload from disk next time.
            w.last_seq.clear();
            w.next_msg_id = None;
            w.cursors.clear();
        }
        result
    }

    /// Folds the whole WAL into the database file and empties it: after a clean stop the `.db`
    /// file alone holds everything (a backup may copy just that file), and the next start has no
    /// log to read.
    fn close(&self) {
        let w = self.lock_writer();
        // The checkpoint thread or a worker's last read may still hold the log for a moment:
        // try again for up to a second (this runs once, after the reactor has stopped).
        for attempt in 0..50 {
            match w
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(0) => return,
                Ok(_) if attempt < 49 => std::thread::sleep(std::time::Duration::from_millis(20)),
                Ok(_) => {
                    log::warn!("store: the sqlite log could not be emptied (a reader was busy)")
                }
                Err(e) => return log::warn!("store: final sqlite checkpoint failed: {e}"),
            }
        }
    }

    fn sync(&self, conv_id: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<StoredMessage>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {MSG_COLS} FROM messages WHERE conv_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![conv_id, after_seq as i64, limit], msg_row)?;
            rows.collect()
        })
    }

    fn history(
        &self,
        conv_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        let before = if before_seq == 0 {
            i64::MAX
        } else {
            before_seq as i64
        };
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {MSG_COLS} FROM messages WHERE conv_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![conv_id, before, limit], msg_row)?;
            rows.collect()
        })
    }

    fn message(&self, msg_id: u64) -> StoreResult<Option<StoredMessage>> {
        self.with_conn(|c| {
            c.query_row(
                &format!("SELECT {MSG_COLS} FROM messages WHERE msg_id = ?1"),
                params![msg_id as i64],
                msg_row,
            )
            .optional()
        })
    }

    fn blank_message(&self, msg_id: u64) -> StoreResult<()> {
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE messages SET body = 'null' WHERE msg_id = ?1",
                params![msg_id as i64],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn conversations(&self, uid: u64, limit: u32) -> StoreResult<Vec<ConversationSummary>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT rc.conv_id, COALESCE(cv.chat_type, 1), COALESCE(cv.last_seq, 0), rc.read_seq
                 FROM read_cursors rc LEFT JOIN conversations cv ON cv.conv_id = rc.conv_id
                 WHERE rc.user_id = ?1
                 ORDER BY COALESCE(cv.updated_at, 0) DESC, rc.conv_id LIMIT ?2",
            )?;
            let rows: Vec<(String, i64, i64, i64)> = stmt
                .query_map(params![uid as i64, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut last = c.prepare_cached(&format!(
                "SELECT {MSG_COLS} FROM messages WHERE conv_id = ?1 AND seq = ?2"
            ))?;
            let mut out = Vec::with_capacity(rows.len());
            for (conv_id, chat_type, last_seq, read_seq) in rows {
                let last_msg = if last_seq > 0 {
                    last.query_row(params![conv_id, last_seq], msg_row)
                        .optional()?
                } else {
                    None
                };
                out.push(ConversationSummary {
                    conv_id,
                    chat_type: chat_type as u8,
                    last_seq: last_seq as u64,
                    read_seq: (read_seq as u64).min(last_seq as u64),
                    last: last_msg,
                });
            }
            let floors: Vec<(u64, u64)> = c
                .prepare_cached(GROUP_FLOORS_SQL)?
                .query_map(params![uid as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            hide_before_join(&mut out, &floors);
            Ok(out)
        })
    }

    fn mark_read(&self, uid: u64, conv_id: &str, seq: u64) -> StoreResult<ReadMark> {
        self.with_tx(|tx| {
            // The write transaction holds SQLite's write lock: the last seq cannot move under it.
            let last: i64 = tx
                .query_row(
                    "SELECT last_seq FROM conversations WHERE conv_id = ?1",
                    params![conv_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?
                .unwrap_or(0);
            let current: Option<i64> = tx
                .query_row(
                    "SELECT read_seq FROM read_cursors WHERE user_id = ?1 AND conv_id = ?2",
                    params![uid as i64, conv_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let wanted = (seq.min(i64::MAX as u64) as i64).min(last);
            let (read_seq, moved) = match current {
                Some(c) if c >= wanted => (c, false),
                _ => {
                    tx.execute(
                        "INSERT INTO read_cursors (user_id, conv_id, read_seq) VALUES (?1, ?2, ?3)
                         ON CONFLICT(user_id, conv_id) DO UPDATE SET read_seq = excluded.read_seq",
                        params![uid as i64, conv_id, wanted],
                    )
                    .map_err(unavailable)?;
                    (wanted, current.unwrap_or(0) < wanted)
                }
            };
            Ok(ReadMark {
                read_seq: read_seq.max(0) as u64,
                moved,
            })
        })
    }

    fn read_count(&self, conv_id: &str, seq: u64) -> StoreResult<u64> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM read_cursors WHERE conv_id = ?1 AND read_seq >= ?2",
                params![conv_id, seq as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The behaviour is tested by `tests/store_suite.rs`; here, that the read paths use indexes.
    #[test]
    fn read_paths_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        let plan = |sql: &str| -> String {
            s.with_conn(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
                rows.collect::<Result<Vec<_>, _>>().map(|v| v.join("; "))
            })
            .unwrap()
        };
        let p = plan("SELECT COUNT(*) FROM read_cursors WHERE conv_id = 'g_1' AND read_seq >= 3");
        assert!(p.contains("read_cursors_conv"), "{p}");
        let p = plan(&format!(
            "SELECT {MSG_COLS} FROM messages WHERE conv_id = 'p_1_2' AND seq > 5 ORDER BY seq LIMIT 10"
        ));
        assert!(
            p.contains("PRIMARY KEY") && !p.contains("TEMP B-TREE"),
            "{p}"
        );
    }

    fn batch(from: u64, n: u64, tag: &str) -> Vec<NewMessage> {
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

    /// Two stores on one file, as an old and a new process during an upgrade: appending in
    /// turn to the same conversations keeps every conversation's seqs contiguous and every
    /// msg_id unique (each writer notices the other's commits and reloads its caches).
    #[test]
    fn two_writers_on_one_file_keep_seqs_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let old = SqliteStore::open(&path, false).unwrap();
        let new = SqliteStore::open(&path, false).unwrap();
        for round in 0..20u64 {
            let writer = if round % 2 == 0 { &old } else { &new };
            let out = writer
                .append_batch(&batch(7 + round % 3, 5, &format!("r{round}")))
                .unwrap();
            assert!(out.iter().all(|a| !a.duplicate));
        }
        let mut ids = std::collections::HashSet::new();
        for m in batch(7, 5, "x")
            .iter()
            .chain(&batch(8, 5, "x"))
            .chain(&batch(9, 5, "x"))
        {
            let ms = old.sync(&m.conv_id, 0, 1000).unwrap();
            let seqs: Vec<u64> = ms.iter().map(|m| m.seq).collect();
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "{}",
                m.conv_id
            );
            ids.extend(ms.iter().map(|m| m.msg_id));
        }
        assert_eq!(ids.len(), 100);
    }

    /// Under steady commits no pass finds the log finished, and SQLite starts the log over only
    /// after one has: the rounds must finish it once it is past the threshold, long before the
    /// writer's own backstop (at four times the threshold) would, and keep every message.
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
            if cp.round() {
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
