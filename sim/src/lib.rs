//! `divisor-sim`: a deterministic discrete-event simulator of the reflector tree at
//! internet scale, running the *same* sans-IO controller core as `divisor-controller`
//! (registry, liveness, repair, the tree builder and placement, statistics folded with
//! `aggregate`, the redirect and scale policies) with simulated reflectors, links and
//! viewers in place of sockets.
//!
//! - [`config`]: the command line and the validated [`SimConfig`].
//! - [`events`]: the deterministic event queue.
//! - [`viewers`]: the arrival curve, session lengths, viewer cohorts.
//! - [`world`]: reflectors, links, viewers and the controller, event by event.
//! - [`report`]: what is measured, and the JSON [`Summary`].
//! - [`plot`]: the PNG plots.
//!
//! Same seed, same summary (apart from wall time and memory): one seeded ChaCha RNG,
//! events ordered by time then by push order, and no iteration over hash maps.

pub mod config;
pub mod events;
pub mod plot;
pub mod report;
pub mod viewers;
pub mod world;

pub use config::SimConfig;
pub use report::Summary;

use std::time::Instant;

/// A finished run: the summary and the recorded series (for plots).
pub struct Run {
    pub summary: Summary,
    pub recorder: report::Recorder,
}

/// Run `cfg` to its end. `progress(now_ms, viewers)` is called about once per simulated
/// minute.
pub fn run(cfg: &SimConfig, progress: impl FnMut(u64, u64)) -> Run {
    let start = Instant::now();
    let mut w = world::World::new(cfg.clone());
    w.run(progress);
    let wall_s = start.elapsed().as_secs_f64();
    let summary = Summary::new(cfg, &w.rec, wall_s, report::peak_rss_mb());
    Run {
        summary,
        recorder: std::mem::take(&mut w.rec),
    }
}
