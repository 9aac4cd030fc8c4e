//! RTCP (RFC 3550, RFC 4585) for the sender side, with the `rtcp` crate.
//!
//! - [`sender_report`]: compound SR + SDES(CNAME), sent periodically per stream;
//! - [`bye`]: RR + BYE when a stream ends;
//! - [`parse_incoming`]: decode what a client sends (RR, BYE, NACK, PLI, FIR, ...) into
//!   [`RtcpEvent`]s. Malformed input gives an [`RtcpError`], never a panic;
//! - [`RtpClock`]: the NTP <-> RTP time mapping the SR must carry.
//!
//! Everything is sans-IO: the caller passes `now`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::rtcp::goodbye::Goodbye;
use ::rtcp::packet::Packet;
use ::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use ::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use ::rtcp::receiver_report::ReceiverReport;
use ::rtcp::reception_report::ReceptionReport;
use ::rtcp::sender_report::SenderReport;
use ::rtcp::source_description::{
    SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
};
use ::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use bytes::Bytes;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// Longest SDES item text (the length field is one byte).
const SDES_MAX_TEXT: usize = 255;

/// `t` as a 64-bit NTP timestamp: seconds since 1900-01-01 in the high 32 bits (wrapping
/// at the 2036 era boundary, as NTP does), the fraction of a second in the low 32 bits.
/// Times before 1900 give 0.
pub fn ntp_timestamp(t: SystemTime) -> u64 {
    let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let ntp_nanos = nanos + i128::from(NTP_UNIX_OFFSET_SECS) * 1_000_000_000;
    if ntp_nanos < 0 {
        return 0;
    }
    let secs = (ntp_nanos / 1_000_000_000) as u64;
    let sub = (ntp_nanos % 1_000_000_000) as u64;
    let frac = (sub << 32) / 1_000_000_000;
    ((secs & 0xffff_ffff) << 32) | frac
}

/// The middle 32 bits of an NTP timestamp, as echoed in reception reports (LSR field).
pub fn ntp_middle_32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

fn cname_item(cname: &str) -> SourceDescriptionItem {
    let b = cname.as_bytes();
    SourceDescriptionItem {
        sdes_type: SdesType::SdesCname,
        text: Bytes::copy_from_slice(&b[..b.len().min(SDES_MAX_TEXT)]),
    }
}

fn marshal(packets: &[Box<dyn Packet + Send + Sync>]) -> Bytes {
    // Cannot fail: no report blocks, one SDES chunk, text capped at 255 bytes.
    let r = ::rtcp::packet::marshal(packets);
    debug_assert!(r.is_ok(), "{r:?}");
    r.unwrap_or_default()
}

/// A compound RTCP packet: SR (no report blocks) + SDES with one CNAME chunk.
/// `rtp_time` must be the RTP timestamp corresponding to `now` (see [`RtpClock`]);
/// `octet_count` counts payload bytes only. A CNAME over 255 bytes is truncated.
pub fn sender_report(
    ssrc: u32,
    now: SystemTime,
    rtp_time: u32,
    packet_count: u32,
    octet_count: u32,
    cname: &str,
) -> Bytes {
    let sr = SenderReport {
        ssrc,
        ntp_time: ntp_timestamp(now),
        rtp_time,
        packet_count,
        octet_count,
        ..Default::default()
    };
    let sdes = SourceDescription {
        chunks: vec![SourceDescriptionChunk {
            source: ssrc,
            items: vec![cname_item(cname)],
        }],
    };
    marshal(&[Box::new(sr), Box::new(sdes)])
}

/// A compound RTCP packet announcing that `ssrc` leaves: an empty RR (a compound packet
/// must start with a report) followed by BYE.
pub fn bye(ssrc: u32) -> Bytes {
    let rr = ReceiverReport {
        ssrc,
        ..Default::default()
    };
    let bye = Goodbye {
        sources: vec![ssrc],
        reason: Bytes::new(),
    };
    marshal(&[Box::new(rr), Box::new(bye)])
}

/// A BYE packet alone, for `ssrc`, with `reason` (truncated to RTCP's 255 bytes), to
/// follow a sender report in one compound packet when a live stream ends.
pub fn goodbye(ssrc: u32, reason: &str) -> Bytes {
    let mut end = reason.len().min(255);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let bye = Goodbye {
        sources: vec![ssrc],
        reason: Bytes::copy_from_slice(&reason.as_bytes()[..end]),
    };
    marshal(&[Box::new(bye)])
}

/// One report block of an SR or RR: how a receiver hears one of our SSRCs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceptionStats {
    /// The SSRC this block is about (ours).
    pub ssrc: u32,
    /// Fraction lost since the previous report, /256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (signed 24 bit: duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of our last SR (0 if none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReceptionStats {
    fn from_block(r: &ReceptionReport) -> Self {
        let raw = r.total_lost & 0x00ff_ffff;
        let cumulative_lost = if raw & 0x0080_0000 != 0 {
            raw as i32 - 0x0100_0000
        } else {
            raw as i32
        };
        ReceptionStats {
            ssrc: r.ssrc,
            fraction_lost: r.fraction_lost,
            cumulative_lost,
            highest_seq: r.last_sequence_number,
            jitter: r.jitter,
            last_sr: r.last_sender_report,
            delay_since_last_sr: r.delay,
        }
    }

    /// Round-trip time estimated from this block received at `now` (RFC 3550 §6.4.1),
    /// or `None` if the receiver has not seen an SR yet.
    pub fn round_trip(&self, now: SystemTime) -> Option<Duration> {
        if self.last_sr == 0 {
            return None;
        }
        let a = ntp_middle_32(ntp_timestamp(now));
        let rtt = a
            .wrapping_sub(self.last_sr)
            .wrapping_sub(self.delay_since_last_sr);
        if rtt > 0x8000_0000 {
            return None; // negative: clocks or fields are off
        }
        Some(Duration::from_nanos((u64::from(rtt) * 1_000_000_000) >> 16))
    }
}

/// What a client's RTCP packet told us, one event per RTCP packet (or SDES chunk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpEvent {
    /// A receiver report from `reporter`.
    ReceiverReport {
        reporter: u32,
        reports: Vec<ReceptionStats>,
    },
    /// A sender report (a client that also sends); its report blocks are included.
    SenderReport {
        ssrc: u32,
        ntp_time: u64,
        rtp_time: u32,
        packet_count: u32,
        octet_count: u32,
        reports: Vec<ReceptionStats>,
    },
    /// SDES chunk of `ssrc`, with its CNAME if present.
    SourceDescription { ssrc: u32, cname: Option<String> },
    /// The listed sources leave.
    Bye { sources: Vec<u32>, reason: String },
    /// Generic NACK (RFC 4585): `lost` sequence numbers of `media_ssrc`.
    Nack {
        sender: u32,
        media_ssrc: u32,
        lost: Vec<u16>,
    },
    /// Picture loss indication: the receiver wants a keyframe of `media_ssrc`.
    Pli { sender: u32, media_ssrc: u32 },
    /// Full intra request: keyframes wanted for each SSRC in `targets`.
    Fir { sender: u32, targets: Vec<u32> },
    /// A well-formed RTCP packet of a kind we do not act on (APP, XR, REMB, TWCC, ...).
    Other { packet_type: u8, format: u8 },
}

/// Why an incoming RTCP datagram was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtcpError {
    #[error("RTCP datagram too short: {0} bytes")]
    TooShort(usize),
    #[error("RTCP version {version} at offset {offset}, expected 2")]
    BadVersion { offset: usize, version: u8 },
    #[error("packet type {packet_type} at offset {offset} is not RTCP (192..=223)")]
    NotRtcp { offset: usize, packet_type: u8 },
    #[error("RTCP length at offset {offset} runs past the datagram ({len} bytes)")]
    BadLength { offset: usize, len: usize },
    #[error("malformed RTCP packet: {0}")]
    Malformed(String),
}

/// One RTCP packet found by [`frame_packets`].
struct Framed {
    offset: usize,
    size: usize,
    packet_type: u8,
    /// Report count / source count / feedback format (the 5-bit header field).
    count: u8,
    /// Length field: packet size in 32-bit words minus one.
    words: usize,
}

/// Split a datagram into its RTCP packets by walking the headers, with specific errors
/// for the common failures.
fn frame_packets(buf: &[u8]) -> Result<Vec<Framed>, RtcpError> {
    if buf.len() < 4 {
        return Err(RtcpError::TooShort(buf.len()));
    }
    let mut packets = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        if buf.len() - off < 4 {
            return Err(RtcpError::BadLength {
                offset: off,
                len: buf.len(),
            });
        }
        let version = buf[off] >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion {
                offset: off,
                version,
            });
        }
        let packet_type = buf[off + 1];
        if !(192..=223).contains(&packet_type) {
            return Err(RtcpError::NotRtcp {
                offset: off,
                packet_type,
            });
        }
        let words = u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
        let size = 4 + words * 4;
        if size > buf.len() - off {
            return Err(RtcpError::BadLength {
                offset: off,
                len: buf.len(),
            });
        }
        packets.push(Framed {
            offset: off,
            size,
            packet_type,
            count: buf[off] & 0x1f,
            words,
        });
        off += size;
    }
    Ok(packets)
}

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
const PT_RTPFB: u8 = 205;
const PT_PSFB: u8 = 206;
const FMT_NACK: u8 = 1;
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;

/// Whether we decode packets of this kind, and if so whether its length field is big
/// enough for what the `rtcp` crate will read. The crate's NACK and FIR parsers (0.17)
/// read past a too-short packet and panic, so sizes are checked here first.
fn wanted_and_sized(p: &Framed) -> Option<bool> {
    let (w, c) = (p.words, p.count as usize);
    Some(match (p.packet_type, p.count) {
        (PT_SR, _) => w >= 6 + 6 * c,
        (PT_RR, _) => w > 6 * c, // SSRC word + 6 words per report block
        (PT_SDES, _) => true,
        (PT_BYE, _) => w >= c,
        (PT_RTPFB, FMT_NACK) => w >= 2,
        (PT_PSFB, FMT_PLI) => w >= 2,
        (PT_PSFB, FMT_FIR) => w >= 2 && (w - 2) % 2 == 0,
        _ => return None,
    })
}

/// Decode a (compound) RTCP datagram from a client.
///
/// Packets of kinds we act on (SR, RR, SDES, BYE, generic NACK, PLI, FIR) are decoded by
/// the `rtcp` crate; any other well-framed packet (APP, XR, REMB, TWCC, ...) becomes
/// [`RtcpEvent::Other`] without being parsed. One malformed packet rejects the datagram.
pub fn parse_incoming(buf: &[u8]) -> Result<Vec<RtcpEvent>, RtcpError> {
    let framed = frame_packets(buf)?;
    let data = Bytes::copy_from_slice(buf);
    let mut events = Vec::with_capacity(framed.len());
    for f in &framed {
        match wanted_and_sized(f) {
            None => events.push(RtcpEvent::Other {
                packet_type: f.packet_type,
                format: f.count,
            }),
            Some(false) => {
                return Err(RtcpError::Malformed(format!(
                    "packet type {} at offset {} too short ({} bytes)",
                    f.packet_type, f.offset, f.size
                )))
            }
            Some(true) => {
                let mut one = data.slice(f.offset..f.offset + f.size);
                // Backstop: should the library still panic on some input, that is one bad
                // datagram, not a dead sender.
                let parsed = std::panic::catch_unwind(move || ::rtcp::packet::unmarshal(&mut one))
                    .map_err(|_| RtcpError::Malformed("rtcp parser panicked".to_string()))?
                    .map_err(|e| RtcpError::Malformed(e.to_string()))?;
                for p in &parsed {
                    to_events(p.as_ref(), &mut events);
                }
            }
        }
    }
    Ok(events)
}

fn to_events(p: &(dyn Packet + Send + Sync), events: &mut Vec<RtcpEvent>) {
    let any = p.as_any();
    if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
        events.push(RtcpEvent::ReceiverReport {
            reporter: rr.ssrc,
            reports: rr.reports.iter().map(ReceptionStats::from_block).collect(),
        });
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        events.push(RtcpEvent::SenderReport {
            ssrc: sr.ssrc,
            ntp_time: sr.ntp_time,
            rtp_time: sr.rtp_time,
            packet_count: sr.packet_count,
            octet_count: sr.octet_count,
            reports: sr.reports.iter().map(ReceptionStats::from_block).collect(),
        });
    } else if let Some(sdes) = any.downcast_ref::<SourceDescription>() {
        for c in &sdes.chunks {
            let cname = c
                .items
                .iter()
                .find(|it| it.sdes_type == SdesType::SdesCname)
                .map(|it| String::from_utf8_lossy(&it.text).into_owned());
            events.push(RtcpEvent::SourceDescription {
                ssrc: c.source,
                cname,
            });
        }
    } else if let Some(b) = any.downcast_ref::<Goodbye>() {
        events.push(RtcpEvent::Bye {
            sources: b.sources.clone(),
            reason: String::from_utf8_lossy(&b.reason).into_owned(),
        });
    } else if let Some(n) = any.downcast_ref::<TransportLayerNack>() {
        events.push(RtcpEvent::Nack {
            sender: n.sender_ssrc,
            media_ssrc: n.media_ssrc,
            lost: n.nacks.iter().flat_map(|p| p.packet_list()).collect(),
        });
    } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
        events.push(RtcpEvent::Pli {
            sender: pli.sender_ssrc,
            media_ssrc: pli.media_ssrc,
        });
    } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
        events.push(RtcpEvent::Fir {
            sender: fir.sender_ssrc,
            targets: fir.fir.iter().map(|e| e.ssrc).collect(),
        });
    } else {
        let h = p.header();
        events.push(RtcpEvent::Other {
            packet_type: h.packet_type as u8,
            format: h.count,
        });
    }
}

/// The RTP <-> wallclock mapping of one outgoing stream, for sender reports.
///
/// A stream is paced so that the frame with media time `first_pts` (track clock) is due at
/// wallclock `epoch`, and every later frame at `epoch + (pts - first_pts) / clock_rate`.
/// Its RTP timestamps are `rtp_offset + pts` (mod 2^32). The RTP time that corresponds to
/// wallclock `now` — what an SR sent at `now` must carry next to `ntp_timestamp(now)` — is
/// therefore
///
/// ```text
/// rtp_time(now) = rtp_offset + first_pts + (now - epoch) * clock_rate      (mod 2^32)
/// ```
///
/// which holds whether or not a packet is sent at `now`, and for `now` before `epoch`.
/// The mapping stays correct as long as the sender really paces to `epoch` (it is the
/// same value the scheduler uses) and the SR's `now` is the same clock. After a seek, a
/// pause/resume or a discontinuity, call [`RtpClock::rebase`] with the new epoch and the
/// first pts after it; `rtp_offset` stays, so RTP timestamps stay those of the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpClock {
    clock_rate: u32,
    epoch: SystemTime,
    first_pts: i64,
    rtp_offset: u32,
}

impl RtpClock {
    /// `clock_rate` in Hz (must be > 0; 0 is treated as 1), `epoch` = when `first_pts` is
    /// due, `rtp_offset` = the stream's random RTP timestamp offset.
    pub fn new(clock_rate: u32, epoch: SystemTime, first_pts: i64, rtp_offset: u32) -> Self {
        RtpClock {
            clock_rate: clock_rate.max(1),
            epoch,
            first_pts,
            rtp_offset,
        }
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    pub fn rtp_offset(&self) -> u32 {
        self.rtp_offset
    }

    pub fn epoch(&self) -> SystemTime {
        self.epoch
    }

    pub fn first_pts(&self) -> i64 {
        self.first_pts
    }

    /// Restart the mapping: media time `first_pts` is due at `epoch`.
    pub fn rebase(&mut self, epoch: SystemTime, first_pts: i64) {
        self.epoch = epoch;
        self.first_pts = first_pts;
    }

    /// The RTP timestamp of a frame with `pts`.
    pub fn rtp_timestamp(&self, pts: i64) -> u32 {
        (pts as u32).wrapping_add(self.rtp_offset)
    }

    /// When the frame with `pts` is due (its send deadline).
    pub fn deadline(&self, pts: i64) -> SystemTime {
        let ticks = i128::from(pts) - i128::from(self.first_pts);
        // Rounded up, so that rtp_time_at(deadline(pts)) == rtp_timestamp(pts) exactly.
        let rate = i128::from(self.clock_rate);
        let nanos = (ticks * 1_000_000_000 + rate - 1).div_euclid(rate);
        if nanos >= 0 {
            self.epoch + Duration::from_nanos(nanos.min(u64::MAX as i128) as u64)
        } else {
            let back = Duration::from_nanos((-nanos).min(u64::MAX as i128) as u64);
            self.epoch.checked_sub(back).unwrap_or(UNIX_EPOCH)
        }
    }

    /// The RTP time corresponding to wallclock `now` (see the type docs).
    pub fn rtp_time_at(&self, now: SystemTime) -> u32 {
        let elapsed_ns: i128 = match now.duration_since(self.epoch) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        let ticks = (elapsed_ns * i128::from(self.clock_rate)).div_euclid(1_000_000_000);
        let t = i128::from(self.rtp_offset) + i128::from(self.first_pts) + ticks;
        t as u32 // mod 2^32
    }

    /// An SR + SDES for this stream at `now`.
    pub fn sender_report(
        &self,
        ssrc: u32,
        now: SystemTime,
        packet_count: u32,
        octet_count: u32,
        cname: &str,
    ) -> Bytes {
        sender_report(
            ssrc,
            now,
            self.rtp_time_at(now),
            packet_count,
            octet_count,
            cname,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
    use rand::{Rng, SeedableRng};

    #[test]
    fn ntp_conversion() {
        assert_eq!(ntp_timestamp(UNIX_EPOCH), NTP_UNIX_OFFSET_SECS << 32);
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(
            ntp_timestamp(t),
            ((NTP_UNIX_OFFSET_SECS + 1) << 32) | 0x8000_0000
        );
        // 2024-01-01T00:00:00.25Z = Unix 1704067200.
        let t = UNIX_EPOCH + Duration::from_secs(1_704_067_200) + Duration::from_millis(250);
        assert_eq!(ntp_timestamp(t) >> 32, 3_913_056_000);
        assert_eq!(ntp_timestamp(t) as u32, 0x4000_0000);
        // One nanosecond resolves to 4 (2^32 / 1e9 = 4.29) fraction units.
        let t = UNIX_EPOCH + Duration::from_nanos(1);
        assert_eq!(ntp_timestamp(t) as u32, 4);
        // Before 1970 still works; before 1900 clamps.
        let t = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(ntp_timestamp(t) >> 32, NTP_UNIX_OFFSET_SECS - 10);
        let t = UNIX_EPOCH - Duration::from_secs(NTP_UNIX_OFFSET_SECS + 1);
        assert_eq!(ntp_timestamp(t), 0);
        // The era wraps in Feb 2036.
        let t = UNIX_EPOCH + Duration::from_secs((1u64 << 32) - NTP_UNIX_OFFSET_SECS + 7);
        assert_eq!(ntp_timestamp(t) >> 32, 7);
    }

    #[test]
    fn sender_report_roundtrip() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let b = sender_report(0x1234, now, 90000, 10, 12000, "divisor@host");
        assert_eq!(b.len() % 4, 0);
        assert_eq!(b[0], 0x80);
        assert_eq!(b[1], 200);
        let ev = parse_incoming(&b).unwrap();
        assert_eq!(
            ev,
            vec![
                RtcpEvent::SenderReport {
                    ssrc: 0x1234,
                    ntp_time: ntp_timestamp(now),
                    rtp_time: 90000,
                    packet_count: 10,
                    octet_count: 12000,
                    reports: vec![],
                },
                RtcpEvent::SourceDescription {
                    ssrc: 0x1234,
                    cname: Some("divisor@host".to_string()),
                }
            ]
        );
        // The rtcp crate agrees it is a valid compound packet with that CNAME.
        let mut data = b.clone();
        let pkts = ::rtcp::packet::unmarshal(&mut data).unwrap();
        let cp = ::rtcp::compound_packet::CompoundPacket(pkts);
        cp.validate().unwrap();
        assert_eq!(&cp.cname().unwrap()[..], b"divisor@host");

        // Over-long CNAME is truncated, not an error.
        let long = "x".repeat(400);
        let b = sender_report(1, now, 0, 0, 0, &long);
        match &parse_incoming(&b).unwrap()[1] {
            RtcpEvent::SourceDescription { cname, .. } => {
                assert_eq!(cname.as_ref().unwrap().len(), 255)
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn bye_roundtrip() {
        let b = bye(77);
        assert_eq!(
            parse_incoming(&b).unwrap(),
            vec![
                RtcpEvent::ReceiverReport {
                    reporter: 77,
                    reports: vec![]
                },
                RtcpEvent::Bye {
                    sources: vec![77],
                    reason: String::new()
                }
            ]
        );
    }

    #[test]
    fn a_sender_report_then_goodbye_parses_with_its_reason() {
        let mut b = sender_report(5, SystemTime::now(), 1, 2, 3, "x").to_vec();
        b.extend_from_slice(&goodbye(5, "stream ends"));
        let events = parse_incoming(&b).unwrap();
        assert_eq!(
            events.last(),
            Some(&RtcpEvent::Bye {
                sources: vec![5],
                reason: "stream ends".into()
            })
        );
        // A reason longer than RTCP allows is cut at a character boundary.
        let long = "é".repeat(200);
        let b = goodbye(5, &long);
        let Some(RtcpEvent::Bye { reason, .. }) = parse_incoming(&b).unwrap().pop() else {
            panic!("no BYE")
        };
        assert_eq!(reason.len(), 254);
    }

    fn client_compound() -> Bytes {
        let rr = ReceiverReport {
            ssrc: 0xc1,
            reports: vec![ReceptionReport {
                ssrc: 0x1234,
                fraction_lost: 64,
                total_lost: 0x00ff_fffe, // -2
                last_sequence_number: 0x0001_0005,
                jitter: 273,
                last_sender_report: 0x9f36432,
                delay: 150137,
            }],
            ..Default::default()
        };
        let sdes = SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: 0xc1,
                items: vec![cname_item("client")],
            }],
        };
        let nack = TransportLayerNack {
            sender_ssrc: 0xc1,
            media_ssrc: 0x1234,
            nacks: vec![NackPair {
                packet_id: 100,
                lost_packets: 0b101,
            }],
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0xc1,
            media_ssrc: 0x1234,
        };
        let bye = Goodbye {
            sources: vec![0xc1],
            reason: Bytes::from_static(b"done"),
        };
        let fir = FullIntraRequest {
            sender_ssrc: 0xc1,
            media_ssrc: 0,
            fir: vec![::rtcp::payload_feedbacks::full_intra_request::FirEntry {
                ssrc: 0x1234,
                sequence_number: 3,
            }],
        };
        ::rtcp::packet::marshal(&[
            Box::new(rr),
            Box::new(sdes),
            Box::new(nack),
            Box::new(pli),
            Box::new(fir),
            Box::new(bye),
        ])
        .unwrap()
    }

    #[test]
    fn parse_client_packets() {
        let ev = parse_incoming(&client_compound()).unwrap();
        assert_eq!(
            ev,
            vec![
                RtcpEvent::ReceiverReport {
                    reporter: 0xc1,
                    reports: vec![ReceptionStats {
                        ssrc: 0x1234,
                        fraction_lost: 64,
                        cumulative_lost: -2,
                        highest_seq: 0x0001_0005,
                        jitter: 273,
                        last_sr: 0x9f36432,
                        delay_since_last_sr: 150137,
                    }]
                },
                RtcpEvent::SourceDescription {
                    ssrc: 0xc1,
                    cname: Some("client".into())
                },
                RtcpEvent::Nack {
                    sender: 0xc1,
                    media_ssrc: 0x1234,
                    lost: vec![100, 101, 103]
                },
                RtcpEvent::Pli {
                    sender: 0xc1,
                    media_ssrc: 0x1234
                },
                RtcpEvent::Fir {
                    sender: 0xc1,
                    targets: vec![0x1234]
                },
                RtcpEvent::Bye {
                    sources: vec![0xc1],
                    reason: "done".into()
                },
            ]
        );
        // APP packet: well framed, reported as Other.
        let app = [0x80u8, 204, 0, 2, 0, 0, 0, 1, b'n', b'a', b'm', b'e'];
        assert_eq!(
            parse_incoming(&app).unwrap(),
            vec![RtcpEvent::Other {
                packet_type: 204,
                format: 0
            }]
        );
    }

    #[test]
    fn round_trip_time() {
        let sent = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let lsr = ntp_middle_32(ntp_timestamp(sent));
        let stats = ReceptionStats {
            ssrc: 1,
            fraction_lost: 0,
            cumulative_lost: 0,
            highest_seq: 0,
            jitter: 0,
            last_sr: lsr,
            delay_since_last_sr: 65536 / 2, // receiver held it 0.5 s
        };
        let rtt = stats.round_trip(sent + Duration::from_millis(540)).unwrap();
        assert!((rtt.as_secs_f64() - 0.040).abs() < 0.001, "{rtt:?}");
        assert_eq!(
            ReceptionStats {
                last_sr: 0,
                ..stats
            }
            .round_trip(sent),
            None
        );
    }

    const FUZZ_ROUNDS: usize = 20_000;

    #[test]
    fn malformed_input_errors_not_panics() {
        assert_eq!(parse_incoming(&[]), Err(RtcpError::TooShort(0)));
        assert_eq!(parse_incoming(&[0x80, 200]), Err(RtcpError::TooShort(2)));
        assert_eq!(
            parse_incoming(&[0x40, 200, 0, 0]),
            Err(RtcpError::BadVersion {
                offset: 0,
                version: 1
            })
        );
        // An RTP packet (PT 96 with marker = 224) is not RTCP.
        assert!(matches!(
            parse_incoming(&[0x80, 96, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::NotRtcp { .. })
        ));
        let good = client_compound();
        // Every truncation of a valid compound is an error, never a panic.
        // (Cut at a packet boundary, it is a shorter valid compound.)
        let mut boundaries = vec![];
        let mut off = 0;
        while off < good.len() {
            off += 4 + 4 * u16::from_be_bytes([good[off + 2], good[off + 3]]) as usize;
            boundaries.push(off);
        }
        for n in 0..good.len() {
            let r = parse_incoming(&good[..n]);
            if let Some(k) = boundaries.iter().position(|&b| b == n) {
                assert_eq!(r.unwrap().len(), k + 1, "cut at {n}");
            } else {
                assert!(r.is_err(), "truncated to {n}");
            }
        }
        // Length field lying about the size.
        let mut lie = good.to_vec();
        lie[3] = 0xff;
        assert!(matches!(
            parse_incoming(&lie),
            Err(RtcpError::BadLength { offset: 0, .. })
        ));
        // RR claiming more report blocks than it holds.
        let mut rc = good.to_vec();
        rc[0] = 0x80 | 5;
        assert!(matches!(parse_incoming(&rc), Err(RtcpError::Malformed(_))));

        // Garbage and mutations of valid packets, deterministic.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..FUZZ_ROUNDS {
            let len = rng.gen_range(0..80);
            let mut g: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len >= 4 && rng.gen_bool(0.7) {
                // Plausible headers reach deeper into the parsers.
                g[0] = 0x80 | (g[0] & 0x3f);
                g[1] = 200 + (g[1] % 8);
                let words = (len - 4) / 4;
                g[2] = 0;
                g[3] = words as u8;
                g.truncate(4 + words * 4);
            }
            let _ = parse_incoming(&g);
        }
        for _ in 0..FUZZ_ROUNDS {
            let mut m = good.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.gen();
            }
            let _ = parse_incoming(&m);
        }
    }

    #[test]
    fn rtp_clock_mapping() {
        let epoch = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = RtpClock::new(90000, epoch, 9000, 1_000_000);
        assert_eq!(c.rtp_time_at(epoch), 1_009_000);
        assert_eq!(c.rtp_time_at(epoch + Duration::from_secs(2)), 1_189_000);
        assert_eq!(c.rtp_time_at(epoch + Duration::from_micros(11)), 1_009_000); // 0.99 tick floors
        assert_eq!(c.rtp_time_at(epoch - Duration::from_millis(100)), 1_000_000);
        // Deadline and rtp_time agree: the frame due at t has the RTP time of t.
        for pts in [9000i64, 12003, 99_000, -5000] {
            assert_eq!(c.rtp_time_at(c.deadline(pts)), c.rtp_timestamp(pts));
        }
        // Wraps modulo 2^32.
        let w = RtpClock::new(48000, epoch, 0, u32::MAX - 10);
        assert_eq!(w.rtp_time_at(epoch + Duration::from_millis(1)), 37);
        // Rebase after a seek keeps the offset.
        let mut r = c;
        r.rebase(epoch + Duration::from_secs(100), 900_000);
        assert_eq!(r.rtp_time_at(epoch + Duration::from_secs(100)), 1_900_000);
        let sr = r.sender_report(5, epoch + Duration::from_secs(101), 1, 2, "c");
        match &parse_incoming(&sr).unwrap()[0] {
            RtcpEvent::SenderReport { rtp_time, .. } => assert_eq!(*rtp_time, 1_990_000),
            e => panic!("{e:?}"),
        }
    }
}
