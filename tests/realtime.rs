//! `[server] realtime_priority`: the server binary's reactor and persister run under
//! `SCHED_FIFO` at that priority and every other thread at normal priority; where the process
//! may not take it, a warning says so and every thread runs normally.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// (policy, real-time priority) of each of the process's threads, by thread name.
fn thread_policies(pid: u32) -> Vec<(u32, String, u32, u32)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap();
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        // Fields after the name's closing parenthesis start at field 3 (state); rt_priority is
        // field 40 and policy field 41 (proc(5)).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        out.push((
            tid,
            comm.trim().to_string(),
            f[41 - 3].parse().unwrap(),
            f[40 - 3].parse().unwrap(),
        ));
    }
    out
}

/// Whether this test process may take real-time priority itself (root, CAP_SYS_NICE or
/// RLIMIT_RTPRIO): the server started from it may then too.
fn realtime_allowed() -> bool {
    std::thread::spawn(|| wxchat::rt::priority::make_realtime(1).is_ok())
        .join()
        .unwrap()
}

#[test]
fn the_reactor_and_the_persister_run_realtime_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    // The setting through the environment, so the file that `server status` reads below does
    // not have it: what status says comes from the running server.
    let config = write_config(dir.path(), "");
    let log_path = dir.path().join("stderr.log");
    let mut child = ChildServer(
        Command::new(server_bin())
            .arg("--config")
            .arg(&config)
            .env("WXCHAT_SERVER_REALTIME_PRIORITY", "7")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("spawn server"),
    );
    let pid = child.id();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let allowed = realtime_allowed();
    // The reactor takes its priority when its loop starts, after the listeners are open.
    wait_for(
        "the reactor and the persister to report their priority",
        || {
            let l = log();
            l.matches("real-time priority 7").count() >= 2
                || l.matches("could not take").count() >= 2
        },
    );
    let threads = thread_policies(pid);
    assert!(threads.iter().any(|t| t.1 == "persister"), "{threads:?}");
    assert!(threads.iter().any(|t| t.1 == "sqlite-apply"), "{threads:?}");
    for (tid, name, policy, priority) in &threads {
        let on_the_path = *tid == pid || name == "persister";
        if allowed && on_the_path {
            assert_eq!(
                (*policy, *priority),
                (libc::SCHED_FIFO as u32, 7),
                "{name}: {threads:?}"
            );
        } else {
            assert_eq!(
                (*policy, *priority),
                (libc::SCHED_OTHER as u32, 0),
                "{name}: {threads:?}"
            );
        }
    }
    let l = log();
    if allowed {
        assert!(
            l.contains("reactor: real-time priority 7 (SCHED_FIFO)"),
            "{l}"
        );
        assert!(
            l.contains("persister: real-time priority 7 (SCHED_FIFO)"),
            "{l}"
        );
    } else {
        assert!(
            l.contains("reactor: could not take real-time priority 7"),
            "{l}"
        );
        assert!(l.contains("LimitRTPRIO=7"), "{l}");
    }
    // What the threads took is in /status, and `server status` says it.
    let (code, out, err) = run_cli(&config, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let expected = if allowed {
        "  scheduling:   reactor SCHED_FIFO 7, persister SCHED_FIFO 7 ([server] realtime_priority = 7)"
    } else {
        "  scheduling:   reactor normal, persister normal ([server] realtime_priority = 7)"
    };
    assert!(out.lines().any(|l| l == expected), "{out}");
    child.stop_cleanly();
}

/// Without the setting, `/status` reports normal scheduling for both and `server status` has
/// no scheduling line.
#[test]
fn without_the_setting_status_reports_normal_scheduling() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (code, out, err) = run_cli(&config, &["daemon"]);
    assert_eq!(code, 0, "{out}{err}");
    let (status_code, status, _) = run_cli(&config, &["status"]);
    // The admin listener, as `server status` finds it.
    let running = wxchat::pidfile::probe(&dir.path().join("data").join("server.pid"));
    let admin = match &running {
        Ok(wxchat::pidfile::Status::Running { admin, .. }) => admin.clone(),
        _ => None,
    };
    let reported = admin
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| http_get(a, "/status").json()["realtime_priority"].clone());
    let (code, out, err) = run_cli(&config, &["stop"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(status_code, 0, "{status}");
    assert!(status.contains("  memory:"), "live figures: {status}");
    assert!(!status.contains("scheduling:"), "{status}");
    assert_eq!(
        reported,
        Some(serde_json::json!({ "reactor": 0, "persister": 0, "configured": 0 })),
        "{running:?}"
    );
}
