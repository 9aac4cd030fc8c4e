//! One live channel rendition, packetised once for every viewer: a sans-IO core.
//!
//! Frames arrive from the encoder unit in real time. Each gets a send deadline on a
//! timeline anchored once to the wall clock; at its deadline it is packetised (once) and
//! its payloads appended to a packet history that every client reads through its own
//! header rewrite. The history serves three purposes:
//!
//! - **GOP cache**: it always reaches back to the latest video keyframe, so a new viewer
//!   gets a burst from that keyframe at once instead of waiting for the next one;
//! - **NACK**: recent packets can be sent again;
//! - **tiers**: every packet carries, per tier, its index among the packets that tier
//!   keeps, so a client's sequence number is `seq_base + (index - start_index)`: gap-free
//!   for every tier, with no per-client counter and no per-client search on retransmit.
//!
//! - **shared wire packets**: a track given a shared SSRC also gets, per packet, the
//!   complete RTP packet in the rendition's own numbering (that SSRC, a random sequence
//!   base, a random timestamp offset), a frame's packets back to back in one buffer. A
//!   plain-RTP client of the full tier that announced the shared SSRC at SETUP is sent
//!   these bytes as they are: its header *is* the rendition's, so the fan-out copies and
//!   rewrites nothing for it, and the kernel reads every such client's message from the
//!   same hot buffer (see `fanout::engine`). Clients that need their own bytes (SRTP,
//!   lower tiers, interleaved TCP, WebRTC) keep the per-client rewrite.
//!
//! RTP timestamps are `client offset + pts + shift`, where `shift` only changes when the
//! input's timeline jumps (a loop restart, a stall): the feed then re-maps the new frames
//! onto the wall-clock timeline, so every client's timestamps keep advancing with real time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use divisor_link::{Frame, FrameFlags, TrackInfo};
use tracing::{debug, warn};

use crate::packetize::{write_rtp_header, PacketizeError, Packetizer, RtpPayload, RTP_HEADER_LEN};

/// Delay between a live frame's arrival and its send deadline at start: absorbs link
/// jitter so frames leave at even media-time intervals.
pub const LIVE_DELAY: Duration = Duration::from_millis(50);

/// Packets kept for NACK beyond the GOP cache.
pub const NACK_HISTORY: usize = 2048;

/// Most packets the GOP cache holds; a longer GOP is not cached (late joiners then wait
/// for the next keyframe, and the encoder is asked for one).
pub const MAX_CACHE: usize = 32 * 1024;

/// A frame later than this (or earlier than [`MAX_EARLY`]) against the timeline means the
/// input jumped: the timeline is re-mapped instead of sending in a burst or waiting.
const MAX_LATE: Duration = Duration::from_secs(1);
const MAX_EARLY: Duration = Duration::from_secs(5);
/// A frame flagged as a discontinuity is re-mapped only if this far off the timeline.
const MAX_DISCONTINUITY_SLACK: Duration = Duration::from_millis(500);

/// Frame-rate tier of a client: which temporal layers it receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Every frame.
    #[default]
    Full,
    /// Layers 0 and 1: about half the frame rate.
    Half,
    /// Layer 0 only: about a quarter.
    Quarter,
}

impl Tier {
    /// Number of tiers (the length of [`FeedPacket::idx`]).
    pub const COUNT: usize = 3;

    pub fn index(self) -> usize {
        match self {
            Tier::Full => 0,
            Tier::Half => 1,
            Tier::Quarter => 2,
        }
    }

    /// Highest temporal layer this tier keeps.
    pub fn max_layer(self) -> u8 {
        match self {
            Tier::Full => 3,
            Tier::Half => 1,
            Tier::Quarter => 0,
        }
    }

    /// Whether this tier keeps a packet of temporal layer `layer`.
    pub fn keeps(self, layer: u8) -> bool {
        layer <= self.max_layer()
    }

    /// Parse a `tier=` query value.
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "full" => Some(Tier::Full),
            "half" => Some(Tier::Half),
            "quarter" => Some(Tier::Quarter),
            _ => None,
        }
    }

    const ALL: [Tier; 3] = [Tier::Full, Tier::Half, Tier::Quarter];
}

/// One packetised payload of the feed.
#[derive(Clone, Debug)]
pub struct FeedPacket {
    /// Index of the track in [`LiveFeed::tracks`].
    pub track: u8,
    pub payload: Bytes,
    pub marker: bool,
    /// RTP timestamp without the client's offset.
    pub ts: u32,
    /// Temporal layer of its frame.
    pub layer: u8,
    /// Per tier: index among the packets of this track that the tier keeps (meaningless
    /// for tiers that drop it).
    pub idx: [u64; Tier::COUNT],
    /// The buffer holding this packet's frame as complete RTP packets in the track's
    /// [`SharedNumbering`] (empty when the track has none). `payload` is a slice of it.
    pub frame_wire: Bytes,
    /// Where this packet (header included) starts in `frame_wire`; it is
    /// `RTP_HEADER_LEN + payload.len()` long.
    pub wire_at: u32,
}

impl FeedPacket {
    /// This packet as sent to clients of the track's shared numbering, if it has one.
    pub fn wire(&self) -> Option<&[u8]> {
        let at = self.wire_at as usize;
        self.frame_wire
            .get(at..at + RTP_HEADER_LEN + self.payload.len())
    }
}

/// The numbering of a track's shared stream: what every client sent the pre-built wire
/// packets sees. Random per feed, as RFC 3550 asks of a stream's initial values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedNumbering {
    pub ssrc: u32,
    /// Sequence number of the packet of full-tier index 0.
    pub seq0: u16,
    pub ts_offset: u32,
}

impl SharedNumbering {
    /// The sequence number of the packet of full-tier index `idx`.
    pub fn seq(&self, idx: u64) -> u16 {
        self.seq0.wrapping_add(idx as u16)
    }
}

/// One track of the feed.
pub struct FeedTrack {
    pub info: TrackInfo,
    pub payload_type: u8,
    packetizer: Packetizer,
    /// Next index per tier.
    next_idx: [u64; Tier::COUNT],
    /// Timeline shift in this track's clock.
    shift_ticks: i64,
    /// The shared stream's numbering, when the track has one.
    pub shared: Option<SharedNumbering>,
}

/// Where a client starts reading the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartPoint {
    /// Absolute position in the history of the first packet to send.
    pub pos: u64,
    /// Per track: index (in the client's tier) of its first packet, and that packet's
    /// timestamp (without offset), if the history holds one yet.
    pub tracks: Vec<(u64, Option<u32>)>,
}

/// The feed.
pub struct LiveFeed {
    tracks: Vec<FeedTrack>,
    queue: VecDeque<(Instant, Frame)>,
    history: VecDeque<FeedPacket>,
    /// Absolute position of `history[0]`.
    base: u64,
    /// Absolute position of the first packet of the latest video keyframe.
    gop_start: Option<u64>,
    /// Wall-clock time of timeline position 0... as (instant, timeline µs).
    anchor: Option<(Instant, i64)>,
    /// Added to every frame's dts (µs) to place it on the timeline.
    shift_us: i64,
    /// Timeline position of the latest frame queued.
    last_us: i64,
    /// Positions below this must stay (clients that are about to start from there).
    pinned: Option<u64>,
    has_video: bool,
    scratch: Vec<RtpPayload>,
    /// Arrival-to-deadline delay of the first frame (and of re-mapped ones).
    delay: Duration,
}

impl LiveFeed {
    /// A feed for the announced `tracks`. Tracks we cannot packetise (no packetiser for
    /// the codec yet) are an error: the channel cannot be served. `shared_ssrcs[i]`, when
    /// given, is the SSRC of track `i`'s shared stream (see the module notes).
    pub fn new(tracks: &[TrackInfo], shared_ssrcs: &[u32]) -> Result<LiveFeed, PacketizeError> {
        Self::with_delay(tracks, shared_ssrcs, LIVE_DELAY)
    }

    /// [`LiveFeed::new`] with frames due `delay` after they arrive instead of
    /// [`LIVE_DELAY`]. Frames are sent at media time from that anchor on, so a gap in
    /// arrivals shorter than `delay` (an upstream switch that is then caught up in a burst)
    /// is invisible to clients; it costs `delay` of latency.
    pub fn with_delay(
        tracks: &[TrackInfo],
        shared_ssrcs: &[u32],
        delay: Duration,
    ) -> Result<LiveFeed, PacketizeError> {
        let mut out = Vec::with_capacity(tracks.len());
        for (i, info) in tracks.iter().enumerate() {
            out.push(FeedTrack {
                payload_type: crate::sdp::payload_type(info),
                packetizer: Packetizer::new(info)?,
                info: info.clone(),
                next_idx: [0; Tier::COUNT],
                shift_ticks: 0,
                shared: shared_ssrcs.get(i).map(|&ssrc| SharedNumbering {
                    ssrc,
                    seq0: rand::random(),
                    ts_offset: rand::random(),
                }),
            });
        }
        Ok(LiveFeed {
            has_video: tracks.iter().any(|t| t.codec.is_video()),
            tracks: out,
            queue: VecDeque::new(),
            history: VecDeque::new(),
            base: 0,
            gop_start: None,
            anchor: None,
            shift_us: 0,
            last_us: i64::MIN,
            pinned: None,
            scratch: Vec::new(),
            delay,
        })
    }

    pub fn tracks(&self) -> &[FeedTrack] {
        &self.tracks
    }

    /// Index of the track whose link track number is `track`.
    pub fn track_index(&self, track: u8) -> Option<usize> {
        self.tracks.iter().position(|t| t.info.track == track)
    }

    fn to_us(&self, i: usize, t: i64) -> i64 {
        let rate = i64::from(self.tracks[i].info.clock_rate.max(1));
        t.saturating_mul(1_000_000) / rate
    }

    /// Timeline position (µs) due at `now`, if the feed has started.
    pub fn timeline_at(&self, now: Instant) -> Option<i64> {
        let (at, us) = self.anchor?;
        Some(if now >= at {
            us + now.duration_since(at).as_micros() as i64
        } else {
            us - at.duration_since(now).as_micros() as i64
        })
    }

    /// RTP timestamp (without client offset) of track `i` at `now`, for sender reports.
    pub fn rtp_time_at(&self, i: usize, now: Instant) -> Option<u32> {
        let us = self.timeline_at(now)?;
        let rate = i64::from(self.tracks.get(i)?.info.clock_rate);
        Some((us.saturating_mul(rate) / 1_000_000) as u32)
    }

    fn deadline_of(&self, timeline_us: i64) -> Option<Instant> {
        let (at, us) = self.anchor?;
        let d = timeline_us - us;
        Some(if d >= 0 {
            at + Duration::from_micros(d as u64)
        } else {
            at.checked_sub(Duration::from_micros((-d) as u64))
                .unwrap_or(at)
        })
    }

    /// A frame from the encoder unit, arrived at `now`.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) {
        let Some(i) = self.track_index(frame.track) else {
            debug!(
                track = frame.track,
                "live frame of an unannounced track dropped"
            );
            return;
        };
        if frame.flags.contains(FrameFlags::END_OF_STREAM) && frame.data.is_empty() {
            return;
        }
        let dts_us = self.to_us(i, frame.dts);
        if self.anchor.is_none() {
            self.anchor = Some((now + self.delay, dts_us));
        }
        let mut timeline = dts_us + self.shift_us;
        let deadline = self.deadline_of(timeline).unwrap_or(now);
        // A marked discontinuity whose timestamps still fit the timeline (an input that
        // keeps them increasing across a loop) needs no re-mapping.
        let off_course = deadline + MAX_DISCONTINUITY_SLACK < now + self.delay
            || deadline > now + self.delay + MAX_DISCONTINUITY_SLACK;
        let jumped = (frame.flags.contains(FrameFlags::DISCONTINUITY) && off_course)
            || deadline + MAX_LATE < now
            || deadline > now + MAX_EARLY;
        if jumped {
            // Re-map: this frame goes out after the usual delay, never before the frame
            // queued last, so the timeline (and every client's RTP clock) runs on.
            let target = self
                .timeline_at(now + self.delay)
                .unwrap_or(dts_us)
                .max(self.last_us.saturating_add(1));
            let delta = target - timeline;
            if delta != 0 {
                debug!(delta_us = delta, "live input timeline jumped; re-mapped");
                self.shift_us += delta;
                for t in &mut self.tracks {
                    t.shift_ticks =
                        self.shift_us.saturating_mul(i64::from(t.info.clock_rate)) / 1_000_000;
                }
            }
            timeline = dts_us + self.shift_us;
        }
        self.last_us = self.last_us.max(timeline);
        let deadline = self.deadline_of(timeline).unwrap_or(now);
        self.queue.push_back((deadline, frame));
    }

    /// When the next queued frame is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|(d, _)| *d)
    }

    /// Packetise every frame due at `now`, appending to the history. Returns the range of
    /// absolute positions added (empty when nothing was due) and the deadline of the
    /// earliest frame sent. `prepare` is called on each frame just before packetisation
    /// (the one spot where frames enter it: edge encryption hooks in there).
    pub fn poll(
        &mut self,
        now: Instant,
        mut prepare: impl FnMut(&mut Frame),
    ) -> (std::ops::Range<u64>, Option<Instant>) {
        let from = self.end();
        let mut first_deadline = None;
        while let Some((due, _)) = self.queue.front() {
            if *due > now {
                break;
            }
            let Some((due, mut frame)) = self.queue.pop_front() else {
                break;
            };
            first_deadline.get_or_insert(due);
            prepare(&mut frame);
            self.packetize(frame);
        }
        self.trim();
        (from..self.end(), first_deadline)
    }

    fn packetize(&mut self, frame: Frame) {
        let Some(i) = self.track_index(frame.track) else {
            return;
        };
        let t = &mut self.tracks[i];
        self.scratch.clear();
        if let Err(e) = t.packetizer.packetize_into(&frame, &mut self.scratch) {
            warn!(
                track = frame.track,
                pts = frame.pts,
                "live frame dropped: {e}"
            );
            return;
        }
        if self.scratch.is_empty() {
            return;
        }
        let video = t.info.codec.is_video();
        let layer = if video { frame.flags.layer() } else { 0 };
        let ts = (frame.pts.wrapping_add(t.shift_ticks)) as u32;
        // Audio-only feeds can start anywhere: their start point is set once.
        let starts_gop = video && frame.flags.contains(FrameFlags::KEYFRAME);
        if starts_gop || (!self.has_video && self.gop_start.is_none()) {
            self.gop_start = Some(self.base + self.history.len() as u64);
        }
        // The frame once more as complete packets in the shared numbering, back to back,
        // so a client's run of them is one slice (one iovec, one GSO message).
        let frame_wire = match t.shared.filter(|_| Tier::Full.keeps(layer)) {
            Some(n) => {
                let len: usize = self
                    .scratch
                    .iter()
                    .map(|p| RTP_HEADER_LEN + p.data.len())
                    .sum();
                let mut buf = BytesMut::with_capacity(len);
                let mut h = [0u8; RTP_HEADER_LEN];
                for (k, p) in self.scratch.iter().enumerate() {
                    let seq = n.seq(t.next_idx[Tier::Full.index()] + k as u64);
                    write_rtp_header(
                        &mut h,
                        t.payload_type,
                        p.marker,
                        seq,
                        n.ts_offset.wrapping_add(ts),
                        n.ssrc,
                    );
                    buf.put_slice(&h);
                    buf.put_slice(&p.data);
                }
                buf.freeze()
            }
            None => Bytes::new(),
        };
        let mut at = 0usize;
        for p in self.scratch.drain(..) {
            let mut idx = [u64::MAX; Tier::COUNT];
            for tier in Tier::ALL {
                if tier.keeps(layer) {
                    idx[tier.index()] = t.next_idx[tier.index()];
                    t.next_idx[tier.index()] += 1;
                }
            }
            let len = p.data.len();
            // With a wire buffer the payload is its slice: the frame is held once.
            let payload = if frame_wire.is_empty() {
                p.data
            } else {
                frame_wire.slice(at + RTP_HEADER_LEN..at + RTP_HEADER_LEN + len)
            };
            self.history.push_back(FeedPacket {
                track: i as u8,
                payload,
                marker: p.marker,
                ts,
                layer,
                idx,
                frame_wire: frame_wire.clone(),
                wire_at: at as u32,
            });
            if !frame_wire.is_empty() {
                at += RTP_HEADER_LEN + len;
            }
        }
    }

    /// Drop history nobody can need: older than the GOP cache and the NACK window, and
    /// not pinned by a client about to start.
    fn trim(&mut self) {
        let keep_from_nack = self.end().saturating_sub(NACK_HISTORY as u64);
        let mut keep_from = keep_from_nack.min(self.gop_start.unwrap_or(u64::MAX));
        if let Some(p) = self.pinned {
            keep_from = keep_from.min(p);
        }
        // A GOP too long to cache is given up.
        if self.end().saturating_sub(keep_from) > MAX_CACHE as u64 {
            keep_from = keep_from_nack;
            if self.gop_start.is_some_and(|g| g < keep_from) {
                self.gop_start = None;
            }
        }
        while self.base < keep_from && !self.history.is_empty() {
            self.history.pop_front();
            self.base += 1;
        }
    }

    /// Absolute position after the last packet.
    pub fn end(&self) -> u64 {
        self.base + self.history.len() as u64
    }

    /// The packet at absolute position `pos`, if still held.
    pub fn packet(&self, pos: u64) -> Option<&FeedPacket> {
        let k = pos.checked_sub(self.base)?;
        self.history.get(usize::try_from(k).ok()?)
    }

    /// Packets from `range` still held.
    pub fn packets(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = &FeedPacket> {
        let from = range.start.max(self.base);
        let to = range.end.min(self.end());
        let a = (from - self.base.min(from)) as usize;
        let b = (to.max(from) - self.base.min(to.max(from))) as usize;
        self.history.range(a..b.max(a))
    }

    /// Absolute position of the first packet of the latest keyframe, if cached.
    pub fn gop_start(&self) -> Option<u64> {
        self.gop_start
    }

    /// Whether a late joiner could start at a keyframe right now.
    pub fn has_gop(&self) -> bool {
        self.gop_start.is_some()
    }

    /// Where a client of `tier` joining now starts: the latest keyframe if cached, else
    /// the next packet. The history from there is pinned until [`LiveFeed::unpin`].
    pub fn start_point(&mut self, tier: Tier) -> StartPoint {
        let pos = self.gop_start.unwrap_or(self.end());
        self.pinned = Some(self.pinned.map_or(pos, |p| p.min(pos)));
        let tracks = (0..self.tracks.len())
            .map(|i| {
                let first = self
                    .packets(pos..self.end())
                    .find(|p| usize::from(p.track) == i && tier.keeps(p.layer));
                match first {
                    Some(p) => (p.idx[tier.index()], Some(p.ts)),
                    None => (self.tracks[i].next_idx[tier.index()], None),
                }
            })
            .collect();
        StartPoint { pos, tracks }
    }

    /// Let history before the GOP cache go again (the pinning clients started).
    pub fn unpin(&mut self) {
        self.pinned = None;
    }

    /// Absolute position of the packet of track `i` whose index in `tier` is `idx`.
    pub fn find(&self, i: usize, tier: Tier, idx: u64) -> Option<u64> {
        let t = tier.index();
        // Indices grow with position within a track: binary search on position, looking
        // at the nearest packet of the track at or after each probe.
        let (mut lo, mut hi) = (0usize, self.history.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let found = self
                .history
                .range(mid..)
                .position(|p| usize::from(p.track) == i && tier.keeps(p.layer));
            match found {
                None => hi = mid,
                Some(off) => {
                    let p = &self.history[mid + off];
                    match p.idx[t].cmp(&idx) {
                        std::cmp::Ordering::Less => lo = mid + off + 1,
                        std::cmp::Ordering::Equal => return Some(self.base + (mid + off) as u64),
                        std::cmp::Ordering::Greater => hi = mid,
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use divisor_link::Codec;

    fn video() -> TrackInfo {
        TrackInfo {
            track: 0,
            codec: Codec::H264,
            clock_rate: 90_000,
            width: 320,
            height: 240,
            sample_rate: 0,
            channels: 0,
            bitrate: 0,
            params: vec![],
        }
    }

    fn frame(n: i64, key: bool, layer: u8) -> Frame {
        let mut flags = FrameFlags::empty().with_layer(layer);
        if key {
            flags.insert(FrameFlags::KEYFRAME);
        }
        Frame {
            channel: 1,
            track: 0,
            codec: Codec::H264,
            flags,
            pts: n * 3600,
            dts: n * 3600,
            duration: 3600,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65, 1, 2, 3]),
        }
    }

    /// Layers of a 4-frame temporal pattern: 0 2 1 2.
    fn layer(n: i64) -> u8 {
        [0, 2, 1, 2][(n % 4) as usize]
    }

    fn feed_with(n: i64, gop: i64) -> (LiveFeed, Instant) {
        let mut f = LiveFeed::new(&[video()], &[]).unwrap();
        let t0 = Instant::now();
        for i in 0..n {
            f.on_frame(frame(i, i % gop == 0, layer(i)), t0);
        }
        (f, t0)
    }

    #[test]
    fn frames_leave_at_their_timeline_deadline() {
        let (mut f, t0) = feed_with(10, 5);
        assert_eq!(f.next_deadline(), Some(t0 + LIVE_DELAY));
        let (r, _) = f.poll(t0 + LIVE_DELAY, |_| {});
        assert_eq!(r, 0..1);
        let (r, _) = f.poll(t0 + LIVE_DELAY + Duration::from_millis(120), |_| {});
        assert_eq!(r, 1..4, "frames at 40, 80, 120 ms");
    }

    #[test]
    fn late_joiners_start_at_the_latest_keyframe() {
        let (mut f, t0) = feed_with(12, 5);
        f.poll(t0 + Duration::from_secs(2), |_| {});
        let sp = f.start_point(Tier::Full);
        // Keyframes at 0, 5, 10: the start is frame 10 (one packet per frame here).
        assert_eq!(sp.pos, 10);
        assert_eq!(sp.tracks[0], (10, Some(10 * 3600)));
    }

    #[test]
    fn tiers_number_their_packets_without_gaps() {
        let (mut f, t0) = feed_with(8, 8);
        f.poll(t0 + Duration::from_secs(2), |_| {});
        let half: Vec<u64> = f
            .packets(0..f.end())
            .filter(|p| Tier::Half.keeps(p.layer))
            .map(|p| p.idx[Tier::Half.index()])
            .collect();
        assert_eq!(half, vec![0, 1, 2, 3], "frames 0, 2, 4, 6");
        let quarter: Vec<u64> = f
            .packets(0..f.end())
            .filter(|p| Tier::Quarter.keeps(p.layer))
            .map(|p| p.idx[Tier::Quarter.index()])
            .collect();
        assert_eq!(quarter, vec![0, 1], "frames 0, 4");
        assert_eq!(f.find(0, Tier::Half, 2), Some(4));
        assert_eq!(f.find(0, Tier::Quarter, 1), Some(4));
        assert_eq!(f.find(0, Tier::Full, 7), Some(7));
        assert_eq!(f.find(0, Tier::Full, 99), None);
    }

    #[test]
    fn a_timeline_jump_keeps_timestamps_running() {
        let (mut f, t0) = feed_with(5, 5);
        f.poll(t0 + Duration::from_secs(1), |_| {});
        // The input loops: dts back to 0, two seconds later.
        let later = t0 + Duration::from_secs(2);
        f.on_frame(frame(0, true, 0), later);
        let due = f.next_deadline().unwrap();
        assert!(due >= later && due <= later + LIVE_DELAY + Duration::from_millis(1));
        f.poll(due, |_| {});
        let last = f.packet(f.end() - 1).unwrap().ts;
        let before = f.packet(4).unwrap().ts;
        assert!(last > before, "timestamps must move on: {before} -> {last}");
    }

    #[test]
    fn history_is_trimmed_but_keeps_the_gop() {
        let mut f = LiveFeed::new(&[video()], &[]).unwrap();
        let t0 = Instant::now();
        let n = (NACK_HISTORY + 500) as i64;
        for i in 0..n {
            f.on_frame(frame(i, i == 0, 0), t0);
        }
        f.poll(t0 + Duration::from_secs(1000), |_| {});
        assert_eq!(f.packets(0..f.end()).count(), n as usize, "GOP kept whole");
        assert!(f.has_gop());
    }
}
