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
