// online_chat compatibility, profiles and the session defects of the fidelity issue, shared by
// `tests/chat.rs` (embedded store) and `tests/chat_production.rs` (MySQL + Redis) through
// `include!` after `chat_cases.rs` (whose `start`, `api`, `user`, `befriend` and `login` these use).

/// What an online_chat page posts to doLogin, signed by online_chat's PHP verbatim with
/// `sign_key` `k3y!@#` (PHP 8.2: `$params = [app_uid, name, head_img, time, user_type,
/// 'sign_key' => ...]; ksort($params); md5(http_build_query($params))`). The form is encoded as
/// a browser encodes it (`encodeURIComponent`, `%20` for a space), not as the signature spells it.
const ONLINE_CHAT_LOGIN: &str = "app_uid=10086&name=%E5%BC%A0%E4%B8%89%20%26%20O'Brien%2B%2F%3D%3F~&head_img=https%3A%2F%2Fimg.example.com%2Fa%20b.png%3Fx%3D1%26y%3D%E4%B8%AD&time=1714036504&user_type=1&sign=2bf27606c8655aebe725ec625eb910db";

/// online_chat's socket frame, byte for byte as its clients send it; `10000` and `45b3...` are
/// replaced by the peer's uid and the token.
const ONLINE_CHAT_FRAME: &str = r#"{"chat_type":0,"to_id":10000,"access_token":"45b3...","msg_type":0,"msg":"这是一个消息"}"#;

/// A server whose doLogin window reaches back to the fixed vector's `time` (2024-04-25).
fn start_online_chat() -> Srv {
    start("[auth]\ntime_window_s = 4000000000\n")
}

fn post_form(s: &TestServer, path: &str, body: &str, headers: &str) -> HttpResponse {
    http_raw(
        s.addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// online_chat's frame for this peer and token, with another `msg_type` and `msg` if asked.
fn online_chat_frame(to: u64, token: &str, msg_type: u8, msg: &str) -> String {
    let frame = ONLINE_CHAT_FRAME
        .replace("10000", &to.to_string())
        .replace("45b3...", token);
    if msg_type == 0 && msg == "这是一个消息" {
        return frame;
    }
    frame
        .replace("\"msg_type\":0", &format!("\"msg_type\":{msg_type}"))
        .replace("\"这是一个消息\"", &Value::from(msg).to_string())
}

/// Receives until a reply to `cmd` (any req_id) arrives.
fn reply_to(c: &mut WsClient, cmd: &str) -> Value {
    loop {
        let v = c.recv_json();
        if v["cmd"] == cmd && v.get("code").is_some() {
            return v;
        }
    }
}

#[test]
fn online_chat_logs_in_and_chats_unchanged() {
    let s = start_online_chat();
    let iphone = "User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.40\r\n";
    let r = post_form(&s, "/index.php/online_chat/chat/doLogin", ONLINE_CHAT_LOGIN, iphone);
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json()["data"].clone();
    assert_eq!(data["is_mobile"], 1, "{data}");
    assert_eq!(data["is_new"], true);
    let (a, token) = (data["uid"].as_u64().unwrap(), data["token"].as_str().unwrap().to_string());
    let cookie = r.header("set-cookie").expect("token cookie").to_string();
    assert!(cookie.starts_with(&format!("wxchat_token={token};")), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP gets no Secure: {cookie}");
    // The profile came through the signature intact.
    let me = http_raw(
        s.addr,
        format!("GET /api/me HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    );
    assert_eq!(me.json()["data"]["name"], "张三 & O'Brien+/=?~");
    assert_eq!(me.json()["data"]["head_img"], "https://img.example.com/a b.png?x=1&y=中");
    assert_eq!(me.json()["data"]["user_type"], 1);

    let (b, b_token) = user(&s, "peer");
    befriend(&s, a, b);
    let mut peer = login(&s, &b_token);
    // online_chat opens the socket without a token and sends it in every frame.
    let mut oc = WsClient::connect(s.addr, "/ws");
    oc.send_text(&online_chat_frame(b, &token, 0, "这是一个消息"));
    oc.send_text(&online_chat_frame(b, &token, 1, "https://img.example.com/p.jpg"));
    assert_eq!(reply_to(&mut oc, "auth")["data"]["uid"], a);
    let acks = [reply_to(&mut oc, "send"), reply_to(&mut oc, "send")];
    for ack in &acks {
        assert_eq!(ack["code"], 200, "{ack}");
    }
    assert_eq!(acks[1]["data"]["seq"].as_u64(), Some(acks[0]["data"]["seq"].as_u64().unwrap() + 1));
    let text = next_push(&mut peer, "message")["data"].clone();
    assert_eq!((text["from_id"].as_u64(), text["msg_type"].as_u64()), (Some(a), Some(0)));
    assert_eq!(text["msg"], "这是一个消息");
    let image = next_push(&mut peer, "message")["data"].clone();
    assert_eq!(image["msg_type"], 1);
    assert_eq!(image["msg"], json!({ "url": "https://img.example.com/p.jpg" }));
    // A voice and a file as bare URLs need none of the object form's metadata.
    oc.send_text(&online_chat_frame(b, &token, 2, "/files/v.amr"));
    assert_eq!(reply_to(&mut oc, "send")["code"], 200);
    oc.send_text(&online_chat_frame(b, &token, 5, "https://img.example.com/f.pdf"));
    assert_eq!(reply_to(&mut oc, "send")["code"], 200);
    assert_eq!(next_push(&mut peer, "message")["data"]["msg"], json!({ "url": "/files/v.amr" }));
}

#[test]
fn a_frames_access_token_must_be_the_connections_user() {
    let s = start("");
    let (a, a_token) = user(&s, "a");
    let (b, b_token) = user(&s, "b");
    befriend(&s, a, b);
    let mut peer = login(&s, &b_token);
    let mut oc = WsClient::connect(s.addr, "/ws");
    oc.send_text(&online_chat_frame(b, &a_token, 0, "first"));
    assert_eq!(reply_to(&mut oc, "auth")["code"], 200);
    assert_eq!(reply_to(&mut oc, "send")["code"], 200);
    assert_eq!(next_push(&mut peer, "message")["data"]["msg"], "first");
    // Someone else's token: 401 and nothing is sent.
    oc.send_text(&online_chat_frame(b, &b_token, 0, "forged"));
    let r = reply_to(&mut oc, "send");
    assert_eq!(r["code"], 401, "{r}");
    oc.send_text(&online_chat_frame(b, "not-a-token", 0, "forged"));
    assert_eq!(reply_to(&mut oc, "send")["code"], 401);
    // A token of the same user from another login is fine.
    let (_, a_token2) = user(&s, "a");
    oc.send_text(&online_chat_frame(b, &a_token2, 0, "second device"));
    assert_eq!(reply_to(&mut oc, "send")["code"], 200);
    // The peer got exactly the two accepted messages, in order.
    assert_eq!(next_push(&mut peer, "message")["data"]["msg"], "second device");
    // With `cmd` the token is checked too (the fast path does not skip it).
    let r = request(
        &mut oc,
        json!({"cmd":"send","req_id":9,"chat_type":0,"to_id":b,"msg_type":0,"msg":"x","access_token":b_token}),
    );
    assert_eq!(r["code"], 401, "{r}");
    // A bad token on a new connection fails its authentication as any bad token does.
    let mut bad = WsClient::connect(s.addr, "/ws");
    bad.send_text(&online_chat_frame(b, &"0".repeat(64), 0, "x"));
    assert_eq!(reply_to(&mut bad, "auth")["code"], 401);
    assert_eq!(bad.expect_close(), Some(4001));
}

#[test]
fn a_dologin_signature_is_good_for_one_login() {
    let s = start_online_chat();
    let r = post_form(&s, "/api/doLogin", ONLINE_CHAT_LOGIN, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["is_mobile"], 0);
    let again = post_form(&s, "/api/doLogin", ONLINE_CHAT_LOGIN, "");
    assert_eq!(again.status, 401, "{}", again.text());
    assert!(again.json()["msg"].as_str().unwrap().contains("already used"));
    // A field the server does not read is not signed and changes nothing; a signed field given
    // twice is refused.
    let r = post_form(&s, "/api/doLogin", &format!("{ONLINE_CHAT_LOGIN}&client=h5"), "");
    assert!(r.text().contains("already used"), "still the same signature: {}", r.text());
    let r = post_form(&s, "/api/doLogin", &format!("{ONLINE_CHAT_LOGIN}&name=x"), "");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn dologin_user_types_as_online_chat_sends_them() {
    let s = start("");
    let r = common::chat_client::signed_do_login(s.addr, SIGN_KEY, "agent-1", &[("user_type", "1")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = common::chat_client::signed_do_login(s.addr, SIGN_KEY, "v-1", &[("user_type", "3")]);
    assert_eq!(r.status, 400);
    assert!(r.json()["msg"].as_str().unwrap().contains("reserved for anonymous visitors"));
    let r = common::chat_client::signed_do_login(s.addr, SIGN_KEY, "x-1", &[("user_type", "agent")]);
    assert_eq!(r.status, 400);
    assert!(r.json()["msg"].as_str().unwrap().contains("\"agent\""), "{}", r.text());
    let r = common::chat_client::signed_do_login(s.addr, SIGN_KEY, "x-2", &[("head_img", "javascript:alert(1)")]);
    assert_eq!(r.status, 400);
}

#[test]
fn the_dologin_cookie_opens_a_same_site_websocket() {
    let s = start("");
    let r = common::chat_client::signed_do_login(s.addr, SIGN_KEY, "web-1", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let uid = r.json()["data"]["uid"].as_u64().unwrap();
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    // The page of the same site (Origin = the Host it connects to), and a client that is no page.
    for extra in [
        format!("Cookie: theme=dark; {cookie}\r\nOrigin: http://t\r\n"),
        format!("Cookie: {cookie}\r\n"),
    ] {
        let (c, resp) = WsClient::try_connect(s.addr, "/ws", &extra);
        assert_eq!(resp.status, 101);
        let mut c = c.unwrap();
        let auth = c.recv_json();
        assert_eq!((auth["cmd"].as_str(), auth["data"]["uid"].as_u64()), (Some("auth"), Some(uid)), "{auth}");
    }
    // Another site's page carries the cookie too, but it does not count there.
    let (c, _) = WsClient::try_connect(s.addr, "/ws", &format!("Cookie: {cookie}\r\nOrigin: https://evil.example\r\n"));
    let mut c = c.unwrap();
    let r = request(&mut c, json!({"cmd":"conversations","req_id":1}));
    assert_eq!(r["code"], 401, "{r}");
    // The page's upload needs no token either.
    let png = b"\x89PNG\r\n\x1a\ncookie upload";
    let mut raw = format!(
        "POST /api/upload?name=a.png HTTP/1.1\r\nHost: t\r\nConnection: close\r\nOrigin: http://t\r\nCookie: {cookie}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        png.len()
    )
    .into_bytes();
    raw.extend_from_slice(png);
    assert_eq!(http_raw(s.addr, &raw).status, 200);
    // A token the page sends wins over the cookie the browser attached.
    let (other, other_token) = user(&s, "web-2");
    let (c, _) = WsClient::try_connect(s.addr, "/ws", &format!("Cookie: {cookie}\r\n"));
    let mut c = c.unwrap();
    c.send_text(&json!({"cmd":"auth","req_id":5,"token":other_token}).to_string());
    loop {
        let v = c.recv_json();
        if v["req_id"] == 5 {
            assert_eq!((v["code"].as_u64(), v["data"]["uid"].as_u64()), (Some(200), Some(other)), "{v}");
            break;
        }
    }
    // Logout by cookie clears it.
    let r = post_form(&s, "/api/logout", "", &format!("Cookie: {cookie}\r\nOrigin: http://t\r\n"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[test]
fn a_stale_login_cookie_leaves_the_socket_open_for_a_token() {
    let s = start("");
    let r = common::chat_client::signed_do_login(s.addr, SIGN_KEY, "stale-1", &[]);
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let t = r.json()["data"]["token"].as_str().unwrap().to_string();
    let logout = http_raw(
        s.addr,
        format!("POST /api/logout HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {t}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(logout.status, 200);
    let (uid, token) = user(&s, "fresh-1");
    let (c, _) = WsClient::try_connect(s.addr, "/ws", &format!("Cookie: {cookie}\r\n"));
    let mut c = c.unwrap();
    let stale = c.recv_json();
    assert_eq!(stale["code"], 401, "{stale}");
    assert!(stale["msg"].as_str().unwrap().contains("cookie"), "{stale}");
    let r = request(&mut c, json!({"cmd":"auth","req_id":1,"token":token}));
    assert_eq!(r["data"]["uid"], uid, "{r}");
}

#[test]
fn logout_closes_the_sockets_of_that_token() {
    let s = start("");
    let (_, t1) = user(&s, "multi");
    let (_, t2) = user(&s, "multi");
    let mut a1 = login(&s, &t1);
    let mut a2 = login(&s, &t1);
    let mut other_device = login(&s, &t2);
    let r = http_raw(
        s.addr,
        format!("POST /api/logout HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {t1}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a1.expect_close(), Some(4003));
    assert_eq!(a2.expect_close(), Some(4003));
    let r = request(&mut other_device, json!({"cmd":"ping","req_id":1}));
    assert_eq!(r["code"], 200, "the other token's socket stays: {r}");
}

#[test]
fn profiles_reach_friends_and_groups_and_show_in_conversations() {
    let s = start("");
    let (a, a_token) = user(&s, "pa");
    let (b, b_token) = user(&s, "pb");
    let (c, c_token) = user(&s, "pc");
    befriend(&s, a, b);
    let g = api(&s, "group_create", json!({"owner_id": a, "name": "g", "members": [c]}));
    assert_eq!(g.status, 200, "{}", g.text());
    let mut friend = login(&s, &b_token);
    let mut member = login(&s, &c_token);
    let mut me = login(&s, &a_token);
    assert_eq!(send_text(&mut me, 1, b, "hi", "p-1")["code"], 200);
    let update = |body: Value| {
        http_post_json(s.addr, "/api/me", &body, &format!("Authorization: Bearer {a_token}\r\n"))
    };
    let r = update(json!({"name": " 新名字 ", "head_img": "https://img.example.com/new.png"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["name"], "新名字");
    let want = json!({"uid": a, "name": "新名字", "head_img": "https://img.example.com/new.png"});
    assert_eq!(next_push(&mut friend, "profile")["data"], want);
    assert_eq!(next_push(&mut member, "profile")["data"], want);
    assert_eq!(next_push(&mut me, "profile")["data"], want);
    // The friend's conversation list shows the new profile.
    let list = request(&mut friend, json!({"cmd":"conversations","req_id":2}));
    let line = list["data"]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["chat_type"] == 0)
        .cloned()
        .unwrap();
    assert_eq!(line["peer"], want, "{list}");
    // So do the friend list and the group's member list.
    let friends = request(&mut friend, json!({"cmd":"friends","req_id":3}));
    assert_eq!(friends["data"]["friends"][0]["name"], "新名字", "{friends}");
    assert_eq!(friends["data"]["friends"][0]["online"], true);
    let gid = g.json()["data"]["group"]["group_id"].as_u64().unwrap();
    let members = request(&mut member, json!({"cmd":"group_members","req_id":4,"group_id":gid}));
    let me_line = members["data"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["uid"] == a)
        .cloned()
        .unwrap();
    assert_eq!(me_line["head_img"], "https://img.example.com/new.png", "{members}");
    // Refused: a script URL, a name too long, nothing to change.
    assert_eq!(update(json!({"head_img": "javascript:alert(1)"})).status, 400);
    assert_eq!(update(json!({"name": "x".repeat(65)})).status, 400);
    assert_eq!(update(json!({})).status, 400);
    // The server API sets a profile by wxchat uid (WeChat users have no app_uid).
    let r = api(&s, "user", json!({"uid": b, "name": "Bee"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["uid"], b);
    assert_eq!(next_push(&mut me, "profile")["data"]["name"], "Bee");
    assert_eq!(api(&s, "user", json!({"uid": 999_999, "name": "x"})).status, 404);
}

#[test]
fn a_malformed_token_is_a_failed_login_on_the_connection_topic() {
    let s = start("");
    let mut sub = WsClient::connect(s.admin, "/admin/subscribe");
    sub.send_text(r#"{"cmd":"subscribe","req_id":1,"topics":["connection"]}"#);
    assert_eq!(sub.recv_json()["code"], 200);
    let mut c = WsClient::connect(s.addr, "/ws?token=abc");
    assert_eq!(c.recv_json()["code"], 401);
    assert_eq!(c.expect_close(), Some(4001));
    loop {
        let e = sub.recv_json();
        if e["event"] == "auth_failed" {
            break;
        }
    }
}
