//! `subscriber [OPTIONS] [TOPIC...]`: tails a running server's info topics, as online_chat's
//! `php subscriber.php all` did. See `--help`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxchat::admin::client::{self, ClientError, Incoming, Subscriber};
use wxchat::config::Config;

const USAGE: &str = "\
usage: subscriber [--host HOST:PORT] [--token TOKEN] [--json] [--config FILE] [TOPIC...]

Prints a running wxchat server's info topics as they happen.

  TOPIC   all | serverInfo | connection | message | login | wechat | error, optionally
          narrowed by conditions: 'message;uid=1;chat_type=1', 'all;uid=1,2'.
          Several topics are alternatives. Default: all.

  --host HOST:PORT  the admin listener (default: $WXCHAT_ADMIN_LISTEN, else [admin] listen
                    of the config, else 127.0.0.1:9502)
  --token TOKEN     the admin token, needed from another machine (default: $WXCHAT_ADMIN_TOKEN,
                    else [admin] token of the config)
  --json            one JSON object per line instead of the readable format
  --config FILE     read [admin] listen and token from this server config (default:
                    ./server.toml when present); WXCHAT_* variables override it as they do
                    for the server

Reconnects with backoff when the server restarts; Ctrl-C stops.
";

/// Exit status: the server refused us (bad token, bad topic): retrying will not help.
const EXIT_REFUSED: u8 = 2;

struct Args {
    host: Option<String>,
    token: Option<String>,
    json: bool,
    config: Option<std::path::PathBuf>,
    topics: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        host: None,
        token: None,
        json: false,
        config: None,
        topics: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("wxchat subscriber {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--host" => a.host = Some(value("--host")?),
            "--token" => a.token = Some(value("--token")?),
            "--config" | "-c" => a.config = Some(value("--config")?.into()),
            "--json" => a.json = true,
            s if s.starts_with("--host=") => a.host = Some(s["--host=".len()..].into()),
            s if s.starts_with("--token=") => a.token = Some(s["--token=".len()..].into()),
            s if s.starts_with("--config=") => a.config = Some(s["--config=".len()..].into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            topic => a.topics.push(topic.to_string()),
        }
    }
    if a.topics.is_empty() {
        a.topics.push("all".into());
    }
    for t in &a.topics {
        wxchat::feed::Subscription::parse(t)?;
    }
    Ok(a)
}

/// Host and token: flags, then the environment (`WXCHAT_ADMIN_*`, applied by `Config::load`), then
/// the server's config, then the defaults.
fn target(args: &Args) -> Result<(String, Option<String>), String> {
    let path = args.config.clone().or_else(|| {
        let p = std::path::PathBuf::from("server.toml");
        p.exists().then_some(p)
    });
    // Loaded like the server's, WXCHAT_* overrides included even without a file, so
    // `WXCHAT_ADMIN_LISTEN` / `WXCHAT_ADMIN_TOKEN` name the same listener the server opened.
    let config = Config::load(path.as_deref()).map_err(|e| format!("bad config: {e}"))?;
    let host = match &args.host {
        Some(h) => h.clone(),
        None if config.admin.listen.is_empty() => {
            return Err("the server config has no admin listener ([admin] listen is empty)".into())
        }
        None => config.admin.listen.clone(),
    };
    let token = args
        .token
        .clone()
        .or_else(|| Some(config.admin.token.clone()))
        .filter(|t| !t.is_empty());
    Ok((host, token))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("subscriber: {e}\n(subscriber --help shows the usage)");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let (host, token) = match target(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("subscriber: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("subscriber: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    }
    run(&args, &host, token.as_deref(), &stop)
}

/// Backoff between reconnection attempts: doubling from 0.5 s up to 10 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(5)).min(10_000))
}

fn run(args: &Args, host: &str, token: Option<&str>, stop: &AtomicBool) -> ExitCode {
    // Successful subscriptions so far.
    let mut sessions = 0u32;
    let mut attempt = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return ExitCode::SUCCESS;
        }
        let before = sessions;
        let outcome = session(args, host, token, stop, &mut sessions);
        if sessions > before {
            // It worked for a while: start the backoff over.
            attempt = 0;
        }
        let err = match outcome {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => e,
        };
        match &err {
            ClientError::Refused { status, body } => {
                eprintln!("subscriber: {host} refused: HTTP {status}: {}", body.trim());
                if *status == 401 {
                    eprintln!(
                        "subscriber: give the admin token with --token or WXCHAT_ADMIN_TOKEN"
                    );
                }
                return ExitCode::from(EXIT_REFUSED);
            }
            ClientError::Protocol(why) if why.starts_with("subscribe refused") => {
                eprintln!("subscriber: {why}");
                return ExitCode::from(EXIT_REFUSED);
            }
            _ if sessions == 0 => {
                eprintln!(
                    "subscriber: cannot reach the wxchat admin listener at {host}: {err}\n\
                     Is the server running? Its address is [admin] listen in server.toml (or --host)."
                );
                return ExitCode::from(1);
            }
            _ => {}
        }
        let wait = backoff(attempt);
        attempt += 1;
        eprintln!(
            "subscriber: {err}; reconnecting to {host} in {:.1} s",
            wait.as_secs_f64()
        );
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return ExitCode::SUCCESS;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One connection: subscribe, then print until it ends. Ok(()) only on Ctrl-C.
fn session(
    args: &Args,
    host: &str,
    token: Option<&str>,
    stop: &AtomicBool,
    sessions: &mut u32,
) -> Result<(), ClientError> {
    let addr = client::resolve(host)?;
    // Ctrl-C is checked between reads, so reads wait at most 250 ms.
    let mut sub = Subscriber::connect(
        addr,
        token,
        Duration::from_secs(5),
        Duration::from_millis(250),
    )?;
    let req = serde_json::json!({ "cmd": "subscribe", "req_id": 1, "topics": args.topics });
    sub.send(&req.to_string())?;
    let mut subscribed = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            sub.close();
            return Ok(());
        }
        let text = match sub.receive()? {
            Incoming::Idle => continue,
            Incoming::Text(t) => t,
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if !subscribed && v.get("cmd").and_then(|c| c.as_str()) == Some("subscribe") {
            if v.get("code").and_then(|c| c.as_u64()) != Some(200) {
                let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or("refused");
                return Err(ClientError::Protocol(format!("subscribe refused: {msg}")));
            }
            subscribed = true;
            eprintln!(
                "subscriber: {} to {} at {addr}",
                if *sessions > 0 {
                    "reconnected"
                } else {
                    "subscribed"
                },
                args.topics.join(" ")
            );
            *sessions += 1;
            continue;
        }
        if args.json {
            println!("{text}");
        } else if v.get("topic").and_then(|t| t.as_str()) == Some("notice") {
            eprintln!(
                "subscriber: notice from the server: {}",
                v.get("reason").and_then(|r| r.as_str()).unwrap_or("")
            );
        } else {
            println!("{}", wxchat::admin::format::readable(&v));
        }
    }
}
