//! Counters and the send-lateness histogram, shared (`Arc`) between the sender thread that
//! updates them and whoever renders them (`/metrics`, the status endpoint, debug logs).
//!
//! The sender never takes a lock per packet: counters are relaxed atomics, and lateness is
//! recorded into a histogram private to the sender thread that is merged into the shared
//! one every [`crate::schedule`] housekeeping tick.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

/// Highest lateness the histogram resolves, in microseconds (10 s); later samples saturate.
pub const LATENESS_MAX_US: u64 = 10_000_000;

/// A send is "late" when it leaves more than this after its deadline.
pub const LATE_THRESHOLD_US: u64 = 2_000;

/// A fresh lateness histogram: 1 µs .. [`LATENESS_MAX_US`], 3 significant digits.
pub fn new_lateness_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, LATENESS_MAX_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

/// Counters of one protocol unit's sender, plus per-client statistics.
pub struct ServerStats {
    /// RTP and RTCP datagrams handed to the kernel (GSO segments counted one by one).
    pub packets: AtomicU64,
    /// Bytes of those datagrams (RTP header + payload).
    pub bytes: AtomicU64,
    /// Frames (VoD or live) sent more than [`LATE_THRESHOLD_US`] after their deadline.
    pub late_sends: AtomicU64,
    /// Datagrams the kernel refused (full buffer, no route) or a full interleaved queue.
    pub drops: AtomicU64,
    /// Send system calls (sendmmsg, or io_uring submissions).
    pub syscalls: AtomicU64,
    /// RTP packets sent again for a NACK.
    pub retransmits: AtomicU64,
    /// RTCP receiver report blocks about our streams, and NACKed packets, from all clients.
    pub receiver_reports: AtomicU64,
    pub nacks_received: AtomicU64,
    /// NACKed packets not retransmitted: too old, or over the client's rate limit.
    pub nacks_refused: AtomicU64,
    /// RTCP datagrams that did not parse.
    pub rtcp_malformed: AtomicU64,
    /// RTCP datagrams from an address that holds no session.
    pub rtcp_strangers: AtomicU64,
    /// SRTCP datagrams that failed authentication (or came before the client's keys).
    pub srtcp_rejected: AtomicU64,
    /// PLI/FIR received, and how many became a keyframe request to the encoder unit.
    pub keyframe_asks: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Send lateness in microseconds (deadline to the send system call), one sample per
    /// frame and client batch.
    pub lateness: Mutex<Histogram<u64>>,
    clients: Mutex<BTreeMap<u64, Arc<ClientStats>>>,
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            late_sends: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            syscalls: AtomicU64::new(0),
            retransmits: AtomicU64::new(0),
            receiver_reports: AtomicU64::new(0),
            nacks_received: AtomicU64::new(0),
            nacks_refused: AtomicU64::new(0),
            rtcp_malformed: AtomicU64::new(0),
            rtcp_strangers: AtomicU64::new(0),
            srtcp_rejected: AtomicU64::new(0),
            keyframe_asks: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
            lateness: Mutex::new(new_lateness_histogram()),
            clients: Mutex::new(BTreeMap::new()),
        }
    }
}

/// A copy of the lateness histogram's main figures, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatenessSummary {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl ServerStats {
    pub fn new() -> Arc<ServerStats> {
        Arc::new(ServerStats::default())
    }

    /// Register the statistics of a new client stream set (one RTSP session).
    pub fn add_client(&self, stats: Arc<ClientStats>) {
        self.clients_lock().insert(stats.id, stats);
    }

    /// Forget a client (its session ended).
    pub fn remove_client(&self, id: u64) {
        self.clients_lock().remove(&id);
    }

    /// Every client's statistics, in client id order.
    pub fn clients(&self) -> Vec<Arc<ClientStats>> {
        self.clients_lock().values().cloned().collect()
    }

    /// Number of registered clients.
    pub fn client_count(&self) -> usize {
        self.clients_lock().len()
    }

    fn clients_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ClientStats>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Merge samples recorded by the sender thread.
    pub fn merge_lateness(&self, local: &Histogram<u64>) {
        let mut h = self.lateness.lock().unwrap_or_else(|p| p.into_inner());
        // Same bounds on both sides: adding cannot fail; if it did, the samples are lost,
        // which only under-reports.
        let _ = h.add(local);
    }

    /// p50/p99/p99.9/max of the send lateness so far.
    pub fn lateness_summary(&self) -> LatenessSummary {
        let h = self.lateness.lock().unwrap_or_else(|p| p.into_inner());
        LatenessSummary {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// One line for the debug log.
    pub fn summary_line(&self) -> String {
        let l = self.lateness_summary();
        format!(
            "clients={} packets={} bytes={} syscalls={} drops={} late={} retransmits={} \
             lateness_us p50={} p99={} p999={} max={} (n={})",
            self.client_count(),
            self.packets.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.syscalls.load(Ordering::Relaxed),
            self.drops.load(Ordering::Relaxed),
            self.late_sends.load(Ordering::Relaxed),
            self.retransmits.load(Ordering::Relaxed),
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            l.samples
        )
    }
}

/// What one client (RTSP session) got and what its receiver reports say.
///
/// Written by the sender thread (counters) and by the RTCP reader (reception figures);
/// read by `/metrics`. All fields are relaxed atomics: each is meaningful on its own.
pub struct ClientStats {
    /// Unique id (the fan-out client id).
    pub id: u64,
    /// RTSP session id, for the status endpoint.
    pub session: String,
    /// What it plays (`vod/<asset>` or `live/<channel>/<rendition>`).
    pub stream: String,
    /// Where its RTP goes (text), for the status endpoint.
    pub peer: String,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Datagrams that could not be sent to it (kernel refused, interleaved queue full).
    pub drops: AtomicU64,
    pub retransmits: AtomicU64,
    pub nacks_received: AtomicU64,
    pub nacks_refused: AtomicU64,
    pub keyframe_asks: AtomicU64,
    pub receiver_reports: AtomicU64,
    /// Latest receiver report: fraction lost (/256), cumulative lost, jitter (RTP units of
    /// the reported stream's clock), round-trip time in µs (-1 = unknown).
    pub fraction_lost: AtomicU32,
    pub cumulative_lost: AtomicI64,
    pub jitter: AtomicU32,
    /// Clock rate of the stream `jitter` is in, to convert it to seconds.
    pub jitter_clock_rate: AtomicU32,
    pub rtt_us: AtomicI64,
}

impl ClientStats {
    pub fn new(id: u64, session: &str, stream: &str, peer: &str) -> Arc<ClientStats> {
        Arc::new(ClientStats {
            id,
            session: session.to_string(),
            stream: stream.to_string(),
            peer: peer.to_string(),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            retransmits: AtomicU64::new(0),
            nacks_received: AtomicU64::new(0),
            nacks_refused: AtomicU64::new(0),
            keyframe_asks: AtomicU64::new(0),
            receiver_reports: AtomicU64::new(0),
            fraction_lost: AtomicU32::new(0),
            cumulative_lost: AtomicI64::new(0),
            jitter: AtomicU32::new(0),
            jitter_clock_rate: AtomicU32::new(0),
            rtt_us: AtomicI64::new(-1),
        })
    }

    /// Interarrival jitter of the latest report in seconds, if known.
    pub fn jitter_seconds(&self) -> Option<f64> {
        let rate = self.jitter_clock_rate.load(Ordering::Relaxed);
        (rate > 0).then(|| f64::from(self.jitter.load(Ordering::Relaxed)) / f64::from(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_merges_and_summarises() {
        let s = ServerStats::new();
        let mut local = new_lateness_histogram();
        for v in [10u64, 20, 30, 5000] {
            local.record(v).unwrap();
        }
        s.merge_lateness(&local);
        let l = s.lateness_summary();
        assert_eq!(l.samples, 4);
        assert!(l.max_us >= 4990);
        assert!(s.summary_line().contains("p99="));
    }

    #[test]
    fn clients_register_and_leave() {
        let s = ServerStats::new();
        s.add_client(ClientStats::new(7, "S", "live/x/", "1.2.3.4:5"));
        assert_eq!(s.client_count(), 1);
        s.remove_client(7);
        assert!(s.clients().is_empty());
    }
}
