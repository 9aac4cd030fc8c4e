//! The reflector tiers end to end: encoder unit → master → two intermediates → two public
//! reflectors, each on a machine (namespace) of its own, with real clients (ffmpeg,
//! GStreamer, tshark) on another. See `divisor_tests::tree` for the layout.
//!
//! - the tree plays at every public reflector, 50 clients fan in to one encoder
//!   subscription, and every tier lets go after its linger;
//! - failures while clients play (kill -9, an nftables cut-off, a graceful SIGTERM of the
//!   active intermediate) and a SIGHUP re-wiring: clients lose no RTP packet and see no
//!   long gap;
//! - two reflectors named as each other's upstream refuse the loop with a clear error.

use divisor_tests::lan::Lan;
use divisor_tests::tree::{
    Tree, TreeOptions, CHANNEL, CLIENT, HTTP, INTERMEDIATES, LINK, MASTER, PUBLICS,
};
use divisor_tests::tshark;
use divisor_tests::{bin, Checks};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest arrival gap per SSRC, from the packets themselves (ms), and duplicates.
fn gaps_and_duplicates(file: &Path) -> (HashMap<u32, f64>, u64) {
    let pkts = tshark::rtp_packets(file).unwrap_or_default();
    let mut last: HashMap<u32, (f64, u16)> = HashMap::new();
    let mut seen: HashMap<u32, std::collections::HashSet<u16>> = HashMap::new();
    let mut gaps: HashMap<u32, f64> = HashMap::new();
    let mut dups = 0;
    // SSRC 0: the empty packets ffmpeg sends towards the server to open NAT bindings.
    for p in pkts.into_iter().filter(|p| p.ssrc != 0) {
        if !seen.entry(p.ssrc).or_default().insert(p.seq) {
            dups += 1;
        }
        if let Some((t, _)) = last.get(&p.ssrc) {
            let g = (p.time - t) * 1000.0;
            let e = gaps.entry(p.ssrc).or_insert(0.0);
            *e = e.max(g);
        }
        last.insert(p.ssrc, (p.time, p.seq));
    }
    (gaps, dups)
}

fn active_upstream(tree: &Tree, public: &str) -> Option<String> {
    tree.channel(public)
        .ok()
        .flatten()
        .and_then(|c| c["active_upstream"].as_str().map(str::to_string))
}

#[test]
fn the_tree_plays_at_every_public_reflector_and_fans_in_to_one_subscription() {
    let tree = Tree::start("reflector-tree-fan-in", TreeOptions::default()).unwrap();
    let mut checks = Checks::new();

    // Both public reflectors decode cleanly (ffmpeg), with zero loss on the wire (tshark).
    let cap = tree.start_capture("cap").unwrap();
    for (i, p) in PUBLICS.iter().enumerate() {
        tree.spawn_ffmpeg(&format!("dec{i}"), &tree.rtsp_url(p), 8, false)
            .unwrap();
    }
    for (i, p) in PUBLICS.iter().enumerate() {
        let name = format!("dec{i}");
        tree.lan.wait_exit(&name, Duration::from_secs(40)).unwrap();
        let (frames, trouble) = tree.ffmpeg_result(&name);
        checks.check(frames >= 180 && trouble.is_empty(), || {
            format!("ffmpeg at {p}: {frames} frames decoded, trouble {trouble:?}")
        });
    }
    tree.stop_capture("cap").unwrap();
    let max_gap = tshark::check_lossless(&mut checks, &cap, 4);
    eprintln!("largest RTP arrival gap at the decoders: {max_gap:.1} ms");

    // GStreamer's rtspsrc plays it too.
    let gst = tree.gst_play(&tree.rtsp_url("pub2"), 6).unwrap();
    checks.check(
        // `timeout` exits 124 when it had to stop the (endless) live play with SIGINT.
        gst.status
            .and_then(|s| s.code())
            .is_some_and(|c| c == 0 || c == 124)
            && gst.stdout.contains("PLAYING")
            && !gst.stderr.contains("ERROR")
            && !gst.stdout.contains("ERROR"),
        || format!("gst-launch-1.0 rtspsrc at pub2: {}", gst.failure_report()),
    );

    // Fan-in: 50 clients on one channel, spread over both public reflectors (ffmpeg
    // demuxing only: a cheap load on a 2-core machine), all lossless on the wire.
    let cap = tree.start_capture("cap-load").unwrap();
    for i in 0..50 {
        let public = PUBLICS[i % 2];
        tree.spawn_ffmpeg(&format!("ff{i}"), &tree.rtsp_url(public), 10, true)
            .unwrap();
    }
    tree.wait_for(Duration::from_secs(20), "50 clients playing", |t| {
        let n: i64 = PUBLICS
            .iter()
            .map(|p| {
                t.status(p)
                    .map(|s| s["front_end"]["clients"].as_i64().unwrap_or(0))
            })
            .sum::<anyhow::Result<i64>>()?;
        Ok(n >= 50)
    })
    .unwrap();
    let subs = tree.encoder_subscriptions().unwrap();
    checks.check(subs == 1, || {
        format!(
            "the encoder unit holds {subs} subscriptions for {CHANNEL} with 50 viewers, expected 1"
        )
    });
    // Each tier holds one subscription per channel: both publics are children of the
    // intermediates (normally both of int1; a loaded machine may have moved one to int2),
    // and the master has one child per intermediate that relays the channel.
    for p in PUBLICS {
        let c = tree.channel(p).unwrap().expect("public relays the channel");
        checks.check(c["local_subscribers"] == 1, || format!("{p}: {c}"));
        let path: Vec<&str> = c["path"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        checks.check(
            path.len() == 3
                && path[0] == "master"
                && INTERMEDIATES.contains(&path[1])
                && path[2] == p,
            || format!("{p}: path {path:?}"),
        );
    }
    let mut relaying = 0;
    let mut int_children = 0;
    for i in INTERMEDIATES {
        if let Some(c) = tree.channel(i).unwrap() {
            relaying += 1;
            int_children += c["children"].as_u64().unwrap_or(0);
        }
    }
    checks.check(int_children == 2, || {
        format!("the intermediates hold {int_children} children for the channel, expected 2")
    });
    let master = tree
        .channel(MASTER)
        .unwrap()
        .expect("master relays the channel");
    checks.check(master["children"] == relaying, || {
        format!("master children: {master}, {relaying} intermediates relay")
    });
    for i in 0..50 {
        let name = format!("ff{i}");
        tree.lan.wait_exit(&name, Duration::from_secs(40)).unwrap();
        let (frames, _) = tree.ffmpeg_result(&name);
        checks.check(frames >= 150, || {
            format!("load client {name}: {frames} frames")
        });
    }
    tree.stop_capture("cap-load").unwrap();
    let max_gap = tshark::check_lossless(&mut checks, &cap, 100);
    eprintln!("largest RTP arrival gap at 50 clients: {max_gap:.1} ms");

    // Everyone gone: after the lingers (front-end, public, intermediate, master) every tier
    // has unsubscribed.
    tree.wait_for(Duration::from_secs(30), "every tier to unsubscribe", |t| {
        let mut all = vec![MASTER];
        all.extend(INTERMEDIATES);
        all.extend(PUBLICS);
        for n in all {
            if t.channel(n)?.is_some() {
                return Ok(false);
            }
        }
        Ok(t.encoder_subscriptions()? == 0)
    })
    .unwrap();
    tree.lan.check_alive().unwrap();
    checks.finish();
}

#[test]
fn clients_lose_nothing_when_the_active_intermediate_is_killed_cut_off_or_leaves() {
    let tree = Tree::start("reflector-tree-failures", TreeOptions::default()).unwrap();
    let mut checks = Checks::new();
    let int1 = tree.lan.addr("int1", LINK).to_string();
    let int2 = tree.lan.addr("int2", LINK).to_string();
    let master = tree.lan.addr(MASTER, LINK).to_string();

    let cap = tree.start_capture("cap").unwrap();
    for (i, p) in PUBLICS.iter().enumerate() {
        tree.spawn_ffmpeg(&format!("ff{i}"), &tree.rtsp_url(p), 120, false)
            .unwrap();
    }
    let on = |want: &str| {
        let want = want.to_string();
        move |t: &Tree| {
            Ok(PUBLICS
                .iter()
                .all(|p| active_upstream(t, p).as_deref() == Some(want.as_str())))
        }
    };
    tree.wait_for(
        Duration::from_secs(20),
        "publics playing from int1",
        on(&int1),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // 0. SIGHUP re-wiring: pub1 is given int2 alone, moves make-before-break, and comes
    // back once int1 is listed again.
    tree.rewire("pub1", &[int2.as_str()]).unwrap();
    tree.wait_for(Duration::from_secs(10), "pub1 re-wired to int2", |t| {
        Ok(active_upstream(t, "pub1").as_deref() == Some(int2.as_str()))
    })
    .unwrap();
    tree.rewire("pub1", &[int1.as_str(), int2.as_str()])
        .unwrap();
    tree.wait_for(Duration::from_secs(20), "pub1 back on int1", on(&int1))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // 1. kill -9: the link drops (RST), the switch is immediate.
    let t = Instant::now();
    tree.lan.signal("int1", libc::SIGKILL).unwrap();
    tree.wait_for(
        Duration::from_secs(5),
        "switch to int2 after kill -9",
        on(&int2),
    )
    .unwrap();
    eprintln!("kill -9: publics on int2 after {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    tree.spawn_reflector("int1", "intermediate", &[master.as_str()], &[])
        .unwrap();
    tree.wait_for(Duration::from_secs(20), "return to int1", on(&int1))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // 2. Cut off by an nftables drop: no FIN, no RST; silence is the only sign.
    let t = Instant::now();
    tree.lan.cut("int1").unwrap();
    tree.wait_for(
        Duration::from_secs(5),
        "switch to int2 after the cut",
        on(&int2),
    )
    .unwrap();
    eprintln!("cut-off: publics on int2 after {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    tree.lan.heal("int1").unwrap();
    tree.wait_for(
        Duration::from_secs(25),
        "return to int1 after healing",
        on(&int1),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // 3. SIGTERM: int1 leaves gracefully; its children move first, then it exits.
    let t = Instant::now();
    tree.lan.signal("int1", libc::SIGTERM).unwrap();
    let st = tree.lan.wait_exit("int1", Duration::from_secs(20)).unwrap();
    eprintln!("graceful leave: int1 exited ({st}) after {:?}", t.elapsed());
    checks.check(st.success(), || format!("int1 exited with {st} on SIGTERM"));
    checks.check(on(&int2)(&tree).unwrap_or(false), || {
        "publics not on int2 after int1 left".into()
    });
    std::thread::sleep(Duration::from_secs(3));

    for (i, public) in PUBLICS.iter().enumerate() {
        let name = format!("ff{i}");
        tree.lan.signal(&name, libc::SIGINT).unwrap();
        tree.lan.wait_exit(&name, Duration::from_secs(15)).unwrap();
        let (frames, trouble) = tree.ffmpeg_result(&name);
        checks.check(frames >= 300 && trouble.is_empty(), || {
            format!("decoder {name} at {public}: {frames} frames, trouble {trouble:?}")
        });
    }
    tree.stop_capture("cap").unwrap();
    let max_gap = tshark::check_lossless(&mut checks, &cap, 4);
    let (gaps, dups) = gaps_and_duplicates(&cap);
    eprintln!("largest RTP arrival gap per stream (ms): {gaps:?}; duplicates {dups}");
    checks.check(dups == 0, || {
        format!("{dups} duplicate RTP packets at the clients")
    });
    // Frames are 40 ms apart (audio 20 ms); a switch that reached the clients would show
    // as a gap of its length (at least the 150 ms silence time).
    checks.check(max_gap < 150.0, || {
        format!("an RTP arrival gap of {max_gap:.1} ms reached the clients")
    });
    for p in PUBLICS {
        let c = tree.channel(p).unwrap().expect("channel");
        eprintln!("{p} switches: {}", c["switches"]);
        checks.check(c["discontinuities"] == 0, || format!("{p}: {c}"));
    }
    checks.finish();
}

#[test]
fn two_reflectors_named_as_each_others_upstream_refuse_the_loop() {
    let lan = Lan::new("reflector-loop", &["a", "b", "edge", CLIENT]).unwrap();
    let key = lan.log_dir.join("link.key");
    std::fs::write(&key, "loop test key\n").unwrap();
    let key = key.to_string_lossy().into_owned();
    let reflector = bin("divisor-reflector").unwrap();
    for (me, other) in [("a", "b"), ("b", "a")] {
        lan.spawn_in(
            me,
            me,
            &reflector,
            [
                "--role",
                "intermediate",
                "--id",
                me,
                "--link-listen",
                &format!("0.0.0.0:{LINK}"),
                "--upstream",
                &lan.addr(other, LINK).to_string(),
                "--link-key-file",
                &key,
                "--http-listen",
                &format!("0.0.0.0:{HTTP}"),
            ],
        )
        .unwrap();
    }
    lan.spawn_in(
        "edge",
        "edge",
        &reflector,
        [
            "--role",
            "public",
            "--id",
            "edge",
            "--upstream",
            &lan.addr("a", LINK).to_string(),
            "--link-key-file",
            &key,
            "--rtsp-listen",
            "0.0.0.0:8554",
        ],
    )
    .unwrap();
    lan.wait_listening("edge", 8554, Duration::from_secs(20))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let url = format!("rtsp://{}:8554/live/{CHANNEL}", lan.ip("edge"));
    let out = lan
        .run_in(
            CLIENT,
            "ffprobe",
            [
                "-v",
                "error",
                "-rtsp_transport",
                "tcp",
                "-timeout",
                "10000000",
                &url,
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        !out.status.is_some_and(|s| s.success()),
        "ffprobe played a channel nobody has: {}",
        out.stdout
    );
    let logs = format!("{}{}{}", lan.log("a"), lan.log("b"), lan.log("edge"));
    assert!(
        logs.contains("routing loop"),
        "no clear loop error:\n{}",
        lan.logs_report(20)
    );
    // No storm: the refusal travels once; the links carry only pings afterwards.
    std::thread::sleep(Duration::from_secs(2));
    for n in ["a", "b"] {
        let (code, body) = lan
            .http_get(CLIENT, &format!("http://{}:{HTTP}/status", lan.ip(n)))
            .unwrap();
        assert_eq!(code, 200);
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            s["channels"].as_array().is_some_and(|c| c.is_empty()),
            "{n}: {s}"
        );
        let msgs = s["upstreams"][0]["messages_in"]
            .as_u64()
            .unwrap_or(u64::MAX) as f64;
        let uptime = s["uptime_seconds"].as_f64().unwrap_or(0.0);
        // Pongs to its pings come 20 a second; a storm is thousands.
        let bound = 30.0 * uptime + 50.0;
        assert!(
            msgs < bound,
            "{n} received {msgs} messages from its upstream in {uptime:.1} s: a storm"
        );
    }
    lan.check_alive().unwrap();
}

#[test]
fn chromium_plays_over_whep_at_both_public_reflectors() {
    let tree = Tree::start(
        "reflector-tree-whep",
        TreeOptions {
            encoder_config: Some(divisor_tests::media::WEB_LIVE_CONFIG),
            ..TreeOptions::default()
        },
    )
    .unwrap();
    let mut checks = Checks::new();
    for p in PUBLICS {
        let url = format!("http://{}:{HTTP}/play/{CHANNEL}/web", tree.lan.ip(p));
        let shot = tree.lan.log_dir.join(format!("play-{p}.png"));
        match divisor_tests::browser::play_on_lan(&tree.lan, CLIENT, &url, 8, &shot) {
            Ok(pb) => {
                eprintln!(
                    "{p}: {:?} {:?} frames {} -> {}, audio {:?} {} packets",
                    pb.connection_state(),
                    pb.video_mime(),
                    pb.frames_first(),
                    pb.frames_last(),
                    pb.audio_mime(),
                    pb.audio_packets()
                );
                checks.check(pb.connection_state() == Some("connected"), || {
                    format!("{p}: connection state {:?}", pb.connection_state())
                });
                checks.check(pb.video_mime() == Some("video/H264"), || {
                    format!("{p}: video {:?}", pb.video_mime())
                });
                checks.check(pb.frames_last() > pb.frames_first() + 10, || {
                    format!("{p}: framesDecoded does not grow: {:?}", pb.frames_series())
                });
                checks.check(pb.audio_packets() > 0, || format!("{p}: no Opus packets"));
                checks.check(pb.page_errors().is_empty(), || {
                    format!("{p}: page errors {:?}", pb.page_errors())
                });
            }
            Err(e) => {
                checks.check(false, || format!("chromium {url}: {e:#}"));
            }
        }
    }
    let subs = tree.encoder_subscriptions().unwrap_or(99);
    checks.check(subs <= 1, || {
        format!("the encoder unit holds {subs} subscriptions for two browsers on two edges")
    });
    tree.lan.check_alive().unwrap();
    checks.finish();
}
