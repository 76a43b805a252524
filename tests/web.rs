//! The pages the server serves (`[web]`): built into the binary, on by default on a loopback
//! listener only, read from `[web] dir` when set, never outside it; and the demo login that
//! exists only on a loopback listener with `[web] demo`.

mod common;
use common::chat_client::{next_push, ws_login, ws_request};
use common::*;
use serde_json::json;

fn demo_login(s: &TestServer, name: &str) -> HttpResponse {
    http_post_json(s.addr, "/api/demo/login", &json!({ "name": name }), "")
}

#[test]
fn pages_are_served_from_the_binary_on_a_loopback_listener() {
    let s = TestServer::start("");
    let r = http_get(s.addr, "/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(r.text().contains("<html"));
    // The API is still the API, unknown paths and escapes are 404, other methods 404.
    assert_eq!(http_get(s.addr, "/api/me").status, 401);
    assert_eq!(http_get(s.addr, "/no-such-page.html").status, 404);
    assert_eq!(http_get(s.addr, "/../secrets.toml").status, 404);
    assert_eq!(http_get(s.addr, "/.git/config").status, 404);
}

#[test]
fn pages_can_be_switched_off_and_come_from_a_directory() {
    let s = TestServer::start("[web]\nenabled = \"off\"\n");
    assert_eq!(http_get(s.addr, "/").status, 404);
    let pages = tempfile::tempdir().unwrap();
    std::fs::create_dir(pages.path().join("agent")).unwrap();
    std::fs::write(pages.path().join("agent/index.html"), "<html>ours</html>").unwrap();
    let s = TestServer::start(&format!(
        "[web]\ndir = {:?}\n",
        pages.path().display().to_string()
    ));
    let r = http_get(s.addr, "/agent/");
    assert_eq!((r.status, r.text().as_str()), (200, "<html>ours</html>"));
    let r = http_get(s.addr, "/agent");
    assert_eq!((r.status, r.header("location")), (301, Some("/agent/")));
    assert_eq!(
        http_get(s.addr, "/").status,
        404,
        "only the directory's files"
    );
}

#[test]
fn demo_logins_make_friends_who_can_chat() {
    let s = TestServer::start("");
    let a = demo_login(&s, "alice");
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.header("set-cookie").unwrap().starts_with("wxchat_token="));
    let b = demo_login(&s, "bob");
    let (a, b) = (a.json()["data"].clone(), b.json()["data"].clone());
    let mut alice = ws_login(s.addr, a["token"].as_str().unwrap());
    let mut bob = ws_login(s.addr, b["token"].as_str().unwrap());
    let r = ws_request(
        &mut alice,
        json!({"cmd":"send","req_id":1,"chat_type":0,"to_id":b["uid"],"msg_type":0,"msg":"hi bob"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(next_push(&mut bob, "message")["data"]["msg"], "hi bob");
    // The same name is the same user.
    assert_eq!(demo_login(&s, "alice").json()["data"]["uid"], a["uid"]);
    assert_eq!(demo_login(&s, "").status, 400);
}

#[test]
fn the_demo_login_exists_only_on_loopback_with_demo_on() {
    let s = TestServer::start("[web]\ndemo = false\n");
    assert_eq!(demo_login(&s, "alice").status, 404);
    // A listener on every address: no pages and no demo unless configured.
    let s = TestServer::start("[server]\nlisten = \"0.0.0.0:0\"\n");
    let port = s.addr.port();
    let local: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = http_post_json(local, "/api/demo/login", &json!({ "name": "alice" }), "");
    assert_eq!(r.status, 404);
    assert_eq!(http_get(local, "/").status, 404);
    let s = TestServer::start("[server]\nlisten = \"0.0.0.0:0\"\n[web]\nenabled = \"on\"\n");
    let local: std::net::SocketAddr = format!("127.0.0.1:{}", s.addr.port()).parse().unwrap();
    assert_eq!(http_get(local, "/").status, 200);
    let r = http_post_json(local, "/api/demo/login", &json!({ "name": "alice" }), "");
    assert_eq!(r.status, 404, "never on a public listener");
}
