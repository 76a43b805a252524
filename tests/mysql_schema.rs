//! The MySQL schema: importable by hand with the `mysql` client, applied once at start (a second
//! start or a hand-imported database is left alone), utf8mb4 throughout, and the read paths of
//! `sync`, `history`, `conversations` and read receipts served by indexes, never a table scan.

mod common;
use common::services::{mysql_admin_url, TestDb};
use mysql::prelude::Queryable;
use std::time::Duration;
use wxchat::store::mysql::{MysqlStore, CONVERSATIONS_SQL, HISTORY_SQL, READ_COUNT_SQL, SYNC_SQL};
use wxchat::store::{MessageStore, NewMessage, UserStore};

fn conn(db: &TestDb) -> mysql::Conn {
    mysql::Conn::new(mysql::Opts::from_url(&db.url).unwrap()).unwrap()
}

fn versions(db: &TestDb) -> Vec<u32> {
    conn(db)
        .query("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
}

#[test]
fn migrations_apply_once() {
    let db = TestDb::create();
    drop(MysqlStore::open(&db.url, 2, Duration::from_secs(5)).unwrap());
    drop(MysqlStore::open(&db.url, 2, Duration::from_secs(5)).unwrap());
    assert_eq!(versions(&db), vec![1, 2, 3, 4, 5, 6, 7]);
    // Every text column is utf8mb4.
    let non_mb4: Vec<(String, String)> = conn(&db)
        .query(
            "SELECT table_name, column_name FROM information_schema.columns
             WHERE table_schema = DATABASE() AND character_set_name IS NOT NULL
             AND character_set_name <> 'utf8mb4'",
        )
        .unwrap();
    assert!(non_mb4.is_empty(), "{non_mb4:?}");
}

#[test]
fn the_schema_file_imports_by_hand_and_the_server_accepts_it() {
    let db = TestDb::create();
    let opts = mysql::Opts::from_url(&mysql_admin_url()).unwrap();
    let mut cmd = std::process::Command::new("mysql");
    cmd.arg(format!("--host={}", opts.get_ip_or_hostname()))
        .arg(format!("--port={}", opts.get_tcp_port()))
        .arg(format!("--user={}", opts.get_user().unwrap_or("root")))
        .arg(&db.name)
        .stdin(std::fs::File::open("sql/mysql/001_init.sql").unwrap());
    if let Some(p) = opts.get_pass() {
        cmd.env("MYSQL_PWD", p);
    }
    let out = cmd
        .output()
        .expect("the mysql client (Debian package mariadb-client) is needed for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(versions(&db), vec![1]);
    let store = MysqlStore::open(&db.url, 2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        versions(&db),
        vec![1, 2, 3, 4, 5, 6, 7],
        "1 not applied a second time; 2 to 7 applied"
    );
    let (u, _) = store
        .upsert_app_user("x", &Default::default(), true)
        .unwrap();
    assert_eq!(
        store.user(u.uid).unwrap().unwrap().app_uid.as_deref(),
        Some("x")
    );
}

/// EXPLAIN rows as (table, access type, key, extra).
fn explain(
    c: &mut mysql::Conn,
    sql: &str,
    params: Vec<mysql::Value>,
) -> Vec<(String, String, String, String)> {
    let rows: Vec<mysql::Row> = c.exec(format!("EXPLAIN {sql}"), params).unwrap();
    rows.into_iter()
        .map(|r| {
            let get = |name: &str| -> String {
                r.get_opt::<Option<String>, &str>(name)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or_default()
            };
            (get("table"), get("type"), get("key"), get("Extra"))
        })
        .collect()
}

#[test]
fn read_paths_use_indexes() {
    let db = TestDb::create();
    let store = MysqlStore::open(&db.url, 2, Duration::from_secs(5)).unwrap();
    // Enough rows, in many conversations, that a scan would be visible to the optimizer.
    let mut batch = Vec::new();
    for i in 0..3000u64 {
        let a = 1 + i % 60;
        let b = 100 + i % 7;
        batch.push(NewMessage {
            conv_id: format!("p_{a}_{b}"),
            chat_type: 0,
            from_id: a,
            to_id: b,
            msg_type: 0,
            body: format!("\"{i}\""),
            client_msg_id: Some(format!("c{i}")),
            created_at: i as i64,
        });
    }
    for chunk in batch.chunks(500) {
        store.append_batch(chunk).unwrap();
    }
    let mut c = conn(&db);
    c.query_drop("ANALYZE TABLE messages, read_cursors, conversations")
        .unwrap();
    let conv: mysql::Value = "p_1_100".into();
    let cases: Vec<(&str, &str, Vec<mysql::Value>)> = vec![
        (
            "sync",
            SYNC_SQL,
            vec![conv.clone(), 10u64.into(), 50u32.into()],
        ),
        (
            "history",
            HISTORY_SQL,
            vec![conv.clone(), 40u64.into(), 50u32.into()],
        ),
        (
            "conversations",
            CONVERSATIONS_SQL,
            vec![1u64.into(), 50u32.into()],
        ),
        (
            "read_count",
            READ_COUNT_SQL,
            vec![conv.clone(), 3u64.into()],
        ),
    ];
    for (name, sql, params) in cases {
        let plan = explain(&mut c, sql, params);
        assert!(!plan.is_empty());
        for (table, access, key, extra) in &plan {
            assert_ne!(access, "ALL", "{name}: full scan of {table}: {plan:?}");
            assert!(
                !key.is_empty(),
                "{name}: {table} read without an index: {plan:?}"
            );
            if name == "sync" || name == "history" {
                assert!(
                    !extra.contains("filesort"),
                    "{name}: sorts instead of reading in index order: {plan:?}"
                );
            }
        }
    }
}
