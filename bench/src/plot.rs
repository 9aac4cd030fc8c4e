//! Plots with `plotters`, each as PNG and SVG: clients versus p99 lateness per server,
//! CPU per unit versus clients, and the lateness distribution at each server's capacity.
//!
//! PNG text needs a font: DejaVu Sans is loaded from the system (Debian
//! `fonts-dejavu-core`) and registered with plotters' pure-Rust `ab_glyph` renderer.

use crate::run::RunResults;
use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = (|| {
            let path = FONT_PATHS
                .iter()
                .find(|p| Path::new(p).exists())
                .context("no DejaVuSans.ttf: install the Debian package fonts-dejavu-core")?;
            let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| anyhow::anyhow!("cannot load font {path}"))?;
            Ok(())
        })();
    });
    res
}

/// Writes every plot into `dir` as `<name>.png` and `<name>.svg`.
pub fn all(r: &RunResults, dir: &Path) -> Result<()> {
    register_font()?;
    both(
        dir,
        "clients-vs-lateness",
        r,
        clients_vs_lateness_png,
        clients_vs_lateness_svg,
    )?;
    both(dir, "cpu-per-unit", r, cpu_png, cpu_svg)?;
    both(dir, "lateness-distribution", r, dist_png, dist_svg)?;
    Ok(())
}

type PngArea<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type SvgArea<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn both(
    dir: &Path,
    name: &str,
    r: &RunResults,
    png: fn(&RunResults, &PngArea) -> Result<()>,
    svg: fn(&RunResults, &SvgArea) -> Result<()>,
) -> Result<()> {
    let p = dir.join(format!("{name}.png"));
    {
        let area = BitMapBackend::new(&p, (900, 560)).into_drawing_area();
        png(r, &area)?;
        area.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let s = dir.join(format!("{name}.svg"));
    {
        let area = SVGBackend::new(&s, (900, 560)).into_drawing_area();
        svg(r, &area)?;
        area.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

fn clients_vs_lateness_png(r: &RunResults, a: &PngArea) -> Result<()> {
    clients_vs_lateness(r, a)
}
fn clients_vs_lateness_svg(r: &RunResults, a: &SvgArea) -> Result<()> {
    clients_vs_lateness(r, a)
}
fn cpu_png(r: &RunResults, a: &PngArea) -> Result<()> {
    cpu(r, a)
}
fn cpu_svg(r: &RunResults, a: &SvgArea) -> Result<()> {
    cpu(r, a)
}
fn dist_png(r: &RunResults, a: &PngArea) -> Result<()> {
    dist(r, a)
}
fn dist_svg(r: &RunResults, a: &SvgArea) -> Result<()> {
    dist(r, a)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

fn series_label(server: &str, workload: &str) -> String {
    format!("{server} ({workload})")
}

/// p99 lateness against clients, one line per server (y capped at 20x the bar).
fn clients_vs_lateness<DB: DrawingBackend>(
    r: &RunResults,
    area: &DrawingArea<DB, Shift>,
) -> Result<()> {
    area.fill(&WHITE).map_err(err)?;
    let max_n = r
        .searches
        .iter()
        .flat_map(|s| s.levels.iter().map(|l| l.clients))
        .max()
        .unwrap_or(1) as f64;
    let max_y = r
        .searches
        .iter()
        .flat_map(|s| s.levels.iter().filter_map(|l| l.p99_lateness_ms))
        .fold(r.bar.max_p99_lateness_ms * 1.5, f64::max)
        .min(r.bar.max_p99_lateness_ms * 20.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "p99 lateness vs clients (quality bar dashed)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_n * 1.05, 0f64..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc("p99 lateness (ms)")
        .draw()
        .map_err(err)?;
    let bar = r.bar.max_p99_lateness_ms;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, bar), (max_n * 1.05, bar)],
            6,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
    for (i, s) in r.searches.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .levels
            .iter()
            .filter_map(|l| l.p99_lateness_ms.map(|p| (l.clients as f64, p.min(max_y))))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(series_label(&s.server, &s.workload))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// CPU (% of one core) per unit against clients.
fn cpu<DB: DrawingBackend>(r: &RunResults, area: &DrawingArea<DB, Shift>) -> Result<()> {
    area.fill(&WHITE).map_err(err)?;
    let max_n = r
        .searches
        .iter()
        .flat_map(|s| s.levels.iter().map(|l| l.clients))
        .max()
        .unwrap_or(1) as f64;
    let max_y = r
        .searches
        .iter()
        .flat_map(|s| {
            s.levels
                .iter()
                .flat_map(|l| l.cpu.units.iter().map(|u| u.cpu_pct))
        })
        .fold(100.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("CPU per unit vs clients", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_n * 1.05, 0f64..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc("CPU (% of one core)")
        .draw()
        .map_err(err)?;
    let mut i = 0;
    for s in &r.searches {
        let units: Vec<String> = s
            .levels
            .first()
            .map(|l| l.cpu.units.iter().map(|u| u.unit.clone()).collect())
            .unwrap_or_default();
        for u in units {
            let color = Palette99::pick(i).to_rgba();
            i += 1;
            let pts: Vec<(f64, f64)> = s
                .levels
                .iter()
                .filter_map(|l| {
                    l.cpu
                        .units
                        .iter()
                        .find(|x| x.unit == u)
                        .map(|x| (l.clients as f64, x.cpu_pct))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(err)?
                .label(format!("{}: {u}", s.server))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Cumulative distribution of lateness at each server's capacity (its best level).
fn dist<DB: DrawingBackend>(r: &RunResults, area: &DrawingArea<DB, Shift>) -> Result<()> {
    area.fill(&WHITE).map_err(err)?;
    let curves: Vec<(String, Vec<f64>)> = r
        .searches
        .iter()
        .filter_map(|s| {
            let l = s.best()?;
            let mut v = l.lateness_ms.clone();
            v.sort_by(f64::total_cmp);
            (!v.is_empty()).then(|| (format!("{} N={}", s.server, l.clients), v))
        })
        .collect();
    let lo = curves
        .iter()
        .filter_map(|(_, v)| v.first().copied())
        .fold(0.0, f64::min);
    let hi = curves
        .iter()
        .filter_map(|(_, v)| v.last().copied())
        .fold(1.0, f64::max)
        .min(r.bar.max_p99_lateness_ms * 5.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "lateness distribution at capacity (CDF)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("lateness vs RTCP SR mapping (ms)")
        .y_desc("fraction of packets")
        .draw()
        .map_err(err)?;
    for (i, (name, v)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let n = v.len() as f64;
        let step = (v.len() / 400).max(1);
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(k, &x)| (x.min(hi), (k + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    Ok(())
}
