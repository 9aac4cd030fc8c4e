//! One live channel fanned out to many clients: 200 RTSP/UDP sessions (a small client of
//! ours) plus real receivers, tshark's RTP analysis of what reached the client namespace,
//! a late joiner that must decode from its first frame (GOP cache), and frame-rate tiers.

use divisor_tests::clients::trouble_lines;
use divisor_tests::cmd::kill_group;
use divisor_tests::deploy::Options;
use divisor_tests::rtsp::{rtp_header, sdp_tracks};
use divisor_tests::tshark::rtp_streams;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, Node, RtspConn};
use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Viewers whose streams tshark analyses (capturing all 200 at ~20k packets/s makes the
/// capture itself drop packets).
const SAMPLE: usize = 12;

/// Sessions of our own client.
const VIEWERS: usize = 200;

/// Encoder configuration: `x` passes a looped file through; `t` is transcoded with
/// temporal layers so the tiers have frames to drop.
const CONFIG: &str = r#"
[[rendition]]
name = "low"
codec = "h264"
width = 320
height = 180
bitrate_kbps = 300
keyint = 50
tiers = true

[[channel]]
name = "x"
source = "loop:long.mp4"

[[channel]]
name = "t"
source = "loop:clip.mp4"
renditions = ["low"]

[[channel]]
name = "b"
source = "loop:bframes.mp4"
"#;

/// tshark on the client veth with capture filter `filter`, into `<log_dir>/<name>.pcapng`.
fn capture(d: &Deployment, filter: &str, name: &str) -> anyhow::Result<(Child, PathBuf)> {
    let file = d.log_dir.join(format!("{name}.pcapng"));
    let log = d.log_path(name);
    let f = OpenOptions::new().create(true).append(true).open(&log)?;
    let child = d
        .command(Node::Client, "tshark")
        .args(["-n", "-B", "64", "-i", &d.client_if, "-f", filter, "-w"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Capturing on")
    {
        anyhow::ensure!(Instant::now() < deadline, "tshark did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok((child, file))
}

/// One session of our client: RTP on a UDP socket in the client namespace, sequence
/// numbers checked as they come.
struct Viewer {
    _conn: RtspConn,
    rtp: UdpSocket,
    _rtcp: UdpSocket,
    expected_first: u16,
    last: Option<u16>,
    packets: u64,
    gaps: u64,
    first_wrong: bool,
}

impl Viewer {
    fn open(d: &Deployment, track_url: &str, play_url: &str) -> anyhow::Result<Viewer> {
        let (rtp, rtcp) = d.in_ns(Node::Client, || -> std::io::Result<_> {
            Ok((UdpSocket::bind("0.0.0.0:0")?, UdpSocket::bind("0.0.0.0:0")?))
        })??;
        rtp.set_nonblocking(true)?;
        let (p1, p2) = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
        let mut conn = RtspConn::connect(d, Node::Client, d.rtsp_addr)?;
        let transport = format!("RTP/AVP;unicast;client_port={p1}-{p2}");
        let r = conn.request("SETUP", track_url, &[("Transport", &transport)])?;
        anyhow::ensure!(r.status == 200, "SETUP: {r:?}");
        let r = conn.request("PLAY", play_url, &[("Range", "npt=0-")])?;
        anyhow::ensure!(r.status == 200, "PLAY: {r:?}");
        let seq = r
            .header("RTP-Info")
            .and_then(|v| v.split(';').find_map(|p| p.trim().strip_prefix("seq=")))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("PLAY without RTP-Info seq: {r:?}"))?;
        Ok(Viewer {
            _conn: conn,
            rtp,
            _rtcp: rtcp,
            expected_first: seq,
            last: None,
            packets: 0,
            gaps: 0,
            first_wrong: false,
        })
    }

    fn drain(&mut self, buf: &mut [u8]) {
        while let Ok(n) = self.rtp.recv(buf) {
            let Some(h) = rtp_header(&buf[..n]) else {
                continue;
            };
            match self.last {
                None => self.first_wrong = h.seq != self.expected_first,
                Some(l) if h.seq != l.wrapping_add(1) => self.gaps += 1,
                _ => {}
            }
            self.last = Some(h.seq);
            self.packets += 1;
        }
    }
}

/// `ffmpeg` from the client namespace with `args`; returns (decoded video frames, trouble
/// lines, stderr).
fn ffmpeg(d: &Deployment, args: &[&str]) -> (u64, Vec<String>, String) {
    let mut all = vec![
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-timeout",
        "10000000",
    ];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", "null", "-", "-progress", "pipe:1"]);
    match d.run_in(Node::Client, "ffmpeg", all, Duration::from_secs(40)) {
        Ok(out) => {
            let frames = out
                .stdout
                .lines()
                .filter_map(|l| l.strip_prefix("frame="))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .next_back()
                .unwrap_or(0);
            (frames, trouble_lines(&out.stderr), out.stderr)
        }
        Err(e) => (0, vec![format!("ffmpeg did not run: {e:#}")], String::new()),
    }
}

#[test]
fn live_channel_fans_out_to_many_clients_late_joiners_and_tiers() {
    let config = std::env::temp_dir().join("divisor-live-fanout.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let d = Deployment::start_with(
        "live-fanout",
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec!["--config".into(), config.clone().into()],
            protocol_args: vec![],
        },
    )
    .expect("deployment starts");
    let mut c = Checks::new();
    let live = format!("rtsp://{}/live/x", d.rtsp_addr);

    // The channel's video track, from DESCRIBE.
    let mut probe = RtspConn::connect(&d, Node::Client, d.rtsp_addr).unwrap();
    let r = probe
        .request("DESCRIBE", &live, &[("Accept", "application/sdp")])
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "DESCRIBE {live}: {r:?}\n{}",
        d.logs_report(30)
    );
    let base = r.header("Content-Base").unwrap_or(&live).to_string();
    let tracks = sdp_tracks(&r.body_text(), &base);
    let video = tracks
        .iter()
        .find(|t| t.media == "video")
        .expect("a video track")
        .control
        .clone();

    let mut viewers = Vec::new();
    for i in 0..VIEWERS {
        match Viewer::open(&d, &video, &base) {
            Ok(v) => viewers.push(v),
            Err(e) => {
                c.check(false, || format!("viewer {i}: {e:#}"));
                break;
            }
        }
    }
    // Capture a sample of the viewers' RTP.
    let ports: Vec<String> = viewers
        .iter()
        .step_by((VIEWERS / SAMPLE).max(1))
        .map(|v| format!("udp dst port {}", v.rtp.local_addr().unwrap().port()))
        .collect();
    let (mut cap, file) = capture(&d, &ports.join(" or "), "sample-capture").unwrap();
    // A late joiner, well into the channel: ffmpeg must decode from its first frame (no
    // missing references, no "non-existing PPS"), while the 200 keep playing.
    let late = {
        let d = &d;
        let live = live.clone();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                std::thread::sleep(Duration::from_millis(1500));
                ffmpeg(
                    d,
                    &[
                        "-rtsp_transport",
                        "udp",
                        "-i",
                        &live,
                        "-map",
                        "0:v:0",
                        "-frames:v",
                        "30",
                    ],
                )
            });
            let mut buf = vec![0u8; 2048];
            let end = Instant::now() + Duration::from_secs(6);
            while Instant::now() < end {
                for v in &mut viewers {
                    v.drain(&mut buf);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            h.join().unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    kill_group(&mut cap, Duration::from_secs(10));
    c.check(viewers.len() == VIEWERS, || {
        format!("only {} of {VIEWERS} sessions started", viewers.len())
    });
    let quiet: Vec<usize> = (0..viewers.len())
        .filter(|&i| viewers[i].packets < 50)
        .collect();
    c.check(quiet.is_empty(), || {
        format!("viewers with fewer than 50 packets: {quiet:?}")
    });
    let gaps: u64 = viewers.iter().map(|v| v.gaps).sum();
    c.check(gaps == 0, || {
        format!("{gaps} sequence gaps across our {VIEWERS} viewers")
    });
    let wrong_first = viewers.iter().filter(|v| v.first_wrong).count();
    c.check(wrong_first == 0, || {
        format!("{wrong_first} viewers' first packet is not the RTP-Info seq")
    });
    let packets: u64 = viewers.iter().map(|v| v.packets).sum();
    eprintln!("our {VIEWERS} viewers received {packets} RTP packets, {gaps} gaps");

    let (frames, trouble, stderr) = late;
    c.check(frames == 30 && trouble.is_empty(), || {
        format!("late joiner decoded {frames} frames, trouble {trouble:?}\n{stderr}")
    });

    // tshark on the client side: every stream from the server lossless, no sequence or
    // timestamp errors.
    let (streams, table) = rtp_streams(&file).unwrap();
    let server: Vec<_> = streams
        .iter()
        .filter(|s| s.src.starts_with(&format!("{}:", d.rtsp_ip)) && s.packets > 5)
        .collect();
    c.check(server.len() >= ports.len(), || {
        format!(
            "tshark found {} server streams, expected {}:\n{table}",
            server.len(),
            ports.len()
        )
    });
    eprintln!(
        "tshark: {} sampled streams, {} packets, {} lost",
        server.len(),
        server.iter().map(|s| s.packets).sum::<u64>(),
        server.iter().map(|s| s.lost).sum::<i64>()
    );
    // Plain-RTP viewers of the full tier share the rendition's stream: one SSRC, the
    // packets built once (RTP-Info tells each where it starts), and still lossless and
    // in sequence per viewer above.
    let ssrcs: std::collections::BTreeSet<u32> = server.iter().map(|s| s.ssrc).collect();
    c.check(ssrcs.len() == 1, || {
        format!("the sampled viewers of one rendition should share one SSRC, got {ssrcs:08x?}")
    });
    let bad: Vec<&String> = server
        .iter()
        .filter(|s| s.lost != 0 || s.problem)
        .map(|s| &s.line)
        .collect();
    c.check(bad.is_empty(), || {
        format!(
            "{} streams with loss or sequence errors, e.g. {:?}\n{}",
            bad.len(),
            bad.iter().take(5).collect::<Vec<_>>(),
            table.lines().take(20).collect::<Vec<_>>().join("\n")
        )
    });
    drop(viewers);

    // Tiers: on the transcoded rendition with a B pyramid (layers 0, 1, 2) half keeps
    // about half the frames and quarter a quarter. An encoder unit without transcoding
    // refuses it; then the passthrough B-frame channel is used, whose only droppable
    // frames are the non-reference b (layer 2), when the encoder marks them: half and
    // quarter then both drop just those.
    let transcoded = format!("rtsp://{}/live/t/low", d.rtsp_addr);
    let layered = RtspConn::connect(&d, Node::Client, d.rtsp_addr)
        .and_then(|mut c| c.request("DESCRIBE", &transcoded, &[]))
        .map(|r| r.status == 200)
        .unwrap_or(false);
    let tiered = if layered {
        transcoded
    } else {
        eprintln!("transcoded rendition refused: tiers checked on passthrough B frames");
        format!("rtsp://{}/live/b", d.rtsp_addr)
    };
    // ffmpeg's null muxer warns about the dts it guesses for B frames when a tier has
    // removed some of them: a muxer remark about timestamps, not a decode error.
    let decode_trouble = |t: Vec<String>| -> Vec<String> {
        t.into_iter()
            .filter(|l| !l.contains("non monotonically increasing dts to muxer"))
            .collect()
    };
    let count = |url: &str| {
        ffmpeg(
            &d,
            &[
                "-rtsp_transport",
                "tcp",
                "-t",
                "4",
                "-i",
                url,
                "-map",
                "0:v:0",
                "-fps_mode",
                "passthrough",
            ],
        )
    };
    let (full, full_trouble, full_err) = count(&tiered);
    let (half, half_trouble, half_err) = count(&format!("{tiered}?tier=half"));
    let (quarter, quarter_trouble, quarter_err) = count(&format!("{tiered}?tier=quarter"));
    let (full_trouble, half_trouble, quarter_trouble) = (
        decode_trouble(full_trouble),
        decode_trouble(half_trouble),
        decode_trouble(quarter_trouble),
    );
    eprintln!("tiers: full {full} frames, half {half}, quarter {quarter} (4 s each)");
    c.check(full > 20 && full_trouble.is_empty(), || {
        format!("full tier: {full} frames, trouble {full_trouble:?}\n{full_err}")
    });
    // Without the transcoded rendition only what the encoder marks can be dropped; a
    // passthrough channel whose frames all carry layer 0 keeps every frame in every tier.
    let (half_range, quarter_range) = if layered {
        (0.35..0.7, 0.15..0.4)
    } else {
        (0.3..1.05, 0.2..1.05)
    };
    let ratio = half as f64 / full.max(1) as f64;
    c.check(half_range.contains(&ratio) && half_trouble.is_empty(), || {
        format!("half tier: {half} frames vs {full} ({ratio:.2}), trouble {half_trouble:?}\n{half_err}")
    });
    let ratio = quarter as f64 / full.max(1) as f64;
    c.check(
        quarter_range.contains(&ratio) && quarter_trouble.is_empty(),
        || {
            format!(
                "quarter tier: {quarter} frames vs {full} ({ratio:.2}), trouble \
                 {quarter_trouble:?}\n{quarter_err}"
            )
        },
    );
    if !c.failures().is_empty() {
        eprintln!("capture kept at {}\n{}", file.display(), d.logs_report(40));
    }
    c.finish();
}
