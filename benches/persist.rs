//! Persisted messages per second through the persister (group commit) on each store.
//!
//!   cargo bench --bench persist                  # 200,000 messages per store
//!   cargo bench --bench persist -- mysql 500000  # one store, another count
//!   cargo bench --bench persist -- sqlite 200000 10000  # ... across 10,000 conversations
//!
//! MySQL: a scratch database `wxchat_bench_<pid>` is created through WXCHAT_BENCH_MYSQL_URL
//! (default mysql://root@127.0.0.1:3306/test) and dropped at the end. Messages are one-to-one
//! text messages (~100 bytes) across 1,000 conversations (the third argument, or the environment's
//! WXCHAT_BENCH_CONVERSATIONS, sets another count: 1,000 senders, each writing round-robin to
//! count / 1,000 friends; message i goes to conversation i mod count, so a batch's messages are
//! in as many different conversations as it can be), each with a client_msg_id, so the
//! dedupe lookup, seq allocation, cursor upserts and the commit are all in the figure. Under
//! `cargo test` (no `--bench` flag) it runs a small smoke round instead. Batches are bounded by
//! `[store] max_batch`'s default, or by WXCHAT_BENCH_MAX_BATCH. With NOCMID set in the
//! environment the messages carry no client_msg_id: the figure without the dedupe index's cost
//! (a bound, not a mode the server has). The ids are `bench-<i>`, which grow with the message as
//! time-first ids do; with RANDOM_CMID set they are 32 random-looking hex digits instead, as a
//! client sending UUIDs makes them.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxchat::rt::persister::Persister;
use wxchat::store::mysql::MysqlStore;
use wxchat::store::sqlite::SqliteStore;
use wxchat::store::{NewMessage, Store};

/// The server's allocators: Rust's and SQLite's allocations on jemalloc, as `server` runs them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Message `i` of a run across `convs` conversations: conversation `i % convs`, whose sender
/// is one of 1,000 users and whose receiver is that sender's `(i % convs) / 1000`-th friend.
fn message(i: u64, convs: u64) -> NewMessage {
    let c = i % convs;
    let a = c % 1000;
    let b = 1000 + (a * 7 + c / 1000) % 1000.max(convs);
    NewMessage {
        conv_id: format!("p_{a}_{b}"),
        chat_type: 0,
        from_id: a,
        to_id: b,
        msg_type: 0,
        body: format!(
            "\"benchmark message number {i:>10}, about one hundred bytes of text in all ...\""
        ),
        client_msg_id: if std::env::var("NOCMID").is_ok() {
            None
        } else if std::env::var("RANDOM_CMID").is_ok() {
            // SipHash with fixed keys: the same well-spread ids in every run.
            let spread = |x: u64| BuildHasherDefault::<DefaultHasher>::default().hash_one(x);
            Some(format!("{:016x}{:016x}", spread(i), spread(!i)))
        } else {
            Some(format!("bench-{i}"))
        },
        created_at: i as i64,
    }
}

/// Pushes `n` messages through a persister as fast as it takes them; returns messages/second.
fn run(store: Arc<dyn Store>, n: u64, convs: u64, max_batch: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (d, f) = (done.clone(), failed.clone());
    let queue = wxchat::config::PERSIST_QUEUE_MESSAGES;
    let gate = &wxchat::foreground::GATE;
    let persister = Persister::start(
        store,
        max_batch,
        queue,
        0,
        gate,
        move |outcomes: Vec<bool>| {
            let ok = outcomes.iter().filter(|o| **o).count() as u64;
            d.fetch_add(ok, Ordering::Relaxed);
            f.fetch_add(outcomes.len() as u64 - ok, Ordering::Relaxed);
        },
    )
    .expect("persister");
    let started = Instant::now();
    for i in 0..n {
        let mut m = message(i, convs);
        loop {
            match persister.submit(m, Box::new(|r| r.is_ok())) {
                Ok(()) => break,
                Err(_) => {
                    // Queue full: the store is the bottleneck, as it should be.
                    std::thread::sleep(Duration::from_micros(200));
                    m = message(i, convs);
                }
            }
        }
    }
    while done.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    drop(persister);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "some messages failed");
    n as f64 / elapsed.as_secs_f64()
}

fn mysql_admin_url() -> String {
    std::env::var("WXCHAT_BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_string())
}

fn with_mysql(f: impl FnOnce(&str)) {
    use mysql::prelude::Queryable;
    let admin = mysql_admin_url();
    let name = format!("wxchat_bench_{}", std::process::id());
    let mut c = mysql::Conn::new(mysql::Opts::from_url(&admin).expect("url"))
        .unwrap_or_else(|e| panic!("MySQL is needed at {admin}: {e}"));
    c.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        .expect("create database");
    let slash = admin.rfind('/').expect("a database path in the URL");
    let url = format!("{}/{name}", &admin[..slash]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&url)));
    let _ = c.query_drop(format!("DROP DATABASE `{name}`"));
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn main() {
    wxchat::store::sqlite::use_jemalloc().expect("SQLite not started yet");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let rest: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let only = rest.first().map(|s| s.as_str());
    let n: u64 = match rest.get(1) {
        Some(s) => s.parse().expect("count"),
        None if bench => 200_000,
        None => 2_000,
    };
    let convs: u64 = match rest.get(2) {
        Some(s) => s.parse().expect("conversations"),
        None => std::env::var("WXCHAT_BENCH_CONVERSATIONS")
            .map_or(1000, |s| s.parse().expect("WXCHAT_BENCH_CONVERSATIONS")),
    };
    assert!(
        convs >= 1000,
        "at least 1,000 conversations (one per sender)"
    );
    // The server's own batch bound unless WXCHAT_BENCH_MAX_BATCH says otherwise.
    let max_batch: usize = std::env::var("WXCHAT_BENCH_MAX_BATCH").map_or_else(
        |_| wxchat::config::StoreConfig::default().max_batch,
        |s| s.parse().expect("WXCHAT_BENCH_MAX_BATCH"),
    );
    if only.is_none() || only == Some("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("b.db"), false).unwrap());
        let rate = run(store, n, convs, max_batch);
        let size = |f: &str| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len() >> 20);
        println!(
            "sqlite (synchronous=normal): {n} messages in {convs} conversations, {rate:.0} msg/s (database {} MiB, WAL {} MiB)",
            size("b.db"),
            size("b.db-wal")
        );
    }
    if only.is_none() || only == Some("mysql") {
        with_mysql(|url| {
            let store = Arc::new(MysqlStore::open(url, 4, Duration::from_secs(30)).unwrap());
            let rate = run(store, n, convs, max_batch);
            println!("mysql: {n} messages in {convs} conversations, {rate:.0} msg/s");
        });
    }
}
