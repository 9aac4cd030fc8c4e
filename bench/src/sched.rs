//! The scheduling table (DIVISOR's Table 1 on modern Linux): the protocol unit's real-time
//! sender (`--scheduler rt`) against the plain tokio-timer one (`--scheduler plain`), on a
//! live channel, with a busy loop on the other core and then on the protocol unit's own
//! core. Client-side: mean and variance of frame inter-arrival times, RFC 3550 jitter, p99
//! lateness against the RTCP SR mapping.

use crate::capacity::{self, Bar, Plan};
use crate::run::{workload_setup, Workload};
use crate::servers::{self, Cores, Scenario, UnitArgs};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct SchedRow {
    pub scheduler: String,
    /// Where the busy loop ran.
    pub busy_core: usize,
    pub busy_on: String,
    pub clients: usize,
    pub frame_gap_mean_ms: Option<f64>,
    pub frame_gap_var_ms2: Option<f64>,
    pub jitter_ms: f64,
    pub p99_lateness_ms: Option<f64>,
    pub lost: u64,
    pub protocol_cpu_pct: Option<f64>,
}

/// A `sh` busy loop pinned to one core; killed (by its pid) when dropped.
struct BusyLoop(Child);

impl BusyLoop {
    fn start(core: usize) -> Result<BusyLoop> {
        let child = Command::new("taskset")
            .args(["-c", &core.to_string(), "sh", "-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the busy loop (taskset from util-linux)")?;
        Ok(BusyLoop(child))
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs split-2x1c on a live channel with `clients` clients for each scheduler and each
/// busy-loop placement.
pub fn table(
    cores: Cores,
    library: &Path,
    clients: usize,
    plan: &Plan,
    bar: &Bar,
    tag: &str,
) -> Result<Vec<SchedRow>> {
    let (stream, base) = workload_setup(Workload::Live);
    let other = if cores.protocol == 0 { 1 } else { 0 };
    let mut rows = Vec::new();
    for (busy_core, busy_on) in [(other, "other core"), (cores.protocol, "protocol core")] {
        for mode in ["rt", "plain"] {
            let args = UnitArgs {
                encoder: base.encoder.clone(),
                protocol: vec![
                    "--scheduler".into(),
                    mode.into(),
                    "--rt-core".into(),
                    cores.protocol.to_string().into(),
                ],
            };
            let mut srv =
                servers::start_ours(Scenario::Split2x1c, cores, library, &stream, &args, tag)?;
            let busy = BusyLoop::start(busy_core)?;
            let l = capacity::level(&mut srv, cores, plan, bar, clients, None)?;
            drop(busy);
            eprintln!(
                "scheduler {mode}, busy loop on {busy_on}: {}",
                capacity::level_line(&l)
            );
            rows.push(SchedRow {
                scheduler: mode.into(),
                busy_core,
                busy_on: busy_on.into(),
                clients,
                frame_gap_mean_ms: l.frame_gap_mean_ms,
                frame_gap_var_ms2: l.frame_gap_var_ms2,
                jitter_ms: l.max_jitter_ms,
                p99_lateness_ms: l.p99_lateness_ms,
                lost: l.lost,
                protocol_cpu_pct: l
                    .cpu
                    .units
                    .iter()
                    .find(|u| u.unit == "protocol")
                    .map(|u| u.cpu_pct),
            });
        }
    }
    Ok(rows)
}
