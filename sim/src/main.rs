//! `divisor-sim`: see the crate docs and `--help`.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::Parser;
use divisor_sim::config::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn main() -> Result<()> {
    let args = Args::parse();
    let out = args.out.clone();
    let quiet = args.quiet;
    let cfg = args.into_config().context("bad options")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let secs = cfg.duration_ms / 1000;
    let bar = ProgressBar::new(secs);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} sim s {msg}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    eprintln!(
        "divisor-sim: {} reflectors ({} masters, {} intermediates, {} publics, fan-out {}), peak {} viewers in cohorts of {}, capacity {} per public, {:.1} h, seed {}",
        cfg.reflectors(),
        cfg.masters,
        cfg.intermediates,
        cfg.publics,
        cfg.fan_out,
        match &cfg.arrivals {
            divisor_sim::config::Arrivals::Curve(c) => c.peak,
            divisor_sim::config::Arrivals::Scripted(_) => 0,
        },
        cfg.cohort,
        cfg.capacity,
        cfg.duration_ms as f64 / 3_600_000.0,
        cfg.seed
    );
    let run = divisor_sim::run(&cfg, |now_ms, viewers| {
        bar.set_position(now_ms / 1000);
        bar.set_message(format!("{viewers} viewers"));
    });
    bar.finish_and_clear();

    let json = serde_json::to_string(&run.summary).context("summary to JSON")?;
    let pretty = serde_json::to_string_pretty(&run.summary).context("summary to JSON")?;
    let file = out.join("summary.json");
    std::fs::write(&file, pretty + "\n").with_context(|| format!("writing {}", file.display()))?;
    if let Err(e) = divisor_sim::plot::all(&run.recorder, &out) {
        eprintln!("divisor-sim: plots not written: {e}");
    }
    let mut csv = String::from("t_s,viewers,publics,mean_load,max_load\n");
    for s in &run.recorder.samples {
        csv += &format!(
            "{},{},{},{:.4},{:.4}\n",
            s.t_ms / 1000,
            s.viewers,
            s.publics,
            s.mean_load,
            s.max_load
        );
    }
    std::fs::write(out.join("samples.csv"), csv)
        .with_context(|| format!("writing into {}", out.display()))?;
    std::fs::write(
        out.join("controller-metrics.txt"),
        &run.recorder.controller_metrics,
    )
    .with_context(|| format!("writing into {}", out.display()))?;
    println!("{json}");
    Ok(())
}
