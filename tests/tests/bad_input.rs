//! Bad input from every side — a protocol unit with the wrong link key, garbage on the
//! link port, malformed and hostile RTSP requests — while clients keep playing. Each bad
//! peer gets a clean refusal; the clients already playing must not notice anything.

use divisor_tests::deploy::{os_args, ENCODER, LINK_PORT};
use divisor_tests::media::{self, CLIP_MP4, LONG_MP4, NOT_MEDIA};
use divisor_tests::rtsp::Response;
use divisor_tests::{bin, Checks, Decode, Deployment, LinkTransport, Node, RtpTransport, RtspConn};
use std::io::Write;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

/// Sends `raw` on a fresh connection and reads one reply.
fn raw_request(d: &Deployment, addr: SocketAddr, raw: Vec<u8>) -> anyhow::Result<Response> {
    let mut conn = RtspConn::connect(d, Node::Client, addr)?;
    // Written from another thread: a server may answer (and close) before reading it all.
    let mut stream = conn.try_clone_stream()?;
    let writer = thread::spawn(move || {
        let _ = stream.write_all(&raw);
    });
    let r = conn.read_response(Duration::from_secs(10));
    let _ = writer.join();
    r
}

/// Checks a reply to a bad request: one of `statuses`, and the CSeq echoed.
fn expect(c: &mut Checks, what: &str, r: anyhow::Result<Response>, statuses: &[u16], cseq: &str) {
    let Some(r) = c.ok(what, r) else { return };
    c.check(statuses.contains(&r.status), || {
        format!(
            "{what}: got {:?}, expected one of {statuses:?}",
            r.status_line
        )
    });
    c.check(r.header("CSeq") == Some(cseq), || {
        format!(
            "{what}: CSeq {:?} in reply, request had {cseq}: {r:?}",
            r.header("CSeq")
        )
    });
}

/// Where a unit's output stands: (stderr bytes, stdout bytes).
type Mark = (usize, usize);

fn mark(d: &Deployment, name: &str) -> Mark {
    (d.log(name).len(), d.stdout_of(name).len())
}

/// New output of unit `name` since `from`. Logs belong on stderr (`cli.rs` checks that);
/// here stdout counts too, so this test is about *what* is logged.
fn log_since(d: &Deployment, name: &str, from: Mark) -> String {
    let (err, out) = (d.log(name), d.stdout_of(name));
    format!(
        "{}{}",
        err.get(from.0..).unwrap_or_default(),
        out.get(from.1..).unwrap_or_default()
    )
}

/// Whether some line of `text` mentions every one of `words` (case-insensitive).
fn line_with(text: &str, words: &[&str]) -> bool {
    text.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        words.iter().all(|w| l.contains(w))
    })
}

/// Waits up to `timeout` for `cond`.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn wrong_link_key(c: &mut Checks, d: &Deployment) {
    let enc_log_start = mark(d, ENCODER);
    let bad_key = d.log_dir.join("wrong.key");
    std::fs::write(&bad_key, "definitely-not-the-right-key\n").unwrap();
    let port = 8555;
    d.spawn_in(
        Node::Protocol,
        "protocol-wrong-key",
        bin("divisor-protocol").unwrap(),
        os_args([
            "--link-connect".as_ref(),
            d.link_addr.to_string().as_ref(),
            "--link-key-file".as_ref(),
            bad_key.as_os_str(),
            "--rtsp-listen".as_ref(),
            format!("0.0.0.0:{port}").as_ref(),
        ]),
    )
    .unwrap();
    let addr = SocketAddr::from((d.rtsp_ip, port));
    let listening = eventually(Duration::from_secs(10), || {
        d.connect(Node::Client, addr, Duration::from_millis(300))
            .is_ok()
    });
    if !c.check(listening, || {
        format!("protocol unit with a wrong key never listened on RTSP {addr}")
    }) {
        return;
    }
    let key_error = |text: &str| line_with(text, &["link", "key"]);
    c.check(
        eventually(Duration::from_secs(10), || {
            key_error(&log_since(d, "protocol-wrong-key", (0, 0)))
        }),
        || {
            format!(
                "protocol unit with a wrong key logged no link key error:\n{}",
                log_since(d, "protocol-wrong-key", (0, 0))
            )
        },
    );
    c.check(
        eventually(Duration::from_secs(5), || {
            key_error(&log_since(d, ENCODER, enc_log_start))
        }),
        || {
            format!(
                "encoder logged no link key error for the wrong-key peer:\n{}",
                log_since(d, ENCODER, enc_log_start)
            )
        },
    );
    // Its clients are refused with 503, now and after any retry.
    for attempt in 0..2 {
        let r = RtspConn::connect(d, Node::Client, addr).and_then(|mut conn| {
            conn.request("DESCRIBE", &format!("rtsp://{addr}/vod/{CLIP_MP4}"), &[])
        });
        let what = format!("DESCRIBE via the wrong-key protocol unit (attempt {attempt})");
        if let Some(r) = c.ok(&what, r) {
            c.check(r.status == 503, || {
                format!("{what}: {:?}, expected 503", r.status_line)
            });
        }
        thread::sleep(Duration::from_secs(1));
    }
    d.stop("protocol-wrong-key");
}

fn garbage_on_link(c: &mut Checks, d: &Deployment) {
    let enc_log_start = mark(d, ENCODER);
    let link = SocketAddr::from((d.enc_ip, LINK_PORT));
    // Three hostile peers: random bytes; a truncated message (length prefix says 100
    // bytes, version 2, kind HELLO, then only 8 bytes and EOF); an absurd length prefix.
    let mut random = vec![0u8; 4096];
    let mut x: u32 = 0x1234_5678;
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut truncated = vec![0, 0, 0, 100, 0, 2, 1];
    truncated.extend_from_slice(&[7u8; 8]);
    let huge = vec![0xff, 0xff, 0xff, 0xf0, 0, 2, 13, 1, 2, 3];
    for (name, bytes) in [
        ("random bytes", random),
        ("truncated", truncated),
        ("huge length", huge),
    ] {
        match d.connect(Node::Protocol, link, Duration::from_secs(2)) {
            Ok(mut s) => {
                let _ = s.write_all(&bytes);
                let _ = s.shutdown(std::net::Shutdown::Write);
                thread::sleep(Duration::from_millis(300));
            }
            Err(e) => {
                c.check(false, || {
                    format!("connecting to the link port for {name}: {e:#}")
                });
            }
        }
    }
    let logged = eventually(Duration::from_secs(5), || {
        let new = log_since(d, ENCODER, enc_log_start);
        new.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("link") && (l.contains("warn") || l.contains("error"))
        })
    });
    c.check(logged, || {
        format!(
            "encoder logged no link error (a WARN/ERROR line mentioning the link) for garbage \
             on its link port:\n{}",
            log_since(d, ENCODER, enc_log_start)
        )
    });
    c.check(d.is_running(ENCODER), || {
        "encoder died after garbage on its link port".into()
    });
}

fn bad_rtsp(c: &mut Checks, d: &Deployment) {
    let addr = d.rtsp_addr;
    let host = format!("rtsp://{addr}");
    let clip = d.url(CLIP_MP4);
    let req = |line: &str, cseq: u32, extra: &str| -> Vec<u8> {
        format!("{line}\r\nCSeq: {cseq}\r\n{extra}\r\n").into_bytes()
    };

    let r = raw_request(d, addr, req("THIS IS NOT RTSP", 11, ""));
    expect(c, "garbage request line", r, &[400], "11");

    let r = raw_request(
        d,
        addr,
        req(
            &format!("OPTIONS {clip} RTSP/1.0"),
            12,
            "this header line has no colon\r\n",
        ),
    );
    expect(c, "header line without a colon", r, &[400], "12");

    let big = format!("X-Padding: {}\r\n", "a".repeat(100 * 1024));
    let r = raw_request(d, addr, req(&format!("OPTIONS {clip} RTSP/1.0"), 13, &big));
    expect(c, "100 KB header", r, &[400, 413], "13");

    let r = raw_request(d, addr, req(&format!("FOO {clip} RTSP/1.0"), 14, ""));
    expect(c, "unknown method FOO", r, &[501], "14");

    let missing = d.url("no-such-file.mp4");
    let r = raw_request(
        d,
        addr,
        req(&format!("DESCRIBE {missing} RTSP/1.0"), 15, ""),
    );
    expect(c, "DESCRIBE of a missing asset", r, &[404], "15");
    // SETUP of a track of a missing asset: the control URL of the real asset's first track
    // with the file name swapped (so the URL has the shape the server expects).
    let control = RtspConn::connect(d, Node::Client, addr).and_then(|mut conn| {
        Ok(conn
            .first_track(&clip)?
            .replace(CLIP_MP4, "no-such-file.mp4"))
    });
    if let Some(control) = c.ok("DESCRIBE for the track URL shape", control) {
        let r = raw_request(
            d,
            addr,
            req(
                &format!("SETUP {control} RTSP/1.0"),
                16,
                "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
            ),
        );
        expect(
            c,
            &format!("SETUP of a missing asset ({control})"),
            r,
            &[404],
            "16",
        );
    }

    // Paths outside the library. The library is target/test-media/v1, so "../v1/clip.mp4"
    // names a real media file: a server that joins paths naively would serve it.
    for (i, path) in [
        "/vod/../etc/passwd",
        "/vod/%2e%2e/x",
        "/vod/../v1/clip.mp4",
        "/vod/%2e%2e/v1/clip.mp4",
        "/vod/..%2fv1%2fclip.mp4",
        "/vod//etc/passwd",
    ]
    .iter()
    .enumerate()
    {
        let cseq = 20 + i as u32;
        let r = raw_request(
            d,
            addr,
            req(&format!("DESCRIBE {host}{path} RTSP/1.0"), cseq, ""),
        );
        expect(
            c,
            &format!("DESCRIBE {path}"),
            r,
            &[403, 404],
            &cseq.to_string(),
        );
    }

    let r = raw_request(
        d,
        addr,
        req(&format!("DESCRIBE {} RTSP/1.0", d.url(NOT_MEDIA)), 30, ""),
    );
    expect(c, "DESCRIBE of a non-media file", r, &[415], "30");

    let r = raw_request(
        d,
        addr,
        req(
            &format!("PLAY {clip} RTSP/1.0"),
            31,
            "Session: bogus-session-1234\r\nRange: npt=0-\r\n",
        ),
    );
    expect(c, "PLAY with a bogus Session", r, &[454], "31");

    // Unsupported transports, impossible client port ranges and SRTP without keys on a
    // real track: 461.
    for transport in [
        "RTP/AVP/SCTP;unicast",
        "RTP/AVP;unicast;client_port=5000-0",
        "RTP/AVP;unicast;client_port=65535",
        "RTP/AVP;unicast;client_port=0-1",
        // SRTP without the keys of a `?srtp=1` DESCRIBE on this connection.
        "RTP/SAVP;unicast;client_port=5000-5001",
        "RTP/SAVP/TCP;unicast;interleaved=0-1",
    ] {
        let setup = RtspConn::connect(d, Node::Client, addr).and_then(|mut conn| {
            let control = conn.first_track(&clip)?;
            conn.request("SETUP", &control, &[("Transport", transport)])
        });
        if let Some(r) = c.ok(&format!("SETUP with Transport {transport}"), setup) {
            c.check(r.status == 461, || {
                format!(
                    "SETUP with Transport {transport}: {:?}, expected 461",
                    r.status_line
                )
            });
        }
    }

    // The front-end still serves normally afterwards.
    let ok = RtspConn::connect(d, Node::Client, addr)
        .and_then(|mut conn| conn.request("DESCRIBE", &clip, &[]));
    if let Some(r) = c.ok("DESCRIBE after the bad requests", ok) {
        c.check(r.status == 200, || {
            format!("DESCRIBE after the bad requests: {r:?}")
        });
    }
}

#[test]
fn bad_peers_and_requests_leave_playing_clients_untouched() {
    let d = Deployment::split("bad-input", LinkTransport::Tcp).expect("deployment starts");
    let long = media::asset(LONG_MP4).unwrap();
    let mut c = Checks::new();
    thread::scope(|s| {
        // Two long clients (UDP and interleaved TCP) playing through everything below.
        let players: Vec<_> = [RtpTransport::Udp, RtpTransport::Tcp]
            .into_iter()
            .map(|tr| {
                let d = &d;
                s.spawn(move || -> anyhow::Result<(RtpTransport, Decode)> {
                    let r = d.ffmpeg_decode(&d.url(LONG_MP4), tr, &[], Duration::from_secs(45))?;
                    Ok((tr, r))
                })
            })
            .collect();
        // Let them get going before the trouble starts.
        thread::sleep(Duration::from_millis(1500));
        garbage_on_link(&mut c, &d);
        bad_rtsp(&mut c, &d);
        wrong_link_key(&mut c, &d);
        for p in players {
            match p.join().unwrap() {
                Ok((tr, r)) => {
                    c.check(r.out.success() && r.frames == long.video_frames, || {
                        format!(
                            "long client over {tr:?} decoded {} of {} frames: {}",
                            r.frames,
                            long.video_frames,
                            r.report()
                        )
                    });
                    c.check(r.error_lines.is_empty(), || {
                        format!("long client over {tr:?}: trouble {:?}", r.error_lines)
                    });
                }
                Err(e) => {
                    c.check(false, || format!("long client: {e:#}"));
                }
            }
        }
    });
    c.check(d.check_alive().is_ok(), || format!("{:?}", d.check_alive()));
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(60));
    }
    c.finish();
}
