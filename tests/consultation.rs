//! Timed consultations (`chat_type` 3) with short durations over real sockets: the time runs only
//! while both sides are connected, remaining-time reports and warnings arrive, the consultation
//! ends by itself at zero (then 410), an extension reopens it, and the remaining time survives a
//! kill -9 of the server within a few seconds.

mod common;
use common::chat_client::{api_user, server_api, ws_login, ws_request};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const API_KEY: &str = "k";
const FAST: &str = "[consult]\nreport_every_s = 1\nwarn_at_s = [3, 1]\nsave_every_s = 1\n";

fn api(addr: SocketAddr, action: &str, body: Value) -> Value {
    let r = server_api(addr, API_KEY, action, &body);
    assert_eq!(r.status, 200, "{action}: {}", r.text());
    r.json()["data"].clone()
}

/// The next `consult` push (replies and other pushes are skipped).
fn consult_push(c: &mut WsClient) -> Value {
    loop {
        let v = c.recv_json();
        if v["cmd"] == "consult" {
            return v["data"].clone();
        }
    }
}

fn consult_event(c: &mut WsClient, event: &str) -> Value {
    loop {
        let d = consult_push(c);
        if d["event"] == event {
            return d;
        }
    }
}

fn send(c: &mut WsClient, consult_id: u64, text: &str) -> Value {
    ws_request(
        c,
        json!({ "cmd": "send", "req_id": text, "chat_type": 3, "to_id": consult_id, "msg_type": 0, "msg": text }),
    )
}

#[test]
fn time_runs_only_while_both_are_connected_warns_ends_and_extends() {
    let s = TestServer::start(&format!("[api]\nkey = \"{API_KEY}\"\n{FAST}"));
    let (u, u_token) = api_user(s.addr, API_KEY, "patient");
    let (c, c_token) = api_user(s.addr, API_KEY, "doctor");
    let (_, x_token) = api_user(s.addr, API_KEY, "outsider");
    let r = server_api(
        s.addr,
        API_KEY,
        "consult_create",
        &json!({ "user": u, "consultant": u, "seconds": 5 }),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = server_api(
        s.addr,
        API_KEY,
        "consult_create",
        &json!({ "user": u, "consultant": 999_999, "seconds": 5 }),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let created = api(
        s.addr,
        "consult_create",
        json!({ "user": u, "consultant": c, "seconds": 5 }),
    );
    let id = created["consult_id"].as_u64().unwrap();
    assert_eq!(created["conv_id"], format!("c_{id}"));
    assert_eq!(
        (
            created["remaining_s"].as_u64(),
            created["running"].as_bool()
        ),
        (Some(5), Some(false))
    );

    // Only the user is here: the time does not run, messages still go through.
    let mut uc = ws_login(s.addr, &u_token);
    let r = send(&mut uc, id, "医生您好");
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["conv_id"], format!("c_{id}"));
    std::thread::sleep(Duration::from_millis(1200));
    let g = api(s.addr, "consult_get", json!({ "consult_id": id }));
    assert_eq!(
        (g["remaining_s"].as_u64(), g["running"].as_bool()),
        (Some(5), Some(false))
    );
    // Outsiders neither write nor read.
    let mut xc = ws_login(s.addr, &x_token);
    assert_eq!(send(&mut xc, id, "?")["code"], 403);
    let r = ws_request(
        &mut xc,
        json!({ "cmd": "history", "req_id": 1, "conv_id": format!("c_{id}") }),
    );
    assert_eq!(r["code"], 403, "{r}");

    // The consultant connects: the time runs for both.
    let mut cc = ws_login(s.addr, &c_token);
    let started = Instant::now();
    assert_eq!(consult_event(&mut uc, "running")["remaining_s"], 5);
    assert_eq!(consult_event(&mut cc, "running")["remaining_s"], 5);
    let r = ws_request(
        &mut cc,
        json!({ "cmd": "sync", "req_id": 2, "conv_id": format!("c_{id}"), "after_seq": 0 }),
    );
    assert_eq!(r["data"]["messages"][0]["msg"], "医生您好");
    assert_eq!(r["data"]["messages"][0]["to_id"].as_u64(), Some(c));
    assert_eq!(send(&mut cc, id, "请讲")["code"], 200);
    // A report after a second, then the 3-second warning.
    let t = consult_push(&mut uc);
    assert_eq!(
        (t["event"].clone(), t["remaining_s"].as_u64()),
        (json!("time"), Some(4))
    );
    let w = consult_event(&mut uc, "warning");
    assert_eq!(w["remaining_s"], 3);
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // The consultant drops: paused for the user; no time passes meanwhile.
    drop(cc);
    let p = consult_event(&mut uc, "paused");
    let paused_at = p["remaining_s"].as_u64().unwrap();
    assert!((2..=3).contains(&paused_at), "{p}");
    std::thread::sleep(Duration::from_millis(1500));
    let g = api(s.addr, "consult_get", json!({ "consult_id": id }));
    assert_eq!(
        (g["remaining_s"].as_u64(), g["running"].as_bool()),
        (Some(paused_at), Some(false))
    );

    // Back: it runs out. The 1-second warning, then the end; messages get 410.
    let mut cc = ws_login(s.addr, &c_token);
    assert_eq!(
        consult_event(&mut uc, "running")["remaining_s"].as_u64(),
        Some(paused_at)
    );
    assert_eq!(consult_event(&mut uc, "warning")["remaining_s"], 1);
    let e = consult_event(&mut uc, "ended");
    assert_eq!(e["remaining_s"], 0);
    assert_eq!(consult_event(&mut cc, "ended")["remaining_s"], 0);
    let r = send(&mut uc, id, "还有一个问题");
    assert_eq!(r["code"], 410, "{r}");
    assert_eq!(send(&mut cc, id, "?")["code"], 410);
    let g = api(s.addr, "consult_get", json!({ "consult_id": id }));
    assert_eq!(
        (g["remaining_s"].as_u64(), g["ended"].as_bool()),
        (Some(0), Some(true))
    );

    // The business backend sells two more seconds: it runs again at once, then ends again.
    let x = api(
        s.addr,
        "consult_extend",
        json!({ "consult_id": id, "seconds": 2 }),
    );
    assert_eq!(
        (x["remaining_s"].as_u64(), x["total_s"].as_u64()),
        (Some(2), Some(7))
    );
    assert_eq!(consult_event(&mut uc, "extended")["remaining_s"], 2);
    assert_eq!(consult_event(&mut uc, "running")["remaining_s"], 2);
    assert_eq!(send(&mut uc, id, "还有一个问题")["code"], 200);
    consult_event(&mut uc, "ended");
    let r = server_api(
        s.addr,
        API_KEY,
        "consult_extend",
        &json!({ "consult_id": 999_999, "seconds": 2 }),
    );
    assert_eq!(r.status, 404);
    let r = server_api(
        s.addr,
        API_KEY,
        "consult_extend",
        &json!({ "consult_id": id, "seconds": 0 }),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn remaining_time_survives_a_kill_within_a_few_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &format!("[api]\nkey = \"{API_KEY}\"\n{FAST}"));
    let (mut child, addr) = spawn_foreground(&config, &data);
    let (u, u_token) = api_user(addr, API_KEY, "patient");
    let (c, c_token) = api_user(addr, API_KEY, "doctor");
    let id = api(
        addr,
        "consult_create",
        json!({ "user": u, "consultant": c, "seconds": 60 }),
    )["consult_id"]
        .as_u64()
        .unwrap();
    let mut uc = ws_login(addr, &u_token);
    let _cc = ws_login(addr, &c_token);
    assert_eq!(consult_event(&mut uc, "running")["remaining_s"], 60);
    // Let it run a few seconds, then read the live figure and kill the server at once.
    let mut live = 60;
    wait_for("3 seconds used", || {
        live = api(addr, "consult_get", json!({ "consult_id": id }))["remaining_s"]
            .as_u64()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        live <= 57
    });
    let live = api(addr, "consult_get", json!({ "consult_id": id }))["remaining_s"]
        .as_u64()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(child);

    let (_child, addr) = spawn_foreground(&config, &data);
    let stored = api(addr, "consult_get", json!({ "consult_id": id }));
    let stored_s = stored["remaining_s"].as_u64().unwrap();
    assert!(
        stored_s + 1 >= live && stored_s <= live + 3,
        "live {live} s before the kill, {stored_s} s after the restart"
    );
    assert_eq!(stored["ended"], false);
    // Both come back: it runs on from the saved figure.
    let mut uc = ws_login(addr, &u_token);
    let _cc = ws_login(addr, &c_token);
    assert_eq!(
        consult_event(&mut uc, "running")["remaining_s"].as_u64(),
        Some(stored_s)
    );
}

#[test]
fn a_side_connecting_alone_learns_the_state_asks_for_it_and_the_backend_ends_it() {
    let s = TestServer::start(&format!("[api]\nkey = \"{API_KEY}\"\n{FAST}"));
    let (u, u_token) = api_user(s.addr, API_KEY, "patient");
    let (c, c_token) = api_user(s.addr, API_KEY, "doctor");
    let (_, x_token) = api_user(s.addr, API_KEY, "outsider");
    let created = api(
        s.addr,
        "consult_create",
        json!({ "user": u, "consultant": c, "seconds": 600 }),
    );
    let id = created["consult_id"].as_u64().unwrap();

    // The user connects while the consultant is away: told where things stand at once.
    let mut uc = ws_login(s.addr, &u_token);
    let st = consult_push(&mut uc);
    assert_eq!(
        st,
        json!({ "consult_id": id, "event": "state", "remaining_s": 600, "total_s": 600,
                "running": false, "ended": false })
    );
    // ...and may ask at any time; others may not.
    let get = json!({ "cmd": "consult_get", "req_id": 1, "consult_id": id });
    let r = ws_request(&mut uc, get.clone());
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(
        (
            r["data"]["consult_id"].as_u64(),
            r["data"]["conv_id"].as_str(),
            r["data"]["user"].as_u64(),
            r["data"]["consultant"].as_u64(),
            r["data"]["remaining_s"].as_u64(),
            r["data"]["running"].as_bool(),
            r["data"]["ended"].as_bool()
        ),
        (
            Some(id),
            Some(format!("c_{id}").as_str()),
            Some(u),
            Some(c),
            Some(600),
            Some(false),
            Some(false)
        )
    );
    let mut xc = ws_login(s.addr, &x_token);
    assert_eq!(ws_request(&mut xc, get.clone())["code"], 403);
    let r = ws_request(
        &mut xc,
        json!({ "cmd": "consult_get", "req_id": 2, "consult_id": 999_999 }),
    );
    assert_eq!(r["code"], 404);
    let r = ws_request(&mut xc, json!({ "cmd": "consult_get", "req_id": 3 }));
    assert_eq!(r["code"], 400);

    // The consultant arrives: both run, and the newcomer's state says so.
    let mut cc = ws_login(s.addr, &c_token);
    assert_eq!(consult_push(&mut cc)["event"], "running");
    let st = consult_push(&mut cc);
    assert_eq!(
        (
            st["event"].as_str(),
            st["running"].as_bool(),
            st["ended"].as_bool()
        ),
        (Some("state"), Some(true), Some(false))
    );
    consult_event(&mut uc, "running");
    let r = ws_request(&mut cc, get.clone());
    assert_eq!(r["data"]["running"], true, "{r}");

    // The business backend ends it: both told, nothing left, messages refused until extended.
    let e = api(s.addr, "consult_end", json!({ "consult_id": id }));
    assert_eq!(
        (
            e["remaining_s"].as_u64(),
            e["ended"].as_bool(),
            e["running"].as_bool()
        ),
        (Some(0), Some(true), Some(false))
    );
    for side in [&mut uc, &mut cc] {
        let p = consult_event(side, "ended");
        assert_eq!(
            (p["remaining_s"].as_u64(), p["total_s"].as_u64()),
            (Some(0), Some(600))
        );
    }
    assert_eq!(send(&mut uc, id, "还在吗")["code"], 410);
    let r = ws_request(&mut uc, get.clone());
    assert_eq!(
        (
            r["data"]["ended"].as_bool(),
            r["data"]["remaining_s"].as_u64()
        ),
        (Some(true), Some(0))
    );
    let r = server_api(
        s.addr,
        API_KEY,
        "consult_end",
        &json!({ "consult_id": 999_999 }),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server_api(s.addr, API_KEY, "consult_end", &json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    // An extension reopens it.
    let x = api(
        s.addr,
        "consult_extend",
        json!({ "consult_id": id, "seconds": 30 }),
    );
    assert_eq!(
        (x["remaining_s"].as_u64(), x["ended"].as_bool()),
        (Some(30), Some(false))
    );
}
