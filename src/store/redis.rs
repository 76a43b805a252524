//! Redis: tokens, presence, the shared cache (access_token slot, locks) and rate-limit counters,
//! every key under `[redis] prefix`.
//!
//! Keys (P = prefix):
//! - `P token:<sha256 hex>` = uid, `SET .. EX ttl` (revocation is `DEL`);
//! - `P presence:<uid>` = sorted set of node -> lapse time (ms), refreshed by each node;
//! - `P cache:<key>` = value with `PX`; `P lock:<key>` = owner, `SET NX PX`, released by a
//!   compare-and-delete script; `P rate:<key>` = counter, `INCR` + `PEXPIRE` on the first hit.
//!
//! Connections are pooled; connection-level errors trip a [`Backoff`] so that while Redis is
//! down requests fail at once with `Unavailable` (503) and one probe per delay reconnects.

use super::backoff::Backoff;
use super::cache::{lock_owner, SharedCache};
use super::presence::{ClusterFigures, NodeFigures, Presence};
use super::tokens::TokenStore;
use super::{now_ms, StoreError, StoreResult};
use redis::{Connection, RedisError, RedisResult};
use std::sync::Mutex;
use std::time::Duration;

const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// Takes a free lease or extends one's own; returns the holder.
const LEASE: &str = "local h = redis.call('GET', KEYS[1]) \
    if not h then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return ARGV[1] end \
    if h == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return h";
const INCR_WINDOW: &str =
    "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n";

pub struct RedisKv {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    presence_ttl: Duration,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    backoff: Backoff,
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl RedisKv {
    /// Parses the URL and checks that the server answers `PING`; a bad scheme or an unreachable
    /// server is an error here, at start.
    pub fn open(
        url: &str,
        prefix: &str,
        timeout: Duration,
        presence_ttl: Duration,
        max_idle: usize,
    ) -> StoreResult<RedisKv> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::unavailable(format!("bad [redis] url: {e}")))?;
        let kv = RedisKv {
            client,
            prefix: prefix.to_string(),
            timeout,
            presence_ttl,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            backoff: Backoff::with_max("redis", std::time::Duration::from_secs(1)),
        };
        let pong: String = kv.with_conn(|c| redis::cmd("PING").query(c))?;
        if pong != "PONG" {
            return Err(StoreError::unavailable(format!(
                "redis answered PING with {pong:?}"
            )));
        }
        Ok(kv)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + rest.len() + 1);
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push(':');
        k.push_str(rest);
        k
    }

    fn connect(&self) -> RedisResult<Connection> {
        let conn = self.client.get_connection_with_timeout(self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok(conn)
    }

    /// Runs `f` on a pooled connection. A connection that failed at the connection level is
    /// dropped, and the backoff decides when the next attempt may connect.
    pub fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> StoreResult<T> {
        self.backoff.check().map_err(StoreError::unavailable)?;
        let pooled = match self.idle.lock() {
            Ok(mut idle) => idle.pop(),
            Err(p) => p.into_inner().pop(),
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => match self.connect() {
                Ok(c) => c,
                Err(e) => {
                    self.backoff.failed(&e.to_string());
                    return Err(StoreError::unavailable(format!("redis: {e}")));
                }
            },
        };
        match f(&mut conn) {
            Ok(v) => {
                self.backoff.succeeded();
                self.give_back(conn);
                Ok(v)
            }
            Err(e) if is_connection_error(&e) => {
                self.backoff.failed(&e.to_string());
                Err(StoreError::unavailable(format!("redis: {e}")))
            }
            Err(e) => {
                self.give_back(conn);
                Err(StoreError::unavailable(format!("redis: {e}")))
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
    }

    /// Deletes every key under the prefix (tests clean up with this). Uses SCAN, not KEYS.
    pub fn delete_all_keys(&self) -> StoreResult<u64> {
        let pattern = format!("{}*", self.prefix);
        self.with_conn(|c| {
            let mut cursor: u64 = 0;
            let mut deleted = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query(c)?;
                if !keys.is_empty() {
                    deleted += redis::cmd("DEL").arg(&keys).query::<u64>(c)?;
                }
                if next == 0 {
                    return Ok(deleted);
                }
                cursor = next;
            }
        })
    }
}

impl TokenStore for RedisKv {
    fn put(&self, token_hash: &[u8], uid: u64, ttl_s: u64) -> StoreResult<()> {
        let key = self.key("token", &hex(token_hash));
        self.with_conn(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(uid)
                .arg("EX")
                .arg(ttl_s.max(1))
                .query::<()>(c)
        })
    }

    fn user(&self, token_hash: &[u8]) -> StoreResult<Option<u64>> {
        let key = self.key("token", &hex(token_hash));
        self.with_conn(|c| redis::cmd("GET").arg(&key).query::<Option<u64>>(c))
    }

    fn revoke(&self, token_hash: &[u8]) -> StoreResult<()> {
        let key = self.key("token", &hex(token_hash));
        self.with_conn(|c| redis::cmd("DEL").arg(&key).query::<()>(c))
    }
}

impl Presence for RedisKv {
    fn is_local(&self) -> bool {
        false
    }

    fn set_online(&self, node: &str, uids: &[u64]) -> StoreResult<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let ttl_ms = self.presence_ttl.as_millis() as i64;
        let until = now + ttl_ms;
        let mut pipe = redis::pipe();
        for &uid in uids {
            let key = self.key("presence", &uid.to_string());
            pipe.cmd("ZADD").arg(&key).arg(until).arg(node).ignore();
            // Entries of nodes that stopped refreshing, and the whole key once nobody refreshes.
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms * 2).ignore();
        }
        // The node's own users, for the cluster's distinct count (`report`).
        let mine = self.key("node_users", node);
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&mine);
        for &uid in uids {
            zadd.arg(until).arg(uid);
        }
        pipe.add_command(zadd).ignore();
        pipe.cmd("PEXPIRE").arg(&mine).arg(ttl_ms * 2).ignore();
        self.with_conn(|c| pipe.query::<()>(c))
    }

    fn set_offline(&self, node: &str, uid: u64) -> StoreResult<()> {
        let key = self.key("presence", &uid.to_string());
        let mine = self.key("node_users", node);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(&key).arg(node).ignore();
        pipe.cmd("ZREM").arg(&mine).arg(uid).ignore();
        self.with_conn(|c| pipe.query::<()>(c))
    }

    fn online(&self, uids: &[u64]) -> StoreResult<Vec<u64>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for &uid in uids {
            pipe.cmd("ZCOUNT")
                .arg(self.key("presence", &uid.to_string()))
                .arg(format!("({now}"))
                .arg("+inf");
        }
        let counts: Vec<u64> = self.with_conn(|c| pipe.query(c))?;
        let mut out = Vec::new();
        for (uid, n) in uids.iter().zip(counts) {
            if n > 0 && !out.contains(uid) {
                out.push(*uid);
            }
        }
        Ok(out)
    }

    fn clear_node(&self, node: &str, uids: &[u64]) -> StoreResult<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &uid in uids {
            pipe.cmd("ZREM")
                .arg(self.key("presence", &uid.to_string()))
                .arg(node)
                .ignore();
        }
        pipe.cmd("DEL").arg(self.key("node_users", node)).ignore();
        self.with_conn(|c| pipe.query::<()>(c))
    }

    fn report(&self, node: &str, connections: u64, ttl: Duration) -> StoreResult<ClusterFigures> {
        let now = now_ms();
        let ttl_ms = ttl.as_millis().max(1) as i64;
        let nodes_key = self.key("nodes", "");
        let figures_key = |n: &str| self.key("node", n);
        self.with_conn(|c| {
            // This node's figures, then the live nodes (a node that stopped reporting lapses).
            let mine = figures_key(node);
            redis::pipe()
                .cmd("HSET")
                .arg(&mine)
                .arg("connections")
                .arg(connections)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&mine)
                .arg(ttl_ms)
                .ignore()
                .cmd("ZADD")
                .arg(&nodes_key)
                .arg(now + ttl_ms)
                .arg(node)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&nodes_key)
                .arg("-inf")
                .arg(now)
                .ignore()
                .query::<()>(c)?;
            let live: Vec<String> = redis::cmd("ZRANGE")
                .arg(&nodes_key)
                .arg(0)
                .arg(-1)
                .query(c)?;
            let mut pipe = redis::pipe();
            for n in &live {
                pipe.cmd("HGET").arg(figures_key(n)).arg("connections");
                pipe.cmd("ZCOUNT")
                    .arg(self.key("node_users", n))
                    .arg(format!("({now}"))
                    .arg("+inf");
            }
            let counts: Vec<Option<u64>> = pipe.query(c)?;
            let nodes = live
                .iter()
                .zip(counts.chunks(2))
                .map(|(n, pair)| NodeFigures {
                    node: n.clone(),
                    connections: pair[0].unwrap_or(0),
                    users_online: pair[1].unwrap_or(0),
                })
                .collect();
            // Distinct users: the union of the live nodes' users, counted where still valid.
            let users_online = if live.is_empty() {
                0
            } else {
                let tmp = self.key("node_users_union", node);
                let mut union = redis::cmd("ZUNIONSTORE");
                union.arg(&tmp).arg(live.len());
                for n in &live {
                    union.arg(self.key("node_users", n));
                }
                union.arg("AGGREGATE").arg("MAX");
                let (_, count, _): (u64, u64, u64) = redis::pipe()
                    .add_command(union)
                    .cmd("ZCOUNT")
                    .arg(&tmp)
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .cmd("DEL")
                    .arg(&tmp)
                    .query(c)?;
                count
            };
            Ok(ClusterFigures {
                nodes,
                users_online,
            })
        })
    }

    fn nodes_of(&self, uids: &[u64]) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = self.nodes_by_user(uids)?.into_iter().flatten().collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn nodes_by_user(&self, uids: &[u64]) -> StoreResult<Vec<Vec<String>>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for &uid in uids {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.key("presence", &uid.to_string()))
                .arg(format!("({now}"))
                .arg("+inf");
        }
        let mut lists: Vec<Vec<String>> = self.with_conn(|c| pipe.query(c))?;
        for l in &mut lists {
            l.sort();
        }
        Ok(lists)
    }
}

impl RedisKv {
    /// Deletes a lock's or lease's key if `holder` still holds it (one may have lapsed and been
    /// taken by another since).
    fn delete_if_held(&self, key: &str, holder: &str) -> StoreResult<()> {
        self.with_conn(|c| {
            redis::cmd("EVAL")
                .arg(UNLOCK)
                .arg(1)
                .arg(key)
                .arg(holder)
                .query::<()>(c)
        })
    }
}

impl SharedCache for RedisKv {
    fn get(&self, key: &str) -> StoreResult<Option<String>> {
        let key = self.key("cache", key);
        self.with_conn(|c| redis::cmd("GET").arg(&key).query(c))
    }

    fn set(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<()> {
        let key = self.key("cache", key);
        self.with_conn(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg((ttl.as_millis() as u64).max(1))
                .query::<()>(c)
        })
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        let key = self.key("cache", key);
        self.with_conn(|c| redis::cmd("DEL").arg(&key).query::<()>(c))
    }

    fn try_lock(&self, key: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let key = self.key("lock", key);
        let owner = lock_owner()?;
        let got: Option<String> = self.with_conn(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg((ttl.as_millis() as u64).max(1))
                .query(c)
        })?;
        Ok(got.map(|_| owner))
    }

    fn unlock(&self, key: &str, owner: &str) -> StoreResult<()> {
        self.delete_if_held(&self.key("lock", key), owner)
    }

    fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<String> {
        let key = self.key("lease", key);
        self.with_conn(|c| {
            redis::cmd("EVAL")
                .arg(LEASE)
                .arg(1)
                .arg(&key)
                .arg(holder)
                .arg((ttl.as_millis() as u64).max(1))
                .query(c)
        })
    }

    fn release(&self, key: &str, holder: &str) -> StoreResult<()> {
        self.delete_if_held(&self.key("lease", key), holder)
    }

    fn incr_window(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let key = self.key("rate", key);
        self.with_conn(|c| {
            redis::cmd("EVAL")
                .arg(INCR_WINDOW)
                .arg(1)
                .arg(&key)
                .arg((window.as_millis() as u64).max(1))
                .query(c)
        })
    }

    fn peek_window(&self, key: &str) -> StoreResult<u64> {
        let key = self.key("rate", key);
        self.with_conn(|c| {
            redis::cmd("GET")
                .arg(&key)
                .query::<Option<u64>>(c)
                .map(Option::unwrap_or_default)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_hash() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn unknown_scheme_is_an_error_not_a_fallback() {
        let e = RedisKv::open(
            "http://127.0.0.1:6379",
            "t:",
            Duration::from_millis(200),
            Duration::from_secs(60),
            1,
        )
        .err()
        .expect("must fail");
        assert!(e.to_string().contains("bad [redis] url"), "{e}");
    }
}
