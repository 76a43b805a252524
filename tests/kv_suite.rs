//! Tokens, presence and the shared cache: one suite per trait, run on the in-process
//! implementations and on a real Redis (its own key prefix, deleted afterwards).

mod common;

use common::services::{TestDb, TestRedis};
use std::sync::Arc;
use std::time::Duration;
use wxchat::store::cache::{MemoryCache, SharedCache};
use wxchat::store::mysql::MysqlStore;
use wxchat::store::presence::{MemoryPresence, Presence};
use wxchat::store::redis::RedisKv;
use wxchat::store::sqlite::SqliteStore;
use wxchat::store::tokens::{DbTokens, TokenStore};

const PRESENCE_TTL: Duration = Duration::from_millis(1500);

fn redis(t: &TestRedis) -> Arc<RedisKv> {
    Arc::new(
        RedisKv::open(&t.url, &t.prefix, Duration::from_secs(2), PRESENCE_TTL, 4).expect("redis"),
    )
}

// ---- tokens ----

fn tokens_suite(t: &dyn TokenStore) {
    let a = [0xa1u8; 32];
    let b = [0xb2u8; 32];
    assert_eq!(t.user(&a).unwrap(), None);
    t.put(&a, 42, 3600).unwrap();
    t.put(&b, 42, 1).unwrap();
    assert_eq!(t.user(&a).unwrap(), Some(42));
    assert_eq!(t.user(&b).unwrap(), Some(42));
    t.revoke(&a).unwrap();
    t.revoke(&a).unwrap(); // revoking twice is fine
    assert_eq!(t.user(&a).unwrap(), None);
    // b expires after its one-second TTL.
    common::wait_for("the token to expire", || t.user(&b).unwrap().is_none());
}

#[test]
fn tokens_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("t.db"), false).unwrap());
    tokens_suite(&DbTokens(store));
}

#[test]
fn tokens_in_mysql() {
    let db = TestDb::create();
    let store = Arc::new(MysqlStore::open(&db.url, 2, Duration::from_secs(5)).unwrap());
    tokens_suite(&DbTokens(store));
}

#[test]
fn tokens_in_redis() {
    let t = TestRedis::create();
    let kv = redis(&t);
    tokens_suite(&*kv);
    // SET .. EX: the key carries the TTL (7 days by default in the server).
    kv.put(&[7u8; 32], 9, 7 * 24 * 3600).unwrap();
    let key = format!("{}token:{}", t.prefix, "07".repeat(32));
    let client = redis::Client::open(t.url.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!(
        ttl > 7 * 24 * 3600 - 10 && ttl <= 7 * 24 * 3600,
        "ttl {ttl}"
    );
    let stored: String = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
    assert_eq!(
        stored, "9",
        "only the hash is a key; the token itself is stored nowhere"
    );
}

// ---- presence ----

fn presence_suite(p: &dyn Presence) {
    assert!(p.online(&[1, 2, 3]).unwrap().is_empty());
    p.set_online("node-a", &[1, 2]).unwrap();
    p.set_online("node-b", &[2, 3]).unwrap();
    assert_eq!(p.online(&[3, 1, 2, 4]).unwrap(), vec![3, 1, 2]);
    // Where each is, in the input order (the bus routes a batch of pushes with one call).
    assert_eq!(
        p.nodes_by_user(&[2, 4, 1]).unwrap(),
        vec![
            vec!["node-a".to_string(), "node-b".to_string()],
            vec![],
            vec!["node-a".to_string()]
        ]
    );
    // Offline on one node, still online on the other.
    p.set_offline("node-b", 2).unwrap();
    assert_eq!(p.online(&[1, 2, 3]).unwrap(), vec![1, 2, 3]);
    p.set_offline("node-a", 2).unwrap();
    assert_eq!(p.online(&[1, 2, 3]).unwrap(), vec![1, 3]);
    p.clear_node("node-a", &[1]).unwrap();
    assert_eq!(p.online(&[1, 2, 3]).unwrap(), vec![3]);
    // A node that stops refreshing (crashed) lapses after the TTL; one that refreshes stays.
    p.set_online("node-c", &[5]).unwrap();
    p.set_online("node-d", &[6]).unwrap();
    let deadline = std::time::Instant::now() + PRESENCE_TTL * 4;
    loop {
        p.set_online("node-d", &[6]).unwrap();
        let on = p.online(&[5, 6]).unwrap();
        if on == vec![6] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node-c never lapsed: {on:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn presence_in_process() {
    let p = MemoryPresence::new(PRESENCE_TTL);
    assert!(p.is_local());
    presence_suite(&p);
}

#[test]
fn presence_in_redis() {
    let t = TestRedis::create();
    let kv = redis(&t);
    assert!(!Presence::is_local(&*kv));
    presence_suite(&*kv);
}

#[test]
fn presence_is_shared_between_two_processes_views() {
    let t = TestRedis::create();
    let a = redis(&t);
    let b = redis(&t);
    a.set_online("a", &[10]).unwrap();
    assert_eq!(b.online(&[10]).unwrap(), vec![10]);
}

// ---- cache, locks, counters ----

fn cache_suite(c: &dyn SharedCache) {
    assert_eq!(c.get("access_token:wx1").unwrap(), None);
    c.set("access_token:wx1", "TOKEN-1", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        c.get("access_token:wx1").unwrap().as_deref(),
        Some("TOKEN-1")
    );
    c.set("short", "v", Duration::from_millis(200)).unwrap();
    common::wait_for("the value to expire", || c.get("short").unwrap().is_none());
    c.delete("access_token:wx1").unwrap();
    assert_eq!(c.get("access_token:wx1").unwrap(), None);

    // Single flight: one holder at a time; only the owner releases; an expired lock is free.
    let owner = c
        .try_lock("refresh:wx1", Duration::from_secs(30))
        .unwrap()
        .expect("free");
    assert_eq!(
        c.try_lock("refresh:wx1", Duration::from_secs(30)).unwrap(),
        None
    );
    c.unlock("refresh:wx1", "not-the-owner").unwrap();
    assert_eq!(
        c.try_lock("refresh:wx1", Duration::from_secs(30)).unwrap(),
        None
    );
    c.unlock("refresh:wx1", &owner).unwrap();
    let short = c
        .try_lock("refresh:wx1", Duration::from_millis(200))
        .unwrap()
        .expect("released");
    common::wait_for("the lock to expire", || {
        c.try_lock("refresh:wx1", Duration::from_secs(30))
            .unwrap()
            .is_some()
    });
    c.unlock("refresh:wx1", &short).unwrap(); // stale owner: must not free the new holder
    assert_eq!(
        c.try_lock("refresh:wx1", Duration::from_secs(30)).unwrap(),
        None
    );
    // A value and a lock with the same name do not collide.
    assert_eq!(c.get("refresh:wx1").unwrap(), None);

    // Fixed-window counters.
    let w = Duration::from_millis(400);
    assert_eq!(c.incr_window("login:1.2.3.4", w).unwrap(), 1);
    assert_eq!(c.incr_window("login:1.2.3.4", w).unwrap(), 2);
    assert_eq!(c.peek_window("login:1.2.3.4").unwrap(), 2);
    assert_eq!(c.peek_window("login:9.9.9.9").unwrap(), 0);
    assert_eq!(c.incr_window("login:5.6.7.8", w).unwrap(), 1);
    common::wait_for("the window to end", || {
        c.incr_window("login:1.2.3.4", w).unwrap() == 1
    });

    // Leases: the first taker holds it while renewing; others read the holder; it lapses
    // after its last renewal, and a release lets the next taker in at once.
    let ttl = Duration::from_millis(400);
    assert_eq!(c.lease("desk", "a", ttl).unwrap(), "a");
    assert_eq!(c.lease("desk", "b", ttl).unwrap(), "a");
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(c.lease("desk", "a", ttl).unwrap(), "a");
    std::thread::sleep(Duration::from_millis(250));
    // Renewed 250 ms ago: still a's, though 500 ms passed since it was taken.
    assert_eq!(c.lease("desk", "b", ttl).unwrap(), "a");
    common::wait_for("the lease to lapse", || {
        c.lease("desk", "b", ttl).unwrap() == "b"
    });
    c.release("desk", "a").unwrap();
    assert_eq!(c.lease("desk", "a", ttl).unwrap(), "b");
    c.release("desk", "b").unwrap();
    assert_eq!(c.lease("desk", "a", ttl).unwrap(), "a");
}

#[test]
fn cache_in_process() {
    cache_suite(&MemoryCache::new());
}

#[test]
fn cache_in_redis() {
    let t = TestRedis::create();
    cache_suite(&*redis(&t));
}

#[test]
fn locks_exclude_each_other_across_connections() {
    let t = TestRedis::create();
    let kvs: Vec<Arc<RedisKv>> = (0..4).map(|_| redis(&t)).collect();
    let winners: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = kvs
            .iter()
            .map(|kv| {
                s.spawn(|| {
                    kv.try_lock("refresh:x", Duration::from_secs(30))
                        .unwrap()
                        .is_some()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
}

#[test]
fn every_key_is_under_the_prefix_and_removed_by_cleanup() {
    let t = TestRedis::create();
    let kv = redis(&t);
    kv.put(&[1u8; 32], 1, 60).unwrap();
    // Presence: the user's nodes and the node's users (for the cluster's totals).
    kv.set_online("n", &[1]).unwrap();
    kv.set("k", "v", Duration::from_secs(60)).unwrap();
    kv.try_lock("l", Duration::from_secs(60)).unwrap();
    kv.incr_window("r", Duration::from_secs(60)).unwrap();
    // The node's figures and the live nodes.
    kv.report("n", 3, Duration::from_secs(60)).unwrap();
    let keys = t.keys();
    assert_eq!(keys.len(), 8, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(&t.prefix)));
    assert_eq!(kv.delete_all_keys().unwrap(), 8);
    assert!(t.keys().is_empty());
}

#[test]
fn unreachable_redis_is_an_error_at_start() {
    // A port nothing listens on (bound then dropped).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = RedisKv::open(
        &format!("redis://127.0.0.1:{port}"),
        "x:",
        Duration::from_millis(500),
        PRESENCE_TTL,
        1,
    )
    .err()
    .expect("must fail");
    assert!(e.to_string().contains("redis"), "{e}");
}
