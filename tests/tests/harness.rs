//! Checks of the test harness itself (namespaces, process control, timeouts, media), so a
//! failing product test can be trusted to be about the product.

use divisor_tests::media::{self, BFRAMES_MP4, CLIP_MKV, CLIP_MP4, CLIP_TS, LONG_MP4};
use divisor_tests::{cmd, Node, Topology};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn topology_links_namespaces_and_cleans_up() {
    let names;
    {
        let t = Topology::new("harness-topology").unwrap();
        names = [t.enc_ns.clone(), t.proto_ns.clone(), t.client_ns.clone()];
        // Protocol ns reaches both neighbours; client cannot reach the encoder.
        let ping = |node, ip: std::net::Ipv4Addr| {
            t.run_in(
                node,
                "ping",
                ["-c", "1", "-W", "1", &ip.to_string()],
                Duration::from_secs(5),
            )
            .unwrap()
            .success()
        };
        assert!(ping(Node::Protocol, t.enc_ip));
        assert!(ping(Node::Protocol, t.client_ip));
        assert!(ping(Node::Client, t.rtsp_ip));
        assert!(
            !ping(Node::Client, t.enc_ip),
            "client must not reach the encoder"
        );

        // A server in one ns, reached from a socket opened in another.
        t.spawn_in(
            Node::Protocol,
            "http",
            "python3",
            ["-m", "http.server", "--bind", "0.0.0.0", "8080"],
        )
        .unwrap();
        let addr = SocketAddr::from((t.rtsp_ip, 8080));
        t.wait_listening(Node::Protocol, 8080, Duration::from_secs(10))
            .unwrap();
        t.wait_tcp(Node::Client, addr, Duration::from_secs(10))
            .unwrap();
        let mut s = t
            .connect(Node::Client, addr, Duration::from_secs(2))
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
        assert!(t.is_running("http"));
        t.check_alive().unwrap();
        t.stop("http");
        assert!(!t.is_running("http"));
        assert!(t.log("http").contains("GET /"), "{}", t.log("http"));
    }
    for n in names {
        assert!(
            !std::path::Path::new("/run/netns").join(&n).exists(),
            "namespace {n} left behind"
        );
    }
}

#[test]
fn commands_time_out_and_are_killed() {
    let start = Instant::now();
    let out = cmd::run(
        Command::new("sh").args(["-c", "sleep 30 & sleep 30; echo never"]),
        Duration::from_millis(500),
    )
    .unwrap();
    assert!(out.timed_out);
    assert!(!out.success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let ok = cmd::run(
        Command::new("sh").args(["-c", "echo hi; echo oops >&2; exit 3"]),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(ok.code(), Some(3));
    assert_eq!(ok.stdout.trim(), "hi");
    assert_eq!(ok.stderr.trim(), "oops");
}

#[test]
fn test_media_is_what_the_tests_assume() {
    for name in [CLIP_MP4, BFRAMES_MP4, CLIP_MKV, CLIP_TS] {
        let a = media::asset(name).unwrap();
        assert_eq!(a.video_codec, "h264", "{name}");
        assert_eq!((a.width, a.height), (640, 360), "{name}");
        assert!((a.duration - 4.0).abs() < 0.1, "{name}: {}", a.duration);
        assert_eq!(a.video_frames, 100, "{name}");
        assert_eq!(a.keyframe_times.len(), 2, "{name}: {:?}", a.keyframe_times);
    }
    assert_eq!(media::asset(CLIP_MKV).unwrap().audio_codec, "opus");
    assert_eq!(media::asset(CLIP_MP4).unwrap().audio_codec, "aac");
    let long = media::asset(LONG_MP4).unwrap();
    assert_eq!(long.video_frames, 250);
    assert_eq!(long.keyframe_at_or_before(5.0), 4.0);
    assert_eq!(long.frames_from(4.0), 150);
    assert!(media::asset_path(media::NOT_MEDIA).unwrap().is_file());
}
