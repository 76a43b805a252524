//! `loadgen`'s command line: each scenario explains its own options.

mod common;

use std::process::Command;

fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("run loadgen");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_scenario_prints_its_own_options() {
    for (scenario, option) in [
        ("echo", "--mode firehose|pingpong"),
        ("p2p", "--pairs 50"),
        ("group", "--members 1000"),
        ("reconnect", "--missed 20"),
        ("idle", "--hold 2"),
    ] {
        for flag in ["--help", "-h"] {
            let (code, out, err) = loadgen(&[scenario, flag]);
            assert_eq!(code, 0, "{scenario} {flag}: {err}");
            assert!(
                out.starts_with(&format!("usage: loadgen {scenario} [OPTIONS]")),
                "{out}"
            );
            assert!(out.contains(option), "{scenario}: {out}");
            assert!(out.contains("--target"), "the common options too: {out}");
        }
    }
    // After other options too.
    let (code, out, _) = loadgen(&["p2p", "--pairs", "5", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--pairs 50"), "{out}");
}

#[test]
fn the_overview_lists_every_scenario_and_unknown_ones_are_refused() {
    let (code, out, _) = loadgen(&["--help"]);
    assert_eq!(code, 0);
    for s in ["echo", "p2p", "group", "reconnect", "idle"] {
        assert!(out.contains(&format!("\n  {s} ")), "{s}: {out}");
    }
    let (code, _, err) = loadgen(&["nope", "--help"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown scenario \"nope\""), "{err}");
}

/// `p2p --friends K` spreads each sender over K conversations; K is bounded by the pairs (each
/// friend is another pair's receiver), and the bound is checked before anything connects.
#[test]
fn p2p_friends_is_documented_and_bounded() {
    let (code, out, _) = loadgen(&["p2p", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--friends 1"), "{out}");
    for bad in ["0", "6"] {
        let (code, _, err) = loadgen(&["p2p", "--pairs", "5", "--friends", bad]);
        assert_eq!(code, 2, "--friends {bad}: {err}");
        assert!(err.contains("1 <= friends <= pairs"), "{err}");
    }
}

/// `--arrivals` spreads a `--rate` over time; a value other than even or poisson is refused
/// before anything connects.
#[test]
fn arrivals_are_documented_and_checked() {
    let (code, out, _) = loadgen(&["p2p", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--arrivals even|poisson"), "{out}");
    let (code, _, err) = loadgen(&["echo", "--rate", "100", "--arrivals", "bursty"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--arrivals: even or poisson"), "{err}");
}

/// A paced run against a real server: each message leaves on its own due time, the offered
/// rate is what arrives back, and the report says how late messages left against the schedule.
#[test]
fn a_paced_echo_run_keeps_its_rate_and_reports_its_schedule() {
    let mut server = common::TestServer::start("[ws]\necho_path = \"/echo\"\n");
    let target = server.addr.to_string();
    for arrivals in ["even", "poisson"] {
        let (code, out, err) = loadgen(&[
            "echo",
            "--target",
            &target,
            "--path",
            "/echo",
            "--connections",
            "10",
            "--rate",
            "2000",
            "--seconds",
            "1",
            "--arrivals",
            arrivals,
        ]);
        assert_eq!(code, 0, "{arrivals}: {err}");
        assert!(
            out.contains(&format!("{arrivals} arrivals, left late by p50 ")),
            "{out}"
        );
        // The host's steal in the window, so a tail the hypervisor caused can be told apart.
        let steal = out
            .split("; host steal ")
            .nth(1)
            .and_then(|rest| rest.split(" ms").next())
            .and_then(|n| n.parse::<u64>().ok());
        assert!(steal.is_some(), "no host steal in {out}");
        // "...: N msg/s; latency ..." — what came back in the measured second.
        let rate: f64 = out
            .split(" msg/s; latency")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {out}"));
        // A loose band: this checks that the schedule is kept, not how fast the machine is.
        assert!(
            (1000.0..=3000.0).contains(&rate),
            "{arrivals}: {rate} msg/s: {out}"
        );
    }
    server.stop();
}

/// `p2p --client-ids` decides what each message's `client_msg_id` looks like, since where a new
/// id lands in the server's dedup index is part of the load: what reaches the database is
/// checked for each kind, and an unknown kind is refused before anything connects.
#[test]
fn p2p_client_ids_are_of_the_kind_asked_for() {
    let (code, out, _) = loadgen(&["p2p", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--client-ids counter|time|random"), "{out}");
    let (code, _, err) = loadgen(&["p2p", "--client-ids", "uuid"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--client-ids: counter, time or random"),
        "{err}"
    );

    let mut server =
        common::TestServer::start("[api]\nkey = \"lg\"\n[chat]\nmax_msgs_per_sec = 0\n");
    let target = server.addr.to_string();
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut window = Vec::new();
    for kind in ["counter", "time", "random"] {
        let started = wall_ms();
        let (code, out, err) = loadgen(&[
            "p2p",
            "--target",
            &target,
            "--api-key",
            "lg",
            "--pairs",
            "2",
            "--inflight",
            "4",
            "--seconds",
            "1",
            "--client-ids",
            kind,
        ]);
        assert_eq!(code, 0, "{kind}: {err}");
        assert!(out.contains("acked msg/s"), "{out}");
        window.push((kind, started, wall_ms()));
    }
    server.stop();

    let db = rusqlite::Connection::open_with_flags(
        server.dir.path().join("wxchat.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let ids: Vec<(String, i64)> = db
        .prepare("SELECT client_msg_id, created_at FROM messages ORDER BY msg_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let hex32 = |id: &str| {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    for (kind, from, to) in window {
        // The run's messages: those stored while it ran (created_at is in milliseconds).
        let run: Vec<&str> = ids
            .iter()
            .filter(|(_, at)| (from as i64..=to as i64).contains(at))
            .map(|(id, _)| id.as_str())
            .collect();
        assert!(run.len() > 10, "{kind}: {} messages", run.len());
        for id in &run {
            match kind {
                "counter" => assert_eq!(id.split('-').count(), 3, "{id}"),
                "time" => {
                    assert!(hex32(id), "{id}");
                    let ms = u64::from_str_radix(&id[..12], 16).unwrap();
                    assert!((from..=to).contains(&ms), "{id}: {ms} not in {from}..{to}");
                }
                _ => assert!(hex32(id), "{id}"),
            }
        }
        if kind == "random" {
            // Not time-stamped: the leading digits are not the clock's.
            let timed = run
                .iter()
                .filter(|id| (from..=to).contains(&u64::from_str_radix(&id[..12], 16).unwrap()))
                .count();
            assert_eq!(timed, 0, "{run:?}");
        }
    }
}
