//! Customer service (`chat_type` 2) over real sockets: least-loaded assignment, the queue and its
//! position updates, transfer, close with rating, away/accept, an agent gone past the grace
//! period, sessions and queue entries surviving restarts, and an anonymous visitor served and then
//! converted into a registered user on login. (A WeChat user's message reaching the agent and the
//! agent's reply becoming a `custom/send` call: `tests/wx_callback.rs`.)

mod common;
use common::chat_client::{api_agent, api_user, signed_do_login};
use common::*;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use wxchat::server::{Running, Server};

const API_KEY: &str = "k";
const SIGN_KEY: &str = "sk";

/// A chat connection that keeps the pushes arriving before a reply (an assignment is pushed
/// before the message that caused it is acknowledged).
struct Peer {
    ws: WsClient,
    backlog: VecDeque<Value>,
}

impl Peer {
    fn request(&mut self, cmd: Value) -> Value {
        self.ws.send_text(&cmd.to_string());
        loop {
            let v = self.ws.recv_json();
            if v["cmd"] == cmd["cmd"] && v["req_id"] == cmd["req_id"] {
                return v;
            }
            if v.get("req_id").is_none() {
                self.backlog.push_back(v);
            }
        }
    }

    fn push(&mut self, cmd: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| v["cmd"] == cmd) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let v = self.ws.recv_json();
            if v["cmd"] == cmd && v.get("req_id").is_none() {
                return v;
            }
            if v.get("req_id").is_none() {
                self.backlog.push_back(v);
            }
        }
    }
}

fn ws_login(addr: SocketAddr, token: &str) -> Peer {
    Peer {
        ws: common::chat_client::ws_login(addr, token),
        backlog: VecDeque::new(),
    }
}

fn ws_request(p: &mut Peer, cmd: Value) -> Value {
    p.request(cmd)
}

fn next_push(p: &mut Peer, cmd: &str) -> Value {
    p.push(cmd)
}

fn agent(addr: SocketAddr, app_uid: &str) -> (u64, Peer) {
    let (uid, token) = api_agent(addr, API_KEY, app_uid);
    (uid, ws_login(addr, &token))
}

fn customer(addr: SocketAddr, app_uid: &str) -> (u64, Peer) {
    let (uid, token) = api_user(addr, API_KEY, app_uid);
    (uid, ws_login(addr, &token))
}

/// A customer's message to customer service; returns the reply.
fn say(c: &mut Peer, text: &str) -> Value {
    ws_request(
        c,
        json!({ "cmd": "send", "req_id": text, "chat_type": 2, "to_id": 0, "msg_type": 0, "msg": text }),
    )
}

/// An agent's answer to a customer; returns the reply.
fn answer(a: &mut Peer, to: u64, text: &str) -> Value {
    ws_request(
        a,
        json!({ "cmd": "send", "req_id": text, "chat_type": 2, "to_id": to, "msg_type": 0, "msg": text }),
    )
}

fn cmd(c: &mut Peer, body: Value) -> Value {
    ws_request(c, body)
}

/// The next `service` push's data.
fn service(c: &mut Peer) -> Value {
    next_push(c, "service")["data"].clone()
}

/// The next `service` push with this event (others are skipped).
fn service_event(c: &mut Peer, event: &str) -> Value {
    loop {
        let d = service(c);
        if d["event"] == event {
            return d;
        }
    }
}

fn message(c: &mut Peer) -> Value {
    next_push(c, "message")["data"].clone()
}

#[test]
fn least_loaded_assignment_queue_transfer_close_rating_and_accept() {
    let s = TestServer::start(&format!(
        "[api]\nkey = \"{API_KEY}\"\n[service]\nmax_sessions_per_agent = 2\nwelcome = \"欢迎\"\n\
         queue_message = \"排队第 {{position}} 位\"\nclosing_message = \"再见\"\n"
    ));
    let (a_uid, mut a) = agent(s.addr, "agent-a");
    let (b_uid, mut b) = agent(s.addr, "agent-b");
    let mut cs: Vec<(u64, Peer)> = (1..=7)
        .map(|i| customer(s.addr, &format!("c{i}")))
        .collect();
    let uid = |cs: &Vec<(u64, Peer)>, i: usize| cs[i - 1].0;

    // c1 -> a (both idle: lowest uid); the welcome follows the customer's first message.
    assert_eq!(say(&mut cs[0].1, "你好")["code"], 200);
    assert_eq!(
        service(&mut cs[0].1),
        json!({ "event": "assigned", "agent": a_uid })
    );
    assert_eq!(
        service(&mut a),
        json!({ "event": "assigned", "customer": uid(&cs, 1), "from": null })
    );
    let m = message(&mut a);
    assert_eq!(
        (m["from_id"].as_u64(), m["msg"].clone()),
        (Some(uid(&cs, 1)), json!("你好"))
    );
    let w = message(&mut a);
    assert_eq!(
        (w["from_id"].as_u64(), w["msg"].clone()),
        (Some(0), json!("欢迎"))
    );
    let w = message(&mut cs[0].1);
    assert_eq!(w["msg"], "欢迎");
    // c2 -> b (least loaded), c3 -> a (equal load: idle longest), c4 -> b.
    for (i, agent_uid) in [(2, b_uid), (3, a_uid), (4, b_uid)] {
        assert_eq!(say(&mut cs[i - 1].1, "在吗")["code"], 200);
        assert_eq!(
            service(&mut cs[i - 1].1)["agent"].as_u64(),
            Some(agent_uid),
            "c{i}"
        );
    }
    // Everyone is full: c5 and c6 wait, told their positions; the agents see the queue.
    assert_eq!(say(&mut cs[4].1, "有人吗")["code"], 200);
    assert_eq!(
        service(&mut cs[4].1),
        json!({ "event": "queued", "position": 1 })
    );
    assert_eq!(say(&mut cs[5].1, "有人吗")["code"], 200);
    assert_eq!(
        service(&mut cs[5].1),
        json!({ "event": "queued", "position": 2 })
    );
    let q = service_event(&mut b, "queue");
    assert_eq!(
        q,
        json!({ "event": "queue", "length": 1, "waiting": [uid(&cs, 5)] })
    );
    let q = service_event(&mut b, "queue");
    assert_eq!(q["waiting"], json!([uid(&cs, 5), uid(&cs, 6)]));
    // The queue message tells c6 where they are.
    loop {
        let m = message(&mut cs[5].1);
        if m["from_id"] == 0 && m["msg"] == "排队第 2 位" {
            break;
        }
    }

    // Only the serving agent writes; a queued customer must be accepted first.
    let r = answer(&mut b, uid(&cs, 1), "抢答");
    assert_eq!(r["code"], 403, "{r}");
    let r = answer(&mut a, uid(&cs, 5), "插队");
    assert_eq!(r["code"], 403, "{r}");
    assert_eq!(answer(&mut a, uid(&cs, 1), "您好，请讲")["code"], 200);
    loop {
        let m = message(&mut cs[0].1);
        if m["from_id"].as_u64() == Some(a_uid) {
            assert_eq!(m["msg"], "您好，请讲");
            break;
        }
    }
    // b's connections never saw c1's conversation.
    let info = cmd(&mut b, json!({ "cmd": "service_info", "req_id": 1 }));
    assert_eq!(info["data"]["customers"], json!([uid(&cs, 2), uid(&cs, 4)]));
    assert_eq!(info["data"]["status"], "available");
    // A second message opens nothing new.
    assert_eq!(say(&mut cs[0].1, "还在吗")["code"], 200);
    let info = cmd(&mut cs[0].1, json!({ "cmd": "service_info", "req_id": 2 }));
    assert_eq!(
        info["data"]["session"],
        json!({ "agent": a_uid, "position": null })
    );

    // Transfer c3 from a to b: everyone is told, a's free place goes to c5 at once.
    let r = cmd(
        &mut a,
        json!({ "cmd": "service_transfer", "req_id": 3, "customer": uid(&cs, 3), "to": b_uid }),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(
        service(&mut cs[2].1),
        json!({ "event": "assigned", "agent": b_uid })
    );
    assert_eq!(
        service_event(&mut b, "assigned"),
        json!({ "event": "assigned", "customer": uid(&cs, 3), "from": a_uid })
    );
    assert_eq!(
        service_event(&mut a, "transferred"),
        json!({ "event": "transferred", "customer": uid(&cs, 3), "to": b_uid })
    );
    assert_eq!(
        service_event(&mut a, "assigned")["customer"].as_u64(),
        Some(uid(&cs, 5))
    );
    assert_eq!(
        service(&mut cs[4].1),
        json!({ "event": "assigned", "agent": a_uid })
    );
    assert_eq!(
        service(&mut cs[5].1),
        json!({ "event": "queued", "position": 1 })
    );
    assert_eq!(answer(&mut b, uid(&cs, 3), "我来接待")["code"], 200);
    assert_eq!(answer(&mut a, uid(&cs, 3), "还是我")["code"], 403);

    // a closes c1: c1 is asked to rate (once), c6 gets a's free place.
    let r = cmd(
        &mut a,
        json!({ "cmd": "service_close", "req_id": 4, "customer": uid(&cs, 1) }),
    );
    assert_eq!(r["code"], 200, "{r}");
    let session_id = r["data"]["session_id"].as_u64().unwrap();
    let closed = service_event(&mut cs[0].1, "closed");
    assert_eq!(
        closed,
        json!({ "event": "closed", "session_id": session_id, "by": "agent", "rate": true })
    );
    assert_eq!(
        service(&mut cs[5].1),
        json!({ "event": "assigned", "agent": a_uid })
    );
    loop {
        let m = message(&mut cs[0].1);
        if m["msg"] == "再见" {
            assert_eq!(m["from_id"], 0);
            break;
        }
    }
    let rate = |c: &mut Peer, id: u64, rating: u64| {
        cmd(
            c,
            json!({ "cmd": "service_rate", "req_id": rating, "session_id": id, "rating": rating, "comment": "耐心" }),
        )
    };
    assert_eq!(
        rate(&mut cs[1].1, session_id, 4)["code"],
        404,
        "not c2's session"
    );
    assert_eq!(rate(&mut cs[0].1, session_id, 9)["code"], 400);
    assert_eq!(rate(&mut cs[0].1, session_id, 5)["code"], 200);
    // The agent who served the session is told the rating.
    assert_eq!(
        service_event(&mut a, "rated"),
        json!({ "event": "rated", "customer": uid(&cs, 1), "session_id": session_id, "rating": 5, "comment": "耐心" })
    );
    assert_eq!(rate(&mut cs[0].1, session_id, 3)["code"], 409);
    assert_eq!(rate(&mut a, session_id, 3)["code"], 403);

    // b goes away (takes no new customer) but may still accept one by hand.
    let r = cmd(
        &mut b,
        json!({ "cmd": "service_status", "req_id": 5, "status": "away" }),
    );
    assert_eq!(r["data"]["status"], "away", "{r}");
    assert_eq!(say(&mut cs[6].1, "你好")["code"], 200);
    assert_eq!(
        service(&mut cs[6].1),
        json!({ "event": "queued", "position": 1 })
    );
    let c7 = uid(&cs, 7);
    let r = cmd(
        &mut cs[6].1,
        json!({ "cmd": "service_accept", "req_id": 6, "customer": c7 }),
    );
    assert_eq!(r["code"], 403, "customers do not accept");
    let r = cmd(
        &mut b,
        json!({ "cmd": "service_accept", "req_id": 7, "customer": uid(&cs, 7) }),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(
        service(&mut cs[6].1),
        json!({ "event": "assigned", "agent": b_uid })
    );
    let r = cmd(
        &mut b,
        json!({ "cmd": "service_accept", "req_id": 8, "customer": uid(&cs, 7) }),
    );
    assert_eq!(r["code"], 404, "no longer waiting: {r}");
    let info = cmd(&mut a, json!({ "cmd": "service_info", "req_id": 9 }));
    assert_eq!(
        info["data"],
        json!({ "status": "available", "max_sessions": 2, "customers": [uid(&cs, 5), uid(&cs, 6)], "queue_length": 0, "waiting": [] })
    );
    // The customer may close their own session too.
    let r = cmd(
        &mut cs[6].1,
        json!({ "cmd": "service_close", "req_id": 10 }),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(service_event(&mut b, "closed")["by"], "customer");
    let r = cmd(
        &mut cs[6].1,
        json!({ "cmd": "service_close", "req_id": 11 }),
    );
    assert_eq!(r["code"], 404);
}

/// A server over a data directory that outlives it (restarts).
fn start_in(dir: &Path, toml: &str) -> Running {
    let config = test_config(dir, toml);
    Server::bind(config).expect("bind").spawn().expect("spawn")
}

#[test]
fn an_agent_gone_past_the_grace_period_is_replaced_and_restarts_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[api]\nkey = \"{API_KEY}\"\n[service]\ngrace_s = 1\n");
    let server = start_in(dir.path(), &toml);
    let addr = server.addr;
    let (a_uid, a) = agent(addr, "agent-a");
    let (b_uid, mut b) = agent(addr, "agent-b");
    let (c1, mut w1) = customer(addr, "c1");
    let (c2, mut w2) = customer(addr, "c2");
    say(&mut w1, "1");
    assert_eq!(service(&mut w1)["agent"].as_u64(), Some(a_uid));
    say(&mut w2, "2");
    assert_eq!(service(&mut w2)["agent"].as_u64(), Some(b_uid));
    assert_eq!(
        service_event(&mut b, "assigned")["customer"].as_u64(),
        Some(c2)
    );
    // a disconnects: c1 stays a's for the grace period, then goes to b.
    drop(a);
    assert_eq!(
        service(&mut w1),
        json!({ "event": "assigned", "agent": b_uid })
    );
    assert_eq!(
        service_event(&mut b, "assigned"),
        json!({ "event": "assigned", "customer": c1, "from": null })
    );
    assert_eq!(answer(&mut b, c1, "我来")["code"], 200);
    drop((b, w1, w2));
    server.stop().expect("stop");

    // Restart: b's sessions are back; a newcomer waits while no agent is online. (A long grace
    // from here on: b's restored sessions must not be re-queued while the test is slow.)
    let toml = format!("[api]\nkey = \"{API_KEY}\"\n[service]\ngrace_s = 600\n");
    let server = start_in(dir.path(), &toml);
    let addr = server.addr;
    let (c3, mut w3) = customer(addr, "c3");
    say(&mut w3, "3");
    assert_eq!(
        service(&mut w3),
        json!({ "event": "queued", "position": 1 })
    );
    drop(w3);
    server.stop().expect("stop");

    // Another restart: the queue entry is still there and goes to b when b comes back.
    let server = start_in(dir.path(), &toml);
    let addr = server.addr;
    let (_, mut b) = agent(addr, "agent-b");
    let info = cmd(&mut b, json!({ "cmd": "service_info", "req_id": 1 }));
    assert_eq!(info["data"]["customers"], json!([c1, c2, c3]), "{info}");
    assert_eq!(answer(&mut b, c3, "久等了")["code"], 200);
    // The history of the restored session is intact.
    let (_, token) = api_user(addr, API_KEY, "c1");
    let mut w1 = ws_login(addr, &token);
    let h = cmd(
        &mut w1,
        json!({ "cmd": "sync", "req_id": 2, "conv_id": format!("s_{c1}"), "after_seq": 0 }),
    );
    let texts: Vec<Value> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].clone())
        .collect();
    assert_eq!(texts, vec![json!("1"), json!("我来")]);
    server.stop().expect("stop");
}

fn post_form(addr: SocketAddr, path: &str, body: &str, headers: &str) -> HttpResponse {
    http_raw(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn do_login(addr: SocketAddr, app_uid: &str, visitor_token: &str) -> Value {
    let r = signed_do_login(addr, SIGN_KEY, app_uid, &[("visitor_token", visitor_token)]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].clone()
}

#[test]
fn an_anonymous_visitor_is_served_then_converted_on_login() {
    let s = TestServer::start(&format!(
        "[api]\nkey = \"{API_KEY}\"\n[auth]\nsign_key = \"{SIGN_KEY}\"\n[chat]\nallow_strangers = true\n\
         [service]\nvisitors_per_ip_per_min = 3\n"
    ));
    let (a_uid, mut a) = agent(s.addr, "agent-a");
    let (other, _) = api_user(s.addr, API_KEY, "someone");
    let r = post_form(s.addr, "/api/service/visitor", "", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json()["data"].clone();
    let (v_uid, v_token) = (
        v["uid"].as_u64().unwrap(),
        v["token"].as_str().unwrap().to_string(),
    );
    assert_eq!(v["user_type"], 3);
    let mut vc = ws_login(s.addr, &v_token);
    // Customer service only, even with strangers allowed.
    let r = cmd(&mut vc, json!({ "cmd": "friends", "req_id": 1 }));
    assert_eq!(r["code"], 403, "{r}");
    let r = cmd(
        &mut vc,
        json!({ "cmd": "send", "req_id": 2, "chat_type": 0, "to_id": other, "msg_type": 0, "msg": "hi" }),
    );
    assert_eq!(r["code"], 403, "{r}");
    assert_eq!(say(&mut vc, "我想咨询一下")["code"], 200);
    assert_eq!(service(&mut vc)["agent"].as_u64(), Some(a_uid));
    assert_eq!(
        service_event(&mut a, "assigned")["customer"].as_u64(),
        Some(v_uid)
    );
    assert_eq!(answer(&mut a, v_uid, "请先登录")["code"], 200);
    assert_eq!(message(&mut vc)["msg"], "请先登录");
    // The agent learns who the customer is: an anonymous web visitor.
    let who = cmd(
        &mut a,
        json!({ "cmd": "service_customer", "req_id": 7, "customer": v_uid }),
    );
    assert_eq!(
        (who["data"]["kind"].as_str(), who["data"]["name"].as_str()),
        (Some("visitor"), Some("访客")),
        "{who}"
    );
    assert_eq!(
        cmd(
            &mut vc,
            json!({ "cmd": "service_customer", "req_id": 8, "customer": v_uid })
        )["code"],
        403
    );

    // The visitor logs in: the conversation and the session become the user's.
    let login = do_login(s.addr, "member-1", &v_token);
    let u_uid = login["uid"].as_u64().unwrap();
    assert_eq!(
        login["visitor"],
        json!({ "visitor": v_uid, "uid": u_uid, "messages": 2 })
    );
    assert_eq!(vc.ws.expect_close(), Some(4004));
    assert_eq!(
        service_event(&mut a, "converted"),
        json!({ "event": "converted", "visitor": v_uid, "customer": u_uid })
    );
    // The visitor's token is dead.
    let mut dead = WsClient::connect(s.addr, &format!("/ws?token={v_token}"));
    assert_eq!(dead.recv_json()["code"], 401);
    let mut uc = ws_login(s.addr, login["token"].as_str().unwrap());
    let h = cmd(
        &mut uc,
        json!({ "cmd": "sync", "req_id": 3, "conv_id": format!("s_{u_uid}"), "after_seq": 0 }),
    );
    let got: Vec<(u64, Value)> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["from_id"].as_u64().unwrap(), m["msg"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![(u_uid, json!("我想咨询一下")), (a_uid, json!("请先登录"))]
    );
    // The agent now serves the user, not the visitor.
    assert_eq!(answer(&mut a, u_uid, "欢迎回来")["code"], 200);
    assert_eq!(message(&mut uc)["msg"], "欢迎回来");
    assert_eq!(answer(&mut a, v_uid, "？")["code"], 404);
    let info = cmd(&mut uc, json!({ "cmd": "service_info", "req_id": 4 }));
    assert_eq!(info["data"]["session"]["agent"].as_u64(), Some(a_uid));
    // Converting twice is refused.
    let r = post_form(
        s.addr,
        "/api/service/visitor/convert",
        &format!("visitor_token={v_token}"),
        &format!(
            "Authorization: Bearer {}\r\n",
            login["token"].as_str().unwrap()
        ),
    );
    assert_eq!(r.status, 401, "{}", r.text());

    // A second visitor converts through the endpoint after a login of another kind.
    let v2 = post_form(s.addr, "/api/service/visitor", "", "").json()["data"].clone();
    let v2_token = v2["token"].as_str().unwrap();
    let mut v2c = ws_login(s.addr, v2_token);
    assert_eq!(say(&mut v2c, "在吗")["code"], 200);
    let (m2_uid, m2_token) = api_user(s.addr, API_KEY, "member-2");
    let r = post_form(
        s.addr,
        "/api/service/visitor/convert",
        &format!("visitor_token={v2_token}"),
        &format!("Authorization: Bearer {m2_token}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["uid"].as_u64(), Some(m2_uid));
    assert_eq!(r.json()["data"]["messages"], 1);
    // Visitors per address per minute are limited.
    let r = post_form(s.addr, "/api/service/visitor", "", "");
    assert_eq!(r.status, 200);
    let r = post_form(s.addr, "/api/service/visitor", "", "");
    assert_eq!(r.status, 429, "{}", r.text());
}

#[test]
fn idle_visitors_are_purged_with_their_conversation() {
    // Tokens live 3 s and idle visitors go after 3 s, looked for every second.
    let s = TestServer::start(&format!(
        "[api]\nkey = \"{API_KEY}\"\n[service]\nvisitor_ttl_s = 3\nvisitor_purge_after_s = 3\n"
    ));
    let visitor = || {
        let r = post_form(s.addr, "/api/service/visitor", "", "");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json()["data"].clone();
        (
            v["uid"].as_u64().unwrap(),
            v["token"].as_str().unwrap().to_string(),
        )
    };
    // `gone` writes, closes its session, and stays connected; `waiting` keeps a session open.
    let (gone, gone_token) = visitor();
    let (waiting, waiting_token) = visitor();
    let mut g = ws_login(s.addr, &gone_token);
    assert_eq!(say(&mut g, "有人吗")["code"], 200);
    let r = cmd(&mut g, json!({ "cmd": "service_close", "req_id": 1 }));
    assert_eq!(r["code"], 200, "{r}");
    let mut w = ws_login(s.addr, &waiting_token);
    assert_eq!(say(&mut w, "在吗")["code"], 200);

    let db = rusqlite::Connection::open_with_flags(
        s.dir.path().join("wxchat.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count =
        |sql: &str, id: u64| -> i64 { db.query_row(sql, [id as i64], |r| r.get(0)).unwrap() };
    wait_for("the idle visitor to be purged", || {
        count("SELECT COUNT(*) FROM users WHERE id = ?1", gone) == 0
    });
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM messages WHERE conv_id = 's_' || ?1",
            gone
        ),
        0,
        "the conversation goes with the visitor"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM service_sessions WHERE customer_id = ?1",
            gone
        ),
        1,
        "the closed session stays"
    );
    assert_eq!(g.ws.expect_close(), Some(4003));
    // The visitor with an open session is kept, conversation and all.
    assert_eq!(
        count("SELECT COUNT(*) FROM users WHERE id = ?1", waiting),
        1
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM messages WHERE conv_id = 's_' || ?1",
            waiting
        ),
        1
    );
}
