//! A node's own figures for one statistics period: CPU load of this process, viewers and
//! egress, and per channel its viewers' inter-arrival jitter and cumulative loss, read
//! from the RTCP receiver reports the protocol unit's front-end keeps per client.

use std::collections::BTreeMap;

use divisor_protocol::metrics::ClientStatus;
use divisor_protocol::server::FrontEnd;

use crate::control::{ChannelStats, Stats};
use crate::driver::Reflector;

/// Turns counters into per-period figures (rates need the previous sample).
pub struct Sampler {
    id: String,
    node: Reflector,
    front: Option<FrontEnd>,
    last_cpu_ticks: Option<u64>,
    last_bytes: Option<u64>,
}

impl Sampler {
    pub fn new(id: &str, node: Reflector, front: Option<FrontEnd>) -> Sampler {
        Sampler {
            id: id.to_string(),
            node,
            front,
            last_cpu_ticks: None,
            last_bytes: None,
        }
    }

    /// The figures of `start_ms..end_ms`. Rates (CPU, egress) cover the time since the
    /// previous call.
    pub fn sample(&mut self, start_ms: u64, end_ms: u64) -> Stats {
        let secs = (end_ms.saturating_sub(start_ms) as f64 / 1000.0).max(0.001);
        let cpu = process_cpu_ticks();
        let cpu_load = match (cpu, self.last_cpu_ticks) {
            (Some(now), Some(before)) => now.saturating_sub(before) as f64 / clock_ticks() / secs,
            _ => 0.0,
        };
        self.last_cpu_ticks = cpu;
        let (viewers, bytes, channels) = match &self.front {
            Some(f) => viewer_figures(&f.metrics.client_statuses()),
            None => {
                // A reflector without viewers: its egress is what it relays to children.
                let snap = self.node.snapshot();
                let bytes = snap.channels.iter().map(|c| c.counters.bytes_out).sum();
                (0, bytes, Vec::new())
            }
        };
        let egress_bps = match self.last_bytes {
            Some(before) => (bytes.saturating_sub(before) as f64 * 8.0 / secs) as u64,
            None => 0,
        };
        self.last_bytes = Some(bytes);
        Stats {
            node: self.id.clone(),
            start_ms,
            end_ms,
            descendants: 0,
            cpu_load,
            viewers,
            egress_bps,
            channels,
        }
    }
}

/// Viewers, bytes sent to them so far, and per-channel figures, from the front-end's
/// clients. A channel's jitter is the mean over its clients that sent a receiver report.
pub fn viewer_figures(clients: &[ClientStatus]) -> (u64, u64, Vec<ChannelStats>) {
    // channel -> (viewers, jitter sum, jitter reports, lost)
    let mut by: BTreeMap<String, (u64, f64, u64, u64)> = BTreeMap::new();
    let mut bytes = 0;
    for c in clients {
        bytes += c.bytes;
        let e = by.entry(channel_of(&c.stream)).or_default();
        e.0 += 1;
        if let Some(j) = c.jitter_seconds {
            e.1 += j * 1000.0;
            e.2 += 1;
        }
        e.3 += u64::try_from(c.cumulative_lost.max(0)).unwrap_or(0);
    }
    let channels = by
        .into_iter()
        .map(|(id, (viewers, js, jn, lost))| ChannelStats {
            id,
            viewers,
            jitter_ms: if jn > 0 { js / jn as f64 } else { 0.0 },
            cum_lost: lost,
        })
        .collect();
    (clients.len() as u64, bytes, channels)
}

/// `live/NAME/...` → `NAME`; anything else as it is.
fn channel_of(stream: &str) -> String {
    let s = stream.trim_matches('/');
    let s = s.strip_prefix("live/").unwrap_or(s);
    s.split('/').next().unwrap_or(s).to_string()
}

/// User plus system CPU time of this process, in clock ticks (`/proc/self/stat`).
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(stream: &str, jitter: Option<f64>, lost: i64, bytes: u64) -> ClientStatus {
        ClientStatus {
            session: "s".into(),
            stream: stream.into(),
            peer: "p".into(),
            packets: 0,
            bytes,
            drops: 0,
            retransmits: 0,
            nacks_received: 0,
            receiver_reports: 1,
            fraction_lost: 0.0,
            cumulative_lost: lost,
            jitter_seconds: jitter,
            rtt_seconds: None,
        }
    }

    #[test]
    fn figures_per_channel_from_receiver_reports() {
        let (viewers, bytes, ch) = viewer_figures(&[
            client("live/cam/", Some(0.002), 3, 100),
            client("live/cam/low", Some(0.004), -1, 50),
            client("live/cam", None, 0, 10),
            client("live/news/", Some(0.010), 0, 1),
        ]);
        assert_eq!((viewers, bytes), (4, 161));
        assert_eq!(ch.len(), 2);
        assert_eq!(ch[0].id, "cam");
        assert_eq!((ch[0].viewers, ch[0].cum_lost), (3, 3));
        assert!((ch[0].jitter_ms - 3.0).abs() < 1e-9);
        assert_eq!(ch[1].id, "news");
    }

    #[test]
    fn cpu_ticks_are_readable() {
        assert!(process_cpu_ticks().is_some());
    }
}
