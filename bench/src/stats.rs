//! Receive-side quality of one RTP stream, sans-IO: feed it packets with their arrival
//! time and the stream's RTCP sender reports, read loss, RFC 3550 jitter and lateness.
//!
//! Lateness of a packet is its arrival time minus the wall time its RTP timestamp maps to
//! through the sender's RTCP SR (NTP time, RTP time) pair: the media-time deadline the
//! server itself announced. Both clocks are CLOCK_REALTIME of the same machine (the
//! namespaces share it), so no clock offset has to be estimated.

use serde::Serialize;

/// The fields of an RTP fixed header the receiver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpInfo {
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Reads the RTP fixed header (RFC 3550 section 5.1) in place. Hand-parsed on purpose:
/// the receiver needs three fields of every packet at full rate and must not allocate.
pub fn parse_rtp(p: &[u8]) -> Option<RtpInfo> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    Some(RtpInfo {
        seq: u16::from_be_bytes([p[2], p[3]]),
        timestamp: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
    })
}

/// An RTCP sender report's clock mapping: `ntp_ns` (Unix time, ns) is when the media
/// clock read `rtp_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrMapping {
    pub ntp_ns: i128,
    pub rtp_time: u32,
}

/// Seconds between 1900 (NTP era 0) and 1970 (Unix).
const NTP_UNIX_OFFSET: i128 = 2_208_988_800;

/// The sender report in an RTCP compound packet, if any (parsed with the `rtcp` crate;
/// malformed packets give `None`).
pub fn parse_sr(p: &[u8]) -> Option<SrMapping> {
    let mut buf = bytes::Bytes::copy_from_slice(p);
    let packets = rtcp::packet::unmarshal(&mut buf).ok()?;
    packets.iter().find_map(|pkt| {
        pkt.as_any()
            .downcast_ref::<rtcp::sender_report::SenderReport>()
            .map(|sr| SrMapping {
                ntp_ns: ntp_to_unix_ns(sr.ntp_time),
                rtp_time: sr.rtp_time,
            })
    })
}

/// 64-bit NTP timestamp (32.32 fixed point since 1900) to Unix nanoseconds.
pub fn ntp_to_unix_ns(ntp: u64) -> i128 {
    let secs = (ntp >> 32) as i128 - NTP_UNIX_OFFSET;
    let frac = (ntp & 0xffff_ffff) as i128;
    secs * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)
}

/// Accumulates one stream's quality over a measurement window.
#[derive(Debug, Clone)]
pub struct StreamStats {
    clock_rate: u32,
    /// Highest extended sequence number seen, and the first one.
    first_ext: Option<u64>,
    max_ext: u64,
    received: u64,
    /// Out-of-order or duplicate arrivals (not counted as loss).
    reordered: u64,
    /// RFC 3550 A.8 state: previous transit time (clock units) and jitter (clock units).
    prev_transit: Option<f64>,
    jitter: f64,
    /// Arrival time of the first packet: transit times are taken relative to it so the
    /// f64 arithmetic keeps sub-microsecond precision.
    first_arrival_ns: Option<i128>,
    /// Packet arrivals kept to compute lateness once sender reports are known:
    /// (arrival ns, RTP timestamp).
    arrivals: Vec<(i128, u32)>,
    /// Sender reports with their arrival time (ns), in arrival order.
    srs: Vec<(i128, SrMapping)>,
    bytes: u64,
}

/// What one stream measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StreamReport {
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub reordered: u64,
    pub bytes: u64,
    /// RFC 3550 interarrival jitter at the end of the window, milliseconds.
    pub jitter_ms: f64,
    /// Lateness of every packet against the sender-report mapping, milliseconds
    /// (empty when no sender report arrived).
    #[serde(skip)]
    pub lateness_ms: Vec<f64>,
    /// Gaps between arrivals of consecutive frames (packets with a new RTP timestamp), ms.
    #[serde(skip)]
    pub frame_gaps_ms: Vec<f64>,
    /// Encrypted workloads: frames decrypted and verified by the receiver.
    pub decrypted_frames: u64,
    /// Encrypted workloads: complete frames that failed to decrypt or verify.
    pub decrypt_failures: u64,
}

impl StreamStats {
    pub fn new(clock_rate: u32) -> StreamStats {
        StreamStats {
            clock_rate: clock_rate.max(1),
            first_ext: None,
            max_ext: 0,
            received: 0,
            reordered: 0,
            prev_transit: None,
            jitter: 0.0,
            first_arrival_ns: None,
            arrivals: Vec::new(),
            srs: Vec::new(),
            bytes: 0,
        }
    }

    /// One RTP packet of `len` bytes arrived at `arrival_ns` (Unix ns).
    pub fn on_rtp(&mut self, info: RtpInfo, len: usize, arrival_ns: i128) {
        self.received += 1;
        self.bytes += len as u64;
        match self.first_ext {
            None => {
                let e = 1u64 << 16 | info.seq as u64;
                self.first_ext = Some(e);
                self.max_ext = e;
            }
            Some(_) => {
                // Nearest extension of `seq` to the highest seen (RFC 3550 A.1 in spirit).
                let cycle = self.max_ext & !0xffff;
                let cands = [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)];
                let e = cands
                    .iter()
                    .map(|c| c | info.seq as u64)
                    .min_by_key(|e| e.abs_diff(self.max_ext))
                    .unwrap_or(cycle | info.seq as u64);
                if e > self.max_ext {
                    self.max_ext = e;
                } else {
                    self.reordered += 1;
                }
            }
        }
        // RFC 3550 A.8: transit = arrival (in clock units) - timestamp.
        let since_first = arrival_ns - *self.first_arrival_ns.get_or_insert(arrival_ns);
        let arrival_units = since_first as f64 * self.clock_rate as f64 / 1e9;
        let transit = arrival_units - info.timestamp as f64;
        if let Some(prev) = self.prev_transit {
            let mut d = (transit - prev).abs();
            // Timestamps wrap at 2^32: a jump that large is a wrap, not jitter.
            if d > (1u64 << 31) as f64 {
                d = (d - (1u64 << 32) as f64).abs();
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.prev_transit = Some(transit);
        self.arrivals.push((arrival_ns, info.timestamp));
    }

    /// Starts a new measurement window: forgets packets and counters but keeps the sender
    /// reports (some senders, ffmpeg among them, send one only every 5 s).
    pub fn restart(&mut self) {
        let srs = std::mem::take(&mut self.srs);
        *self = StreamStats::new(self.clock_rate);
        self.srs = srs;
    }

    /// A sender report arrived at `arrival_ns`.
    pub fn on_sr(&mut self, sr: SrMapping, arrival_ns: i128) {
        self.srs.push((arrival_ns, sr));
    }

    /// The window's figures.
    pub fn report(&self) -> StreamReport {
        let expected = match self.first_ext {
            Some(first) => self.max_ext - first + 1,
            None => 0,
        };
        let unique = self.received - self.reordered.min(self.received);
        let mut lateness = Vec::with_capacity(self.arrivals.len());
        if !self.srs.is_empty() {
            for &(at, ts) in &self.arrivals {
                // The latest report that arrived before the packet, else the first one.
                let idx = self.srs.partition_point(|(sr_at, _)| *sr_at <= at);
                let sr = self.srs[idx.saturating_sub(1)].1;
                let dt = ts.wrapping_sub(sr.rtp_time) as i32 as i128;
                let due = sr.ntp_ns + dt * 1_000_000_000 / self.clock_rate as i128;
                lateness.push((at - due) as f64 / 1e6);
            }
        }
        let mut gaps = Vec::new();
        let mut prev: Option<(i128, u32)> = None;
        for &(at, ts) in &self.arrivals {
            if let Some((pat, pts)) = prev {
                if ts != pts {
                    gaps.push((at - pat) as f64 / 1e6);
                }
            }
            if prev.map(|(_, pts)| pts != ts).unwrap_or(true) {
                prev = Some((at, ts));
            }
        }
        StreamReport {
            received: self.received,
            expected,
            lost: expected.saturating_sub(unique),
            reordered: self.reordered,
            bytes: self.bytes,
            jitter_ms: self.jitter * 1000.0 / self.clock_rate as f64,
            lateness_ms: lateness,
            frame_gaps_ms: gaps,
            decrypted_frames: 0,
            decrypt_failures: 0,
        }
    }
}

/// The `p`-th percentile (0..=100) of `v` (nearest rank); `None` when empty.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// Mean and (population) variance of `v`.
pub fn mean_var(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Some((mean, var))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32) -> RtpInfo {
        RtpInfo {
            seq,
            timestamp: ts,
            ssrc: 1,
        }
    }

    #[test]
    fn parses_rtp_header() {
        let mut p = [0u8; 20];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&513u16.to_be_bytes());
        p[4..8].copy_from_slice(&90_000u32.to_be_bytes());
        p[8..12].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
        assert_eq!(
            parse_rtp(&p),
            Some(rtp(513, 90_000)).map(|mut r| {
                r.ssrc = 0xdeadbeef;
                r
            })
        );
        assert_eq!(parse_rtp(&p[..11]), None);
        p[0] = 0x40;
        assert_eq!(parse_rtp(&p), None);
    }

    #[test]
    fn counts_gaps_across_wrap_as_loss() {
        let mut s = StreamStats::new(90_000);
        for (i, seq) in [65534u16, 65535, 1, 2].iter().enumerate() {
            s.on_rtp(rtp(*seq, i as u32 * 3600), 100, i as i128 * 40_000_000);
        }
        let r = s.report();
        assert_eq!(r.expected, 5);
        assert_eq!(r.lost, 1);
        assert_eq!(r.received, 4);
    }

    #[test]
    fn steady_stream_has_no_jitter_and_lateness_follows_sr() {
        let mut s = StreamStats::new(90_000);
        let base: i128 = 1_700_000_000_000_000_000;
        s.on_sr(
            SrMapping {
                ntp_ns: base,
                rtp_time: 1000,
            },
            base,
        );
        for i in 0..50u32 {
            // 40 ms frames arriving exactly 2 ms after their due time.
            let at = base + i as i128 * 40_000_000 + 2_000_000;
            s.on_rtp(rtp(i as u16, 1000 + i * 3600), 1200, at);
        }
        let r = s.report();
        assert_eq!(r.lost, 0);
        assert!(r.jitter_ms.abs() < 1e-6, "{}", r.jitter_ms);
        assert_eq!(r.lateness_ms.len(), 50);
        assert!(r.lateness_ms.iter().all(|l| (l - 2.0).abs() < 1e-3));
        let (mean, var) = mean_var(&r.frame_gaps_ms).unwrap();
        assert!((mean - 40.0).abs() < 1e-6 && var < 1e-9);
    }

    #[test]
    fn jitter_grows_with_irregular_arrivals() {
        let mut s = StreamStats::new(90_000);
        for i in 0..100u32 {
            let wobble = if i % 2 == 0 { 0 } else { 10_000_000 };
            s.on_rtp(
                rtp(i as u16, i * 3600),
                1200,
                i as i128 * 40_000_000 + wobble,
            );
        }
        assert!(s.report().jitter_ms > 5.0);
    }

    #[test]
    fn ntp_conversion() {
        let ntp = ((NTP_UNIX_OFFSET as u64 + 10) << 32) | (1u64 << 31);
        assert_eq!(ntp_to_unix_ns(ntp), 10_500_000_000);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
