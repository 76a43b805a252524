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

mod messages;
mod service;
mod social;
mod users;
mod wechat;

pub use messages::{CONVERSATIONS_SQL, HISTORY_SQL, READ_COUNT_SQL, SYNC_SQL};

/// The migration that re-keys `messages` by msg_id (a table rebuild).
const REKEY_MIGRATION: usize = 8;

/// Migrations in order; `schema_version` records which are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../sql/mysql/001_init.sql"),
    include_str!("../../../sql/mysql/002_wechat_identities.sql"),
    include_str!("../../../sql/mysql/003_wx_cs_routes.sql"),
    include_str!("../../../sql/mysql/004_service_sessions.sql"),
    include_str!("../../../sql/mysql/005_consultations.sql"),
    include_str!("../../../sql/mysql/006_group_join_seq.sql"),
    include_str!("../../../sql/mysql/007_visitor_purge.sql"),
    include_str!("../../../sql/mysql/008_messages_by_id.sql"),
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
                    if i + 1 == REKEY_MIGRATION {
                        // The one migration that rebuilds a table: say how long writes will
                        // wait (InnoDB's estimate of the rows; counting them would scan).
                        let rows: Option<Option<u64>> = conn.exec_first(
                            "SELECT table_rows FROM information_schema.tables
                             WHERE table_schema = DATABASE() AND table_name = 'messages'",
                            (),
                        )?;
                        let rows = rows.flatten().unwrap_or(0);
                        if rows > 0 {
                            log::warn!(
                                "store: mysql migration {REKEY_MIGRATION} rebuilds the messages table (about {rows} rows); the server starts when it is done"
                            );
                        }
                    }
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
