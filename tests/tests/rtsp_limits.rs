//! Limits against abuse on the RTSP port, with ffmpeg playing beside the abuser:
//! a client that trickles a request (slowloris) is answered 408 and closed after the
//! request time limit, and an address over `--max-connections-per-ip` is answered 503.
//! Both are counted in `/metrics`, and the honest viewer plays every frame.

use divisor_tests::deploy::{Kind, Options};
use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::{control, Checks, Deployment, LinkTransport, Node, RtpTransport};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const HTTP_PORT: u16 = 9100;

/// Everything the server sends until it closes (or `within` passes).
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[test]
fn slow_requests_and_connection_floods_are_refused_while_a_viewer_plays() {
    let d = Deployment::start_with(
        "rtsp-limits",
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec![],
            protocol_args: vec![
                "--max-connections-per-ip".into(),
                "4".into(),
                "--http-listen".into(),
                format!("0.0.0.0:{HTTP_PORT}").into(),
            ],
        },
    )
    .expect("deployment starts");
    let clip = media::asset(CLIP_MP4).unwrap();
    let mut c = Checks::new();
    let started = Instant::now();

    std::thread::scope(|s| {
        // The honest viewer, over TCP: one connection of the four allowed.
        let viewer = s.spawn(|| {
            d.ffmpeg_decode(
                &d.url(CLIP_MP4),
                RtpTransport::Tcp,
                &[],
                Duration::from_secs_f64(clip.duration + 30.0),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        // Slowloris: half a request, then nothing.
        let mut slow = d
            .connect(Node::Client, d.rtsp_addr, Duration::from_secs(5))
            .expect("connects");
        slow.write_all(b"DESCRIBE rtsp://x/vod/clip.mp4 RTSP/1.0\r\nCSeq: 1\r\n")
            .unwrap();
        // Two more idle connections fill this address's share (viewer + slow + 2 = 4).
        let _idle: Vec<TcpStream> = (0..2)
            .map(|_| {
                d.connect(Node::Client, d.rtsp_addr, Duration::from_secs(5))
                    .expect("connects")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut fifth = d
            .connect(Node::Client, d.rtsp_addr, Duration::from_secs(5))
            .expect("the kernel accepts");
        let (answer, closed) = read_until_closed(&mut fifth, Duration::from_secs(5));
        c.check(answer.starts_with("RTSP/1.0 503") && closed, || {
            format!("a fifth connection from one address: closed {closed}, {answer:?}")
        });
        let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(20));
        c.check(answer.starts_with("RTSP/1.0 408") && closed, || {
            format!("the trickled request: closed {closed}, {answer:?}")
        });
        match viewer.join().unwrap() {
            Ok(r) => {
                c.check(r.out.success() && r.frames == clip.video_frames, || {
                    format!(
                        "the viewer beside them: {} of {} frames: {}",
                        r.frames,
                        clip.video_frames,
                        r.report()
                    )
                });
            }
            Err(e) => {
                c.check(false, || format!("the viewer did not run: {e:#}"));
            }
        }
    });
    eprintln!("took {:?}", started.elapsed());
    let base = format!("http://{}:{HTTP_PORT}", d.rtsp_addr.ip());
    let (_, metrics) = control::http(&d, "GET", &format!("{base}/metrics"), None, None).unwrap();
    for reason in ["connections_per_ip", "request_timeout"] {
        let line = format!("divisor_rtsp_limit_refusals_total{{reason=\"{reason}\"}} 1");
        c.check(metrics.contains(&line), || {
            format!("no `{line}` in /metrics")
        });
    }
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(30));
    }
    c.finish();
}
