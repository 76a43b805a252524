//! `loadgen`'s command line: each scenario explains its own options.

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
