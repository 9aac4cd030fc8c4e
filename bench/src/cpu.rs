//! CPU accounting: per process from `/proc/<pid>/stat` (user + system time of all its
//! threads) and per core from `/proc/stat` (everything, softirq included, which is where
//! much of the UDP send path is charged), with the time the hypervisor stole from each
//! core: on a shared VM a window with seconds of steal fails the lateness bar whatever
//! the code does, and the report says so.

use serde::Serialize;
use std::fs;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system seconds `pid` has used, or `None` when it is gone.
pub fn process_seconds(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are plain.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// Process ids living in network namespace `ns` (`ip netns pids`).
pub fn pids_in_ns(ns: &str) -> Vec<u32> {
    std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Tick counts of one core from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTicks {
    /// Everything but idle and iowait (steal included: the core was not ours to use).
    pub busy: u64,
    pub total: u64,
    /// Time the hypervisor ran something else on this virtual core.
    pub steal: u64,
}

/// Ticks of every core from `/proc/stat`.
pub fn core_ticks() -> Vec<CoreTicks> {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait are not busy.
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            CoreTicks {
                busy: total - idle.min(total),
                total,
                steal: v.get(7).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// A CPU sample at the start of a window.
#[derive(Debug, Clone)]
pub struct Sample {
    procs: Vec<(String, Vec<(u32, f64)>)>,
    cores: Vec<CoreTicks>,
    at: std::time::Instant,
}

/// CPU used over a window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Usage {
    /// Per unit: percent of one core (100 = one core fully busy).
    pub units: Vec<UnitCpu>,
    /// Per core: percent busy (all processes and interrupts).
    pub cores_busy_pct: Vec<f64>,
    /// Per core: milliseconds the hypervisor stole during the window.
    pub cores_steal_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitCpu {
    pub unit: String,
    pub cpu_pct: f64,
}

/// Samples the processes of each `(unit name, pids)` and the cores.
pub fn sample(units: &[(String, Vec<u32>)]) -> Sample {
    Sample {
        procs: units
            .iter()
            .map(|(n, pids)| {
                (
                    n.clone(),
                    pids.iter()
                        .filter_map(|&p| process_seconds(p).map(|s| (p, s)))
                        .collect(),
                )
            })
            .collect(),
        cores: core_ticks(),
        at: std::time::Instant::now(),
    }
}

impl Sample {
    /// CPU used since this sample.
    pub fn usage(&self) -> Usage {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let units = self
            .procs
            .iter()
            .map(|(n, pids)| {
                let used: f64 = pids
                    .iter()
                    .filter_map(|&(p, before)| process_seconds(p).map(|now| now - before))
                    .sum();
                UnitCpu {
                    unit: n.clone(),
                    cpu_pct: used / secs * 100.0,
                }
            })
            .collect();
        let now = core_ticks();
        let cores_busy_pct = self
            .cores
            .iter()
            .zip(now.iter())
            .map(|(a, b)| {
                let dt = b.total.saturating_sub(a.total).max(1);
                b.busy.saturating_sub(a.busy) as f64 / dt as f64 * 100.0
            })
            .collect();
        let cores_steal_ms = self
            .cores
            .iter()
            .zip(now.iter())
            .map(|(a, b)| b.steal.saturating_sub(a.steal) as f64 / clk_tck() * 1000.0)
            .collect();
        Usage {
            units,
            cores_busy_pct,
            cores_steal_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let me = std::process::id();
        let a = process_seconds(me).expect("own stat");
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(process_seconds(me).unwrap() >= a);
        assert!(!core_ticks().is_empty());
        let _ = x;
    }
}
