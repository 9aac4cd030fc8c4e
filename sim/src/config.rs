//! What a run simulates: the command line (clap) and the validated [`SimConfig`] the
//! world runs from. Tests build a [`SimConfig`] directly.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// A bad option or regions file; every message says which value and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Regions, their share of the viewers and the one-way latency between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Regions {
    pub names: Vec<String>,
    /// Share of viewers (normalised to sum 1); public reflectors are spread the same way.
    pub weights: Vec<f64>,
    /// One-way latency in ms, `latency_ms[a][b]`.
    pub latency_ms: Vec<Vec<u64>>,
    /// Where the controller runs.
    pub controller: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegions {
    controller: Option<String>,
    region: Vec<RawRegion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    #[serde(default = "one")]
    weight: f64,
    /// One-way ms to every region, in file order.
    latency_ms: Vec<u64>,
}

fn one() -> f64 {
    1.0
}

impl Regions {
    /// Five regions, latencies roughly those between cloud regions (one-way, ms).
    pub fn default_five() -> Regions {
        let names = ["na-east", "na-west", "eu-west", "asia-east", "sa-east"];
        Regions {
            names: names.iter().map(|s| s.to_string()).collect(),
            weights: vec![0.28, 0.17, 0.27, 0.18, 0.10],
            latency_ms: vec![
                vec![3, 32, 40, 95, 60],
                vec![32, 3, 70, 60, 90],
                vec![40, 70, 3, 110, 95],
                vec![95, 60, 110, 3, 150],
                vec![60, 90, 95, 150, 3],
            ],
            controller: 0,
        }
    }

    /// `n` equal regions, `intra` ms within one and `inter` ms between two.
    pub fn uniform(n: usize, intra: u64, inter: u64) -> Regions {
        Regions {
            names: (0..n).map(|i| format!("r{i}")).collect(),
            weights: vec![1.0 / n as f64; n],
            latency_ms: (0..n)
                .map(|a| (0..n).map(|b| if a == b { intra } else { inter }).collect())
                .collect(),
            controller: 0,
        }
    }

    /// Reads a regions file:
    ///
    /// ```toml
    /// controller = "eu"          # optional, default the first region
    /// [[region]]
    /// name = "eu"
    /// weight = 0.6               # share of viewers, default 1 (normalised)
    /// latency_ms = [3, 40]       # one-way ms to each region, in file order
    /// [[region]]
    /// name = "us"
    /// weight = 0.4
    /// latency_ms = [40, 3]
    /// ```
    pub fn from_file(p: &Path) -> Result<Regions, ConfigError> {
        let file = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file)
    }

    pub fn from_toml(text: &str, file: &str) -> Result<Regions, ConfigError> {
        let raw: RawRegions = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let n = raw.region.len();
        let err = |m: String| ConfigError::Syntax {
            file: file.to_string(),
            message: m,
        };
        if n == 0 || n > 255 {
            return Err(err(format!(
                "{n} regions: give 1 to 255 [[region]] entries"
            )));
        }
        let names: Vec<String> = raw.region.iter().map(|r| r.name.clone()).collect();
        for (i, r) in raw.region.iter().enumerate() {
            if r.name.is_empty() || names[..i].contains(&r.name) {
                return Err(err(format!(
                    "region #{}: empty or duplicate name {:?}",
                    i + 1,
                    r.name
                )));
            }
            if !(r.weight.is_finite() && r.weight > 0.0) {
                return Err(err(format!("region {:?}: weight must be > 0", r.name)));
            }
            if r.latency_ms.len() != n {
                return Err(err(format!(
                    "region {:?}: latency_ms has {} entries, want one per region ({n})",
                    r.name,
                    r.latency_ms.len()
                )));
            }
        }
        let controller = match &raw.controller {
            None => 0,
            Some(c) => names
                .iter()
                .position(|n| n == c)
                .ok_or_else(|| err(format!("controller region {c:?} is not a [[region]]")))?,
        };
        let total: f64 = raw.region.iter().map(|r| r.weight).sum();
        Ok(Regions {
            weights: raw.region.iter().map(|r| r.weight / total).collect(),
            latency_ms: raw.region.into_iter().map(|r| r.latency_ms).collect(),
            names,
            controller,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn latency(&self, a: usize, b: usize) -> u64 {
        self.latency_ms[a][b]
    }
}

/// How long a viewer stays.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionDist {
    /// Every session lasts the mean.
    Fixed,
    /// Memoryless.
    Exponential,
    /// Heavy-tailed (most leave soon, a few stay for hours), `--session-sigma`.
    Lognormal,
}

/// The viewer curve: a daily curve, a flash crowd on top, scaled so the expected peak of
/// concurrent viewers is `peak`.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub peak: u64,
    /// The daily curve's low, as a share of its high.
    pub base: f64,
    /// Hour of day of the daily high.
    pub peak_hour: f64,
    /// Hour of day at simulated time 0.
    pub start_hour: f64,
    /// The flash crowd: hour of day it starts (None: no flash crowd).
    pub flash_hour: Option<f64>,
    /// How long it lasts at full strength.
    pub flash_minutes: f64,
    /// Its size as a share of the daily high.
    pub flash_extra: f64,
    /// How long it takes to build up (it fades over three times as long).
    pub flash_ramp_minutes: f64,
}

/// One viewer cohort of a scripted run: `k` viewers of `region` arriving at `at_ms`
/// for `duration_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptedCohort {
    pub at_ms: u64,
    pub region: usize,
    pub k: u32,
    pub duration_ms: u64,
}

/// Where the arrivals come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Arrivals {
    /// Poisson arrivals following [`Curve`], cohorts of `cohort` viewers.
    Curve(Curve),
    /// Exactly these (tests).
    Scripted(Vec<ScriptedCohort>),
}

/// Everything a run needs. Times in ms.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub duration_ms: u64,
    pub regions: Regions,
    pub masters: usize,
    pub intermediates: usize,
    pub publics: usize,
    /// Max children per node (the topology's `fan_out`).
    pub fan_out: usize,
    /// Max viewers per public reflector.
    pub capacity: u32,
    pub arrivals: Arrivals,
    /// Viewers per cohort (one redirect decision each).
    pub cohort: u32,
    pub session: SessionDist,
    pub session_mean_ms: u64,
    pub session_sigma: f64,
    /// Random reflector failures per hour (any tier, uniformly over the live ones).
    pub failures_per_hour: f64,
    /// Correlated failures: outages per day, each taking `outage_fraction` of one
    /// region's reflectors within `outage_spread_ms`.
    pub outages_per_day: f64,
    pub outage_fraction: f64,
    pub outage_spread_ms: u64,
    /// A failed reflector restarts and says HELLO again after this long (None: never).
    pub recover_ms: Option<u64>,
    /// Failures start after this long (the tree must have formed).
    pub failures_after_ms: u64,
    /// A viewer whose public reflector stops notices after a time uniform in this range.
    pub client_detect_ms: (u64, u64),
    /// A viewer refused or sent to a dead reflector asks again after this long.
    pub client_retry_ms: u64,
    /// Attempts before a viewer gives up.
    pub client_attempts: u32,
    /// Connecting and getting the first frames once redirected (besides the RTT).
    pub client_join_ms: u64,
    /// Data plane: a parent silent this long is switched to the backup (`--silence-ms`).
    pub silence_ms: u64,
    /// The reflector's watch of its primary runs this often (client.rs: 100 ms).
    pub watch_ms: u64,
    /// A public reflector plays out this late (`--edge-delay-ms`): a shorter upstream
    /// gap never reaches its viewers.
    pub edge_delay_ms: u64,
    /// The controller's and the nodes' statistics period.
    pub stats_ms: u64,
    pub ping_ms: u64,
    /// Load-spread samples this often.
    pub sample_ms: u64,
    /// Let the controller deploy and remove reflectors (the scale policy with `deploy`).
    pub scale: bool,
    /// A deployed reflector says HELLO this long after the controller asks for it.
    pub boot_ms: u64,
    /// Per-viewer bitrate, for egress figures.
    pub bitrate_bps: u64,
}

/// The command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "divisor-sim",
    version,
    about = "Deterministic discrete-event simulation of the reflector tree at scale",
    long_about = "Runs the real tree controller core (divisor_reflector::controller::Controller: \
liveness, repair, statistics, redirect and scale policies, the tree builder) against simulated \
reflectors, links and viewers. Viewers come in cohorts (one redirect decision per cohort). \
Writes summary.json and PNG plots into --out; the last line on stdout is the summary as JSON."
)]
pub struct Args {
    /// Initial reflectors (masters + intermediates + publics).
    #[arg(long, default_value_t = 100)]
    pub reflectors: usize,
    /// Peak concurrent viewers (the arrival curve is scaled to it).
    #[arg(long, default_value_t = 100_000)]
    pub viewers: u64,
    /// Simulated hours.
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Random reflector failures per hour (uniform over live reflectors, any tier).
    #[arg(long, default_value_t = 0.0)]
    pub failures_per_hour: f64,
    /// Output folder for summary.json and the plots.
    #[arg(long, default_value = "sim-out")]
    pub out: PathBuf,
    /// Regions file (TOML, see the crate docs); default: five built-in regions.
    #[arg(long)]
    pub regions: Option<PathBuf>,
    /// Masters (default: N/1000, 2 to 8).
    #[arg(long)]
    pub masters: Option<usize>,
    /// Intermediates (default: about sqrt(N)).
    #[arg(long)]
    pub intermediates: Option<usize>,
    /// Max children per node (default: 1.3 x what an even tree needs, at least 16).
    #[arg(long)]
    pub fan_out: Option<usize>,
    /// Max viewers per public reflector (default: 1.5 x peak / publics).
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Viewers per cohort, one redirect decision each (default: peak / 80,000, at least 1).
    #[arg(long)]
    pub cohort: Option<u32>,
    /// Session length distribution.
    #[arg(long, value_enum, default_value_t = SessionDist::Lognormal)]
    pub session: SessionDist,
    /// Mean session length, minutes.
    #[arg(long, default_value_t = 60.0)]
    pub session_mean_min: f64,
    /// Sigma of the lognormal session length.
    #[arg(long, default_value_t = 1.0)]
    pub session_sigma: f64,
    /// The daily curve's low as a share of its high.
    #[arg(long, default_value_t = 0.15)]
    pub curve_base: f64,
    /// Hour of day of the daily high.
    #[arg(long, default_value_t = 21.0)]
    pub peak_hour: f64,
    /// Hour of day the simulation starts at.
    #[arg(long, default_value_t = 0.0)]
    pub start_hour: f64,
    /// Hour of day the flash crowd starts (negative: none).
    #[arg(long, default_value_t = 20.5)]
    pub flash_hour: f64,
    /// Minutes the flash crowd lasts.
    #[arg(long, default_value_t = 45.0)]
    pub flash_minutes: f64,
    /// Flash crowd size, share of the daily high.
    #[arg(long, default_value_t = 0.5)]
    pub flash_extra: f64,
    /// Minutes the flash crowd takes to build up.
    #[arg(long, default_value_t = 5.0)]
    pub flash_ramp_min: f64,
    /// Correlated outages per day (each takes a share of one region's reflectors).
    #[arg(long, default_value_t = 1.0)]
    pub outages_per_day: f64,
    /// Share of the region's reflectors an outage takes.
    #[arg(long, default_value_t = 0.1)]
    pub outage_fraction: f64,
    /// An outage's failures are spread over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub outage_spread_secs: f64,
    /// A failed reflector restarts after this many minutes (negative: never).
    #[arg(long, default_value_t = 10.0)]
    pub recover_min: f64,
    /// A viewer of a failed public notices after a time uniform in MIN..MAX ms.
    #[arg(long, default_value = "2000..5000")]
    pub client_detect_ms: String,
    /// A refused viewer asks again after this many ms.
    #[arg(long, default_value_t = 1000)]
    pub client_retry_ms: u64,
    /// Attempts before a viewer gives up.
    #[arg(long, default_value_t = 5)]
    pub client_attempts: u32,
    /// Connect and first frames after a redirect, ms (besides the round trip).
    #[arg(long, default_value_t = 300)]
    pub client_join_ms: u64,
    /// Data plane silence before a switch to the backup parent (relay --silence-ms).
    #[arg(long, default_value_t = 150)]
    pub silence_ms: u64,
    /// Public reflector play-out delay (relay --edge-delay-ms).
    #[arg(long, default_value_t = 300)]
    pub edge_delay_ms: u64,
    /// Statistics period, seconds (reflectors' and controller's --stats-secs).
    #[arg(long, default_value_t = 2.0)]
    pub stats_secs: f64,
    /// Let the controller deploy and remove reflectors (its scale policy with deploy).
    #[arg(long)]
    pub scale: bool,
    /// Seconds a deployed reflector takes to boot and say HELLO.
    #[arg(long, default_value_t = 20.0)]
    pub boot_secs: f64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The tier split for `n` reflectors: a handful of masters, about sqrt(n)
/// intermediates, the rest public.
pub fn tiers(n: usize, masters: Option<usize>, ints: Option<usize>) -> (usize, usize, usize) {
    let m = masters.unwrap_or(if n < 6 { 1 } else { (n / 1000).clamp(2, 8) });
    let i = ints.unwrap_or(if n < 6 {
        1
    } else {
        ((n - m) as f64).sqrt().round().max(2.0) as usize
    });
    (m, i, n.saturating_sub(m + i))
}

fn ms(what: &str, v: f64) -> Result<u64, ConfigError> {
    if v.is_finite() && (0.0..1e15).contains(&v) {
        Ok(v.round() as u64)
    } else {
        Err(invalid(format!("{what}: {v} is not a duration >= 0")))
    }
}

impl Args {
    /// Check the options and work out the defaults that depend on others.
    pub fn into_config(self) -> Result<SimConfig, ConfigError> {
        let regions = match &self.regions {
            Some(p) => Regions::from_file(p)?,
            None => Regions::default_five(),
        };
        if self.viewers == 0 {
            return Err(invalid("--viewers must be at least 1"));
        }
        if !(self.hours.is_finite() && self.hours > 0.0 && self.hours <= 24.0 * 365.0) {
            return Err(invalid("--hours must be > 0 (and at most a year)"));
        }
        let (masters, intermediates, publics) =
            tiers(self.reflectors, self.masters, self.intermediates);
        if masters == 0 || intermediates == 0 || publics == 0 {
            return Err(invalid(format!(
                "--reflectors {}: need at least one master, intermediate and public (got {masters}, {intermediates}, {publics})",
                self.reflectors
            )));
        }
        let fan_out = self.fan_out.unwrap_or_else(|| {
            let need = intermediates
                .div_ceil(masters)
                .max(publics.div_ceil(intermediates));
            ((need as f64 * 1.3).ceil() as usize).max(16)
        });
        if fan_out == 0 {
            return Err(invalid("--fan-out must be at least 1"));
        }
        let capacity = match self.capacity {
            Some(0) => return Err(invalid("--capacity must be at least 1")),
            Some(c) => c,
            None => u32::try_from((self.viewers * 3).div_ceil(2 * publics as u64).max(1))
                .map_err(|_| invalid("--viewers per public reflector does not fit a u32"))?,
        };
        let cohort = match self.cohort {
            Some(0) => return Err(invalid("--cohort must be at least 1")),
            Some(k) => k,
            None => u32::try_from((self.viewers / 80_000).max(1))
                .map_err(|_| invalid("--viewers too large"))?,
        };
        let detect = parse_range(&self.client_detect_ms)?;
        if !(self.session_mean_min.is_finite() && self.session_mean_min > 0.0) {
            return Err(invalid("--session-mean-min must be > 0"));
        }
        if !(self.session_sigma.is_finite() && self.session_sigma > 0.0 && self.session_sigma < 5.0)
        {
            return Err(invalid("--session-sigma must be in (0, 5)"));
        }
        let share = |what: &str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(format!("{what}: {v} must be between 0 and 1")))
            }
        };
        let curve = Curve {
            peak: self.viewers,
            base: share("--curve-base", self.curve_base)?,
            peak_hour: self.peak_hour,
            start_hour: self.start_hour,
            flash_hour: (self.flash_hour >= 0.0).then_some(self.flash_hour),
            flash_minutes: self.flash_minutes.max(0.0),
            flash_extra: self.flash_extra.max(0.0),
            flash_ramp_minutes: self.flash_ramp_min.max(0.1),
        };
        if !(self.failures_per_hour.is_finite() && self.failures_per_hour >= 0.0) {
            return Err(invalid("--failures-per-hour must be >= 0"));
        }
        if !(self.outages_per_day.is_finite() && self.outages_per_day >= 0.0) {
            return Err(invalid("--outages-per-day must be >= 0"));
        }
        let stats_ms = ms("--stats-secs", self.stats_secs * 1000.0)?;
        if stats_ms < 100 {
            return Err(invalid("--stats-secs must be at least 0.1"));
        }
        Ok(SimConfig {
            seed: self.seed,
            duration_ms: ms("--hours", self.hours * 3_600_000.0)?,
            regions,
            masters,
            intermediates,
            publics,
            fan_out,
            capacity,
            arrivals: Arrivals::Curve(curve),
            cohort,
            session: self.session,
            session_mean_ms: ms("--session-mean-min", self.session_mean_min * 60_000.0)?,
            session_sigma: self.session_sigma,
            failures_per_hour: self.failures_per_hour,
            outages_per_day: self.outages_per_day,
            outage_fraction: share("--outage-fraction", self.outage_fraction)?,
            outage_spread_ms: ms("--outage-spread-secs", self.outage_spread_secs * 1000.0)?,
            recover_ms: if self.recover_min < 0.0 {
                None
            } else {
                Some(ms("--recover-min", self.recover_min * 60_000.0)?)
            },
            failures_after_ms: 60_000,
            client_detect_ms: detect,
            client_retry_ms: self.client_retry_ms,
            client_attempts: self.client_attempts.max(1),
            client_join_ms: self.client_join_ms,
            silence_ms: self.silence_ms,
            watch_ms: 100,
            edge_delay_ms: self.edge_delay_ms,
            stats_ms,
            ping_ms: 1000,
            sample_ms: 60_000,
            scale: self.scale,
            boot_ms: ms("--boot-secs", self.boot_secs * 1000.0)?,
            bitrate_bps: 3_000_000,
        })
    }
}

/// `MIN..MAX` (ms).
fn parse_range(s: &str) -> Result<(u64, u64), ConfigError> {
    let bad = || {
        invalid(format!(
            "--client-detect-ms {s:?}: expected MIN..MAX in ms, e.g. 2000..5000"
        ))
    };
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

impl SimConfig {
    /// A small configuration for tests: `reflectors` split into tiers, `regions` equal
    /// regions, scripted arrivals, no failures.
    pub fn small(regions: usize, masters: usize, ints: usize, publics: usize) -> SimConfig {
        SimConfig {
            seed: 1,
            duration_ms: 600_000,
            regions: Regions::uniform(regions, 2, 40),
            masters,
            intermediates: ints,
            publics,
            fan_out: 16,
            capacity: 200,
            arrivals: Arrivals::Scripted(Vec::new()),
            cohort: 10,
            session: SessionDist::Fixed,
            session_mean_ms: 3_600_000,
            session_sigma: 1.0,
            failures_per_hour: 0.0,
            outages_per_day: 0.0,
            outage_fraction: 0.0,
            outage_spread_ms: 0,
            recover_ms: Some(600_000),
            failures_after_ms: 60_000,
            client_detect_ms: (2000, 5000),
            client_retry_ms: 1000,
            client_attempts: 5,
            client_join_ms: 300,
            silence_ms: 150,
            watch_ms: 100,
            edge_delay_ms: 300,
            stats_ms: 2000,
            ping_ms: 1000,
            sample_ms: 10_000,
            scale: false,
            boot_ms: 20_000,
            bitrate_bps: 3_000_000,
        }
    }

    pub fn reflectors(&self) -> usize {
        self.masters + self.intermediates + self.publics
    }
}
