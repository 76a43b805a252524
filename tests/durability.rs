//! An acknowledged message survives `kill -9`: clients send concurrently, the server process is
//! killed mid-stream, restarted on the same data, and every acknowledged message is found, in
//! order, with no gap in seq. Run on the embedded store and on MySQL + Redis.

mod common;
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

fn api(addr: std::net::SocketAddr, action: &str, body: Value) -> Value {
    let r = http_post_json(
        addr,
        &format!("/api/server/{action}"),
        &body,
        "Authorization: Bearer k\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].clone()
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    survives_kill_9("");
}

#[test]
fn acknowledged_messages_survive_kill_9_on_mysql_and_redis() {
    let db = common::services::TestDb::create();
    let redis = common::services::TestRedis::create();
    survives_kill_9(&merge_toml(&db.store_toml(), &redis.toml()));
}

fn survives_kill_9(backend_toml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &merge_toml(
            "[api]\nkey = \"k\"\n[chat]\nmax_msgs_per_sec = 0\n",
            backend_toml,
        ),
    );
    let data = dir.path().join("data");
    let (mut child, addr) = spawn_foreground(&config, &data);

    // Four senders, each writing to its own friend, plus everyone into one group.
    let hub = api(addr, "user", json!({"app_uid": "hub"}));
    let hub_uid = hub["uid"].as_u64().unwrap();
    let mut senders = Vec::new();
    for i in 0..4 {
        let u = api(addr, "user", json!({"app_uid": format!("s{i}")}));
        let uid = u["uid"].as_u64().unwrap();
        api(
            addr,
            "friend_add",
            json!({"uid": uid, "friend_id": hub_uid}),
        );
        senders.push((uid, u["token"].as_str().unwrap().to_string()));
    }
    let members: Vec<u64> = senders.iter().map(|s| s.0).collect();
    let g = api(
        addr,
        "group_create",
        json!({"owner_id": hub_uid, "name": "g", "members": members}),
    );
    let gid = g["group"]["group_id"].as_u64().unwrap();

    // (conv_id, seq, client_msg_id) of every acknowledged message.
    let acked: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let mut threads = Vec::new();
    for (i, (_uid, token)) in senders.iter().cloned().enumerate() {
        let acked = acked.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = WsClient::connect(addr, &format!("/ws?token={token}"));
            assert_eq!(c.recv_json()["code"], 200);
            for n in 0..100_000u64 {
                let cmid = format!("{i}-{n}");
                let (ct, to) = if n % 2 == 0 { (0, hub_uid) } else { (1, gid) };
                let cmd = json!({"cmd":"send","req_id":n,"chat_type":ct,"to_id":to,"msg_type":0,"msg":format!("m {cmid}"),"client_msg_id":cmid});
                let mut frame = encode_client_frame(true, 0, OP_TEXT, cmd.to_string().as_bytes(), true);
                if std::io::Write::write_all(&mut c.stream, &frame).is_err() {
                    return;
                }
                frame.clear();
                // Wait for this send's ack; anything else (deliveries) is skipped.
                loop {
                    let f = match c.recv() {
                        Ok(f) => f,
                        Err(_) => return, // the server died: unacknowledged, fine
                    };
                    if f.opcode != OP_TEXT {
                        continue;
                    }
                    let v: Value = serde_json::from_slice(&f.payload).unwrap();
                    if v["cmd"] == "send" && v["req_id"] == n {
                        assert_eq!(v["code"], 200, "{v}");
                        let d = &v["data"];
                        acked.lock().unwrap().push((
                            d["conv_id"].as_str().unwrap().to_string(),
                            d["seq"].as_u64().unwrap(),
                            cmid.clone(),
                        ));
                        break;
                    }
                }
            }
        }));
    }
    wait_for("some acknowledged messages", || {
        acked.lock().unwrap().len() >= 400
    });
    // SAFETY: SIGKILL to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    println!("{} messages acknowledged before kill -9", acked.len());
    // On SQLite, the latest of them are usually still only in the commit log, which the restart
    // applies (`store::sqlite::logged` tests that path deterministically).
    if let Ok(log) = std::fs::metadata(data.join("wxchat.db.commitlog")) {
        println!("commit log left behind: {} bytes", log.len());
    }

    // Restart on the same data directory (the stale pid file must not block it).
    let (mut child, addr) = spawn_foreground(&config, &data);
    let hub = api(addr, "user", json!({"app_uid": "hub"}));
    let mut c = WsClient::connect(
        addr,
        &format!("/ws?token={}", hub["token"].as_str().unwrap()),
    );
    assert_eq!(c.recv_json()["code"], 200);
    let mut convs: Vec<String> = acked.iter().map(|a| a.0.clone()).collect();
    convs.sort();
    convs.dedup();
    let mut req = 0;
    for conv in convs {
        let mut stored: Vec<(u64, String)> = Vec::new();
        loop {
            req += 1;
            let after = stored.last().map_or(0, |s| s.0);
            c.send_text(
                &json!({"cmd":"sync","req_id":req,"conv_id":conv,"after_seq":after,"limit":200})
                    .to_string(),
            );
            let r = loop {
                let v = c.recv_json();
                if v["req_id"] == req {
                    break v;
                }
            };
            assert_eq!(r["code"], 200, "{r}");
            for m in r["data"]["messages"].as_array().unwrap() {
                let text = m["msg"].as_str().unwrap();
                stored.push((
                    m["seq"].as_u64().unwrap(),
                    text.trim_start_matches("m ").to_string(),
                ));
            }
            if r["data"]["has_more"] == false {
                break;
            }
        }
        // No gap: seqs are exactly 1..=n.
        for (i, (seq, _)) in stored.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "gap in {conv}");
        }
        // Every acknowledged message is there, at the seq it was acknowledged with.
        for (_, seq, cmid) in acked.iter().filter(|a| a.0 == conv) {
            let found = stored.get((*seq - 1) as usize).map(|s| s.1.as_str());
            assert_eq!(
                found,
                Some(cmid.as_str()),
                "acknowledged {cmid} (seq {seq}) lost in {conv}"
            );
        }
    }
    child.stop_cleanly();
}

/// After a clean stop the database file alone holds every acknowledged message: the WAL has
/// been folded into it, so copying that one file is a complete backup.
#[test]
fn a_clean_stop_leaves_every_message_in_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[api]\nkey = \"k\"\n[chat]\nmax_msgs_per_sec = 0\n",
    );
    let data = dir.path().join("data");
    let (mut child, addr) = spawn_foreground(&config, &data);
    let a = api(addr, "user", json!({"app_uid": "a"}));
    let b = api(addr, "user", json!({"app_uid": "b"}));
    let (a_uid, b_uid) = (a["uid"].as_u64().unwrap(), b["uid"].as_u64().unwrap());
    api(
        addr,
        "friend_add",
        json!({"uid": a_uid, "friend_id": b_uid}),
    );
    let mut c = WsClient::connect(addr, &format!("/ws?token={}", a["token"].as_str().unwrap()));
    assert_eq!(c.recv_json()["code"], 200);
    // In windows of 50, under the per-connection limit of requests in flight.
    let sent = 300u64;
    for window in 0..sent / 50 {
        for n in window * 50..(window + 1) * 50 {
            c.send_text(
                &json!({"cmd":"send","req_id":n,"chat_type":0,"to_id":b_uid,"msg_type":0,
                        "msg":format!("m{n}"),"client_msg_id":format!("c{n}")})
                .to_string(),
            );
        }
        let mut acked = 0;
        while acked < 50 {
            let v = c.recv_json();
            if v["cmd"] == "send" {
                assert_eq!(v["code"], 200, "{v}");
                acked += 1;
            }
        }
    }
    drop(c);
    child.stop_cleanly();

    let wal = data.join("wxchat.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the log is empty after a clean stop");
    let copy = dir.path().join("backup.db");
    std::fs::copy(data.join("wxchat.db"), &copy).unwrap();
    let db = rusqlite::Connection::open(&copy).unwrap();
    let stored: i64 = db
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stored as u64, sent,
        "the database file alone holds every message"
    );
}
