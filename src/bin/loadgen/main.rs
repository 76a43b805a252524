//! `loadgen SCENARIO [OPTIONS]`: load that speaks our protocol, bounded in count and time, aimed
//! at loopback only. See `--help` and BENCHMARKS.md.

mod cpu;
mod ids;
mod net;
mod pace;
mod stats;

use ids::ClientIds;
use net::{nanos_since, Ev, Net};
use pace::{next_free, Arrivals, Pacer};
use serde_json::{json, Value};
use stats::Latencies;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wxchat::ws::OpCode;

/// Each scenario's name, what it measures and its own options.
const SCENARIOS: &[(&str, &str)] = &[
    (
        "echo",
        "raw WebSocket echo against any server's echo endpoint
    --path /echo  --mode firehose|pingpong  --inflight 32 (firehose)
    --rate N: N messages/s in total, round robin (latency at a given load)
    --connections 100  --size 64 (payload bytes)",
    ),
    (
        "p2p",
        "pairs of users chatting (friend chat, persisted); acked and delivered per second
  and send-to-deliver latency
    --pairs 50  --rate 0 (messages/s in total; 0 = flat out)  --inflight 16
    --friends 1: each pair's sender writes round-robin to this many receivers (its own
      and the next pairs'), so pairs x friends conversations are active over 2 x pairs
      connections (e.g. --pairs 1000 --friends 10: 10,000 conversations)
    --client-ids counter|time|random: each message's client_msg_id: RUN-CONN-REQ (the
      default), the SDK's (milliseconds, then random bits) or 128 random bits (UUID-like)
    --size 64 (message text bytes)  --api-key KEY (users are created through it)",
    ),
    (
        "group",
        "one group of --members online members; --senders of them send --rate messages/s
  in total (0 = flat out); deliveries/s and latency to the last member
    --members 1000  --senders 4  --rate 100  --inflight 16  --api-key KEY",
    ),
    (
        "reconnect",
        "--connections users, each with a friend; the users drop at once, each friend sends
  --missed messages, the users reconnect at once and `sync`; time to full recovery
    --connections 100  --missed 20  --api-key KEY",
    ),
    (
        "idle",
        "N authenticated chat connections held (--mode echo: plain connections to --path);
  server memory per connection, read from the admin listener's /status, or with
  --pid from /proc/PID/status (any server on this machine)
    --connections 100  --admin 127.0.0.1:9502  --pid 0  --hold 2  --api-key KEY",
    ),
];

const COMMON: &str = "\
Common options:
  --target 127.0.0.1:9501   the server (loopback addresses only)
  --seconds 10              measured time (after 1 s of warm-up)
  --deflate on|off          offer permessage-deflate as browsers do, and compress every message
                            sent (echo, p2p, group); off by default
  --nodes ADDR,ADDR,..      a cluster: chat connections spread over these nodes (user i on
                            node i mod n; a p2p pair's two users on different nodes); the
                            server API and the admin listener stay on --target (p2p, group, idle)
  --arrivals even|poisson   with --rate: messages due 1/rate apart, or at exponentially
                            drawn gaps; each leaves at its due time (a timer finer than
                            epoll's millisecond), and how late it left is reported
  --pid PID[,PID..]         the server's pid (a cluster's: one per node): its CPU per message over
                            the measured window is reported, per node and in all (echo, p2p,
                            group; the first pid's memory for idle), with loadgen's own
";

/// `loadgen --help`: every scenario.
fn usage() -> String {
    let mut out = String::from("usage: loadgen SCENARIO [OPTIONS]   (loadgen SCENARIO --help: its options)\n\nScenarios:\n");
    for (name, help) in SCENARIOS {
        out.push_str(&format!(
            "  {name:<10} {}\n",
            help.replace('\n', "\n             ")
        ));
    }
    out.push('\n');
    out.push_str(COMMON);
    out
}

/// `loadgen SCENARIO --help`: that scenario's options and the common ones.
fn scenario_usage(name: &str) -> Option<String> {
    let (_, help) = SCENARIOS.iter().find(|(n, _)| *n == name)?;
    Some(format!(
        "usage: loadgen {name} [OPTIONS]\n\n{name}: {help}\n\n{COMMON}"
    ))
}

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
    /// p2p: receivers per sender (conversations = pairs x friends).
    friends: usize,
    rate: u64,
    api_key: String,
    admin: SocketAddr,
    hold: u64,
    members: usize,
    senders: usize,
    missed: usize,
    rate_given: bool,
    pid: u32,
    /// Every server's pid (`--pid a,b,c`); `pid` is the first.
    pids: Vec<u32>,
    /// Chat connections go to these (`--nodes`; empty: `target`).
    nodes: Vec<SocketAddr>,
    /// Offer permessage-deflate (and compress what is sent, as browsers do).
    deflate: bool,
    /// How a `--rate` is spread over time.
    arrivals: Arrivals,
    /// p2p: the kind of `client_msg_id` sent.
    client_ids: ClientIds,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or("which scenario?")?;
    if scenario == "-h" || scenario == "--help" {
        print!("{}", usage());
        std::process::exit(0);
    }
    let rest: Vec<String> = args.collect();
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        match scenario_usage(&scenario) {
            Some(text) => {
                print!("{text}");
                std::process::exit(0);
            }
            None => return Err(format!("unknown scenario {scenario:?}")),
        }
    }
    let mut args = rest.into_iter();
    let mut o = Opts {
        scenario,
        target: "127.0.0.1:9501".parse().unwrap_or_else(|_| unreachable!()),
        connections: 100,
        seconds: 10,
        size: 64,
        path: "/echo".into(),
        mode: String::new(),
        inflight: 32,
        pairs: 50,
        friends: 1,
        rate: 0,
        api_key: String::new(),
        admin: "127.0.0.1:9502".parse().unwrap_or_else(|_| unreachable!()),
        hold: 2,
        members: 1000,
        senders: 4,
        missed: 20,
        rate_given: false,
        pid: 0,
        pids: Vec::new(),
        nodes: Vec::new(),
        deflate: false,
        arrivals: Arrivals::Even,
        client_ids: ClientIds::Counter,
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
            "--friends" => o.friends = num(&value)? as usize,
            "--rate" => {
                o.rate = num(&value)?;
                o.rate_given = true;
            }
            "--members" => o.members = num(&value)? as usize,
            "--senders" => o.senders = (num(&value)? as usize).max(1),
            "--missed" => o.missed = num(&value)? as usize,
            "--api-key" => o.api_key = value,
            "--hold" => o.hold = num(&value)?,
            "--pid" => {
                o.pids = list(&value, "--pid: a number or a list")?;
                o.pid = o.pids.first().copied().unwrap_or(0);
            }
            "--arrivals" => o.arrivals = Arrivals::parse(&value)?,
            "--client-ids" => o.client_ids = ClientIds::parse(&value)?,
            "--nodes" => o.nodes = list(&value, "--nodes: host:port,..")?,
            "--deflate" => {
                o.deflate = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err("--deflate: on or off".into()),
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !o.target.ip().is_loopback()
        || !o.admin.ip().is_loopback()
        || o.nodes.iter().any(|n| !n.ip().is_loopback())
    {
        return Err("loadgen aims at loopback only".into());
    }
    if o.seconds == 0 || o.seconds > 600 || o.connections == 0 || o.connections > 200_000 {
        return Err("bounds: 1..=600 seconds, 1..=200000 connections".into());
    }
    if o.friends == 0 || o.friends > o.pairs.max(1) {
        return Err("bounds: 1 <= friends <= pairs".into());
    }
    if o.members < 2 || o.members > 100_000 || o.senders > o.members || o.missed > 10_000 {
        return Err("bounds: 2..=100000 members, senders <= members, missed <= 10000".into());
    }
    Ok(o)
}

/// Milliseconds since the Unix epoch (wall clock).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A comma-separated option value, every item parsed (`why` when one is not).
fn list<T: std::str::FromStr>(value: &str, why: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|v| v.trim().parse().map_err(|_| why.to_string()))
        .collect()
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    // Every connection is a descriptor: take all the hard limit allows (often the soft limit is
    // 1,024, below the scenarios' connection counts).
    if let Err(e) = wxchat::net::fd_limit::raise_to(u64::MAX) {
        eprintln!("loadgen: cannot raise the open-file limit: {e}");
    }
    let result = match o.scenario.as_str() {
        "echo" => echo(&o),
        "p2p" => p2p(&o),
        "group" => group(&o),
        "reconnect" => reconnect(&o),
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
        "firehose" | "" => false,
        "pingpong" => true,
        m => return Err(format!("--mode {m}: firehose or pingpong")),
    };
    let paced = o.rate_given && o.rate > 0;
    let inflight = if pingpong { 1 } else { o.inflight };
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    net.deflate = o.deflate;
    open_all(&mut net, o, o.connections, &|_| o.path.clone())?;
    let mut meter = Meter::new(o);
    let epoch = Instant::now();
    let mut payload = vec![b'x'; o.size.max(8)];
    let mut in_flight = vec![0usize; o.connections];
    if !paced {
        for c in 0..o.connections {
            for _ in 0..inflight {
                payload[..8].copy_from_slice(&nanos_since(epoch).to_be_bytes());
                net.out.send(c, OpCode::Binary, &payload);
            }
        }
    }
    let warm_until = epoch + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(o.seconds);
    let mut lat = Latencies::new();
    let mut received = 0u64;
    let mut pacer = Pacer::new(o.rate, o.arrivals, Instant::now());
    let mut next = 0usize;
    while Instant::now() < end {
        let now = Instant::now();
        let now_ns = nanos_since(epoch);
        let measuring = now >= warm_until;
        meter.tick(measuring, &net);
        let mut timeout = Duration::from_millis(10);
        if paced {
            // Round robin, skipping connections with `inflight` unanswered.
            let mut blocked = false;
            while pacer.due(now) {
                let Some(c) = next_free(&mut next, o.connections, |c| in_flight[c] < inflight)
                else {
                    blocked = true;
                    break;
                };
                payload[..8].copy_from_slice(&now_ns.to_be_bytes());
                net.out.send(c, OpCode::Binary, &payload);
                in_flight[c] += 1;
                pacer.sent(now, measuring);
            }
            timeout = pacer.timeout(blocked);
        }
        net.step(timeout, &mut |out, c, ev| {
            if let Ev::Binary(b) = ev {
                if b.len() < 8 {
                    return;
                }
                let now_ns = nanos_since(epoch);
                if measuring {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&b[..8]);
                    lat.record(now_ns.saturating_sub(u64::from_be_bytes(t)));
                    received += 1;
                }
                if paced {
                    in_flight[c] = in_flight[c].saturating_sub(1);
                } else {
                    payload[..8].copy_from_slice(&now_ns.to_be_bytes());
                    out.send(c, OpCode::Binary, &payload);
                }
            }
        })?;
    }
    Ok(format!(
        "echo {}: {} connections, {} B, {}{}: {:.0} msg/s; latency {}{}{}",
        if paced {
            "paced"
        } else if pingpong {
            "pingpong"
        } else {
            "firehose"
        },
        o.connections,
        o.size.max(8),
        if paced {
            format!("{} msg/s offered", o.rate)
        } else {
            format!("{inflight} in flight each")
        },
        if o.deflate {
            ", permessage-deflate offered"
        } else {
            ""
        },
        received as f64 / o.seconds as f64,
        lat.summary(),
        if paced { pacer.note() } else { String::new() },
        meter.report(&net, received)
    ))
}

/// A keep-alive connection to the server API (one per thread: tens of thousands of calls on
/// fresh connections would leave as many ports in TIME_WAIT).
struct Api<'a> {
    o: &'a Opts,
    stream: Option<TcpStream>,
}

impl Api<'_> {
    fn new(o: &Opts) -> Api<'_> {
        Api { o, stream: None }
    }

    /// `POST /api/server/<action>`; the answer's `data`.
    fn call(&mut self, action: &str, body: &Value) -> Result<Value, String> {
        let body = body.to_string();
        let req = format!(
            "POST /api/server/{action} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.o.api_key,
            body.len()
        );
        let stream = match self.stream.as_mut() {
            Some(s) => s,
            None => {
                let s =
                    TcpStream::connect(self.o.target).map_err(|e| format!("server API: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .map_err(|e| e.to_string())?;
                self.stream.insert(s)
            }
        };
        let answer = exchange(stream, req.as_bytes());
        if answer.is_err() {
            self.stream = None;
        }
        let (keep, json) = answer?;
        if !keep {
            self.stream = None;
        }
        let v: Value =
            serde_json::from_slice(&json).map_err(|_| format!("server API {action}: not JSON"))?;
        if v["code"] != 200 {
            return Err(format!("server API {action}: {v}"));
        }
        Ok(v["data"].clone())
    }
}

/// Writes one request and reads one response: (keep-alive?, body).
fn exchange(stream: &mut TcpStream, req: &[u8]) -> Result<(bool, Vec<u8>), String> {
    stream
        .write_all(req)
        .map_err(|e| format!("server API: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("server API: {e}"))?;
        if n == 0 {
            return Err("server API: connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or("server API: no Content-Length")?;
    let keep = !head.contains("connection: close");
    while buf.len() < head_end + length {
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("server API: {e}"))?;
        if n == 0 {
            return Err("server API: connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((keep, buf[head_end..head_end + length].to_vec()))
}

/// Calls the server API once per body (4 threads); the answers' `data`, in order.
fn api_all(o: &Opts, action: &str, bodies: &[Value]) -> Result<Vec<Value>, String> {
    let n = bodies.len();
    let threads = 4.min(n.max(1));
    let results: Vec<Result<Vec<(usize, Value)>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut api = Api::new(o);
                    (t..n)
                        .step_by(threads)
                        .map(|i| Ok((i, api.call(action, &bodies[i])?)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let mut answers = vec![Value::Null; n];
    for r in results {
        for (i, v) in r? {
            answers[i] = v;
        }
    }
    Ok(answers)
}

/// Creates (or finds again) the users `<prefix>0..n`; returns (uid, token) in order.
fn create_users(o: &Opts, prefix: &str, n: usize) -> Result<Vec<(u64, String)>, String> {
    if o.api_key.is_empty() {
        return Err("--api-key is needed to create users".into());
    }
    let bodies: Vec<Value> = (0..n)
        .map(|i| json!({ "app_uid": format!("{prefix}{i}") }))
        .collect();
    Ok(api_all(o, "user", &bodies)?
        .into_iter()
        .map(|d| {
            (
                d["uid"].as_u64().unwrap_or(0),
                d["token"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// Makes each pair of users friends.
fn make_friends(o: &Opts, pairs: &[(u64, u64)]) -> Result<(), String> {
    let bodies: Vec<Value> = pairs
        .iter()
        .map(|(a, b)| json!({ "uid": a, "friend_id": b }))
        .collect();
    api_all(o, "friend_add", &bodies).map(|_| ())
}

/// Opens authenticated chat connections (`?token=`) and waits for every `auth` reply (which may
/// arrive in the same read as the upgrade's 101).
fn login_all(net: &mut Net, o: &Opts, users: &[(u64, String)]) -> Result<(), String> {
    for (i, (_, token)) in users.iter().enumerate() {
        let node = if o.nodes.is_empty() {
            o.target
        } else {
            o.nodes[i % o.nodes.len()]
        };
        net.connect(node, &format!("/ws?token={token}"))
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
    // Sender 2p's friends: the receivers 2(p + j) + 1 (mod pairs), j < friends.
    let friend_of = |p: usize, j: usize| 2 * ((p + j) % o.pairs) + 1;
    let pairs: Vec<(u64, u64)> = (0..o.pairs)
        .flat_map(|p| (0..o.friends).map(move |j| (p, j)))
        .map(|(p, j)| (users[2 * p].0, users[friend_of(p, j)].0))
        .collect();
    make_friends(o, &pairs)?;
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    net.deflate = o.deflate;
    login_all(&mut net, o, &users)?;
    let epoch = Instant::now();
    let texts: Vec<String> = (0..64)
        .map(|i| chat_text(i, o.size.saturating_sub(20)))
        .collect();
    let mut meter = Meter::new(o);
    let warm_until = epoch + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(o.seconds);
    let senders: Vec<usize> = (0..o.pairs).map(|p| 2 * p).collect();
    let mut in_flight = vec![0usize; users.len()];
    let mut next_req = vec![0u64; users.len()];
    // Each sender's next friend (round-robin over its `friends`).
    let mut next_friend = vec![0usize; users.len()];
    let mut lat = Latencies::new();
    let (mut acked, mut delivered, mut refused) = (0u64, 0u64, 0u64);
    let paced = o.rate > 0;
    let mut pacer = Pacer::new(o.rate, o.arrivals, Instant::now());
    let mut next_sender = 0usize;
    // Client message ids unique to this run: users are reused across runs (same app_uid), and
    // a resent id is acknowledged as a duplicate without being stored or delivered again.
    let run = wall_ms();
    let ids = o.client_ids;
    let send = |out: &mut net::Out, c: usize, req: &mut u64, to: u64, now_ns: u64| {
        *req += 1;
        let pad = &texts[(*req as usize + c) % texts.len()];
        let mut frame = format!(
            "{{\"cmd\":\"send\",\"req_id\":{req},\"chat_type\":0,\"to_id\":{to},\"msg_type\":0,\"msg\":\"t{now_ns} {pad}\",\"client_msg_id\":\""
        );
        let now_ms = if ids == ClientIds::Time { wall_ms() } else { 0 };
        ids.write(&mut frame, run, c, *req, now_ms);
        frame.push_str("\"}");
        out.text(c, &frame);
    };
    while Instant::now() < end {
        let now = Instant::now();
        let now_ns = nanos_since(epoch);
        let measuring = now >= warm_until;
        meter.tick(measuring, &net);
        // Top up: flat out keeps `inflight` per sender; a rate spends its budget round-robin.
        if o.rate == 0 {
            for &c in &senders {
                while in_flight[c] < o.inflight {
                    let to = users[friend_of(c / 2, next_friend[c])].0;
                    next_friend[c] = (next_friend[c] + 1) % o.friends;
                    send(&mut net.out, c, &mut next_req[c], to, now_ns);
                    in_flight[c] += 1;
                }
            }
        }
        let mut blocked = false;
        while paced && pacer.due(now) {
            let Some(i) = next_free(&mut next_sender, senders.len(), |i| {
                in_flight[senders[i]] < o.inflight
            }) else {
                blocked = true;
                break;
            };
            let c = senders[i];
            let to = users[friend_of(c / 2, next_friend[c])].0;
            next_friend[c] = (next_friend[c] + 1) % o.friends;
            send(&mut net.out, c, &mut next_req[c], to, now_ns);
            in_flight[c] += 1;
            pacer.sent(now, measuring);
        }
        let timeout = if paced {
            pacer.timeout(blocked)
        } else {
            Duration::from_millis(1)
        };
        net.step(timeout, &mut |_, c, ev| match ev {
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
        "p2p: {} pairs, {} conversations, {} B text, rate {}{}: {:.0} acked msg/s, {:.0} delivered msg/s, {} refused; send-to-deliver {}{}{}",
        o.pairs,
        o.pairs * o.friends,
        o.size,
        if o.rate == 0 { "flat out".to_string() } else { format!("{}/s", o.rate) },
        if o.deflate { ", permessage-deflate offered" } else { "" },
        acked as f64 / secs,
        delivered as f64 / secs,
        refused,
        lat.summary(),
        if paced {
            pacer.note()
        } else {
            String::new()
        },
        meter.report(&net, acked)
    ))
}

/// What the measured window cost: bytes on the wire and CPU, of the server (`--pid`) and of
/// loadgen itself, and what the host stole, from /proc. A figure taken while loadgen's own core
/// is full measures loadgen, so its CPU is always reported beside the server's; a tail taken
/// while the host stole cores is the host's.
struct Meter {
    pids: Vec<u32>,
    start: Option<Snap>,
}

struct Snap {
    at: Instant,
    /// Each server's CPU seconds, in the order of `--pid`.
    server: Vec<f64>,
    me: f64,
    /// The hypervisor's steal over all cores, seconds since boot.
    steal: f64,
    rx: u64,
    tx: u64,
}

impl Meter {
    fn new(o: &Opts) -> Meter {
        Meter {
            pids: o.pids.iter().copied().filter(|p| *p > 0).collect(),
            start: None,
        }
    }

    fn snap(&self, net: &Net) -> Snap {
        Snap {
            at: Instant::now(),
            server: self
                .pids
                .iter()
                .map(|p| cpu::process_secs(&p.to_string()))
                .collect(),
            me: cpu::process_secs("self"),
            steal: cpu::steal_secs(),
            rx: net.rx_bytes,
            tx: net.tx_bytes,
        }
    }

    /// Starts the window the first time `measuring` holds.
    fn tick(&mut self, measuring: bool, net: &Net) {
        if measuring && self.start.is_none() {
            self.start = Some(self.snap(net));
        }
    }

    /// `; wire .. B/msg ..; loadgen CPU ..%; host steal .. ms; server CPU .. us/msg (..% of a
    /// core)` over `msgs` (steal over every core: see `cpu`).
    fn report(&self, net: &Net, msgs: u64) -> String {
        let Some(a) = &self.start else {
            return String::new();
        };
        let b = self.snap(net);
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let n = msgs.max(1) as f64;
        let mut out = format!(
            "; wire {:.0} B/msg (server->loadgen {:.0}, loadgen->server {:.0}); loadgen CPU {:.0}%; host steal {:.0} ms",
            (b.rx - a.rx + b.tx - a.tx) as f64 / n,
            (b.rx - a.rx) as f64 / n,
            (b.tx - a.tx) as f64 / n,
            100.0 * (b.me - a.me) / secs,
            1e3 * (b.steal - a.steal).max(0.0)
        );
        let used: Vec<f64> = b.server.iter().zip(&a.server).map(|(b, a)| b - a).collect();
        let total: f64 = used.iter().sum();
        if !used.is_empty() {
            out.push_str(&format!(
                "; server CPU {:.2} us/msg ({:.0}% of a core)",
                1e6 * total / n,
                100.0 * total / secs
            ));
        }
        if used.len() > 1 {
            let each: Vec<String> = used
                .iter()
                .zip(&self.pids)
                .map(|(u, p)| format!("{p}: {:.0}%", 100.0 * u / secs))
                .collect();
            out.push_str(&format!(" [per node {}]", each.join(", ")));
        }
        out
    }
}

/// Chat text of `size` bytes that varies from message to message as real chat does (a
/// repeated letter would compress to nothing and flatter permessage-deflate).
fn chat_text(n: u64, size: usize) -> String {
    const SENTENCES: &[&str] = &[
        "明天下午三点开会，记得带上周的报表。",
        "OK, I'll send the file tonight.",
        "你到哪儿了？我们在门口等你。",
        "The build is green again, thanks!",
        "周末一起去爬山吗？天气预报说是晴天。",
        "Can you check order #48213 for me?",
        "收到，马上处理。",
        "Running late, start without me.",
    ];
    let mut out = String::with_capacity(size + 64);
    let mut i = n as usize;
    while out.len() < size {
        out.push_str(SENTENCES[i % SENTENCES.len()]);
        out.push(' ');
        i = i.wrapping_mul(7).wrapping_add(3);
    }
    while out.len() > size {
        out.pop();
    }
    out
}

/// The two numbers of a group message's text `t<sent ns>-<message number>`.
fn stamp_of(text: &str) -> Option<(u64, usize)> {
    let at = text.find("\"msg\":\"t")? + 8;
    let (sent, rest) = text[at..].split_once('-')?;
    let k: &str = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((sent.parse().ok()?, k.parse().ok()?))
}

/// Most messages one group run sends (bounds its bookkeeping).
const GROUP_MAX_MESSAGES: usize = 10_000_000;

fn group(o: &Opts) -> Result<String, String> {
    let g = o.members;
    let rate = if o.rate_given { o.rate } else { 100 };
    let users = create_users(o, "grp-", g)?;
    let members: Vec<u64> = users[1..].iter().map(|u| u.0).collect();
    let made = Api::new(o).call(
        "group_create",
        &json!({ "owner_id": users[0].0, "name": format!("loadgen {g}"), "members": members }),
    )?;
    let group_id = made["group"]["group_id"]
        .as_u64()
        .ok_or_else(|| format!("group_create answered {made}"))?;
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    net.deflate = o.deflate;
    login_all(&mut net, o, &users)?;
    // The group's `created` event reached everyone before the load starts.
    settle(&mut net, Duration::from_millis(500))?;

    let texts: Vec<String> = (0..64)
        .map(|i| chat_text(i, o.size.saturating_sub(30)))
        .collect();
    let mut meter = Meter::new(o);
    let expected = (g - 1) as u32;
    let epoch = Instant::now();
    let warm_until = epoch + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(o.seconds);
    let mut got: Vec<u32> = Vec::new();
    let mut measured: Vec<bool> = Vec::new();
    let mut in_flight = vec![0usize; o.senders];
    let mut req = 0u64;
    let mut each = Latencies::new();
    let mut last_member = Latencies::new();
    let (mut acked, mut deliveries, mut refused, mut complete) = (0u64, 0u64, 0u64, 0u64);
    let mut pacer = Pacer::new(rate, o.arrivals, Instant::now());
    let drain_until = end + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        if now >= drain_until || (now >= end && complete as usize == got.len()) {
            break;
        }
        let now_ns = nanos_since(epoch);
        let measuring = now >= warm_until && now < end;
        meter.tick(measuring, &net);
        let mut blocked = false;
        if now < end {
            let mut idle_rounds = 0;
            let mut s = got.len() % o.senders;
            while (rate == 0 || pacer.due(now))
                && idle_rounds < o.senders
                && got.len() < GROUP_MAX_MESSAGES
            {
                if in_flight[s] < o.inflight {
                    let k = got.len();
                    got.push(0);
                    measured.push(measuring);
                    req += 1;
                    net.out.text(
                        s,
                        &format!(
                            "{{\"cmd\":\"send\",\"req_id\":{req},\"chat_type\":1,\"to_id\":{group_id},\"msg_type\":0,\"msg\":\"t{now_ns}-{k} {}\"}}",
                            texts[k % texts.len()]
                        ),
                    );
                    in_flight[s] += 1;
                    if rate > 0 {
                        pacer.sent(now, measuring);
                    }
                    idle_rounds = 0;
                } else {
                    idle_rounds += 1;
                }
                s = (s + 1) % o.senders;
            }
            blocked = idle_rounds >= o.senders;
        }
        let timeout = if rate > 0 {
            pacer.timeout(blocked)
        } else {
            Duration::from_millis(1)
        };
        net.step(timeout, &mut |_, c, ev| match ev {
            Ev::Text(t) if t.starts_with("{\"cmd\":\"send\"") => {
                if c < in_flight.len() {
                    in_flight[c] = in_flight[c].saturating_sub(1);
                }
                if !t.contains("\"code\":200") {
                    refused += 1;
                } else if measuring {
                    acked += 1;
                }
            }
            Ev::Text(t) if t.starts_with("{\"cmd\":\"message\"") => {
                let Some((sent, k)) = stamp_of(t) else {
                    return;
                };
                let Some(n) = got.get_mut(k) else {
                    return;
                };
                let took = nanos_since(epoch).saturating_sub(sent);
                *n += 1;
                if measuring {
                    deliveries += 1;
                    each.record(took);
                }
                if *n == expected {
                    complete += 1;
                    if measured[k] {
                        last_member.record(took);
                    }
                }
            }
            _ => {}
        })?;
    }
    let secs = o.seconds as f64;
    Ok(format!(
        "group: {g} members online, {} senders, {} B text, rate {}{}: {:.0} acked msg/s, {:.0} deliveries/s, {} refused, {} of {} messages reached every member; to the last member {}; each delivery {}{}{}",
        o.senders,
        o.size,
        if rate == 0 { "flat out".to_string() } else { format!("{rate}/s") },
        if o.deflate { ", permessage-deflate offered" } else { "" },
        acked as f64 / secs,
        deliveries as f64 / secs,
        refused,
        complete,
        got.len(),
        last_member.summary(),
        each.summary(),
        if rate > 0 {
            pacer.note()
        } else {
            String::new()
        },
        meter.report(&net, deliveries)
    ))
}

/// Runs the loop for `d`, ignoring what arrives.
fn settle(net: &mut Net, d: Duration) -> Result<(), String> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        net.step(Duration::from_millis(10), &mut |_, _, _| {})?;
    }
    Ok(())
}

/// A user's recovery after reconnecting.
#[derive(Clone, Copy, PartialEq)]
enum Recovery {
    Away,
    Authing,
    Listing,
    Syncing,
    Done,
}

fn reconnect(o: &Opts) -> Result<String, String> {
    let k = o.connections;
    let users = create_users(o, "rc-user-", k)?;
    let friends = create_users(o, "rc-friend-", k)?;
    let pairs: Vec<(u64, u64)> = (0..k).map(|i| (users[i].0, friends[i].0)).collect();
    make_friends(o, &pairs)?;
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    // Connections 0..k are the users, k..2k their friends.
    login_all(&mut net, o, &users)?;
    login_all(&mut net, o, &friends)?;

    // Each friend writes once while its user is online: the seq the user will hold.
    let conv_of: Vec<String> = pairs
        .iter()
        .map(|&(a, b)| format!("p_{}_{}", a.min(b), a.max(b)))
        .collect();
    let mut held = vec![0u64; k];
    let send = |out: &mut net::Out, c: usize, to: u64, n: usize| {
        out.text(
            c,
            &format!(
                "{{\"cmd\":\"send\",\"req_id\":{n},\"chat_type\":0,\"to_id\":{to},\"msg_type\":0,\"msg\":\"missed {n}\"}}"
            ),
        );
    };
    for (i, user) in users.iter().enumerate() {
        send(&mut net.out, k + i, user.0, 0);
    }
    let mut have = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while have < k {
        net.step(Duration::from_millis(10), &mut |_, c, ev| {
            if let Ev::Text(t) = ev {
                if c < k && t.starts_with("{\"cmd\":\"message\"") {
                    if let Some(seq) = number_after(t, "\"seq\":") {
                        if held[c] == 0 {
                            have += 1;
                        }
                        held[c] = held[c].max(seq);
                    }
                }
            }
        })?;
        if Instant::now() > deadline {
            return Err(format!("only {have} of {k} users got the first message"));
        }
    }

    // The users drop at once; their friends write `missed` messages each, all acknowledged.
    for c in 0..k {
        net.close(c);
    }
    let mut sent = vec![0usize; k];
    let mut acked = 0usize;
    let window = o.inflight.min(o.missed.max(1));
    for i in 0..k {
        while sent[i] < window.min(o.missed) {
            sent[i] += 1;
            send(&mut net.out, k + i, users[i].0, sent[i]);
        }
    }
    let total = k * o.missed;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked < total {
        net.step(Duration::from_millis(10), &mut |out, c, ev| {
            if let Ev::Text(t) = ev {
                if c >= k && t.starts_with("{\"cmd\":\"send\"") {
                    if !t.contains("\"code\":200") {
                        return;
                    }
                    acked += 1;
                    let i = c - k;
                    if sent[i] < o.missed {
                        sent[i] += 1;
                        send(out, c, users[i].0, sent[i]);
                    }
                }
            }
        })?;
        if Instant::now() > deadline {
            return Err(format!(
                "only {acked} of {total} missed messages acknowledged"
            ));
        }
    }

    // Everyone reconnects at once: auth, `conversations`, then `sync` until nothing is missing.
    let started = Instant::now();
    let first_new = 2 * k;
    for (_, token) in &users {
        net.connect(o.target, &format!("/ws?token={token}"))
            .map_err(|e| format!("connect: {e}"))?;
    }
    let mut state = vec![Recovery::Away; k];
    let mut target = vec![0u64; k];
    let mut took = Latencies::new();
    let (mut done, mut synced, mut syncs) = (0usize, 0u64, 0u64);
    let mut failure = None;
    let deadline = started + Duration::from_secs(120);
    while done < k {
        net.step(Duration::from_millis(10), &mut |out, c, ev| {
            if c < first_new {
                return;
            }
            let i = c - first_new;
            match ev {
                Ev::Open => state[i] = Recovery::Authing,
                Ev::Text(t) => {
                    let v: Value = match serde_json::from_str(t) {
                        Ok(v) => v,
                        Err(e) => {
                            failure.get_or_insert(format!("bad JSON from the server: {e}"));
                            return;
                        }
                    };
                    if v["code"].is_number() && v["code"] != 200 {
                        failure.get_or_insert(format!("refused: {t}"));
                        return;
                    }
                    let sync = |out: &mut net::Out, after: u64| {
                        out.text(
                            c,
                            &format!(
                                "{{\"cmd\":\"sync\",\"conv_id\":\"{}\",\"after_seq\":{after},\"limit\":200}}",
                                conv_of[i]
                            ),
                        )
                    };
                    match (v["cmd"].as_str(), state[i]) {
                        (Some("auth"), Recovery::Authing) => {
                            state[i] = Recovery::Listing;
                            out.text(c, "{\"cmd\":\"conversations\"}");
                        }
                        (Some("conversations"), Recovery::Listing) => {
                            let last_seq = v["data"]["conversations"]
                                .as_array()
                                .and_then(|cs| cs.iter().find(|x| x["conv_id"] == conv_of[i].as_str()))
                                .and_then(|x| x["last_seq"].as_u64())
                                .unwrap_or(0);
                            target[i] = last_seq;
                            if last_seq <= held[i] {
                                failure.get_or_insert(format!(
                                    "{} lists last_seq {last_seq}, not above the held {}",
                                    conv_of[i], held[i]
                                ));
                                return;
                            }
                            state[i] = Recovery::Syncing;
                            syncs += 1;
                            sync(out, held[i]);
                        }
                        (Some("sync"), Recovery::Syncing) => {
                            for m in v["data"]["messages"].as_array().into_iter().flatten() {
                                let seq = m["seq"].as_u64().unwrap_or(0);
                                if seq == held[i] + 1 {
                                    held[i] = seq;
                                    synced += 1;
                                }
                            }
                            if held[i] >= target[i] {
                                state[i] = Recovery::Done;
                                done += 1;
                                took.record(nanos_since(started));
                            } else if v["data"]["has_more"] == true {
                                syncs += 1;
                                sync(out, held[i]);
                            } else {
                                failure.get_or_insert(format!(
                                    "{}: sync stopped at seq {} of {}",
                                    conv_of[i], held[i], target[i]
                                ));
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        })?;
        if let Some(f) = failure.take() {
            return Err(f);
        }
        if Instant::now() > deadline {
            return Err(format!("only {done} of {k} users recovered in 120 s"));
        }
    }
    let full = started.elapsed();
    Ok(format!(
        "reconnect: {k} users, {} missed messages each: all recovered in {:.3} s ({} messages in {} syncs, {:.0} messages/s); per user {}",
        o.missed,
        full.as_secs_f64(),
        synced,
        syncs,
        synced as f64 / full.as_secs_f64(),
        took.summary()
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

/// VmRSS of a process on this machine.
fn proc_rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn idle(o: &Opts) -> Result<String, String> {
    let echo = match o.mode.as_str() {
        "echo" => true,
        "chat" | "" => false,
        m => return Err(format!("--mode {m}: chat or echo")),
    };
    let users = if echo {
        Vec::new()
    } else {
        create_users(o, "idle-", o.connections)?
    };
    let rss = || {
        if o.pid != 0 {
            proc_rss(o.pid)
        } else {
            server_rss(o)
        }
    };
    let before = rss()?;
    let mut net = Net::new(o.target).map_err(|e| e.to_string())?;
    let started = Instant::now();
    if echo {
        open_all(&mut net, o, o.connections, &|_| o.path.clone())?;
    } else {
        login_all(&mut net, o, &users)?;
    }
    let took = started.elapsed();
    // Let the server settle (buffers released after the handshake), then measure.
    let hold_until = Instant::now() + Duration::from_secs(o.hold);
    while Instant::now() < hold_until {
        net.step(Duration::from_millis(100), &mut |_, _, _| {})?;
    }
    let after = rss()?;
    let per = after.saturating_sub(before) as f64 / o.connections as f64;
    Ok(format!(
        "idle: {} {} connections opened in {:.1} s; server RSS {:.1} MiB -> {:.1} MiB: {:.2} KiB per connection",
        o.connections,
        if echo { "echo" } else { "authenticated chat" },
        took.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per / 1024.0
    ))
}
