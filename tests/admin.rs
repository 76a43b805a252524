//! The admin listener over real sockets: info topics and their filters, periodic serverInfo, a
//! slow subscriber dropped without touching the chat, and `/metrics` as Prometheus text.

mod common;
use common::chat_client::*;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::FromRawFd;

const API_KEY: &str = "admin-test-key";
const SIGN_KEY: &str = "admin-sign";

fn server(extra: &str) -> TestServer {
    TestServer::start(&merge_toml(
        &format!(
            "[api]\nkey = \"{API_KEY}\"\n[auth]\nsign_key = \"{SIGN_KEY}\"\n[chat]\nallow_strangers = true\n"
        ),
        extra,
    ))
}

fn subscribe(admin: SocketAddr, topics: &[&str]) -> WsClient {
    let mut c = WsClient::connect(admin, "/admin/subscribe");
    c.send_text(&json!({ "cmd": "subscribe", "req_id": 1, "topics": topics }).to_string());
    let r = c.recv_json();
    assert_eq!(
        (r["cmd"].as_str(), r["code"].as_u64()),
        (Some("subscribe"), Some(200)),
        "{r}"
    );
    c
}

/// The next event (notices and replies skipped).
fn next_event(c: &mut WsClient) -> Value {
    loop {
        let v = c.recv_json();
        if v.get("topic").is_some() && v["topic"] != "notice" {
            return v;
        }
    }
}

fn send(c: &mut WsClient, req: u64, to: u64, text: &str) -> u64 {
    let r = ws_request(
        c,
        json!({"cmd":"send","req_id":req,"chat_type":0,"to_id":to,"msg_type":0,"msg":text,"client_msg_id":format!("m{req}")}),
    );
    assert_eq!(r["code"], 200, "{r}");
    r["data"]["msg_id"].as_u64().unwrap()
}

/// Proves nothing was queued for `c` before now: the ping's reply is the next frame.
fn assert_nothing_before_ping(c: &mut WsClient) {
    c.send_text(r#"{"cmd":"ping","req_id":"p"}"#);
    let v = c.recv_json();
    assert_eq!(
        v["cmd"], "ping",
        "an event arrived that the filter excludes: {v}"
    );
}

#[test]
fn topics_reach_the_subscribers_whose_filters_match() {
    let s = server("");
    let (a, ta) = api_user(s.addr, API_KEY, "a");
    let (b, tb) = api_user(s.addr, API_KEY, "b");
    let (c, tc) = api_user(s.addr, API_KEY, "c");
    let (d, _) = api_user(s.addr, API_KEY, "d");

    let mut friend_of_a = subscribe(s.admin, &[&format!("message;uid={a};chat_type=0")]);
    let mut group_of_a = subscribe(s.admin, &[&format!("message;uid={a};chat_type=1")]);
    let mut about_c = subscribe(s.admin, &[&format!("all;uid={c}")]);
    let mut conns = subscribe(s.admin, &["connection"]);

    let mut ca = ws_login(s.addr, &ta);
    let opened = next_event(&mut conns);
    assert_eq!(
        (opened["event"].as_str(), opened["endpoint"].as_str()),
        (Some("open"), Some("chat")),
        "{opened}"
    );
    let authed = next_event(&mut conns);
    assert_eq!(
        (authed["event"].as_str(), authed["uid"].as_u64()),
        (Some("auth"), Some(a)),
        "{authed}"
    );

    // a writes to b: the friend-chat filter on a sees it, with ids, sides, type and size but no
    // body (message_bodies is off by default).
    let m1 = send(&mut ca, 1, b, "hello b");
    let e = next_event(&mut friend_of_a);
    assert_eq!(e["topic"], "message");
    assert_eq!(e["msg_id"].as_u64(), Some(m1), "{e}");
    assert_eq!(
        (e["from_id"].as_u64(), e["to_id"].as_u64()),
        (Some(a), Some(b))
    );
    assert_eq!(
        (e["chat_type"].as_u64(), e["msg_type"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(e["size"].as_u64().unwrap() >= "hello b".len() as u64, "{e}");
    assert!(
        e["seq"].as_u64().is_some() && e["conv_id"].is_string(),
        "{e}"
    );
    assert!(e.get("body").is_none(), "no bodies unless configured: {e}");
    assert!(e["time"].as_i64().unwrap() > 0);
    // ... and the other filters do not.
    assert_nothing_before_ping(&mut group_of_a);

    // c writes to d: only the subscriber about c sees it; its first message event is this one.
    let mut cc = ws_login(s.addr, &tc);
    let m2 = send(&mut cc, 2, d, "hello d");
    let mut e = next_event(&mut about_c);
    while e["topic"] != "message" {
        // connection events about c come first (open has no uid; auth has).
        assert_eq!(e["uid"].as_u64(), Some(c), "{e}");
        e = next_event(&mut about_c);
    }
    assert_eq!(e["msg_id"].as_u64(), Some(m2), "{e}");
    assert_nothing_before_ping(&mut friend_of_a);

    // A closed chat connection is reported with its user and close code.
    let mut cb = ws_login(s.addr, &tb);
    cb.send_close(1000, "bye");
    let mut e = next_event(&mut conns);
    while !(e["event"] == "close" && e["uid"].as_u64() == Some(b)) {
        e = next_event(&mut conns);
    }
    assert_eq!(e["code"].as_u64(), Some(1000), "{e}");

    // Logins: a bad sign and a good one.
    let mut logins = subscribe(s.admin, &["login"]);
    assert_eq!(
        signed_do_login(s.addr, "wrong key", "newcomer", &[]).status,
        401
    );
    let e = next_event(&mut logins);
    assert_eq!(
        (e["method"].as_str(), e["ok"].as_bool()),
        (Some("dologin"), Some(false)),
        "{e}"
    );
    assert_eq!(e["code"].as_u64(), Some(401));
    let r = signed_do_login(s.addr, SIGN_KEY, "newcomer", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let e = next_event(&mut logins);
    assert_eq!(
        (e["ok"].as_bool(), e["uid"].as_u64()),
        (Some(true), r.json()["data"]["uid"].as_u64()),
        "{e}"
    );

    // A spec that does not parse is refused with the reason; the connection stays usable.
    conns.send_text(r#"{"cmd":"subscribe","req_id":2,"topics":["mesage"]}"#);
    let r = conns.recv_json();
    assert_eq!(r["code"], 400, "{r}");
    assert!(r["msg"].as_str().unwrap().contains("unknown topic"), "{r}");
}

#[test]
fn a_uid_filter_never_matches_a_group_with_the_same_number() {
    let s = server("");
    // An outsider first, so the first group's id is an existing user's uid (both count from 1).
    let (outsider, _) = api_user(s.addr, API_KEY, "outsider");
    let (a, ta) = api_user(s.addr, API_KEY, "a");
    let (b, _) = api_user(s.addr, API_KEY, "b");
    let mut ca = ws_login(s.addr, &ta);
    let r = ws_request(
        &mut ca,
        json!({"cmd":"group_create","req_id":1,"name":"team","members":[b]}),
    );
    assert_eq!(r["code"], 200, "{r}");
    let g = r["data"]["group"]["group_id"].as_u64().unwrap();
    assert_eq!(g, outsider, "the case needs a group numbered like a user");

    let mut about_outsider = subscribe(s.admin, &[&format!("message;uid={outsider}")]);
    let mut about_sender = subscribe(s.admin, &[&format!("message;uid={a}")]);
    let mut about_group = subscribe(s.admin, &[&format!("message;group_id={g}")]);
    let r = ws_request(
        &mut ca,
        json!({"cmd":"send","req_id":2,"chat_type":1,"to_id":g,"msg_type":0,"msg":"hi team","client_msg_id":"g1"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    let m = r["data"]["msg_id"].as_u64().unwrap();

    // The event was queued before the ack: the outsider's ping reply would come after it.
    assert_nothing_before_ping(&mut about_outsider);
    for sub in [&mut about_sender, &mut about_group] {
        let e = next_event(sub);
        assert_eq!(e["msg_id"].as_u64(), Some(m), "{e}");
        assert_eq!(
            (
                e["from_id"].as_u64(),
                e["group_id"].as_u64(),
                e.get("to_id")
            ),
            (Some(a), Some(g), None),
            "a group message names its group as group_id: {e}"
        );
    }
}

#[test]
fn message_bodies_only_when_configured() {
    let s = server("[admin]\nmessage_bodies = true\n");
    let (a, ta) = api_user(s.addr, API_KEY, "a");
    let (b, _) = api_user(s.addr, API_KEY, "b");
    let mut sub = subscribe(s.admin, &["message"]);
    let mut ca = ws_login(s.addr, &ta);
    send(&mut ca, 1, b, "secret words");
    let e = next_event(&mut sub);
    assert_eq!(e["from_id"].as_u64(), Some(a));
    assert!(e["body"].as_str().unwrap().contains("secret words"), "{e}");
}

#[test]
fn server_info_arrives_periodically() {
    let s = server("[admin]\nserver_info_every_s = 1\n");
    let (_, ta) = api_user(s.addr, API_KEY, "a");
    let _ca = ws_login(s.addr, &ta);
    let mut sub = subscribe(s.admin, &["serverInfo"]);
    let first = next_event(&mut sub);
    let second = next_event(&mut sub);
    for e in [&first, &second] {
        assert_eq!(e["topic"], "serverInfo");
        for field in [
            "connections",
            "users_online",
            "msgs_in_per_s",
            "msgs_out_per_s",
            "persister_queue",
            "persister_lag_ms",
            "worker_queue",
            "rss_bytes",
            "uptime_s",
        ] {
            assert!(e[field].is_number(), "{field} in {e}");
        }
        assert_eq!(e["users_online"].as_u64(), Some(1), "{e}");
        assert!(e["rss_bytes"].as_u64().unwrap() > 0);
    }
    assert!(second["time"].as_i64() > first["time"].as_i64());
    // /status says the same things over plain HTTP.
    let st = http_get(s.admin, "/status");
    assert_eq!(st.status, 200);
    assert_eq!(st.json()["users_online"].as_u64(), Some(1));
    // Without a bus this node runs the desk.
    let st = st.json();
    assert_eq!(st["cluster"]["desk_node"], st["node"], "{st}");
}

/// A client socket with a tiny receive buffer, so the server's queue fills at once.
fn tiny_window_connect(addr: SocketAddr) -> std::net::TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected")
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 2048;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        std::net::TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn a_slow_subscriber_is_dropped_and_the_chat_does_not_notice() {
    let s = server(
        "[admin]\nmessage_bodies = true\nsubscriber_buffer_bytes = 4096\n[chat]\nmax_msgs_per_sec = 100000\nmax_pending_per_conn = 1000\n",
    );
    let (a, ta) = api_user(s.addr, API_KEY, "a");
    let (b, tb) = api_user(s.addr, API_KEY, "b");

    // The slow one subscribes to everything and then never reads.
    let stream = tiny_window_connect(s.admin);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = Vec::new();
    let mut slow_stream = stream.try_clone().unwrap();
    use std::io::Write;
    slow_stream
        .write_all(
            b"GET /admin/subscribe HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let response = read_response(&mut slow_stream, &mut buf).unwrap();
    assert_eq!(response.status, 101);
    let mut slow = WsClient::from_parts(stream, buf, response);
    slow.send_text(r#"{"cmd":"subscribe","req_id":1,"topics":["all"]}"#);
    assert_eq!(slow.recv_json()["code"], 200);

    // A well-behaved subscriber hears about the drop on `error`.
    let mut watcher = subscribe(s.admin, &["error"]);

    let mut ca = ws_login(s.addr, &ta);
    let mut cb = ws_login(s.addr, &tb);
    let text = "x".repeat(2000);
    let total = 300;
    for i in 0..total {
        ca.send_text(
            &json!({"cmd":"send","req_id":i,"chat_type":0,"to_id":b,"msg_type":0,"msg":text,"client_msg_id":format!("s{i}")})
                .to_string(),
        );
    }
    // Every message is acked and delivered, in order.
    let mut acked = 0;
    while acked < total {
        let v = ca.recv_json();
        if v["cmd"] == "send" {
            assert_eq!(v["code"], 200, "{v}");
            acked += 1;
        }
    }
    let mut delivered = 0;
    while delivered < total {
        let v = next_push(&mut cb, "message");
        assert_eq!(v["data"]["from_id"].as_u64(), Some(a));
        delivered += 1;
    }

    let e = next_event(&mut watcher);
    assert_eq!(e["kind"], "subscriber_dropped", "{e}");

    // The slow subscriber finds, after what was already on its way, the notice and a 4005.
    let mut notice = None;
    let code = loop {
        let f = slow.recv().expect("frames up to the close");
        if f.opcode == 8 {
            break f.close_code();
        }
        let v: Value = serde_json::from_str(&f.text()).unwrap();
        if v["topic"] == "notice" {
            notice = Some(v);
        }
    };
    assert_eq!(code, Some(4005));
    let notice = notice.expect("a notice before the close");
    assert_eq!(notice["event"], "dropped");
    assert!(
        notice["reason"].as_str().unwrap().contains("too slow"),
        "{notice}"
    );

    let m = metrics(s.admin);
    assert!(m["wxchat_subscribers_dropped_total"] >= 1.0, "{m:?}");
}

/// Parses Prometheus text format strictly; returns each sample (name plus labels) and value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label k=v");
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "duplicate series: {line}"
        );
    }
    samples
}

fn metrics(admin: SocketAddr) -> HashMap<String, f64> {
    let r = http_get(admin, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    // Every series carries the node's name as its first label; the map is keyed without it.
    let mut nodes = std::collections::HashSet::new();
    let samples = parse_prometheus(&r.text())
        .into_iter()
        .map(|(series, v)| {
            let (name, rest) = series.split_once("{node=\"").expect("a node label");
            let (node, rest) = rest.split_once('"').expect("a quoted node");
            nodes.insert(node.to_string());
            let labels = rest.trim_start_matches(',');
            let key = if labels == "}" {
                name.to_string()
            } else {
                format!("{name}{{{labels}")
            };
            (key, v)
        })
        .collect();
    assert_eq!(nodes.len(), 1, "one node per page: {nodes:?}");
    samples
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_the_chat() {
    let s = server("");
    let (_, ta) = api_user(s.addr, API_KEY, "a");
    let (b, tb) = api_user(s.addr, API_KEY, "b");
    let mut ca = ws_login(s.addr, &ta);
    let mut cb = ws_login(s.addr, &tb);
    let before = metrics(s.admin);
    send(&mut ca, 1, b, "counted");
    next_push(&mut cb, "message");
    let m = metrics(s.admin);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing"));
    // Counters are process-wide (other tests in this binary add to them): compare, don't equal.
    assert!(
        get("wxchat_messages_total{chat_type=\"friend\"}")
            >= before["wxchat_messages_total{chat_type=\"friend\"}"] + 1.0
    );
    assert!(get("wxchat_deliveries_total") >= before["wxchat_deliveries_total"] + 1.0);
    assert!(get("wxchat_message_ack_seconds_count") >= 1.0);
    assert!(get("wxchat_persist_batch_seconds_count") >= 1.0);
    assert!(get("wxchat_websockets{endpoint=\"chat\"}") >= 2.0);
    assert!(get("wxchat_users_online") >= 2.0);
    assert!(get("wxchat_resident_memory_bytes") > 0.0);
    for gauge in [
        "wxchat_persister_queue",
        "wxchat_worker_queue",
        "wxchat_jobs_in_flight",
        "wxchat_store_errors_total",
    ] {
        assert!(m.contains_key(gauge), "{gauge}");
    }
    // Histogram buckets are cumulative and end at _count.
    let mut last = 0.0;
    for bound in ["0.0001", "0.001", "0.01", "0.1", "1", "10", "+Inf"] {
        let v = get(&format!(
            "wxchat_message_ack_seconds_bucket{{le=\"{bound}\"}}"
        ));
        assert!(v >= last, "le={bound}");
        last = v;
    }
    assert_eq!(last, get("wxchat_message_ack_seconds_count"));
}

#[test]
fn admin_endpoints_only_on_the_admin_listener() {
    let token = "0123456789abcdef";
    let s = server(&format!("[admin]\ntoken = \"{token}\"\n"));
    // The client listener knows nothing of them ...
    assert_eq!(http_get(s.addr, "/metrics").status, 404);
    let (_, resp) = WsClient::try_connect(s.addr, "/admin/subscribe", "");
    assert_eq!(resp.status, 404);
    // ... and the admin listener serves nothing else.
    assert_eq!(http_get(s.admin, "/healthz").status, 404);
    assert_eq!(http_get(s.admin, "/api/doLogin").status, 404);
    // A wrong token is refused even from loopback; no token from loopback is fine.
    let r = http_raw(
        s.admin,
        b"GET /status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let (_, resp) = WsClient::try_connect(
        s.admin,
        "/admin/subscribe",
        "Authorization: Bearer nope\r\n",
    );
    assert_eq!(resp.status, 401);
    let r = http_raw(
        s.admin,
        format!("GET /status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(http_get(s.admin, "/status").status, 200);
}

#[test]
fn wechat_callbacks_and_api_calls_are_published_and_counted() {
    use common::fake_wechat::{FakeWechat, APPID, SECRET};
    use common::wx_push::{body, now, Pusher};
    use wxchat::wechat::message::Format;
    let fake = FakeWechat::start();
    let s = server(&format!(
        "[wechat]\ntimeout_ms = 2000\n[[wechat.apps]]\nname = \"mp\"\nkind = \"miniprogram\"\n\
         appid = \"{APPID}\"\nsecret = \"{SECRET}\"\napi_base = \"{}\"\ntoken = \"cbtoken\"\n",
        fake.base()
    ));
    let (_, agent_token) = api_agent(s.addr, API_KEY, "agent");
    let mut agent = ws_login(s.addr, &agent_token);
    let mut callbacks = subscribe(s.admin, &["wechat;kind=push"]);
    let mut api = subscribe(s.admin, &["wechat;api=custom_send"]);
    let mut errors = subscribe(s.admin, &["error"]);
    let pusher = Pusher {
        path: "/wechat/mp/callback".into(),
        token: "cbtoken".into(),
        aes_key: String::new(),
        appid: APPID.into(),
    };
    let push = body(
        Format::Xml,
        &[
            ("ToUserName", "gh_test"),
            ("FromUserName", "o-admin"),
            ("CreateTime", &now().to_string()),
            ("MsgType", "text"),
            ("Content", "hi"),
            ("MsgId", "9001"),
        ],
    );
    assert_eq!(pusher.plain(s.addr, &push).status, 200);
    let e = next_event(&mut callbacks);
    assert_eq!(
        (e["app"].as_str(), e["ok"].as_bool(), e["msg_type"].as_str()),
        (Some("mp"), Some(true), Some("text")),
        "{e}"
    );
    assert_eq!(e["openid"], "o-admin");

    // A forged push: refused, published on wechat and on error.
    let forged = Pusher {
        path: pusher.path.clone(),
        token: "not-the-token".into(),
        aes_key: String::new(),
        appid: APPID.into(),
    };
    assert_eq!(forged.plain(s.addr, &push).status, 403);
    let e = next_event(&mut callbacks);
    assert_eq!(
        (e["ok"].as_bool(), e["status"].as_u64()),
        (Some(false), Some(403)),
        "{e}"
    );
    assert!(e["msg"].as_str().unwrap().contains("signature"), "{e}");
    let e = next_event(&mut errors);
    assert_eq!(e["status"].as_u64(), Some(403), "{e}");

    // The agent answers: one custom/send call, reported with its errcode and duration.
    let m = next_push(&mut agent, "message")["data"].clone();
    let customer = m["from_id"].as_u64().unwrap();
    let r = ws_request(
        &mut agent,
        json!({"cmd":"send","req_id":1,"chat_type":2,"to_id":customer,"msg_type":0,"msg":"hello"}),
    );
    assert_eq!(r["code"], 200, "{r}");
    let e = next_event(&mut api);
    assert_eq!(
        (
            e["kind"].as_str(),
            e["app"].as_str(),
            e["ok"].as_bool(),
            e["errcode"].as_i64()
        ),
        (Some("api"), Some("mp"), Some(true), Some(0)),
        "{e}"
    );
    assert!(e["ms"].is_u64());
    let m = metrics(s.admin);
    assert!(m["wxchat_wechat_api_calls_total{api=\"custom_send\"}"] >= 1.0);
    assert!(m["wxchat_wechat_callbacks_total{result=\"accepted\"}"] >= 1.0);
    assert!(m["wxchat_wechat_callbacks_total{result=\"refused\"}"] >= 1.0);
}
