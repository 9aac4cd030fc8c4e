//! The command-line contract of the three binaries: documented flags, logs on stderr.

use divisor_tests::deploy::{ENCODER, PROTOCOL};
use divisor_tests::{bin, cmd, Checks, Deployment, LinkTransport};
use std::process::Command;
use std::time::Duration;

/// `--help` succeeds and documents the flags the README promises.
#[test]
fn help_lists_the_documented_flags() {
    let mut c = Checks::new();
    for (name, flags) in [
        (
            "divisor-encoder",
            &[
                "--library",
                "--link-listen",
                "--link-connect",
                "--link-key-file",
                "--link-transport",
            ][..],
        ),
        (
            "divisor-protocol",
            &[
                "--link-connect",
                "--link-listen",
                "--link-key-file",
                "--rtsp-listen",
                "--link-transport",
            ][..],
        ),
        ("divisor-mono", &["--library", "--rtsp-listen"][..]),
        (
            "divisor-reflector",
            &[
                "--role",
                "--id",
                "--link-listen",
                "--upstream",
                "--upstream-file",
                "--link-key-file",
                "--silence-ms",
                "--linger-secs",
                "--pin",
                "--http-listen",
                "--rtsp-listen",
                "--edge-delay-ms",
            ][..],
        ),
    ] {
        let out = cmd::run(
            Command::new(bin(name).unwrap()).arg("--help"),
            Duration::from_secs(10),
        )
        .unwrap();
        c.check(out.success(), || {
            format!("{name} --help: {}", out.failure_report())
        });
        for f in flags {
            c.check(out.stdout.contains(f), || {
                format!("{name} --help does not mention {f}:\n{}", out.stdout)
            });
        }
    }
    c.finish();
}

/// Both units log (tracing) to stderr and keep stdout clean, so their output can be piped
/// and their logs collected separately.
#[test]
fn units_log_to_stderr_not_stdout() {
    let d = Deployment::split("cli-logs", LinkTransport::Tcp).expect("deployment starts");
    let mut c = Checks::new();
    for unit in [ENCODER, PROTOCOL] {
        c.check(!d.log(unit).trim().is_empty(), || {
            format!("{unit} logged nothing on stderr")
        });
        let out = d.stdout_of(unit);
        c.check(out.trim().is_empty(), || {
            format!(
                "{unit} writes its logs to stdout instead of stderr:\n{}",
                cmd::tail(&out, 5)
            )
        });
    }
    c.finish();
}

/// The link can be dialled either way: protocol unit listening, encoder connecting.
#[test]
fn encoder_can_dial_a_listening_protocol_unit() {
    use divisor_tests::deploy::{os_args, LINK_PORT, RTSP_PORT};
    use divisor_tests::media::{self, CLIP_MP4};
    use divisor_tests::{Node, RtpTransport, RtspConn, Topology};
    use std::net::SocketAddr;
    use std::time::Instant;

    let library = media::library().unwrap().to_path_buf();
    let a = media::asset(CLIP_MP4).unwrap();
    let t = Topology::new("cli-reverse-link").unwrap();
    let key = t.log_dir.join("link.key");
    std::fs::write(&key, "reverse-dial-test-key\n").unwrap();
    t.spawn_in(
        Node::Protocol,
        PROTOCOL,
        bin("divisor-protocol").unwrap(),
        os_args([
            "--link-listen".as_ref(),
            format!("0.0.0.0:{LINK_PORT}").as_ref(),
            "--link-key-file".as_ref(),
            key.as_os_str(),
            "--rtsp-listen".as_ref(),
            format!("0.0.0.0:{RTSP_PORT}").as_ref(),
        ]),
    )
    .unwrap();
    t.wait_listening(Node::Protocol, LINK_PORT, Duration::from_secs(20))
        .unwrap();
    t.spawn_in(
        Node::Encoder,
        ENCODER,
        bin("divisor-encoder").unwrap(),
        os_args([
            "--library".as_ref(),
            library.as_os_str(),
            "--link-connect".as_ref(),
            format!("{}:{LINK_PORT}", t.link_ip).as_ref(),
            "--link-key-file".as_ref(),
            key.as_os_str(),
        ]),
    )
    .unwrap();
    let rtsp = SocketAddr::from((t.rtsp_ip, RTSP_PORT));
    let url = format!("rtsp://{rtsp}/vod/{CLIP_MP4}");
    t.wait_tcp(Node::Client, rtsp, Duration::from_secs(20))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = RtspConn::connect(&t, Node::Client, rtsp)
            .and_then(|mut c| c.request("DESCRIBE", &url, &[]))
            .map(|r| r.status);
        if matches!(st, Ok(200)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DESCRIBE never answered 200 with the encoder dialling in: {st:?}\n{}",
            t.logs_report(30)
        );
        t.check_alive().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = t
        .ffmpeg_decode(&url, RtpTransport::Tcp, &[], Duration::from_secs(30))
        .unwrap();
    assert!(
        r.out.success() && r.frames == a.video_frames && r.error_lines.is_empty(),
        "decoded {} of {} frames: {}",
        r.frames,
        a.video_frames,
        r.report()
    );
}
