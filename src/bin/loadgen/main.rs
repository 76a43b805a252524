//! `loadgen SCENARIO [OPTIONS]`: load that speaks our protocol, bounded in count and time, aimed
//! at loopback only. See `--help` and BENCHMARKS.md.

mod net;
mod stats;

use net::{nanos_since, Ev, Net};
use serde_json::{json, Value};
use stats::Latencies;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wxchat::ws::OpCode;

const USAGE: &str = "\
usage: loadgen SCENARIO [OPTIONS]

Scenarios:
  echo       raw WebSocket echo against any server's echo endpoint
               --path /echo  --mode firehose|pingpong  --inflight 32 (firehose)
  p2p        pairs of users chatting (friend chat, persisted); acked and delivered per second
             and send-to-deliver latency
               --pairs 50  --rate 0 (messages/s in total; 0 = flat out)  --inflight 16
  idle       N authenticated chat connections held; server memory per connection (read from
             the admin listener's /status)
               --admin 127.0.0.1:9502  --hold 2

Common options:
  --target 127.0.0.1:9501   the server (loopback addresses only)
  --connections 100         connections (echo, idle)
  --seconds 10              measured time (after 1 s of warm-up)
  --size 64                 payload bytes (echo) / message text bytes (p2p)
  --api-key KEY             server API key (p2p, idle: users are created through it)
";

struct Opts {
    scenario: String,
    target: SocketAddr,
    connections: usize,
    seconds: u64,
    size: usize,
    path: String,
    mode: String,
    inflight: usize,
    pairs: usize,
    rate: u64,
    api_key: String,
    admin: SocketAddr,
    hold: u64,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or("which scenario?")?;
    if scenario == "-h" || scenario == "--help" {
        print!("{USAGE}");
        std::process::exit(0);
    }
    let mut o = Opts {
        scenario,
        target: "127.0.0.1:9501".parse().unwrap_or_else(|_| unreachable!()),
        connections: 100,
        seconds: 10,
        size: 64,
        path: "/echo".into(),
        mode: "firehose".into(),
        inflight: 32,
        pairs: 50,
        rate: 0,
        api_key: String::new(),
        admin: "127.0.0.1:9502".parse().unwrap_or_else(|_| unreachable!()),
        hold: 2,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--target" => o.target = value.parse().map_err(|_| "--target: host:port")?,
            "--admin" => o.admin = value.parse().map_err(|_| "--admin: host:port")?,
            "--connections" => o.connections = num(&value)? as usize,
            "--seconds" => o.seconds = num(&value)?,
            "--size" => o.size = num(&value)? as usize,
            "--path" => o.path = value,
            "--mode" => o.mode = value,
            "--inflight" => o.inflight = (num(&value)? as usize).max(1),
            "--pairs" => o.pairs = num(&value)? as usize,
            "--rate" => o.rate = num(&value)?,
            "--api-key" => o.api_key = value,
            "--hold" => o.hold = num(&value)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !o.target.ip().is_loopback() || !o.admin.ip().is_loopback() {
        return Err("loadgen aims at loopback only".into());
    }
    if o.seconds == 0 || o.seconds > 600 || o.connections == 0 || o.connections > 200_000 {
        return Err("bounds: 1..=600 seconds, 1..=200000 connections".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match o.scenario.as_str() {
        "echo" => echo(&o),
        "p2p" => p2p(&o),
        "idle" => idle(&o),
        other => Err(format!("unknown scenario {other:?}")),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

/// Connects `n` WebSockets to `path_of(i)` and waits until all are open.
fn open_all(
    net: &mut Net,
    o: &Opts,
    n: usize,
    path_of: &dyn Fn(usize) -> String,
) -> Result<(), String> {
    for i in 0..n {
        net.connect(o.target, &path_of(i))
            .map_err(|e| format!("connect: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while net.open < n {
        net.step(Duration::from_millis(50), &mut |_, _, _| {})?;
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} connections opened in 60 s",
                net.open
            ));
        }
    }
    Ok(())
}

fn echo(o: &Opts) -> Result<String, String> {
    let pingpong = match o.mode.as_str() {
        "firehose" => false,
        "pingpong" => true,
        m => return Err(format!("--mode {m}: firehose or pingpong")),
    };
    let inflight = if pingpong { 1 } else { o.inflight };
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    open_all(&mut net, o, o.connections, &|_| o.path.clone())?;
    let epoch = Instant::now();
    let mut payload = vec![b'x'; o.size.max(8)];
    for c in 0..o.connections {
        for _ in 0..inflight {
            payload[..8].copy_from_slice(&nanos_since(epoch).to_be_bytes());
            net.out.send(c, OpCode::Binary, &payload);
        }
    }
    let warm_until = epoch + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(o.seconds);
    let mut lat = Latencies::new();
    let mut received = 0u64;
    while Instant::now() < end {
        let now_ns = nanos_since(epoch);
        let measuring = Instant::now() >= warm_until;
        net.step(Duration::from_millis(10), &mut |out, c, ev| {
            if let Ev::Binary(b) = ev {
                if b.len() < 8 {
                    return;
                }
                if measuring {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&b[..8]);
                    lat.record(now_ns.saturating_sub(u64::from_be_bytes(t)));
                    received += 1;
                }
                payload[..8].copy_from_slice(&now_ns.to_be_bytes());
                out.send(c, OpCode::Binary, &payload);
            }
        })?;
    }
    Ok(format!(
        "echo {}: {} connections, {} B, {} in flight each: {:.0} msg/s; latency {}",
        o.mode,
        o.connections,
        o.size.max(8),
        inflight,
        received as f64 / o.seconds as f64,
        lat.summary()
    ))
}

/// `POST /api/server/<action>`, one connection per call.
fn server_api(o: &Opts, action: &str, body: &Value) -> Result<Value, String> {
    let mut s = TcpStream::connect(o.target).map_err(|e| format!("server API: {e}"))?;
    let body = body.to_string();
    let req = format!(
        "POST /api/server/{action} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        o.api_key,
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let json = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value =
        serde_json::from_str(json).map_err(|_| format!("server API {action}: {resp}"))?;
    if v["code"] != 200 {
        return Err(format!("server API {action}: {v}"));
    }
    Ok(v["data"].clone())
}

/// A user made by the server API: (index, uid, token).
type Created = (usize, u64, String);

/// Creates `n` users (4 threads); returns (uid, token) in order.
fn create_users(o: &Opts, prefix: &str, n: usize) -> Result<Vec<(u64, String)>, String> {
    if o.api_key.is_empty() {
        return Err("--api-key is needed to create users".into());
    }
    let threads = 4.min(n.max(1));
    let chunks: Vec<Vec<usize>> = (0..threads)
        .map(|t| (t..n).step_by(threads).collect())
        .collect();
    let results: Vec<Result<Vec<Created>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|idx| {
                s.spawn(move || {
                    idx.into_iter()
                        .map(|i| {
                            let d = server_api(
                                o,
                                "user",
                                &json!({ "app_uid": format!("{prefix}{i}") }),
                            )?;
                            Ok((
                                i,
                                d["uid"].as_u64().unwrap_or(0),
                                d["token"].as_str().unwrap_or("").to_string(),
                            ))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let mut users = vec![(0, String::new()); n];
    for r in results {
        for (i, uid, token) in r? {
            users[i] = (uid, token);
        }
    }
    Ok(users)
}

/// Opens authenticated chat connections (`?token=`) and waits for every `auth` reply (which may
/// arrive in the same read as the upgrade's 101).
fn login_all(net: &mut Net, o: &Opts, users: &[(u64, String)]) -> Result<(), String> {
    for (_, token) in users {
        net.connect(o.target, &format!("/ws?token={token}"))
            .map_err(|e| format!("connect: {e}"))?;
    }
    let mut authed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = None;
    while authed < users.len() {
        net.step(Duration::from_millis(50), &mut |_, _, ev| match ev {
            Ev::Text(t) if t.starts_with("{\"cmd\":\"auth\"") => {
                if t.contains("\"code\":200") {
                    authed += 1;
                } else {
                    refused.get_or_insert_with(|| t.to_string());
                }
            }
            _ => {}
        })?;
        if let Some(r) = refused.take() {
            return Err(format!("authentication failed: {r}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {authed} of {} authenticated in 60 s",
                users.len()
            ));
        }
    }
    Ok(())
}

/// The number after `"<key>":` in a JSON text (cheap: no full parse per message).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = text[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

fn p2p(o: &Opts) -> Result<String, String> {
    let users = create_users(o, "p2p-", o.pairs * 2)?;
    for p in 0..o.pairs {
        server_api(
            o,
            "friend_add",
            &json!({ "uid": users[2 * p].0, "friend_id": users[2 * p + 1].0 }),
        )?;
    }
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    login_all(&mut net, o, &users)?;
    let epoch = Instant::now();
    let pad = "x".repeat(o.size.saturating_sub(20));
    let warm_until = epoch + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(o.seconds);
    let senders: Vec<usize> = (0..o.pairs).map(|p| 2 * p).collect();
    let mut in_flight = vec![0usize; users.len()];
    let mut next_req = vec![0u64; users.len()];
    let mut lat = Latencies::new();
    let (mut acked, mut delivered, mut refused) = (0u64, 0u64, 0u64);
    let mut budget = 0f64;
    let mut last = Instant::now();
    let send = |out: &mut net::Out, c: usize, req: &mut u64, to: u64, now_ns: u64| {
        *req += 1;
        out.text(
            c,
            &format!(
                "{{\"cmd\":\"send\",\"req_id\":{req},\"chat_type\":0,\"to_id\":{to},\"msg_type\":0,\"msg\":\"t{now_ns} {pad}\",\"client_msg_id\":\"{c}-{req}\"}}"
            ),
        );
    };
    while Instant::now() < end {
        let now = Instant::now();
        let now_ns = nanos_since(epoch);
        let measuring = now >= warm_until;
        // Top up: flat out keeps `inflight` per sender; a rate spends its budget round-robin.
        if o.rate == 0 {
            for &c in &senders {
                while in_flight[c] < o.inflight {
                    send(&mut net.out, c, &mut next_req[c], users[c + 1].0, now_ns);
                    in_flight[c] += 1;
                }
            }
        } else {
            budget += o.rate as f64 * now.duration_since(last).as_secs_f64();
            let mut i = 0;
            while budget >= 1.0 && i < senders.len() * o.inflight {
                let c = senders[i % senders.len()];
                i += 1;
                if in_flight[c] < o.inflight {
                    send(&mut net.out, c, &mut next_req[c], users[c + 1].0, now_ns);
                    in_flight[c] += 1;
                    budget -= 1.0;
                }
            }
            budget = budget.min(o.rate as f64);
        }
        last = now;
        net.step(Duration::from_millis(1), &mut |_, c, ev| match ev {
            Ev::Text(t) if t.starts_with("{\"cmd\":\"send\"") => {
                in_flight[c] = in_flight[c].saturating_sub(1);
                if t.contains("\"code\":200") {
                    if measuring {
                        acked += 1;
                    }
                } else {
                    refused += 1;
                }
            }
            Ev::Text(t) if t.starts_with("{\"cmd\":\"message\"") => {
                if let Some(sent) = number_after(t, "\"msg\":\"t") {
                    if measuring {
                        delivered += 1;
                        lat.record(nanos_since(epoch).saturating_sub(sent));
                    }
                }
            }
            _ => {}
        })?;
    }
    let secs = o.seconds as f64;
    Ok(format!(
        "p2p: {} pairs, {} B text, rate {}: {:.0} acked msg/s, {:.0} delivered msg/s, {} refused; send-to-deliver {}",
        o.pairs,
        o.size,
        if o.rate == 0 { "flat out".to_string() } else { format!("{}/s", o.rate) },
        acked as f64 / secs,
        delivered as f64 / secs,
        refused,
        lat.summary()
    ))
}

/// The server's resident memory from the admin listener.
fn server_rss(o: &Opts) -> Result<u64, String> {
    let (status, body) =
        wxchat::admin::client::get(o.admin, "/status", None, Duration::from_secs(5))
            .map_err(|e| format!("admin /status: {e}"))?;
    if status != 200 {
        return Err(format!("admin /status answered {status}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    v["rss_bytes"].as_u64().ok_or_else(|| "no rss_bytes".into())
}

fn idle(o: &Opts) -> Result<String, String> {
    let users = create_users(o, "idle-", o.connections)?;
    let before = server_rss(o)?;
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    let started = Instant::now();
    login_all(&mut net, o, &users)?;
    let took = started.elapsed();
    // Let the server settle (buffers released after the handshake), then measure.
    let hold_until = Instant::now() + Duration::from_secs(o.hold);
    while Instant::now() < hold_until {
        net.step(Duration::from_millis(100), &mut |_, _, _| {})?;
    }
    let after = server_rss(o)?;
    let per = after.saturating_sub(before) as f64 / o.connections as f64;
    Ok(format!(
        "idle: {} authenticated chat connections opened in {:.1} s; server RSS {:.1} MiB -> {:.1} MiB: {:.2} KiB per connection",
        o.connections,
        took.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per / 1024.0
    ))
}
