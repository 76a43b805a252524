//! The `subscriber` binary as an operator uses it: started against a running server, its output
//! read, the server restarted under it, Ctrl-C; and `server status` showing live figures.

mod common;
use common::chat_client::*;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const API_KEY: &str = "cli-key";

fn subscriber_bin() -> &'static str {
    env!("CARGO_BIN_EXE_subscriber")
}

/// A free port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `subscriber` whose stdout and stderr lines arrive on channels.
struct Sub {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
}

impl Sub {
    fn start(args: &[&str]) -> Sub {
        Sub::spawn(Command::new(subscriber_bin()).args(args))
    }

    fn start_with_env(args: &[&str], cwd: &std::path::Path, env: &[(&str, &str)]) -> Sub {
        Sub::spawn(&mut subscriber_with_env(args, cwd, env))
    }

    fn spawn(cmd: &mut Command) -> Sub {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start subscriber");
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Sub { child, out, err }
    }

    /// The next line on `rx` that satisfies `want`, within TIMEOUT.
    fn wait_line(rx: &Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    fn stderr_line(&self, what: &str, needle: &str) -> String {
        Self::wait_line(&self.err, what, |l| l.contains(needle))
    }

    fn stdout_line(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        Self::wait_line(&self.out, what, want)
    }

    /// Ctrl-C, then the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "subscriber ignored Ctrl-C");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `subscriber` in `cwd` with only `env` of the WXCHAT_* variables (the test's own, such as
/// WXCHAT_TEST_MYSQL_URL, would be unknown configuration variables to it).
fn subscriber_with_env(args: &[&str], cwd: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(subscriber_bin());
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WXCHAT_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd
}

fn send(addr: std::net::SocketAddr, token: &str, to: u64, req: u64, text: &str) -> u64 {
    let mut c = ws_login(addr, token);
    let r = ws_request(
        &mut c,
        json!({"cmd":"send","req_id":req,"chat_type":0,"to_id":to,"msg_type":0,"msg":text,"client_msg_id":format!("cli{req}")}),
    );
    assert_eq!(r["code"], 200, "{r}");
    r["data"]["msg_id"].as_u64().unwrap()
}

#[test]
fn subscriber_follows_a_server_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\nserver_info_every_s = 1\n\
             [api]\nkey = \"{API_KEY}\"\n[chat]\nallow_strangers = true\n"
        ),
    );
    let (code, out, err) = run_cli(&config, &["daemon"]);
    assert_eq!(code, 0, "{out}{err}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let host = format!("127.0.0.1:{admin_port}");

    // `server status` reads the live figures from the admin listener.
    let (code, out, _) = run_cli(&config, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("admin:        {host}"))
            && out.contains("connections:")
            && out.contains("messages:"),
        "{out}"
    );

    let (a, ta) = api_user(addr, API_KEY, "a");
    let (b, _) = api_user(addr, API_KEY, "b");
    let json_sub = Sub::start(&["--host", &host, "--json", "message"]);
    let readable = Sub::start(&["--host", &host, &format!("message;uid={a}"), "serverInfo"]);
    json_sub.stderr_line("the json subscriber to subscribe", "subscribed to message");
    readable.stderr_line("the readable subscriber to subscribe", "subscribed to");

    let m1 = send(addr, &ta, b, 1, "first");
    let line = json_sub.stdout_line("the first message as JSON", |l| l.contains("\"message\""));
    let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(
        (v["topic"].as_str(), v["msg_id"].as_u64()),
        (Some("message"), Some(m1)),
        "{v}"
    );
    assert_eq!(
        (v["from_id"].as_u64(), v["to_id"].as_u64()),
        (Some(a), Some(b))
    );
    let line = readable.stdout_line("the first message, readable", |l| l.contains(" message "));
    assert!(
        line.contains(&format!("from_id={a}"))
            && line.contains(&format!("msg_id={m1}"))
            && line.contains(&format!("to_id={b}")),
        "{line}"
    );
    let line = readable.stdout_line("a serverInfo line", |l| l.contains(" serverInfo "));
    assert!(line.contains("conns=") && line.contains("rss="), "{line}");

    // The server restarts; both reconnect by themselves.
    let (code, out, err) = run_cli(&config, &["stop"]);
    assert_eq!(code, 0, "{out}{err}");
    json_sub.stderr_line("the json subscriber to notice", "reconnecting");
    let (code, out, err) = run_cli(&config, &["daemon"]);
    assert_eq!(code, 0, "{out}{err}");
    json_sub.stderr_line("the json subscriber to reconnect", "reconnected");
    readable.stderr_line("the readable subscriber to reconnect", "reconnected");

    let m2 = send(addr, &ta, b, 2, "second");
    let line = json_sub.stdout_line("the message after the restart", |l| {
        l.contains("\"message\"")
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["msg_id"].as_u64(), Some(m2), "{v}");

    // Ctrl-C: a clean exit.
    let status = json_sub.interrupt();
    assert!(status.success(), "{status:?}");
    let status = readable.interrupt();
    assert!(status.success(), "{status:?}");

    let (code, out, err) = run_cli(&config, &["stop"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn subscriber_says_clearly_when_nothing_answers_or_it_is_refused() {
    let dead = format!("127.0.0.1:{}", free_port());
    let out = Command::new(subscriber_bin())
        .args(["--host", &dead, "all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the wxchat admin listener")
            && err.contains(&dead)
            && err.contains("Is the server running?"),
        "{err}"
    );

    let out = Command::new(subscriber_bin())
        .args(["--host", &dead, "mesage"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown topic \"mesage\""));

    // A wrong token is refused for good (no retry loop).
    let s = TestServer::start("[admin]\ntoken = \"0123456789abcdef\"\n");
    let out = Command::new(subscriber_bin())
        .args(["--host", &s.admin.to_string(), "--token", "wrong", "all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("--token"), "{err}");
}

#[test]
fn subscriber_takes_the_admin_listener_and_token_from_the_environment() {
    let s = TestServer::start("[admin]\ntoken = \"0123456789abcdef\"\n");
    let admin = s.admin.to_string();
    // No --host and no server.toml in the working directory: only the environment names the
    // listener (the built-in default, 127.0.0.1:9502, is not it).
    let empty = tempfile::tempdir().unwrap();
    let sub = Sub::start_with_env(
        &["message"],
        empty.path(),
        &[
            ("WXCHAT_ADMIN_LISTEN", &admin),
            ("WXCHAT_ADMIN_TOKEN", "0123456789abcdef"),
        ],
    );
    let line = sub.stderr_line(
        "a subscription at the listener the environment names",
        "subscriber:",
    );
    assert!(
        line.contains("subscribed to message") && line.contains(&admin),
        "{line}"
    );
    assert!(sub.interrupt().success());

    // The environment wins over a config file too, for the listener and for the token (a token
    // that is sent must be right even from loopback, so the wrong one shows it was used).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port()),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let sub = Sub::start_with_env(
        &["--config", config, "message"],
        dir.path(),
        &[("WXCHAT_ADMIN_LISTEN", &admin)],
    );
    sub.stderr_line(
        "a subscription despite the config's listener",
        "subscribed to message",
    );
    assert!(sub.interrupt().success());
    let out = subscriber_with_env(
        &["--config", config, "message"],
        dir.path(),
        &[
            ("WXCHAT_ADMIN_LISTEN", &admin),
            ("WXCHAT_ADMIN_TOKEN", "wrong-token-wrong-token"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&admin) && err.contains("401"), "{err}");
}
