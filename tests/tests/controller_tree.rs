//! The tree controller end to end: a controller, an encoder unit, a master, two
//! intermediates and three public reflectors, each on a machine (namespace) of its own,
//! started with `--controller` only; real clients on another (see
//! `divisor_tests::ctl_tree` for the layout).
//!
//! One story, in order (each step needs the tree the previous one left):
//! - the controller wires the designed tree (spare links as backups);
//! - ffmpeg and `gst-launch-1.0 rtspsrc` open the controller's RTSP URL, follow its 302
//!   and play; headless Chromium's `/play/cam/web` follows the 307 and plays over WHEP;
//! - 60 clients spread over the public reflectors as the policy says;
//! - the master's aggregate at the controller matches the publics' own `/metrics`;
//! - bad control input (garbage, a huge frame, a wrong key, a replay, no HELLO) is
//!   answered or dropped, counted, and disturbs nobody;
//! - an intermediate cut off (nftables, silence): its children keep playing on their
//!   backups and the controller re-parents them within two PING periods; healed, the
//!   designed tree returns, and no client loses an RTP packet through it all;
//! - the tree page draws the tree in headless Chromium (screenshot kept in the logs);
//! - a public reflector cut off is found dead through its parent's CHILDSUPDATE within a
//!   few statistics periods, and no client is sent to it.

use bytes::BufMut;
use divisor_reflector::control::{Body, Codec, ControlKey, Limits, Message, Peer};
use divisor_tests::browser;
use divisor_tests::clients::{
    gst_play_on, progress_frames, spawn_ffmpeg_on, start_capture_on, stop_capture_on,
};
use divisor_tests::ctl_tree::{
    CtlTree, CHANNEL, CLIENT, CONTROL, CTL, CTL_HTTP, CTL_RTSP, MASTER, MAX_VIEWERS, PUBLICS,
};
use divisor_tests::{tshark, Checks};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The sum of every sample of metric `name` (any labels) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ')?;
        let metric = key.split('{').next().unwrap_or(key);
        if metric == name {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

/// A labelled sample, e.g. `divisor_controller_client_redirects_total{target="pub1"}`.
fn labelled(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn redirects_by_public(t: &CtlTree) -> BTreeMap<&'static str, f64> {
    let m = t.controller_metrics().unwrap_or_default();
    PUBLICS
        .iter()
        .map(|p| {
            (
                *p,
                labelled(
                    &m,
                    &format!("divisor_controller_client_redirects_total{{target=\"{p}\"}}"),
                ),
            )
        })
        .collect()
}

fn public_metrics(t: &CtlTree, p: &str) -> String {
    let url = format!(
        "http://{}:{}/metrics",
        t.lan.ip(p),
        divisor_tests::ctl_tree::HTTP
    );
    t.lan
        .http_get(CLIENT, &url)
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One length-prefixed frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.put_u32(payload.len() as u32);
    v.extend_from_slice(payload);
    v
}

/// Sends `frames` on a fresh control connection from the client; returns the ERROR codes
/// the controller answered with (reading for up to `wait`).
fn control_exchange(
    t: &CtlTree,
    frames: &[Vec<u8>],
    codec: &mut Codec,
    wait: Duration,
) -> Vec<u16> {
    let mut s = t
        .lan
        .connect(CLIENT, t.lan.addr(CTL, CONTROL), Duration::from_secs(3))
        .expect("connect to the control port");
    for f in frames {
        if s.write_all(f).is_err() {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let mut codes = Vec::new();
    let mut rest = &buf[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        if let Ok(Message {
            body: Body::Error { code, .. },
            ..
        }) = codec.open(&rest[4..4 + len], now_ms())
        {
            codes.push(code);
        }
        rest = &rest[4 + len..];
    }
    codes
}

#[test]
fn the_controller_wires_redirects_aggregates_and_repairs_the_tree() {
    let t = CtlTree::start("controller-tree").unwrap();
    let mut checks = Checks::new();
    let url = t.rtsp_url();

    // --- Real clients follow the controller's redirects. ----------------------------
    let before = redirects_by_public(&t);
    spawn_ffmpeg_on(&t.lan, CLIENT, "ffmpeg-redirected", &url, 6, false).unwrap();
    t.lan
        .wait_exit("ffmpeg-redirected", Duration::from_secs(40))
        .unwrap();
    let frames = progress_frames(&t.lan.stdout_of("ffmpeg-redirected"));
    checks.check(frames >= 120, || {
        format!(
            "ffmpeg via {url}: {frames} frames\n{}",
            t.lan.log("ffmpeg-redirected")
        )
    });
    let after = redirects_by_public(&t);
    let total: f64 = PUBLICS.iter().map(|p| after[p] - before[p]).sum();
    checks.check(total == 1.0, || {
        format!("one ffmpeg client, {total} redirects counted")
    });

    let gst = gst_play_on(&t.lan, CLIENT, &url, 6).unwrap();
    checks.check(
        gst.status
            .and_then(|s| s.code())
            .is_some_and(|c| c == 0 || c == 124)
            && gst.stdout.contains("PLAYING")
            && !gst.stderr.contains("ERROR")
            && !gst.stdout.contains("ERROR"),
        || format!("gst-launch-1.0 rtspsrc via {url}: {}", gst.failure_report()),
    );

    let play = format!("http://{}:{CTL_HTTP}/play/{CHANNEL}/web", t.lan.ip(CTL));
    let shot = t.lan.log_dir.join("chromium-play.png");
    match browser::play_on_lan(&t.lan, CLIENT, &play, 6, &shot) {
        Ok(p) => {
            checks.check(
                p.connection_state() == Some("connected") && p.frames_last() > p.frames_first(),
                || format!("Chromium at {play}: {:?}", p.raw),
            );
            let landed = p.raw["url"].as_str().unwrap_or_default().to_string();
            eprintln!("Chromium at {play} played (report url {landed})");
        }
        Err(e) => {
            checks.check(false, || format!("Chromium at {play}: {e:#}"));
        }
    }

    // --- 60 clients spread as the policy says; the aggregate adds up. -----------------
    // Let the earlier clients' sessions end so each public starts from zero viewers.
    t.wait_for(Duration::from_secs(30), "earlier viewers gone", |t| {
        let n: i64 = PUBLICS
            .iter()
            .map(|p| {
                t.status(p)
                    .map(|s| s["front_end"]["clients"].as_i64().unwrap_or(0))
            })
            .sum::<anyhow::Result<i64>>()?;
        Ok(n == 0)
    })
    .unwrap();
    let before = redirects_by_public(&t);
    let cap = start_capture_on(&t.lan, CLIENT, "cap-load").unwrap();
    for i in 0..60 {
        spawn_ffmpeg_on(&t.lan, CLIENT, &format!("ff{i}"), &url, 45, true).unwrap();
    }
    t.wait_for(Duration::from_secs(30), "60 clients playing", |t| {
        let n: i64 = PUBLICS
            .iter()
            .map(|p| {
                t.status(p)
                    .map(|s| s["front_end"]["clients"].as_i64().unwrap_or(0))
            })
            .sum::<anyhow::Result<i64>>()?;
        Ok(n >= 60)
    })
    .unwrap();
    let after = redirects_by_public(&t);
    let mut playing = BTreeMap::new();
    for p in PUBLICS {
        let n = t.status(p).unwrap()["front_end"]["clients"]
            .as_i64()
            .unwrap_or(0);
        playing.insert(p, n);
        let sent = after[p] - before[p];
        checks.check(n as f64 == sent, || {
            format!("{p}: {n} clients playing, but the controller sent it {sent}")
        });
        checks.check(n as u32 <= MAX_VIEWERS, || {
            format!("{p} over its capacity: {n}")
        });
    }
    let (lo, hi) = (
        playing.values().min().copied().unwrap_or(0),
        playing.values().max().copied().unwrap_or(0),
    );
    eprintln!("60 clients over the publics: {playing:?}");
    checks.check(hi - lo <= 3, || {
        format!("the least-loaded policy should spread 60 clients evenly: {playing:?}")
    });

    // The master's aggregate against the publics' own /metrics, over the same moment:
    // retried until two successive periods agree (figures move with every report).
    let mut agreed = false;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agreed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1100));
        let tree = t.tree().unwrap_or_default();
        let Some(agg) = tree["aggregate"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["master"] == MASTER).cloned())
        else {
            last = format!("no aggregate for {MASTER}: {tree}");
            continue;
        };
        let (mut viewers, mut jitter_weighted) = (0.0, 0.0);
        for p in PUBLICS {
            let m = public_metrics(&t, p);
            let clients = sample(&m, "divisor_clients").unwrap_or(0.0);
            let jsum = sample(&m, "divisor_rtcp_jitter_seconds_sum").unwrap_or(0.0);
            let jn = sample(&m, "divisor_rtcp_jitter_seconds_count").unwrap_or(0.0);
            viewers += clients;
            if jn > 0.0 {
                jitter_weighted += clients * jsum / jn * 1000.0;
            }
        }
        let want_jitter = if viewers > 0.0 {
            jitter_weighted / viewers
        } else {
            0.0
        };
        let ch = agg["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == CHANNEL).cloned())
            .unwrap_or_default();
        let got_jitter = ch["jitter_ms"].as_f64().unwrap_or(-1.0);
        let got_viewers = agg["viewers"].as_f64().unwrap_or(-1.0);
        let descendants = agg["descendants"].as_u64().unwrap_or(0);
        last = format!(
            "aggregate {agg}; from the publics' /metrics: viewers {viewers}, jitter {want_jitter:.3} ms"
        );
        // Tolerance: jitter moves between a report and a scrape; 0.5 ms or 30 %.
        agreed = got_viewers == viewers
            && ch["viewers"].as_f64() == Some(viewers)
            && descendants == 5
            && (got_jitter - want_jitter).abs() <= (0.3 * want_jitter).max(0.5);
    }
    eprintln!("aggregate check: {last}");
    checks.check(agreed, || format!("the aggregate does not match: {last}"));

    // --- Bad control input: answered or dropped, counted, nobody disturbed. ----------
    let key = ControlKey::new(b"controller test control key".to_vec()).unwrap();
    let mut codec = Codec::new(key.clone(), Limits::default());
    let wrong = Codec::new(
        ControlKey::new(b"not the key".to_vec()).unwrap(),
        Limits::default(),
    );
    let ping = |seq| Message {
        time_ms: now_ms(),
        from: Peer::Node("intruder".into()),
        to: Peer::Root,
        body: Body::Ping { seq },
    };
    let good = codec.seal(&ping(1));
    let bomb = format!(
        "{}<?xml version=\"1.0\"?><!DOCTYPE m [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><message type=\"PING\" time=\"{}\" from=\"x\" to=\"^\"><seq>&b;</seq></message>",
        "0".repeat(32),
        now_ms()
    );
    let frames = vec![
        frame(b"garbage that is no control message at all, not even a tag"),
        frame(&wrong.seal(&ping(2))),
        frame(bomb.as_bytes()),
        frame(&good),
        frame(&good), // the replay
        frame(b"<message type=\"PING\" time=\"0\" from=\"x\" to=\"^\"><seq>1</seq>"),
    ];
    let invalid_before = sample(
        &t.controller_metrics().unwrap(),
        "divisor_controller_invalid_messages_total",
    )
    .unwrap_or(0.0);
    let codes = control_exchange(&t, &frames, &mut codec, Duration::from_secs(2));
    eprintln!("ERROR codes for the bad control messages: {codes:?}");
    // garbage, wrong key, bomb (no valid tag either) and the replay: 401; the good PING
    // without HELLO: 403; the unterminated one: 401 (its "tag" is text).
    checks.check(
        codes.iter().filter(|&&c| c == 401).count() >= 4 && codes.contains(&403),
        || format!("ERROR codes for bad input: {codes:?}"),
    );
    // A 10 MB frame: refused at the length prefix, the connection closed.
    let mut huge = Vec::new();
    huge.put_u32(10 * 1024 * 1024);
    huge.extend(std::iter::repeat_n(b'<', 64 * 1024));
    let codes = control_exchange(&t, &[huge], &mut codec, Duration::from_secs(2));
    checks.check(codes.contains(&413), || {
        format!("10 MB frame: codes {codes:?}")
    });
    let invalid_after = sample(
        &t.controller_metrics().unwrap(),
        "divisor_controller_invalid_messages_total",
    )
    .unwrap_or(0.0);
    checks.check(invalid_after - invalid_before >= 6.0, || {
        format!("invalid messages counted: {invalid_before} → {invalid_after}")
    });
    checks.check(t.designed_and_up().unwrap_or(false), || {
        "the tree changed after bad control input".into()
    });

    // --- Cut an intermediate off; heal it. ------------------------------------------
    let cut = Instant::now();
    t.lan.cut("int1").unwrap();
    let repaired = t.wait_for(
        Duration::from_secs(10),
        "pub1 and pub2 re-parented to int2",
        |t| {
            Ok(t.parent_of("pub1")?.as_deref() == Some("int2")
                && t.parent_of("pub2")?.as_deref() == Some("int2"))
        },
    );
    match repaired {
        Ok(_) => {
            let took = cut.elapsed();
            eprintln!("int1 cut off: children re-parented after {took:?} (PING period 1 s)");
            // Two PING periods, plus the 100 ms polling of this test.
            checks.check(took <= Duration::from_millis(2300), || {
                format!("re-parenting took {took:?}, more than two PING periods")
            });
        }
        Err(e) => {
            checks.check(false, || format!("{e:#}"));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    t.lan.heal("int1").unwrap();
    let back = t.wait_for(Duration::from_secs(30), "the designed tree back", |t| {
        t.designed_and_up()
    });
    match back {
        Ok(took) => eprintln!("int1 healed: designed tree back after {took:?}"),
        Err(e) => {
            checks.check(false, || format!("{e:#}"));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    stop_capture_on(&t.lan, "cap-load").unwrap();
    let max_gap = tshark::check_lossless(&mut checks, &cap, 60);
    eprintln!(
        "largest RTP arrival gap at 60 clients through cut, repair and return: {max_gap:.1} ms"
    );
    for i in 0..60 {
        let name = format!("ff{i}");
        let _ = t.lan.wait_exit(&name, Duration::from_secs(60));
        let f = progress_frames(&t.lan.stdout_of(&name));
        checks.check(f >= 600, || format!("load client {name}: {f} frames"));
    }

    // --- The tree page, drawn by headless Chromium. ---------------------------------
    let page = format!("http://{}:{CTL_HTTP}/", t.lan.ip(CTL));
    let png = t.lan.log_dir.join("controller-tree.png");
    let out = t
        .lan
        .run_in(
            CLIENT,
            "node",
            [
                browser::browser_dir().join("shot.mjs").into_os_string(),
                "--url".into(),
                page.clone().into(),
                "--selector".into(),
                "svg#tree g.node".into(),
                "--min".into(),
                "6".into(),
                "--count-also".into(),
                "line.link.active".into(),
                "--count-also".into(),
                "line.link.spare".into(),
                "--screenshot".into(),
                png.clone().into_os_string(),
            ],
            Duration::from_secs(90),
        )
        .unwrap();
    let report: serde_json::Value = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    eprintln!("tree page: {report}; screenshot {}", png.display());
    checks.check(
        report["ok"] == true
            && report["also"]["line.link.active"].as_u64().unwrap_or(0) >= 5
            && report["also"]["line.link.spare"].as_u64().unwrap_or(0) >= 1
            && png.is_file(),
        || format!("the tree page at {page}: {report} {}", out.failure_report()),
    );

    // --- A leaf cut off: its parent stops hearing it, and nobody is sent there. -----
    // pub3 has no children, and the controller does not PING leaves its parent vouches
    // for; int2's CHILDSUPDATE without it is what brings the check.
    let cut = Instant::now();
    t.lan.cut("pub3").unwrap();
    match t.wait_for(
        Duration::from_secs(20),
        "pub3 dead at the controller",
        |t| Ok(t.state_of("pub3")?.as_deref() == Some("dead")),
    ) {
        Ok(_) => {
            let took = cut.elapsed();
            eprintln!("pub3 cut off: dead at the controller after {took:?} (statistics every 1 s)");
            // Three statistics periods of silence, one more for the report, two PINGs.
            checks.check(took <= Duration::from_secs(8), || {
                format!("a silent leaf took {took:?} to be found")
            });
        }
        Err(e) => {
            checks.check(false, || format!("{e:#}"));
        }
    }
    let pub3 = t.lan.ip("pub3").to_string();
    for _ in 0..6 {
        let loc = rtsp_location(&t);
        checks.check(
            loc.as_deref()
                .is_some_and(|l| l.starts_with("rtsp://") && !l.contains(&pub3)),
            || format!("redirect with pub3 dead: {loc:?}"),
        );
    }
    t.lan.heal("pub3").unwrap();

    t.lan.check_alive().unwrap();
    checks.finish();
}

/// The `Location` of the controller's answer to a DESCRIBE of the channel.
fn rtsp_location(t: &CtlTree) -> Option<String> {
    let mut s = t
        .lan
        .connect(CLIENT, t.lan.addr(CTL, CTL_RTSP), Duration::from_secs(3))
        .ok()?;
    let req = format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n",
        t.rtsp_url()
    );
    s.write_all(req.as_bytes()).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    })
}
