//! `divisor-bench failover`: the reflector tree of the tests (`divisor_tests::tree`) with
//! one ffmpeg decoding at each public reflector, while the active intermediate is killed
//! (`kill -9`), cut off (nftables drop: silence only) and taken out gracefully (SIGTERM),
//! each `--rounds` times. For every event: the time from the event to each public
//! reflector's switch (its log), and at the clients (a tshark capture on their
//! interface) the largest RTP arrival gap in the 3 s after it and the packets lost.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use divisor_tests::tree::{Tree, TreeOptions, LINK, MASTER, PUBLICS};

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// Events of each kind.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Kill,
    Cut,
    Graceful,
}

struct Event {
    kind: Kind,
    at: DateTime<Utc>,
}

fn on(tree: &Tree, addr: &str) -> bool {
    PUBLICS.iter().all(|p| {
        tree.channel(p)
            .ok()
            .flatten()
            .and_then(|c| c["active_upstream"].as_str().map(|s| s == addr))
            .unwrap_or(false)
    })
}

fn wait_on(tree: &Tree, addr: &str, secs: u64) -> Result<()> {
    tree.wait_for(
        Duration::from_secs(secs),
        &format!("publics on {addr}"),
        |t| Ok(on(t, addr)),
    )
}

/// Switch times of a public reflector, from its log.
fn switches(log: &str) -> Vec<DateTime<Utc>> {
    log.lines()
        .filter(|l| l.contains("channel switched parent"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .collect()
}

/// (epoch seconds, ssrc, seq) of every RTP packet the clients received.
fn packets(file: &std::path::Path) -> Result<Vec<(f64, u32, u16)>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args([
            "-o",
            "rtp.heuristic_rtp:TRUE",
            "-Y",
            "rtp && !rtcp && rtp.ssrc != 0",
        ])
        .args(["-T", "fields", "-E", "separator=,"])
        .args(["-e", "frame.time_epoch", "-e", "rtp.ssrc", "-e", "rtp.seq"])
        .output()
        .context("tshark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let (Ok(t), Ok(ssrc), Ok(seq)) = (
            f[0].parse::<f64>(),
            u32::from_str_radix(f[1].trim_start_matches("0x"), 16),
            f[2].parse::<u16>(),
        ) else {
            continue;
        };
        v.push((t, ssrc, seq));
    }
    Ok(v)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(args: FailoverArgs) -> Result<()> {
    let tree = Tree::start("bench-failover", TreeOptions::default())?;
    let int1 = tree.lan.addr("int1", LINK).to_string();
    let int2 = tree.lan.addr("int2", LINK).to_string();
    let master = tree.lan.addr(MASTER, LINK).to_string();
    let cap = tree.start_capture("cap")?;
    for (i, p) in PUBLICS.iter().enumerate() {
        tree.spawn_ffmpeg(&format!("ff{i}"), &tree.rtsp_url(p), 100_000, false)?;
    }
    wait_on(&tree, &int1, 20)?;
    std::thread::sleep(Duration::from_secs(2));
    let mut events = Vec::new();
    for round in 0..args.rounds {
        for kind in [Kind::Kill, Kind::Cut, Kind::Graceful] {
            let at = Utc::now();
            match kind {
                Kind::Kill => tree.lan.signal("int1", libc::SIGKILL)?,
                Kind::Cut => tree.lan.cut("int1")?,
                Kind::Graceful => tree.lan.signal("int1", libc::SIGTERM)?,
            }
            events.push(Event { kind, at });
            wait_on(&tree, &int2, 10)?;
            std::thread::sleep(Duration::from_secs(3));
            match kind {
                Kind::Kill | Kind::Graceful => {
                    tree.lan.wait_exit("int1", Duration::from_secs(20))?;
                    tree.spawn_reflector("int1", "intermediate", &[master.as_str()], &[])?;
                }
                Kind::Cut => tree.lan.heal("int1")?,
            }
            wait_on(&tree, &int1, 30)?;
            std::thread::sleep(Duration::from_secs(1));
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }
    let mut trouble = Vec::new();
    for i in 0..PUBLICS.len() {
        let name = format!("ff{i}");
        tree.lan.signal(&name, libc::SIGINT)?;
        tree.lan.wait_exit(&name, Duration::from_secs(15))?;
        let (frames, t) = tree.ffmpeg_result(&name);
        trouble.push((name, frames, t.len()));
    }
    tree.stop_capture("cap")?;

    let pkts = packets(&cap)?;
    let mut by_ssrc: HashMap<u32, Vec<(f64, u16)>> = HashMap::new();
    for (t, s, q) in pkts {
        by_ssrc.entry(s).or_default().push((t, q));
    }
    // Per event: largest arrival gap of any stream in the 3 s after it, packets missing.
    let mut rows: HashMap<Kind, (Vec<f64>, Vec<f64>, u64)> = HashMap::new();
    let pub_switches: Vec<Vec<DateTime<Utc>>> =
        PUBLICS.iter().map(|p| switches(&tree.lan.log(p))).collect();
    for e in &events {
        let t0 = e.at.timestamp_micros() as f64 / 1e6;
        let (gaps, detect, lost) = rows.entry(e.kind).or_default();
        let mut worst: f64 = 0.0;
        for pk in by_ssrc.values() {
            let w: Vec<&(f64, u16)> = pk
                .iter()
                .filter(|(t, _)| *t >= t0 - 0.5 && *t <= t0 + 3.0)
                .collect();
            for p in w.windows(2) {
                worst = worst.max((p[1].0 - p[0].0) * 1000.0);
                let step = p[1].1.wrapping_sub(p[0].1);
                // A step back (reordering) is not a loss; a step over 1000 is a new stream.
                if (2..1000).contains(&step) {
                    *lost += u64::from(step - 1);
                }
            }
        }
        gaps.push(worst);
        for s in &pub_switches {
            if let Some(first) = s.iter().find(|t| **t >= e.at) {
                detect.push((*first - e.at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
    println!(
        "divisor-bench failover: {} rounds; 2 public reflectors, each on int1 then int2; \
         silence 150 ms, edge delay 300 ms",
        args.rounds
    );
    println!();
    println!(
        "  event      n   switch ms p50 / p95 / max     client gap ms p50 / p95 / max   lost pkts"
    );
    for kind in [Kind::Kill, Kind::Cut, Kind::Graceful] {
        let Some((gaps, detect, lost)) = rows.get_mut(&kind) else {
            continue;
        };
        let n = gaps.len();
        let dmax = detect.iter().copied().fold(0.0, f64::max);
        let gmax = gaps.iter().copied().fold(0.0, f64::max);
        println!(
            "  {:<9} {n:>3}   {:>7.1} / {:>7.1} / {:>7.1}     {:>7.1} / {:>7.1} / {:>7.1}   {lost}",
            format!("{kind:?}"),
            pct(detect, 0.5),
            pct(detect, 0.95),
            dmax,
            pct(gaps, 0.5),
            pct(gaps, 0.95),
            gmax,
        );
    }
    for (name, frames, t) in trouble {
        println!("  {name}: {frames} frames decoded, {t} trouble lines");
    }
    Ok(())
}
