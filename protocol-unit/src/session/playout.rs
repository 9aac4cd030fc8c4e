//! Media-time playout of one VoD channel: a sans-IO core.
//!
//! Frames arrive from the encoder unit ahead of time (bounded by credits). The core holds
//! them per track and releases each at its deadline, `epoch + (dts - epoch media time)`,
//! as RTP packets, with RTCP sender reports that map the same media clock to wall time.
//! It never reads a clock or touches a socket: the driver ([`super::driver`]) passes `now`
//! in and carries the [`Action`]s out, and tests drive it faster than real time.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use divisor_link::{Frame, FrameFlags, Message, TrackInfo};
use tracing::warn;

use crate::content::EdgeCrypto;
use crate::packetize::{rtp_timestamp, Packetizer, RtpHeader};
use crate::upstream::ContentKey;

/// How often each track gets an RTCP sender report while playing.
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an RTP packet of `track`: `header` followed by `payload` (kept apart so the
    /// payload is never copied on its way to the socket).
    Rtp {
        track: u8,
        header: [u8; crate::packetize::RTP_HEADER_LEN],
        payload: Bytes,
    },
    /// Send an RTCP packet of `track`.
    Rtcp { track: u8, packet: Bytes },
    /// Grant the encoder unit this many more frames.
    Credits(u32),
    /// Every set-up track reached its end; BYEs were sent.
    Finished,
}

/// The RTP state of one track.
struct TrackOut {
    info: TrackInfo,
    payload_type: u8,
    ssrc: u32,
    /// Next sequence number.
    seq: u16,
    ts_offset: u32,
    packetizer: Packetizer,
    queue: VecDeque<Frame>,
    /// The client set this track up; frames of other tracks are dropped.
    enabled: bool,
    /// An end-of-stream frame arrived for this track.
    eos: bool,
    packets: u32,
    octets: u32,
    next_report: Option<Instant>,
}

impl TrackOut {
    fn to_micros(&self, t: i64) -> i64 {
        let rate = i64::from(self.info.clock_rate.max(1));
        t.saturating_mul(1_000_000) / rate
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Set up, never played.
    Idle,
    /// Waiting for the encoder to confirm seek `request`; frames until then are stale.
    Seeking {
        request: u32,
    },
    /// Media time `epoch_media_us` is due at `epoch`.
    Playing {
        epoch: Instant,
        epoch_media_us: i64,
    },
    Paused {
        media_us: i64,
    },
    Finished {
        media_us: i64,
    },
}

/// Where each track stands at the start of play: for the RTSP `RTP-Info` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackStart {
    pub track: u8,
    pub seq: u16,
    pub rtptime: u32,
    pub ssrc: u32,
}

/// Playout of one channel.
pub struct Playout {
    tracks: Vec<TrackOut>,
    state: State,
    next_request: u32,
    pending_credits: u32,
    cname: String,
    /// The channel's content keys, for frames left to the edge to encrypt
    /// ([`FrameFlags::EDGE_ENCRYPT`]).
    edge: EdgeCrypto,
    /// Edge frames dropped because they could not be encrypted (for rate-limited logs).
    edge_failures: u64,
}

impl Playout {
    /// A playout for `tracks`; SSRCs, first sequence numbers and timestamp offsets are random
    /// (RFC 3550 section 5.1).
    pub fn new(
        tracks: &[TrackInfo],
        cname: &str,
    ) -> Result<Playout, crate::packetize::PacketizeError> {
        let mut outs = Vec::with_capacity(tracks.len());
        for info in tracks {
            outs.push(TrackOut {
                payload_type: crate::sdp::payload_type(info),
                ssrc: rand::random(),
                seq: rand::random(),
                ts_offset: rand::random(),
                packetizer: Packetizer::new(info)?,
                info: info.clone(),
                queue: VecDeque::new(),
                enabled: false,
                eos: false,
                packets: 0,
                octets: 0,
                next_report: None,
            });
        }
        Ok(Playout {
            tracks: outs,
            state: State::Idle,
            next_request: 1,
            pending_credits: 0,
            cname: cname.to_string(),
            edge: EdgeCrypto::new(),
            edge_failures: 0,
        })
    }

    /// Take the content keys the channel received before its announce (oldest first).
    /// A key of the wrong length is logged and skipped.
    pub fn with_keys(mut self, keys: &[ContentKey]) -> Playout {
        for k in keys {
            if let Err(e) = self.edge.add_key(k.key_id, k.cipher, &k.key) {
                warn!(key_id = k.key_id, "content key ignored: {e}");
            }
        }
        self
    }

    /// Look at a channel message in link order: content keys are kept for edge encryption.
    /// Must see every [`Message::ContentKey`] before the frames that follow it.
    pub fn on_message(&mut self, msg: &Message) {
        if let Err(e) = self.edge.on_message(msg) {
            warn!("content key ignored: {e}");
        }
    }

    /// Encrypt a frame left to the edge; `None` (logged, rate-limited) when it cannot be.
    fn prepare(&mut self, frame: Frame) -> Option<Frame> {
        if !frame.flags.contains(FrameFlags::EDGE_ENCRYPT) {
            return Some(frame);
        }
        match self.edge.prepare(frame) {
            Ok(f) => Some(f),
            Err(e) => {
                self.edge_failures += 1;
                if self.edge_failures.is_power_of_two() {
                    warn!(
                        dropped = self.edge_failures,
                        "frame dropped: cannot encrypt at the edge: {e}"
                    );
                }
                None
            }
        }
    }

    /// The client set up `track`. Returns false for a track the channel does not have.
    pub fn enable_track(&mut self, track: u8) -> bool {
        match self.tracks.iter_mut().find(|t| t.info.track == track) {
            Some(t) => {
                t.enabled = true;
                true
            }
            None => false,
        }
    }

    /// Tracks the client set up.
    pub fn enabled_tracks(&self) -> impl Iterator<Item = u8> + '_ {
        self.tracks
            .iter()
            .filter(|t| t.enabled)
            .map(|t| t.info.track)
    }

    /// SSRC of `track`.
    pub fn ssrc(&self, track: u8) -> Option<u32> {
        self.track(track).map(|t| t.ssrc)
    }

    fn track(&self, track: u8) -> Option<&TrackOut> {
        self.tracks.iter().find(|t| t.info.track == track)
    }

    /// Whether the core has played at least once (so PLAY without Range resumes).
    pub fn has_started(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Whether frames are going out.
    pub fn is_playing(&self) -> bool {
        matches!(self.state, State::Playing { .. })
    }

    /// Start a seek: queued frames are dropped (their credits returned) and frames arriving
    /// before the matching [`Playout::on_seek_done`] are stale. Returns the request id to send.
    pub fn begin_seek(&mut self) -> u32 {
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        for t in &mut self.tracks {
            self.pending_credits += t.queue.iter().filter(|f| needs_credit(f)).count() as u32;
            t.queue.clear();
            t.eos = false;
            t.next_report = None;
        }
        self.state = State::Seeking { request };
        request
    }

    /// The encoder confirmed seek `request` at `position_ms`. The core waits, paused at
    /// that position, for [`Playout::resume`]: the RTSP reply to PLAY must reach the client
    /// before the first packet does. Returns false (and changes nothing) for an outdated
    /// request.
    pub fn on_seek_done(&mut self, request: u32, position_ms: u64) -> bool {
        if self.state != (State::Seeking { request }) {
            return false;
        }
        self.state = State::Paused {
            media_us: position_ms as i64 * 1000,
        };
        true
    }

    /// Media position in microseconds at `now`.
    pub fn position_us(&self, now: Instant) -> i64 {
        match self.state {
            State::Idle | State::Seeking { .. } => 0,
            State::Playing {
                epoch,
                epoch_media_us,
            } => epoch_media_us + now.saturating_duration_since(epoch).as_micros() as i64,
            State::Paused { media_us } | State::Finished { media_us } => media_us,
        }
    }

    /// Stop releasing frames; the position is kept.
    pub fn pause(&mut self, now: Instant) {
        if let State::Playing { .. } = self.state {
            self.state = State::Paused {
                media_us: self.position_us(now),
            };
        }
    }

    /// Go on from the paused position. The media timeline continues where it stopped:
    /// RTP timestamps follow media time, not wall time.
    pub fn resume(&mut self, now: Instant) {
        if let State::Paused { media_us } = self.state {
            self.state = State::Playing {
                epoch: now,
                epoch_media_us: media_us,
            };
        }
    }

    /// RTP-Info of every enabled track for play starting at the current position.
    pub fn track_starts(&self, now: Instant) -> Vec<TrackStart> {
        let media_us = self.position_us(now);
        self.tracks
            .iter()
            .filter(|t| t.enabled)
            .map(|t| TrackStart {
                track: t.info.track,
                seq: t.seq,
                rtptime: t
                    .ts_offset
                    .wrapping_add(micros_to_clock(media_us, t.info.clock_rate) as u32),
                ssrc: t.ssrc,
            })
            .collect()
    }

    /// A frame from the encoder unit.
    /// Frames left to the edge are encrypted here, as they arrive (so under the key the
    /// encoder announced last before them); one that cannot be is dropped.
    pub fn on_frame(&mut self, frame: Frame) {
        let stale = matches!(self.state, State::Seeking { .. } | State::Idle);
        let credit = needs_credit(&frame);
        let wanted = !stale
            && self
                .tracks
                .iter()
                .any(|t| t.info.track == frame.track && t.enabled);
        let frame = if wanted { self.prepare(frame) } else { None };
        let Some(frame) = frame else {
            if credit {
                self.pending_credits += 1;
            }
            return;
        };
        match self.tracks.iter_mut().find(|t| t.info.track == frame.track) {
            Some(t) if t.enabled && !stale => {
                if frame.flags.contains(FrameFlags::END_OF_STREAM) {
                    t.eos = true;
                    if !frame.data.is_empty() {
                        t.queue.push_back(frame);
                    }
                } else {
                    t.queue.push_back(frame);
                }
            }
            _ => {
                if credit {
                    self.pending_credits += 1;
                }
            }
        }
    }

    /// Release everything due at `now`. `wall` is the wall-clock time of `now`, for RTCP.
    pub fn poll(&mut self, now: Instant, wall: SystemTime, out: &mut Vec<Action>) {
        if let State::Playing {
            epoch,
            epoch_media_us,
        } = self.state
        {
            let media_now =
                epoch_media_us + now.saturating_duration_since(epoch).as_micros() as i64;
            // Release frames in deadline order across tracks.
            loop {
                let next = self
                    .tracks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| t.queue.front().map(|f| (i, t.to_micros(f.dts))))
                    .min_by_key(|&(_, due)| due);
                let Some((i, due)) = next else { break };
                if due > media_now {
                    break;
                }
                let Some(frame) = self.tracks[i].queue.pop_front() else {
                    break;
                };
                if needs_credit(&frame) {
                    self.pending_credits += 1;
                }
                self.send_frame(i, &frame, out);
            }
            self.reports(now, wall, media_now, out);
            let all_done = self
                .tracks
                .iter()
                .filter(|t| t.enabled)
                .all(|t| t.eos && t.queue.is_empty());
            if all_done && self.tracks.iter().any(|t| t.enabled) {
                for t in self.tracks.iter().filter(|t| t.enabled) {
                    let rtp_time = t
                        .ts_offset
                        .wrapping_add(micros_to_clock(media_now, t.info.clock_rate) as u32);
                    let mut packet = crate::rtcp::sender_report(
                        t.ssrc,
                        wall,
                        rtp_time,
                        t.packets,
                        t.octets,
                        &self.cname,
                    )
                    .to_vec();
                    packet.extend_from_slice(&crate::rtcp::bye(t.ssrc));
                    out.push(Action::Rtcp {
                        track: t.info.track,
                        packet: Bytes::from(packet),
                    });
                }
                self.state = State::Finished {
                    media_us: media_now,
                };
                out.push(Action::Finished);
            }
        }
        if self.pending_credits > 0 {
            out.push(Action::Credits(std::mem::take(&mut self.pending_credits)));
        }
    }

    fn send_frame(&mut self, i: usize, frame: &Frame, out: &mut Vec<Action>) {
        let t = &mut self.tracks[i];
        let payloads = match t.packetizer.packetize(frame) {
            Ok(p) => p,
            Err(e) => {
                warn!(
                    track = t.info.track,
                    pts = frame.pts,
                    "frame dropped: cannot packetise: {e}"
                );
                return;
            }
        };
        let timestamp = rtp_timestamp(frame, t.ts_offset);
        for p in payloads {
            let header = RtpHeader {
                payload_type: t.payload_type,
                marker: p.marker,
                sequence: t.seq,
                timestamp,
                ssrc: t.ssrc,
            };
            t.seq = t.seq.wrapping_add(1);
            t.packets = t.packets.wrapping_add(1);
            t.octets = t.octets.wrapping_add(p.data.len() as u32);
            out.push(Action::Rtp {
                track: t.info.track,
                header: header.to_bytes(),
                payload: p.data,
            });
        }
    }

    /// Sender reports: the RTP time of `media_now` is offset + media time in the track
    /// clock, the same mapping every packet's timestamp uses, so audio and video agree.
    fn reports(&mut self, now: Instant, wall: SystemTime, media_now: i64, out: &mut Vec<Action>) {
        for t in self
            .tracks
            .iter_mut()
            .filter(|t| t.enabled && t.packets > 0)
        {
            if t.next_report.is_some_and(|due| due > now) {
                continue;
            }
            t.next_report = Some(now + SENDER_REPORT_INTERVAL);
            let rtp_time = t
                .ts_offset
                .wrapping_add(micros_to_clock(media_now, t.info.clock_rate) as u32);
            out.push(Action::Rtcp {
                track: t.info.track,
                packet: crate::rtcp::sender_report(
                    t.ssrc,
                    wall,
                    rtp_time,
                    t.packets,
                    t.octets,
                    &self.cname,
                ),
            });
        }
    }

    /// When [`Playout::poll`] has work next, if ever.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let State::Playing {
            epoch,
            epoch_media_us,
        } = self.state
        else {
            return None;
        };
        let next_frame = self
            .tracks
            .iter()
            .filter_map(|t| t.queue.front().map(|f| t.to_micros(f.dts)))
            .min()
            .map(|due| epoch + Duration::from_micros((due - epoch_media_us).max(0) as u64));
        let next_report = self.tracks.iter().filter_map(|t| t.next_report).min();
        let all_eos = self
            .tracks
            .iter()
            .filter(|t| t.enabled)
            .all(|t| t.eos && t.queue.is_empty());
        let finish = all_eos.then_some(epoch);
        [next_frame, next_report, finish]
            .into_iter()
            .flatten()
            .min()
    }
}

/// End-of-stream markers are sent without credit; every other frame consumed one.
fn needs_credit(frame: &Frame) -> bool {
    !frame.flags.contains(FrameFlags::END_OF_STREAM)
}

fn micros_to_clock(us: i64, rate: u32) -> i64 {
    us.saturating_mul(i64::from(rate)) / 1_000_000
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

    fn frame(pts: i64, flags: FrameFlags) -> Frame {
        Frame {
            channel: 1,
            track: 0,
            codec: Codec::H264,
            flags,
            pts,
            dts: pts,
            duration: 3600,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65, 1, 2, 3]),
        }
    }

    /// A one-track playout whose seek to 0 completed and which started playing at `t0`.
    fn playing_from_zero() -> (Playout, Instant) {
        let mut p = Playout::new(&[video()], "t").unwrap();
        assert!(p.enable_track(0));
        let req = p.begin_seek();
        let t0 = Instant::now();
        assert!(p.on_seek_done(req, 0));
        p.resume(t0);
        (p, t0)
    }

    fn rtp(actions: &[Action]) -> Vec<Bytes> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Rtp {
                    header, payload, ..
                } => {
                    let mut b = header.to_vec();
                    b.extend_from_slice(payload);
                    Some(Bytes::from(b))
                }
                _ => None,
            })
            .collect()
    }

    fn credits(actions: &[Action]) -> u32 {
        actions
            .iter()
            .map(|a| match a {
                Action::Credits(n) => *n,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn edge_frames_are_encrypted_on_arrival_and_dropped_without_a_key() {
        use divisor_link::content::{derive_key, parse, FrameCipher, Keyring};
        use divisor_link::Cipher;
        let key = derive_key(b"m", "vod/a.mp4#", 0, Cipher::DesCbc);
        // No key yet: the edge frame is dropped, its credit returned, nothing sent.
        let (mut p, t0) = playing_from_zero();
        p.on_frame(frame(0, FrameFlags::KEYFRAME | FrameFlags::EDGE_ENCRYPT));
        let mut out = Vec::new();
        p.poll(t0, SystemTime::now(), &mut out);
        assert!(rtp(&out).is_empty());
        assert_eq!(credits(&out), 1);
        // With the key (before the announce, or as a link message): the same bytes the
        // encoder would send, packetised as one opaque fragment (S|E).
        let (p, t0) = playing_from_zero();
        let mut p = p.with_keys(&[ContentKey {
            key_id: 0,
            cipher: Cipher::DesCbc,
            key: key.clone(),
        }]);
        p.on_frame(frame(0, FrameFlags::KEYFRAME | FrameFlags::EDGE_ENCRYPT));
        let mut out = Vec::new();
        p.poll(t0, SystemTime::now(), &mut out);
        let pkts = rtp(&out);
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0][12], 0xC0, "S and E fragment header");
        let payload = &pkts[0][13..];
        assert_eq!(parse(payload).unwrap().key_id, 0);
        let c = FrameCipher::new(Cipher::DesCbc, 0, &key).unwrap();
        assert_eq!(
            payload,
            &c.encrypt(0, 0, &frame(0, FrameFlags::empty()).data)[..]
        );
        let mut ring = Keyring::new();
        ring.insert(c);
        assert_eq!(
            ring.decrypt(payload).unwrap(),
            frame(0, FrameFlags::empty()).data
        );
        let (mut p, _) = playing_from_zero();
        p.on_message(&divisor_link::Message::ContentKey {
            channel: 1,
            key_id: 0,
            cipher: Cipher::DesCbc,
            key,
        });
        p.on_frame(frame(0, FrameFlags::EDGE_ENCRYPT));
        assert!(p.tracks[0].queue[0].flags.contains(FrameFlags::ENCRYPTED));
    }

    #[test]
    fn frames_leave_at_their_media_time() {
        let mut p = Playout::new(&[video()], "t").unwrap();
        assert!(p.enable_track(0));
        let req = p.begin_seek();
        let t0 = Instant::now();
        assert!(p.on_seek_done(req, 0));
        p.resume(t0);
        for i in 0..10 {
            p.on_frame(frame(i * 3600, FrameFlags::empty()));
        }
        let mut out = Vec::new();
        p.poll(t0, SystemTime::now(), &mut out);
        assert_eq!(rtp(&out).len(), 1, "only the frame at media time 0 is due");
        out.clear();
        p.poll(t0 + Duration::from_millis(200), SystemTime::now(), &mut out);
        assert_eq!(rtp(&out).len(), 5, "frames at 40..200 ms are due");
        assert_eq!(credits(&out), 5);
        let next = p.next_wakeup().unwrap();
        assert_eq!(next, t0 + Duration::from_millis(240));
    }

    #[test]
    fn stale_frames_before_seek_done_are_dropped_and_credited() {
        let mut p = Playout::new(&[video()], "t").unwrap();
        p.enable_track(0);
        let first = p.begin_seek();
        let second = p.begin_seek();
        p.on_frame(frame(0, FrameFlags::empty()));
        assert!(!p.on_seek_done(first, 0));
        assert!(p.on_seek_done(second, 4000));
        p.resume(Instant::now());
        let mut out = Vec::new();
        p.poll(Instant::now(), SystemTime::now(), &mut out);
        assert!(rtp(&out).is_empty());
        assert_eq!(credits(&out), 1);
    }

    #[test]
    fn pause_keeps_the_media_timeline_continuous() {
        let (mut p, t0) = playing_from_zero();
        p.pause(t0 + Duration::from_millis(500));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.position_us(later), 500_000);
        p.resume(later);
        assert_eq!(p.position_us(later + Duration::from_millis(100)), 600_000);
        let starts = p.track_starts(later);
        let offset = p.tracks[0].ts_offset;
        assert_eq!(starts[0].rtptime, offset.wrapping_add(45_000));
    }

    #[test]
    fn end_of_stream_sends_bye_and_finishes() {
        let (mut p, t0) = playing_from_zero();
        p.on_frame(frame(0, FrameFlags::KEYFRAME));
        p.on_frame(frame(3600, FrameFlags::END_OF_STREAM));
        let mut out = Vec::new();
        p.poll(t0 + Duration::from_millis(50), SystemTime::now(), &mut out);
        assert!(out.contains(&Action::Finished));
        assert!(out.iter().any(|a| matches!(a, Action::Rtcp { .. })));
        assert_eq!(p.next_wakeup(), None);
    }

    #[test]
    fn sequence_numbers_are_consecutive() {
        let (mut p, t0) = playing_from_zero();
        for i in 0..5 {
            p.on_frame(frame(i * 3600, FrameFlags::empty()));
        }
        let mut out = Vec::new();
        p.poll(t0 + Duration::from_secs(1), SystemTime::now(), &mut out);
        let seqs: Vec<u16> = rtp(&out)
            .iter()
            .map(|b| u16::from_be_bytes([b[2], b[3]]))
            .collect();
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1));
        }
    }
}
