//! PNG plots of a run (plotters, bitmap backend): viewers, load spread and controller
//! messages over time, and the viewers' gap histogram.
//!
//! Text needs a font: DejaVu Sans from the system (Debian `fonts-dejavu-core`), given to
//! plotters' pure-Rust `ab_glyph` renderer, as the bench harness does.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::report::Recorder;

/// Why a plot was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no DejaVuSans.ttf found (install fonts-dejavu-core): plots need a font")]
    NoFont,
    #[error("drawing {file}: {detail}")]
    Draw { file: String, detail: String },
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let Some(bytes) = FONT_PATHS.iter().find_map(|p| std::fs::read(p).ok()) else {
            return false;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::NoFont)
    }
}

fn draw_err(file: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        file: file.display().to_string(),
        detail: e.to_string(),
    }
}

/// One line chart: `series` of (hours, value), each with a label.
fn lines(
    file: &Path,
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), PlotError> {
    let root = BitMapBackend::new(file, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(file, e))?;
    let x_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let y_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| draw_err(file, e))?;
    chart
        .configure_mesh()
        .x_desc("simulated hours")
        .y_desc(y_label)
        .draw()
        .map_err(|e| draw_err(file, e))?;
    let colours = [BLUE, RED, GREEN, MAGENTA];
    for (i, (label, s)) in series.iter().enumerate() {
        let c = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))
            .map_err(|e| draw_err(file, e))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_err(file, e))?;
    root.present().map_err(|e| draw_err(file, e))?;
    Ok(())
}

/// Writes viewers.png, load.png, controller-msgs.png and gaps.png into `dir`.
pub fn all(r: &Recorder, dir: &Path) -> Result<(), PlotError> {
    register_font()?;
    let h = |t_ms: u64| t_ms as f64 / 3_600_000.0;
    let viewers: Vec<(f64, f64)> = r
        .samples
        .iter()
        .map(|s| (h(s.t_ms), s.viewers as f64))
        .collect();
    lines(
        &dir.join("viewers.png"),
        "Concurrent viewers",
        "viewers",
        &[("viewers", viewers)],
    )?;
    let max: Vec<(f64, f64)> = r.samples.iter().map(|s| (h(s.t_ms), s.max_load)).collect();
    let mean: Vec<(f64, f64)> = r.samples.iter().map(|s| (h(s.t_ms), s.mean_load)).collect();
    let ratio: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter(|s| s.mean_load > 0.0)
        .map(|s| (h(s.t_ms), s.max_load / s.mean_load))
        .collect();
    lines(
        &dir.join("load.png"),
        "Public reflector load (viewers / capacity)",
        "load",
        &[("max", max), ("mean", mean), ("max / mean", ratio)],
    )?;
    // Per minute: the busiest second, and the mean.
    let per_min: Vec<(f64, f64, f64)> = r
        .msgs_per_s
        .chunks(60)
        .enumerate()
        .map(|(m, c)| {
            let max = c.iter().copied().max().unwrap_or(0) as f64;
            let mean = c.iter().map(|&x| f64::from(x)).sum::<f64>() / c.len().max(1) as f64;
            (m as f64 / 60.0, max, mean)
        })
        .collect();
    lines(
        &dir.join("controller-msgs.png"),
        "Control messages at the controller (in + out)",
        "messages / s",
        &[
            (
                "busiest second of the minute",
                per_min.iter().map(|p| (p.0, p.1)).collect(),
            ),
            ("mean", per_min.iter().map(|p| (p.0, p.2)).collect()),
        ],
    )?;
    gaps(&dir.join("gaps.png"), r)
}

/// Viewers by gap (100 ms bins; the first bin is "no gap").
fn gaps(file: &Path, r: &Recorder) -> Result<(), PlotError> {
    let mut bins: std::collections::BTreeMap<u64, u64> = Default::default();
    for (&g, &v) in &r.gaps {
        *bins
            .entry(if g == 0 { 0 } else { g / 100 + 1 })
            .or_default() += v;
    }
    let root = BitMapBackend::new(file, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(file, e))?;
    let x_max = bins.keys().next_back().copied().unwrap_or(1) + 1;
    let y_max = bins.values().copied().max().unwrap_or(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Gaps seen by viewers of failed reflectors",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0u64..x_max, 0.0..y_max)
        .map_err(|e| draw_err(file, e))?;
    chart
        .configure_mesh()
        .x_desc("gap (bin 0: none; bin n: (n-1)*100 .. n*100 ms)")
        .y_desc("viewers")
        .draw()
        .map_err(|e| draw_err(file, e))?;
    chart
        .draw_series(
            bins.iter().map(|(&b, &v)| {
                Rectangle::new([(b, 0.0), (b + 1, v as f64)], BLUE.mix(0.6).filled())
            }),
        )
        .map_err(|e| draw_err(file, e))?;
    root.present().map_err(|e| draw_err(file, e))?;
    Ok(())
}
