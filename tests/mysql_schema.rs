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
    assert_eq!(versions(&db), vec![1, 2, 3, 4, 5, 6, 7, 8]);
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
    import_by_hand(&db, "sql/mysql/001_init.sql");
    assert_eq!(versions(&db), vec![1]);
    let store = MysqlStore::open(&db.url, 2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        versions(&db),
        vec![1, 2, 3, 4, 5, 6, 7, 8],
        "1 not applied a second time; 2 to 8 applied"
    );
    let (u, _) = store
        .upsert_app_user("x", &Default::default(), true)
        .unwrap();
    assert_eq!(
        store.user(u.uid).unwrap().unwrap().app_uid.as_deref(),
        Some("x")
    );
}

/// Imports one schema file with the `mysql` client, as an operator would.
fn import_by_hand(db: &TestDb, file: &str) {
    let opts = mysql::Opts::from_url(&mysql_admin_url()).unwrap();
    let mut cmd = std::process::Command::new("mysql");
    cmd.arg(format!("--host={}", opts.get_ip_or_hostname()))
        .arg(format!("--port={}", opts.get_tcp_port()))
        .arg(format!("--user={}", opts.get_user().unwrap_or("root")))
        .arg(&db.name)
        .stdin(std::fs::File::open(file).unwrap());
    if let Some(p) = opts.get_pass() {
        cmd.env("MYSQL_PWD", p);
    }
    let out = cmd
        .output()
        .expect("the mysql client (Debian package mariadb-client) is needed for this test");
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Migration 8 re-keys a version 7 table by msg_id: every message survives with its ids and
/// seqs, reads find them in seq order, numbering goes on after them, and (conv_id, seq) is
/// still unique.
#[test]
fn migration_8_rekeys_messages_by_msg_id_and_keeps_them() {
    let db = TestDb::create();
    for file in [
        "001_init.sql",
        "002_wechat_identities.sql",
        "003_wx_cs_routes.sql",
        "004_service_sessions.sql",
        "005_consultations.sql",
        "006_group_join_seq.sql",
        "007_visitor_purge.sql",
    ] {
        import_by_hand(&db, &format!("sql/mysql/{file}"));
    }
    assert_eq!(versions(&db), vec![1, 2, 3, 4, 5, 6, 7]);
    // Version 7's rows, as its server wrote them: msg ids across two conversations,
    // interleaved, numbered by `counters`.
    let mut c = conn(&db);
    for (msg_id, conv, seq) in [
        (1u64, "p_1_2", 1u64),
        (2, "p_1_3", 1),
        (3, "p_1_2", 2),
        (4, "p_1_3", 2),
        (5, "p_1_2", 3),
    ] {
        c.exec_drop(
            "INSERT INTO messages (conv_id, seq, msg_id, client_msg_id, from_id, to_id, chat_type,
             msg_type, body, created_at) VALUES (?, ?, ?, ?, 1, ?, 0, 0, ?, ?)",
            (
                conv,
                seq,
                msg_id,
                format!("c{msg_id}"),
                if conv == "p_1_2" { 2u64 } else { 3 },
                format!("\"m{msg_id}\""),
                msg_id as i64,
            ),
        )
        .unwrap();
    }
    c.query_drop("INSERT INTO conversations (conv_id, chat_type, last_seq, last_msg_id, updated_at) VALUES ('p_1_2', 0, 3, 5, 5), ('p_1_3', 0, 2, 4, 4)").unwrap();
    c.query_drop("UPDATE counters SET value = 5 WHERE name = 'msg_id'")
        .unwrap();

    let store = MysqlStore::open(&db.url, 2, Duration::from_secs(5)).unwrap();
    assert_eq!(versions(&db), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let keys: Vec<(String, u32, String)> = c
        .query(
            "SELECT index_name, non_unique, GROUP_CONCAT(column_name ORDER BY seq_in_index)
             FROM information_schema.statistics
             WHERE table_schema = DATABASE() AND table_name = 'messages'
             GROUP BY index_name, non_unique ORDER BY index_name",
        )
        .unwrap();
    assert_eq!(
        keys,
        vec![
            (
                "messages_client".to_string(),
                0,
                "from_id,client_msg_id".to_string()
            ),
            (
                "messages_conv_seq".to_string(),
                0,
                "conv_id,seq".to_string()
            ),
            ("PRIMARY".to_string(), 0, "msg_id".to_string()),
        ]
    );
    let got: Vec<(u64, u64, String)> = store
        .sync("p_1_2", 0, 10)
        .unwrap()
        .into_iter()
        .map(|m| (m.msg_id, m.seq, m.body))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 1, "\"m1\"".to_string()),
            (3, 2, "\"m3\"".to_string()),
            (5, 3, "\"m5\"".to_string())
        ]
    );
    let newer = store
        .append_batch(&[NewMessage {
            conv_id: "p_1_3".into(),
            chat_type: 0,
            from_id: 1,
            to_id: 3,
            msg_type: 0,
            body: "\"m6\"".into(),
            client_msg_id: Some("c6".into()),
            created_at: 6,
        }])
        .unwrap();
    assert_eq!((newer[0].message.msg_id, newer[0].message.seq), (6, 3));
    // A resend of a version 7 message is still found by its client id.
    let again = store
        .append_batch(&[NewMessage {
            conv_id: "p_1_2".into(),
            chat_type: 0,
            from_id: 1,
            to_id: 2,
            msg_type: 0,
            body: "\"m3\"".into(),
            client_msg_id: Some("c3".into()),
            created_at: 7,
        }])
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!((again[0].message.msg_id, again[0].message.seq), (3, 2));
    // (conv_id, seq) stays unique.
    let twice = c.exec_drop(
        "INSERT INTO messages (conv_id, seq, msg_id, from_id, to_id, chat_type, msg_type, body,
         created_at) VALUES ('p_1_2', 2, 99, 1, 2, 0, 0, '\"x\"', 8)",
        (),
    );
    assert!(twice.is_err(), "a second (p_1_2, 2) was accepted");
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
