//! The run's Markdown summary: capacity table, ratios, probe comparison.

use crate::capacity::Search;
use crate::run::RunResults;
use std::fmt::Write;

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn ratio(a: usize, b: usize) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}", a as f64 / b as f64)
    }
}

fn find<'a>(r: &'a RunResults, server: &str, workload: &str) -> Option<&'a Search> {
    r.searches
        .iter()
        .find(|s| s.server == server && s.workload == workload)
}

pub fn markdown(r: &RunResults) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "### divisor-bench {:?} ({})", r.mode, r.started_utc);
    let _ = writeln!(
        m,
        "\nMachine: {} CPUs ({}), Linux {}. Command: `{}`\n",
        r.machine.cpus, r.machine.cpu_model, r.machine.kernel, r.command
    );
    let _ = writeln!(m, "Quality bar: {}.\n", r.bar_text);
    let _ = writeln!(m, "Load: {}\n", r.load_note);
    let _ = writeln!(
        m,
        "Ramp: start {}, doubling to at most {}, {} bisection steps; {} measuring receivers; {} s settle + {} s window per level.\n",
        r.plan.start, r.plan.max, r.plan.bisect, r.plan.measure_receivers, r.plan.settle_secs, r.plan.window_secs
    );
    let _ = writeln!(
        m,
        "| server | workload | pinning | max clients | p50 / p99 lateness (ms) | server p99 send lateness (ms) | max jitter (ms) | CPU per unit at max (% of a core) | cores busy (%) |"
    );
    let _ = writeln!(m, "|---|---|---|---:|---|---:|---:|---|---|");
    for s in &r.searches {
        let best = s.best();
        let cpu = best
            .map(|l| {
                l.cpu
                    .units
                    .iter()
                    .map(|u| format!("{} {:.0}", u.unit, u.cpu_pct))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".into());
        let cores = best
            .map(|l| {
                l.cpu
                    .cores_busy_pct
                    .iter()
                    .map(|c| format!("{c:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            s.server,
            s.workload,
            s.pinning,
            s.max_clients,
            f(best.and_then(|l| l.p50_lateness_ms), 2),
            f(best.and_then(|l| l.p99_lateness_ms), 2),
            f(best.and_then(|l| l.server_p99_send_lateness_ms), 2),
            f(best.map(|l| l.max_jitter_ms), 2),
            cpu,
            cores
        );
    }
    let _ = writeln!(
        m,
        "\nFailing levels of each search (with any time the hypervisor stole in the window):\n"
    );
    for s in &r.searches {
        let failed: Vec<_> = s.levels.iter().filter(|l| !l.pass).collect();
        if failed.is_empty() {
            let _ = writeln!(
                m,
                "- {} {}: no level failed (raise --max)",
                s.server, s.workload
            );
        }
        for l in failed {
            let _ = writeln!(
                m,
                "- {} {}: N={} — {}{}",
                s.server,
                s.workload,
                l.clients,
                l.reasons.join("; "),
                crate::capacity::steal_note(&l.cpu)
            );
        }
    }
    let mut workloads: Vec<&str> = r.searches.iter().map(|s| s.workload.as_str()).collect();
    workloads.dedup();
    let _ = writeln!(m, "\nRatios (max clients):\n");
    let _ = writeln!(m, "| workload | split-2x1c / mono-1c | split-2x1c / mono-2c | ours / gst-rtsp-server | ours / ffmpeg |");
    let _ = writeln!(m, "|---|---:|---:|---|---|");
    for w in workloads {
        let n = |s: &str| find(r, s, w).map(|x| x.max_clients);
        let split = n("split-2x1c");
        let vs = |peer: &str| -> String {
            let Some(p) = n(peer) else { return "-".into() };
            ["mono-1c", "split-2x1c", "mono-2c"]
                .iter()
                .filter_map(|s| n(s).map(|v| format!("{s} {}", ratio(v, p))))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            m,
            "| {w} | {} | {} | {} | {} |",
            split
                .zip(n("mono-1c"))
                .map(|(a, b)| ratio(a, b))
                .unwrap_or("-".into()),
            split
                .zip(n("mono-2c"))
                .map(|(a, b)| ratio(a, b))
                .unwrap_or("-".into()),
            vs("gst-rtsp-server"),
            vs("ffmpeg")
        );
    }
    if !r.probe.is_empty() {
        let _ = writeln!(
            m,
            "\nRaw sendmmsg probe on the protocol core ({} B datagrams, the mean of the server's \
             packets, to the load clients' ports):\n",
            r.probe[0].datagram_bytes
        );
        let _ = writeln!(m, "| probe | packets/s | Gbit/s | = clients of 1 Mbit/s |");
        let _ = writeln!(m, "|---|---:|---:|---:|");
        for p in &r.probe {
            let _ = writeln!(
                m,
                "| sendmmsg{} | {:.0} | {:.2} | {:.0} |",
                if p.gso { " + GSO x4" } else { "" },
                p.packets_per_s,
                p.gbit_per_s,
                p.clients_1mbps
            );
        }
        let _ = writeln!(
            m,
            "\nOur packet rate at max clients as a share of the probe's (goal >= 70 %):\n"
        );
        for s in r
            .searches
            .iter()
            .filter(|s| !s.server.contains("gst") && s.server != "ffmpeg")
        {
            let Some(best) = s.best() else { continue };
            let pps = best.packets_per_s_per_client * s.max_clients as f64;
            let shares: Vec<String> = r
                .probe
                .iter()
                .map(|p| {
                    format!(
                        "{:.1} % of sendmmsg{}",
                        pps / p.packets_per_s.max(1.0) * 100.0,
                        if p.gso { "+GSO" } else { "" }
                    )
                })
                .collect();
            let _ = writeln!(
                m,
                "- {} {}: {} clients x {:.0} packets/s = {:.0} packets/s: {}",
                s.server,
                s.workload,
                s.max_clients,
                best.packets_per_s_per_client,
                pps,
                shares.join(", ")
            );
        }
    }
    if !r.scheduling.is_empty() {
        let _ = writeln!(
            m,
            "\nScheduling (split-2x1c, live channel, busy loop on a core; client-side figures):\n"
        );
        let _ = writeln!(m, "| scheduler | busy loop on | clients | frame inter-arrival mean (ms) | variance (ms²) | jitter (ms) | p99 lateness (ms) | lost | protocol CPU (%) |");
        let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in &r.scheduling {
            let _ = writeln!(
                m,
                "| {} | {} (core {}) | {} | {} | {} | {:.3} | {} | {} | {} |",
                row.scheduler,
                row.busy_on,
                row.busy_core,
                row.clients,
                f(row.frame_gap_mean_ms, 3),
                f(row.frame_gap_var_ms2, 4),
                row.jitter_ms,
                f(row.p99_lateness_ms, 3),
                row.lost,
                f(row.protocol_cpu_pct, 0)
            );
        }
    }
    m
}
