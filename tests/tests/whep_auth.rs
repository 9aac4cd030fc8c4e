//! WHEP with bearer tokens (`--whep-token`): an offer without a token, or with a wrong
//! one, gets 401 and a `WWW-Authenticate: Bearer` challenge, and nothing is set up;
//! headless Chromium on the player page given `?token=` plays.

use divisor_tests::browser;
use divisor_tests::control::{metric, wait_live};
use divisor_tests::deploy::Options;
use divisor_tests::media;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, Node};
use std::net::SocketAddr;
use std::time::Duration;

const HTTP_PORT: u16 = 8080;
const TOKEN: &str = "s3cr3t-t0ken";

/// POST `body` as an offer with `auth` (a full header value, if any): status, headers.
fn post(d: &Deployment, url: &str, auth: Option<&str>) -> (u16, String) {
    let mut args = vec![
        "-sS".to_string(),
        "-D".into(),
        "-".into(),
        "-o".into(),
        "/dev/null".into(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/sdp".into(),
        "--data-binary".into(),
        "v=0".into(),
    ];
    if let Some(a) = auth {
        args.extend(["-H".into(), format!("Authorization: {a}")]);
    }
    args.push(url.into());
    let out = d
        .run_in(Node::Client, "curl", &args, Duration::from_secs(15))
        .expect("curl runs");
    let status = out
        .stdout
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out.stdout)
}

#[test]
fn whep_wants_a_bearer_token_and_chromium_plays_with_it() {
    let config =
        std::env::temp_dir().join(format!("divisor-whep-auth-{}.toml", std::process::id()));
    std::fs::write(&config, media::WEBRTC_CONFIG).unwrap();
    let d = Deployment::start_with(
        "whep-auth",
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec!["--config".into(), config.clone().into()],
            protocol_args: vec![
                "--http-listen".into(),
                format!("0.0.0.0:{HTTP_PORT}").into(),
                "--whep-token".into(),
                TOKEN.into(),
            ],
        },
    )
    .expect("deployment starts");
    let http_addr = SocketAddr::from((d.rtsp_ip, HTTP_PORT));
    let base = format!("http://{http_addr}");
    d.wait_tcp(Node::Client, http_addr, Duration::from_secs(20))
        .expect("HTTP port reachable");
    wait_live(&d, "cam", &["web"], Duration::from_secs(60)).expect("channel cam goes live");
    let mut c = Checks::new();
    let whep = format!("{base}/whep/cam/web");

    for (what, auth) in [
        ("no token", None),
        ("a wrong token", Some("Bearer guess")),
        ("another scheme", Some("Basic YTpi")),
    ] {
        let (status, headers) = post(&d, &whep, auth);
        c.check(
            status == 401
                && headers
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
            || format!("offer with {what}: {status}\n{headers}"),
        );
    }
    // The right token passes authentication (this offer is not SDP: 400).
    let (status, headers) = post(&d, &whep, Some(&format!("Bearer {TOKEN}")));
    c.check(status == 400, || {
        format!("offer with the token and a bad body: {status}\n{headers}")
    });
    let refused = metric(&d, &base, "divisor_webrtc_sessions_total").unwrap_or(-1.0);
    c.check(refused == 0.0, || {
        format!("{refused} WebRTC sessions were created by refused offers")
    });

    let shot = d.log_dir.join("play-with-token.png");
    let url = format!("{base}/play/cam/web?token={TOKEN}");
    match browser::play(&d, Node::Client, &url, 8, &shot) {
        Ok(p) => {
            c.check(p.connection_state() == Some("connected"), || {
                format!("chromium with the token: {}", p.raw)
            });
            c.check(p.frames_last() > p.frames_first() + 10, || {
                format!("chromium with the token: frames {:?}", p.frames_series())
            });
        }
        Err(e) => {
            c.check(false, || format!("chromium with the token: {e:#}"));
        }
    }
    // Without the token the page is refused by the server and says so.
    let shot = d.log_dir.join("play-without-token.png");
    match browser::play(&d, Node::Client, &format!("{base}/play/cam/web"), 3, &shot) {
        Ok(p) => {
            c.check(p.frames_last() == 0, || {
                format!("chromium without the token decoded frames: {}", p.raw)
            });
        }
        Err(e) => eprintln!("chromium without the token: {e:#} (expected: no playback)"),
    }
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(30));
    }
    c.finish();
}
