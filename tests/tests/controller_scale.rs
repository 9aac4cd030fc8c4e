//! The controller grows and shrinks its public tier with the audience, deploying
//! reflectors itself (`divisor-controller --deploy`), with real RTSP viewers (ffmpeg)
//! that start at the controller's URL and follow its 302.
//!
//! - local backend: viewers ramp from 0 to 3x what the two minimum public reflectors
//!   take, then back to 0. The tier grows, every viewer is admitted and plays, nobody
//!   is refused, and the tier shrinks back to its minimum; draining reflectors keep
//!   their viewers until they leave. `--cleanup` removes what was deployed.
//! - libvirt backend: the same life cycle on LXC containers of the real daemon.
//!
//! Scale-out timings (watermark crossed → new reflector serving) are printed, from the
//! controller's own log, for bench/RESULTS.md.

use divisor_tests::clients::{progress_frames, spawn_ffmpeg_on, trouble_lines};
use divisor_tests::ctl_scale::{Backend, CtlScale, ScaleOptions, CLIENT, CTL};
use std::time::{Duration, Instant};

/// The sum of every sample of `name` in a metrics text.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `key=VALUE` numbers from the controller's log lines containing `what`.
fn logged(log: &str, what: &str, key: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let v = l.split(&format!("{key}=")).nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

/// Starts viewer `name` for `secs` seconds.
fn viewer(t: &CtlScale, name: &str, secs: u64) {
    spawn_ffmpeg_on(&t.lan, CLIENT, name, &t.url(), secs, true).unwrap();
}

/// Waits for viewers `names` to exit and checks each played its whole time.
fn check_viewers(t: &CtlScale, names: &[String], secs: u64) -> Vec<String> {
    let mut bad = Vec::new();
    for n in names {
        let status = t.lan.wait_exit(n, Duration::from_secs(secs + 60));
        let frames = progress_frames(&t.lan.stdout_of(n));
        // ffmpeg's null muxer remarks on a dts it re-based (the first RTCP sender report
        // moves a stream's clock by a few ms): a muxer remark, not a decode error.
        let trouble: Vec<String> = trouble_lines(&t.lan.log(n))
            .into_iter()
            .filter(|l| !l.contains("non monotonically increasing dts to muxer"))
            .collect();
        // The test source runs at 25 fps; -c copy counts packets of the video stream.
        let want = secs * 20;
        if !matches!(status, Ok(s) if s.success()) || frames < want || !trouble.is_empty() {
            bad.push(format!(
                "{n}: {status:?}, {frames} frames (want {want}), {trouble:?}"
            ));
        }
    }
    bad
}

#[test]
fn the_local_tier_grows_with_the_audience_and_shrinks_back() {
    const CAP: u32 = 6;
    const VIEWERS: usize = 36; // 3x what the two minimum publics take
    const SECS: u64 = 50;
    let t = CtlScale::start(
        "controller_scale_local",
        ScaleOptions {
            backend: Backend::Local,
            max_viewers: CAP,
            min_public: 2,
            max_public: 8,
            high_water: 0.5,
            low_water: 0.2,
        },
    )
    .unwrap();
    t.wait_for(
        Duration::from_secs(60),
        "the minimum of two public reflectors deployed",
        |t| Ok(t.publics_up()? == 2),
    )
    .unwrap();
    assert_eq!(t.deployed_now().len(), 2, "{:?}", t.deployed_now());

    // Ramp up: one viewer every 1.2 s.
    let names: Vec<String> = (0..VIEWERS).map(|i| format!("v{i}")).collect();
    let mut peak = 0;
    for n in &names {
        viewer(&t, n, SECS);
        let deadline = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < deadline {
            peak = peak.max(t.publics_up().unwrap_or(0));
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let bad = check_viewers(&t, &names, SECS);
    let m = t.metrics().unwrap();
    let refused = total(&m, "divisor_controller_redirects_refused_total");
    let deploys = total(
        &m,
        "divisor_controller_scale_actions_total{action=\"deploy\"",
    );
    eprintln!("peak public reflectors up: {peak}; deploys: {deploys}; refused: {refused}");
    assert!(
        bad.is_empty(),
        "viewers that did not play through: {bad:#?}"
    );
    assert_eq!(
        refused, 0.0,
        "no viewer refused while capacity could be added\n{m}"
    );
    assert!(
        peak * CAP as usize >= VIEWERS,
        "{peak} publics of {CAP} cannot have held {VIEWERS} viewers"
    );

    // The audience has left: back to the minimum, the drained ones removed.
    t.wait_for(
        Duration::from_secs(150),
        "the tier back at its minimum of 2, the rest removed",
        |t| Ok(t.publics_up()? == 2 && t.deployed_now().len() == 2),
    )
    .unwrap();
    let m = t.metrics().unwrap();
    let undeploys = total(
        &m,
        "divisor_controller_scale_actions_total{action=\"undeploy\"",
    );
    assert_eq!(
        undeploys,
        deploys - 2.0,
        "every reflector deployed above the minimum was removed\n{m}"
    );
    let log = t.lan.log(CTL);
    let boots = logged(&log, "deployed reflector joined", "boot_ms");
    eprintln!("local backend: deploy → HELLO (ms): {boots:?}");
    assert!(!boots.is_empty());

    t.stop_controller().unwrap();
    assert!(
        t.deployed_now().is_empty(),
        "--cleanup left {:?}",
        t.deployed_now()
    );
}

#[test]
fn libvirt_containers_join_serve_drain_and_are_removed() {
    const CAP: u32 = 2;
    const SECS: u64 = 25;
    let t = CtlScale::start(
        "controller_scale_libvirt",
        ScaleOptions {
            backend: Backend::Libvirt,
            max_viewers: CAP,
            min_public: 1,
            max_public: 3,
            high_water: 0.5,
            low_water: 0.2,
        },
    )
    .unwrap();
    t.wait_for(
        Duration::from_secs(60),
        "a public reflector deployed as a libvirt container",
        |t| Ok(t.publics_up()? == 1),
    )
    .unwrap();
    let domains = t.deployed_now();
    assert_eq!(domains, vec!["divisor-auto-public-1".to_string()]);

    // Two viewers fill it past the high-water mark: a second container joins, and a
    // third viewer is sent there.
    let mut names: Vec<String> = vec!["lv0".into(), "lv1".into()];
    for n in &names {
        viewer(&t, n, SECS);
        std::thread::sleep(Duration::from_millis(500));
    }
    t.wait_for(
        Duration::from_secs(40),
        "a second libvirt public reflector serving",
        |t| Ok(t.publics_up()? == 2),
    )
    .unwrap();
    viewer(&t, "lv2", SECS);
    names.push("lv2".into());
    let bad = check_viewers(&t, &names, SECS);
    assert!(
        bad.is_empty(),
        "viewers that did not play through: {bad:#?}"
    );
    let m = t.metrics().unwrap();
    assert_eq!(total(&m, "divisor_controller_redirects_refused_total"), 0.0);
    assert!(
        m.contains("divisor_controller_client_redirects_total{target=\"auto-public-2\"} 1"),
        "the third viewer went to the new container\n{m}"
    );

    // Everyone left: one drains, is KILLed and its domain removed.
    t.wait_for(
        Duration::from_secs(60),
        "the tier back at one container",
        |t| Ok(t.publics_up()? == 1 && t.deployed_now().len() == 1),
    )
    .unwrap();
    let log = t.lan.log(CTL);
    let boots = logged(&log, "deployed reflector joined", "boot_ms");
    eprintln!("libvirt backend: deploy → HELLO (ms): {boots:?}");
    t.stop_controller().unwrap();
    assert!(
        t.deployed_now().is_empty(),
        "--cleanup left {:?}",
        t.deployed_now()
    );
}
