//! Official-account QR-code scan login end to end: the browser's WebSocket gets `qrcode_url`, the
//! fake WeChat saw `qrcode/create`, the test posts the `subscribe` (then `SCAN`) callback in safe
//! mode, the browser gets `scan_success` with a token that opens the chat WebSocket, WeChat's
//! retry and a reused ticket do nothing, an unscanned code expires; and the same across two
//! server processes sharing Redis (the browser on one, the callback on the other).

mod common;
use common::chat_client::ws_login;
use common::fake_wechat::FakeWechat;
use common::services::{TestDb, TestRedis};
use common::wx_push::{body, now, Pusher};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use wxchat::wechat::message::Format;

const TOKEN: &str = "qrtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn config(fake: &FakeWechat, extra: &str) -> String {
    merge_toml(
        &format!(
            "[api]\nkey = \"k\"\n[wechat]\ntimeout_ms = 2000\n{}",
            fake.official_toml("oa", TOKEN, AES_KEY)
        ),
        extra,
    )
}

fn pusher() -> Pusher {
    Pusher {
        path: "/wechat/oa/callback".into(),
        token: TOKEN.into(),
        aes_key: AES_KEY.into(),
        appid: common::fake_wechat::APPID.into(),
    }
}

/// The scan event WeChat pushes: `subscribe` with `qrscene_<ticket>` or `SCAN` with `<ticket>`.
fn scan_event(event: &str, openid: &str, ticket: &str, created: i64) -> String {
    let key = if event == "subscribe" {
        format!("qrscene_{ticket}")
    } else {
        ticket.to_string()
    };
    body(
        Format::Xml,
        &[
            ("ToUserName", "gh_oa"),
            ("FromUserName", openid),
            ("CreateTime", &created.to_string()),
            ("MsgType", "event"),
            ("Event", event),
            ("EventKey", &key),
            ("Ticket", "gQ-wechat-ticket"),
        ],
    )
}

/// Opens the browser side and returns it with the ticket WeChat was asked to encode.
fn open_browser(addr: SocketAddr, fake: &FakeWechat) -> (WsClient, String, Value) {
    let before = fake.qr_scenes().len();
    let mut browser = WsClient::connect(addr, "/ws/qrlogin?app=oa");
    let qr = browser.recv_json();
    assert_eq!(qr["message_type"], "qrcode_url", "{qr}");
    let scenes = fake.qr_scenes();
    assert_eq!(scenes.len(), before + 1, "one qrcode/create call");
    let ticket = scenes.last().unwrap().clone();
    assert!(
        ticket.len() == 32 && ticket.bytes().all(|b| b.is_ascii_hexdigit()),
        "a random ticket, not a connection number: {ticket}"
    );
    (browser, ticket, qr)
}

#[test]
fn scan_logs_the_browser_in_once_and_the_token_chats() {
    let fake = FakeWechat::start();
    // The official account and a mini-program of the same owner (unionid merge below).
    let s = TestServer::start(&format!(
        "[api]\nkey = \"k\"\n[wechat]\ntimeout_ms = 2000\n{}{}",
        fake.official_toml("oa", TOKEN, AES_KEY),
        fake.app_toml("mp")
    ));
    let p = pusher();

    let (mut browser, ticket, qr) = open_browser(s.addr, &fake);
    assert_eq!(qr["expire_seconds"], 120);
    // The URL is WeChat's showqrcode page with the ticket WeChat issued, URL-encoded.
    let expected =
        format!("https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=gQ%2B{ticket}%2F%3D");
    assert_eq!(qr["url"], expected);
    let create = fake.bodies("/cgi-bin/qrcode/create").pop().unwrap();
    assert_eq!(create["action_name"], "QR_STR_SCENE");
    assert_eq!(create["expire_seconds"], 120);

    // The user scans and follows: safe-mode XML subscribe event.
    let created = now();
    let event = scan_event("subscribe", "oa-user-1-u-union-7", &ticket, created);
    let r = p.safe(s.addr, Format::Xml, &event);
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = p.open_reply(&r.text());
    assert_eq!(reply.get("MsgType"), Some("text"));
    assert_eq!(reply.get("ToUserName"), Some("oa-user-1-u-union-7"));
    assert_eq!(
        reply.get("Content"),
        Some("微信用户，登录成功！这是你第1次登录")
    );

    let ok = browser.recv_json();
    assert_eq!(ok["message_type"], "scan_success", "{ok}");
    let uid = ok["user"]["uid"].as_u64().unwrap();
    let token = ok["token"].as_str().unwrap().to_string();
    assert_eq!(browser.expect_close(), Some(1000));
    let _chat = ws_login(s.addr, &token);

    // WeChat retries the same push: answered, nothing else happens.
    let r = p.safe(s.addr, Format::Xml, &event);
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    // The ticket is single-use: a later scan of the same code does nothing.
    let again = scan_event("SCAN", "oa-user-1-u-union-7", &ticket, created + 5);
    let r = p.safe(s.addr, Format::Xml, &again);
    assert_eq!((r.status, r.text().as_str()), (200, "success"));

    // A second login of the same follower (SCAN, plaintext): same user, second login.
    let (mut browser, ticket2, _) = open_browser(s.addr, &fake);
    let r = p.plain(
        s.addr,
        &scan_event("SCAN", "oa-user-1-u-union-7", &ticket2, now()),
    );
    let reply = wxchat::wechat::message::parse(r.text().as_bytes())
        .unwrap()
        .1;
    assert_eq!(
        reply.get("Content"),
        Some("微信用户，登录成功！这是你第2次登录")
    );
    let ok = browser.recv_json();
    assert_eq!(ok["user"]["uid"], uid);

    // One person across the official account and a mini-program: merged by unionid.
    let r = http_post_json(
        s.addr,
        "/api/wx/login",
        &serde_json::json!({ "code": "ok-mini-openid-1-u-union-7" }),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["uid"], uid);
    assert_eq!(r.json()["data"]["is_new"], false);
}

#[test]
fn a_scan_takes_the_wechat_nickname_when_wechat_gives_one() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake, ""));
    let p = pusher();
    let (mut browser, ticket, _) = open_browser(s.addr, &fake);
    let event = scan_event("subscribe", "oa-old-nick-Lily", &ticket, now());
    let r = p.safe(s.addr, Format::Xml, &event);
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = p.open_reply(&r.text());
    assert_eq!(
        reply.get("Content"),
        Some("Lily，登录成功！这是你第1次登录")
    );
    let ok = browser.recv_json();
    assert_eq!(ok["message_type"], "scan_success", "{ok}");
    assert_eq!(ok["user"]["name"], "Lily");
    assert_eq!(
        ok["user"]["head_img"],
        "https://thirdwx.qlogo.cn/mmopen/Lily/132"
    );
}

#[test]
fn an_unscanned_code_expires_and_unknown_accounts_are_refused() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake, "[wechat]\nqr_expire_s = 1\n"));
    let (mut browser, ticket, qr) = open_browser(s.addr, &fake);
    assert_eq!(qr["expire_seconds"], 1);
    let expired = browser.recv_json();
    assert_eq!(expired["message_type"], "qrcode_expired");
    assert_eq!(browser.expect_close(), Some(1000));
    // A scan after expiry logs nobody in.
    let r = pusher().plain(s.addr, &scan_event("SCAN", "oa-late", &ticket, now()));
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(fake.calls("/cgi-bin/user/info"), 0);

    // No such account: the upgrade is refused.
    let (client, resp) = WsClient::try_connect(s.addr, "/ws/qrlogin?app=nope", "");
    assert!(client.is_none(), "upgrade to an unknown account accepted");
    assert_eq!(resp.status, 404);

    // WeChat refusing qrcode/create reaches the browser as an error, then a close.
    fake.set_error("/cgi-bin/qrcode/create", Some(45009));
    let mut browser = WsClient::connect(s.addr, "/ws/qrlogin?app=oa");
    let e = browser.recv_json();
    assert_eq!(
        (e["message_type"].as_str(), e["errcode"].as_i64()),
        (Some("error"), Some(45009)),
        "{e}"
    );
    assert_eq!(browser.expect_close(), Some(1013));
}

#[test]
fn the_scan_reaches_a_browser_held_by_another_process_through_redis() {
    let fake = FakeWechat::start();
    let db = TestDb::create();
    let redis = TestRedis::create();
    let shared = merge_toml(&db.store_toml(), &redis.toml());
    let s1 = TestServer::start(&merge_toml(
        &config(&fake, &shared),
        "[server]\nnode_id = \"n1\"\n",
    ));
    let s2 = TestServer::start(&merge_toml(
        &config(&fake, &shared),
        "[server]\nnode_id = \"n2\"\n",
    ));
    // The browser is connected to process 1; WeChat's push lands on process 2.
    let (mut browser, ticket, _) = open_browser(s1.addr, &fake);
    let r = pusher().safe(
        s2.addr,
        Format::Xml,
        &scan_event("subscribe", "oa-cluster-1", &ticket, now()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = pusher().open_reply(&r.text());
    assert!(reply.get("Content").unwrap().contains("登录成功"));
    let ok = browser.recv_json();
    assert_eq!(ok["message_type"], "scan_success", "{ok}");
    assert_eq!(browser.expect_close(), Some(1000));
    // The token works on either process.
    let token = ok["token"].as_str().unwrap();
    let _c1 = ws_login(s1.addr, token);
    let _c2 = ws_login(s2.addr, token);
    // A retry on process 1 does nothing.
    let r = pusher().safe(
        s1.addr,
        Format::Xml,
        &scan_event("SCAN", "oa-cluster-1", &ticket, now()),
    );
    assert_eq!(r.text(), "success");
    drop((s1, s2));
}
