//! Mini-program login against a fake WeChat API: users created then found, every documented
//! WeChat error mapped to a clear reply, WeChat down or slow, the session key never leaving the
//! server (replies and log lines), decryption with the stored session key, and the token opening
//! a chat connection.

mod common;
use common::chat_client::{next_push, server_api, ws_login, ws_request};
use common::fake_wechat::{FakeWechat, APPID, SECRET, SESSION_KEY};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const API_KEY: &str = "k";

fn config(fake: &FakeWechat) -> String {
    format!(
        "[api]\nkey = \"{API_KEY}\"\n[wechat]\ntimeout_ms = 1000\n{}",
        fake.app_toml("mp")
    )
}

fn wx_login(addr: SocketAddr, body: Value) -> HttpResponse {
    http_post_json(addr, "/api/wx/login", &body, "")
}

fn assert_secret_free(r: &HttpResponse) {
    let t = r.text();
    assert!(!t.contains(SESSION_KEY), "session key leaked: {t}");
    assert!(!t.contains(SECRET), "app secret leaked: {t}");
}

#[test]
fn first_login_creates_the_user_second_finds_it_and_the_token_chats() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake));
    let r = wx_login(s.addr, json!({ "code": "ok-openid-1" }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_secret_free(&r);
    let d = r.json()["data"].clone();
    assert_eq!(d["is_new"], true);
    assert_eq!(d["expires_in"], 7 * 24 * 3600);
    let uid = d["uid"].as_u64().unwrap();
    let r = wx_login(s.addr, json!({ "code": "ok-openid-1", "app": "mp" }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["is_new"], false);
    assert_eq!(r.json()["data"]["uid"], uid);
    assert_eq!(fake.calls("/sns/jscode2session"), 2);

    // The token is a wxchat token like any other: /api/me and the chat WebSocket.
    let token = r.json()["data"]["token"].as_str().unwrap().to_string();
    let me = http_raw(
        s.addr,
        format!("GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(me.json()["data"]["uid"], uid);
    let other = wx_login(s.addr, json!({ "code": "ok-openid-2" }));
    let other_uid = other.json()["data"]["uid"].as_u64().unwrap();
    let other_token = other.json()["data"]["token"].as_str().unwrap().to_string();
    let r = server_api(
        s.addr,
        API_KEY,
        "friend_add",
        &json!({ "uid": uid, "friend_id": other_uid }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut a = ws_login(s.addr, &token);
    let mut b = ws_login(s.addr, &other_token);
    let r = ws_request(
        &mut a,
        json!({"cmd":"send","req_id":1,"chat_type":0,"to_id":other_uid,"msg_type":0,"msg":"你好"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(next_push(&mut b, "message")["data"]["msg"], "你好");
}

fn me(addr: SocketAddr, token: &str) -> Value {
    let r = http_raw(
        addr,
        format!("GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].clone()
}

#[test]
fn the_mini_programs_user_info_names_the_user_and_reaches_friends() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake));
    // As the usual tutorials send it: `wx.getUserProfile`'s userInfo next to the code.
    let info = json!({"nickName": "小明", "avatarUrl": "https://thirdwx.qlogo.cn/mmopen/x/132",
        "gender": 1, "city": "Shenzhen", "province": "Guangdong", "country": "China", "language": "zh_CN"});
    let r = wx_login(s.addr, json!({ "code": "ok-openid-p1", "userInfo": info }));
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json()["data"].clone();
    let (uid, token) = (
        d["uid"].as_u64().unwrap(),
        d["token"].as_str().unwrap().to_string(),
    );
    assert_eq!(me(s.addr, &token)["name"], "小明");
    assert_eq!(
        me(s.addr, &token)["head_img"],
        "https://thirdwx.qlogo.cn/mmopen/x/132"
    );
    // A friend online learns of a later change; WeChat's anonymous "微信用户" never overwrites.
    let friend = wx_login(s.addr, json!({ "code": "ok-openid-p2" })).json()["data"].clone();
    let r = server_api(
        s.addr,
        API_KEY,
        "friend_add",
        &json!({"uid": uid, "friend_id": friend["uid"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut f = ws_login(s.addr, friend["token"].as_str().unwrap());
    let r = wx_login(
        s.addr,
        json!({ "code": "ok-openid-p1", "userInfo": {"nickName": "微信用户"} }),
    );
    assert_eq!(
        me(s.addr, r.json()["data"]["token"].as_str().unwrap())["name"],
        "小明"
    );
    // Flat fields in a form, as some front ends post them.
    let form = "code=ok-openid-p1&nickName=%E5%B0%8F%E7%BA%A2&avatarUrl=https%3A%2F%2Fthirdwx.qlogo.cn%2Fy%2F132";
    let r = http_raw(
        s.addr,
        format!("POST /api/wx/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}", form.len()).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let push = next_push(&mut f, "profile")["data"].clone();
    assert_eq!(
        push,
        json!({"uid": uid, "name": "小红", "head_img": "https://thirdwx.qlogo.cn/y/132"})
    );
}

#[test]
fn wechat_errors_map_to_clear_replies() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake));
    for (code, status, errcode, says) in [
        ("err-40029", 400, Some(40029), "invalid code"),
        ("err-40163", 400, Some(40163), "already used"),
        ("err-45011", 429, Some(45011), "rate limit"),
        ("err-40226", 403, Some(40226), "blocked"),
        ("err--1", 503, Some(-1), "busy"),
        ("err-40013", 502, Some(40013), "check the app"),
        ("junk", 502, None, "unreachable"),
    ] {
        let r = wx_login(s.addr, json!({ "code": code }));
        assert_eq!(r.status, status, "{code}: {}", r.text());
        let v = r.json();
        assert_eq!(v["code"], status);
        assert_eq!(
            v.get("errcode").and_then(Value::as_i64),
            errcode,
            "{code}: {v}"
        );
        assert!(v["msg"].as_str().unwrap().contains(says), "{code}: {v}");
        assert_secret_free(&r);
    }
    for (body, status) in [
        (json!({}), 400),
        (json!({ "code": "" }), 400),
        (json!({ "code": "ok-x", "app": "nope" }), 404),
    ] {
        assert_eq!(wx_login(s.addr, body.clone()).status, status, "{body}");
    }
    // Form bodies work too (wx.request with a form content type).
    let form = "code=ok-form-user";
    let r = http_raw(
        s.addr,
        format!("POST /api/wx/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}", form.len()).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn wrong_secret_down_and_slow_wechat() {
    let fake = FakeWechat::start();
    // A wrong secret: WeChat's 40125, reported as a configuration problem, secret not echoed.
    let s = TestServer::start(&config(&fake).replace(SECRET, "wrong-secret-1"));
    let r = wx_login(s.addr, json!({ "code": "ok-a" }));
    assert_eq!((r.status, r.json()["errcode"].as_i64()), (502, Some(40125)));
    assert!(!r.text().contains("wrong-secret-1"));

    // Nothing listening: 502 saying WeChat is unreachable.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = TestServer::start(&config(&fake).replace(&fake.base(), &format!("http://{dead}")));
    let r = wx_login(s.addr, json!({ "code": "ok-a" }));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["msg"]
        .as_str()
        .unwrap()
        .contains("WeChat API unreachable"));

    // Slower than [wechat] timeout_ms: the same, and the server stays responsive meanwhile.
    let s = TestServer::start(&config(&fake));
    fake.set_delay(Duration::from_millis(1500));
    let r = wx_login(s.addr, json!({ "code": "ok-a" }));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.json()["msg"].as_str().unwrap().contains("unreachable"),
        "{}",
        r.text()
    );
}

#[test]
fn decrypt_uses_the_stored_session_key() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake));
    let r = wx_login(s.addr, json!({ "code": "ok-phone-user" }));
    let token = r.json()["data"]["token"].as_str().unwrap().to_string();
    // Encrypted with the fake's session key by OpenSSL (see src/wechat/decrypt.rs).
    let data = "aLhedzo+Z6es5zW+YHo9susiHnaEYeAkbZXA6vB3xXwsEHApbzM53NsvIVPS8sbzE9Tu3cKoosCIaJ9ReH9c7q8xI4AFlJ8HTHrrdVC0WzSFVEG+Q/SUBzVOfvRAiCzg9pRwA0o1X/SBOShf2kiL8wNfdlkWY+I9rsvJLhx38KPligMy/5ajh2WA9GMad7QPJ4mOrRhNln1eQPztHyRiSA==";
    let iv = "EBESExQVFhcYGRobHB0eHw==";
    let auth = format!("Authorization: Bearer {token}\r\n");
    let r = http_post_json(
        s.addr,
        "/api/wx/decrypt",
        &json!({ "encryptedData": data, "iv": iv }),
        &auth,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["phoneNumber"], "13800138000");
    assert_eq!(r.json()["data"]["watermark"]["appid"], APPID);
    assert_secret_free(&r);
    // Tampered data, no token, a user without a WeChat login.
    let r = http_post_json(
        s.addr,
        "/api/wx/decrypt",
        &json!({ "encryptedData": &data[4..], "iv": iv }),
        &auth,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = http_post_json(
        s.addr,
        "/api/wx/decrypt",
        &json!({ "encryptedData": data, "iv": iv }),
        "",
    );
    assert_eq!((r.status, r.json()["errcode"].as_i64()), (401, Some(40001)));
    let r = server_api(s.addr, API_KEY, "user", &json!({ "app_uid": "web-only" }));
    let web_token = r.json()["data"]["token"].as_str().unwrap().to_string();
    let r = http_post_json(
        s.addr,
        "/api/wx/decrypt",
        &json!({ "encryptedData": data, "iv": iv }),
        &format!("Authorization: Bearer {web_token}\r\n"),
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn no_log_line_carries_the_session_key_or_the_secret() {
    let fake = FakeWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &merge_toml(&config(&fake), "[server]\nlog_level = \"trace\"\n"),
    );
    let (mut child, addr) = spawn_foreground(&cfg, &dir.path().join("data"));
    for code in ["ok-logged-user", "err-40029", "junk"] {
        wx_login(addr, json!({ "code": code }));
    }
    child.stop_cleanly();
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("wx login"), "the failures are logged: {log}");
    assert!(!log.contains(SESSION_KEY), "session key in the log");
    assert!(!log.contains(SECRET), "app secret in the log");
}
