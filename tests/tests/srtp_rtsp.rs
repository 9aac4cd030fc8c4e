//! SRTP for RTSP clients: GStreamer's `rtspsrc`, asked for `?srtp=1`, gets an SDP with
//! `RTP/SAVP` and MIKEY keys, sets up RTP/SAVP and plays the clip to the end; on the wire
//! the media is protected (the H.264 payload headers are not readable, and every packet
//! carries the 10-byte authentication tag), while a plain session of the same clip is not.
//! The same holds for a live channel (`/live/<channel>?srtp=1`), where every client's
//! copy of the shared packets is protected with its own keys in the fan-out, and for
//! `RTP/SAVP/TCP` (SRTP interleaved in the RTSP connection, `rtspsrc protocols=tcp`).

use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::{run, Checks, Deployment, Kind, LinkTransport, Node, Options};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const HTTP_PORT: u16 = 9100;

/// A counter of the protocol unit's `/metrics` (0 when absent).
fn metric(d: &Deployment, sample: &str) -> f64 {
    let url = format!("http://{}:{HTTP_PORT}/metrics", d.rtsp_addr.ip());
    let out = d
        .run_in(
            Node::Client,
            "curl",
            ["-sS", "--fail", "--max-time", "10", url.as_str()],
            Duration::from_secs(15),
        )
        .and_then(|o| o.check())
        .expect("curl /metrics");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const RECEIVER_REPORTS: &str = "divisor_rtcp_receiver_reports_total ";
const SRTCP_REJECTED: &str = "divisor_rtcp_dropped_total{reason=\"srtcp_rejected\"} ";

/// What the capture shows of the server's video packets (payload type 96).
#[derive(Debug, Default)]
struct VideoOnWire {
    packets: usize,
    /// Packets whose first payload byte reads as an H.264 NAL / FU-A header we send
    /// (forbidden bit clear, type 1, 5, 6, 7, 8, 24 or 28).
    plausible_nal: usize,
    /// Largest UDP payload (RTP packet) length.
    max_len: usize,
}

fn video_on_wire(file: &Path, server_ip: &str) -> VideoOnWire {
    let out = run(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(["-o", "rtp.heuristic_rtp:TRUE"])
            .args([
                "-Y",
                &format!("rtp && !rtcp && ip.src=={server_ip} && rtp.p_type==96"),
            ])
            .args(["-T", "fields", "-E", "separator=,"])
            .args(["-e", "udp.length", "-e", "rtp.payload"]),
        Duration::from_secs(60),
    )
    .and_then(|o| o.check())
    .expect("tshark reads the capture");
    let mut v = VideoOnWire::default();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split(',');
        let len: usize = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let payload = f.next().unwrap_or("").replace(':', "");
        let first = u8::from_str_radix(payload.get(..2).unwrap_or("ff"), 16).unwrap_or(0xff);
        v.packets += 1;
        v.max_len = v.max_len.max(len.saturating_sub(8));
        if first & 0x80 == 0 && matches!(first & 0x1f, 1 | 5 | 6 | 7 | 8 | 24 | 28) {
            v.plausible_nal += 1;
        }
    }
    v
}

/// RTP packets interleaved in the server's side of RTSP/TCP connections (RFC 2326 10.12),
/// judged as [`video_on_wire`] judges UDP ones. The capture holds one connection, in order
/// (a veth does not reorder); RTSP replies between the frames are skipped.
fn interleaved_video_on_wire(file: &Path, rtsp_port: u16) -> VideoOnWire {
    let out = run(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(["-Y", &format!("tcp.srcport=={rtsp_port} && tcp.len>0")])
            .args(["-T", "fields", "-e", "tcp.payload"]),
        Duration::from_secs(60),
    )
    .and_then(|o| o.check())
    .expect("tshark reads the capture");
    let hex: String = out
        .stdout
        .split_whitespace()
        .collect::<String>()
        .replace(':', "");
    let stream: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let mut v = VideoOnWire::default();
    let mut at = 0;
    while at + 4 <= stream.len() {
        if stream[at] != b'$' {
            // An RTSP reply: its head, then Content-Length bytes of body.
            let rest = &stream[at..];
            let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
            let body: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                .unwrap_or(0);
            at += end + 4 + body;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([stream[at + 2], stream[at + 3]]));
        let Some(packet) = stream.get(at + 4..at + 4 + len) else {
            break;
        };
        at += 4 + len;
        if packet.len() > 12 && packet[1] & 0x7f == 96 {
            let first = packet[12];
            v.packets += 1;
            v.max_len = v.max_len.max(len);
            if first & 0x80 == 0 && matches!(first & 0x1f, 1 | 5 | 6 | 7 | 8 | 24 | 28) {
                v.plausible_nal += 1;
            }
        }
    }
    v
}

/// Play `url` with rtspsrc over `protocol` (`udp` or `tcp`) while capturing in the client
/// namespace: to the end, or for `stop_after` (then gst-launch gets SIGINT and, with `-e`,
/// ends the stream cleanly: a live channel has no end).
fn play_and_capture(
    d: &Deployment,
    url: &str,
    name: &str,
    protocol: &str,
    timeout: Duration,
    stop_after: Option<Duration>,
) -> (divisor_tests::CmdOutput, VideoOnWire) {
    let cap = d
        .start_capture(Node::Client, &d.client_if.clone(), name)
        .expect("capture starts");
    let location = format!("location={url}");
    let protocols = format!("protocols={protocol}");
    let stop = stop_after.map(|t| format!("{}", t.as_secs()));
    let (program, prefix): (&str, Vec<&str>) = match &stop {
        Some(secs) => (
            "timeout",
            vec!["-s", "INT", "-k", "10", secs, "gst-launch-1.0"],
        ),
        None => ("gst-launch-1.0", vec![]),
    };
    let out = d
        .run_in(
            Node::Client,
            program,
            prefix.into_iter().chain([
                "-e",
                "-v",
                "rtspsrc",
                &location,
                &protocols,
                "name=src",
                "src.",
                "!",
                "queue",
                "!",
                "decodebin",
                "!",
                "fakesink",
                "name=a",
                "silent=false",
                "sync=true",
                "src.",
                "!",
                "queue",
                "!",
                "decodebin",
                "!",
                "fakesink",
                "name=b",
                "silent=false",
                "sync=true",
            ]),
            timeout,
        )
        .expect("gst-launch runs");
    std::thread::sleep(Duration::from_millis(500));
    let file = cap.stop();
    let wire = match protocol {
        "tcp" => interleaved_video_on_wire(&file, d.rtsp_addr.port()),
        _ => video_on_wire(&file, &d.rtsp_ip.to_string()),
    };
    (out, wire)
}

/// Decoded video frames that reached a fakesink, from `gst-launch-1.0 -v`'s report of
/// each buffer (`last-message = chain ... (a:sink) (...)`) on the sink that got raw video.
///
/// The video sink is known by its pad's caps (`GstFakeSink:a.GstPad:sink: caps =
/// video/x-raw...`) or by the caps event in its `last-message`. Not by the event alone:
/// gst-launch reads `last-message` when it gets the notification, so on a busy machine
/// the first buffer's message can replace the caps event's before it is printed (CI
/// once saw every frame decoded and counted none).
fn decoded_video_frames(stdout: &str) -> usize {
    ["a", "b"]
        .iter()
        .filter(|sink| {
            let pad_caps = format!("GstFakeSink:{sink}.GstPad:sink: caps = video/x-raw");
            let message = format!("GstFakeSink:{sink}: last-message");
            stdout.lines().any(|l| {
                l.contains(&pad_caps) || (l.contains(&message) && l.contains("video/x-raw"))
            })
        })
        .map(|sink| {
            stdout
                .matches(&format!("chain   ******* ({sink}:sink) ("))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// A split deployment whose protocol unit serves `/metrics` on [`HTTP_PORT`].
fn split_with_metrics(name: &str) -> Deployment {
    let options = Options {
        protocol_args: vec![
            OsString::from("--http-listen"),
            OsString::from(format!("0.0.0.0:{HTTP_PORT}")),
        ],
        ..Default::default()
    };
    Deployment::start_with(name, Kind::Split(LinkTransport::Tcp), options)
        .expect("deployment starts")
}

/// rtspsrc decoded (about) every one of the clip's `expected` video frames and ended
/// cleanly with no error.
fn check_played_to_end(c: &mut Checks, what: &str, out: &divisor_tests::CmdOutput, expected: u64) {
    let frames = decoded_video_frames(&out.stdout);
    eprintln!("{what}: {frames} video frames decoded of {expected}");
    c.check(frames as u64 * 10 >= expected * 9, || {
        format!("{what}: {frames} video frames decoded, expected about {expected}")
    });
    c.check(out.success() && !out.timed_out, || {
        format!(
            "{what}: gst-launch-1.0 rtspsrc did not play to the end (exit {:?}, timed out {}): {}",
            out.status, out.timed_out, out.stderr
        )
    });
    c.check(!out.stderr.contains("ERROR"), || {
        format!("{what}: gst-launch-1.0 reported an error: {}", out.stderr)
    });
}

#[test]
fn rtspsrc_plays_an_srtp_session_to_the_end() {
    let d = split_with_metrics("srtp-rtsp");
    let a = media::asset(CLIP_MP4).unwrap();
    let timeout = Duration::from_secs_f64(a.duration + 30.0);
    let mut c = Checks::new();

    let (plain_out, plain) = play_and_capture(&d, &d.url(CLIP_MP4), "plain", "udp", timeout, None);
    let rr_before = metric(&d, RECEIVER_REPORTS);
    let srtp_url = format!("{}?srtp=1", d.url(CLIP_MP4));
    let (srtp_out, srtp) = play_and_capture(&d, &srtp_url, "srtp", "udp", timeout, None);
    let rr_after = metric(&d, RECEIVER_REPORTS);
    let rejected = metric(&d, SRTCP_REJECTED);
    eprintln!("receiver reports: {rr_before} before the SRTP session, {rr_after} after; SRTCP rejected: {rejected}");
    // rtspsrc's SRTCP receiver reports, unprotected with the keys of its KeyMgmt header.
    c.check(rr_after > rr_before && rejected == 0.0, || {
        format!(
            "SRTCP from rtspsrc: receiver reports {rr_before} -> {rr_after}, rejected {rejected}"
        )
    });
    eprintln!("plain session video on the wire: {plain:?}");
    eprintln!("SRTP session video on the wire: {srtp:?}");

    for (what, out) in [("plain", &plain_out), ("SRTP", &srtp_out)] {
        check_played_to_end(&mut c, what, out, a.video_frames);
    }
    c.check(plain.packets > 50 && srtp.packets > 50, || {
        format!("too few video packets captured: plain {plain:?}, SRTP {srtp:?}")
    });
    // The plain session's payload headers all read as H.264; the SRTP session's mostly not.
    c.check(plain.plausible_nal == plain.packets, || {
        format!("plain session: payload headers not all H.264: {plain:?}")
    });
    c.check(srtp.plausible_nal * 2 < srtp.packets, || {
        format!("SRTP session: H.264 payload headers readable on the wire: {srtp:?}")
    });
    // Full-size packets carry the same media bytes plus the 80-bit authentication tag.
    c.check(srtp.max_len == plain.max_len + 10, || {
        format!(
            "largest RTP packet: SRTP {} bytes, plain {} bytes; expected 10 more with SRTP",
            srtp.max_len, plain.max_len
        )
    });
    c.finish();
}

/// rtspsrc plays live `url` over UDP for 12 s while the client side is captured (as
/// `what`): it decodes about every frame (long.mp4 is 25 frames/s; allow for RTSP set-up
/// and the decoder's start), reports no error, and over 100 video packets are captured.
fn play_live(c: &mut Checks, d: &Deployment, url: &str, what: &str) -> VideoOnWire {
    let secs = 12;
    let (out, wire) = play_and_capture(
        d,
        url,
        what,
        "udp",
        Duration::from_secs(secs + 30),
        Some(Duration::from_secs(secs)),
    );
    let frames = decoded_video_frames(&out.stdout);
    eprintln!("{what}: {frames} video frames decoded in {secs} s; on the wire: {wire:?}");
    c.check(frames >= 150, || {
        format!(
            "{what}: {frames} video frames decoded in {secs} s, expected about {}\n{}",
            secs * 25,
            out.stderr
        )
    });
    c.check(
        !out.stderr.contains("ERROR") && !out.stdout.contains("ERROR"),
        || format!("{what}: gst-launch-1.0 reported an error: {}", out.stderr),
    );
    c.check(wire.packets > 100, || {
        format!("{what}: too few video packets captured: {wire:?}")
    });
    wire
}

/// The encoder unit's live channel for [`rtspsrc_plays_a_live_srtp_channel`].
const LIVE_CONFIG: &str = r#"
[[channel]]
name = "x"
source = "loop:long.mp4"
"#;

/// A live channel to rtspsrc twice: as plain RTP/AVP over UDP (the viewer is sent the
/// rendition's shared, pre-built packets: readable H.264 on the wire) and as RTP/SAVP
/// (its own numbering, every packet protected with its own keys).
#[test]
fn rtspsrc_plays_a_live_srtp_channel() {
    let config = std::env::temp_dir().join("divisor-srtp-live.toml");
    std::fs::write(&config, LIVE_CONFIG).unwrap();
    let d = Deployment::start_with(
        "srtp-live",
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec!["--config".into(), config.into()],
            protocol_args: vec![],
        },
    )
    .expect("deployment starts");
    let mut c = Checks::new();
    let wire = play_live(
        &mut c,
        &d,
        &format!("rtsp://{}/live/x", d.rtsp_addr),
        "plain-live",
    );
    c.check(wire.plausible_nal * 2 > wire.packets, || {
        format!("plain-live: expected readable H.264 on the wire: {wire:?}")
    });
    let wire = play_live(
        &mut c,
        &d,
        &format!("rtsp://{}/live/x?srtp=1", d.rtsp_addr),
        "srtp-live",
    );
    c.check(wire.plausible_nal * 2 < wire.packets, || {
        format!("live SRTP: H.264 payload headers readable on the wire: {wire:?}")
    });
    c.finish();
}

/// RTP/SAVP/TCP: the same VoD clip as [`rtspsrc_plays_an_srtp_session_to_the_end`],
/// interleaved in the RTSP connection (`rtspsrc protocols=tcp`). rtspsrc's `srtpdec`
/// drops every packet whose authentication tag does not verify, so decoded frames show
/// the server protected them with the keys it announced; the interleaved stream on the
/// wire shows the payloads unreadable; rtspsrc's SRTCP reports, sent back over the
/// connection, are unprotected and counted.
#[test]
fn rtspsrc_plays_an_srtp_session_over_tcp() {
    let d = split_with_metrics("srtp-tcp");
    let a = media::asset(CLIP_MP4).unwrap();
    let timeout = Duration::from_secs_f64(a.duration + 30.0);
    let mut c = Checks::new();
    let url = format!("{}?srtp=1", d.url(CLIP_MP4));
    let (out, wire) = play_and_capture(&d, &url, "srtp-tcp", "tcp", timeout, None);
    let rr = metric(&d, RECEIVER_REPORTS);
    let rejected = metric(&d, SRTCP_REJECTED);
    eprintln!(
        "SRTP over TCP: receiver reports {rr}, SRTCP rejected {rejected}; on the wire: {wire:?}"
    );
    check_played_to_end(&mut c, "SRTP over TCP", &out, a.video_frames);
    c.check(rr > 0.0 && rejected == 0.0, || {
        format!("SRTCP over TCP from rtspsrc: receiver reports {rr}, rejected {rejected}")
    });
    c.check(wire.packets > 50, || {
        format!("SRTP over TCP: too few interleaved video packets captured: {wire:?}")
    });

    // Garbage on the interleaved RTCP channel of a playing RTP/SAVP/TCP session is
    // dropped and counted; the session's media keeps coming.
    let garbage = garbage_srtcp_over_tcp(&d, &url);
    if let Some((before, after)) = c.ok("garbage SRTCP over an RTP/SAVP/TCP session", garbage) {
        let rejected_after = metric(&d, SRTCP_REJECTED);
        eprintln!(
            "garbage SRTCP over TCP: {before} packets before, {after} after; SRTCP rejected \
             {rejected} -> {rejected_after}"
        );
        c.check(before > 0 && after > 0, || {
            format!("garbage SRTCP over TCP: media before {before}, after {after}")
        });
        c.check(rejected_after >= rejected + 3.0, || {
            format!(
                "garbage SRTCP over TCP: rejected {rejected} -> {rejected_after}, expected 3 more"
            )
        });
    }
    c.check(wire.plausible_nal * 2 < wire.packets, || {
        format!("SRTP over TCP: H.264 payload headers readable on the wire: {wire:?}")
    });
    c.finish();
}

/// Sets up and plays `url`'s first track over RTP/SAVP/TCP with our own RTSP client,
/// sends three malformed SRTCP packets on its RTCP channel, and returns the interleaved
/// RTP packets that arrived in the second before and the second after.
fn garbage_srtcp_over_tcp(d: &Deployment, url: &str) -> anyhow::Result<(usize, usize)> {
    use divisor_tests::rtsp::Incoming;
    use divisor_tests::RtspConn;
    let mut conn = RtspConn::connect(d, Node::Client, d.rtsp_addr)?;
    let control = conn.first_track(url)?;
    let setup = conn.request(
        "SETUP",
        &control,
        &[("Transport", "RTP/SAVP/TCP;unicast;interleaved=0-1")],
    )?;
    anyhow::ensure!(
        setup.status == 200
            && setup
                .header("Transport")
                .is_some_and(|v| v.starts_with("RTP/SAVP/TCP")),
        "SETUP RTP/SAVP/TCP: {setup:?}"
    );
    let play = conn.request("PLAY", url, &[("Range", "npt=0-")])?;
    anyhow::ensure!(play.status == 200, "PLAY: {play:?}");
    // `next` hands out frames queued while a reply was awaited first.
    let count_for = |conn: &mut RtspConn, secs: f64| -> anyhow::Result<usize> {
        let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match conn.next(left)? {
                Some(Incoming::Interleaved(f)) if f.channel == 0 => n += 1,
                Some(_) => {}
                None => break,
            }
        }
        Ok(n)
    };
    let before = count_for(&mut conn, 1.0)?;
    for junk in [
        &[0x80u8, 201, 0, 1][..],
        &[0xff; 40][..],
        &[0x81, 200, 0, 6, 1, 2, 3, 4][..],
    ] {
        let mut frame = vec![b'$', 1];
        frame.extend_from_slice(&(junk.len() as u16).to_be_bytes());
        frame.extend_from_slice(junk);
        conn.send_raw(&frame)?;
    }
    let after = count_for(&mut conn, 1.0)?;
    Ok((before, after))
}
