//! The Redis Streams bus between three wxchat processes sharing one MySQL database and a private
//! redis-server (no persistence) started here on a free port: pushes are routed only to the
//! nodes holding a recipient, a Redis restart in the middle of traffic loses no acked message
//! (live pushes resume without reconnecting; clients told to `resync` catch up with `sync`, as
//! the SDK does) and delivers none twice, and a dead bus turns `/healthz` into 503.

mod common;
use common::chat_client::{next_push, ws_request as request};
use common::private_redis::PrivateRedis;
use common::services::TestDb;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const API_KEY: &str = "k";
const PREFIX: &str = "busT:";

/// The envelopes (field `e`, not pings) in a node's stream.
fn envelopes(redis: &PrivateRedis, node: &str) -> Vec<String> {
    let mut c = redis.conn().expect("redis");
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(format!("{PREFIX}bus:{node}"))
        .arg("-")
        .arg("+")
        .query(&mut c)
        .expect("XRANGE");
    let mut out = Vec::new();
    if let redis::Value::Array(entries) = v {
        for e in entries {
            let redis::Value::Array(pair) = e else {
                continue;
            };
            let Some(redis::Value::Array(kv)) = pair.get(1) else {
                continue;
            };
            for f in kv.chunks(2) {
                if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = f {
                    if k == b"e" {
                        out.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
        }
    }
    out
}

fn config(db: &TestDb, redis: &PrivateRedis, node: &str) -> String {
    merge_toml(
        &db.store_toml(),
        &format!(
            "[server]\nnode_id = \"{node}\"\n[api]\nkey = \"{API_KEY}\"\n\
             [chat]\nallow_strangers = true\nmax_msgs_per_sec = 0\n\
             [redis]\nurl = {:?}\nprefix = \"{PREFIX}\"\ntimeout_ms = 1000\npresence_ttl_s = 3\n",
            redis.url()
        ),
    )
}

fn api(addr: SocketAddr, action: &str, body: Value) -> HttpResponse {
    common::chat_client::server_api(addr, API_KEY, action, &body)
}

fn health(addr: SocketAddr) -> (u16, Value) {
    let r = http_get(addr, "/healthz");
    (r.status, r.json())
}

/// What a client (emulating the SDK) has received of one conversation.
#[derive(Default)]
struct Inbox {
    /// seq -> how many times it was pushed live.
    pushed: BTreeMap<u64, u32>,
    /// Seqs fetched by `sync`.
    synced: BTreeSet<u64>,
    resyncs: u32,
}

impl Inbox {
    fn held(&self) -> BTreeSet<u64> {
        self.pushed
            .keys()
            .chain(self.synced.iter())
            .copied()
            .collect()
    }

    /// The highest seq with every seq below it held.
    fn contiguous(&self) -> u64 {
        let held = self.held();
        let mut n = 0;
        while held.contains(&(n + 1)) {
            n += 1;
        }
        n
    }
}

/// Reads `c` until `until` holds or `deadline`: counts message pushes of `conv`, and, like the
/// SDK, answers a `resync` push or a seq hole with a `sync` from what it holds.
fn pump(
    c: &mut WsClient,
    conv: &str,
    inbox: &mut Inbox,
    deadline: Instant,
    until: &dyn Fn(&Inbox) -> bool,
) {
    c.set_timeout(Duration::from_millis(200));
    let mut req = 1000u64;
    let mut sync_pending: Option<u64> = None;
    let mut want_sync = false;
    while Instant::now() < deadline && !until(inbox) {
        if want_sync && sync_pending.is_none() {
            req += 1;
            let after = inbox.contiguous();
            c.send_text(
                &json!({"cmd":"sync","req_id":req,"conv_id":conv,"after_seq":after,"limit":200})
                    .to_string(),
            );
            sync_pending = Some(req);
            want_sync = false;
        }
        let f = match c.recv() {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => panic!("connection lost: {e}"),
        };
        if f.opcode != 1 {
            continue;
        }
        let v: Value = serde_json::from_str(&f.text()).unwrap();
        match (v["cmd"].as_str(), v.get("req_id")) {
            (Some("message"), None) if v["data"]["conv_id"] == conv => {
                let seq = v["data"]["seq"].as_u64().unwrap();
                *inbox.pushed.entry(seq).or_default() += 1;
                if seq > inbox.contiguous() + 1 {
                    want_sync = true; // a hole, as the SDK sees it
                }
            }
            (Some("resync"), None) => {
                inbox.resyncs += 1;
                want_sync = true;
            }
            (Some("sync"), Some(id)) if Some(id.as_u64().unwrap()) == sync_pending => {
                sync_pending = None;
                assert_eq!(v["code"], 200, "{v}");
                let msgs = v["data"]["messages"].as_array().unwrap();
                for m in msgs {
                    inbox.synced.insert(m["seq"].as_u64().unwrap());
                }
                if v["data"]["has_more"] == true {
                    want_sync = true;
                }
            }
            _ => {}
        }
    }
}

#[test]
fn streams_bus_routes_survives_a_redis_restart_and_reports_its_health() {
    let db = TestDb::create();
    let mut redis = PrivateRedis::start();
    let s1 = TestServer::start(&config(&db, &redis, "n1"));
    let s2 = TestServer::start(&config(&db, &redis, "n2"));
    let s3 = TestServer::start(&config(&db, &redis, "n3"));
    let user = |app_uid: &str| common::chat_client::api_user(s1.addr, API_KEY, app_uid);
    let (a, ta) = user("a");
    let (b, tb) = user("b");
    let (c, tc) = user("c");
    let (_d, td) = user("d");
    let r = api(s1.addr, "friend_add", json!({ "uid": a, "friend_id": b }));
    assert_eq!(r.status, 200, "{}", r.text());
    let login = common::chat_client::ws_login;
    let mut ca = login(s1.addr, &ta);
    let mut cb = login(s2.addr, &tb);
    let mut cc = login(s2.addr, &tc);
    // d is alone on node 3, in none of the conversations below.
    let mut cd = login(s3.addr, &td);
    wait_for("healthy bus on every node", || {
        [s1.addr, s2.addr, s3.addr]
            .iter()
            .all(|s| health(*s).1["bus"]["round_trip_ms"].is_number())
    });

    // One-to-one and group, across nodes.
    let r = request(
        &mut ca,
        json!({"cmd":"send","req_id":1,"chat_type":0,"to_id":b,"msg_type":0,"msg":"hi","client_msg_id":"m1"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(next_push(&mut cb, "message")["data"]["msg"], "hi");
    let r = api(
        s1.addr,
        "group_create",
        json!({ "owner_id": a, "name": "g", "members": [b, c] }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let gid = r.json()["data"]["group"]["group_id"].as_u64().unwrap();
    let r = request(
        &mut cc,
        json!({"cmd":"send","req_id":2,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"all","client_msg_id":"m2"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(next_push(&mut ca, "message")["data"]["msg"], "all");
    assert_eq!(next_push(&mut cb, "message")["data"]["msg"], "all");

    // Routing: node 2 got the pushes for b and c, node 1 the group message for a; node 3, whose
    // only user is in neither conversation, got no envelope at all.
    let to_n2 = envelopes(&redis, "n2");
    assert!(to_n2.iter().any(|e| e.contains("\"hi\"")), "{to_n2:?}");
    let to_n1 = envelopes(&redis, "n1");
    assert!(to_n1.iter().any(|e| e.contains("\"all\"")), "{to_n1:?}");
    assert!(!to_n1.iter().any(|e| e.contains("\"hi\"")), "{to_n1:?}");
    assert_eq!(envelopes(&redis, "n3"), Vec::<String>::new());
    // The group message (c, on node 2, to a on node 1 and b on node 2) went once to node 1 and
    // never to its sender's node, which delivered it to b itself.
    assert_eq!(to_n1.iter().filter(|e| e.contains("\"all\"")).count(), 1);
    assert!(!to_n2.iter().any(|e| e.contains("\"all\"")), "{to_n2:?}");

    // Traffic from a (node 1) to b (node 2) while Redis is killed and restarted empty.
    let conv = format!("p_{}_{}", a.min(b), a.max(b));
    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![1]));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 10u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let r = request(
                    &mut ca,
                    json!({"cmd":"send","req_id":n,"chat_type":0,"to_id":b,"msg_type":0,"msg":format!("t{n}"),"client_msg_id":format!("t{n}")}),
                );
                if r["code"] == 200 {
                    acked
                        .lock()
                        .unwrap()
                        .push(r["data"]["seq"].as_u64().unwrap());
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            ca
        })
    };
    let mut inbox = Inbox::default();
    inbox.pushed.insert(1, 1);
    let count = |n: usize| move |i: &Inbox| i.held().len() >= n;
    pump(
        &mut cb,
        &conv,
        &mut inbox,
        Instant::now() + Duration::from_secs(10),
        &count(5),
    );
    assert!(inbox.held().len() >= 5, "live pushes before the restart");

    redis.kill();
    // A dead bus: /healthz turns 503 with the reason within the documented bound (15 s).
    let killed = Instant::now();
    let mut unhealthy = Value::Null;
    while killed.elapsed() < Duration::from_secs(25) {
        // Keep reading b's pushes meanwhile (there should be none).
        pump(
            &mut cb,
            &conv,
            &mut inbox,
            Instant::now() + Duration::from_millis(500),
            &|_| false,
        );
        let (status, body) = health(s1.addr);
        if status == 503 {
            unhealthy = body;
            break;
        }
    }
    assert_eq!(unhealthy["status"], "unhealthy", "{unhealthy}");
    assert!(
        unhealthy["reason"]
            .as_str()
            .unwrap()
            .contains("no round trip"),
        "{unhealthy}"
    );
    assert!(killed.elapsed() >= Duration::from_secs(14));
    let r = http_get(s1.admin, "/metrics");
    assert!(
        r.text().contains("wxchat_bus_healthy{node=\"n1\"} 0"),
        "{}",
        r.text()
    );

    redis.resume();
    let restarted = Instant::now();
    while [s1.addr, s2.addr, s3.addr]
        .iter()
        .any(|s| health(*s).0 != 200)
    {
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "still unhealthy: {:?}",
            [s1.addr, s2.addr, s3.addr].map(health)
        );
        pump(
            &mut cb,
            &conv,
            &mut inbox,
            Instant::now() + Duration::from_millis(300),
            &|_| false,
        );
    }
    // Live pushes resume on the same connections: what was sent after the restart arrives.
    let before = acked.lock().unwrap().len();
    let resumed = Instant::now() + Duration::from_secs(20);
    let seen_live_after = |i: &Inbox| i.pushed.len() >= before + 5;
    while Instant::now() < resumed && !seen_live_after(&inbox) {
        pump(
            &mut cb,
            &conv,
            &mut inbox,
            Instant::now() + Duration::from_millis(500),
            &seen_live_after,
        );
    }
    stop.store(true, Ordering::SeqCst);
    let mut ca = sender.join().unwrap();
    // One last message: the SDK notices any hole before it and syncs.
    let r = request(
        &mut ca,
        json!({"cmd":"send","req_id":9,"chat_type":0,"to_id":b,"msg_type":0,"msg":"last","client_msg_id":"last"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    acked
        .lock()
        .unwrap()
        .push(r["data"]["seq"].as_u64().unwrap());
    let acked: BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
    let all = |i: &Inbox| acked.iter().all(|s| i.held().contains(s));
    pump(
        &mut cb,
        &conv,
        &mut inbox,
        Instant::now() + Duration::from_secs(15),
        &all,
    );

    eprintln!(
        "acked {}, pushed {}, synced {}, resyncs {}",
        acked.len(),
        inbox.pushed.len(),
        inbox.synced.len(),
        inbox.resyncs
    );
    let missing: Vec<u64> = acked.difference(&inbox.held()).copied().collect();
    assert!(missing.is_empty(), "acked but never delivered: {missing:?}");
    let twice: Vec<u64> = inbox
        .pushed
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(twice.is_empty(), "pushed more than once: {twice:?}");
    assert!(
        inbox.pushed.len() >= before + 5,
        "live pushes resumed after the restart ({} pushed, {before} acked before)",
        inbox.pushed.len()
    );
    assert!(
        inbox.resyncs >= 1,
        "node 2 lost its stream: b is told to resync"
    );
    let r = http_get(s2.admin, "/metrics");
    assert!(
        !r.text().contains("wxchat_bus_gaps_total{node=\"n2\"} 0\n"),
        "a gap is counted"
    );
    cd.send_close(1000, "");
}
