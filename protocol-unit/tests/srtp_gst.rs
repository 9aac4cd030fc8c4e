//! SRTP with MIKEY against GStreamer, the real client, without an RTSP server in between.
//!
//! - `gstreamer_decodes_srtp_keyed_by_our_mikey`: we write an SDP with our
//!   `a=key-mgmt:mikey` line; GStreamer's SDP/MIKEY code (`gst_mikey.py caps`, the calls
//!   `rtspsrc` makes) turns it into srtpdec caps; `gst-launch-1.0 udpsrc ! srtpdec !
//!   rtph264depay ! avdec_h264` decodes the SRTP we protect. A control run announces other
//!   keys than the ones we protect with and must decode nothing.
//! - `gstreamer_client_keys_decrypt_its_srtcp`: GStreamer builds the `KeyMgmt` header
//!   `rtspsrc` sends on SETUP and protects an RTCP receiver report with srtpenc; we parse the
//!   header and unprotect the SRTCP with the keys it carried.
//!
//! Needs ffmpeg (libx264), gst-launch-1.0 with srtpdec (gstreamer1.0-plugins-bad) and
//! avdec_h264 (gstreamer1.0-libav), and /usr/bin/python3 with python3-gi and
//! gir1.2-gst-plugins-base-1.0 (scripts/install-deps.sh).

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use divisor_protocol::srtp::mikey::{self, CryptoSession, MikeyMessage};
use divisor_protocol::srtp::{SrtpKeys, SrtpSession};

const WIDTH: usize = 160;
const HEIGHT: usize = 120;
const FRAMES: usize = 25;
const SSRC: u32 = 0x5eed_cafe;
const PYTHON: &str = "/usr/bin/python3";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("divisor-srtp-gst-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gst_mikey.py")
}

/// H.264 access units (Annex B, each starting with an access unit delimiter) made by ffmpeg.
fn h264_access_units(dir: &Path) -> Vec<Bytes> {
    let out = dir.join("in.h264");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc=size={WIDTH}x{HEIGHT}:rate=25"))
        .args(["-frames:v", &FRAMES.to_string(), "-c:v", "libx264"])
        .args([
            "-bf",
            "0",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-tune",
            "zerolatency",
        ])
        .args(["-bsf:v", "h264_metadata=aud=insert", "-f", "h264"])
        .arg(&out)
        .status()
        .expect("run ffmpeg (install-deps.sh installs it)");
    assert!(status.success(), "ffmpeg failed to make H.264");
    let data = std::fs::read(&out).expect("read H.264");
    // Split at every 4-byte start code followed by an AUD (NAL type 9).
    let mut starts = Vec::new();
    for i in 0..data.len().saturating_sub(4) {
        if data[i..i + 4] == [0, 0, 0, 1] && data[i + 4] & 0x1f == 9 {
            starts.push(i);
        }
    }
    starts.push(data.len());
    let aus: Vec<Bytes> = starts
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&data[w[0]..w[1]]))
        .collect();
    assert_eq!(aus.len(), FRAMES, "one access unit per frame");
    aus
}

/// Plain RTP packets (header + payload) for the access units, RFC 6184 via the rtp crate.
fn rtp_packets(aus: &[Bytes]) -> Vec<Vec<u8>> {
    use rtp::packetizer::Payloader;
    let mut payloader = rtp::codecs::h264::H264Payloader::default();
    let mut seq: u16 = 65_500; // crosses the 16-bit wrap: the ROC must follow
    let mut packets = Vec::new();
    for (i, au) in aus.iter().enumerate() {
        let payloads = payloader.payload(1200, au).expect("payload");
        let ts = (i as u32) * 3600;
        let n = payloads.len();
        for (j, payload) in payloads.into_iter().enumerate() {
            let marker = if j + 1 == n { 0x80 } else { 0 };
            let mut p = vec![0x80, marker | 96];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&SSRC.to_be_bytes());
            p.extend_from_slice(&payload);
            packets.push(p);
            seq = seq.wrapping_add(1);
        }
    }
    packets
}

fn sdp_with_mikey(keys: &SrtpKeys, port: u16) -> String {
    let msg = MikeyMessage::srtp_offer(
        keys,
        vec![CryptoSession {
            policy: 0,
            ssrc: SSRC,
            roc: 0,
        }],
        rand::random(),
        0xe000_0000_0000_0000,
        rand::random(),
    );
    let km = msg.sdp_key_mgmt_value().expect("encode MIKEY");
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Divisor\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=video {port} RTP/SAVP 96\r\na=rtpmap:96 H264/90000\r\n\
         a=fmtp:96 packetization-mode=1\r\na=key-mgmt:{km}\r\na=control:stream=0\r\n"
    )
}

/// GStreamer's reading of our SDP: the srtpdec caps string.
fn gst_caps_for(sdp: &str, dir: &Path) -> String {
    let path = dir.join("offer.sdp");
    std::fs::write(&path, sdp).expect("write SDP");
    let out = Command::new(PYTHON)
        .arg(helper())
        .arg("caps")
        .arg(&path)
        .output()
        .expect("run /usr/bin/python3 (python3-gi)");
    assert!(
        out.status.success(),
        "GStreamer could not read our SDP/MIKEY: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caps = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert!(caps.contains("srtp-key=(buffer)"), "caps: {caps}");
    // rtspsrc's request-key handler adds the SSRC and its ROC from the MIKEY crypto-session
    // map (which python cannot reach through GstSdp); srtpdec needs the SSRC in its caps.
    format!(
        "{}, ssrc=(uint){SSRC}, roc=(uint)0",
        caps.trim_end_matches(';')
    )
}

struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `gst-launch-1.0 udpsrc ! srtpdec ! rtph264depay ! avdec_h264 ! filesink` (raw I420).
fn start_receiver(caps: &str, port: u16, dir: &Path) -> Receiver {
    let out = dir.join("decoded.yuv");
    let pipeline = format!(
        "udpsrc address=127.0.0.1 port={port} caps=\"{caps}\" ! srtpdec ! rtph264depay ! \
         avdec_h264 max-threads=1 ! videoconvert ! video/x-raw,format=I420 ! \
         filesink buffer-mode=unbuffered location={}",
        out.display()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec gst-launch-1.0 {pipeline}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run gst-launch-1.0");
    // Wait until the pipeline plays, so the first packets are not lost.
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("Setting pipeline to PLAYING") => break,
            Some(Ok(_)) => {}
            _ => panic!("gst-launch-1.0 exited before playing"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Receiver { child, out }
}

/// Frames decoded so far, waiting until the count stops growing.
fn decoded_frames(rx: &Receiver, expect: usize) -> usize {
    let frame = WIDTH * HEIGHT * 3 / 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = usize::MAX;
    let mut stable_since = Instant::now();
    loop {
        let n = std::fs::metadata(&rx.out).map_or(0, |m| m.len() as usize) / frame;
        if n != last {
            last = n;
            stable_since = Instant::now();
        }
        if n >= expect || Instant::now() > deadline {
            return n;
        }
        if stable_since.elapsed() > Duration::from_secs(3) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send_protected(keys: &SrtpKeys, packets: &[Vec<u8>], port: u16) {
    let mut session = SrtpSession::new(keys.clone()).expect("session");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for p in packets {
        let sealed = session.protect_rtp(p).expect("protect");
        sock.send_to(&sealed, ("127.0.0.1", port)).expect("send");
        // Loopback has no pacing of its own; keep the receiver's socket buffer comfortable.
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[test]
fn gstreamer_decodes_srtp_keyed_by_our_mikey() {
    let dir = scratch("decode");
    let aus = h264_access_units(&dir);
    let packets = rtp_packets(&aus);
    let keys = SrtpKeys::random();

    let port = free_udp_port();
    let caps = gst_caps_for(&sdp_with_mikey(&keys, port), &dir);
    let key_hex: String = keys.concat().iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        caps.contains(&key_hex),
        "GStreamer read another key: {caps}"
    );
    let rx = start_receiver(&caps, port, &dir);
    send_protected(&keys, &packets, port);
    let frames = decoded_frames(&rx, FRAMES);
    eprintln!(
        "SRTP: {} packets, {FRAMES} frames sent; GStreamer decoded {frames}",
        packets.len()
    );
    assert_eq!(frames, FRAMES, "every frame decodes through srtpdec");

    // Control: announce other keys than we protect with; srtpdec must reject everything.
    let dir = scratch("control");
    let port = free_udp_port();
    let caps = gst_caps_for(&sdp_with_mikey(&SrtpKeys::random(), port), &dir);
    let rx = start_receiver(&caps, port, &dir);
    send_protected(&keys, &packets, port);
    let frames = decoded_frames(&rx, 1);
    eprintln!("control with wrong keys: GStreamer decoded {frames}");
    assert_eq!(frames, 0, "wrong keys must decode nothing");
}

#[test]
fn gstreamer_client_keys_decrypt_its_srtcp() {
    let client_keys = SrtpKeys::random();
    let key_hex: String = client_keys
        .concat()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Receiver report from SSRC 12345 about our SSRC, one report block.
    let mut rr = vec![0x81, 201, 0, 7];
    rr.extend_from_slice(&12_345u32.to_be_bytes());
    rr.extend_from_slice(&SSRC.to_be_bytes());
    rr.extend_from_slice(&[
        0x05, 0, 0, 3, 0, 0, 0x10, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    let rr_hex: String = rr.iter().map(|b| format!("{b:02x}")).collect();

    let uri = "rtsp://127.0.0.1:8554/vod/a.mp4/stream=0";
    let out = Command::new(PYTHON)
        .arg(helper())
        .args(["client-key", uri, "12345", &key_hex, &rr_hex])
        .output()
        .expect("run /usr/bin/python3 (python3-gi)");
    assert!(
        out.status.success(),
        "GStreamer helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let mut lines = text.lines();
    let header = lines.next().expect("KeyMgmt line");
    let srtcp_hex = lines.next().expect("SRTCP line");
    eprintln!("GStreamer KeyMgmt: {header}");

    let entries = mikey::parse_key_mgmt_header(header).expect("parse GStreamer's KeyMgmt");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].uri.as_deref(), Some(uri));
    let msg = &entries[0].message;
    assert_eq!(msg.srtp_keys().expect("keys"), client_keys);
    assert_eq!(msg.roc_for(12_345), Some(0));

    let srtcp: Vec<u8> = (0..srtcp_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&srtcp_hex[i..i + 2], 16).expect("hex"))
        .collect();
    let mut session = SrtpSession::new(SrtpKeys::random()).expect("session");
    session.set_remote_keys(&client_keys).expect("keys");
    let plain = session.unprotect_rtcp(&srtcp).expect("GStreamer's SRTCP");
    assert_eq!(&plain[..], &rr[..]);

    // A flipped bit in GStreamer's SRTCP is refused.
    let mut bad = srtcp.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(session.unprotect_rtcp(&bad).is_err());
}
