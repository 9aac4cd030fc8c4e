//! Bad children of a running reflector (the real driver on loopback links): a wrong key,
//! garbage bytes, a child that subscribes to 10,000 channels and one that never reads.
//! Each is refused or bounded, and a good child beside them keeps its frames flowing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use divisor_link::{
    Codec, Frame, FrameFlags, LinkConfig, LinkError, LinkListener, Message, Role, TrackInfo,
    TransportKind,
};
use divisor_reflector::driver::{DriverConfig, Reflector};
use divisor_reflector::relay::RelayConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &[u8] = b"bad children test key";

fn cfg(role: Role, key: &[u8]) -> LinkConfig {
    LinkConfig {
        key: key.to_vec(),
        role,
        transport: TransportKind::Tcp,
    }
}

fn video() -> TrackInfo {
    TrackInfo {
        track: 0,
        codec: Codec::H264,
        clock_rate: 90_000,
        width: 640,
        height: 360,
        sample_rate: 0,
        channels: 0,
        bitrate: 0,
        params: vec![],
    }
}

/// A parent that serves any channel it is asked for: 25 fps video, a keyframe a second,
/// 64 KB frames (so a child that never reads fills its link and socket buffers within seconds).
async fn parent() -> SocketAddr {
    let l = LinkListener::bind(&cfg(Role::Encoder, KEY), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let at = l.local_addr();
    tokio::spawn(async move {
        while let Ok(link) = l.accept().await {
            tokio::spawn(async move {
                let divisor_link::Link {
                    sender,
                    mut receiver,
                    ..
                } = link;
                let mut channels: Vec<u32> = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(40));
                let mut n: i64 = 0;
                loop {
                    tokio::select! {
                        m = receiver.recv() => match m {
                            Ok(Message::Subscribe { channel, .. }) => {
                                channels.push(channel);
                                let _ = sender.send(Message::Announce { channel, duration_ms: None, tracks: vec![video()] }).await;
                            }
                            Ok(Message::Close { channel }) => channels.retain(|c| *c != channel),
                            Ok(Message::Ping { seq }) => { let _ = sender.send(Message::Pong { seq }).await; }
                            Ok(_) => {}
                            Err(_) => return,
                        },
                        _ = tick.tick() => {
                            for &channel in &channels {
                                let f = Frame {
                                    channel,
                                    track: 0,
                                    codec: Codec::H264,
                                    flags: if n % 25 == 0 { FrameFlags::KEYFRAME } else { FrameFlags::empty() },
                                    pts: n * 3600,
                                    dts: n * 3600,
                                    duration: 3600,
                                    data: Bytes::from(vec![0u8; 64_000]),
                                };
                                if sender.send(Message::Frame(f)).await.is_err() {
                                    return;
                                }
                            }
                            n += 1;
                        }
                    }
                }
            });
        }
    });
    at
}

async fn subscribe(link: &divisor_link::Link, channel: u32, name: &str) {
    link.sender
        .send(Message::Subscribe {
            channel,
            name: name.into(),
            rendition: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_children_are_refused_or_bounded_and_a_good_one_is_untouched() {
    let up = parent().await;
    let node = Reflector::start(
        RelayConfig::new("r", vec![up.to_string()]),
        DriverConfig {
            link: cfg(Role::Encoder, KEY),
            child_queue: 128,
            child_stall: Duration::from_secs(3),
        },
    );
    let at = node.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The good child: frames all along, measured while the others misbehave.
    let mut good = divisor_link::connect(&cfg(Role::Protocol, KEY), at)
        .await
        .unwrap();
    subscribe(&good, 1, "cam").await;
    let watcher = tokio::spawn(async move {
        let start = Instant::now();
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        let mut frames = 0u64;
        let mut last_dts = i64::MIN;
        let mut out_of_order = 0u64;
        while start.elapsed() < Duration::from_secs(25) {
            match tokio::time::timeout(Duration::from_secs(2), good.receiver.recv()).await {
                Ok(Ok(Message::Frame(f))) => {
                    if frames > 0 {
                        worst = worst.max(last.elapsed());
                    }
                    if f.dts <= last_dts {
                        out_of_order += 1;
                    }
                    last_dts = f.dts;
                    last = Instant::now();
                    frames += 1;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("the good child's link ended: {e}"),
                Err(_) => panic!("the good child got nothing for 2 s"),
            }
        }
        (frames, worst, out_of_order)
    });

    // A wrong key: refused at the handshake.
    let e = divisor_link::connect(&cfg(Role::Protocol, b"not the key"), at)
        .await
        .err()
        .expect("a wrong key must be refused");
    assert!(
        matches!(e, LinkError::AuthFailed | LinkError::PeerRejectedKey),
        "wrong key: {e}"
    );

    // Garbage bytes: the connection is closed, nothing else happens.
    let mut raw = tokio::net::TcpStream::connect(at).await.unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = raw.write_all(&junk).await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a child sending garbage must be disconnected"
    );

    // 10,000 subscriptions: all but the per-child limit refused, each with an error.
    let mut greedy = divisor_link::connect(&cfg(Role::Protocol, KEY), at)
        .await
        .unwrap();
    for ch in 1..=10_000u32 {
        subscribe(&greedy, ch, &format!("c{ch}")).await;
    }
    // Each refusal is answered; a child that keeps asking without reading the answers
    // past its control bound is dropped instead. Either way it is bounded.
    let mut refused = 0;
    let mut dropped = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused < 10_000 - 256 && !dropped && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), greedy.receiver.recv()).await {
            Ok(Ok(Message::Error { message, .. })) => {
                assert!(message.contains("limit"), "{message}");
                refused += 1;
            }
            Ok(Err(_)) => dropped = true,
            _ => {}
        }
    }
    assert!(
        refused == 10_000 - 256 || (dropped && refused > 0),
        "{refused} refusals, dropped {dropped}: the greedy child was neither answered nor dropped"
    );
    let relayed = node.snapshot().channels.len();
    assert!(
        relayed <= 257,
        "{relayed} channels relayed: the limit did not bound upstream"
    );
    drop(greedy);

    // A child that never reads: skipped, then dropped; nobody else waits for it.
    let stuck = divisor_link::connect(&cfg(Role::Protocol, KEY), at)
        .await
        .unwrap();
    subscribe(&stuck, 1, "cam").await;
    // First see it subscribed (two children on "cam"), or the wait below could end at
    // once, in the moment after the greedy child left and before the stuck one joined.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.snapshot();
        let cam_children = s
            .channels
            .iter()
            .find(|c| c.channel == "cam")
            .map_or(0, |c| c.children);
        if cam_children == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck child's subscription never showed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let s = node.snapshot();
        // Only the good child left (the greedy one is gone, the stuck one dropped).
        if s.children.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child that never reads was not dropped: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cam = node
        .snapshot()
        .channels
        .into_iter()
        .find(|c| c.channel == "cam")
        .expect("cam still relayed for the good child");
    assert!(cam.counters.skips >= 1, "the stuck child was never skipped");
    drop(stuck);

    let (frames, worst, out_of_order) = watcher.await.unwrap();
    assert!(frames >= 500, "the good child got {frames} frames in 25 s");
    assert!(
        worst < Duration::from_millis(500),
        "the good child waited {worst:?} for a frame"
    );
    assert_eq!(out_of_order, 0);
}
