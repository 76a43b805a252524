//! The `server` binary as operators use it: daemon, status, stop, graceful shutdown, SIGHUP, and
//! the start-up errors (busy port, bad config, second daemon, stale pid file).

mod common;
use common::*;
use std::process::Command;

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn daemon_status_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");

    let (code, out, err) = run_cli(&config, &["status"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("not running"), "{out}");

    let (code, out, err) = run_cli(&config, &["daemon"]);
    assert_eq!(code, 0, "{out}{err}");
    let (pid, addr) = read_pid_file(&data.join("server.pid")).expect("pid file");
    assert!(
        out.contains(&addr.to_string()),
        "daemon says where it listens: {out}"
    );
    assert!(out.contains("server.log"), "{out}");
    // It answers at once: the daemon returned only after the listener was up.
    assert_eq!(http_get(addr, "/healthz").status, 200);

    let (code, out, _) = run_cli(&config, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("running")
            && out.contains(&pid.to_string())
            && out.contains(&addr.to_string()),
        "{out}"
    );

    // A second daemon on the same data directory is refused.
    let (code, _, err) = run_cli(&config, &["daemon"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("already running") && err.contains(&pid.to_string()),
        "{err}"
    );

    // SIGHUP reopens the log: move it away and a new one appears.
    let log = data.join("server.log");
    let moved = data.join("server.log.1");
    std::fs::rename(&log, &moved).unwrap();
    signal(pid, libc::SIGHUP);
    wait_for("a reopened log file", || log.exists());

    let (code, out, err) = run_cli(&config, &["stop"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("stopped"), "{out}");
    assert!(
        !data.join("server.pid").exists(),
        "clean exit removes the pid file"
    );
    let (code, _, _) = run_cli(&config, &["status"]);
    assert_eq!(code, 3);
    let (code, _, err) = run_cli(&config, &["stop"]);
    assert_ne!(code, 0);
    assert!(err.contains("no server is running"), "{err}");
}

#[test]
fn graceful_shutdown_closes_websockets_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[ws]\necho_path = \"/echo\"\n");
    let (mut child, addr) = spawn_foreground(&config, &dir.path().join("data"));
    let mut c = WsClient::connect(addr, "/echo");
    c.send_text("before");
    assert_eq!(c.recv_text(), "before");
    signal(child.id(), libc::SIGTERM);
    assert_eq!(c.expect_close(), Some(1001));
    c.send_close(1001, "");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigint_stops_the_foreground_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (mut child, _addr) = spawn_foreground(&config, &dir.path().join("data"));
    signal(child.id(), libc::SIGINT);
    assert!(child.wait().unwrap().success());
}

#[test]
fn busy_port_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let (code, _, err) = run_cli(&config, &["run"]);
    assert_eq!(code, 1);
    assert!(err.contains("already in use"), "{err}");
    let (code, _, err) = run_cli(&config, &["daemon"]);
    assert_eq!(code, 1);
    assert!(err.contains("already in use"), "{err}");
    // The pid lock taken before the bind goes with the failed start: no stale file is left.
    let pid_file = dir.path().join("data").join("server.pid");
    assert!(
        !pid_file.exists(),
        "a failed start left {}",
        pid_file.display()
    );
}

#[test]
fn a_second_run_on_the_same_data_directory_and_port_says_already_running() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let data = dir.path().join("data");
    let (first, addr) = spawn_foreground(&config, &data);
    // Same config, so the same port too: the data directory is what it must report.
    let (code, _, err) = run_cli(&config, &["run"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already running on this data directory")
            && err.contains(&first.id().to_string())
            && !err.contains("already in use"),
        "{err}"
    );
    // The refused start left the running server and its pid file alone.
    assert_eq!(
        read_pid_file(&data.join("server.pid")),
        Some((first.id(), addr))
    );
    assert_eq!(http_get(addr, "/healthz").status, 200);
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_conections = 5\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&path, &["run"]);
    assert_eq!(code, 1);
    assert!(err.contains("max_conections"), "{err}");
    let (code, _, err) = run_cli(&dir.path().join("missing.toml"), &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = Command::new(server_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("WXCHAT_SERVER_MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WXCHAT_SERVER_MAX_CONNECTIONS"));
}

#[test]
fn stale_pid_file_is_reported_and_does_not_block_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("server.pid"), "999999\n127.0.0.1:1\n").unwrap();
    let (code, out, _) = run_cli(&config, &["status"]);
    assert_eq!(code, 3);
    assert!(out.contains("stale pid file"), "{out}");
    let (code, _, err) = run_cli(&config, &["stop"]);
    assert_ne!(code, 0);
    assert!(err.contains("stale"), "{err}");
    let (mut child, addr) = spawn_foreground(&config, &data);
    assert_eq!(http_get(addr, "/healthz").status, 200);
    signal(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(server_bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn unreachable_or_unknown_backends_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            format!(
                "[store]\nbackend = \"mysql\"\nmysql_url = \"mysql://root:pw@127.0.0.1:{}/wx\"\nmysql_timeout_s = 2\n",
                dead_port()
            ),
            "cannot use MySQL at mysql://root:***@127.0.0.1:",
        ),
        (
            format!("[redis]\nurl = \"redis://127.0.0.1:{}\"\n", dead_port()),
            "cannot use Redis at redis://127.0.0.1:",
        ),
        (
            "[store]\nbackend = \"postgres\"\n".to_string(),
            "backend = \"postgres\" is not known",
        ),
        (
            "[store]\nbackend = \"mysql\"\nmysql_url = \"postgres://h/db\"\n".to_string(),
            "needs mysql_url",
        ),
        (
            "[redis]\nurl = \"memcached://127.0.0.1:11211\"\n".to_string(),
            "[redis] url must start with redis://",
        ),
    ];
    for (i, (toml, expected)) in cases.iter().enumerate() {
        let sub = dir.path().join(format!("c{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let config = write_config(&sub, toml);
        let (code, _, err) = run_cli(&config, &["run"]);
        assert_ne!(code, 0, "case {i} must not start");
        assert!(err.contains(expected), "case {i}: {err}");
        assert!(
            !err.contains(":pw@"),
            "the password is never printed: {err}"
        );
        // Nothing fell back to an embedded database.
        assert!(!sub.join("data").join("wxchat.db").exists(), "case {i}");
    }
}

/// The server started with a soft open-file limit of 256 (as low as a distribution's 1,024,
/// lower still), `max_connections` as given (None: the default); returns the soft and hard
/// limits it then runs with, read from /proc, and what it logged.
fn limits_of_a_server_started_low(max_connections: Option<u64>) -> (u64, u64, String) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &max_connections.map_or_else(String::new, |m| {
            format!("[server]\nmax_connections = {m}\n")
        }),
    );
    let mut cmd = Command::new(server_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            r.rlim_cur = 256;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ChildServer(cmd.spawn().expect("spawn server"));
    let pid_file = dir.path().join("data").join("server.pid");
    wait_for("the server's pid file", || {
        read_pid_file(&pid_file).is_some_and(|(pid, _)| pid == child.id())
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let (soft, hard) = (numbers.next().unwrap(), numbers.next().unwrap());
    signal(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (soft, hard, log)
}

#[test]
fn the_open_file_limit_is_raised_to_what_max_connections_needs() {
    let hard = wxchat::net::fd_limit::current().unwrap().hard;
    let ceiling = wxchat::net::fd_limit::ceiling().unwrap();
    let wanted = 1000 + wxchat::net::fd_limit::RESERVED;
    assert!(
        ceiling > 256,
        "this machine's limit ({ceiling}) leaves nothing to test"
    );
    let (soft, got_hard, log) = limits_of_a_server_started_low(Some(1000));
    assert_eq!(got_hard, hard, "the hard limit is left alone");
    assert_eq!(soft, wanted.min(ceiling), "{log}");
    if ceiling >= wanted {
        // Enough for max_connections: not a word about it (at the info level of the test).
        assert!(!log.contains("open-file limit"), "{log}");
    }
}

#[test]
fn a_hard_limit_below_max_connections_is_reported_once_with_what_fits() {
    use wxchat::net::fd_limit::{ceiling, RESERVED};
    let ceiling = ceiling().unwrap();
    // More connections than any hard limit allows.
    let max: u64 = 1 << 40;
    let (soft, _, log) = limits_of_a_server_started_low(Some(max));
    assert_eq!(soft, ceiling, "the soft limit goes as far as it can");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("open-file limit"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let fits = ceiling.saturating_sub(RESERVED);
    assert!(
        lines[0].contains(" WARN ")
            && lines[0].contains(&format!("allows about {fits} connections"))
            && lines[0].contains(&format!("max_connections = {max}"))
            && lines[0].contains("LimitNOFILE"),
        "{log}"
    );
}

#[test]
fn the_default_max_connections_out_of_reach_is_one_info_line_not_a_warning() {
    use wxchat::net::fd_limit::{ceiling, RESERVED};
    let ceiling = ceiling().unwrap();
    let max = wxchat::config::Config::default().server.max_connections as u64;
    let (_, _, log) = limits_of_a_server_started_low(None);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("open-file limit"))
        .collect();
    if ceiling >= max + RESERVED {
        assert!(lines.is_empty(), "{log}");
        return;
    }
    // The default is a ceiling nobody asked for: the figure is worth a line, not a warning.
    assert_eq!(lines.len(), 1, "{log}");
    let fits = ceiling.saturating_sub(RESERVED);
    assert!(
        lines[0].contains(" INFO ")
            && lines[0].contains(&format!(
                "allows about {fits} connections of [server] max_connections = {max}"
            )),
        "{log}"
    );
}
