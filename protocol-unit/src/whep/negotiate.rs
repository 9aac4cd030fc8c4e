//! Matching a WHEP offer against what a live channel rendition really carries (sans-IO).
//!
//! The protocol unit does not transcode, so the answer can only name the codecs the
//! encoder unit sends. For each track of the channel we look for an offered payload type
//! of the same codec that can decode *this* stream (for H.264: packetization-mode=1 and a
//! profile that covers the stream's, read from its SPS), and answer with the offer's own
//! payload type and fmtp line, so webrtc-rs's own matching is exact. Only those codecs are
//! registered for the viewer's connection; when the video (or, for an audio-only channel,
//! the audio) finds no partner the viewer gets 406 naming both sides' codecs.
//!
//! The SDP text is parsed by the `sdp` crate; here only the `rtpmap`/`fmtp` attribute
//! values are read.

use std::io::Cursor;

use divisor_link::{Codec, TrackInfo};
use sdp::description::media::MediaDescription;
use sdp::SessionDescription;

/// Media kind of an offered section or a channel track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

/// One payload type of an offered media section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedCodec {
    pub payload_type: u8,
    /// Encoding name as written (`H264`, `VP8`, `opus`, ...).
    pub name: String,
    pub clock_rate: u32,
    pub channels: u16,
    /// The `a=fmtp` value without the payload type ("" when none).
    pub fmtp: String,
}

/// One audio or video section of the offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedMedia {
    pub kind: Kind,
    pub codecs: Vec<OfferedCodec>,
}

/// What an offer asks for, as far as codec choice goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub media: Vec<OfferedMedia>,
}

/// Why an offer is not an offer we can read (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the body is empty: expected an SDP offer")]
    Empty,
    #[error("the body is not SDP: {0}")]
    NotSdp(String),
    #[error("the offer has no audio or video section")]
    NoMedia,
    #[error("the offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")]
    NoIce,
    #[error("the offer has no DTLS fingerprint (a=fingerprint)")]
    NoFingerprint,
}

/// Why no answer can be made for this channel (406).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NegotiateError {
    #[error(
        "no codec in common: offer has {}; channel {channel} has {}",
        list(offered),
        list(supported)
    )]
    NoCommonCodec {
        offered: Vec<String>,
        channel: String,
        supported: Vec<String>,
    },
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// A track of the channel matched to an offered payload type: what to register and send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Link track number.
    pub track: u8,
    pub kind: Kind,
    /// webrtc-rs MIME type (`video/H264`, `video/AV1`, `audio/opus`).
    pub mime_type: &'static str,
    pub clock_rate: u32,
    pub channels: u16,
    /// The offer's fmtp line for that payload type.
    pub fmtp: String,
    pub payload_type: u8,
}

/// The announced bitrate (bits/s, video + audio) of a rendition with `tracks`, for a
/// viewer whose connection negotiated `chosen` on another rendition of the channel; `None`
/// when that viewer cannot be moved to it: a chosen link track is missing or has another
/// codec, or (H.264) a profile the negotiated `profile-level-id` does not cover. The
/// payload types and SSRCs stay those of the connection, so nothing else must match.
pub fn playable_bitrate(chosen: &[Chosen], tracks: &[TrackInfo]) -> Option<u64> {
    let mut sum = 0u64;
    for c in chosen {
        let t = tracks.iter().find(|t| t.track == c.track)?;
        let mime = match t.codec {
            Codec::H264 => "video/H264",
            Codec::Av1 => "video/AV1",
            Codec::Opus => "audio/opus",
            Codec::Aac => return None,
        };
        if mime != c.mime_type {
            return None;
        }
        if t.codec == Codec::H264 {
            let offered = match fmtp_param(&c.fmtp, "profile-level-id") {
                Some(p) => Some(parse_plid(p)?),
                None => None,
            };
            h264_score(stream_plid(t), offered)?;
        }
        sum += u64::from(t.bitrate);
    }
    Some(sum)
}

/// Parse an offer body.
pub fn parse_offer(text: &str) -> Result<Offer, OfferError> {
    if text.trim().is_empty() {
        return Err(OfferError::Empty);
    }
    let sd = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| OfferError::NotSdp(e.to_string()))?;
    let media: Vec<OfferedMedia> = sd
        .media_descriptions
        .iter()
        .filter_map(|md| {
            let kind = match md.media_name.media.as_str() {
                "audio" => Kind::Audio,
                "video" => Kind::Video,
                _ => return None,
            };
            Some(OfferedMedia {
                kind,
                codecs: offered_codecs(md),
            })
        })
        .collect();
    if media.is_empty() {
        return Err(OfferError::NoMedia);
    }
    let session_has = |k: &str| sd.attribute(k).is_some();
    let media_has = |k: &str| {
        sd.media_descriptions
            .iter()
            .any(|m| m.attribute(k).is_some())
    };
    if !(session_has("ice-ufrag") || media_has("ice-ufrag"))
        || !(session_has("ice-pwd") || media_has("ice-pwd"))
    {
        return Err(OfferError::NoIce);
    }
    if !(session_has("fingerprint") || media_has("fingerprint")) {
        return Err(OfferError::NoFingerprint);
    }
    Ok(Offer { media })
}

fn offered_codecs(md: &MediaDescription) -> Vec<OfferedCodec> {
    let mut out = Vec::new();
    for f in &md.media_name.formats {
        let Ok(pt) = f.parse::<u8>() else { continue };
        let mut codec = None;
        let mut fmtp = String::new();
        for a in &md.attributes {
            let Some(v) = a.value.as_deref() else {
                continue;
            };
            let Some((p, rest)) = v.split_once(' ') else {
                continue;
            };
            if p.parse::<u8>().ok() != Some(pt) {
                continue;
            }
            match a.key.as_str() {
                "rtpmap" => {
                    let mut parts = rest.trim().split('/');
                    let name = parts.next().unwrap_or("").to_string();
                    let clock_rate = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                    let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                    codec = Some((name, clock_rate, channels));
                }
                "fmtp" => fmtp = rest.trim().to_string(),
                _ => {}
            }
        }
        if let Some((name, clock_rate, channels)) = codec {
            out.push(OfferedCodec {
                payload_type: pt,
                name,
                clock_rate,
                channels,
                fmtp,
            });
        }
    }
    out
}

/// The value of `key` in an fmtp line (`a=b;c=d`).
fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
    })
}

/// profile_idc, constraint flags, level_idc from a `profile-level-id` hex value.
fn parse_plid(s: &str) -> Option<[u8; 3]> {
    if s.len() != 6 || !s.is_ascii() {
        return None;
    }
    let b = |i: usize| u8::from_str_radix(&s[i..i + 2], 16).ok();
    Some([b(0)?, b(2)?, b(4)?])
}

/// How well an offered H.264 profile decodes a stream of `stream` profile: 3 = same
/// profile and constraints, 2 = same profile, 1 = a superset profile (main or high for
/// constrained baseline, high for main); `None` = cannot decode it. Levels are not
/// compared: browsers offer level-asymmetry-allowed and the level is a decoder limit the
/// renditions here stay well inside.
fn h264_score(stream: Option<[u8; 3]>, offered: Option<[u8; 3]>) -> Option<u8> {
    let Some(o) = offered else {
        // No profile-level-id means baseline (RFC 6184 section 8.1 default 420010).
        return h264_score(stream, Some([0x42, 0x00, 0x0a]));
    };
    let Some(s) = stream else {
        // Stream profile unknown (no SPS announced): prefer constrained baseline offers.
        return Some(if o[0] == 0x42 { 2 } else { 1 });
    };
    if o[0] == s[0] {
        return Some(if o[1] == s[1] { 3 } else { 2 });
    }
    let constrained_baseline = s[0] == 0x42 && s[1] & 0x40 != 0;
    match (s[0], o[0]) {
        (0x42, 0x4d | 0x64) if constrained_baseline => Some(1),
        (0x4d, 0x64) => Some(1),
        _ => None,
    }
}

/// The profile-level-id of an H.264 track, from its SPS (first param set).
pub fn stream_plid(t: &TrackInfo) -> Option<[u8; 3]> {
    let sps = t.params.first()?;
    if sps.len() < 4 {
        return None;
    }
    Some([sps[1], sps[2], sps[3]])
}

/// The names of the codecs a channel's tracks carry, as a viewer would read them.
pub fn channel_codec_names(tracks: &[TrackInfo]) -> Vec<String> {
    tracks
        .iter()
        .map(|t| match t.codec {
            Codec::H264 => match stream_plid(t) {
                Some(p) => format!(
                    "H264 (profile-level-id {:02x}{:02x}{:02x})",
                    p[0], p[1], p[2]
                ),
                None => "H264".to_string(),
            },
            Codec::Av1 => "AV1".to_string(),
            Codec::Opus => "opus".to_string(),
            Codec::Aac => "AAC (not playable over WebRTC)".to_string(),
        })
        .collect()
}

fn kind_of(c: Codec) -> Kind {
    if c.is_video() {
        Kind::Video
    } else {
        Kind::Audio
    }
}

/// The best offered payload type for track `t`, if any.
fn match_track(t: &TrackInfo, offer: &Offer) -> Option<Chosen> {
    let kind = kind_of(t.codec);
    let candidates = offer
        .media
        .iter()
        .filter(|m| m.kind == kind)
        .flat_map(|m| m.codecs.iter());
    let (mime_type, clock_rate, channels) = match t.codec {
        Codec::H264 => ("video/H264", 90_000, 0),
        Codec::Av1 => ("video/AV1", 90_000, 0),
        Codec::Opus => ("audio/opus", 48_000, 2),
        Codec::Aac => return None,
    };
    let mut best: Option<(u8, &OfferedCodec)> = None;
    for c in candidates {
        let score = match t.codec {
            Codec::H264 => {
                if !c.name.eq_ignore_ascii_case("H264") || c.clock_rate != 90_000 {
                    continue;
                }
                if fmtp_param(&c.fmtp, "packetization-mode") != Some("1") {
                    continue;
                }
                let offered = match fmtp_param(&c.fmtp, "profile-level-id") {
                    Some(p) => match parse_plid(p) {
                        Some(p) => Some(p),
                        None => continue,
                    },
                    None => None,
                };
                match h264_score(stream_plid(t), offered) {
                    Some(s) => s,
                    None => continue,
                }
            }
            Codec::Av1 => {
                if !c.name.eq_ignore_ascii_case("AV1") || c.clock_rate != 90_000 {
                    continue;
                }
                // rav1e renditions are Main profile (8-bit 4:2:0): profile 0, the default.
                match fmtp_param(&c.fmtp, "profile") {
                    None | Some("0") => 1,
                    Some(_) => continue,
                }
            }
            Codec::Opus => {
                if !c.name.eq_ignore_ascii_case("opus") || c.clock_rate != 48_000 {
                    continue;
                }
                1
            }
            Codec::Aac => continue,
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    let (_, c) = best?;
    Some(Chosen {
        track: t.track,
        kind,
        mime_type,
        clock_rate,
        channels,
        fmtp: c.fmtp.clone(),
        payload_type: c.payload_type,
    })
}

/// Choose, for each track of the channel `label` (`cam/web`), the payload type to send it
/// with. The video must find a partner when the channel has video and the offer asks for
/// video; audio is sent when it finds one. Nothing chosen at all is a 406 as well.
pub fn choose(
    offer: &Offer,
    tracks: &[TrackInfo],
    label: &str,
) -> Result<Vec<Chosen>, NegotiateError> {
    let mut chosen = Vec::new();
    let mut video_missing = false;
    let offers_video = offer.media.iter().any(|m| m.kind == Kind::Video);
    for t in tracks {
        match match_track(t, offer) {
            Some(c) => chosen.push(c),
            None if t.codec.is_video() && offers_video => video_missing = true,
            None => {}
        }
    }
    if video_missing || chosen.is_empty() {
        let mut offered: Vec<String> = Vec::new();
        for c in offer.media.iter().flat_map(|m| m.codecs.iter()) {
            if !offered.iter().any(|o| o.eq_ignore_ascii_case(&c.name)) {
                offered.push(c.name.clone());
            }
        }
        return Err(NegotiateError::NoCommonCodec {
            offered,
            channel: label.to_string(),
            supported: channel_codec_names(tracks),
        });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
        a=fingerprint:sha-256 AA:BB\r\n";

    fn offer(video: &[(&str, &str)], audio: &[(&str, &str)]) -> String {
        let mut s = HEAD.to_string();
        let mut section = |kind: &str, codecs: &[(&str, &str)], first_pt: u8| {
            if codecs.is_empty() {
                return;
            }
            let pts: Vec<String> = (0..codecs.len())
                .map(|i| (first_pt + i as u8).to_string())
                .collect();
            s.push_str(&format!(
                "m={kind} 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n",
                pts.join(" ")
            ));
            for (i, (rtpmap, fmtp)) in codecs.iter().enumerate() {
                let pt = first_pt + i as u8;
                s.push_str(&format!("a=rtpmap:{pt} {rtpmap}\r\n"));
                if !fmtp.is_empty() {
                    s.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
                }
            }
        };
        section("video", video, 96);
        section("audio", audio, 111);
        s
    }

    fn h264(plid: [u8; 3]) -> TrackInfo {
        TrackInfo {
            track: 0,
            codec: Codec::H264,
            clock_rate: 90_000,
            width: 640,
            height: 360,
            sample_rate: 0,
            channels: 0,
            bitrate: 800_000,
            params: vec![
                bytes::Bytes::from(vec![0x67, plid[0], plid[1], plid[2], 0xaa]),
                bytes::Bytes::from_static(&[0x68, 1]),
            ],
        }
    }

    fn track(codec: Codec, n: u8) -> TrackInfo {
        TrackInfo {
            track: n,
            codec,
            clock_rate: if codec.is_video() { 90_000 } else { 48_000 },
            width: 0,
            height: 0,
            sample_rate: 48_000,
            channels: 2,
            bitrate: 0,
            params: vec![],
        }
    }

    const CHROME_VIDEO: &[(&str, &str)] = &[
        ("VP8/90000", ""),
        (
            "H264/90000",
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
        ),
        (
            "H264/90000",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        ),
        (
            "H264/90000",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
        (
            "H264/90000",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
        ),
        ("AV1/90000", "level-idx=5;profile=0;tier=0"),
    ];
    const CHROME_AUDIO: &[(&str, &str)] = &[("opus/48000/2", "minptime=10;useinbandfec=1")];

    #[test]
    fn constrained_baseline_picks_the_exact_offer_with_mode_1() {
        let o = parse_offer(&offer(CHROME_VIDEO, CHROME_AUDIO)).unwrap();
        let tracks = [h264([0x42, 0xe0, 0x1f]), track(Codec::Opus, 1)];
        let c = choose(&o, &tracks, "cam/web").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].payload_type, 99, "{c:?}");
        assert_eq!(c[0].mime_type, "video/H264");
        assert!(c[0].fmtp.contains("42e01f"));
        assert_eq!(c[1].payload_type, 111);
        assert_eq!(c[1].mime_type, "audio/opus");
        assert_eq!(c[1].channels, 2);
    }

    #[test]
    fn high_profile_needs_a_high_offer() {
        let o = parse_offer(&offer(CHROME_VIDEO, &[])).unwrap();
        let c = choose(&o, &[h264([0x64, 0x00, 0x1f])], "cam/hi").unwrap();
        assert_eq!(c[0].payload_type, 100);
        let baseline_only = parse_offer(&offer(
            &[("H264/90000", "packetization-mode=1;profile-level-id=42e01f")],
            &[],
        ))
        .unwrap();
        let e = choose(&baseline_only, &[h264([0x64, 0x00, 0x1f])], "cam/hi").unwrap_err();
        assert!(e.to_string().contains("offer has H264"), "{e}");
    }

    #[test]
    fn av1_and_opus_match() {
        let o = parse_offer(&offer(CHROME_VIDEO, CHROME_AUDIO)).unwrap();
        let c = choose(
            &o,
            &[track(Codec::Av1, 0), track(Codec::Opus, 1)],
            "cam/av1",
        )
        .unwrap();
        assert_eq!(c[0].mime_type, "video/AV1");
        assert_eq!(c[0].payload_type, 101);
        assert_eq!(c[1].track, 1);
    }

    #[test]
    fn no_common_codec_names_both_sides() {
        let o = parse_offer(&offer(
            &[("VP8/90000", ""), ("VP9/90000", "")],
            CHROME_AUDIO,
        ))
        .unwrap();
        let e = choose(
            &o,
            &[h264([0x42, 0xe0, 0x1f]), track(Codec::Opus, 1)],
            "cam/web",
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(
            text,
            "no codec in common: offer has VP8, VP9, opus; channel cam/web has \
             H264 (profile-level-id 42e01f), opus"
        );
    }

    #[test]
    fn aac_audio_is_skipped_but_video_plays() {
        let o = parse_offer(&offer(CHROME_VIDEO, CHROME_AUDIO)).unwrap();
        let c = choose(&o, &[h264([0x42, 0xe0, 0x1f]), track(Codec::Aac, 1)], "x/y").unwrap();
        assert_eq!(c.len(), 1);
        // An audio-only offer for an AAC channel has nothing in common.
        let o = parse_offer(&offer(&[], CHROME_AUDIO)).unwrap();
        assert!(choose(&o, &[track(Codec::Aac, 1)], "x/y").is_err());
    }

    #[test]
    fn packetization_mode_0_alone_is_not_enough() {
        let o = parse_offer(&offer(
            &[("H264/90000", "packetization-mode=0;profile-level-id=42e01f")],
            &[],
        ))
        .unwrap();
        assert!(choose(&o, &[h264([0x42, 0xe0, 0x1f])], "c/r").is_err());
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(parse_offer("  "), Err(OfferError::Empty));
        assert!(matches!(
            parse_offer("hello world"),
            Err(OfferError::NotSdp(_))
        ));
        assert!(matches!(
            parse_offer("v=0\r\nGARBAGE\r\n"),
            Err(OfferError::NotSdp(_))
        ));
        assert_eq!(parse_offer(HEAD), Err(OfferError::NoMedia));
        let no_ice = offer(CHROME_VIDEO, &[]).replace("a=ice-ufrag:abcd\r\n", "");
        assert_eq!(parse_offer(&no_ice), Err(OfferError::NoIce));
        let no_fp = offer(CHROME_VIDEO, &[]).replace("a=fingerprint:sha-256 AA:BB\r\n", "");
        assert_eq!(parse_offer(&no_fp), Err(OfferError::NoFingerprint));
        // Bytes that are not even text-like must not panic.
        let junk: String = (0u8..=255).map(char::from).collect();
        assert!(parse_offer(&junk).is_err());
    }

    #[test]
    fn plid_parsing_is_strict() {
        assert_eq!(parse_plid("42e01f"), Some([0x42, 0xe0, 0x1f]));
        assert_eq!(parse_plid("42e01"), None);
        assert_eq!(parse_plid("zzzzzz"), None);
        assert_eq!(parse_plid("4é01f"), None);
    }
}
