//! Real sockets on 127.0.0.1, for every network transport.

use bytes::{Bytes, BytesMut};
use divisor_link::codec;
use divisor_link::handshake::{compute_mac, new_nonce};
use divisor_link::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

fn cfg(role: Role, key: &[u8], transport: TransportKind) -> LinkConfig {
    LinkConfig {
        key: key.to_vec(),
        role,
        transport,
    }
}

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

async fn pair(kind: TransportKind) -> (Link, Link) {
    let l = LinkListener::bind(&cfg(Role::Protocol, b"secret", kind), any_addr())
        .await
        .expect("bind");
    let ccfg = cfg(Role::Encoder, b"secret", kind);
    let (client, server) = tokio::join!(connect(&ccfg, l.local_addr()), l.accept());
    (client.expect("connect"), server.expect("accept"))
}

/// Message `i` of a deterministic mixed sequence: control messages, small, medium and
/// (every 500th) 1 MB frames.
fn mixed(i: u32, from: u8) -> Message {
    match i % 7 {
        0 => Message::Credits {
            channel: i,
            frames: i * 3,
        },
        1 => Message::Open {
            channel: i,
            asset: format!("asset-{i}-{from}.mp4"),
            rendition: String::new(),
        },
        2 => Message::Error {
            channel: i,
            code: ErrorCode::NotFound,
            message: "x".repeat((i % 50) as usize),
        },
        _ => {
            let len = if i % 500 == 3 {
                1 << 20
            } else if i % 50 == 4 {
                70_000 + i as usize
            } else {
                (i as usize * 37) % 2000
            };
            Message::Frame(Frame {
                channel: 1,
                track: from,
                codec: Codec::H264,
                flags: FrameFlags(i as u8),
                pts: i as i64 * 3000,
                dts: i as i64 * 3000 - 1,
                duration: 3000,
                data: Bytes::from(
                    (0..len)
                        .map(|j| (j as u32 ^ i) as u8 ^ from)
                        .collect::<Vec<u8>>(),
                ),
            })
        }
    }
}

async fn exchange(kind: TransportKind) {
    const N: u32 = 10_000;
    let (a, b) = pair(kind).await;
    let run = |link: Link, me: u8, peer: u8| async move {
        let Link {
            sender,
            mut receiver,
            ..
        } = link;
        let send = tokio::spawn(async move {
            for i in 0..N {
                sender.send(mixed(i, me)).await.expect("send");
            }
            sender
        });
        for i in 0..N {
            let got = receiver.recv().await.expect("recv");
            assert!(got == mixed(i, peer), "message {i} differs");
        }
        let sender = send.await.expect("sender task");
        (sender, receiver)
    };
    let (ra, rb) = tokio::time::timeout(T, async { tokio::join!(run(a, 1, 2), run(b, 2, 1)) })
        .await
        .expect("exchange in time");
    // Peer closes -> Closed.
    let (sa, mut rxa) = ra;
    drop(rb);
    let end = tokio::time::timeout(T, rxa.recv())
        .await
        .expect("close in time");
    assert!(matches!(end, Err(LinkError::Closed)), "{end:?}");
    drop(sa);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_ten_thousand_mixed_both_ways() {
    exchange(TransportKind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_ten_thousand_mixed_both_ways() {
    exchange(TransportKind::Uring).await;
}

#[tokio::test]
async fn mixed_transports_interoperate() {
    let l = LinkListener::bind(&cfg(Role::Protocol, b"k", TransportKind::Uring), any_addr())
        .await
        .expect("bind");
    let ccfg = cfg(Role::Encoder, b"k", TransportKind::Tcp);
    let (c, s) = tokio::join!(connect(&ccfg, l.local_addr()), l.accept());
    let (c, mut s) = (c.expect("connect"), s.expect("accept"));
    for i in 0..100 {
        c.sender.send(mixed(i, 1)).await.expect("send");
    }
    for i in 0..100 {
        assert_eq!(s.receiver.recv().await.expect("recv"), mixed(i, 1));
    }
}

async fn wrong_key(kind: TransportKind) {
    // Server side through `establish` on a raw listener, so both errors are visible.
    let raw = tokio::net::TcpListener::bind(any_addr())
        .await
        .expect("bind");
    let addr = raw.local_addr().expect("addr");
    let server = async {
        let (s, peer) = raw.accept().await.expect("accept");
        establish(&cfg(Role::Protocol, b"right", kind), s, peer.to_string()).await
    };
    let ccfg = cfg(Role::Encoder, b"wrong", kind);
    let (c, s) = tokio::join!(connect(&ccfg, addr), server);
    for r in [c.map(|_| ()), s.map(|_| ())] {
        let e = r.expect_err("must fail");
        let text = e.to_string();
        assert!(
            matches!(e, LinkError::AuthFailed | LinkError::PeerRejectedKey) && text.contains("key"),
            "unclear error: {text}"
        );
    }
    // And the listener keeps serving after rejecting a wrong key.
    let l = LinkListener::bind(&cfg(Role::Protocol, b"right", kind), any_addr())
        .await
        .expect("bind");
    let bad = connect(&cfg(Role::Encoder, b"wrong", kind), l.local_addr()).await;
    assert!(
        matches!(bad, Err(LinkError::AuthFailed | LinkError::PeerRejectedKey)),
        "{:?}",
        bad.err()
    );
    let ccfg = cfg(Role::Encoder, b"right", kind);
    let (good, acc) = tokio::join!(connect(&ccfg, l.local_addr()), l.accept());
    good.expect("good connect");
    acc.expect("good accept");
}

#[tokio::test]
async fn tcp_wrong_key() {
    wrong_key(TransportKind::Tcp).await;
}

#[tokio::test]
async fn uring_wrong_key() {
    wrong_key(TransportKind::Uring).await;
}

#[tokio::test]
async fn same_role_is_refused() {
    let l = LinkListener::bind(&cfg(Role::Encoder, b"k", TransportKind::Tcp), any_addr())
        .await
        .expect("bind");
    let r = connect(
        &cfg(Role::Encoder, b"k", TransportKind::Tcp),
        l.local_addr(),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(LinkError::SameRole(Role::Encoder) | LinkError::Peer { .. })
        ),
        "{:?}",
        r.err()
    );
}

/// Reads one message from a raw socket; `None` at EOF.
async fn read_msg(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Message> {
    loop {
        if let Some(m) = codec::decode_bytes(buf).expect("listener sends valid messages") {
            return Some(m);
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Reads until the peer's Error message (after its Hello), then expects EOF.
async fn expect_malformed_reply(s: &mut TcpStream) {
    let mut buf = BytesMut::new();
    let mut saw = false;
    while let Some(m) = tokio::time::timeout(T, read_msg(s, &mut buf))
        .await
        .expect("reply in time")
    {
        match m {
            Message::Hello { .. } => {}
            Message::Error {
                code: ErrorCode::Malformed,
                channel: 0,
                ..
            } => saw = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw, "no Error{{Malformed}} before close");
}

async fn bad_peers(kind: TransportKind) {
    let l = LinkListener::bind(&cfg(Role::Protocol, b"k", kind), any_addr())
        .await
        .expect("bind");
    let addr = l.local_addr();
    // A peer that stays silent must not block the others (handshakes run concurrently).
    let _silent = TcpStream::connect(addr).await.expect("connect");

    let mut frame = BytesMut::new();
    codec::encode(&mixed(3, 1), &mut frame).expect("encode");
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "garbage",
            b"\x00\x00\x00\x05\xde\xad\xbe\xef\x00".to_vec(),
            false,
        ),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
        ("1 GiB length prefix", vec![0x40, 0, 0, 0, 0, 1, 13], false),
        // Legal once authenticated, refused before: no megabytes for strangers.
        (
            "1 MiB length prefix before the handshake",
            vec![0, 0x10, 0, 0, 0, 1, 13],
            false,
        ),
        ("truncated frame", frame[..frame.len() / 2].to_vec(), true),
    ];
    for (name, bytes, half_close) in cases {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&bytes).await.expect("write");
        if half_close {
            s.shutdown().await.expect("shutdown");
        }
        eprintln!("case {name}");
        expect_malformed_reply(&mut s).await;
    }
    let ccfg = cfg(Role::Encoder, b"k", kind);
    let (good, acc) = tokio::join!(connect(&ccfg, addr), l.accept());
    let (good, mut acc) = (good.expect("good connect"), acc.expect("good accept"));
    good.sender
        .send(Message::Pause { channel: 5 })
        .await
        .expect("send");
    assert_eq!(
        acc.receiver.recv().await.expect("recv"),
        Message::Pause { channel: 5 }
    );
}

#[tokio::test]
async fn tcp_bad_peers_then_good_one() {
    bad_peers(TransportKind::Tcp).await;
}

#[tokio::test]
async fn uring_bad_peers_then_good_one() {
    bad_peers(TransportKind::Uring).await;
}

/// An authenticated peer that then sends garbage: the receiver gets a decode error.
async fn malformed_after_handshake(kind: TransportKind) {
    let key = b"k";
    let l = LinkListener::bind(&cfg(Role::Protocol, key, kind), any_addr())
        .await
        .expect("bind");
    let mut s = TcpStream::connect(l.local_addr()).await.expect("connect");
    let client = async {
        let nonce = new_nonce();
        let mut out = BytesMut::new();
        codec::encode(
            &Message::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Encoder,
                nonce,
            },
            &mut out,
        )
        .expect("encode");
        s.write_all(&out).await.expect("write");
        let mut buf = BytesMut::new();
        let Some(Message::Hello { nonce: theirs, .. }) = read_msg(&mut s, &mut buf).await else {
            panic!("no hello")
        };
        out.clear();
        let mac = compute_mac(key, Role::Encoder, &theirs, &nonce);
        codec::encode(&Message::Auth { mac }, &mut out).expect("encode");
        codec::encode(&Message::Pause { channel: 1 }, &mut out).expect("encode");
        s.write_all(&out).await.expect("write");
        let Some(Message::Auth { .. }) = read_msg(&mut s, &mut buf).await else {
            panic!("no auth")
        };
        // Authenticated both ways: now the garbage (an unknown message kind).
        let [v0, v1] = PROTOCOL_VERSION.to_be_bytes();
        s.write_all(&[0, 0, 0, 3, v0, v1, 200])
            .await
            .expect("write");
        (s, buf)
    };
    let (link, (mut s, mut buf)) = tokio::join!(l.accept(), client);
    let mut link = link.expect("accept");
    assert_eq!(
        link.receiver.recv().await.expect("first"),
        Message::Pause { channel: 1 }
    );
    let e = tokio::time::timeout(T, link.receiver.recv())
        .await
        .expect("in time");
    assert!(
        matches!(e, Err(LinkError::Decode(DecodeError::UnknownKind(200)))),
        "{e:?}"
    );
    assert!(matches!(link.receiver.recv().await, Err(LinkError::Closed)));
    // The peer is told, then the link is closed.
    let reply = tokio::time::timeout(T, read_msg(&mut s, &mut buf))
        .await
        .expect("in time");
    assert!(
        matches!(
            reply,
            Some(Message::Error {
                code: ErrorCode::Malformed,
                ..
            })
        ),
        "{reply:?}"
    );
    // Sending on the dead link fails instead of hanging.
    let r = tokio::time::timeout(T, async {
        loop {
            if link
                .sender
                .send(Message::Pause { channel: 1 })
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "send kept succeeding on a closed link");
}

#[tokio::test]
async fn tcp_malformed_after_handshake() {
    malformed_after_handshake(TransportKind::Tcp).await;
}

#[tokio::test]
async fn uring_malformed_after_handshake() {
    malformed_after_handshake(TransportKind::Uring).await;
}

#[tokio::test]
async fn backoff_waits_for_listener() {
    // Find a free port, then start listening on it only after a while.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let server = async {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let l = LinkListener::bind(&cfg(Role::Protocol, b"k", TransportKind::Tcp), addr)
            .await
            .expect("bind");
        l.accept().await.expect("accept")
    };
    let (c, _s) = tokio::time::timeout(T, async {
        let ccfg = cfg(Role::Encoder, b"k", TransportKind::Tcp);
        tokio::join!(connect_with_backoff(&ccfg, addr), server)
    })
    .await
    .expect("in time");
    drop(c);
}

#[tokio::test]
async fn oversized_message_is_refused_link_survives() {
    let (a, mut b) = pair(TransportKind::Tcp).await;
    let huge = Message::Frame(Frame {
        channel: 1,
        track: 0,
        codec: Codec::H264,
        flags: FrameFlags::empty(),
        pts: 0,
        dts: 0,
        duration: 0,
        data: Bytes::from(vec![0u8; codec::MAX_MESSAGE_SIZE]),
    });
    assert!(matches!(
        a.sender.send(huge).await,
        Err(LinkError::Encode(_))
    ));
    a.sender
        .send(Message::Resume { channel: 2 })
        .await
        .expect("send");
    assert_eq!(
        b.receiver.recv().await.expect("recv"),
        Message::Resume { channel: 2 }
    );
}

#[tokio::test]
async fn silent_peer_times_out() {
    let raw = tokio::net::TcpListener::bind(any_addr())
        .await
        .expect("bind");
    let addr = raw.local_addr().expect("addr");
    let _silent = TcpStream::connect(addr).await.expect("connect");
    let (s, peer) = raw.accept().await.expect("accept");
    let start = std::time::Instant::now();
    let r = establish(
        &cfg(Role::Protocol, b"k", TransportKind::Uring),
        s,
        peer.to_string(),
    )
    .await;
    assert!(
        matches!(r, Err(LinkError::HandshakeTimeout(_))),
        "{:?}",
        r.err()
    );
    assert!(start.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_secs(2));
}
