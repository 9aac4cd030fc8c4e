//! Capacity search: ramp the number of clients N (doubling, then bisecting) to the largest
//! N whose measuring receivers meet the quality bar.

use crate::cpu::{self, Usage};
use crate::decrypt::KeySource;
use crate::nft;
use crate::receiver::Receiver;
use crate::servers::{Cores, Server};
use crate::stats::{mean_var, percentile};
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::thread;
use std::time::Duration;

/// The quality bar a level must keep.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bar {
    /// p99 lateness against the sender-report clock mapping, at most (ms).
    pub max_p99_lateness_ms: f64,
    /// RFC 3550 interarrival jitter at every measuring receiver, at most (ms).
    pub max_jitter_ms: f64,
    /// p99 of the server's own send lateness (deadline to send call) over the window, at
    /// most (ms). Issue 4's bar; only servers that export the histogram (ours) are held
    /// to it.
    pub max_p99_send_lateness_ms: f64,
}

impl Bar {
    pub fn describe(&self) -> String {
        format!(
            "zero loss at every measuring receiver, p99 lateness <= {} ms, RFC 3550 jitter <= {} ms, every session set up; for our units also p99 send lateness <= {} ms (their /metrics histogram)",
            self.max_p99_lateness_ms, self.max_jitter_ms, self.max_p99_send_lateness_ms
        )
    }
}

/// How to ramp.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub start: usize,
    pub max: usize,
    /// Bisection steps after the first failing level.
    pub bisect: usize,
    pub measure_receivers: usize,
    /// Seconds between opening the sessions and the start of the window.
    pub settle_secs: f64,
    pub window_secs: f64,
}

/// One measured level.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub clients: usize,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub pass: bool,
    /// Why it failed the bar (empty when it passed).
    pub reasons: Vec<String>,
    pub received: u64,
    /// Packets lost, plus frames that failed to decrypt (encrypted workloads): a frame a
    /// client cannot decrypt is lost to it.
    pub lost: u64,
    /// Encrypted workloads: frames the measuring receivers decrypted and verified, and
    /// frames that failed (also counted in `lost`). Both 0 for clear workloads.
    pub decrypted_frames: u64,
    pub decrypt_failures: u64,
    pub max_jitter_ms: f64,
    pub p50_lateness_ms: Option<f64>,
    pub p99_lateness_ms: Option<f64>,
    pub max_lateness_ms: Option<f64>,
    /// p99 send lateness the server itself measured over the window (ms; bucket upper
    /// bound), when it exports it.
    pub server_p99_send_lateness_ms: Option<f64>,
    /// Mean and variance of the gaps between frame arrivals (ms, ms^2).
    pub frame_gap_mean_ms: Option<f64>,
    pub frame_gap_var_ms2: Option<f64>,
    /// Packets per second one measuring receiver got (to relate clients to packet rates).
    pub packets_per_s_per_client: f64,
    /// Mean UDP payload of those packets (bytes): the size the raw probe sends, so that
    /// server and probe are compared on equal datagrams.
    pub bytes_per_packet: f64,
    /// Packets the client namespace's drop rule discarded during the window.
    pub dropped_at_ingress: u64,
    pub cpu: Usage,
    /// Lateness samples of the window (ms), for the distribution plot.
    #[serde(skip)]
    pub lateness_ms: Vec<f64>,
}

/// Result of a search on one server.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    pub server: String,
    pub workload: String,
    pub pinning: String,
    /// Largest N that kept the bar (0 when even the first level failed).
    pub max_clients: usize,
    pub levels: Vec<Level>,
}

impl Search {
    /// The level at `max_clients`, if any passed.
    pub fn best(&self) -> Option<&Level> {
        self.levels
            .iter()
            .filter(|l| l.pass)
            .max_by_key(|l| l.clients)
    }
}

/// Runs one level with `n` clients.
pub fn level(
    server: &mut dyn Server,
    cores: Cores,
    plan: &Plan,
    bar: &Bar,
    n: usize,
    keys: Option<&KeySource>,
) -> Result<Level> {
    if n == 0 {
        bail!("a level needs at least one client (N = 0 given)");
    }
    let m = plan.measure_receivers.clamp(1, n);
    let measure: Vec<u16> = (0..m).map(nft::measure_port).collect();
    let load: Vec<u16> = (0..n - m).map(nft::load_port).collect();
    let client_ns = server.topo().client_ns.clone();
    let client_ip = server.topo().client_ip;
    let receivers: Vec<Receiver> = measure
        .iter()
        .map(|&p| {
            Receiver::start(
                &client_ns,
                client_ip,
                p,
                90_000,
                Some(cores.load),
                keys.cloned(),
            )
        })
        .collect::<Result<_>>()?;
    let opened = server.open(&measure, &load)?;
    if opened.clock_rate != 90_000 {
        // Receivers were created for 90 kHz video; anything else would skew jitter.
        bail!("video clock rate {} (expected 90000)", opened.clock_rate);
    }
    thread::sleep(Duration::from_secs_f64(plan.settle_secs));
    for r in &receivers {
        r.reset();
    }
    let dropped0 = nft::dropped_packets(&client_ns);
    let lateness0 = server.send_lateness()?;
    let sample = cpu::sample(&server.units());
    thread::sleep(Duration::from_secs_f64(plan.window_secs));
    let usage = sample.usage();
    let server_p99 = match (server.send_lateness()?, lateness0) {
        (Some(after), Some(before)) => after.since(&before).percentile_ms(99.0),
        _ => None,
    };
    let reports: Vec<_> = receivers.iter().map(|r| r.report()).collect();
    let dropped = nft::dropped_packets(&client_ns).saturating_sub(dropped0);
    drop(receivers);
    server.close()?;
    thread::sleep(Duration::from_millis(500));

    let received: u64 = reports.iter().map(|r| r.received).sum();
    let received_bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    let decrypted: u64 = reports.iter().map(|r| r.decrypted_frames).sum();
    let decrypt_failures: u64 = reports.iter().map(|r| r.decrypt_failures).sum();
    let lost: u64 = reports.iter().map(|r| r.lost).sum::<u64>() + decrypt_failures;
    let max_jitter = reports.iter().map(|r| r.jitter_ms).fold(0.0, f64::max);
    let lateness: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.lateness_ms.iter().copied())
        .collect();
    let gaps: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.frame_gaps_ms.iter().copied())
        .collect();
    let p99 = percentile(&lateness, 99.0);
    let mut reasons = Vec::new();
    if opened.failed > 0 {
        reasons.push(format!(
            "{} of {n} sessions failed to start ({})",
            opened.failed,
            opened.first_error.clone().unwrap_or_default()
        ));
    }
    if reports.iter().any(|r| r.received == 0) {
        reasons.push("a measuring receiver got no packets".into());
    }
    if decrypt_failures > 0 {
        reasons.push(format!("{decrypt_failures} frames failed to decrypt"));
    }
    if lost > decrypt_failures {
        reasons.push(format!("{} packets lost", lost - decrypt_failures));
    }
    if keys.is_some() && decrypted == 0 {
        reasons.push("encrypted workload but no frame was decrypted".into());
    }
    match p99 {
        Some(p) if p > bar.max_p99_lateness_ms => reasons.push(format!(
            "p99 lateness {p:.2} ms > {} ms",
            bar.max_p99_lateness_ms
        )),
        None => reasons.push("no RTCP sender report: lateness unknown".into()),
        _ => {}
    }
    if let Some(p) = server_p99.filter(|&p| p > bar.max_p99_send_lateness_ms) {
        reasons.push(format!(
            "server p99 send lateness {p} ms > {} ms",
            bar.max_p99_send_lateness_ms
        ));
    }
    if max_jitter > bar.max_jitter_ms {
        reasons.push(format!(
            "jitter {max_jitter:.2} ms > {} ms",
            bar.max_jitter_ms
        ));
    }
    let (gap_mean, gap_var) = mean_var(&gaps).unzip();
    Ok(Level {
        clients: n,
        opened: opened.opened,
        failed: opened.failed,
        first_error: opened.first_error,
        pass: reasons.is_empty(),
        reasons,
        received,
        lost,
        decrypted_frames: decrypted,
        decrypt_failures,
        max_jitter_ms: max_jitter,
        p50_lateness_ms: percentile(&lateness, 50.0),
        p99_lateness_ms: p99,
        max_lateness_ms: percentile(&lateness, 100.0),
        server_p99_send_lateness_ms: server_p99,
        frame_gap_mean_ms: gap_mean,
        frame_gap_var_ms2: gap_var,
        packets_per_s_per_client: received as f64 / m as f64 / plan.window_secs,
        bytes_per_packet: received_bytes as f64 / received.max(1) as f64,
        dropped_at_ingress: dropped,
        cpu: usage,
        lateness_ms: lateness,
    })
}

/// Ramps N on `server`: doubling from `plan.start` until a level fails or `plan.max` is
/// reached, then bisecting between the last pass and the first failure.
pub fn search(
    server: &mut dyn Server,
    workload: &str,
    cores: Cores,
    plan: &Plan,
    bar: &Bar,
    keys: Option<&KeySource>,
) -> Result<Search> {
    if plan.start == 0 || plan.max == 0 {
        bail!("client counts must be at least 1 (got start {}, max {}): pass --start N / --max N with N >= 1", plan.start, plan.max);
    }
    let label = server.label();
    let pb = ProgressBar::new(plan.max as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] N={pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("{label} {workload}"));
    let mut levels = Vec::new();
    let (mut best, mut fail) = (0usize, None::<usize>);
    let mut n = plan.start.min(plan.max);
    loop {
        pb.set_position(n as u64);
        pb.set_message("measuring");
        let l = level(server, cores, plan, bar, n, keys)?;
        pb.set_message(if l.pass {
            format!(
                "N={n} ok (p99 {:.2} ms)",
                l.p99_lateness_ms.unwrap_or(f64::NAN)
            )
        } else {
            format!("N={n} FAIL: {}", l.reasons.join("; "))
        });
        if pb.is_hidden() {
            eprintln!("{label} {workload}: {}", level_line(&l));
        }
        let pass = l.pass;
        levels.push(l);
        if pass {
            best = n;
            if n >= plan.max {
                break;
            }
            n = (n * 2).min(plan.max);
        } else {
            fail = Some(n);
            break;
        }
    }
    if let Some(mut hi) = fail {
        for _ in 0..plan.bisect {
            let mid = (best + hi) / 2;
            if mid <= best || mid == 0 {
                break;
            }
            pb.set_position(mid as u64);
            let l = level(server, cores, plan, bar, mid, keys)?;
            if pb.is_hidden() {
                eprintln!("{label} {workload}: {}", level_line(&l));
            }
            if l.pass {
                best = mid;
            } else {
                hi = mid;
            }
            levels.push(l);
        }
    }
    pb.finish_with_message(format!("max clients {best}"));
    levels.sort_by_key(|l| l.clients);
    Ok(Search {
        server: label,
        workload: workload.to_string(),
        pinning: server.pinning(),
        max_clients: best,
        levels,
    })
}

/// ", hypervisor steal 0 / 279 ms (cores 0 / 1)" when the VM lost any time in the window,
/// else nothing.
pub fn steal_note(cpu: &Usage) -> String {
    if cpu.cores_steal_ms.iter().all(|&ms| ms < 0.5) {
        return String::new();
    }
    let ms: Vec<String> = cpu
        .cores_steal_ms
        .iter()
        .map(|ms| format!("{ms:.0}"))
        .collect();
    let cores: Vec<String> = (0..ms.len()).map(|c| c.to_string()).collect();
    format!(
        ", hypervisor steal {} ms (cores {})",
        ms.join(" / "),
        cores.join(" / ")
    )
}

/// One line per level for logs (when no progress bar is shown).
pub fn level_line(l: &Level) -> String {
    let cpu: Vec<String> = l
        .cpu
        .units
        .iter()
        .map(|u| format!("{} {:.0}%", u.unit, u.cpu_pct))
        .collect();
    format!(
        "N={} {} (received {}, lost {}{}, p99 lateness {} ms, server p99 send lateness {} ms, jitter {:.2} ms, CPU {}{}){}",
        l.clients,
        if l.pass { "ok" } else { "FAIL" },
        l.received,
        l.lost,
        if l.decrypted_frames + l.decrypt_failures > 0 {
            format!(
                ", decrypted {} frames, {} failed",
                l.decrypted_frames, l.decrypt_failures
            )
        } else {
            String::new()
        },
        l.p99_lateness_ms
            .map(|p| format!("{p:.2}"))
            .unwrap_or("-".into()),
        l.server_p99_send_lateness_ms
            .map(|p| format!("{p}"))
            .unwrap_or("-".into()),
        l.max_jitter_ms,
        cpu.join(", "),
        steal_note(&l.cpu),
        if l.pass {
            String::new()
        } else {
            format!(": {}", l.reasons.join("; "))
        }
    )
}
