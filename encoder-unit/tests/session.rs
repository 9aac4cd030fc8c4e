//! The encoder side of the link conversation, over an in-process link.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ffprobe_video_frames, media};
use divisor_encoder::{serve_link, Catalog, Library};
use divisor_link::{ErrorCode, Frame, FrameFlags, LinkReceiver, LinkSender, Message};
use tokio::time::timeout;

struct Peer {
    tx: LinkSender,
    rx: LinkReceiver,
    server: tokio::task::JoinHandle<Result<(), divisor_encoder::SessionError>>,
}

fn start() -> Peer {
    let library = Arc::new(Library::open(&media().root).unwrap());
    let catalog = Arc::new(Catalog::new());
    let (encoder_end, protocol_end) = divisor_link::mem_pair();
    let server = tokio::spawn(serve_link(encoder_end, library, catalog));
    Peer {
        tx: protocol_end.sender,
        rx: protocol_end.receiver,
        server,
    }
}

impl Peer {
    async fn send(&self, m: Message) {
        self.tx.send(m).await.expect("send");
    }
    async fn recv(&mut self) -> Message {
        timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("message in time")
            .expect("link up")
    }
    /// Nothing arrives for a while.
    async fn quiet(&mut self, ms: u64) -> bool {
        timeout(Duration::from_millis(ms), self.rx.recv())
            .await
            .is_err()
    }
    async fn open(&mut self, channel: u32, asset: &str) -> Message {
        self.send(Message::Open {
            channel,
            asset: asset.into(),
            rendition: String::new(),
        })
        .await;
        self.recv().await
    }
    /// Frames until every track sent END_OF_STREAM; grants a credit per frame.
    async fn frames_to_end(&mut self, channel: u32, tracks: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut ended = 0;
        while ended < tracks {
            match self.recv().await {
                Message::Frame(f) => {
                    assert_eq!(f.channel, channel);
                    if f.flags.contains(FrameFlags::END_OF_STREAM) {
                        assert!(f.data.is_empty());
                        ended += 1;
                    } else {
                        self.send(Message::Credits { channel, frames: 1 }).await;
                        out.push(f);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_resume_all_frames_then_seek() {
    let mut p = start();
    let tracks = match p.open(7, "av.mp4").await {
        Message::Announce {
            channel: 7,
            duration_ms,
            tracks,
        } => {
            assert!(duration_ms.unwrap() >= 5900);
            tracks
        }
        other => panic!("expected Announce, got {other:?}"),
    };
    assert_eq!(tracks.len(), 2);
    // Opened channels are paused: credits alone start nothing.
    p.send(Message::Credits {
        channel: 7,
        frames: 10,
    })
    .await;
    assert!(p.quiet(300).await, "paused after Open");
    p.send(Message::Resume { channel: 7 }).await;
    let frames = p.frames_to_end(7, 2).await;
    let video = frames.iter().filter(|f| f.track == 0).count() as u64;
    assert_eq!(video, ffprobe_video_frames(&media().root.join("av.mp4")));
    assert_eq!(frames[0].pts, 0);
    assert!(frames
        .iter()
        .all(|f| !f.flags.contains(FrameFlags::DISCONTINUITY)));

    // The channel stays open after EOS: seek mid-way.
    p.send(Message::Seek {
        channel: 7,
        request: 3,
        position_ms: 3300,
    })
    .await;
    let start = match p.recv().await {
        Message::SeekDone {
            channel: 7,
            request: 3,
            position_ms,
        } => position_ms,
        other => panic!("expected SeekDone, got {other:?}"),
    };
    assert!((2000..=3300).contains(&start), "{start}");
    let after = p.frames_to_end(7, 2).await;
    let first_video = after.iter().find(|f| f.track == 0).unwrap();
    assert!(first_video
        .flags
        .contains(FrameFlags::KEYFRAME | FrameFlags::DISCONTINUITY));
    assert_eq!(first_video.pts * 1000 / 90000, start as i64);
    let first_audio = after.iter().find(|f| f.track == 1).unwrap();
    assert!(first_audio.flags.contains(FrameFlags::DISCONTINUITY));
    assert_eq!(
        after
            .iter()
            .filter(|f| f.flags.contains(FrameFlags::DISCONTINUITY))
            .count(),
        2
    );
    assert!(after.len() < frames.len());

    p.send(Message::Close { channel: 7 }).await;
    // Closed: now unknown.
    p.send(Message::Resume { channel: 7 }).await;
    match p.recv().await {
        Message::Error {
            channel: 7,
            code: ErrorCode::BadRequest,
            ..
        } => {}
        other => panic!("expected BadRequest, got {other:?}"),
    }
    drop(p.tx);
    drop(p.rx);
    timeout(Duration::from_secs(5), p.server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_bound_the_run_ahead_and_pause_stops() {
    let mut p = start();
    assert!(matches!(p.open(1, "av.ts").await, Message::Announce { .. }));
    p.send(Message::Credits {
        channel: 1,
        frames: 5,
    })
    .await;
    p.send(Message::Seek {
        channel: 1,
        request: 1,
        position_ms: 0,
    })
    .await;
    // MPEG-TS: video starts 23 ms after the (primed) audio.
    assert!(matches!(
        p.recv().await,
        Message::SeekDone {
            channel: 1,
            request: 1,
            position_ms: 0..=100
        }
    ));
    for _ in 0..5 {
        assert!(matches!(p.recv().await, Message::Frame(_)));
    }
    assert!(p.quiet(300).await, "no credit, no frame");
    p.send(Message::Pause { channel: 1 }).await;
    p.send(Message::Credits {
        channel: 1,
        frames: 3,
    })
    .await;
    assert!(p.quiet(300).await, "paused");
    p.send(Message::Resume { channel: 1 }).await;
    for _ in 0..3 {
        assert!(matches!(p.recv().await, Message::Frame(_)));
    }
    assert!(p.quiet(300).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_and_do_not_disturb_others() {
    let mut p = start();
    assert!(matches!(
        p.open(1, "av.mkv").await,
        Message::Announce { channel: 1, .. }
    ));
    let cases = [
        (2, "missing.mp4", ErrorCode::NotFound),
        (3, "../x", ErrorCode::Forbidden),
        (4, "/etc/passwd", ErrorCode::Forbidden),
        (5, "notes.txt", ErrorCode::UnsupportedMedia),
        (6, "old.avi", ErrorCode::UnsupportedMedia),
    ];
    for (channel, asset, want) in cases {
        match p.open(channel, asset).await {
            Message::Error {
                channel: c,
                code,
                message,
            } => {
                assert_eq!((c, code), (channel, want), "{asset}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{asset}: expected Error, got {other:?}"),
        }
    }
    // Unknown channel.
    p.send(Message::Seek {
        channel: 99,
        request: 1,
        position_ms: 0,
    })
    .await;
    assert!(matches!(
        p.recv().await,
        Message::Error {
            channel: 99,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    // Channel already open.
    assert!(matches!(
        p.open(1, "av.mp4").await,
        Message::Error {
            channel: 1,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    // The good channel still works.
    p.send(Message::Credits {
        channel: 1,
        frames: 2,
    })
    .await;
    p.send(Message::Resume { channel: 1 }).await;
    for _ in 0..2 {
        assert!(matches!(
            p.recv().await,
            Message::Frame(Frame { channel: 1, .. })
        ));
    }
}
