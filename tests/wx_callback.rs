//! WeChat message push end to end, with pushes built by the test the way WeChat builds them:
//! URL verification (WeChat's published vector), plaintext and safe mode in XML and JSON,
//! rejections (signature, msg_signature, stale timestamp, wrong appid, DOCTYPE, plaintext where
//! encryption is required), a retried push stored once, and customer service both ways: a
//! WeChat user's messages reach an agent, the agent's replies become `custom/send` calls (text,
//! image after `media/upload`, link) with WeChat's errors reported back, typing included.

mod common;
use common::chat_client::{api_agent, next_push, server_api, ws_login, ws_request};
use common::fake_wechat::{FakeWechat, APPID, SECRET};
use common::wx_push::{body, now, Pusher};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use wxchat::wechat::message::Format;

const API_KEY: &str = "k";
const TOKEN: &str = "cbtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn config(fake: &FakeWechat, extra_app: &str) -> String {
    format!(
        "[api]\nkey = \"{API_KEY}\"\n[wechat]\ntimeout_ms = 2000\n\
         [[wechat.apps]]\nname = \"mp\"\nkind = \"miniprogram\"\nappid = \"{APPID}\"\n\
         secret = \"{SECRET}\"\napi_base = \"{}\"\ntoken = \"{TOKEN}\"\naes_key = \"{AES_KEY}\"\n{extra_app}",
        fake.base()
    )
}

fn pusher(app: &str) -> Pusher {
    Pusher {
        path: format!("/wechat/{app}/callback"),
        token: TOKEN.into(),
        aes_key: AES_KEY.into(),
        appid: APPID.into(),
    }
}

fn text_push(format: Format, openid: &str, msg_id: &str, content: &str) -> String {
    body(
        format,
        &[
            ("ToUserName", "gh_test"),
            ("FromUserName", openid),
            ("CreateTime", &now().to_string()),
            ("MsgType", "text"),
            ("Content", content),
            ("MsgId", msg_id),
        ],
    )
}

/// An online agent (user_type 1).
fn agent(addr: SocketAddr, app_uid: &str) -> (u64, WsClient) {
    let (uid, token) = api_agent(addr, API_KEY, app_uid);
    (uid, ws_login(addr, &token))
}

fn success(r: &HttpResponse) {
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "success"),
        "{}",
        r.text()
    );
}

#[test]
fn url_verification_with_wechats_published_vector() {
    let fake = FakeWechat::start();
    // The mini-program message-push document's example: token AAAAA, 43 x 'A'.
    let app = format!(
        "[[wechat.apps]]\nname = \"doc\"\nkind = \"miniprogram\"\nappid = \"wxba5fad812f8e6fb9\"\n\
         secret = \"s\"\napi_base = \"{}\"\ntoken = \"AAAAA\"\naes_key = \"{}\"\n",
        fake.base(),
        "A".repeat(43)
    );
    let s = TestServer::start(&config(&fake, &app));
    let p = Pusher {
        path: "/wechat/doc/callback".into(),
        token: "AAAAA".into(),
        aes_key: "A".repeat(43),
        appid: "wxba5fad812f8e6fb9".into(),
    };
    let good = "signature=f464b24fc39322e44b38aa78f5edd27bd1441696&echostr=4375120948345356249\
                &timestamp=1714036504&nonce=1514711492";
    let r = p.verify_url(s.addr, good);
    assert_eq!((r.status, r.text().as_str()), (200, "4375120948345356249"));
    let bad = good.replace("f464b24f", "0000000f");
    let r = p.verify_url(s.addr, &bad);
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("AAAAA") && !r.text().contains("4375120948345356249"));
    // Missing parameters, unknown app; /wechat/callback needs exactly one app.
    assert_eq!(p.verify_url(s.addr, "echostr=1").status, 400);
    let nobody = Pusher {
        path: "/wechat/nope/callback".into(),
        ..p
    };
    assert_eq!(nobody.verify_url(s.addr, good).status, 404);
    let default = Pusher {
        path: "/wechat/callback".into(),
        ..nobody
    };
    assert_eq!(
        default.verify_url(s.addr, good).status,
        404,
        "two apps configured"
    );
}

#[test]
fn plaintext_and_safe_mode_pushes_reach_the_agent_and_a_retry_is_stored_once() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake, ""));
    let (_agent_uid, mut agent) = agent(s.addr, "agent-1");
    let p = pusher("mp");

    // Plaintext XML text.
    let push = text_push(Format::Xml, "o-cust-1", "1001", "你好 <客服> & co");
    success(&p.plain(s.addr, &push));
    let m = next_push(&mut agent, "message")["data"].clone();
    assert_eq!(m["chat_type"], 2);
    assert_eq!(m["msg"], "你好 <客服> & co");
    assert_eq!(m["seq"], 1);
    let customer = m["from_id"].as_u64().unwrap();
    let conv = m["conv_id"].as_str().unwrap().to_string();
    assert_eq!(conv, format!("s_{customer}"));

    // WeChat retries the same push (no answer seen in 5 s): answered, not stored again.
    success(&p.plain(s.addr, &push));
    // Safe mode, JSON, same user: next seq, and nothing was stored twice in between.
    let json_push = text_push(Format::Json, "o-cust-1", "1002", "json 加密");
    success(&p.safe(s.addr, Format::Json, &json_push));
    let m = next_push(&mut agent, "message")["data"].clone();
    assert_eq!(
        (m["msg"].as_str(), m["seq"].as_u64()),
        (Some("json 加密"), Some(2))
    );
    assert_eq!(m["from_id"], customer);

    // Safe mode, XML, an image; and the customer-service entry event.
    let image = body(
        Format::Xml,
        &[
            ("ToUserName", "gh_test"),
            ("FromUserName", "o-cust-1"),
            ("CreateTime", &now().to_string()),
            ("MsgType", "image"),
            ("PicUrl", "https://mmbiz.qpic.cn/x.jpg"),
            ("MediaId", "MEDIA_IN"),
            ("MsgId", "1003"),
        ],
    );
    success(&p.safe(s.addr, Format::Xml, &image));
    let m = next_push(&mut agent, "message")["data"].clone();
    assert_eq!(
        (m["msg_type"].as_u64(), m["seq"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(m["msg"]["url"], "https://mmbiz.qpic.cn/x.jpg");
    let enter = body(
        Format::Json,
        &[
            ("ToUserName", "gh_test"),
            ("FromUserName", "o-cust-1"),
            ("CreateTime", "1714112445"),
            ("MsgType", "event"),
            ("Event", "user_enter_tempsession"),
            ("SessionFrom", "order-42"),
        ],
    );
    success(&p.plain(s.addr, &enter));
    success(&p.plain(s.addr, &enter));
    let m = next_push(&mut agent, "message")["data"].clone();
    assert_eq!(m["msg_type"], 101);
    assert_eq!(
        m["msg"],
        json!({"event":"user_enter_tempsession","session_from":"order-42"})
    );

    // The conversation holds each message once, in order.
    let page = ws_request(
        &mut agent,
        json!({"cmd":"sync","req_id":1,"conv_id":conv,"after_seq":0}),
    );
    let seqs: Vec<u64> = page["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "{page}");

    // Other pushes are acknowledged and ignored.
    let other = body(
        Format::Xml,
        &[
            ("FromUserName", "o-cust-1"),
            ("MsgType", "event"),
            ("Event", "weapp_audit_success"),
        ],
    );
    success(&p.plain(s.addr, &other));
}

#[test]
fn forged_stale_misdirected_and_hostile_pushes_are_refused() {
    let fake = FakeWechat::start();
    let strict = format!(
        "[[wechat.apps]]\nname = \"strict\"\nkind = \"minigame\"\nappid = \"wxgame000000000001\"\n\
         secret = \"s\"\napi_base = \"{}\"\ntoken = \"{TOKEN}\"\naes_key = \"{AES_KEY}\"\n\
         require_encryption = true\n",
        fake.base()
    );
    let s = TestServer::start(&config(&fake, &strict));
    let (_, mut agent) = agent(s.addr, "agent-2");
    let p = pusher("mp");
    let push = text_push(Format::Xml, "o-x", "2001", "x");

    // A wrong token signs a wrong signature.
    let forged = Pusher {
        token: "not-the-token".into(),
        ..pusher("mp")
    };
    assert_eq!(forged.plain(s.addr, &push).status, 403);
    // A replay from an hour ago.
    let r = p.plain_at(s.addr, &push, now() - 3600);
    assert_eq!(
        (r.status, r.text().contains("stale")),
        (403, true),
        "{}",
        r.text()
    );
    // Safe mode with a tampered Encrypt: msg_signature no longer matches.
    let (query, envelope) = p.seal(Format::Xml, &push, APPID);
    let tampered = envelope.replacen("<Encrypt><![CDATA[", "<Encrypt><![CDATA[A", 1);
    assert_eq!(p.raw(s.addr, &query, &tampered).status, 403);
    // Safe mode encrypted for another app (valid signatures): the appid check refuses it.
    let (query, envelope) = p.seal(Format::Xml, &push, "wxsomeoneelse00001");
    let r = p.raw(s.addr, &query, &envelope);
    assert_eq!(r.status, 403, "{}", r.text());
    // Entity expansion is never attempted.
    let bomb = "<!DOCTYPE x [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]><xml><Content>&b;</Content></xml>";
    let r = p.plain(s.addr, bomb);
    assert_eq!(r.status, 400, "{}", r.text());
    // Not XML nor JSON.
    assert_eq!(p.plain(s.addr, "hello").status, 400);
    // An app that requires encryption refuses plaintext, accepts safe mode.
    let sp = Pusher {
        path: "/wechat/strict/callback".into(),
        appid: "wxgame000000000001".into(),
        ..pusher("strict")
    };
    assert_eq!(sp.plain(s.addr, &push).status, 403);
    success(&sp.safe(
        s.addr,
        Format::Json,
        &text_push(Format::Json, "o-g", "3001", "ok"),
    ));
    let m = next_push(&mut agent, "message")["data"].clone();
    assert_eq!(m["msg"], "ok");
    // None of the refused pushes was stored: the next push from o-x is its conversation's first.
    success(&p.plain(s.addr, &text_push(Format::Xml, "o-x", "2002", "first")));
    let m = next_push(&mut agent, "message")["data"].clone();
    assert_eq!(
        (m["msg"].as_str(), m["seq"].as_u64()),
        (Some("first"), Some(1))
    );
}

#[test]
fn agent_replies_go_out_through_custom_send_with_wechat_errors_reported() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake, ""));
    let (_agent_uid, mut agent) = agent(s.addr, "agent-3");
    let p = pusher("mp");
    success(&p.plain(s.addr, &text_push(Format::Xml, "o-c3", "4001", "help?")));
    let m = next_push(&mut agent, "message")["data"].clone();
    let customer = m["from_id"].as_u64().unwrap();
    // Who the customer is: a WeChat user of this app (replies go through custom/send).
    let who = ws_request(
        &mut agent,
        json!({"cmd":"service_customer","req_id":99,"customer":customer}),
    );
    assert_eq!(who["data"]["kind"], "wechat", "{who}");
    assert_eq!(who["data"]["wechat_appid"], common::fake_wechat::APPID);

    let send = |agent: &mut WsClient, id: u64, msg_type: u64, msg: Value| {
        let r = ws_request(
            agent,
            json!({"cmd":"send","req_id":id,"chat_type":2,"to_id":customer,"msg_type":msg_type,"msg":msg}),
        );
        assert_eq!(r["code"], 200, "{r}");
        let d = next_push(agent, "wx_delivery")["data"].clone();
        assert_eq!(d["msg_id"], r["data"]["msg_id"]);
        d
    };
    let d = send(&mut agent, 1, 0, json!("您好，请问有什么可以帮您？"));
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(
        fake.bodies("/cgi-bin/message/custom/send").last().unwrap(),
        &json!({"touser":"o-c3","msgtype":"text","text":{"content":"您好，请问有什么可以帮您？"}})
    );

    // An image from our uploads: media/upload first, then custom/send with its media_id.
    let png = b"\x89PNG\r\n\x1a\nnot really a png but bytes";
    let up = http_raw(
        s.addr,
        &[
            format!(
                "POST /api/upload?name=a.png HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: image/png\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
                agent_token(s.addr, "agent-3"),
                png.len()
            )
            .into_bytes(),
            png.to_vec(),
        ]
        .concat(),
    );
    assert_eq!(up.status, 200, "{}", up.text());
    let url = up.json()["data"]["url"].as_str().unwrap().to_string();
    let d = send(&mut agent, 2, 1, json!({ "url": url }));
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(fake.calls("/cgi-bin/media/upload"), 1);
    assert_eq!(
        fake.bodies("/cgi-bin/message/custom/send").last().unwrap()["image"],
        json!({"media_id":"MEDIA-1"})
    );
    // A link card.
    let d = send(
        &mut agent,
        3,
        6,
        json!({"title":"订单","description":"查看订单","url":"https://shop.example/o/1"}),
    );
    assert_eq!(d["ok"], true, "{d}");
    let last = fake
        .bodies("/cgi-bin/message/custom/send")
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["msgtype"], "link");
    assert_eq!(last["link"]["url"], "https://shop.example/o/1");
    // A type WeChat customer service cannot carry is stored but reported undelivered.
    let d = send(
        &mut agent,
        4,
        5,
        json!({"url":"/files/x","size":1,"name":"a.pdf"}),
    );
    assert_eq!(d["ok"], false);
    // Typing shows in WeChat.
    let r = ws_request(
        &mut agent,
        json!({"cmd":"typing","req_id":5,"conv_id":format!("s_{customer}")}),
    );
    assert_eq!(r["code"], 200, "{r}");
    wait_for("custom/typing", || {
        fake.calls("/cgi-bin/message/custom/typing") == 1
    });
    assert_eq!(
        fake.bodies("/cgi-bin/message/custom/typing")[0],
        json!({"touser":"o-c3","command":"Typing"})
    );

    // WeChat's reply-window and quota errors come back to the agent.
    for (openid, errcode) in [("late-user", 45015), ("quota-user", 45047)] {
        success(&p.plain(
            s.addr,
            &text_push(Format::Xml, openid, &format!("50{errcode}"), "hi"),
        ));
        let m = next_push(&mut agent, "message")["data"].clone();
        let to = m["from_id"].as_u64().unwrap();
        let r = ws_request(
            &mut agent,
            json!({"cmd":"send","req_id":10,"chat_type":2,"to_id":to,"msg_type":0,"msg":"reply"}),
        );
        assert_eq!(r["code"], 200, "{r}");
        let d = next_push(&mut agent, "wx_delivery")["data"].clone();
        assert_eq!(
            (d["ok"].as_bool(), d["errcode"].as_i64()),
            (Some(false), Some(errcode)),
            "{d}"
        );
    }
    // The customer-service conversation is not open to other users.
    let (_, token) = common::chat_client::api_user(s.addr, API_KEY, "nosy");
    let mut nosy = ws_login(s.addr, &token);
    let r = ws_request(
        &mut nosy,
        json!({"cmd":"sync","req_id":1,"conv_id":format!("s_{customer}"),"after_seq":0}),
    );
    assert_eq!(r["code"], 403, "{r}");
    // No more calls than messages sent: nothing is sent twice.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fake.calls("/cgi-bin/message/custom/send"), 5);
}

#[test]
fn a_type_wechat_cannot_carry_is_reported_as_such_before_any_wechat_call() {
    let fake = FakeWechat::start();
    let s = TestServer::start(&config(&fake, ""));
    let (_, mut agent) = agent(s.addr, "agent-5");
    success(&pusher("mp").plain(s.addr, &text_push(Format::Xml, "o-c5", "6001", "video?")));
    let customer = next_push(&mut agent, "message")["data"]["from_id"]
        .as_u64()
        .unwrap();

    let send = |agent: &mut WsClient, id: u64, msg_type: u64, msg: Value| {
        let r = ws_request(
            agent,
            json!({"cmd":"send","req_id":id,"chat_type":2,"to_id":customer,"msg_type":msg_type,"msg":msg}),
        );
        assert_eq!(r["code"], 200, "stored all the same: {r}");
        let d = next_push(agent, "wx_delivery")["data"].clone();
        assert_eq!(
            (d["msg_id"].clone(), d["ok"].as_bool()),
            (r["data"]["msg_id"].clone(), Some(false)),
            "{d}"
        );
        d
    };
    // A short video: the agent is told WeChat cannot carry it and what to send instead, with
    // code 415, not that WeChat is unreachable.
    let d = send(&mut agent, 1, 3, json!({"url":"/files/v.mp4","duration":5}));
    assert_eq!(
        (d["code"].as_u64(), d["msg"].as_str()),
        (
            Some(415),
            Some("WeChat customer service cannot carry short video (msg_type 3); send a link or image instead")
        ),
        "{d}"
    );
    assert!(d.get("errcode").is_none(), "WeChat said nothing: {d}");
    let d = send(&mut agent, 2, 2, json!({"url":"/files/v.amr","duration":3}));
    assert_eq!(d["code"].as_u64(), Some(415), "{d}");
    assert!(
        d["msg"].as_str().unwrap().contains("voice (msg_type 2)"),
        "{d}"
    );
    // An image that is not one of our uploads is the message's fault too.
    let d = send(
        &mut agent,
        3,
        1,
        json!({"url":"https://elsewhere.example/a.png"}),
    );
    assert_eq!(d["code"].as_u64(), Some(400), "{d}");
    assert!(d["msg"].as_str().unwrap().contains("upload"), "{d}");
    // None of them cost a WeChat call, not even an access_token.
    for path in [
        "/cgi-bin/stable_token",
        "/cgi-bin/media/upload",
        "/cgi-bin/message/custom/send",
    ] {
        assert_eq!(fake.calls(path), 0, "{path}");
    }
}

/// A fresh token of an existing user (the server API `user` updates and logs in).
fn agent_token(addr: SocketAddr, app_uid: &str) -> String {
    let r = server_api(addr, API_KEY, "user", &json!({ "app_uid": app_uid }));
    r.json()["data"]["token"].as_str().unwrap().to_string()
}
