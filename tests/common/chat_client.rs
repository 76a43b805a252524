//! Client-side helpers shared by the chat-level integration tests: the server API, logins,
//! request/reply over a chat WebSocket, and waiting for a push.
#![allow(dead_code)]

use super::{http_post_json, http_raw, HttpResponse, WsClient};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// `POST /api/server/<action>` with the API key.
pub fn server_api(addr: SocketAddr, key: &str, action: &str, body: &Value) -> HttpResponse {
    http_post_json(
        addr,
        &format!("/api/server/{action}"),
        body,
        &format!("Authorization: Bearer {key}\r\n"),
    )
}

/// Creates (or updates) a user named after its app_uid; returns (uid, token).
pub fn api_user(addr: SocketAddr, key: &str, app_uid: &str) -> (u64, String) {
    let r = server_api(
        addr,
        key,
        "user",
        &json!({ "app_uid": app_uid, "name": app_uid }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json()["data"];
    (
        d["uid"].as_u64().unwrap(),
        d["token"].as_str().unwrap().to_string(),
    )
}

/// Creates (or updates) a customer-service agent (`user_type` 1); returns (uid, token).
pub fn api_agent(addr: SocketAddr, key: &str, app_uid: &str) -> (u64, String) {
    let r = server_api(
        addr,
        key,
        "user",
        &json!({ "app_uid": app_uid, "name": app_uid, "user_type": 1 }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json()["data"];
    (
        d["uid"].as_u64().unwrap(),
        d["token"].as_str().unwrap().to_string(),
    )
}

/// An authenticated chat client.
pub fn ws_login(addr: SocketAddr, token: &str) -> WsClient {
    let mut c = WsClient::connect(addr, &format!("/ws?token={token}"));
    let auth = c.recv_json();
    assert_eq!(auth["cmd"], "auth");
    assert_eq!(auth["code"], 200, "{auth}");
    c
}

/// Sends a command and returns its reply (same `cmd` and `req_id`); pushes are skipped.
pub fn ws_request(c: &mut WsClient, cmd: Value) -> Value {
    c.send_text(&cmd.to_string());
    loop {
        let v = c.recv_json();
        if v["cmd"] == cmd["cmd"] && v["req_id"] == cmd["req_id"] {
            return v;
        }
    }
}

/// Receives until a push with `cmd` arrives (replies and other pushes are skipped).
pub fn next_push(c: &mut WsClient, cmd: &str) -> Value {
    loop {
        let v = c.recv_json();
        if v["cmd"] == cmd && v.get("req_id").is_none() {
            return v;
        }
    }
}

/// `POST /api/doLogin` signed with `sign_key`: `app_uid`, the current `time`, then `extra`
/// fields.
pub fn signed_do_login(
    addr: SocketAddr,
    sign_key: &str,
    app_uid: &str,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut params = vec![
        ("app_uid".to_string(), app_uid.to_string()),
        ("time".to_string(), time),
    ];
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let sign = wxchat::auth::dologin_sign(&params, sign_key);
    let body: String = params
        .iter()
        .map(|(k, v)| format!("{k}={v}&"))
        .collect::<String>()
        + &format!("sign={sign}");
    http_raw(
        addr,
        format!(
            "POST /api/doLogin HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}
