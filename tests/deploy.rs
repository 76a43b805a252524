//! The deployment files under `deploy/` as the tests run them: the systemd unit passes
//! `systemd-analyze verify`; the server speaks systemd's notify protocol (READY=1 once it
//! listens, WATCHDOG=1 from its loop, STOPPING=1); logrotate's postrotate makes a daemon
//! reopen its log.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(root().join("deploy/systemd/wxchat.service")).unwrap();
    // The unit as installed, with this build's binary and the reference configuration.
    let unit = unit
        .replace("/opt/wxchat/server", &server_bin().display().to_string())
        .replace(
            "/etc/wxchat/server.toml",
            &root().join("server.toml").display().to_string(),
        );
    let path = dir.path().join("wxchat.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A bad directive is only a warning (exit 0): any output about the unit is a failure.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn readiness_and_watchdog_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let config = write_config(dir.path(), "");
    let mut child = ChildServer(
        Command::new(server_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready}"
    );
    // It listens by then.
    let (_, addr) = read_pid_file(&dir.path().join("data/server.pid")).unwrap();
    assert_eq!(http_get(addr, "/healthz").status, 200);
    // Pings every half WATCHDOG_USEC, from the loop.
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    // SAFETY: SIGTERM to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    loop {
        let state = next();
        if state == "STOPPING=1" {
            break;
        }
        assert_eq!(state, "WATCHDOG=1");
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn logrotate_makes_the_daemon_reopen_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), "");
    let (code, _, err) = run_cli(&config, &["daemon"]);
    assert_eq!(code, 0, "{err}");
    // The rotation config as shipped, pointed at this data directory (and without the wxchat
    // user, which this machine does not have).
    let rotate = std::fs::read_to_string(root().join("deploy/logrotate/wxchat"))
        .unwrap()
        .replace("/var/lib/wxchat", &data.display().to_string())
        .replace("create 0640 wxchat wxchat", "create 0640");
    let conf = dir.path().join("logrotate.conf");
    std::fs::write(&conf, rotate).unwrap();
    let log = data.join("server.log");
    wait_for("the daemon's log", || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0)
    });
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(dir.path().join("state"))
        .arg(&conf)
        .output()
        .expect("logrotate (Debian's logrotate package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("server.log.1").exists());
    // The reopened log gets the next lines: SIGHUP logs that it reopened.
    wait_for("a line in the new log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
    });
    let (code, _, err) = run_cli(&config, &["stop"]);
    assert_eq!(code, 0, "{err}");
}
