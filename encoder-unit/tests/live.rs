//! Live channels over an in-process link: subscribe, loop points, unknown names, stalled
//! and returning inputs, garbage on a UDP input.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::media;
use divisor_encoder::chains::ChainFactory;
use divisor_encoder::live::cli::parse_live;
use divisor_encoder::live::LiveRegistry;
use divisor_encoder::{serve_link_with, Catalog, Library, Services};
use divisor_link::{
    ChannelState, ErrorCode, Frame, FrameFlags, LinkReceiver, LinkSender, Message, TrackInfo,
};
use tokio::time::timeout;

/// A library holding `short.mp4`: the first 2 s of the common `av.mp4` (H.264 + AAC).
fn library() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
            .arg(media().root.join("av.mp4"))
            .args(["-t", "2", "-c", "copy"])
            .arg(root.join("short.mp4"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (dir, root)
    })
    .1
}

struct Peer {
    tx: LinkSender,
    rx: LinkReceiver,
    live: Arc<LiveRegistry>,
}

/// An encoder unit serving `channels` (`NAME=SOURCE` as on the command line).
fn start(channels: &[&str]) -> Peer {
    let library = Arc::new(Library::open(library()).unwrap());
    let chains = Arc::new(ChainFactory::passthrough());
    let live = Arc::new(LiveRegistry::new(library.clone(), chains.clone()));
    let configs: Vec<_> = channels.iter().map(|c| parse_live(c).unwrap()).collect();
    live.apply(&configs).unwrap();
    let services = Services {
        library,
        catalog: Arc::new(Catalog::new()),
        chains,
        live: live.clone(),
    };
    let (encoder_end, protocol_end) = divisor_link::mem_pair();
    tokio::spawn(serve_link_with(encoder_end, services));
    Peer {
        tx: protocol_end.sender,
        rx: protocol_end.receiver,
        live,
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.live.shutdown();
    }
}

impl Peer {
    async fn recv(&mut self, secs: u64) -> Message {
        timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .expect("message in time")
            .expect("link up")
    }

    async fn subscribe(&mut self, channel: u32, name: &str, rendition: &str) {
        self.tx
            .send(Message::Subscribe {
                channel,
                name: name.into(),
                rendition: rendition.into(),
            })
            .await
            .unwrap();
    }

    /// The Announce of `channel`, skipping Status messages before it.
    async fn announce(&mut self, channel: u32, secs: u64) -> Vec<TrackInfo> {
        loop {
            match self.recv(secs).await {
                Message::Announce {
                    channel: c,
                    duration_ms: None,
                    tracks,
                } if c == channel => return tracks,
                Message::Status { channel: c, .. } if c == channel => {}
                other => panic!("expected Announce of {channel}, got {other:?}"),
            }
        }
    }
}

fn is_video_key(f: &Frame) -> bool {
    f.codec.is_video() && f.flags.contains(FrameFlags::KEYFRAME)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looped_file_keeps_time_going_across_the_loop_point() {
    let mut p = start(&["loop=loop:short.mp4"]);
    p.subscribe(5, "loop", "").await;
    let tracks = p.announce(5, 10).await;
    assert_eq!(tracks.len(), 2);
    // 2 s file: 5 s of channel covers at least two loop points.
    let mut frames = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match p.recv(5).await {
            Message::Frame(f) => {
                assert_eq!(f.channel, 5);
                frames.push(f);
            }
            Message::Status {
                channel: 5,
                state: ChannelState::Live,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        is_video_key(&frames[0]),
        "starts at a keyframe: {:?}",
        frames[0].flags
    );
    for t in &tracks {
        let fs: Vec<&Frame> = frames.iter().filter(|f| f.track == t.track).collect();
        assert!(fs.len() > 50, "track {} has {} frames", t.track, fs.len());
        for w in fs.windows(2) {
            assert!(
                w[1].dts > w[0].dts,
                "track {}: dts {} then {}",
                t.track,
                w[0].dts,
                w[1].dts
            );
        }
        let loops = fs
            .iter()
            .filter(|f| f.flags.contains(FrameFlags::DISCONTINUITY))
            .count();
        assert!(
            loops >= 1,
            "track {}: no DISCONTINUITY at the loop point",
            t.track
        );
        // Time keeps up with the wall clock: ~5 s of media in ~5 s.
        let span = (fs.last().unwrap().dts - fs[0].dts) as f64 / f64::from(t.clock_rate);
        assert!(span > 3.0, "track {} spans only {span} s", t.track);
    }
    // At each loop point the first video frame is a keyframe.
    for f in frames
        .iter()
        .filter(|f| f.codec.is_video() && f.flags.contains(FrameFlags::DISCONTINUITY))
    {
        assert!(is_video_key(f));
    }
    // Close unsubscribes: nothing but in-flight frames afterwards.
    p.tx.send(Message::Close { channel: 5 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Ok(_)) = timeout(Duration::from_millis(10), p.rx.recv()).await {}
    assert!(
        timeout(Duration::from_millis(800), p.rx.recv())
            .await
            .is_err(),
        "frames after Close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channel_and_rendition_are_refused() {
    let mut p = start(&["one=loop:short.mp4", "two=loop:short.mp4"]);
    p.subscribe(1, "nope", "").await;
    match p.recv(5).await {
        Message::Error {
            channel: 1,
            code: ErrorCode::NotFound,
            message,
        } => assert!(
            message.contains("one") && message.contains("two"),
            "{message}"
        ),
        other => panic!("expected NotFound, got {other:?}"),
    }
    p.subscribe(2, "one", "4k").await;
    match p.recv(5).await {
        Message::Error {
            channel: 2,
            code: ErrorCode::NoSuchRendition,
            message,
        } => assert!(message.contains("4k"), "{message}"),
        other => panic!("expected NoSuchRendition, got {other:?}"),
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ffmpeg -re` sending `file` as MPEG-TS to 127.0.0.1:`port`, looping.
fn ts_sender(file: &Path, port: u16) -> Child {
    Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
        ])
        .arg(file)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(format!("udp://127.0.0.1:{port}?pkt_size=1316"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start ffmpeg")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Messages of `channel` until `pred` says stop, or panics after `secs`.
async fn until<F: FnMut(&Message) -> bool>(p: &mut Peer, secs: u64, mut pred: F) -> Vec<Message> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let m = match timeout(left, p.rx.recv()).await {
            Ok(Ok(m)) => m,
            _ => panic!(
                "condition not met within {secs} s; last messages: {:?}",
                tail(&seen)
            ),
        };
        let stop = pred(&m);
        seen.push(m);
        if stop {
            return seen;
        }
    }
}

fn tail(v: &[Message]) -> Vec<String> {
    v.iter()
        .rev()
        .take(5)
        .map(|m| match m {
            Message::Frame(f) => format!("Frame(track {} dts {})", f.track, f.dts),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_input_that_stops_is_stalled_then_live_again() {
    let port = free_udp_port();
    let mut p = start(&[&format!("cam=udp://127.0.0.1:{port}")]);
    p.subscribe(9, "cam", "").await;
    let sender = Kill(ts_sender(&library().join("short.mp4"), port));
    p.announce(9, 20).await;
    let seen = until(
        &mut p,
        20,
        |m| matches!(m, Message::Frame(f) if f.channel == 9),
    )
    .await;
    let first = seen.iter().find_map(|m| match m {
        Message::Frame(f) => Some(f.clone()),
        _ => None,
    });
    assert!(is_video_key(&first.unwrap()), "first frame is a keyframe");
    // Some seconds of frames, then the sender stops.
    until(
        &mut p,
        10,
        |m| matches!(m, Message::Frame(f) if f.dts > 2 * 90_000 && f.track == 0),
    )
    .await;
    drop(sender);
    let stalled_at = Instant::now();
    until(&mut p, 15, |m| {
        matches!(
            m,
            Message::Status {
                channel: 9,
                state: ChannelState::Stalled,
                ..
            }
        )
    })
    .await;
    let waited = stalled_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "stalled too early: {waited:?}"
    );
    // The sender comes back: Live, then frames resuming at a keyframe with DISCONTINUITY.
    let last_dts = 0;
    let _sender = Kill(ts_sender(&library().join("short.mp4"), port));
    until(&mut p, 20, |m| {
        matches!(
            m,
            Message::Status {
                channel: 9,
                state: ChannelState::Live,
                ..
            }
        )
    })
    .await;
    let seen = until(
        &mut p,
        10,
        |m| matches!(m, Message::Frame(f) if f.track == 0),
    )
    .await;
    let f = seen
        .iter()
        .find_map(|m| match m {
            Message::Frame(f) if f.track == 0 => Some(f),
            _ => None,
        })
        .unwrap();
    assert!(is_video_key(f), "resumes at a keyframe");
    assert!(
        f.flags.contains(FrameFlags::DISCONTINUITY),
        "resume is flagged"
    );
    assert!(f.dts > last_dts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_udp_input_disturbs_nothing() {
    let port = free_udp_port();
    let mut p = start(&[
        &format!("junk=udp://127.0.0.1:{port}"),
        "steady=loop:short.mp4",
    ]);
    p.subscribe(1, "steady", "").await;
    p.subscribe(2, "junk", "").await;
    // Three seconds of random datagrams at the junk input while "steady" plays.
    let garbage = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut x: u32 = 0x1234_5678;
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let mut buf = [0u8; 1316];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            // Now and then a TS sync byte, to tempt the demuxer.
            buf[0] = 0x47;
            let _ = sock.send_to(&buf, ("127.0.0.1", port));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut steady_video = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        match p.recv(5).await {
            Message::Frame(f) if f.channel == 1 => {
                if f.track == 0 {
                    steady_video.push((f.dts, f.flags.contains(FrameFlags::DISCONTINUITY)));
                }
            }
            Message::Frame(f) => panic!("frame from the junk input: {f:?}"),
            Message::Status {
                channel: 2, state, ..
            } => {
                assert_ne!(state, ChannelState::Ended)
            }
            Message::Announce { .. } | Message::Status { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    garbage.join().unwrap();
    assert!(
        steady_video.len() > 50,
        "steady channel played {} frames",
        steady_video.len()
    );
    // No gap in the steady channel: consecutive video frames 1/25 s apart (except at
    // the loop point, where the file's audio may outlast its video).
    for w in steady_video.windows(2) {
        assert!(
            w[1].1 || w[1].0 - w[0].0 <= 3600 * 2,
            "gap in the steady channel: {w:?}"
        );
    }
    // The junk channel is still alive: a real sender makes it play.
    let _sender = Kill(ts_sender(&library().join("short.mp4"), port));
    until(
        &mut p,
        20,
        |m| matches!(m, Message::Frame(f) if f.channel == 2),
    )
    .await;
}

/// Two consecutive free UDP ports, the first even (RTP, then RTCP).
fn free_rtp_port() -> u16 {
    loop {
        let p = free_udp_port() & !1;
        if p > 1024
            && UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_inputs_with_the_default_sdp_and_with_an_sdp_file() {
    let (video_only, v, a) = (free_rtp_port(), free_rtp_port(), free_rtp_port());
    let dir = tempfile::tempdir().unwrap();
    let sdp = dir.path().join("in.sdp");
    let mut p = start(&[
        &format!("plain=rtp://127.0.0.1:{video_only}"),
        &format!("av=rtp://127.0.0.1:{v},sdp={}", sdp.display()),
    ]);
    // Default SDP: H.264 in PT 96, SPS/PPS in band (libx264 repeats them at keyframes).
    let _plain = Kill(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg("testsrc=size=320x240:rate=25")
            .args([
                "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-pix_fmt", "yuv420p",
            ])
            .args(["-payload_type", "96", "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{video_only}"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // An SDP file from the sender: H.264 and AAC copied from a file, one RTP output each.
    let _av = Kill(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
            ])
            .arg(library().join("short.mp4"))
            .args(["-map", "0:v", "-c", "copy", "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{v}"))
            .args(["-map", "0:a", "-c", "copy", "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{a}"))
            .arg("-sdp_file")
            .arg(&sdp)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    p.subscribe(1, "plain", "").await;
    let tracks = p.announce(1, 30).await;
    assert_eq!(tracks.len(), 1);
    assert_eq!((tracks[0].width, tracks[0].height), (320, 240));
    until(
        &mut p,
        20,
        |m| matches!(m, Message::Frame(f) if f.channel == 1),
    )
    .await;
    p.tx.send(Message::Close { channel: 1 }).await.unwrap();

    p.subscribe(2, "av", "").await;
    let tracks = loop {
        if let Message::Announce {
            channel: 2, tracks, ..
        } = p.recv(30).await
        {
            break tracks;
        }
    };
    let codecs: Vec<_> = tracks.iter().map(|t| t.codec).collect();
    assert_eq!(
        codecs,
        vec![divisor_link::Codec::H264, divisor_link::Codec::Aac]
    );
    let mut seen = [0u32; 2];
    until(&mut p, 20, |m| {
        if let Message::Frame(f) = m {
            if f.channel == 2 {
                seen[usize::from(f.track)] += 1;
            }
        }
        seen[0] > 25 && seen[1] > 25
    })
    .await;
}

/// An encoder unit with a ladder rung "small" (160x120 H.264) offered for VoD and for
/// the live channel "ladder" (the 2 s file looped).
fn start_with_ladder() -> Peer {
    let config = divisor_encoder::config::Config::parse(
        r#"
        [[rendition]]
        name = "small"
        width = 160
        height = 120
        bitrate_kbps = 200
        [[channel]]
        name = "ladder"
        source = "loop:short.mp4"
        renditions = ["small"]
        [vod]
        renditions = ["small"]
        "#,
    )
    .unwrap();
    let library = Arc::new(Library::open(library()).unwrap());
    let chains = Arc::new(ChainFactory::new(config.clone(), 2));
    let live = Arc::new(LiveRegistry::new(library.clone(), chains.clone()));
    live.apply(&config.channels).unwrap();
    let services = Services {
        library,
        catalog: Arc::new(Catalog::new()),
        chains,
        live: live.clone(),
    };
    let (encoder_end, protocol_end) = divisor_link::mem_pair();
    tokio::spawn(serve_link_with(encoder_end, services));
    Peer {
        tx: protocol_end.sender,
        rx: protocol_end.receiver,
        live,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renditions_for_live_and_vod() {
    let mut p = start_with_ladder();
    // Live rendition: "" is the channel's first rendition, transcoded to 160x120.
    p.subscribe(1, "ladder", "").await;
    let tracks = p.announce(1, 20).await;
    assert_eq!((tracks[0].width, tracks[0].height), (160, 120));
    let mut video = 0;
    let seen = until(&mut p, 20, |m| {
        if matches!(m, Message::Frame(f) if f.channel == 1 && f.track == 0) {
            video += 1;
        }
        video >= 30
    })
    .await;
    let first = seen
        .iter()
        .find_map(|m| match m {
            Message::Frame(f) if f.channel == 1 => Some(f),
            _ => None,
        })
        .unwrap();
    assert!(
        is_video_key(first),
        "transcoded rendition starts at a keyframe"
    );
    p.tx.send(Message::Close { channel: 1 }).await.unwrap();

    // VoD in a rendition: the announce says 160x120, and a rung not offered is refused.
    p.tx.send(Message::Open {
        channel: 3,
        asset: "short.mp4".into(),
        rendition: "small".into(),
    })
    .await
    .unwrap();
    let tracks = loop {
        if let Message::Announce {
            channel: 3,
            duration_ms: Some(_),
            tracks,
        } = p.recv(20).await
        {
            break tracks;
        }
    };
    assert_eq!((tracks[0].width, tracks[0].height), (160, 120));
    p.tx.send(Message::Credits {
        channel: 3,
        frames: 10_000,
    })
    .await
    .unwrap();
    p.tx.send(Message::Resume { channel: 3 }).await.unwrap();
    let mut ended = 0;
    let mut vod_video = 0;
    until(&mut p, 60, |m| {
        if let Message::Frame(f) = m {
            if f.channel == 3 {
                if f.flags.contains(FrameFlags::END_OF_STREAM) {
                    ended += 1;
                } else if f.track == 0 {
                    vod_video += 1;
                }
            }
        }
        ended == 2
    })
    .await;
    let source_frames = common::ffprobe_video_frames(&library().join("short.mp4"));
    assert_eq!(
        vod_video, source_frames,
        "every frame transcoded and flushed"
    );
    p.tx.send(Message::Open {
        channel: 4,
        asset: "short.mp4".into(),
        rendition: "4k".into(),
    })
    .await
    .unwrap();
    until(&mut p, 10, |m| {
        matches!(
            m,
            Message::Error {
                channel: 4,
                code: ErrorCode::NoSuchRendition,
                ..
            }
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_source_channel_plays() {
    let mut p = start(&["pattern=testsrc"]);
    let t0 = Instant::now();
    p.subscribe(2, "pattern", "").await;
    let tracks = p.announce(2, 20).await;
    assert_eq!(tracks[0].codec, divisor_link::Codec::H264);
    let mut last = None;
    let mut first_at = None;
    let mut n = 0;
    until(&mut p, 60, |m| {
        if let Message::Frame(f) = m {
            if f.channel == 2 && f.track == 0 {
                first_at.get_or_insert(t0.elapsed());
                if let Some(l) = last {
                    assert!(f.dts > l);
                }
                last = Some(f.dts);
                n += 1;
            }
        }
        n >= 25
    })
    .await;
    eprintln!(
        "first frame after {first_at:?}, 25 frames after {:?}",
        t0.elapsed()
    );
}
