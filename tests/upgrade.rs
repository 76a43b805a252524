//! `server upgrade` under load: 1,000 connected clients keep sending while the running server
//! hands its listening sockets to a new process and drains. Every client is closed with 1012
//! within the drain period and reconnects at once (to the new process), every message is
//! acknowledged, none is lost, none is stored twice, and every conversation's seqs stay
//! contiguous across the two processes writing one SQLite file.

mod common;
use common::chat_client::server_api;
use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 1000;
/// Messages each client sends.
const PER_CLIENT: u64 = 10;
/// Between one client's messages: 1,000 clients then offer ~3,300 messages a second.
const PACE: Duration = Duration::from_millis(300);
const DRAIN_S: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(90);

/// The process may have 1,024 descriptors; a thousand sockets need more.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// client_msg_id -> (msg_id, duplicate)
    acks: HashMap<String, (u64, bool)>,
    /// Closes with 1012 (the drain).
    restarts: usize,
    /// From a 1012 close to the next successful authentication.
    reconnects: Vec<Duration>,
    /// When the 1012 came.
    closed_at: Vec<Instant>,
}

/// Connects and authenticates, retrying until the deadline (the moment between two servers
/// is the test's subject, so a refused attempt is retried, and counted in the reconnect time).
fn connect(addr: SocketAddr, token: &str, until: Instant) -> WsClient {
    loop {
        assert!(Instant::now() < until, "could not reconnect");
        if let Ok(stream) = std::net::TcpStream::connect(addr) {
            drop(stream);
            let (c, resp) = WsClient::try_connect(addr, &format!("/ws?token={token}"), "");
            if let Some(mut c) = c {
                if resp.status == 101 {
                    if let Ok(f) = c.recv() {
                        if f.opcode == OP_TEXT && f.text().contains("\"code\":200") {
                            return c;
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

enum Outcome {
    Ack(u64, bool),
    /// The connection closed (with this code, when a close frame came) before the ack.
    Closed(Option<u16>),
}

/// Waits for the reply to `req_id` (pushes skipped) or the end of the connection.
fn await_ack(c: &mut WsClient, req_id: u64) -> Outcome {
    loop {
        let f = match c.recv() {
            Ok(f) => f,
            Err(_) => return Outcome::Closed(None),
        };
        match f.opcode {
            OP_CLOSE => return Outcome::Closed(f.close_code()),
            OP_TEXT => {
                let v: Value = serde_json::from_str(&f.text()).unwrap();
                if v["cmd"] == "send" && v["req_id"] == req_id {
                    assert_eq!(v["code"], 200, "{v}");
                    let d = &v["data"];
                    return Outcome::Ack(d["msg_id"].as_u64().unwrap(), d["duplicate"] == true);
                }
            }
            _ => {}
        }
    }
}

fn client(
    addr: SocketAddr,
    token: String,
    uid: u64,
    peer: u64,
    acked: Arc<AtomicUsize>,
    old_gone: Arc<AtomicBool>,
) -> Seen {
    let until = Instant::now() + DEADLINE;
    let mut seen = Seen::default();
    let mut c = connect(addr, &token, until);
    let mut req = 0u64;
    let mut k = 0u64;
    let restart = |seen: &mut Seen, code: Option<u16>, c: &mut WsClient| {
        let at = Instant::now();
        if code == Some(1012) {
            seen.restarts += 1;
            seen.closed_at.push(at);
        }
        *c = connect(addr, &token, until);
        if code == Some(1012) {
            seen.reconnects.push(at.elapsed());
        }
    };
    while k < PER_CLIENT {
        req += 1;
        let cmid = format!("c{uid}-{k}");
        c.send_text(
            &json!({"cmd":"send","req_id":req,"chat_type":0,"to_id":peer,"msg_type":0,
                    "msg":format!("m{k}"),"client_msg_id":cmid})
            .to_string(),
        );
        match await_ack(&mut c, req) {
            Outcome::Ack(msg_id, dup) => {
                seen.acks.insert(cmid, (msg_id, dup));
                acked.fetch_add(1, Ordering::Relaxed);
                k += 1;
                std::thread::sleep(PACE);
            }
            // Not acknowledged: resent with the same client_msg_id after reconnecting.
            Outcome::Closed(code) => restart(&mut seen, code, &mut c),
        }
    }
    // Done sending: stay until this connection is moved too, or the old server is gone.
    c.set_timeout(Duration::from_millis(100));
    while !old_gone.load(Ordering::SeqCst) && Instant::now() < until {
        match c.recv() {
            Ok(f) if f.opcode == OP_CLOSE => {
                restart(&mut seen, f.close_code(), &mut c);
                c.set_timeout(Duration::from_millis(100));
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                restart(&mut seen, None, &mut c);
                c.set_timeout(Duration::from_millis(100));
            }
        }
    }
    seen
}

#[test]
fn an_upgrade_under_load_loses_nothing_and_stores_nothing_twice() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\ndrain_s = {DRAIN_S}\n[api]\nkey = \"k\"\n[chat]\nmax_msgs_per_sec = 0\n[ws]\nping_interval_s = 0\n"
        ),
    );
    let (code, _, err) = run_cli(&config, &["daemon"]);
    assert_eq!(code, 0, "{err}");
    let (old_pid, addr) = read_pid_file(&data.join("server.pid")).unwrap();

    let users: Vec<(u64, String)> = (0..CLIENTS)
        .map(|i| common::chat_client::api_user(addr, "k", &format!("u{i}")))
        .collect();
    for pair in users.chunks(2) {
        let r = server_api(
            addr,
            "k",
            "friend_add",
            &json!({"uid": pair[0].0, "friend_id": pair[1].0}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    let acked = Arc::new(AtomicUsize::new(0));
    let old_gone = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, (uid, token))| {
            let peer = users[i ^ 1].0;
            let (token, uid) = (token.clone(), *uid);
            let (acked, old_gone) = (acked.clone(), old_gone.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || client(addr, token, uid, peer, acked, old_gone))
                .unwrap()
        })
        .collect();

    // Everyone is connected and sending: upgrade.
    let started = Instant::now();
    while acked.load(Ordering::Relaxed) < CLIENTS * 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "the clients did not get going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let upgrade_at = Instant::now();
    let (code, out, err) = run_cli(&config, &["upgrade"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("upgraded"), "{out}");
    let deadline = Instant::now() + DEADLINE;
    while pidfile_alive(old_pid) {
        assert!(
            Instant::now() < deadline,
            "the old server did not finish draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained_in = upgrade_at.elapsed();
    old_gone.store(true, Ordering::SeqCst);
    let seen: Vec<Seen> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    // The old process drained within its period (plus the shutdown's own work).
    assert!(
        drained_in < Duration::from_secs(DRAIN_S + 5),
        "{drained_in:?}"
    );
    let (new_pid, new_addr) = read_pid_file(&data.join("server.pid")).unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(new_addr, addr, "the same address throughout");

    // Every client was moved once, within the drain period, and was back at once.
    let mut slowest = Duration::ZERO;
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.restarts, 1, "client {i} saw {} restarts", s.restarts);
        for at in &s.closed_at {
            assert!(
                at.duration_since(upgrade_at) < Duration::from_secs(DRAIN_S + 2),
                "client {i} closed late"
            );
        }
        slowest = slowest.max(s.reconnects.iter().copied().max().unwrap_or_default());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "slowest reconnect {slowest:?}"
    );

    // Nothing acknowledged is missing, nothing is stored twice, seqs are contiguous.
    let mut ids = HashSet::new();
    for (i, pair) in users.chunks(2).enumerate() {
        let (a, b) = (pair[0].0, pair[1].0);
        let conv = format!("p_{}_{}", a.min(b), a.max(b));
        let mut c = WsClient::connect(new_addr, &format!("/ws?token={}", pair[0].1));
        assert_eq!(c.recv_json()["code"], 200);
        let r = common::chat_client::ws_request(
            &mut c,
            json!({"cmd":"sync","req_id":1,"conv_id":conv,"after_seq":0,"limit":200}),
        );
        let messages = r["data"]["messages"].as_array().unwrap().clone();
        assert_eq!(messages.len() as u64, 2 * PER_CLIENT, "{conv}");
        for (n, m) in messages.iter().enumerate() {
            assert_eq!(m["seq"].as_u64(), Some(n as u64 + 1), "{conv}");
            assert!(ids.insert(m["msg_id"].as_u64().unwrap()), "msg_id twice");
        }
        for (side, s) in [(0, &seen[2 * i]), (1, &seen[2 * i + 1])] {
            let from = pair[side].0;
            let stored: HashSet<u64> = messages
                .iter()
                .filter(|m| m["from_id"] == from)
                .map(|m| m["msg_id"].as_u64().unwrap())
                .collect();
            assert_eq!(stored.len() as u64, PER_CLIENT, "{conv} from {from}");
            for (msg_id, _) in s.acks.values() {
                assert!(
                    stored.contains(msg_id),
                    "{conv}: acked {msg_id} is not stored"
                );
            }
        }
    }
    let (code, _, err) = run_cli(&config, &["stop"]);
    assert_eq!(code, 0, "{err}");
}

fn pidfile_alive(pid: u32) -> bool {
    wxchat::pidfile::process_alive(pid)
}
