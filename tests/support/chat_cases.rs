// The chat protocol cases, shared by `tests/chat.rs` (embedded store) and
// `tests/chat_production.rs` (MySQL + Redis) through `include!`: the including file provides
// `backend()`, the configuration and the guard of the backend to run on.

use common::chat_client::{next_push, ws_request as request};
use serde_json::{json, Value};

const API_KEY: &str = "test-api-key";
const SIGN_KEY: &str = "k3y!@#";

/// A test server on the backend of the including file; the backend lives as long as it.
struct Srv {
    server: TestServer,
    _backend: Box<dyn std::any::Any>,
}

impl std::ops::Deref for Srv {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

fn start(extra: &str) -> Srv {
    let (backend_toml, guard) = backend();
    let base = merge_toml(
        &format!("[api]\nkey = \"{API_KEY}\"\n[auth]\nsign_key = \"{SIGN_KEY}\"\n[chat]\nmax_msgs_per_sec = 0\n"),
        &backend_toml,
    );
    Srv {
        server: TestServer::start(&merge_toml(&base, extra)),
        _backend: guard,
    }
}

fn api(s: &TestServer, action: &str, body: Value) -> HttpResponse {
    common::chat_client::server_api(s.addr, API_KEY, action, &body)
}

/// Creates a user through the server API; returns (uid, token).
fn user(s: &TestServer, app_uid: &str) -> (u64, String) {
    common::chat_client::api_user(s.addr, API_KEY, app_uid)
}

fn befriend(s: &TestServer, a: u64, b: u64) {
    let r = api(s, "friend_add", json!({ "uid": a, "friend_id": b }));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// An authenticated chat client.
fn login(s: &TestServer, token: &str) -> WsClient {
    common::chat_client::ws_login(s.addr, token)
}

fn send_text(c: &mut WsClient, req_id: u64, to: u64, text: &str, cmid: &str) -> Value {
    request(
        c,
        json!({"cmd":"send","req_id":req_id,"chat_type":0,"to_id":to,"msg_type":0,"msg":text,"client_msg_id":cmid}),
    )
}

#[test]
fn signed_dologin_creates_then_finds_the_user() {
    let s = start("");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let params: Vec<(String, String)> = vec![
        ("app_uid".into(), "10086".into()),
        ("name".into(), "张三 & O'Brien+/=?~".into()),
        (
            "head_img".into(),
            "https://img.example.com/a b.png?x=1&y=中".into(),
        ),
        ("user_type".into(), "1".into()),
        ("time".into(), now.clone()),
    ];
    let sign = wxchat::auth::dologin_sign(&params, SIGN_KEY);
    let mut form: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                wxchat::http::url_encode(k),
                wxchat::http::url_encode(v)
            )
        })
        .collect();
    form.push(format!("sign={sign}"));
    let body = form.join("&");
    let post = |path: &str, body: &str| {
        http_raw(
            s.addr,
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let r = post("/api/doLogin", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["code"], 200);
    assert_eq!(j["data"]["is_new"], true);
    assert_eq!(j["data"]["expires_in"], 604800);
    let uid = j["data"]["uid"].as_u64().unwrap();
    // The online_chat path works too, and finds the same user (signed afresh: a signature is
    // good for one login).
    let mut again = params.clone();
    again[4].1 = (now.parse::<u64>().unwrap() - 1).to_string();
    let again_sign = wxchat::auth::dologin_sign(&again, SIGN_KEY);
    let again_body = body.replace(&now, &again[4].1).replace(&sign, &again_sign);
    let r = post("/index.php/online_chat/chat/doLogin", &again_body);
    let j = r.json();
    assert_eq!(
        (j["data"]["uid"].as_u64(), j["data"]["is_new"].as_bool()),
        (Some(uid), Some(false))
    );
    // The token opens the chat.
    let c = login(&s, j["data"]["token"].as_str().unwrap());
    drop(c);
    // Bad sign, stale time, missing field.
    let r = post("/api/doLogin", &body.replace(&sign, &"0".repeat(32)));
    assert_eq!(
        (r.status, r.json()["msg"].as_str()),
        (401, Some("bad sign"))
    );
    let mut stale = params.clone();
    stale[4].1 = "1000000000".into();
    let stale_sign = wxchat::auth::dologin_sign(&stale, SIGN_KEY);
    let stale_body = format!("app_uid=10086&time=1000000000&name=x&sign={stale_sign}");
    let r = post("/api/doLogin", &stale_body);
    assert_eq!(r.status, 401);
    let r = post("/api/doLogin", &format!("app_uid=1&time={now}"));
    assert_eq!(r.status, 400);
    assert!(r.json()["msg"].as_str().unwrap().contains("sign"));
}

#[test]
fn server_api_requires_the_key() {
    let s = start("");
    let r = http_post_json(s.addr, "/api/server/user", &json!({"app_uid":"a"}), "");
    assert_eq!(r.status, 401);
    let r = http_post_json(
        s.addr,
        "/api/server/user",
        &json!({"app_uid":"a"}),
        "Authorization: Bearer nope\r\n",
    );
    assert_eq!(r.status, 401);
    assert_eq!(api(&s, "frobnicate", json!({})).status, 404);
    assert_eq!(api(&s, "user", json!({})).status, 400);
}

#[test]
fn auth_errors_and_timeout() {
    let s = start("[chat]\nauth_timeout_s = 1\n");
    // Bad token on the URL: non-200 auth reply, then a 4001 close.
    let mut c = WsClient::connect(s.addr, &format!("/ws?token={}", "a".repeat(64)));
    let r = c.recv_json();
    assert_eq!(
        (r["cmd"].as_str(), r["code"].as_u64()),
        (Some("auth"), Some(401))
    );
    assert_eq!(c.expect_close(), Some(4001));
    // Commands before auth: 401, connection lives; garbage: cmd error 400.
    let mut c = WsClient::connect(s.addr, "/ws");
    let r = request(&mut c, json!({"cmd":"conversations","req_id":"x"}));
    assert_eq!(r["code"], 401);
    c.send_text("this is not json");
    let e = c.recv_json();
    assert_eq!(
        (e["cmd"].as_str(), e["code"].as_u64()),
        (Some("error"), Some(400))
    );
    // Never authenticating: closed with 4002 after the timeout.
    assert_eq!(c.expect_close(), Some(4002));
    // Auth by frame works.
    let (uid, token) = user(&s, "u1");
    let mut c = WsClient::connect(s.addr, "/ws");
    let r = request(&mut c, json!({"cmd":"auth","req_id":1,"token":token}));
    assert_eq!(r["code"], 200);
    assert_eq!(r["data"]["uid"], uid);
    let r = request(&mut c, json!({"cmd":"ping","req_id":2}));
    assert_eq!(r["code"], 200);
}

#[test]
fn two_users_chat_and_recover_exactly_what_they_missed() {
    let s = start("");
    let (a, ta) = user(&s, "alice");
    let (b, tb) = user(&s, "bob");
    befriend(&s, a, b);
    let mut alice = login(&s, &ta);
    let mut alice2 = login(&s, &ta); // a second device
    let mut bob = login(&s, &tb);
    let ack = send_text(&mut alice, 1, b, "hello bob", "m1");
    assert_eq!(ack["code"], 200, "{ack}");
    let conv = ack["data"]["conv_id"].as_str().unwrap().to_string();
    assert_eq!(conv, format!("p_{}_{}", a.min(b), a.max(b)));
    assert_eq!(ack["data"]["seq"], 1);
    for c in [&mut bob, &mut alice2] {
        let m = next_push(c, "message");
        assert_eq!(m["data"]["msg"], "hello bob");
        assert_eq!(m["data"]["from_id"], a);
        assert_eq!(m["data"]["seq"], 1);
        assert_eq!(m["data"]["msg_id"], ack["data"]["msg_id"]);
    }
    // The same client_msg_id again: the first message's ack, nothing new.
    let again = send_text(&mut alice, 2, b, "hello bob", "m1");
    assert_eq!(again["data"]["msg_id"], ack["data"]["msg_id"]);
    assert_eq!(again["data"]["duplicate"], true);
    // Bob goes away; Alice sends three more; Bob comes back and syncs from his last seq.
    drop(bob);
    let mut seqs = Vec::new();
    for i in 0..3 {
        let r = send_text(
            &mut alice,
            10 + i,
            b,
            &format!("missed {i}"),
            &format!("x{i}"),
        );
        seqs.push(r["data"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![2, 3, 4]);
    let mut bob = login(&s, &tb);
    let list = request(&mut bob, json!({"cmd":"conversations","req_id":1}));
    let convs = list["data"]["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["last_seq"], 4);
    assert_eq!(convs[0]["unread"], 4);
    assert_eq!(convs[0]["last"]["msg"], "missed 2");
    let sync = request(
        &mut bob,
        json!({"cmd":"sync","req_id":2,"conv_id":conv,"after_seq":1,"limit":10}),
    );
    let got: Vec<&str> = sync["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec!["missed 0", "missed 1", "missed 2"]);
    assert_eq!(sync["data"]["has_more"], false);
    let page = request(
        &mut bob,
        json!({"cmd":"sync","req_id":3,"conv_id":conv,"after_seq":0,"limit":2}),
    );
    assert_eq!(page["data"]["messages"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"]["has_more"], true);
    let hist = request(
        &mut bob,
        json!({"cmd":"history","req_id":4,"conv_id":conv,"before_seq":4,"limit":2}),
    );
    let seqs: Vec<u64> = hist["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 2]);
    // Read receipt: Bob reads up to 4, Alice is told.
    let r = request(
        &mut bob,
        json!({"cmd":"read","req_id":5,"conv_id":conv,"seq":4}),
    );
    assert_eq!(r["data"]["read_seq"], 4);
    let receipt = next_push(&mut alice, "read");
    assert_eq!(
        (
            receipt["data"]["uid"].as_u64(),
            receipt["data"]["seq"].as_u64()
        ),
        (Some(b), Some(4))
    );
    // Typing is relayed, not stored.
    request(&mut bob, json!({"cmd":"typing","req_id":6,"conv_id":conv}));
    let t = next_push(&mut alice, "typing");
    assert_eq!(t["data"]["uid"], b);
    // Presence: Alice asks about Bob.
    let p = request(&mut alice, json!({"cmd":"presence","req_id":7,"uids":[b]}));
    assert_eq!(p["data"]["online"][b.to_string()], true);
}

#[test]
fn authorisation_and_validation_errors() {
    let s = start("");
    let (a, ta) = user(&s, "a");
    let (b, _) = user(&s, "b");
    let (c_uid, tc) = user(&s, "c");
    befriend(&s, a, b);
    let mut alice = login(&s, &ta);
    let mut carol = login(&s, &tc);
    // Not friends: 403.
    assert_eq!(send_text(&mut carol, 1, a, "hi", "c1")["code"], 403);
    // Someone else's conversation: 403.
    let conv = format!("p_{}_{}", a.min(b), a.max(b));
    let r = request(
        &mut carol,
        json!({"cmd":"sync","req_id":2,"conv_id":conv,"after_seq":0}),
    );
    assert_eq!(r["code"], 403);
    // Bad fields: 400; too long: 413; unknown command: 400.
    let r = request(
        &mut alice,
        json!({"cmd":"send","req_id":3,"chat_type":0,"to_id":b,"msg_type":0,"msg":5}),
    );
    assert_eq!(r["code"], 400);
    let r = request(
        &mut alice,
        json!({"cmd":"send","req_id":4,"chat_type":0,"to_id":b,"msg_type":0,"msg":"x".repeat(20000)}),
    );
    assert_eq!(r["code"], 413);
    let r = request(
        &mut alice,
        json!({"cmd":"send","req_id":5,"chat_type":7,"to_id":b,"msg_type":0,"msg":"x"}),
    );
    assert_eq!(r["code"], 400);
    assert_eq!(
        request(&mut alice, json!({"cmd":"nope","req_id":6}))["code"],
        400
    );
    // Groups: not a member, no such group.
    let g = api(
        &s,
        "group_create",
        json!({"owner_id": a, "name": "ab", "members": [b]}),
    );
    let gid = g.json()["data"]["group"]["group_id"].as_u64().unwrap();
    let r = request(
        &mut carol,
        json!({"cmd":"send","req_id":7,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"x"}),
    );
    assert_eq!(r["code"], 403);
    let r = request(
        &mut carol,
        json!({"cmd":"group_members","req_id":8,"group_id":999}),
    );
    assert_eq!(r["code"], 404);
    // Media validated per type; rich text sanitised.
    let r = request(
        &mut alice,
        json!({"cmd":"send","req_id":9,"chat_type":0,"to_id":b,"msg_type":1,"msg":{"url":"ftp://x"}}),
    );
    assert_eq!(r["code"], 400);
    let r = request(
        &mut alice,
        json!({"cmd":"send","req_id":10,"chat_type":0,"to_id":b,"msg_type":4,"msg":"<i>x</i><script>y</script>"}),
    );
    assert_eq!(r["code"], 200);
    let h = request(
        &mut alice,
        json!({"cmd":"history","req_id":11,"conv_id":conv}),
    );
    let body = h["data"]["messages"][0]["msg"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        body.contains("<i>x</i>") && !body.contains("script"),
        "{body}"
    );
    let _ = c_uid;
}

#[test]
fn rate_limit_is_429() {
    let s = start("[chat]\nmax_msgs_per_sec = 3\n");
    let (a, ta) = user(&s, "a");
    let (b, _) = user(&s, "b");
    befriend(&s, a, b);
    let mut alice = login(&s, &ta);
    let codes: Vec<u64> = (0..6)
        .map(|i| {
            send_text(&mut alice, i, b, "x", &format!("r{i}"))["code"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    assert_eq!(&codes[..3], &[200, 200, 200]);
}

#[test]
fn friends_and_groups_from_the_client() {
    let s = start("");
    let (a, ta) = user(&s, "a");
    let (b, tb) = user(&s, "b");
    let (c, tc) = user(&s, "c");
    let mut alice = login(&s, &ta);
    let mut bob = login(&s, &tb);
    let mut carol = login(&s, &tc);
    let r = request(
        &mut alice,
        json!({"cmd":"friend_request","req_id":1,"to_id":b,"note":"hi"}),
    );
    assert_eq!(r["code"], 200);
    let fr = next_push(&mut bob, "friend_request");
    assert_eq!(fr["data"]["from_id"], a);
    let list = request(&mut bob, json!({"cmd":"friend_requests","req_id":2}));
    assert_eq!(list["data"]["requests"][0]["note"], "hi");
    let r = request(
        &mut bob,
        json!({"cmd":"friend_accept","req_id":3,"from_id":a}),
    );
    assert_eq!(r["code"], 200);
    assert_eq!(next_push(&mut alice, "friend_added")["data"]["uid"], b);
    assert_eq!(
        send_text(&mut alice, 4, b, "now friends", "f1")["code"],
        200
    );
    let f = request(&mut alice, json!({"cmd":"friends","req_id":5}));
    assert_eq!(f["data"]["friends"][0]["uid"], b);
    assert_eq!(f["data"]["friends"][0]["online"], true);
    // Bob's presence goes offline for Alice when he leaves.
    drop(bob);
    let p = next_push(&mut alice, "presence");
    assert_eq!(
        (p["data"]["uid"].as_u64(), p["data"]["online"].as_bool()),
        (Some(b), Some(false))
    );
    // A group: create, message, invite, leave.
    let g = request(
        &mut alice,
        json!({"cmd":"group_create","req_id":6,"name":"team","members":[b]}),
    );
    assert_eq!(g["code"], 200, "{g}");
    let gid = g["data"]["group"]["group_id"].as_u64().unwrap();
    let r = request(
        &mut alice,
        json!({"cmd":"group_invite","req_id":7,"group_id":gid,"uids":[c]}),
    );
    assert_eq!(r["data"]["added"], json!([c]));
    let ev = next_push(&mut carol, "group_event");
    assert_eq!(ev["data"]["event"], "joined");
    let r = request(
        &mut carol,
        json!({"cmd":"send","req_id":8,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"hi all","client_msg_id":"g1"}),
    );
    assert_eq!(r["code"], 200);
    assert_eq!(r["data"]["conv_id"], format!("g_{gid}"));
    let m = next_push(&mut alice, "message");
    assert_eq!(m["data"]["msg"], "hi all");
    let gs = request(&mut carol, json!({"cmd":"groups","req_id":9}));
    assert_eq!(gs["data"]["groups"][0]["name"], "team");
    let r = request(
        &mut carol,
        json!({"cmd":"group_leave","req_id":10,"group_id":gid}),
    );
    assert_eq!(r["code"], 200);
    let r = request(
        &mut carol,
        json!({"cmd":"send","req_id":11,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"x"}),
    );
    assert_eq!(r["code"], 403);
    let mem = request(
        &mut alice,
        json!({"cmd":"group_members","req_id":12,"group_id":gid}),
    );
    assert_eq!(mem["data"]["members"].as_array().unwrap().len(), 2);
}

#[test]
fn server_api_send_kick_online() {
    let s = start("");
    let (a, ta) = user(&s, "a");
    let (b, tb) = user(&s, "b");
    let mut bob = login(&s, &tb);
    let r = api(
        &s,
        "send",
        json!({"from_id": a, "chat_type": 0, "to_id": b, "msg_type": 0, "msg": "from the backend"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        next_push(&mut bob, "message")["data"]["msg"],
        "from the backend"
    );
    // client_msg_id follows a client's rule: a number counts (resent: the first ack), "" is
    // refused.
    let once = json!({"from_id": a, "chat_type": 0, "to_id": b, "msg_type": 0, "msg": "once", "client_msg_id": 42});
    let first = api(&s, "send", once.clone()).json()["data"].clone();
    let again = api(&s, "send", once).json()["data"].clone();
    assert_eq!((again["msg_id"].clone(), again["duplicate"].clone()), (first["msg_id"].clone(), json!(true)));
    let empty = json!({"from_id": a, "chat_type": 0, "to_id": b, "msg_type": 0, "msg": "x", "client_msg_id": ""});
    assert_eq!(api(&s, "send", empty).status, 400);
    let r = api(&s, "online", json!({"uids": [a, b]}));
    assert_eq!(
        r.json()["data"]["online"],
        json!({ a.to_string(): false, b.to_string(): true })
    );
    let _alice = login(&s, &ta);
    let r = api(&s, "kick", json!({"uid": b}));
    assert_eq!(r.json()["data"]["closed"], 1);
    assert_eq!(bob.expect_close(), Some(4003));
}

#[test]
fn a_group_message_reaches_each_of_1000_online_members_once() {
    const N: usize = 1000;
    let s = start("");
    let mut uids = Vec::new();
    let mut clients = Vec::new();
    for i in 0..N {
        let (uid, token) = user(&s, &format!("m{i}"));
        uids.push(uid);
        clients.push(login(&s, &token));
    }
    let g = api(
        &s,
        "group_create",
        json!({"owner_id": uids[0], "name": "big", "members": &uids[1..]}),
    );
    assert_eq!(g.status, 200, "{}", g.text());
    let gid = g.json()["data"]["group"]["group_id"].as_u64().unwrap();
    let r = request(
        &mut clients[0],
        json!({"cmd":"send","req_id":1,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"to everyone","client_msg_id":"b1"}),
    );
    assert_eq!(r["code"], 200);
    let msg_id = r["data"]["msg_id"].clone();
    for c in clients.iter_mut().skip(1) {
        let m = next_push(c, "message");
        assert_eq!(m["data"]["msg_id"], msg_id);
    }
    // Exactly once: after a marker message, the next message each member sees is the marker.
    let r = request(
        &mut clients[0],
        json!({"cmd":"send","req_id":2,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"marker","client_msg_id":"b2"}),
    );
    assert_eq!(r["code"], 200);
    for c in clients.iter_mut().skip(1) {
        assert_eq!(next_push(c, "message")["data"]["msg"], "marker");
    }
}

#[test]
fn recall_within_the_window() {
    let s = start("");
    let (a, ta) = user(&s, "a");
    let (b, tb) = user(&s, "b");
    befriend(&s, a, b);
    let mut alice = login(&s, &ta);
    let mut bob = login(&s, &tb);
    let ack = send_text(&mut alice, 1, b, "oops", "o1");
    let conv = ack["data"]["conv_id"].as_str().unwrap().to_string();
    let msg_id = ack["data"]["msg_id"].as_u64().unwrap();
    next_push(&mut bob, "message");
    // Only the sender may recall.
    let r = request(
        &mut bob,
        json!({"cmd":"recall","req_id":2,"conv_id":conv,"msg_id":msg_id}),
    );
    assert_eq!(r["code"], 403);
    let r = request(
        &mut alice,
        json!({"cmd":"recall","req_id":3,"conv_id":conv,"msg_id":msg_id}),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["seq"], 2, "the recall event takes the next seq");
    let ev = next_push(&mut bob, "message");
    assert_eq!(ev["data"]["msg_type"], 100);
    assert_eq!(ev["data"]["msg"]["msg_id"], msg_id);
    let h = request(
        &mut bob,
        json!({"cmd":"sync","req_id":4,"conv_id":conv,"after_seq":0}),
    );
    assert_eq!(
        h["data"]["messages"][0]["msg"],
        Value::Null,
        "the recalled body is gone"
    );
    let r = request(
        &mut alice,
        json!({"cmd":"recall","req_id":5,"conv_id":conv,"msg_id":msg_id}),
    );
    assert_eq!(r["code"], 409);
    // Outside the window: refused.
    let s2 = start("[chat]\nrecall_window_s = 0\n");
    let (a, ta) = user(&s2, "a");
    let (b, _) = user(&s2, "b");
    befriend(&s2, a, b);
    let mut alice = login(&s2, &ta);
    let ack = send_text(&mut alice, 1, b, "late", "l1");
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = request(
        &mut alice,
        json!({"cmd":"recall","req_id":2,"conv_id":ack["data"]["conv_id"],"msg_id":ack["data"]["msg_id"]}),
    );
    assert_eq!(r["code"], 409);
}

/// `POST` of `body` to an upload path with these headers (each ending in CRLF).
fn upload(s: &TestServer, path: &str, headers: &str, body: &[u8]) -> HttpResponse {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    http_raw(s.addr, &raw)
}

#[test]
fn upload_takes_a_listed_file_name_extension_over_a_generic_type() {
    let s = start("");
    let (_, ta) = user(&s, "a");
    // As `curl -F file=@v.amr` sends it: application/octet-stream, the type of anything.
    let boundary = "curlBoundary42";
    let amr: &[u8] = b"#!AMR\n\x3c\x55\x00";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.amr\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend_from_slice(amr);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = upload(
        &s,
        "/api/upload",
        &format!("Authorization: Bearer {ta}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"),
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["data"]["url"].as_str().unwrap().to_string();
    assert!(url.ends_with(".amr"), "{url}");
    // The reply names the type the file is served with, not the generic one declared.
    assert_eq!(r.json()["data"]["mime"], "audio/amr");
    let got = http_get(s.addr, &url);
    assert_eq!(got.header("Content-Type"), Some("audio/amr"));
    assert_eq!(got.body, amr);
    // The same for a raw body named by ?name=, and an unlisted name still gives .bin.
    for (name, ext) in [("v.amr", ".amr"), ("v.exe", ".bin")] {
        let r = upload(
            &s,
            &format!("/api/upload?name={name}"),
            &format!("Authorization: Bearer {ta}\r\nContent-Type: application/octet-stream\r\n"),
            amr,
        );
        let url = r.json()["data"]["url"].as_str().unwrap().to_string();
        assert!(url.ends_with(ext), "{name}: {url}");
    }
}

#[test]
fn upload_multipart_and_raw_then_serve_back() {
    let s = start("[upload]\nmax_bytes = 2000\n");
    let (a, ta) = user(&s, "a");
    let (b, _) = user(&s, "b");
    befriend(&s, a, b);
    // As wx.uploadFile sends it: the file plus formData fields (here the token).
    let boundary = "----wxchatTestBoundary";
    let png: &[u8] = b"\x89PNG\r\n\x1a\nfake image bytes";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n{ta}\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend_from_slice(png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut raw = format!(
        "POST /api/upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let r = http_raw(s.addr, &raw);
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["data"]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("/files/") && url.ends_with(".png"), "{url}");
    let got = http_get(s.addr, &url);
    assert_eq!(got.status, 200);
    assert_eq!(got.header("Content-Type"), Some("image/png"));
    assert_eq!(got.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(got.body, png);
    // The same bytes again: the same URL (content addressed).
    assert_eq!(http_raw(s.addr, &raw).json()["data"]["url"], url);
    // A raw body with a bearer token; HTML is never served as HTML.
    let html = b"<script>alert(1)</script>";
    let mut raw2 = format!(
        "POST /api/upload?name=x.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {ta}\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        html.len()
    )
    .into_bytes();
    raw2.extend_from_slice(html);
    let r = http_raw(s.addr, &raw2);
    let url2 = r.json()["data"]["url"].as_str().unwrap().to_string();
    assert!(url2.ends_with(".bin"), "{url2}");
    let got = http_get(s.addr, &url2);
    assert_eq!(got.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(got.header("Content-Disposition"), Some("attachment"));
    // No token: 401. Too large: 413 (before the body is read). Unknown file: 404.
    let mut raw3 = b"POST /api/upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc".to_vec();
    assert_eq!(http_raw(s.addr, &raw3).status, 401);
    raw3 = b"POST /api/upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n".to_vec();
    assert_eq!(http_raw(s.addr, &raw3).status, 413);
    assert_eq!(
        http_get(s.addr, &format!("/files/{}.png", "0".repeat(64))).status,
        404
    );
    assert_eq!(
        http_get(s.addr, "/files/..%2F..%2Fsecrets.toml").status,
        404
    );
    // The URL goes into an image message.
    let mut alice = login(&s, &ta);
    let r = request(
        &mut alice,
        json!({"cmd":"send","req_id":1,"chat_type":0,"to_id":b,"msg_type":1,"msg":{"url":url,"width":1,"height":1,"size":png.len()}}),
    );
    assert_eq!(r["code"], 200, "{r}");
}

#[test]
fn membership_changes_and_remaining_codes() {
    let s = start("");
    let (a, ta) = user(&s, "a");
    let (b, tb) = user(&s, "b");
    let (c, tc) = user(&s, "c");
    befriend(&s, a, b);
    let mut alice = login(&s, &ta);
    let mut bob = login(&s, &tb);
    let mut carol = login(&s, &tc);
    // 409: already friends.
    let r = request(
        &mut alice,
        json!({"cmd":"friend_request","req_id":1,"to_id":b}),
    );
    assert_eq!(r["code"], 409);
    // 404: accepting a request nobody sent; friend request to nobody.
    assert_eq!(
        request(
            &mut alice,
            json!({"cmd":"friend_accept","req_id":2,"from_id":c})
        )["code"],
        404
    );
    assert_eq!(
        request(
            &mut alice,
            json!({"cmd":"friend_request","req_id":3,"to_id":99999})
        )["code"],
        404
    );
    // friend_remove from the client: both sides told, then sending is refused.
    let r = request(
        &mut alice,
        json!({"cmd":"friend_remove","req_id":4,"uid":b}),
    );
    assert_eq!(r["code"], 200);
    assert_eq!(next_push(&mut bob, "friend_removed")["data"]["uid"], a);
    assert_eq!(send_text(&mut alice, 5, b, "x", "fr1")["code"], 403);
    // Server API friend_remove after friend_add.
    befriend(&s, a, c);
    assert_eq!(next_push(&mut carol, "friend_added")["data"]["uid"], a);
    let r = api(&s, "friend_remove", json!({"uid": a, "friend_id": c}));
    assert_eq!(r.status, 200);
    assert_eq!(send_text(&mut carol, 6, a, "x", "fr2")["code"], 403);
    assert_eq!(
        api(&s, "friend_add", json!({"uid": a, "friend_id": 99999})).status,
        404
    );
    // Server API group_add / group_remove.
    let g = api(
        &s,
        "group_create",
        json!({"owner_id": a, "name": "g", "members": []}),
    );
    let gid = g.json()["data"]["group"]["group_id"].as_u64().unwrap();
    let r = api(
        &s,
        "group_add",
        json!({"group_id": gid, "uids": [b, c, 99999]}),
    );
    assert_eq!(r.json()["data"]["added"], json!([b, c]));
    assert_eq!(
        next_push(&mut bob, "group_event")["data"]["event"],
        "joined"
    );
    let r = request(
        &mut bob,
        json!({"cmd":"send","req_id":7,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"in"}),
    );
    assert_eq!(r["code"], 200);
    assert_eq!(
        api(&s, "group_remove", json!({"group_id": gid, "uid": b})).status,
        200
    );
    let r = request(
        &mut bob,
        json!({"cmd":"send","req_id":8,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"out"}),
    );
    assert_eq!(r["code"], 403);
    assert_eq!(
        api(&s, "group_add", json!({"group_id": 99999, "uids": [b]})).status,
        404
    );
}

#[test]
fn too_many_requests_in_flight_is_503() {
    // With no room for store work per connection, every store-backed command is refused.
    let s = start("[chat]\nmax_pending_per_conn = 0\n");
    let (_a, ta) = user(&s, "a");
    let mut alice = login(&s, &ta);
    let r = request(&mut alice, json!({"cmd":"conversations","req_id":1}));
    assert_eq!(r["code"], 503);
    assert_eq!(
        request(&mut alice, json!({"cmd":"ping","req_id":2}))["code"],
        200
    );
}

#[test]
fn me_and_logout() {
    let s = start("");
    let (uid, token) = user(&s, "me-user");
    let get_me = |auth: &str, query: &str| {
        http_raw(
            s.addr,
            format!("GET /api/me{query} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    // No token, a malformed one, an unknown one: the WeChat-style 401.
    for (auth, query) in [
        ("", ""),
        ("Authorization: Bearer nope\r\n", ""),
        ("", "?token=00000000000000000000000000000000000000000000000000000000deadbeef"),
    ] {
        let r = get_me(auth, query);
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json(), json!({"errcode": 40001, "errmsg": "user not logged in"}));
    }
    for (auth, query) in [
        (format!("Authorization: Bearer {token}\r\n"), String::new()),
        (String::new(), format!("?token={token}")),
    ] {
        let r = get_me(&auth, &query);
        assert_eq!(r.status, 200, "{}", r.text());
        let d = &r.json()["data"];
        assert_eq!((d["uid"].as_u64(), d["app_uid"].as_str()), (Some(uid), Some("me-user")));
        assert!(!r.text().contains(&token), "the token is not echoed");
    }
    let logout = |auth: &str| {
        http_raw(
            s.addr,
            format!("POST /api/logout HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    assert_eq!(logout("").status, 401);
    let r = logout(&format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_me(&format!("Authorization: Bearer {token}\r\n"), "").status, 401);
    // The revoked token no longer opens a chat connection.
    let mut c = WsClient::connect(s.addr, &format!("/ws?token={token}"));
    assert_eq!(c.recv_json()["code"], 401);
    assert_eq!(c.expect_close(), Some(4001));
}

/// Every frame `c` receives until the reply to a `ping` sent now: what the server queued for
/// the connection before it read the ping.
fn frames_before_ping(c: &mut WsClient, req_id: u64) -> Vec<Value> {
    c.send_text(&json!({"cmd":"ping","req_id":req_id}).to_string());
    let mut got = Vec::new();
    loop {
        let v = c.recv_json();
        if v["cmd"] == "ping" && v["req_id"] == req_id {
            return got;
        }
        got.push(v);
    }
}

#[test]
fn read_receipts_stop_at_the_last_seq_and_are_pushed_when_the_cursor_moves() {
    let s = start("");
    let (a, ta) = user(&s, "a");
    let (b, tb) = user(&s, "b");
    befriend(&s, a, b);
    let mut alice = login(&s, &ta);
    let mut bob = login(&s, &tb);
    let mut conv = String::new();
    for i in 0..3 {
        let r = send_text(&mut alice, i, b, "m", &format!("r{i}"));
        conv = r["data"]["conv_id"].as_str().unwrap().to_string();
    }
    // A seq past the end reads up to the end, not beyond.
    let r = request(
        &mut bob,
        json!({"cmd":"read","req_id":1,"conv_id":conv,"seq":999}),
    );
    assert_eq!(r["data"]["read_seq"], 3, "{r}");
    assert_eq!(next_push(&mut alice, "read")["data"]["seq"], 3);
    for i in 3..5 {
        send_text(&mut alice, i, b, "later", &format!("r{i}"));
    }
    let list = request(&mut bob, json!({"cmd":"conversations","req_id":2}));
    let c = &list["data"]["conversations"][0];
    assert_eq!((c["last_seq"].as_u64(), c["unread"].as_u64()), (Some(5), Some(2)), "{c}");
    // Repeated and backward reads reply with the cursor and push nothing; the next move does.
    for (req_id, seq) in [(3, 3), (4, 1)] {
        let r = request(
            &mut bob,
            json!({"cmd":"read","req_id":req_id,"conv_id":conv,"seq":seq}),
        );
        assert_eq!(r["data"]["read_seq"], 3);
    }
    request(
        &mut bob,
        json!({"cmd":"read","req_id":5,"conv_id":conv,"seq":5}),
    );
    let receipt = next_push(&mut alice, "read");
    assert_eq!(receipt["data"]["seq"], 5, "no receipt for reads that moved nothing");
    let r = request(
        &mut bob,
        json!({"cmd":"read","req_id":6,"conv_id":conv,"seq":5}),
    );
    assert_eq!(r["data"]["read_seq"], 5);
    let extra: Vec<Value> = frames_before_ping(&mut alice, 7)
        .into_iter()
        .filter(|v| v["cmd"] == "read")
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
}

#[test]
fn an_added_member_is_told_once() {
    let s = start("");
    let (_a, ta) = user(&s, "a");
    let (b, tb) = user(&s, "b");
    let (c, tc) = user(&s, "c");
    let mut alice = login(&s, &ta);
    let mut bob = login(&s, &tb);
    let mut carol = login(&s, &tc);
    let g = request(
        &mut alice,
        json!({"cmd":"group_create","req_id":1,"name":"g","members":[]}),
    );
    let gid = g["data"]["group"]["group_id"].as_u64().unwrap();
    // By a member's invite...
    let r = request(
        &mut alice,
        json!({"cmd":"group_invite","req_id":2,"group_id":gid,"uids":[b]}),
    );
    assert_eq!(r["data"]["added"], json!([b]));
    let ev = next_push(&mut bob, "group_event");
    assert_eq!((ev["data"]["event"].as_str(), &ev["data"]["uids"]), (Some("joined"), &json!([b])));
    let again: Vec<Value> = frames_before_ping(&mut bob, 3)
        .into_iter()
        .filter(|v| v["cmd"] == "group_event")
        .collect();
    assert!(again.is_empty(), "joined once: {again:?}");
    // ...and by the server API.
    let r = api(&s, "group_add", json!({"group_id": gid, "uids": [c]}));
    assert_eq!(r.json()["data"]["added"], json!([c]), "{}", r.text());
    assert_eq!(next_push(&mut carol, "group_event")["data"]["event"], "joined");
    let again: Vec<Value> = frames_before_ping(&mut carol, 4)
        .into_iter()
        .filter(|v| v["cmd"] == "group_event")
        .collect();
    assert!(again.is_empty(), "joined once: {again:?}");
    // The members already in hear of it once too.
    let seen: Vec<Value> = frames_before_ping(&mut bob, 5)
        .into_iter()
        .filter(|v| v["cmd"] == "group_event")
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["data"]["uids"], json!([c]));
}

fn group_page(c: &mut WsClient, req_id: u64, cmd: &str, gid: u64) -> Vec<u64> {
    let cursor = if cmd == "sync" { "after_seq" } else { "before_seq" };
    let r = request(
        c,
        json!({"cmd":cmd,"req_id":req_id,"conv_id":format!("g_{gid}"),cursor:0,"limit":50}),
    );
    assert_eq!(r["code"], 200, "{r}");
    r["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

fn group_send(c: &mut WsClient, req_id: u64, gid: u64) -> u64 {
    let r = request(
        c,
        json!({"cmd":"send","req_id":req_id,"chat_type":1,"to_id":gid,"msg_type":0,"msg":"x"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    r["data"]["seq"].as_u64().unwrap()
}

#[test]
fn new_group_members_read_from_their_join_unless_the_group_shows_its_history() {
    let s = start("");
    let (a, ta) = user(&s, "a");
    let (b, tb) = user(&s, "b");
    let (c, tc) = user(&s, "c");
    let mut alice = login(&s, &ta);
    let mut bob = login(&s, &tb);
    let mut carol = login(&s, &tc);
    // The default: history kept from new members.
    let g = request(
        &mut alice,
        json!({"cmd":"group_create","req_id":1,"name":"closed","members":[b]}),
    );
    assert_eq!(g["data"]["group"]["history_for_new_members"], false, "{g}");
    let closed = g["data"]["group"]["group_id"].as_u64().unwrap();
    for i in 0..3 {
        group_send(&mut alice, 10 + i, closed);
    }
    request(
        &mut alice,
        json!({"cmd":"group_invite","req_id":2,"group_id":closed,"uids":[c]}),
    );
    let list = request(&mut carol, json!({"cmd":"conversations","req_id":30}));
    let c0 = &list["data"]["conversations"][0];
    assert_eq!(
        (c0["last_seq"].as_u64(), c0["unread"].as_u64(), &c0["last"]),
        (Some(3), Some(0), &Value::Null),
        "{list}"
    );
    assert_eq!(group_page(&mut carol, 3, "sync", closed), Vec::<u64>::new());
    assert_eq!(group_page(&mut carol, 4, "history", closed), Vec::<u64>::new());
    assert_eq!(group_send(&mut bob, 5, closed), 4);
    assert_eq!(group_page(&mut carol, 6, "sync", closed), vec![4]);
    assert_eq!(group_page(&mut carol, 7, "history", closed), vec![4]);
    let r = request(
        &mut carol,
        json!({"cmd":"history","req_id":8,"conv_id":format!("g_{closed}"),"before_seq":4,"limit":50}),
    );
    assert_eq!((r["data"]["messages"].as_array().map(Vec::len), r["data"]["has_more"].as_bool()), (Some(0), Some(false)));
    // The founders read everything.
    assert_eq!(group_page(&mut bob, 9, "sync", closed), vec![1, 2, 3, 4]);
    // A group created (server API) to show its history: a member added later reads it all.
    let r = api(
        &s,
        "group_create",
        json!({"owner_id": a, "name": "open", "members": [b], "history_for_new_members": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["group"]["history_for_new_members"], true);
    let open = r.json()["data"]["group"]["group_id"].as_u64().unwrap();
    group_send(&mut alice, 20, open);
    group_send(&mut bob, 21, open);
    assert_eq!(api(&s, "group_add", json!({"group_id": open, "uids": [c]})).status, 200);
    assert_eq!(group_page(&mut carol, 22, "sync", open), vec![1, 2]);
    assert_eq!(group_page(&mut carol, 23, "history", open), vec![2, 1]);
    // The client command sets it too; a non-boolean is refused.
    let g = request(
        &mut alice,
        json!({"cmd":"group_create","req_id":24,"name":"o2","members":[],"history_for_new_members":true}),
    );
    assert_eq!(g["data"]["group"]["history_for_new_members"], true, "{g}");
    let g = request(
        &mut alice,
        json!({"cmd":"group_create","req_id":25,"name":"bad","members":[],"history_for_new_members":"yes"}),
    );
    assert_eq!(g["code"], 400);
    let r = api(
        &s,
        "group_create",
        json!({"owner_id": a, "name": "bad", "history_for_new_members": 1}),
    );
    assert_eq!(r.status, 400);
}
