//! The production store on MySQL / MariaDB, with the behaviour of the embedded store.
//!
//! - Readers and the short write transactions use a pool sized by `[store] mysql_pool`; the
//!   persister has a connection of its own. Every data statement is prepared (and cached per
//!   connection); multi-row statements use a few fixed row counts so the cache stays small.
//! - Several wxchat processes may write to one database. The persister's batch transaction
//!   starts by reserving its `msg_id` range from the `counters` row, which also orders the
//!   batches of all processes; seqs are read from `conversations` under that lock, so they stay
//!   gap-free and unique without any state cached between batches.
//! - Connection-level failures trip a [`Backoff`]: requests fail fast with `Unavailable` (503)
//!   while MySQL is down, one probe goes through per backoff delay, and the pool reconnects.
//!   Deadlocks and lock-wait timeouts are retried; nothing is acknowledged before `COMMIT`
//!   returns.

use super::backoff::Backoff;
use super::*;
use ::mysql::prelude::*;
use ::mysql::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, Transaction, TxOpts};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// Migrations in order; `schema_version` records which are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../sql/mysql/001_init.sql"),
    include_str!("../../../sql/mysql/002_wechat_identities.sql"),
    include_str!("../../../sql/mysql/003_wx_cs_routes.sql"),
    include_str!("../../../sql/mysql/004_service_sessions.sql"),
    include_str!("../../../sql/mysql/005_consultations.sql"),
    include_str!("../../../sql/mysql/006_group_join_seq.sql"),
    include_str!("../../../sql/mysql/007_visitor_purge.sql"),
];

/// Row counts used for multi-row statements: a batch of n rows is sent as a few chunks of these
/// sizes, so each statement shape is prepared once per connection.
const CHUNKS: &[usize] = &[256, 64, 16, 4, 1];

/// Attempts for a transaction that hit a deadlock, lock-wait timeout or a concurrent insert.
const ATTEMPTS: usize = 3;

pub struct MysqlStore {
    pool: Pool,
    opts: Opts,
    timeout: Duration,
    writer: Mutex<Writer>,
    backoff: Backoff,
}

/// The persister's side.
#[derive(Default)]
struct Writer {
    /// Its connection (None after a failure: reconnect on the next batch).
    conn: Option<Conn>,
    /// (user, one-to-one conversation) pairs known to have a read-cursor row. Such rows are never
    /// deleted, so remembering them (even across other processes' writes) is safe; it saves an
    /// upsert per recipient per message.
    listed: HashSet<(u64, String)>,
}

/// A (user, conversation) read-cursor row.
type CursorKey = (u64, String);

/// Bound on `Writer::listed` (cleared when reached; it only saves work).
const MAX_LISTED: usize = 1 << 20;

/// A failure inside a store operation: a database error (classified later) or a store answer.
enum Fail {
    Db(::mysql::Error),
    Store(StoreError),
}

impl From<::mysql::Error> for Fail {
    fn from(e: ::mysql::Error) -> Fail {
        Fail::Db(e)
    }
}

type Res<T> = Result<T, Fail>;

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Errors that mean the connection or the server is gone (as opposed to a refused statement).
fn is_connection_error(e: &::mysql::Error) -> bool {
    match e {
        ::mysql::Error::IoError(_)
        | ::mysql::Error::CodecError(_)
        | ::mysql::Error::DriverError(_) => true,
        // Too many connections, shutdown in progress, server gone, connection killed.
        ::mysql::Error::MySqlError(se) => {
            matches!(
                se.code,
                1040 | 1053 | 1077..=1080 | 1152 | 1153 | 1927 | 2006 | 2013
            )
        }
        _ => false,
    }
}

/// Errors a fresh attempt of the same transaction can get past.
fn is_retryable(e: &::mysql::Error) -> bool {
    // Deadlock, lock wait timeout, duplicate key (a concurrent insert of the same row).
    matches!(e, ::mysql::Error::MySqlError(se) if matches!(se.code, 1213 | 1205 | 1062))
}

fn placeholders(rows: usize, per_row: &str) -> String {
    let mut s = String::with_capacity(rows * (per_row.len() + 1));
    for i in 0..rows {
        if i > 0 {
            s.push(',');
        }
        s.push_str(per_row);
    }
    s
}

/// Splits `n` items into chunks of the sizes in [`CHUNKS`], largest first.
fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for &size in CHUNKS {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    out
}

/// Splits a migration file into statements (`;` at the end of a line; `--` comment lines dropped).
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            out.push(current.trim().trim_end_matches(';').to_string());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

const USER_COLS: &str =
    "id, app_uid, name, head_img, user_type, created_at, last_login_at, login_count";

fn user_of(
    (uid, app_uid, name, head_img, user_type, created_at, last_login_at, login_count): (
        u64,
        Option<String>,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
    ),
) -> User {
    User {
        uid,
        app_uid,
        name,
        head_img,
        user_type,
        created_at,
        last_login_at,
        login_count,
    }
}

const MSG_COLS: &str =
    "msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at";

/// The read paths that must be served by indexes (an integration test EXPLAINs each of them).
pub const SYNC_SQL: &str =
    "SELECT msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at \
     FROM messages WHERE conv_id = ? AND seq > ? ORDER BY seq LIMIT ?";
pub const HISTORY_SQL: &str =
    "SELECT msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at \
     FROM messages WHERE conv_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?";
pub const CONVERSATIONS_SQL: &str =
    "SELECT rc.conv_id, COALESCE(cv.chat_type, 1), COALESCE(cv.last_seq, 0), rc.read_seq, \
     m.msg_id, m.conv_id, m.seq, m.chat_type, m.from_id, m.to_id, m.msg_type, m.body, m.created_at \
     FROM read_cursors rc \
     LEFT JOIN conversations cv ON cv.conv_id = rc.conv_id \
     LEFT JOIN messages m ON m.conv_id = cv.conv_id AND m.seq = cv.last_seq \
     WHERE rc.user_id = ? \
     ORDER BY COALESCE(cv.updated_at, 0) DESC, rc.conv_id LIMIT ?";
pub const READ_COUNT_SQL: &str =
    "SELECT COUNT(*) FROM read_cursors WHERE conv_id = ? AND read_seq >= ?";

type MsgTuple = (u64, String, u64, u8, u64, u64, u8, String, i64);

fn msg_of(
    (msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at): MsgTuple,
) -> StoredMessage {
    StoredMessage {
        msg_id,
        conv_id,
        seq,
        chat_type,
        from_id,
        to_id,
        msg_type,
        body,
        created_at,
    }
}

const SESSION_COLS: &str =
    "id, customer_id, agent_id, created_at, assigned_at, closed_at, rating, comment";

const CONSULT_COLS: &str =
    "id, user_id, consultant_id, total_ms, remaining_ms, state, created_at, updated_at";

type ConsultTuple = (u64, u64, u64, u64, u64, u8, i64, i64);

fn consult_of(
    (id, user, consultant, total_ms, remaining_ms, state, created_at, updated_at): ConsultTuple,
) -> Consultation {
    Consultation {
        id,
        user,
        consultant,
        total_ms,
        remaining_ms,
        ended: state != 0,
        created_at,
        updated_at,
    }
}

fn consult_by_id(q: &mut impl Queryable, id: u64) -> Res<Option<Consultation>> {
    Ok(q.exec_first::<ConsultTuple, _, _>(
        format!("SELECT {CONSULT_COLS} FROM consultations WHERE id = ?"),
        (id,),
    )?
    .map(consult_of))
}

type SessionTuple = (
    u64,
    u64,
    Option<u64>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<u8>,
    String,
);

fn session_of(
    (id, customer, agent, created_at, assigned_at, closed_at, rating, comment): SessionTuple,
) -> ServiceSession {
    ServiceSession {
        id,
        customer,
        agent,
        created_at,
        assigned_at,
        closed_at,
        rating,
        comment,
    }
}

/// Reads column `i` of a row that is known to have it.
fn col<T: FromValue>(row: &Row, i: usize) -> Res<T> {
    match row.get_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Fail::Db(::mysql::Error::FromValueError(e.0))),
        None => Err(Fail::Store(StoreError::unavailable(format!(
            "column {i} missing from a result row"
        )))),
    }
}

/// The columns `group_of` reads.
const GROUP_COLS: &str = "g.id, g.name, g.owner_id, g.created_at, g.history_for_new_members";

fn group_of((group_id, name, owner_id, created_at, history): (u64, String, u64, i64, u8)) -> Group {
    Group {
        group_id,
        name,
        owner_id,
        created_at,
        history_for_new_members: history != 0,
    }
}

impl MysqlStore {
    /// Connects (the pool opens its first connection now, so an unreachable server or a bad URL
    /// fails here) and applies pending migrations.
    pub fn open(url: &str, pool_size: usize, timeout: Duration) -> StoreResult<MysqlStore> {
        let base = Opts::from_url(url)
            .map_err(|e| StoreError::unavailable(format!("bad mysql_url: {e}")))?;
        if base.get_db_name().is_none_or(str::is_empty) {
            return Err(StoreError::unavailable(
                "mysql_url must name a database, e.g. mysql://user:pass@127.0.0.1:3306/wxchat",
            ));
        }
        let constraints = PoolConstraints::new(1, pool_size.max(1))
            .ok_or_else(|| StoreError::unavailable("bad pool size"))?;
        // The driver's default switches a TCP URL to the server's Unix socket when it is local;
        // connect where the URL says unless it asks for that (`?prefer_socket=true`).
        let prefer_socket = url.contains("prefer_socket=true");
        let opts: Opts = OptsBuilder::from_opts(base)
            .prefer_socket(prefer_socket)
            .tcp_connect_timeout(Some(timeout))
            .read_timeout(Some(timeout))
            .write_timeout(Some(timeout))
            .tcp_nodelay(true)
            .stmt_cache_size(128)
            .init(vec!["SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci"])
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    // We keep no session state, so skip the reset round trip on every return.
                    .with_reset_connection(false),
            )
            .into();
        let pool = Pool::new(opts.clone()).map_err(|e| StoreError::unavailable(e.to_string()))?;
        let store = MysqlStore {
            pool,
            opts,
            timeout,
            writer: Mutex::new(Writer::default()),
            backoff: Backoff::new("mysql"),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Applies the migrations newer than `schema_version`, under a named lock so that several
    /// processes starting together do not race.
    fn migrate(&self) -> StoreResult<()> {
        let mut conn = self
            .pool
            .try_get_conn(self.timeout)
            .map_err(|e| StoreError::unavailable(e.to_string()))?;
        let outcome = (|| -> Res<()> {
            let locked: Option<Option<i64>> =
                conn.exec_first("SELECT GET_LOCK('wxchat_migrate', 60)", ())?;
            if locked.flatten() != Some(1) {
                return Err(Fail::Store(StoreError::unavailable(
                    "another process holds the migration lock",
                )));
            }
            let result = (|| -> Res<()> {
                let has_table: Option<i64> = conn.exec_first(
                    "SELECT COUNT(*) FROM information_schema.tables
                     WHERE table_schema = DATABASE() AND table_name = 'schema_version'",
                    (),
                )?;
                let current: u64 = if has_table.unwrap_or(0) > 0 {
                    conn.exec_first::<Option<u64>, _, _>(
                        "SELECT MAX(version) FROM schema_version",
                        (),
                    )?
                    .flatten()
                    .unwrap_or(0)
                } else {
                    0
                };
                for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                    for stmt in statements(sql) {
                        conn.query_drop(&stmt)?;
                    }
                    log::info!("store: applied mysql migration {}", i + 1);
                }
                Ok(())
            })();
            conn.query_drop("DO RELEASE_LOCK('wxchat_migrate')")?;
            result
        })();
        outcome.map_err(|f| match f {
            Fail::Db(e) => StoreError::unavailable(format!("migration failed: {e}")),
            Fail::Store(e) => e,
        })
    }

    /// Maps a failure outward, tripping the backoff on connection-level errors.
    fn settle<T>(&self, r: Res<T>) -> StoreResult<T> {
        match r {
            Ok(v) => {
                self.backoff.succeeded();
                Ok(v)
            }
            Err(Fail::Store(e)) => {
                self.backoff.succeeded();
                Err(e)
            }
            Err(Fail::Db(e)) => {
                if is_connection_error(&e) {
                    self.backoff.failed(&e.to_string());
                } else {
                    log::error!("mysql: {e}");
                }
                Err(StoreError::unavailable(e.to_string()))
            }
        }
    }

    /// Runs `f` on a pooled connection, retrying retryable errors.
    fn run<T>(&self, mut f: impl FnMut(&mut ::mysql::PooledConn) -> Res<T>) -> StoreResult<T> {
        self.backoff.check().map_err(StoreError::unavailable)?;
        let r = (|| {
            let mut conn = self.pool.try_get_conn(self.timeout)?;
            let mut attempt = 1;
            loop {
                match f(&mut conn) {
                    Err(Fail::Db(e)) if is_retryable(&e) && attempt < ATTEMPTS => attempt += 1,
                    other => return other,
                }
            }
        })();
        self.settle(r)
    }

    /// Runs `f` in a transaction on a pooled connection (retried as a whole).
    fn tx<T>(&self, mut f: impl FnMut(&mut Transaction<'_>) -> Res<T>) -> StoreResult<T> {
        self.run(|conn| {
            let mut tx = conn.start_transaction(TxOpts::default())?;
            let v = f(&mut tx)?;
            tx.commit()?;
            Ok(v)
        })
    }

    fn user_in(&self, q: &mut impl Queryable, uid: u64) -> Res<Option<User>> {
        Ok(q.exec_first(
            format!("SELECT {USER_COLS} FROM users WHERE id = ?"),
            (uid,),
        )?
        .map(user_of))
    }
}

/// Creates read-cursor rows so a group conversation shows in its members' lists.
fn join_group_conversation(tx: &mut Transaction<'_>, gid: u64, uids: &[u64]) -> Res<()> {
    let conv = format!("g_{gid}");
    let last: u64 = tx
        .exec_first(
            "SELECT last_seq FROM conversations WHERE conv_id = ?",
            (&conv,),
        )?
        .unwrap_or(0);
    let mut done = 0;
    for size in chunk_sizes(uids.len()) {
        let sql = format!(
            "INSERT IGNORE INTO read_cursors (user_id, conv_id, read_seq) VALUES {}",
            placeholders(size, "(?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 3);
        for uid in &uids[done..done + size] {
            params.push((*uid).into());
            params.push(conv.as_str().into());
            params.push(last.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }
    Ok(())
}

/// Adds members who join at `join_seq` (0 at the creation, else the conversation's last seq).
fn add_members_in(
    tx: &mut Transaction<'_>,
    gid: u64,
    uids: &[u64],
    owner: u64,
    join_seq: u64,
) -> Res<()> {
    let now = now_ms();
    let mut done = 0;
    for size in chunk_sizes(uids.len()) {
        let sql = format!(
            "INSERT IGNORE INTO group_members (group_id, user_id, role, joined_at, join_seq) VALUES {}",
            placeholders(size, "(?,?,?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 5);
        for uid in &uids[done..done + size] {
            params.push(gid.into());
            params.push((*uid).into());
            params.push(i64::from(*uid == owner).into());
            params.push(now.into());
            params.push(join_seq.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }
    join_group_conversation(tx, gid, uids)
}

/// The persister's batch, in one transaction (see the module comment for the locking).
///
/// Resends of stored messages are rare, so the first attempt does not look for them: the unique
/// index on (from_id, client_msg_id) refuses such a row, the transaction is rolled back, and the
/// retry (`check_stored`) looks them up first. Returns the messages and the newly listed cursors.
fn append_in(
    tx: &mut Transaction<'_>,
    batch: &[NewMessage],
    check_stored: bool,
    listed: &HashSet<(u64, String)>,
) -> Res<(Vec<Appended>, Vec<CursorKey>)> {
    if batch.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // 1. Reserve msg ids; the row lock orders this batch against every other writer's.
    tx.exec_drop(
        "UPDATE counters SET value = LAST_INSERT_ID(value + ?) WHERE name = 'msg_id'",
        (batch.len() as u64,),
    )?;
    if tx.affected_rows() != 1 {
        return Err(Fail::Store(StoreError::unavailable(
            "the counters table has no msg_id row",
        )));
    }
    let last_id = tx.last_insert_id().unwrap_or(0);
    let mut next_id = last_id + 1 - batch.len() as u64;

    // 2. Client ids already stored (a resend after a lost ack, possibly through another node).
    let mut wanted: Vec<(u64, &str)> = if check_stored {
        batch
            .iter()
            .filter_map(|m| m.client_msg_id.as_deref().map(|c| (m.from_id, c)))
            .collect()
    } else {
        Vec::new()
    };
    wanted.sort_unstable();
    wanted.dedup();
    let mut stored: HashMap<(u64, String), StoredMessage> = HashMap::new();
    let mut done = 0;
    for size in chunk_sizes(wanted.len()) {
        let cond = placeholders(size, "(from_id = ? AND client_msg_id = ?)").replace(",", " OR ");
        let sql = format!("SELECT {MSG_COLS}, client_msg_id FROM messages WHERE {cond}");
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 2);
        for (from, cmid) in &wanted[done..done + size] {
            params.push((*from).into());
            params.push((*cmid).into());
        }
        for row in tx.exec::<Row, _, _>(sql, params)? {
            let m = StoredMessage {
                msg_id: col(&row, 0)?,
                conv_id: col(&row, 1)?,
                seq: col(&row, 2)?,
                chat_type: col(&row, 3)?,
                from_id: col(&row, 4)?,
                to_id: col(&row, 5)?,
                msg_type: col(&row, 6)?,
                body: col(&row, 7)?,
                created_at: col(&row, 8)?,
            };
            let cmid: String = col(&row, 9)?;
            stored.insert((m.from_id, cmid), m);
        }
        done += size;
    }

    // 3. Current last seq of every conversation in the batch, locked.
    let mut convs: Vec<&str> = batch.iter().map(|m| m.conv_id.as_str()).collect();
    convs.sort_unstable();
    convs.dedup();
    let mut last_seq: HashMap<String, u64> = HashMap::with_capacity(convs.len());
    let mut done = 0;
    for size in chunk_sizes(convs.len()) {
        let sql = format!(
            "SELECT conv_id, last_seq FROM conversations WHERE conv_id IN ({}) FOR UPDATE",
            placeholders(size, "?")
        );
        let params: Vec<::mysql::Value> = convs[done..done + size]
            .iter()
            .map(|c| (*c).into())
            .collect();
        for (conv, seq) in tx.exec::<(String, u64), _, _>(sql, params)? {
            last_seq.insert(conv, seq);
        }
        done += size;
    }

    // 4. Assign seqs and ids.
    let mut out: Vec<Appended> = Vec::with_capacity(batch.len());
    let mut in_batch: HashMap<(u64, &str), usize> = HashMap::new();
    let mut fresh: Vec<usize> = Vec::with_capacity(batch.len());
    for m in batch {
        if let Some(cmid) = m.client_msg_id.as_deref() {
            if let Some(&i) = in_batch.get(&(m.from_id, cmid)) {
                let message = out[i].message.clone();
                out.push(Appended {
                    message,
                    duplicate: true,
                });
                continue;
            }
            if let Some(message) = stored.get(&(m.from_id, cmid.to_string())) {
                out.push(Appended {
                    message: message.clone(),
                    duplicate: true,
                });
                continue;
            }
            in_batch.insert((m.from_id, cmid), out.len());
        }
        let seq = last_seq.entry(m.conv_id.clone()).or_insert(0);
        *seq += 1;
        let id = next_id;
        next_id += 1;
        fresh.push(out.len());
        out.push(Appended {
            message: StoredMessage {
                msg_id: id,
                conv_id: m.conv_id.clone(),
                seq: *seq,
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
    if fresh.is_empty() {
        return Ok((out, Vec::new()));
    }

    // 5. The messages, in multi-row inserts.
    let mut done = 0;
    for size in chunk_sizes(fresh.len()) {
        let sql = format!(
            "INSERT INTO messages (conv_id, seq, msg_id, client_msg_id, from_id, to_id,
             chat_type, msg_type, body, created_at) VALUES {}",
            placeholders(size, "(?,?,?,?,?,?,?,?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 10);
        for &i in &fresh[done..done + size] {
            let m = &out[i].message;
            params.push(m.conv_id.as_str().into());
            params.push(m.seq.into());
            params.push(m.msg_id.into());
            params.push(batch[i].client_msg_id.as_deref().into());
            params.push(m.from_id.into());
            params.push(m.to_id.into());
            params.push(m.chat_type.into());
            params.push(m.msg_type.into());
            params.push(m.body.as_str().into());
            params.push(m.created_at.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }

    // 6. Each conversation's new last seq.
    let mut last_of: HashMap<&str, &StoredMessage> = HashMap::new();
    for &i in &fresh {
        last_of.insert(&out[i].message.conv_id, &out[i].message);
    }
    let lasts: Vec<&StoredMessage> = last_of.into_values().collect();
    let mut done = 0;
    for size in chunk_sizes(lasts.len()) {
        let sql = format!(
            "INSERT INTO conversations (conv_id, chat_type, last_seq, last_msg_id, updated_at)
             VALUES {} ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq),
             last_msg_id = VALUES(last_msg_id), updated_at = VALUES(updated_at)",
            placeholders(size, "(?,?,?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 5);
        for m in &lasts[done..done + size] {
            params.push(m.conv_id.as_str().into());
            params.push(m.chat_type.into());
            params.push(m.seq.into());
            params.push(m.msg_id.into());
            params.push(m.created_at.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }

    // 7. Read cursors: both sides of a one-to-one conversation list it from its first message
    // on; a sender has read their conversation up to what they sent.
    let mut cursors: HashMap<(u64, &str), u64> = HashMap::new();
    let mut group_reads: HashMap<(u64, &str), u64> = HashMap::new();
    let mut newly_listed: Vec<(u64, String)> = Vec::new();
    for &i in &fresh {
        let m = &out[i].message;
        if m.chat_type == 1 {
            group_reads.insert((m.from_id, &m.conv_id), m.seq);
            continue;
        }
        for uid in [m.from_id, m.to_id] {
            if uid == 0 {
                continue;
            }
            let key = (uid, m.conv_id.clone());
            if uid == m.from_id {
                let e = cursors.entry((uid, &m.conv_id)).or_insert(0);
                *e = (*e).max(m.seq);
            } else if !listed.contains(&key) {
                cursors.entry((uid, &m.conv_id)).or_insert(0);
            }
            if !listed.contains(&key) {
                newly_listed.push(key);
            }
        }
    }
    let rows: Vec<((u64, &str), u64)> = cursors.into_iter().collect();
    let mut done = 0;
    for size in chunk_sizes(rows.len()) {
        let sql = format!(
            "INSERT INTO read_cursors (user_id, conv_id, read_seq) VALUES {}
             ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
            placeholders(size, "(?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 3);
        for ((uid, conv), seq) in &rows[done..done + size] {
            params.push((*uid).into());
            params.push((*conv).into());
            params.push((*seq).into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }
    for ((uid, conv), seq) in group_reads {
        tx.exec_drop(
            "UPDATE read_cursors SET read_seq = GREATEST(read_seq, ?) WHERE user_id = ? AND conv_id = ?",
            (seq, uid, conv),
        )?;
    }
    Ok((out, newly_listed))
}

impl Store for MysqlStore {
    fn upsert_app_user(
        &self,
        app_uid: &str,
        profile: &Profile,
        login: bool,
    ) -> StoreResult<(User, bool)> {
        let now = now_ms();
        self.tx(|tx| {
            let existing: Option<u64> = tx.exec_first(
                "SELECT id FROM users WHERE app_uid = ? FOR UPDATE",
                (app_uid,),
            )?;
            let created = existing.is_none();
            let id = match existing {
                Some(id) => {
                    tx.exec_drop(
                        "UPDATE users SET name = COALESCE(?, name), head_img = COALESCE(?, head_img),
                         user_type = COALESCE(?, user_type) WHERE id = ?",
                        (&profile.name, &profile.head_img, profile.user_type, id),
                    )?;
                    id
                }
                None => {
                    // A concurrent first login of the same app_uid makes this a duplicate key,
                    // and the retry finds the row.
                    tx.exec_drop(
                        "INSERT INTO users (app_uid, name, head_img, user_type, created_at)
                         VALUES (?, COALESCE(?, ''), COALESCE(?, ''), COALESCE(?, 0), ?)",
                        (
                            app_uid,
                            &profile.name,
                            &profile.head_img,
                            profile.user_type,
                            now,
                        ),
                    )?;
                    tx.last_insert_id().unwrap_or(0)
                }
            };
            if login {
                tx.exec_drop(
                    "UPDATE users SET last_login_at = ?, login_count = login_count + 1 WHERE id = ?",
                    (now, id),
                )?;
            }
            let user = tx
                .exec_first(format!("SELECT {USER_COLS} FROM users WHERE id = ?"), (id,))?
                .map(user_of)
                .ok_or(Fail::Store(StoreError::NotFound("user")))?;
            Ok((user, created))
        })
    }

    fn user(&self, uid: u64) -> StoreResult<Option<User>> {
        self.run(|c| self.user_in(c, uid))
    }

    fn existing_users(&self, uids: &[u64]) -> StoreResult<Vec<u64>> {
        self.run(|c| {
            let mut found = Vec::new();
            let mut done = 0;
            for size in chunk_sizes(uids.len()) {
                let sql = format!(
                    "SELECT id FROM users WHERE id IN ({})",
                    placeholders(size, "?")
                );
                let params: Vec<::mysql::Value> = uids[done..done + size]
                    .iter()
                    .map(|u| (*u).into())
                    .collect();
                found.extend(c.exec::<u64, _, _>(sql, params)?);
                done += size;
            }
            // In the input order, like the embedded store.
            let set: std::collections::HashSet<u64> = found.into_iter().collect();
            Ok(uids.iter().copied().filter(|u| set.contains(u)).collect())
        })
    }

    fn users(&self, uids: &[u64]) -> StoreResult<Vec<User>> {
        self.run(|c| {
            let mut found = Vec::with_capacity(uids.len());
            let mut done = 0;
            for size in chunk_sizes(uids.len()) {
                let sql = format!(
                    "SELECT {USER_COLS} FROM users WHERE id IN ({})",
                    placeholders(size, "?")
                );
                let params: Vec<::mysql::Value> = uids[done..done + size]
                    .iter()
                    .map(|u| (*u).into())
                    .collect();
                found.extend(c.exec(sql, params)?.into_iter().map(user_of));
                done += size;
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
        self.tx(|tx| {
            let Some(before) = tx
                .exec_first(
                    format!("SELECT {USER_COLS} FROM users WHERE id = ? FOR UPDATE"),
                    (uid,),
                )?
                .map(user_of)
            else {
                return Ok(None);
            };
            let changed = name.is_some_and(|n| n != before.name)
                || head_img.is_some_and(|h| h != before.head_img);
            if !changed {
                return Ok(Some((before, false)));
            }
            tx.exec_drop(
                "UPDATE users SET name = COALESCE(?, name), head_img = COALESCE(?, head_img) WHERE id = ?",
                (name, head_img, uid),
            )?;
            let after = self
                .user_in(tx, uid)?
                .ok_or(Fail::Store(StoreError::NotFound("user")))?;
            Ok(Some((after, true)))
        })
    }

    fn wechat_login(&self, id: &WechatIdentity, login: bool) -> StoreResult<(User, bool)> {
        let now = now_ms();
        // A concurrent first login of the same identity or unionid meets a unique key, and the
        // retry finds what the other one created.
        self.tx(|tx| {
            let known: Option<u64> = tx.exec_first(
                "SELECT user_id FROM wx_identities WHERE appid = ? AND openid = ? FOR UPDATE",
                (&id.appid, &id.openid),
            )?;
            let (uid, created) =
                match known {
                    Some(uid) => {
                        tx.exec_drop(
                            "UPDATE wx_identities SET session_key = COALESCE(?, session_key),
                         unionid = COALESCE(?, unionid), updated_at = ?
                         WHERE appid = ? AND openid = ?",
                            (&id.session_key, &id.unionid, now, &id.appid, &id.openid),
                        )?;
                        (uid, false)
                    }
                    None => {
                        let by_union: Option<u64> = match &id.unionid {
                            Some(u) => tx.exec_first(
                                "SELECT id FROM users WHERE unionid = ? FOR UPDATE",
                                (u,),
                            )?,
                            None => None,
                        };
                        let (uid, created) = match by_union {
                            Some(uid) => (uid, false),
                            None => {
                                tx.exec_drop(
                                "INSERT INTO users (name, created_at, unionid) VALUES ('', ?, ?)",
                                (now, &id.unionid),
                            )?;
                                (tx.last_insert_id().unwrap_or(0), true)
                            }
                        };
                        tx.exec_drop(
                        "INSERT INTO wx_identities (appid, openid, user_id, unionid, session_key,
                         created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (&id.appid, &id.openid, uid, &id.unionid, &id.session_key, now, now),
                    )?;
                        (uid, created)
                    }
                };
            if let Some(u) = &id.unionid {
                let holder: Option<u64> =
                    tx.exec_first("SELECT id FROM users WHERE unionid = ?", (u,))?;
                if holder.is_none() {
                    tx.exec_drop(
                        "UPDATE users SET unionid = ? WHERE id = ? AND unionid IS NULL",
                        (u, uid),
                    )?;
                }
            }
            if login {
                tx.exec_drop(
                    "UPDATE users SET last_login_at = ?, login_count = login_count + 1 WHERE id = ?",
                    (now, uid),
                )?;
            }
            let user = self
                .user_in(tx, uid)?
                .ok_or(Fail::Store(StoreError::NotFound("user")))?;
            Ok((user, created))
        })
    }

    fn set_cs_route(&self, uid: u64, appid: &str, openid: &str) -> StoreResult<()> {
        let now = now_ms();
        self.run(|c| {
            c.exec_drop(
                "INSERT INTO wx_cs_routes (user_id, appid, openid, updated_at) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE appid = VALUES(appid), openid = VALUES(openid),
                 updated_at = VALUES(updated_at)",
                (uid, appid, openid, now),
            )?;
            Ok(())
        })
    }

    fn cs_route(&self, uid: u64) -> StoreResult<Option<(String, String)>> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT appid, openid FROM wx_cs_routes WHERE user_id = ?",
                (uid,),
            )?)
        })
    }

    fn open_service_session(&self, customer: u64) -> StoreResult<ServiceSession> {
        let now = now_ms();
        // Two first messages at once meet the unique open_customer key; the retry finds the
        // session the other one opened.
        self.tx(|tx| {
            let existing: Option<SessionTuple> = tx.exec_first(
                format!(
                    "SELECT {SESSION_COLS} FROM service_sessions
                     WHERE open_customer = ? FOR UPDATE"
                ),
                (customer,),
            )?;
            if let Some(t) = existing {
                return Ok(session_of(t));
            }
            tx.exec_drop(
                "INSERT INTO service_sessions (customer_id, created_at) VALUES (?, ?)",
                (customer, now),
            )?;
            Ok(ServiceSession {
                id: tx.last_insert_id().unwrap_or(0),
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
        self.tx(|tx| {
            let open: Option<u64> = tx.exec_first(
                "SELECT id FROM service_sessions WHERE open_customer = ? FOR UPDATE",
                (customer,),
            )?;
            let Some(id) = open else {
                return Err(Fail::Store(StoreError::NotFound("open service session")));
            };
            tx.exec_drop(
                "UPDATE service_sessions SET agent_id = ?, assigned_at = ? WHERE id = ?",
                (agent, agent.map(|_| now), id),
            )?;
            Ok(())
        })
    }

    fn create_visitor(&self) -> StoreResult<User> {
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_drop(
                "INSERT INTO users (name, user_type, created_at, last_login_at, login_count)
                 VALUES ('访客', ?, ?, ?, 1)",
                (USER_TYPE_VISITOR, now, now),
            )?;
            let id = tx.last_insert_id().unwrap_or(0);
            tx.exec_first(format!("SELECT {USER_COLS} FROM users WHERE id = ?"), (id,))?
                .map(user_of)
                .ok_or(Fail::Store(StoreError::NotFound("user")))
        })
    }

    fn purge_idle_visitors(&self, idle_before: i64, limit: u32) -> StoreResult<Vec<u64>> {
        self.tx(|tx| {
            let ids: Vec<u64> = tx.exec(
                "SELECT u.id FROM users u
                 LEFT JOIN conversations c ON c.conv_id = CONCAT('s_', u.id)
                 WHERE u.user_type = ? AND u.last_login_at < ?
                   AND COALESCE(c.updated_at, 0) < ?
                   AND NOT EXISTS (SELECT 1 FROM service_sessions s
                                   WHERE s.customer_id = u.id AND s.closed_at IS NULL)
                 ORDER BY u.last_login_at, u.id LIMIT ?",
                (USER_TYPE_VISITOR, idle_before, idle_before, limit),
            )?;
            for id in &ids {
                let conv = format!("s_{id}");
                for sql in [
                    "DELETE FROM messages WHERE conv_id = ?",
                    "DELETE FROM conversations WHERE conv_id = ?",
                    "DELETE FROM read_cursors WHERE conv_id = ?",
                ] {
                    tx.exec_drop(sql, (&conv,))?;
                }
                for sql in [
                    "DELETE FROM tokens WHERE user_id = ?",
                    "DELETE FROM read_cursors WHERE user_id = ?",
                    "DELETE FROM users WHERE id = ?",
                ] {
                    tx.exec_drop(sql, (id,))?;
                }
            }
            Ok(ids)
        })
    }

    fn convert_visitor(&self, visitor: u64, uid: u64) -> StoreResult<()> {
        let now = now_ms();
        self.tx(|tx| {
            let kind: Option<i64> = tx.exec_first(
                "SELECT user_type FROM users WHERE id = ? FOR UPDATE",
                (visitor,),
            )?;
            match kind {
                None => return Err(Fail::Store(StoreError::NotFound("visitor"))),
                Some(USER_TYPE_VISITOR) => {}
                Some(_) => {
                    return Err(Fail::Store(StoreError::Conflict(
                        "not a visitor (or already converted)",
                    )))
                }
            }
            tx.exec_drop(
                "UPDATE users SET user_type = ? WHERE id = ?",
                (USER_TYPE_CONVERTED, visitor),
            )?;
            let uid_has_open: Option<u64> = tx.exec_first(
                "SELECT id FROM service_sessions WHERE open_customer = ? FOR UPDATE",
                (uid,),
            )?;
            if uid_has_open.is_some() {
                tx.exec_drop(
                    "UPDATE service_sessions SET closed_at = ? WHERE open_customer = ?",
                    (now, visitor),
                )?;
            }
            tx.exec_drop(
                "UPDATE service_sessions SET customer_id = ? WHERE customer_id = ?",
                (uid, visitor),
            )?;
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
        self.tx(|tx| {
            tx.exec_drop(
                "INSERT INTO consultations (user_id, consultant_id, total_ms, remaining_ms, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
                (user, consultant, duration_ms, duration_ms, now, now),
            )?;
            let id = tx.last_insert_id().unwrap_or(0);
            consult_by_id(tx, id)?.ok_or(Fail::Store(StoreError::NotFound("consultation")))
        })
    }

    fn extend_consultation(&self, id: u64, extra_ms: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_drop(
                "UPDATE consultations SET total_ms = total_ms + ?, remaining_ms = remaining_ms + ?,
                 state = 0, ended_at = NULL, updated_at = ? WHERE id = ?",
                (extra_ms, extra_ms, now, id),
            )?;
            consult_by_id(tx, id)?.ok_or(Fail::Store(StoreError::NotFound("consultation")))
        })
    }

    fn end_consultation(&self, id: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_drop(
                "UPDATE consultations SET remaining_ms = 0, state = 1,
                 ended_at = COALESCE(ended_at, ?), updated_at = ? WHERE id = ?",
                (now, now, id),
            )?;
            consult_by_id(tx, id)?.ok_or(Fail::Store(StoreError::NotFound("consultation")))
        })
    }

    fn consultation(&self, id: u64) -> StoreResult<Option<Consultation>> {
        self.run(|c| consult_by_id(c, id))
    }

    fn active_consultations(&self, uid: u64) -> StoreResult<Vec<Consultation>> {
        self.run(|c| {
            let rows: Vec<ConsultTuple> = c.exec(
                format!(
                    "SELECT {CONSULT_COLS} FROM consultations WHERE user_id = ? AND state = 0
                     UNION SELECT {CONSULT_COLS} FROM consultations WHERE consultant_id = ? AND state = 0
                     ORDER BY id"
                ),
                (uid, uid),
            )?;
            Ok(rows.into_iter().map(consult_of).collect())
        })
    }

    fn use_consultation_time(&self, used: &[(u64, u64, bool)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_batch(
                "UPDATE consultations SET remaining_ms = IF(remaining_ms > ?, remaining_ms - ?, 0),
                 state = IF(?, 1, state), ended_at = IF(?, ?, ended_at), updated_at = ?
                 WHERE id = ?",
                used.iter()
                    .map(|(id, ms, ended)| (*ms, *ms, *ended, *ended, now, now, *id)),
            )?;
            Ok(())
        })
    }

    fn close_service_session(&self, customer: u64) -> StoreResult<Option<u64>> {
        let now = now_ms();
        self.tx(|tx| {
            let open: Option<u64> = tx.exec_first(
                "SELECT id FROM service_sessions WHERE open_customer = ? FOR UPDATE",
                (customer,),
            )?;
            if let Some(id) = open {
                tx.exec_drop(
                    "UPDATE service_sessions SET closed_at = ? WHERE id = ?",
                    (now, id),
                )?;
            }
            Ok(open)
        })
    }

    fn rate_service_session(
        &self,
        id: u64,
        customer: u64,
        rating: u8,
        comment: &str,
    ) -> StoreResult<()> {
        self.tx(|tx| {
            let row: Option<(Option<i64>, Option<u8>)> = tx.exec_first(
                "SELECT closed_at, rating FROM service_sessions
                 WHERE id = ? AND customer_id = ? FOR UPDATE",
                (id, customer),
            )?;
            match row {
                None => Err(Fail::Store(StoreError::NotFound("service session"))),
                Some((None, _)) => Err(Fail::Store(StoreError::Conflict(
                    "the session is still open",
                ))),
                Some((_, Some(_))) => Err(Fail::Store(StoreError::Conflict(
                    "the session is already rated",
                ))),
                Some((Some(_), None)) => {
                    tx.exec_drop(
                        "UPDATE service_sessions SET rating = ?, comment = ? WHERE id = ?",
                        (rating, comment, id),
                    )?;
                    Ok(())
                }
            }
        })
    }

    fn open_service_sessions(&self) -> StoreResult<Vec<ServiceSession>> {
        self.run(|c| {
            let rows: Vec<SessionTuple> = c.query(format!(
                "SELECT {SESSION_COLS} FROM service_sessions WHERE closed_at IS NULL
                 ORDER BY created_at, id"
            ))?;
            Ok(rows.into_iter().map(session_of).collect())
        })
    }

    fn wechat_session_key(&self, uid: u64, appid: &str) -> StoreResult<Option<String>> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT session_key FROM wx_identities WHERE user_id = ? AND appid = ?
                 AND session_key IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
                (uid, appid),
            )?)
        })
    }

    fn put_token(&self, token_hash: &[u8], uid: u64, expires_at: i64) -> StoreResult<()> {
        let now = now_ms();
        self.tx(|tx| {
            // Expired tokens of this user go at the same time: the table does not grow forever.
            tx.exec_drop(
                "DELETE FROM tokens WHERE user_id = ? AND expires_at <= ?",
                (uid, now),
            )?;
            tx.exec_drop(
                "INSERT INTO tokens (token_hash, user_id, expires_at, created_at) VALUES (?, ?, ?, ?)",
                (token_hash, uid, expires_at, now),
            )?;
            Ok(())
        })
    }

    fn token_user(&self, token_hash: &[u8], now: i64) -> StoreResult<Option<u64>> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT user_id FROM tokens WHERE token_hash = ? AND expires_at > ?",
                (token_hash, now),
            )?)
        })
    }

    fn delete_token(&self, token_hash: &[u8]) -> StoreResult<()> {
        self.run(|c| Ok(c.exec_drop("DELETE FROM tokens WHERE token_hash = ?", (token_hash,))?))
    }

    fn friends(&self, uid: u64) -> StoreResult<Vec<u64>> {
        self.run(|c| {
            Ok(c.exec(
                "SELECT friend_id FROM friends WHERE user_id = ? ORDER BY friend_id",
                (uid,),
            )?)
        })
    }

    fn add_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        let now = now_ms();
        self.tx(|tx| {
            for (x, y) in [(a, b), (b, a)] {
                tx.exec_drop(
                    "INSERT IGNORE INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)",
                    (x, y, now),
                )?;
                tx.exec_drop(
                    "DELETE FROM friend_requests WHERE from_id = ? AND to_id = ?",
                    (x, y),
                )?;
            }
            Ok(())
        })
    }

    fn remove_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        self.run(|c| {
            Ok(c.exec_drop(
                "DELETE FROM friends WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)",
                (a, b, b, a),
            )?)
        })
    }

    fn add_friend_request(&self, from: u64, to: u64, note: &str) -> StoreResult<()> {
        let now = now_ms();
        self.run(|c| {
            Ok(c.exec_drop(
                "INSERT INTO friend_requests (from_id, to_id, note, created_at) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE note = VALUES(note), created_at = VALUES(created_at)",
                (from, to, note, now),
            )?)
        })
    }

    fn take_friend_request(&self, from: u64, to: u64) -> StoreResult<bool> {
        self.run(|c| {
            c.exec_drop(
                "DELETE FROM friend_requests WHERE from_id = ? AND to_id = ?",
                (from, to),
            )?;
            Ok(c.affected_rows() > 0)
        })
    }

    fn friend_requests(&self, uid: u64) -> StoreResult<Vec<(u64, String, i64)>> {
        self.run(|c| {
            Ok(c.exec(
                "SELECT from_id, note, created_at FROM friend_requests WHERE to_id = ? ORDER BY created_at",
                (uid,),
            )?)
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
        let mut all: Vec<u64> = vec![owner];
        all.extend(members.iter().copied().filter(|m| *m != owner));
        all.sort_unstable();
        all.dedup();
        self.tx(|tx| {
            tx.exec_drop(
                "INSERT INTO `groups` (name, owner_id, created_at, history_for_new_members)
                 VALUES (?, ?, ?, ?)",
                (name, owner, now, u8::from(history_for_new_members)),
            )?;
            let gid = tx.last_insert_id().unwrap_or(0);
            add_members_in(tx, gid, &all, owner, 0)?;
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
        self.run(|c| {
            Ok(c.exec_first(
                format!("SELECT {GROUP_COLS} FROM `groups` g WHERE g.id = ?"),
                (gid,),
            )?
            .map(group_of))
        })
    }

    fn group_members(&self, gid: u64) -> StoreResult<Option<Vec<u64>>> {
        self.run(|c| {
            let exists: Option<u64> =
                c.exec_first("SELECT id FROM `groups` WHERE id = ?", (gid,))?;
            if exists.is_none() {
                return Ok(None);
            }
            Ok(Some(c.exec(
                "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id",
                (gid,),
            )?))
        })
    }

    fn add_group_members(&self, gid: u64, uids: &[u64]) -> StoreResult<()> {
        self.tx(|tx| {
            let exists: Option<u64> =
                tx.exec_first("SELECT id FROM `groups` WHERE id = ? FOR UPDATE", (gid,))?;
            if exists.is_none() {
                return Err(Fail::Store(StoreError::NotFound("group")));
            }
            // Read under the persister's lock on the conversation row, so that a message
            // committing meanwhile is either before the join (its seq is the join seq) or after.
            let join_seq: u64 = tx
                .exec_first(
                    "SELECT last_seq FROM conversations WHERE conv_id = ? FOR UPDATE",
                    (format!("g_{gid}"),),
                )?
                .unwrap_or(0);
            add_members_in(tx, gid, uids, 0, join_seq)
        })
    }

    fn group_history_floor(&self, gid: u64, uid: u64) -> StoreResult<u64> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT CASE WHEN g.history_for_new_members <> 0 THEN 0 ELSE m.join_seq END
                 FROM group_members m JOIN `groups` g ON g.id = m.group_id
                 WHERE m.group_id = ? AND m.user_id = ?",
                (gid, uid),
            )?
            .unwrap_or(0))
        })
    }

    fn remove_group_member(&self, gid: u64, uid: u64) -> StoreResult<()> {
        let conv = format!("g_{gid}");
        self.tx(|tx| {
            tx.exec_drop(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                (gid, uid),
            )?;
            tx.exec_drop(
                "DELETE FROM read_cursors WHERE user_id = ? AND conv_id = ?",
                (uid, &conv),
            )?;
            Ok(())
        })
    }

    fn groups_of(&self, uid: u64) -> StoreResult<Vec<Group>> {
        self.run(|c| {
            Ok(c.exec(
                format!(
                    "SELECT {GROUP_COLS} FROM group_members m
                     JOIN `groups` g ON g.id = m.group_id WHERE m.user_id = ? ORDER BY g.id"
                ),
                (uid,),
            )?
            .into_iter()
            .map(group_of)
            .collect())
        })
    }

    fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        self.backoff.check().map_err(StoreError::unavailable)?;
        let mut guard = match self.writer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let w = &mut *guard;
        let r = (|| -> Res<Vec<Appended>> {
            let mut attempt = 1;
            loop {
                if w.conn.is_none() {
                    w.conn = Some(Conn::new(self.opts.clone())?);
                }
                let conn = w.conn.as_mut().expect("connected above");
                let check_stored = attempt > 1;
                let result = (|| {
                    let mut tx = conn.start_transaction(TxOpts::default())?;
                    let out = append_in(&mut tx, batch, check_stored, &w.listed)?;
                    tx.commit()?;
                    Ok(out)
                })();
                match result {
                    Ok((out, listed)) => {
                        if w.listed.len() + listed.len() > MAX_LISTED {
                            w.listed.clear();
                        }
                        w.listed.extend(listed);
                        return Ok(out);
                    }
                    Err(Fail::Db(e)) if is_retryable(&e) && attempt < ATTEMPTS => attempt += 1,
                    Err(Fail::Db(e)) => {
                        if is_connection_error(&e) {
                            // The commit's outcome may be unknown: nothing is acknowledged, and
                            // a resend with the same client_msg_id finds the message if it landed.
                            w.conn = None;
                        }
                        return Err(Fail::Db(e));
                    }
                    Err(other) => return Err(other),
                }
            }
        })();
        self.settle(r)
    }

    fn sync(&self, conv_id: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<StoredMessage>> {
        self.run(|c| {
            Ok(
                c.exec::<MsgTuple, _, _>(SYNC_SQL, (conv_id, after_seq, limit))?
                    .into_iter()
                    .map(msg_of)
                    .collect(),
            )
        })
    }

    fn history(
        &self,
        conv_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        let before = if before_seq == 0 {
            u64::MAX
        } else {
            before_seq
        };
        self.run(|c| {
            Ok(
                c.exec::<MsgTuple, _, _>(HISTORY_SQL, (conv_id, before, limit))?
                    .into_iter()
                    .map(msg_of)
                    .collect(),
            )
        })
    }

    fn message(&self, msg_id: u64) -> StoreResult<Option<StoredMessage>> {
        self.run(|c| {
            Ok(c.exec_first::<MsgTuple, _, _>(
                format!("SELECT {MSG_COLS} FROM messages WHERE msg_id = ?"),
                (msg_id,),
            )?
            .map(msg_of))
        })
    }

    fn blank_message(&self, msg_id: u64) -> StoreResult<()> {
        self.run(|c| {
            Ok(c.exec_drop(
                "UPDATE messages SET body = 'null' WHERE msg_id = ?",
                (msg_id,),
            )?)
        })
    }

    fn conversations(&self, uid: u64, limit: u32) -> StoreResult<Vec<ConversationSummary>> {
        self.run(|c| {
            let rows: Vec<Row> = c.exec(CONVERSATIONS_SQL, (uid, limit))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let last_seq: u64 = col(&row, 2)?;
                let read_seq: u64 = col(&row, 3)?;
                let msg_id: Option<u64> = col(&row, 4)?;
                let last = match msg_id {
                    Some(msg_id) if last_seq > 0 => Some(StoredMessage {
                        msg_id,
                        conv_id: col(&row, 5)?,
                        seq: col(&row, 6)?,
                        chat_type: col(&row, 7)?,
                        from_id: col(&row, 8)?,
                        to_id: col(&row, 9)?,
                        msg_type: col(&row, 10)?,
                        body: col(&row, 11)?,
                        created_at: col(&row, 12)?,
                    }),
                    _ => None,
                };
                out.push(ConversationSummary {
                    conv_id: col(&row, 0)?,
                    chat_type: col(&row, 1)?,
                    last_seq,
                    read_seq: read_seq.min(last_seq),
                    last,
                });
            }
            let floors: Vec<(u64, u64)> = c.exec(GROUP_FLOORS_SQL, (uid,))?;
            hide_before_join(&mut out, &floors);
            Ok(out)
        })
    }

    fn mark_read(&self, uid: u64, conv_id: &str, seq: u64) -> StoreResult<ReadMark> {
        self.tx(|tx| {
            // Committed messages only: a seq being written now is not yet readable anyway.
            let last: u64 = tx
                .exec_first(
                    "SELECT last_seq FROM conversations WHERE conv_id = ?",
                    (conv_id,),
                )?
                .unwrap_or(0);
            // Locks the cursor row, so that two reads at once decide "moved" one after the other.
            let current: Option<u64> = tx.exec_first(
                "SELECT read_seq FROM read_cursors WHERE user_id = ? AND conv_id = ? FOR UPDATE",
                (uid, conv_id),
            )?;
            let wanted = seq.min(last);
            if current.is_some_and(|c| c >= wanted) {
                return Ok(ReadMark {
                    read_seq: current.unwrap_or(wanted),
                    moved: false,
                });
            }
            tx.exec_drop(
                "INSERT INTO read_cursors (user_id, conv_id, read_seq) VALUES (?, ?, ?)
                 ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
                (uid, conv_id, wanted),
            )?;
            Ok(ReadMark {
                read_seq: wanted,
                moved: current.unwrap_or(0) < wanted,
            })
        })
    }

    fn read_count(&self, conv_id: &str, seq: u64) -> StoreResult<u64> {
        self.run(|c| Ok(c.exec_first(READ_COUNT_SQL, (conv_id, seq))?.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_every_row_with_few_shapes() {
        assert_eq!(chunk_sizes(0), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1), vec![1]);
        assert_eq!(chunk_sizes(21), vec![16, 4, 1]);
        for n in 0..1000 {
            assert_eq!(chunk_sizes(n).iter().sum::<usize>(), n);
        }
    }

    #[test]
    fn migration_files_split_into_statements() {
        let s = statements(
            "-- c\nCREATE TABLE a (\n  x INT -- note\n);\n\nINSERT INTO a VALUES (1);\n",
        );
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE TABLE a"));
        assert_eq!(s[1], "INSERT INTO a VALUES (1)");
        assert!(statements(MIGRATIONS[0]).len() >= 10);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://root:s3cret@db:3306/wx"),
            "mysql://root:***@db:3306/wx"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
    }
}
