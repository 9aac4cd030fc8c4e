//! SDP for RTSP DESCRIBE (RFC 4566, RFC 2326 appendix C), built with the `sdp` crate.
//!
//! The layout follows what live555 and gst-rtsp-server emit, which ffmpeg/ffprobe and
//! GStreamer's rtspsrc accept:
//!
//! ```text
//! v=0
//! o=- <id> 1 IN IP4 <origin ip>
//! s=<name>
//! c=IN IP4 0.0.0.0
//! t=0 0
//! a=tool:divisor
//! a=range:npt=0-12.345        (npt=now- when live)
//! a=control:*
//! m=video 0 RTP/AVP 96
//! b=AS:<kbit/s>               (when the bit rate is known)
//! a=rtpmap:96 H264/90000
//! a=fmtp:96 packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=<sps>,<pps>
//! a=framesize:96 1280-720
//! a=control:trackID=0
//! ```
//!
//! Media-level `a=control` is relative (`trackID=N`): the RTSP layer must send a
//! `Content-Base` ending in `/` with the DESCRIBE answer, and parse SETUP URLs with
//! [`parse_track_id`].

use std::io::Cursor;
use std::net::IpAddr;

use ::sdp::description::common::{Address, Attribute, Bandwidth, ConnectionInformation};
use ::sdp::description::media::{MediaDescription, MediaName, RangedPort};
use ::sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};
use base64::Engine;
use divisor_link::{Cipher, Codec, TrackInfo};

/// RTP payload type of video tracks.
pub const VIDEO_PAYLOAD_TYPE: u8 = 96;
/// RTP payload type of audio tracks.
pub const AUDIO_PAYLOAD_TYPE: u8 = 97;

/// Why an SDP could not be written or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("no tracks to describe")]
    NoTracks,
    #[error("track {0}: H.264 SPS is shorter than 4 bytes")]
    SpsTooShort(u8),
    #[error("track {track}: no AudioSpecificConfig and no AAC-LC config for {rate} Hz / {channels} channels")]
    NoAacConfig { track: u8, rate: u32, channels: u8 },
    #[error("SDP parse error: {0}")]
    Parse(String),
    #[error("track {track}: {codec:?} cannot be described for RTSP clients yet")]
    UnsupportedCodec { track: u8, codec: Codec },
}

/// The RTP payload type used for `track`, shared by the SDP and the RTP sender.
pub fn payload_type(track: &TrackInfo) -> u8 {
    if track.codec.is_video() {
        VIDEO_PAYLOAD_TYPE
    } else {
        AUDIO_PAYLOAD_TYPE
    }
}

/// The media-level control attribute value of track `track` (relative to Content-Base).
pub fn track_control(track: u8) -> String {
    format!("trackID={track}")
}

/// The track id of a SETUP URL or control value: `rtsp://h:p/vod/x.mp4/trackID=1` or
/// `trackID=1` give `Some(1)`. The last path segment must be `trackID=<0..=255>` (name
/// compared ASCII case-insensitively); a query string and a trailing `/` are ignored.
pub fn parse_track_id(control: &str) -> Option<u8> {
    let path = control.split(['?', '#']).next()?;
    let path = path.strip_suffix('/').unwrap_or(path);
    let last = path.rsplit('/').next()?;
    let (name, value) = last.split_once('=')?;
    if !name.eq_ignore_ascii_case("trackID") {
        return None;
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The SDP describing `tracks` (in the order given). `duration_ms` is `None` for live.
/// `session_name` is sanitised (control characters become spaces; empty becomes
/// "Divisor").
pub fn describe(
    tracks: &[TrackInfo],
    duration_ms: Option<u64>,
    origin_ip: IpAddr,
    session_name: &str,
) -> Result<String, SdpError> {
    describe_with(tracks, duration_ms, origin_ip, session_name, None)
}

/// Encoding name of content-encrypted tracks (see `crate::packetize::opaque`).
pub const ENCRYPTED_ENCODING: &str = "X-DIVISOR-ENC";

/// As [`describe`], for a channel whose frames are content-encrypted with `cipher` (every
/// track: the encoder's stage encrypts all of them). Each track is described as
///
/// ```text
/// a=rtpmap:96 X-DIVISOR-ENC/90000
/// a=fmtp:96 inner=H264/90000;cipher=aes-128-ctr;format=1
/// a=x-divisor-inner-fmtp:96 packetization-mode=1;profile-level-id=..;sprop-parameter-sets=..
/// ```
///
/// `inner` is what the rtpmap of the clear track would say, and `x-divisor-inner-fmtp` its
/// fmtp (when it has one): what a receiver needs to decode once it has decrypted a frame.
/// Ordinary players do not know the format and must not try to play it.
pub fn describe_encrypted(
    tracks: &[TrackInfo],
    duration_ms: Option<u64>,
    origin_ip: IpAddr,
    session_name: &str,
    cipher: Cipher,
) -> Result<String, SdpError> {
    describe_with(tracks, duration_ms, origin_ip, session_name, Some(cipher))
}

/// [`describe`] or [`describe_encrypted`], as a channel's content keys say: encrypted with
/// the cipher of its newest key when it has one (the encoder sends keys before the
/// announce, so a channel that is encrypted at all has one by the time it is described).
pub fn describe_channel(
    tracks: &[TrackInfo],
    duration_ms: Option<u64>,
    origin_ip: IpAddr,
    session_name: &str,
    keys: &crate::upstream::ContentKeys,
) -> Result<String, SdpError> {
    let cipher = keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last()
        .map(|k| k.cipher);
    describe_with(tracks, duration_ms, origin_ip, session_name, cipher)
}

fn describe_with(
    tracks: &[TrackInfo],
    duration_ms: Option<u64>,
    origin_ip: IpAddr,
    session_name: &str,
    cipher: Option<Cipher>,
) -> Result<String, SdpError> {
    if tracks.is_empty() {
        return Err(SdpError::NoTracks);
    }
    let addr_type = match origin_ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let any_addr = match origin_ip {
        IpAddr::V4(_) => "0.0.0.0",
        IpAddr::V6(_) => "::",
    };
    let mut name: String = session_name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if name.trim().is_empty() {
        name = "Divisor".to_string();
    }
    let range = match duration_ms {
        Some(ms) => format!("npt=0-{}.{:03}", ms / 1000, ms % 1000),
        None => "npt=now-".to_string(),
    };

    let mut sd = SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".to_string(),
            session_id: u64::from(rand::random::<u32>()),
            session_version: 1,
            network_type: "IN".to_string(),
            address_type: addr_type.to_string(),
            unicast_address: origin_ip.to_string(),
        },
        session_name: name,
        connection_information: Some(ConnectionInformation {
            network_type: "IN".to_string(),
            address_type: addr_type.to_string(),
            address: Some(Address {
                address: any_addr.to_string(),
                ttl: None,
                range: None,
            }),
        }),
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        ..Default::default()
    }
    .with_value_attribute("tool".to_string(), "divisor".to_string())
    .with_value_attribute("range".to_string(), range)
    .with_value_attribute("control".to_string(), "*".to_string());

    for t in tracks {
        let md = media(t)?;
        sd = sd.with_media(match cipher {
            Some(c) => encrypted_media(md, c),
            None => md,
        });
    }
    Ok(sd.marshal())
}

fn media(t: &TrackInfo) -> Result<MediaDescription, SdpError> {
    let pt = payload_type(t);
    let kind = if t.codec.is_video() { "video" } else { "audio" };
    let mut md = MediaDescription {
        media_name: MediaName {
            media: kind.to_string(),
            port: RangedPort {
                value: 0,
                range: None,
            },
            protos: vec!["RTP".to_string(), "AVP".to_string()],
            formats: vec![pt.to_string()],
        },
        ..Default::default()
    };
    if t.bitrate > 0 {
        md.bandwidth.push(Bandwidth {
            experimental: false,
            bandwidth_type: "AS".to_string(),
            bandwidth: u64::from(t.bitrate).div_ceil(1000),
        });
    }
    let attr = |k: &str, v: String| Attribute::new(k.to_string(), Some(v));
    match t.codec {
        Codec::H264 => {
            md.attributes
                .push(attr("rtpmap", format!("{pt} H264/{}", t.clock_rate)));
            md.attributes
                .push(attr("fmtp", format!("{pt} {}", h264_fmtp(t)?)));
            if t.width > 0 && t.height > 0 {
                md.attributes
                    .push(attr("framesize", format!("{pt} {}-{}", t.width, t.height)));
            }
        }
        Codec::Aac => {
            let channels = t.channels.max(1);
            md.attributes.push(attr(
                "rtpmap",
                format!("{pt} MPEG4-GENERIC/{}/{channels}", t.clock_rate),
            ));
            let config = match t.params.first().filter(|c| !c.is_empty()) {
                Some(asc) => hex(asc),
                None => aac_lc_config(t.sample_rate.max(t.clock_rate), channels)
                    .map(|c| hex(&c))
                    .ok_or(SdpError::NoAacConfig {
                        track: t.track,
                        rate: t.sample_rate,
                        channels: t.channels,
                    })?,
            };
            md.attributes.push(attr(
                "fmtp",
                format!(
                    "{pt} streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;\
                     indexlength=3;indexdeltalength=3;config={config}"
                ),
            ));
        }
        Codec::Opus => {
            // RFC 7587: always opus/48000/2; sprop-stereo tells what the sender sends.
            md.attributes
                .push(attr("rtpmap", format!("{pt} opus/48000/2")));
            let stereo = u8::from(t.channels >= 2);
            md.attributes
                .push(attr("fmtp", format!("{pt} sprop-stereo={stereo}")));
        }
        Codec::Av1 => {
            // AV1 RTP payload format v1.0: the clock is always 90 kHz. No fmtp: profile,
            // level-idx and tier are optional (defaults 0, 5, 0) and receivers read the
            // sequence header in band.
            md.attributes
                .push(attr("rtpmap", format!("{pt} AV1/90000")));
            if t.width > 0 && t.height > 0 {
                md.attributes
                    .push(attr("framesize", format!("{pt} {}-{}", t.width, t.height)));
            }
        }
    }
    md.attributes.push(attr("control", track_control(t.track)));
    Ok(md)
}

/// The clear description `md` rewritten for content-encrypted frames; see
/// [`describe_encrypted`].
fn encrypted_media(mut md: MediaDescription, cipher: Cipher) -> MediaDescription {
    let take = |md: &mut MediaDescription, key: &str| -> Option<(String, String)> {
        let i = md.attributes.iter().position(|a| a.key == key)?;
        let v = md.attributes.remove(i).value.unwrap_or_default();
        let (pt, rest) = v.split_once(' ')?;
        Some((pt.to_string(), rest.to_string()))
    };
    let Some((pt, inner)) = take(&mut md, "rtpmap") else {
        return md;
    };
    let clock = inner.split('/').nth(1).unwrap_or("90000").to_string();
    let inner_fmtp = take(&mut md, "fmtp").map(|(_, f)| f);
    let cipher_name = match cipher {
        Cipher::DesCbc => "des-cbc",
        Cipher::Aes128Ctr => "aes-128-ctr",
    };
    let attr = |k: &str, v: String| Attribute::new(k.to_string(), Some(v));
    let mut new = vec![
        attr("rtpmap", format!("{pt} {ENCRYPTED_ENCODING}/{clock}")),
        attr(
            "fmtp",
            format!(
                "{pt} inner={inner};cipher={cipher_name};format={}",
                divisor_link::content::FORMAT_VERSION
            ),
        ),
    ];
    if let Some(f) = inner_fmtp {
        new.push(attr("x-divisor-inner-fmtp", format!("{pt} {f}")));
    }
    // Before the remaining attributes (framesize, control), as the clear layout has it.
    md.attributes.splice(0..0, new);
    md
}

/// `packetization-mode=1;profile-level-id=..;sprop-parameter-sets=..` from the track's
/// SPS/PPS (omitted when the encoder announced none: receivers then use in-band ones).
fn h264_fmtp(t: &TrackInfo) -> Result<String, SdpError> {
    let mut f = String::from("packetization-mode=1");
    if let Some(sps) = t.params.first() {
        if sps.len() < 4 {
            return Err(SdpError::SpsTooShort(t.track));
        }
        f.push_str(";profile-level-id=");
        f.push_str(&hex(&sps[1..4]));
        let b64 = base64::engine::general_purpose::STANDARD;
        let sets: Vec<String> = t
            .params
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| b64.encode(p))
            .collect();
        f.push_str(";sprop-parameter-sets=");
        f.push_str(&sets.join(","));
    }
    Ok(f)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 2-byte AAC-LC AudioSpecificConfig for `rate`/`channels`, for when the encoder unit
/// announced none. `None` for a rate outside the MPEG-4 frequency table or > 7 channels.
pub fn aac_lc_config(rate: u32, channels: u8) -> Option<[u8; 2]> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let idx = RATES.iter().position(|&r| r == rate)? as u16;
    if channels == 0 || channels > 7 {
        return None;
    }
    // object type (5 bits) = 2 (AAC-LC), frequency index (4), channel config (4), 3 zero bits.
    let v: u16 = (2 << 11) | (idx << 7) | (u16::from(channels) << 3);
    Some(v.to_be_bytes())
}

/// Parse an SDP with the `sdp` crate (for tests and for SDP received from upstreams).
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Parse(e.to_string()))
}

/// The SDP offered to an SRTP client (RFC 3711, RFC 4567): every media line becomes
/// `RTP/SAVP` and gets an `a=key-mgmt:<value>` line (before its `a=control`), where
/// `key_mgmt(track)` gives the value for the media's track; a media for which it gives
/// none keeps `RTP/AVP`. This is what makes GStreamer's `rtspsrc` use SRTP.
pub fn offer_srtp(sdp: &str, mut key_mgmt: impl FnMut(u8) -> Option<String>) -> String {
    // Per media section: its lines, and the key-mgmt value when it is secured.
    let mut out = String::with_capacity(sdp.len() + 512);
    let mut media: Vec<&str> = Vec::new();
    let mut flush = |media: &mut Vec<&str>, out: &mut String| {
        let track = media
            .iter()
            .find_map(|l| l.strip_prefix("a=control:"))
            .and_then(parse_track_id);
        let km = track.and_then(&mut key_mgmt);
        for line in media.drain(..) {
            match &km {
                Some(km) if line.starts_with("m=") => {
                    out.push_str(&line.replacen(" RTP/AVP ", " RTP/SAVP ", 1));
                }
                Some(km) if line.starts_with("a=control:") => {
                    out.push_str("a=key-mgmt:");
                    out.push_str(km);
                    out.push_str("\r\n");
                    out.push_str(line);
                }
                _ => out.push_str(line),
            }
            out.push_str("\r\n");
        }
    };
    for line in sdp.lines() {
        if line.starts_with("m=") {
            flush(&mut media, &mut out);
        }
        if media.is_empty() && !line.starts_with("m=") {
            out.push_str(line);
            out.push_str("\r\n");
        } else {
            media.push(line);
        }
    }
    flush(&mut media, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srtp_offer_secures_each_media() {
        let plain =
            "v=0\r\ns=x\r\na=control:*\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                     a=control:trackID=0\r\nm=audio 0 RTP/AVP 97\r\na=control:trackID=1\r\n";
        let sdp = offer_srtp(plain, |t| (t == 0).then(|| format!("mikey K{t}")));
        assert_eq!(
            sdp,
            "v=0\r\ns=x\r\na=control:*\r\nm=video 0 RTP/SAVP 96\r\na=rtpmap:96 H264/90000\r\n\
             a=key-mgmt:mikey K0\r\na=control:trackID=0\r\nm=audio 0 RTP/AVP 97\r\na=control:trackID=1\r\n"
        );
    }
    use bytes::Bytes;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SPS: &[u8] = &[0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb];

    fn video() -> TrackInfo {
        TrackInfo {
            track: 0,
            codec: Codec::H264,
            clock_rate: 90000,
            width: 1280,
            height: 720,
            sample_rate: 0,
            channels: 0,
            bitrate: 1_000_000,
            params: vec![Bytes::from_static(SPS), Bytes::from_static(PPS)],
        }
    }

    fn aac() -> TrackInfo {
        TrackInfo {
            track: 1,
            codec: Codec::Aac,
            clock_rate: 44100,
            width: 0,
            height: 0,
            sample_rate: 44100,
            channels: 2,
            bitrate: 0,
            params: vec![Bytes::from_static(&[0x12, 0x10])],
        }
    }

    fn opus(channels: u8) -> TrackInfo {
        TrackInfo {
            track: 1,
            codec: Codec::Opus,
            clock_rate: 48000,
            width: 0,
            height: 0,
            sample_rate: 48000,
            channels,
            bitrate: 0,
            params: vec![],
        }
    }

    fn attr<'a>(md: &'a MediaDescription, key: &str) -> &'a str {
        md.attribute(key).flatten().unwrap()
    }

    #[test]
    fn h264_aac_vod() {
        let text = describe(
            &[video(), aac()],
            Some(12_345),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            "x.mp4",
        )
        .unwrap();
        assert!(text.starts_with("v=0\r\no=- "));
        assert!(text.contains(" 1 IN IP4 10.0.0.2\r\ns=x.mp4\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"));
        assert!(text.contains("a=tool:divisor\r\na=range:npt=0-12.345\r\na=control:*\r\n"));
        assert!(text.contains("m=video 0 RTP/AVP 96\r\nb=AS:1000\r\na=rtpmap:96 H264/90000\r\n"));
        assert!(text.ends_with("\r\n"));

        let sd = parse(&text).unwrap();
        assert_eq!(sd.version, 0);
        assert_eq!(sd.origin.unicast_address, "10.0.0.2");
        assert_eq!(sd.session_name, "x.mp4");
        assert_eq!(sd.attribute("control").map(String::as_str), Some("*"));
        assert_eq!(
            sd.attribute("range").map(String::as_str),
            Some("npt=0-12.345")
        );
        assert_eq!(sd.media_descriptions.len(), 2);

        let v = &sd.media_descriptions[0];
        assert_eq!(v.media_name.media, "video");
        assert_eq!(v.media_name.port.value, 0);
        assert_eq!(v.media_name.protos, vec!["RTP", "AVP"]);
        assert_eq!(v.media_name.formats, vec!["96"]);
        assert_eq!(attr(v, "rtpmap"), "96 H264/90000");
        assert_eq!(
            attr(v, "fmtp"),
            "96 packetization-mode=1;profile-level-id=64001f;\
             sprop-parameter-sets=Z2QAH6zZQFA=,aOvjyw=="
        );
        assert_eq!(attr(v, "framesize"), "96 1280-720");
        assert_eq!(attr(v, "control"), "trackID=0");

        let a = &sd.media_descriptions[1];
        assert_eq!(a.media_name.media, "audio");
        assert_eq!(a.media_name.formats, vec!["97"]);
        assert_eq!(attr(a, "rtpmap"), "97 MPEG4-GENERIC/44100/2");
        assert_eq!(
            attr(a, "fmtp"),
            "97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;\
             indexlength=3;indexdeltalength=3;config=1210"
        );
        assert_eq!(attr(a, "control"), "trackID=1");
        assert_eq!(
            parse_track_id(&format!("rtsp://h:554/vod/x.mp4/{}", attr(a, "control"))),
            Some(1)
        );
    }

    #[test]
    fn live_opus_ipv6_and_sanitised_name() {
        for (ch, stereo) in [(2, "1"), (1, "0")] {
            let text = describe(
                &[opus(ch)],
                None,
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                "evil\r\na=control:x",
            )
            .unwrap();
            let sd = parse(&text).unwrap();
            assert_eq!(sd.origin.address_type, "IP6");
            assert_eq!(sd.origin.unicast_address, "::1");
            assert_eq!(sd.session_name, "evil  a=control:x");
            assert_eq!(sd.attribute("range").map(String::as_str), Some("npt=now-"));
            let m = &sd.media_descriptions[0];
            assert_eq!(attr(m, "rtpmap"), "97 opus/48000/2");
            assert_eq!(attr(m, "fmtp"), format!("97 sprop-stereo={stereo}"));
        }
        let text = describe(&[opus(2)], Some(5), IpAddr::V4(Ipv4Addr::LOCALHOST), "").unwrap();
        assert!(text.contains("\r\ns=Divisor\r\n"));
        assert!(text.contains("a=range:npt=0-0.005\r\n"));
    }

    #[test]
    fn errors_and_fallbacks() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(describe(&[], None, ip, "x"), Err(SdpError::NoTracks));
        let mut v = video();
        v.params = vec![Bytes::from_static(&[0x67, 0x42])];
        assert_eq!(
            describe(&[v.clone()], None, ip, "x"),
            Err(SdpError::SpsTooShort(0))
        );
        v.params.clear();
        let text = describe(&[v], None, ip, "x").unwrap();
        assert!(text.contains("a=fmtp:96 packetization-mode=1\r\n"));

        let mut a = aac();
        a.params.clear();
        let text = describe(&[a.clone()], None, ip, "x").unwrap();
        assert!(text.contains(";config=1210\r\n"), "{text}");
        a.sample_rate = 12345;
        a.clock_rate = 12345;
        assert!(matches!(
            describe(&[a], None, ip, "x"),
            Err(SdpError::NoAacConfig { .. })
        ));
        assert_eq!(aac_lc_config(48000, 2), Some([0x11, 0x90]));
        assert_eq!(aac_lc_config(48000, 0), None);
    }

    #[test]
    fn encrypted_tracks_name_the_inner_codec() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let text =
            describe_encrypted(&[video(), aac()], Some(4000), ip, "x", Cipher::DesCbc).unwrap();
        let sd = parse(&text).unwrap();
        let v = &sd.media_descriptions[0];
        assert_eq!(attr(v, "rtpmap"), "96 X-DIVISOR-ENC/90000");
        assert_eq!(
            attr(v, "fmtp"),
            "96 inner=H264/90000;cipher=des-cbc;format=1"
        );
        assert!(attr(v, "x-divisor-inner-fmtp").starts_with("96 packetization-mode=1;"));
        assert_eq!(attr(v, "framesize"), "96 1280-720");
        assert_eq!(attr(v, "control"), "trackID=0");
        let a = &sd.media_descriptions[1];
        assert_eq!(attr(a, "rtpmap"), "97 X-DIVISOR-ENC/44100");
        assert_eq!(
            attr(a, "fmtp"),
            "97 inner=MPEG4-GENERIC/44100/2;cipher=des-cbc;format=1"
        );
        // The clear description is unchanged.
        let clear = describe(&[video()], None, ip, "x").unwrap();
        assert!(clear.contains("a=rtpmap:96 H264/90000\r\n"));
        assert!(!clear.contains("X-DIVISOR"));
    }

    #[test]
    fn av1_video() {
        let mut v = video();
        v.codec = Codec::Av1;
        v.params.clear();
        let text = describe(&[v], None, IpAddr::V4(Ipv4Addr::LOCALHOST), "cam/av1").unwrap();
        let m = &parse(&text).unwrap().media_descriptions[0];
        assert_eq!(m.media_name.media, "video");
        assert_eq!(m.media_name.formats, vec!["96"]);
        assert_eq!(attr(m, "rtpmap"), "96 AV1/90000");
        assert_eq!(attr(m, "framesize"), "96 1280-720");
        assert_eq!(attr(m, "control"), "trackID=0");
    }

    #[test]
    fn payload_types() {
        assert_eq!(payload_type(&video()), 96);
        assert_eq!(payload_type(&aac()), 97);
        assert_eq!(payload_type(&opus(2)), 97);
    }

    #[test]
    fn track_ids() {
        assert_eq!(parse_track_id("rtsp://h:554/vod/x.mp4/trackID=1"), Some(1));
        assert_eq!(parse_track_id("trackID=0"), Some(0));
        assert_eq!(parse_track_id("rtsp://h/vod/a b.mp4/trackid=12/"), Some(12));
        assert_eq!(parse_track_id("rtsp://h/x/trackID=3?foo=1"), Some(3));
        assert_eq!(parse_track_id("rtsp://h/x/trackID=256"), None);
        assert_eq!(parse_track_id("rtsp://h/x/trackID=-1"), None);
        assert_eq!(parse_track_id("rtsp://h/x/trackID=+1"), None);
        assert_eq!(parse_track_id("rtsp://h/x/trackID="), None);
        assert_eq!(parse_track_id("rtsp://h/trackID=1/x.mp4"), None);
        assert_eq!(parse_track_id("rtsp://h/x.mp4"), None);
        assert_eq!(parse_track_id(""), None);
        assert_eq!(parse_track_id("streamid=1"), None);
    }
}
