//! A small RTP receiver for tests: one RTSP session over interleaved TCP, frames
//! reassembled per track, content-encrypted frames (`X-DIVISOR-ENC`) decrypted with keys
//! derived from the master secret, as an authorised client does (`docs/ENCRYPTION.md`).
//!
//! Written from the documents, not from the server's code, so it checks them: the
//! `X-DIVISOR-ENC` fragment format (`protocol-unit/src/packetize/opaque.rs`), the content
//! payload format and key derivation (`divisor_link::content`), and, for clear tracks,
//! RFC 6184 (H.264: single NAL unit, STAP-A, FU-A) and RFC 3640 (AAC-hbr).
//!
//! Frames are compared in a canonical form that does not depend on the path they took:
//! video as its list of NAL units (start codes, trailing zero bytes, access unit
//! delimiters and filler data removed, as the H.264 payloader does), audio as the raw AU.

use crate::netns::Node;
use crate::rtsp::{rtp_header, sdp_tracks, Incoming, RtspConn};
use crate::Deployment;
use anyhow::{bail, Context, Result};
use divisor_link::content::{self, FrameCipher, Keyring};
use divisor_link::Cipher;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Encoding name of encrypted tracks in SDP.
pub const ENCRYPTED: &str = "X-DIVISOR-ENC";

/// How to get keys for encrypted tracks.
#[derive(Clone, Debug)]
pub struct KeySource {
    /// The master secret (the key file's bytes, trailing whitespace trimmed).
    pub master: Vec<u8>,
    /// The stream's key-derivation name, e.g. `content::vod_key_name("clip.mp4", "")`.
    pub name: String,
}

/// What one track delivered.
#[derive(Debug, Default, Clone)]
pub struct TrackFrames {
    /// `video` or `audio`.
    pub media: String,
    /// rtpmap encoding name (`H264`, `MPEG4-GENERIC`, `X-DIVISOR-ENC`).
    pub encoding: String,
    /// Frames in canonical form (decrypted for encrypted tracks), in arrival order.
    pub frames: Vec<Vec<Vec<u8>>>,
    /// For encrypted tracks: each frame's payload as received (header + ciphertext).
    pub payloads: Vec<Vec<u8>>,
    /// Key ids seen, in order of first use.
    pub key_ids: Vec<u32>,
    /// Frames that could not be reassembled or decrypted, with why.
    pub errors: Vec<String>,
}

impl TrackFrames {
    /// A short digest of the canonical frames (FNV-1a), for messages.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in &self.frames {
            for nal in f {
                for &b in nal.iter().chain(&(nal.len() as u32).to_be_bytes()) {
                    h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                }
            }
            h = h.rotate_left(7);
        }
        h
    }
}

/// Plays `url` from the client namespace to the end (RTCP BYE on every track, or the
/// connection closing, or `timeout`) and returns each track's frames, in SDP order.
pub fn receive(
    d: &Deployment,
    url: &str,
    keys: Option<&KeySource>,
    timeout: Duration,
) -> Result<Vec<TrackFrames>> {
    let mut conn = RtspConn::connect(d, Node::Client, d.rtsp_addr)?;
    let desc = conn.request("DESCRIBE", url, &[("Accept", "application/sdp")])?;
    if desc.status != 200 {
        bail!("DESCRIBE {url}: {} {}", desc.status, desc.reason);
    }
    let base = desc
        .header("Content-Base")
        .map(|b| b.trim().to_string())
        .unwrap_or_else(|| url.to_string());
    let sdp = desc.body_text();
    let tracks = sdp_tracks(&sdp, &base);
    if tracks.is_empty() {
        bail!("no tracks in SDP:\n{sdp}");
    }
    let mut states = Vec::new();
    for (i, t) in tracks.iter().enumerate() {
        let ch = (2 * i) as u8;
        let transport = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", ch, ch + 1);
        let r = conn.request("SETUP", &t.control, &[("Transport", &transport)])?;
        if r.status != 200 {
            bail!("SETUP {}: {} {}", t.control, r.status, r.reason);
        }
        states.push(Track::new(&t.media, &t.encoding));
    }
    let play = conn.request("PLAY", &base, &[("Range", "npt=0-")])?;
    if play.status != 200 {
        bail!("PLAY: {} {}", play.status, play.reason);
    }
    let mut ring = Keyring::new();
    let mut byes = vec![false; states.len()];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !byes.iter().all(|b| *b) {
        match conn.next(Duration::from_millis(200))? {
            Some(Incoming::Interleaved(f)) => {
                let idx = usize::from(f.channel / 2);
                let Some(track) = states.get_mut(idx) else {
                    continue;
                };
                if f.channel % 2 == 1 {
                    // RTCP: a BYE (packet type 203) anywhere in the compound packet.
                    if rtcp_has_bye(&f.data) {
                        byes[idx] = true;
                    }
                    continue;
                }
                track.rtp(&f.data, keys, &mut ring);
            }
            Some(Incoming::Response(r)) => bail!("unexpected RTSP message while playing: {r:?}"),
            None if conn.is_closed() => break,
            None => {}
        }
    }
    let _ = conn.request("TEARDOWN", &base, &[]);
    Ok(states.into_iter().map(|t| t.out).collect())
}

fn rtcp_has_bye(mut p: &[u8]) -> bool {
    while p.len() >= 4 {
        if p[1] == 203 {
            return true;
        }
        let len = (usize::from(u16::from_be_bytes([p[2], p[3]])) + 1) * 4;
        if len > p.len() {
            break;
        }
        p = &p[len..];
    }
    false
}

/// Reassembly state of one track.
struct Track {
    out: TrackFrames,
    /// Payload bytes (or NAL units) of the frame being received.
    nals: Vec<Vec<u8>>,
    buf: Vec<u8>,
    /// Whether the current frame is broken (a sequence gap) and must be dropped.
    broken: bool,
    started: bool,
    last_seq: Option<u16>,
}

impl Track {
    fn new(media: &str, encoding: &str) -> Track {
        Track {
            out: TrackFrames {
                media: media.to_string(),
                encoding: encoding.to_string(),
                ..TrackFrames::default()
            },
            nals: Vec::new(),
            buf: Vec::new(),
            broken: false,
            started: false,
            last_seq: None,
        }
    }

    fn rtp(&mut self, pkt: &[u8], keys: Option<&KeySource>, ring: &mut Keyring) {
        let Some(h) = rtp_header(pkt) else {
            self.out.errors.push("not an RTP packet".into());
            return;
        };
        let payload = &pkt[12..];
        if self.last_seq.is_some_and(|l| l.wrapping_add(1) != h.seq) {
            self.broken = true;
            self.out
                .errors
                .push(format!("sequence gap before {}", h.seq));
        }
        self.last_seq = Some(h.seq);
        if payload.is_empty() {
            return;
        }
        match self.out.encoding.to_ascii_uppercase().as_str() {
            ENCRYPTED => self.opaque(payload, h.marker, keys, ring),
            "H264" => self.h264(payload, h.marker),
            "MPEG4-GENERIC" => self.aac(payload, h.marker),
            other => {
                self.out.errors.push(format!("no depacketiser for {other}"));
            }
        }
    }

    fn finish(&mut self, frame: Vec<Vec<u8>>) {
        if std::mem::take(&mut self.broken) {
            self.out.errors.push("frame dropped after a gap".into());
        } else {
            self.out.frames.push(frame);
        }
    }

    fn opaque(&mut self, p: &[u8], marker: bool, keys: Option<&KeySource>, ring: &mut Keyring) {
        let (hdr, body) = (p[0], &p[1..]);
        if hdr & 0x80 != 0 {
            self.buf.clear();
            self.started = true;
            self.broken = false;
        }
        if !self.started {
            return;
        }
        self.buf.extend_from_slice(body);
        if hdr & 0x40 == 0 {
            return;
        }
        if !marker {
            self.out
                .errors
                .push("end fragment without the marker bit".into());
        }
        self.started = false;
        let payload = std::mem::take(&mut self.buf);
        if self.broken {
            self.finish(Vec::new());
            return;
        }
        match decrypt(&payload, keys, ring) {
            Ok((key_id, plain)) => {
                if !self.out.key_ids.contains(&key_id) {
                    self.out.key_ids.push(key_id);
                }
                let frame = if self.out.media == "video" {
                    canonical_nals(&plain)
                } else {
                    vec![plain]
                };
                self.out.payloads.push(payload);
                self.finish(frame);
            }
            Err(e) => self.out.errors.push(format!("decrypt: {e:#}")),
        }
    }

    fn h264(&mut self, p: &[u8], marker: bool) {
        let t = p[0] & 0x1f;
        match t {
            1..=23 => self.nals.push(p.to_vec()),
            24 => {
                let mut rest = &p[1..];
                while rest.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    if rest.len() < 2 + n {
                        self.out.errors.push("truncated STAP-A".into());
                        break;
                    }
                    self.nals.push(rest[2..2 + n].to_vec());
                    rest = &rest[2 + n..];
                }
            }
            28 if p.len() >= 2 => {
                let (ind, fu) = (p[0], p[1]);
                if fu & 0x80 != 0 {
                    self.buf.clear();
                    self.buf.push((ind & 0xe0) | (fu & 0x1f));
                    self.started = true;
                }
                if self.started {
                    self.buf.extend_from_slice(&p[2..]);
                }
                if fu & 0x40 != 0 && self.started {
                    self.nals.push(std::mem::take(&mut self.buf));
                    self.started = false;
                }
            }
            other => self.out.errors.push(format!("H.264 payload type {other}")),
        }
        if marker {
            let nals = std::mem::take(&mut self.nals);
            self.finish(canonical_list(nals));
        }
    }

    fn aac(&mut self, p: &[u8], marker: bool) {
        if p.len() < 4 || u16::from_be_bytes([p[0], p[1]]) != 16 {
            self.out.errors.push("unexpected AU header section".into());
            return;
        }
        self.buf.extend_from_slice(&p[4..]);
        let size = usize::from(u16::from_be_bytes([p[2], p[3]]) >> 3);
        if marker || self.buf.len() >= size {
            let au = std::mem::take(&mut self.buf);
            if au.len() != size {
                self.out
                    .errors
                    .push(format!("AU of {} bytes, header says {size}", au.len()));
            }
            self.finish(vec![au]);
        }
    }
}

/// The key-derivation and decryption an authorised client does.
fn decrypt(payload: &[u8], keys: Option<&KeySource>, ring: &mut Keyring) -> Result<(u32, Vec<u8>)> {
    let h = content::parse(payload)?;
    if ring.get(h.key_id).is_none() {
        let ks = keys.context("encrypted track but no key source")?;
        let key = content::derive_key(&ks.master, &ks.name, h.key_id, h.cipher);
        ring.insert(FrameCipher::new(h.cipher, h.key_id, &key)?);
    }
    Ok((h.key_id, ring.decrypt(payload)?.to_vec()))
}

/// NAL units of an Annex B access unit, canonical (see the module docs).
pub fn canonical_nals(annex_b: &[u8]) -> Vec<Vec<u8>> {
    let mut nals = Vec::new();
    let mut i = 0;
    let mut start = None;
    while i + 2 < annex_b.len() {
        if annex_b[i] == 0 && annex_b[i + 1] == 0 && annex_b[i + 2] == 1 {
            if let Some(s) = start {
                nals.push(annex_b[s..i].to_vec());
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        nals.push(annex_b[s..].to_vec());
    }
    canonical_list(nals)
}

fn canonical_list(nals: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    nals.into_iter()
        .map(|mut n| {
            while n.last() == Some(&0) {
                n.pop();
            }
            n
        })
        .filter(|n| {
            let t = n.first().map(|b| b & 0x1f).unwrap_or(0);
            !(t == 0 || t == 9 || t == 12 || t >= 24)
        })
        .collect()
}

/// The cipher an SDP's `fmtp` names for encrypted tracks, if any.
pub fn sdp_cipher(sdp: &str) -> Option<Cipher> {
    sdp.lines().find_map(|l| {
        let l = l.trim();
        if !l.starts_with("a=fmtp:") {
            return None;
        }
        if l.contains("cipher=des-cbc") {
            Some(Cipher::DesCbc)
        } else if l.contains("cipher=aes-128-ctr") {
            Some(Cipher::Aes128Ctr)
        } else {
            None
        }
    })
}

/// Per-track summary for failure messages.
pub fn summary(tracks: &[TrackFrames]) -> String {
    tracks
        .iter()
        .map(|t| {
            format!(
                "{} {}: {} frames, digest {:016x}, keys {:?}, {} errors{}",
                t.media,
                t.encoding,
                t.frames.len(),
                t.digest(),
                t.key_ids,
                t.errors.len(),
                t.errors
                    .first()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Frames of each media kind, for comparing sessions whose SDP order may differ.
pub fn by_media(tracks: &[TrackFrames]) -> HashMap<String, &TrackFrames> {
    tracks.iter().map(|t| (t.media.clone(), t)).collect()
}
