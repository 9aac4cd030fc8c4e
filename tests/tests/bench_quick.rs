//! `divisor-bench quick` with tiny client counts: proves the harness itself works (numbers
//! come out for every scenario and peer: a max-clients figure and CPU per unit), not how
//! big they are; and that bad input gets an error saying what to change or install.
//!
//! Needs root (namespaces), the release binaries (`cargo build --release --workspace
//! --bins`, which builds `divisor-bench` too), ffmpeg, nftables, and GStreamer's RTSP
//! server through python3-gi (`scripts/install-deps.sh`).

use divisor_tests::{bin, run, Checks};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn bench() -> Command {
    Command::new(bin("divisor-bench").expect("divisor-bench built"))
}

#[test]
fn quick_run_reports_capacity_and_cpu_for_every_scenario_and_peer() {
    let out_dir = divisor_tests::paths::fresh_log_dir("bench_quick").unwrap();
    let mut cmd = bench();
    cmd.args([
        "quick", "--start", "1", "--max", "2", "--window", "1", "--settle", "1",
    ])
    .args(["--probe-secs", "0.3", "--out"])
    .arg(&out_dir);
    let out = run(&mut cmd, Duration::from_secs(300)).unwrap();
    assert!(
        out.success(),
        "divisor-bench quick failed:\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let text = std::fs::read_to_string(out_dir.join("results.json")).expect("results.json");
    let v: Value = serde_json::from_str(&text).expect("results.json parses");
    let mut c = Checks::new();
    let searches = v["searches"].as_array().cloned().unwrap_or_default();
    for server in [
        "mono-1c",
        "split-2x1c",
        "mono-2c",
        "gst-rtsp-server",
        "ffmpeg",
    ] {
        let Some(s) = searches.iter().find(|s| s["server"] == server) else {
            c.check(false, || format!("no search for {server} in results.json"));
            continue;
        };
        c.check(s["max_clients"].as_u64().is_some(), || {
            format!("{server}: no max_clients figure: {}", s["max_clients"])
        });
        let levels = s["levels"].as_array().cloned().unwrap_or_default();
        c.check(!levels.is_empty(), || {
            format!("{server}: no levels measured")
        });
        for l in &levels {
            let units = l["cpu"]["units"].as_array().cloned().unwrap_or_default();
            c.check(
                !units.is_empty() && units.iter().all(|u| u["cpu_pct"].as_f64().is_some()),
                || {
                    format!(
                        "{server} N={}: no CPU figure per unit: {}",
                        l["clients"], l["cpu"]
                    )
                },
            );
            c.check(l["received"].as_u64().is_some(), || {
                format!("{server} N={}: no received count", l["clients"])
            });
        }
    }
    let probes = v["probe"].as_array().cloned().unwrap_or_default();
    c.check(
        probes.len() == 2 && probes.iter().all(|p| p["packets_per_s"].as_f64().is_some()),
        || format!("probe results missing: {}", v["probe"]),
    );
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap_or_default();
    c.check(md.contains("| split-2x1c |"), || {
        "results.md lacks the table".into()
    });
    for plot in [
        "clients-vs-lateness",
        "cpu-per-unit",
        "lateness-distribution",
    ] {
        for ext in ["png", "svg"] {
            let p = out_dir.join(format!("{plot}.{ext}"));
            c.check(p.metadata().map(|m| m.len() > 0).unwrap_or(false), || {
                format!("plot {} missing", p.display())
            });
        }
    }
    c.finish();
}

/// Runs `divisor-bench` with `args` (and `env`), expects failure with every `needle` in
/// stderr.
fn expect_error(c: &mut Checks, args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let mut cmd = bench();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, Duration::from_secs(60)).unwrap();
    c.check(!out.success(), || format!("{args:?} should fail"));
    for n in needles {
        c.check(out.stderr.contains(n), || {
            format!("{args:?}: stderr lacks {n:?}:\n{}", out.stderr)
        });
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let mut c = Checks::new();
    expect_error(
        &mut c,
        &["quick", "--scenarios", "mono-3c"],
        &[],
        &["unknown scenario `mono-3c`", "mono-1c, split-2x1c, mono-2c"],
    );
    expect_error(
        &mut c,
        &["quick", "--start", "0"],
        &[],
        &["N = 0", "at least 1"],
    );
    expect_error(&mut c, &["full", "--max", "0"], &[], &["N = 0"]);
    expect_error(
        &mut c,
        &["quick", "--workloads", "nope"],
        &[],
        &["unknown workload `nope`"],
    );
    expect_error(
        &mut c,
        &["quick", "--peers", "ffmpeg"],
        &[("PATH", "/nonexistent")],
        &["peer ffmpeg unavailable", "apt-get install ffmpeg"],
    );
    expect_error(
        &mut c,
        &["quick", "--peers", "gst"],
        &[("DIVISOR_BENCH_PYTHON", "/nonexistent/python3")],
        &[
            "peer gst-rtsp-server unavailable",
            "python3-gi",
            "gir1.2-gst-rtsp-server-1.0",
        ],
    );
    c.finish();
}
