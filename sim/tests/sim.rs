//! The simulator's must-show cases (issue 22): determinism, a small case checked by
//! hand, and failures whose viewers are all re-homed.

use clap::Parser;
use divisor_sim::config::{Args, Arrivals, Regions, ScriptedCohort, SessionDist, SimConfig};
use divisor_sim::run;

fn cli(args: &[&str]) -> SimConfig {
    let mut v = vec!["divisor-sim", "--quiet"];
    v.extend_from_slice(args);
    Args::try_parse_from(v)
        .expect("options parse")
        .into_config()
        .expect("options are valid")
}

#[test]
fn the_same_seed_gives_the_same_summary() {
    let cfg = cli(&[
        "--reflectors",
        "150",
        "--viewers",
        "20000",
        "--hours",
        "0.75",
        "--start-hour",
        "20",
        "--seed",
        "7",
        "--failures-per-hour",
        "30",
        "--outages-per-day",
        "24",
        "--cohort",
        "5",
    ]);
    let a = run(&cfg, |_, _| {}).summary;
    let b = run(&cfg, |_, _| {}).summary;
    assert_eq!(a.deterministic(), b.deterministic());
    assert!(a.failures > 0 && a.redirect_decisions > 1000, "{a:?}");
    let mut other = cfg.clone();
    other.seed = 8;
    let c = run(&other, |_, _| {}).summary;
    assert_ne!(
        a.deterministic(),
        c.deterministic(),
        "another seed, another run"
    );
}

/// 3 regions, 12 reflectors: 1 master, 2 intermediates, 9 publics (3 per region, equal
/// weights), capacity 200. 90 cohorts of 10 viewers arrive 3 s apart, regions in turn,
/// and stay past the end; no failures.
///
/// Expected, by hand: each region gets 30 cohorts (300 viewers). The redirect policy
/// scores load (viewers / 200) minus 0.3 for the client's own region, so a remote public
/// would win only when 60 viewers emptier than every local one: never, as the regions
/// fill alike. Within a region the least loaded public wins, ties to the smaller id, so
/// the three take cohorts in turn (a region's cohorts come 9 s apart, long after the
/// controller's estimate of the last one settles): 10 cohorts = 100 viewers each, load
/// 0.5 everywhere, max/mean exactly 1 at the end. While they fill, a region's publics
/// differ by at most one cohort (10 viewers = 0.05 load), so from 80 % of the peak on
/// (mean load >= 0.4) max/mean stays <= 0.45 / 0.4 = 1.125. All 900 served. The tree: the master over both
/// intermediates, the 9 publics placed on the one with fewer children (5 and 4): depth 2,
/// largest fan-out 5.
#[test]
fn a_small_tree_spreads_known_arrivals_evenly() {
    let mut cfg = SimConfig::small(3, 1, 2, 9);
    cfg.regions = Regions::uniform(3, 2, 40);
    cfg.duration_ms = 600_000;
    cfg.sample_ms = 10_000;
    cfg.session = SessionDist::Fixed;
    cfg.arrivals = Arrivals::Scripted(
        (0..90)
            .map(|i| ScriptedCohort {
                at_ms: 30_000 + i * 3_000,
                region: (i % 3) as usize,
                k: 10,
                duration_ms: 3_600_000,
            })
            .collect(),
    );
    let r = run(&cfg, |_, _| {});
    let s = r.summary;
    assert_eq!(s.reflectors, 12);
    assert_eq!(s.viewers_served, 900);
    assert_eq!(s.viewers_refused, 0);
    assert_eq!(s.viewers_peak, 900);
    assert_eq!(s.redirect_decisions, 90);
    assert!((s.load_max_at_peak - 0.5).abs() < 1e-9, "{s:?}");
    assert!(s.load_max_over_mean <= 1.125 + 1e-9, "{s:?}");
    let last = r.recorder.samples.last().expect("samples");
    assert_eq!((last.viewers, last.publics), (900, 9));
    assert!((last.max_load - 0.5).abs() < 1e-9 && (last.mean_load - 0.5).abs() < 1e-9);
    assert_eq!(s.tree_depth_max, 2);
    assert_eq!(s.fan_out_max, 5);
    assert_eq!(s.failures, 0);
}

/// 1 % of 300 reflectors fail per hour (3 an hour) for 4 hours: every viewer of a failed
/// public reflector is served again (or left while reconnecting), none gives up, and every
/// failure is seen by the controller.
#[test]
fn failures_rehome_every_affected_viewer() {
    let cfg = cli(&[
        "--reflectors",
        "300",
        "--viewers",
        "30000",
        "--hours",
        "4",
        "--start-hour",
        "18",
        "--seed",
        "3",
        "--failures-per-hour",
        "3",
        "--outages-per-day",
        "0",
        "--cohort",
        "10",
    ]);
    let s = run(&cfg, |_, _| {}).summary;
    assert!(s.failures >= 6, "several must fail: {}", s.failures);
    assert!(
        s.rehome_needed > 0,
        "some failed reflector had viewers: {s:?}"
    );
    assert_eq!(s.rehome_failed, 0, "{s:?}");
    assert_eq!(s.rehomed + s.rehome_abandoned, s.rehome_needed, "{s:?}");
    assert_eq!(s.dead_undeclared, 0, "{s:?}");
    assert_eq!(s.repairs_unfinished, 0, "{s:?}");
    assert!(s.served_ratio >= 0.999, "{s:?}");
}

#[test]
fn bad_options_are_errors_not_panics() {
    let bad = |a: &[&str]| {
        let mut v = vec!["divisor-sim"];
        v.extend_from_slice(a);
        Args::try_parse_from(v).map(|a| a.into_config())
    };
    assert!(matches!(bad(&["--reflectors", "2"]), Ok(Err(_))));
    assert!(matches!(bad(&["--viewers", "0"]), Ok(Err(_))));
    assert!(matches!(bad(&["--hours=0"]), Ok(Err(_))));
    assert!(matches!(bad(&["--hours=-1"]), Ok(Err(_))));
    assert!(matches!(bad(&["--client-detect-ms", "5..2"]), Ok(Err(_))));
    assert!(matches!(bad(&["--cohort", "0"]), Ok(Err(_))));
    let e = Regions::from_toml("[[region]]\nname = \"a\"\nlatency_ms = [1, 2]\n", "r.toml");
    assert!(e.unwrap_err().to_string().contains("one per region"));
}

/// A tier too small for the evening: the controller's scale policy deploys public
/// reflectors (booting 20 s each) as the audience grows, and removes them again, drained,
/// once it has gone. The same scale code as `divisor-controller --deploy`.
#[test]
fn the_controller_deploys_for_the_evening_and_removes_after() {
    let cfg = cli(&[
        "--reflectors",
        "12",
        "--viewers",
        "4000",
        "--capacity",
        "200",
        "--hours",
        "5",
        "--start-hour",
        "19",
        "--seed",
        "3",
        "--scale",
    ]);
    let s = run(&cfg, |_, _| {}).summary;
    eprintln!(
        "deployed {}, removed {}, served {:.4}, peak {}",
        s.deployed, s.removed, s.served_ratio, s.viewers_peak
    );
    assert!(
        s.deployed >= 10,
        "4,000 viewers need about 20 publics of 200 at 0.8 load: {s:?}"
    );
    assert!(s.removed > 0, "the night shrinks the tier again: {s:?}");
    assert!(s.served_ratio > 0.95, "{s:?}");
}
