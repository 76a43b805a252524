//! Two wxchat processes sharing one MySQL database and one Redis: a token issued by one works on
//! the other, presence is shared (and lapses when a process dies without a goodbye), seqs of one
//! conversation stay gap-free when both write to it, and failed-login limits count across both.

mod common;
use common::chat_client::{next_push, ws_request as request};
use common::services::{TestDb, TestRedis};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;

const API_KEY: &str = "k";
const SIGN_KEY: &str = "s1gn";

fn api(addr: SocketAddr, action: &str, body: Value) -> HttpResponse {
    common::chat_client::server_api(addr, API_KEY, action, &body)
}

fn user(addr: SocketAddr, app_uid: &str) -> (u64, String) {
    common::chat_client::api_user(addr, API_KEY, app_uid)
}

fn login(addr: SocketAddr, token: &str) -> WsClient {
    common::chat_client::ws_login(addr, token)
}

fn online(addr: SocketAddr, uids: &[u64]) -> Value {
    let r = api(addr, "online", json!({ "uids": uids }));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]["online"].clone()
}

fn config(db: &TestDb, redis: &TestRedis, node: &str) -> String {
    merge_toml(
        &merge_toml(&db.store_toml(), &redis.toml()),
        &format!(
            "[server]\nnode_id = \"{node}\"\n[api]\nkey = \"{API_KEY}\"\n\
             [auth]\nsign_key = \"{SIGN_KEY}\"\nlogin_failures_per_ip = 3\n\
             [chat]\nallow_strangers = true\nmax_msgs_per_sec = 0\n\
             [redis]\npresence_ttl_s = 3\n"
        ),
    )
}

/// Two processes on one fresh database and key prefix (servers stop before those are removed).
struct Pair {
    s1: TestServer,
    s2: TestServer,
    _redis: TestRedis,
    _db: TestDb,
}

impl Pair {
    fn start(extra: &str) -> Pair {
        let db = TestDb::create();
        let redis = TestRedis::create();
        Pair {
            s1: TestServer::start(&merge_toml(&config(&db, &redis, "n1"), extra)),
            s2: TestServer::start(&merge_toml(&config(&db, &redis, "n2"), extra)),
            _redis: redis,
            _db: db,
        }
    }
}

#[test]
fn two_processes_share_tokens_presence_and_seqs() {
    let Pair { s1, s2, .. } = &Pair::start("");

    // A token issued by node 1 logs in on node 2.
    let (a, ta) = user(s1.addr, "a");
    let (b, tb) = user(s1.addr, "b");
    let mut ca = login(s1.addr, &ta);
    let mut cb = login(s2.addr, &tb);

    // Each node sees the other's users online.
    // (Presence is reported just after the auth reply, so poll briefly.)
    wait_for("both online as seen from node 2", || {
        online(s2.addr, &[a, b, 999])
            == json!({ a.to_string(): true, b.to_string(): true, "999": false })
    });
    let on = online(s1.addr, &[b]);
    assert_eq!(on[b.to_string()], true);

    // Both write to one conversation: one gap-free sequence.
    let conv = format!("p_{}_{}", a.min(b), a.max(b));
    let mut seqs = Vec::new();
    for i in 0..10u64 {
        let (c, to) = if i % 2 == 0 {
            (&mut ca, b)
        } else {
            (&mut cb, a)
        };
        let r = request(
            c,
            json!({"cmd":"send","req_id":i,"chat_type":0,"to_id":to,"msg_type":0,"msg":format!("m{i}"),"client_msg_id":format!("c{i}")}),
        );
        assert_eq!(r["code"], 200, "{r}");
        seqs.push(r["data"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let r = request(
        &mut cb,
        json!({"cmd":"sync","req_id":50,"conv_id":conv,"after_seq":0}),
    );
    assert_eq!(r["data"]["messages"].as_array().unwrap().len(), 10);

    // A resend through the other node is recognised as the same message.
    let r = request(
        &mut cb,
        json!({"cmd":"send","req_id":60,"chat_type":0,"to_id":a,"msg_type":0,"msg":"m1","client_msg_id":"c1"}),
    );
    assert_eq!(r["data"]["duplicate"], true, "{r}");
    assert_eq!(r["data"]["seq"], 2);

    // Going offline on one node is seen on the other.
    drop(cb);
    wait_for("b offline everywhere", || {
        online(s1.addr, &[b])[b.to_string()] == false
    });
}

#[test]
fn a_dead_process_users_lapse_after_the_presence_ttl() {
    let db = TestDb::create();
    let redis = TestRedis::create();
    let s1 = TestServer::start(&config(&db, &redis, "n1"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config(&db, &redis, "n2"));
    let (mut child, addr2) = spawn_foreground(&cfg, &dir.path().join("data"));
    let (a, ta) = user(s1.addr, "a");
    let _ca = login(addr2, &ta);
    wait_for("a online as seen from node 1", || {
        online(s1.addr, &[a])[a.to_string()] == true
    });
    // SAFETY: SIGKILL to the child this test started: no goodbye, no offline notice.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert_eq!(
        online(s1.addr, &[a])[a.to_string()],
        true,
        "still listed right after the crash"
    );
    wait_for("the crashed node's user to lapse", || {
        online(s1.addr, &[a])[a.to_string()] == false
    });
}

#[test]
fn failed_logins_are_counted_across_processes() {
    let Pair { s1, s2, .. } = &Pair::start("");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let post = |addr: SocketAddr, sign: &str| {
        let body = format!("app_uid=u1&time={now}&sign={sign}");
        let raw = format!(
            "POST /api/doLogin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        http_raw(addr, raw.as_bytes())
    };
    let good = wxchat::auth::dologin_sign(
        &[
            ("app_uid".to_string(), "u1".to_string()),
            ("time".to_string(), now.clone()),
        ],
        SIGN_KEY,
    );
    assert_eq!(post(s1.addr, &good).status, 200, "a good login works");
    for (addr, expected) in [
        (s1.addr, 401),
        (s2.addr, 401),
        (s1.addr, 401),
        (s2.addr, 429),
    ] {
        assert_eq!(post(addr, "0000").status, expected);
    }
    // Over the limit, even a correct signature is refused until the window ends.
    let r = post(s1.addr, &good);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("too many failed logins"), "{}", r.text());
}

#[test]
fn friendships_and_memberships_made_elsewhere_are_honoured() {
    let Pair { s1, s2, .. } = &Pair::start("[chat]\nallow_strangers = false\n");
    let (a, ta) = user(s2.addr, "a");
    let (b, _) = user(s2.addr, "b");
    let (owner, _) = user(s1.addr, "owner");
    let mut ca = login(s2.addr, &ta);
    let send = |c: &mut WsClient, req: u64, ct: u64, to: u64| {
        request(
            c,
            json!({"cmd":"send","req_id":req,"chat_type":ct,"to_id":to,"msg_type":0,"msg":"hi"}),
        )["code"]
            .clone()
    };
    assert_eq!(send(&mut ca, 1, 0, b), 403, "not friends yet");
    // Node 1 makes them friends; node 2's cache of a's friends predates it.
    let r = api(s1.addr, "friend_add", json!({ "uid": a, "friend_id": b }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(send(&mut ca, 2, 0, b), 200);

    let r = api(
        s1.addr,
        "group_create",
        json!({ "owner_id": owner, "name": "g", "members": [] }),
    );
    let gid = r.json()["data"]["group"]["group_id"].as_u64().unwrap();
    assert_eq!(
        send(&mut ca, 3, 1, gid),
        403,
        "not a member (and now cached)"
    );
    let r = api(
        s1.addr,
        "group_add",
        json!({ "group_id": gid, "uids": [a] }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(send(&mut ca, 4, 1, gid), 200, "added through node 1");
}

#[test]
fn pushes_reach_connections_held_by_the_other_process() {
    let Pair { s1, s2, .. } = &Pair::start("");
    let (a, ta) = user(s1.addr, "a");
    let (b, tb) = user(s1.addr, "b");
    let (c, tc) = user(s1.addr, "c");
    let r = api(s1.addr, "friend_add", json!({ "uid": a, "friend_id": b }));
    assert_eq!(r.status, 200);
    let mut ca = login(s1.addr, &ta);
    let mut cb = login(s2.addr, &tb);
    let mut cb_other_device = login(s1.addr, &tb);
    let mut cc = login(s2.addr, &tc);

    // One-to-one: b gets it on both devices, one per process.
    let r = request(
        &mut ca,
        json!({"cmd":"send","req_id":1,"chat_type":0,"to_id":b,"msg_type":0,"msg":"across","client_msg_id":"x1"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    for dev in [&mut cb, &mut cb_other_device] {
        let m = next_push(dev, "message");
        assert_eq!(m["data"]["msg"], "across");
        assert_eq!(m["data"]["seq"], 1);
    }

    // A group with members on both processes: each gets the message exactly once.
    let r = api(
        s2.addr,
        "group_create",
        json!({ "owner_id": c, "name": "g", "members": [a, b] }),
    );
    let gid = r.json()["data"]["group"]["group_id"].as_u64().unwrap();
    let r = request(
        &mut cc,
        json!({"cmd":"send","req_id":2,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"to all","client_msg_id":"x2"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    for dev in [&mut ca, &mut cb, &mut cb_other_device] {
        let m = next_push(dev, "message");
        assert_eq!(m["data"]["msg"], "to all");
    }
    // Exactly once: the next push each device sees is the typing notice below, not a copy.
    let conv = format!("p_{}_{}", a.min(b), a.max(b));
    let r = request(&mut ca, json!({"cmd":"typing","req_id":3,"conv_id":conv}));
    assert_eq!(r["code"], 200);
    for dev in [&mut cb, &mut cb_other_device] {
        let v = loop {
            let v = dev.recv_json();
            if v.get("req_id").is_none() {
                break v;
            }
        };
        assert_eq!(v["cmd"], "typing", "{v}");
        assert_eq!(v["data"]["uid"], a);
    }

    // The server API's kick, called on node 1, closes b's connections on both processes.
    let r = api(s1.addr, "kick", json!({ "uid": b }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cb.expect_close(), Some(4003));
    assert_eq!(cb_other_device.expect_close(), Some(4003));
}

#[test]
fn online_counts_and_server_info_are_cluster_totals_with_each_nodes_share() {
    let Pair { s1, s2, .. } = &Pair::start("[admin]\nserver_info_every_s = 1\n");
    let (a, ta) = user(s1.addr, "fa");
    let (b, tb) = user(s1.addr, "fb");
    let (_c, tc) = user(s1.addr, "fc");
    // a on node 1; b on node 2; c on both (one user, counted once in the total).
    let _a1 = login(s1.addr, &ta);
    let _b2 = login(s2.addr, &tb);
    let _c1 = login(s1.addr, &tc);
    let _c2 = login(s2.addr, &tc);
    wait_for("cluster total 3 from both nodes", || {
        [s1.addr, s2.addr].iter().all(|addr| {
            let r = api(*addr, "online", json!({ "uids": [a, b] }));
            r.json()["data"]["total_online"] == 3
        })
    });
    let r = api(s2.addr, "online", json!({ "uids": [a, b] })).json();
    assert_eq!(r["data"]["node_online"], 2, "{r}");
    assert_eq!(
        r["data"]["online"],
        json!({ a.to_string(): true, b.to_string(): true })
    );
    wait_for("/status shows both nodes", || {
        let st = http_get(s1.admin, "/status").json();
        st["cluster"]["nodes"] == 2 && st["cluster"]["users_online"] == 3
    });
    let st = http_get(s1.admin, "/status").json();
    assert_eq!(st["users_online"], 2, "this node's share: {st}");
    let mut by_node: Vec<(String, u64)> = st["cluster"]["by_node"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["users_online"].as_u64().unwrap(),
            )
        })
        .collect();
    by_node.sort();
    assert_eq!(by_node, vec![("n1".into(), 2), ("n2".into(), 2)]);
    assert!(st["cluster"]["connections"].as_u64().unwrap() >= 4, "{st}");
    // Both nodes name the same node as the desk's (the lease holder, read every 2 s).
    wait_for("both nodes name the desk's node", || {
        let d1 = http_get(s1.admin, "/status").json()["cluster"]["desk_node"].clone();
        let d2 = http_get(s2.admin, "/status").json()["cluster"]["desk_node"].clone();
        d1 == d2 && (d1 == "n1" || d1 == "n2")
    });
    // /metrics is per node, labelled with it.
    let m = http_get(s2.admin, "/metrics").text();
    assert!(
        m.contains("wxchat_users_online{node=\"n2\"} 2"),
        "{}",
        &m[..m.len().min(2000)]
    );
}

#[test]
fn removals_made_elsewhere_reach_the_other_nodes_caches_at_once() {
    let Pair { s1, s2, .. } = &Pair::start("[chat]\nallow_strangers = false\n");
    let (a, ta) = user(s2.addr, "ra");
    let (b, tb) = user(s2.addr, "rb");
    let (owner, _) = user(s1.addr, "rowner");
    let r = api(s1.addr, "friend_add", json!({ "uid": a, "friend_id": b }));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ca = login(s2.addr, &ta);
    let mut cb = login(s2.addr, &tb);
    let send = |c: &mut WsClient, req: u64, ct: u64, to: u64| {
        request(
            c,
            json!({"cmd":"send","req_id":req,"chat_type":ct,"to_id":to,"msg_type":0,"msg":"hi"}),
        )["code"]
            .clone()
    };
    // Friends, as node 2 caches them at login.
    assert_eq!(send(&mut ca, 1, 0, b), 200);
    // Node 1 ends the friendship: node 2 refuses the next send without anyone reconnecting.
    let r = api(
        s1.addr,
        "friend_remove",
        json!({ "uid": a, "friend_id": b }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("node 2 knows the friendship ended", || {
        send(&mut ca, 2, 0, b) == 403
    });

    // A group whose members node 2 has cached (a member sent to it).
    let r = api(
        s1.addr,
        "group_create",
        json!({ "owner_id": owner, "name": "g", "members": [a, b] }),
    );
    let gid = r.json()["data"]["group"]["group_id"].as_u64().unwrap();
    assert_eq!(send(&mut cb, 3, 1, gid), 200);
    // Node 1 removes b: on node 2, b can no longer send to the group, and a's messages no
    // longer reach b.
    let r = api(
        s1.addr,
        "group_remove",
        json!({ "group_id": gid, "uid": b }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("node 2 knows b left", || send(&mut cb, 4, 1, gid) == 403);
    assert_eq!(send(&mut ca, 5, 1, gid), 200);
    // b hears nothing of it: a's send was acked, so its deliveries were queued; b's ping is
    // answered after anything queued to b.
    cb.send_text(&json!({"cmd":"ping","req_id":99}).to_string());
    let mut got = Vec::new();
    loop {
        let v = cb.recv_json();
        if v["req_id"] == 99 {
            break;
        }
        got.push(v);
    }
    assert!(
        !got.iter()
            .any(|v| v["cmd"] == "message" && v["data"]["seq"].as_u64() >= Some(2)),
        "a removed member got a later group message: {got:?}"
    );
}

/// `server status` on a node of a cluster adds a line for the whole cluster: how many nodes, the
/// users online across them, the connections and the node that holds the service desk. Node 1
/// runs as an operator runs it (`server daemon`), node 2 in-process.
#[test]
fn server_status_reports_the_cluster() {
    let db = TestDb::create();
    let redis = TestRedis::create();
    let fast = "[admin]\nserver_info_every_s = 1\n";
    let mut s2 = TestServer::start(&merge_toml(&config(&db, &redis, "n2"), fast));
    let dir = tempfile::tempdir().unwrap();
    let conf = write_config(dir.path(), &merge_toml(&config(&db, &redis, "n1"), fast));
    let (code, out, err) = run_cli(&conf, &["daemon"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, addr) = read_pid_file(&dir.path().join("data").join("server.pid")).expect("pid file");
    let (_, ta) = user(addr, "status-a");
    let (_, tb) = user(addr, "status-b");
    let _a1 = login(addr, &ta);
    let _b2 = login(s2.addr, &tb);
    let mut shown = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let (code, out, _) = run_cli(&conf, &["status"]);
        shown = out;
        if code == 0
            && shown.contains("cluster:      2 nodes, 2 users online")
            && shown.contains("desk on n")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, out, err) = run_cli(&conf, &["stop"]);
    s2.stop();
    assert_eq!(code, 0, "{out}{err}");
    let line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("cluster:"))
        .unwrap_or_else(|| panic!("no cluster line in:\n{shown}"));
    assert!(line.contains("2 nodes, 2 users online"), "{line}");
    assert!(
        line.ends_with("desk on n1") || line.ends_with("desk on n2"),
        "{line}"
    );
    // Connections: at least the two chat connections, one on each node.
    let connections: u64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" connections"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(connections >= 2, "{line}");
}
