//! A NACK responder for WebRTC viewers that cannot turn congestion into a storm.
//!
//! webrtc-rs's own responder (`interceptor::nack::responder`) resends every packet every
//! NACK lists, from an 8192-packet history, with one spawned task per NACK. On a link
//! that is losing packets because it is full, the viewer NACKs the losses again and
//! again, each NACK resends them all, and the resends fill the link further: in
//! `tests/tests/whep_adapt.rs` (a 450 kbit/s cap) Chromium sent 7,545 NACKs while we sent
//! it 4,945 packets, and the blocked resends starved the connection's RTCP and ICE until
//! it went `disconnected`. This one resends a packet only if it is
//!
//! - young ([`MAX_AGE`]: older frames are past their play-out time anyway),
//! - not resent within [`MIN_RESEND_GAP`] (a repeated NACK of a resend still in flight),
//! - within a byte budget that refills at [`BUDGET_SHARE`] of the bytes sent on the
//!   stream (retransmission may add at most that much to the stream's rate),
//!
//! and counts what it refused, so `/status` shows it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Error, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader,
    RTPWriter,
};
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

/// Packets kept per stream (~5 s of an 800 kbit/s video stream, far more than
/// [`MAX_AGE`] needs).
const HISTORY: usize = 512;
/// Oldest packet resent.
pub const MAX_AGE: Duration = Duration::from_millis(1000);
/// Least time between two resends of one packet.
pub const MIN_RESEND_GAP: Duration = Duration::from_millis(100);
/// Retransmission budget as a share of the stream's own bytes.
pub const BUDGET_SHARE: f64 = 0.25;
/// Most budget saved up, bytes (a burst of resends after a quiet spell).
const BUDGET_CAP: f64 = 64.0 * 1024.0;

type Result<T> = std::result::Result<T, Error>;

/// Resend counts of one viewer, shared with its session.
#[derive(Debug, Default)]
pub struct NackCounts {
    pub resent: AtomicU64,
    /// Asked for but not resent: unknown, too old, resent just before, or over budget.
    pub refused: AtomicU64,
}

/// One sent packet in the history.
struct Kept {
    packet: webrtc::rtp::packet::Packet,
    sent: Instant,
    resent: Option<Instant>,
}

/// The sans-IO part: history, budget and the resend decision.
pub struct History {
    slots: Vec<Option<Kept>>,
    budget: f64,
}

impl Default for History {
    fn default() -> Self {
        History {
            slots: (0..HISTORY).map(|_| None).collect(),
            budget: 0.0,
        }
    }
}

impl History {
    /// Keep `packet`, sent at `now`; its bytes add to the budget.
    pub fn sent(&mut self, packet: &webrtc::rtp::packet::Packet, now: Instant) {
        let seq = packet.header.sequence_number;
        self.budget = (self.budget + packet.payload.len() as f64 * BUDGET_SHARE).min(BUDGET_CAP);
        self.slots[usize::from(seq) % HISTORY] = Some(Kept {
            packet: packet.clone(),
            sent: now,
            resent: None,
        });
    }

    /// The packet `seq` if it should be resent at `now` (marked as resent), else `None`.
    pub fn resend(&mut self, seq: u16, now: Instant) -> Option<webrtc::rtp::packet::Packet> {
        let kept = self.slots[usize::from(seq) % HISTORY].as_mut()?;
        if kept.packet.header.sequence_number != seq
            || now.saturating_duration_since(kept.sent) > MAX_AGE
            || kept
                .resent
                .is_some_and(|t| now.saturating_duration_since(t) < MIN_RESEND_GAP)
        {
            return None;
        }
        let size = kept.packet.payload.len() as f64;
        if size > self.budget {
            return None;
        }
        self.budget -= size;
        kept.resent = Some(now);
        Some(kept.packet.clone())
    }
}

/// One local stream: its history and the writer resends go to.
struct Stream {
    history: Mutex<History>,
    next: Arc<dyn RTPWriter + Send + Sync>,
}

#[async_trait]
impl RTPWriter for Stream {
    async fn write(&self, pkt: &webrtc::rtp::packet::Packet, a: &Attributes) -> Result<usize> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent(pkt, Instant::now());
        self.next.write(pkt, a).await
    }
}

type Streams = Arc<Mutex<HashMap<u32, Arc<Stream>>>>;

/// The interceptor (one per peer connection).
pub struct BoundedNack {
    streams: Streams,
    counts: Arc<NackCounts>,
}

/// Builds a [`BoundedNack`] reporting into `counts`.
pub struct BoundedNackBuilder {
    pub counts: Arc<NackCounts>,
}

impl InterceptorBuilder for BoundedNackBuilder {
    fn build(&self, _id: &str) -> Result<Arc<dyn Interceptor + Send + Sync>> {
        Ok(Arc::new(BoundedNack {
            streams: Arc::default(),
            counts: Arc::clone(&self.counts),
        }))
    }
}

struct Reader {
    parent: Arc<dyn RTCPReader + Send + Sync>,
    streams: Streams,
    counts: Arc<NackCounts>,
}

#[async_trait]
impl RTCPReader for Reader {
    async fn read(
        &self,
        buf: &mut [u8],
        a: &Attributes,
    ) -> Result<(
        Vec<Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>>,
        Attributes,
    )> {
        let (pkts, attr) = self.parent.read(buf, a).await?;
        for p in &pkts {
            let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                continue;
            };
            let stream = self
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&nack.media_ssrc)
                .cloned();
            let Some(stream) = stream else { continue };
            let now = Instant::now();
            let (mut again, mut refused) = (Vec::new(), 0u64);
            {
                let mut h = stream.history.lock().unwrap_or_else(|p| p.into_inner());
                for pair in &nack.nacks {
                    for seq in pair.into_iter() {
                        match h.resend(seq, now) {
                            Some(p) => again.push(p),
                            None => refused += 1,
                        }
                    }
                }
            }
            self.counts.refused.fetch_add(refused, Ordering::Relaxed);
            if again.is_empty() {
                continue;
            }
            self.counts
                .resent
                .fetch_add(again.len() as u64, Ordering::Relaxed);
            // Off the RTCP read path: a full socket must not stop feedback being read.
            tokio::spawn(async move {
                let a = Attributes::new();
                for p in &again {
                    if stream.next.write(p, &a).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok((pkts, attr))
    }
}

#[async_trait]
impl Interceptor for BoundedNack {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        Arc::new(Reader {
            parent: reader,
            streams: Arc::clone(&self.streams),
            counts: Arc::clone(&self.counts),
        })
    }

    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(
        &self,
        info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        if !info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty())
        {
            return writer;
        }
        let stream = Arc::new(Stream {
            history: Mutex::new(History::default()),
            next: writer,
        });
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.ssrc, Arc::clone(&stream));
        stream
    }

    async fn unbind_local_stream(&self, info: &StreamInfo) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info.ssrc);
    }

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(seq: u16, bytes: usize) -> webrtc::rtp::packet::Packet {
        let mut p = webrtc::rtp::packet::Packet::default();
        p.header.sequence_number = seq;
        p.payload = Bytes::from(vec![0u8; bytes]);
        p
    }

    #[test]
    fn resends_young_packets_once_per_gap_within_the_budget() {
        let t0 = Instant::now();
        let mut h = History::default();
        for seq in 0..40u16 {
            h.sent(&packet(seq, 1000), t0);
        }
        // 40 packets of 1000 B: 10,000 B of budget, ten resends.
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(h.resend(5, ms(10)).is_some());
        // The same NACK again at once: it is still in flight.
        assert!(h.resend(5, ms(20)).is_none());
        assert!(h.resend(5, ms(10 + 100)).is_some());
        // Unknown (never sent) and too old.
        assert!(h.resend(600, ms(120)).is_none());
        assert!(h
            .resend(6, t0 + MAX_AGE + Duration::from_millis(1))
            .is_none());
        // The budget: eight more, then nothing.
        let more = (10..30u16)
            .filter(|s| h.resend(*s, ms(200)).is_some())
            .count();
        assert_eq!(more, 8);
        // Sending more refills it.
        h.sent(&packet(40, 4000), ms(300));
        assert!(h.resend(30, ms(300)).is_some());
    }

    #[test]
    fn a_slot_reused_by_a_newer_packet_is_not_the_old_one() {
        let t0 = Instant::now();
        let mut h = History::default();
        for seq in 100..120 {
            h.sent(&packet(seq, 1000), t0); // budget for the resends below
        }
        h.sent(&packet(1, 1000), t0);
        h.sent(&packet(1 + HISTORY as u16, 1000), t0);
        assert!(h.resend(1, t0).is_none());
        assert_eq!(
            h.resend(1 + HISTORY as u16, t0)
                .map(|p| p.header.sequence_number),
            Some(1 + HISTORY as u16)
        );
    }
}
