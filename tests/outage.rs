//! Losing MySQL or Redis under a running server: the requests that need the lost service get the
//! documented 503, everything else keeps working, and when the service is back the server
//! recovers by itself with no acknowledged message lost.
//!
//! The machine's own services are never touched: Redis is a private `redis-server` this test
//! starts and stops, and MySQL is reached through a TCP proxy the test can cut.

mod common;
use common::chat_client::ws_request as request;
use common::private_redis::PrivateRedis;
use common::services::TestDb;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const API_KEY: &str = "k";

fn api(addr: SocketAddr, action: &str, body: Value) -> HttpResponse {
    common::chat_client::server_api(addr, API_KEY, action, &body)
}

fn user(addr: SocketAddr, app_uid: &str) -> (u64, String) {
    common::chat_client::api_user(addr, API_KEY, app_uid)
}

fn send(c: &mut WsClient, req_id: u64, to: u64, cmid: &str) -> Value {
    request(
        c,
        json!({"cmd":"send","req_id":req_id,"chat_type":0,"to_id":to,"msg_type":0,"msg":cmid,"client_msg_id":cmid}),
    )
}

/// Opens a chat WebSocket and returns the auth reply.
fn try_auth(addr: SocketAddr, token: &str) -> (WsClient, Value) {
    let mut c = WsClient::connect(addr, &format!("/ws?token={token}"));
    let v = c.recv_json();
    (c, v)
}

/// Every message of the conversation, by seq, checking there is no gap.
fn all_messages(c: &mut WsClient, conv: &str) -> Vec<String> {
    let r = request(
        c,
        json!({"cmd":"sync","req_id":9_999,"conv_id":conv,"after_seq":0,"limit":200}),
    );
    assert_eq!(r["code"], 200, "{r}");
    let msgs = r["data"]["messages"].as_array().unwrap();
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1, "gap in {conv}");
    }
    msgs.iter()
        .map(|m| m["msg"].as_str().unwrap().to_string())
        .collect()
}

// ---- a TCP proxy to MySQL that can be cut ----

struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, live2) = (up.clone(), live.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut l = live2.lock().unwrap();
                    l.push(client.try_clone().unwrap());
                    l.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { addr, up, live }
    }

    /// MySQL "goes away": every open connection is reset and new ones are closed at once.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

// ---- the tests ----

#[test]
fn redis_lost_and_back() {
    let db = TestDb::create();
    let mut redis = PrivateRedis::start_persistent();
    let config = merge_toml(
        &db.store_toml(),
        &format!(
            "[api]\nkey = \"{API_KEY}\"\n[chat]\nallow_strangers = true\nmax_msgs_per_sec = 0\n\
             [redis]\nurl = \"{}\"\nprefix = \"t:\"\ntimeout_ms = 500\n",
            redis.url()
        ),
    );
    let s = TestServer::start(&config);
    let (a, ta) = user(s.addr, "a");
    let (b, tb) = user(s.addr, "b");
    let (mut ca, v) = try_auth(s.addr, &ta);
    assert_eq!(v["code"], 200, "{v}");
    let (mut cb, v) = try_auth(s.addr, &tb);
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(send(&mut ca, 1, b, "before")["code"], 200);

    redis.stop();

    // What needs Redis: token checks (new connections, logins) and presence queries -> 503.
    let (_c, v) = try_auth(s.addr, &ta);
    assert_eq!(v["code"], 503, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("unavailable"), "{v}");
    let r = api(s.addr, "user", json!({ "app_uid": "c" }));
    assert_eq!(r.status, 503, "{}", r.text());
    let r = api(s.addr, "online", json!({ "uids": [a, b] }));
    assert_eq!(r.status, 503, "{}", r.text());
    // What does not: chatting on open connections (MySQL), health.
    let during = send(&mut ca, 2, b, "during");
    assert_eq!(during["code"], 200, "{during}");
    assert_eq!(http_get(s.addr, "/healthz").status, 200);

    redis.resume();

    // Recovery without a restart (the backoff lets a probe through within seconds).
    let mut reauth = None;
    wait_for("token checks to work again", || {
        let (c, v) = try_auth(s.addr, &ta);
        if v["code"] == 200 {
            reauth = Some(c);
            true
        } else {
            false
        }
    });
    let r = api(s.addr, "online", json!({ "uids": [a, b] }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(send(&mut ca, 3, b, "after")["code"], 200);
    let conv = format!("p_{}_{}", a.min(b), a.max(b));
    assert_eq!(
        all_messages(&mut cb, &conv),
        vec!["before", "during", "after"]
    );
    drop(reauth);
}

#[test]
fn mysql_lost_and_back() {
    let db = TestDb::create();
    let target: SocketAddr = {
        let opts = mysql::Opts::from_url(&db.url).unwrap();
        format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port())
            .parse()
            .unwrap()
    };
    let proxy = Proxy::start(target);
    let user_part = {
        let opts = mysql::Opts::from_url(&db.url).unwrap();
        match opts.get_pass() {
            Some(p) => format!("{}:{}", opts.get_user().unwrap_or("root"), p),
            None => opts.get_user().unwrap_or("root").to_string(),
        }
    };
    let url = format!("mysql://{user_part}@{}/{}", proxy.addr, db.name);
    let config = format!(
        "[store]\nbackend = \"mysql\"\nmysql_url = \"{url}\"\nmysql_timeout_s = 2\n\
         [api]\nkey = \"{API_KEY}\"\n[chat]\nallow_strangers = true\nmax_msgs_per_sec = 0\n"
    );
    let s = TestServer::start(&config);
    let (a, ta) = user(s.addr, "a");
    let (b, tb) = user(s.addr, "b");
    let (mut ca, _) = try_auth(s.addr, &ta);
    let (mut cb, v) = try_auth(s.addr, &tb);
    assert_eq!(v["code"], 200, "{v}");
    let mut acked: Vec<String> = Vec::new();
    for i in 0..5 {
        let cmid = format!("before-{i}");
        assert_eq!(send(&mut ca, i, b, &cmid)["code"], 200);
        acked.push(cmid);
    }

    proxy.cut();

    // Sending needs MySQL: 503, never an ack.
    let mut refused = Vec::new();
    for i in 0..3 {
        let cmid = format!("during-{i}");
        let r = send(&mut ca, 100 + i, b, &cmid);
        assert_eq!(r["code"], 503, "{r}");
        assert!(r["msg"].as_str().unwrap().contains("unavailable"), "{r}");
        refused.push(cmid);
    }
    let r = request(
        &mut ca,
        json!({"cmd":"history","req_id":200,"conv_id":format!("p_{}_{}", a.min(b), a.max(b))}),
    );
    assert_eq!(r["code"], 503, "{r}");
    // The reactor keeps serving what needs no database.
    assert_eq!(http_get(s.addr, "/healthz").status, 200);
    let t = request(
        &mut ca,
        json!({"cmd":"typing","req_id":201,"conv_id":format!("p_{}_{}", a.min(b), a.max(b))}),
    );
    assert_eq!(t["code"], 200, "{t}");

    proxy.heal();

    // The client resends what was refused (same client_msg_id); recovery needs no restart.
    let mut req = 300;
    for cmid in &refused {
        wait_for("sending to work again", || {
            req += 1;
            send(&mut ca, req, b, cmid)["code"] == 200
        });
        acked.push(cmid.clone());
    }
    let conv = format!("p_{}_{}", a.min(b), a.max(b));
    let stored = all_messages(&mut cb, &conv);
    assert_eq!(stored, acked, "every acknowledged message, once, in order");
    drop(proxy);
    std::thread::sleep(Duration::from_millis(10));
}
