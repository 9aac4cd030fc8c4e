//! `divisor-bench quick` and `divisor-bench full`: the scenarios and peers side by side,
//! capacity searches, the raw sendmmsg probe, then JSON, Markdown and plots.

use crate::capacity::{self, Bar, Plan, Search};
use crate::decrypt::KeySource;
use crate::probe::{self, ProbeResult};
use crate::servers::{self, Cores, Scenario, Server, UnitArgs};
use crate::{asset, nft, report, sched};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options shared by `quick` and `full`; unset ones take the mode's default.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Scenarios to measure, comma-separated: mono-1c, split-2x1c, mono-2c.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Option<Vec<String>>,
    /// Workloads, comma-separated: divisor-vod, divisor-vod-des (DIVISOR's DES content
    /// encryption, all of it in the encoder unit), divisor-vod-des-edge (the same with
    /// --edge-share of the frames left to the protocol unit), live, live-transcode.
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// divisor-vod-des-edge: share of the frames the protocol unit encrypts (0..=1).
    #[arg(long)]
    pub edge_share: Option<f64>,
    /// Peers to run beside ours, comma-separated: gst, ffmpeg, or none.
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// First client count of the ramp (>= 1).
    #[arg(long)]
    pub start: Option<usize>,
    /// Largest client count tried (>= 1).
    #[arg(long)]
    pub max: Option<usize>,
    /// Bisection steps after the first failing level.
    #[arg(long)]
    pub bisect: Option<usize>,
    /// Measurement window per level, seconds.
    #[arg(long)]
    pub window: Option<f64>,
    /// Seconds between setting the sessions up and the window.
    #[arg(long)]
    pub settle: Option<f64>,
    /// Measuring receivers per level (the other clients' packets are dropped at ingress).
    #[arg(long)]
    pub receivers: Option<usize>,
    /// Quality bar: p99 lateness bound, ms.
    #[arg(long)]
    pub max_p99_lateness_ms: Option<f64>,
    /// Quality bar: RFC 3550 jitter bound, ms.
    #[arg(long)]
    pub max_jitter_ms: Option<f64>,
    /// Quality bar for our units: p99 of their own send lateness (from /metrics), ms.
    #[arg(long)]
    pub max_p99_send_lateness_ms: Option<f64>,
    /// Seconds per raw sendmmsg probe run (0 skips the probe).
    #[arg(long)]
    pub probe_secs: Option<f64>,
    /// Clients of the scheduling table (rt vs plain sender on a live channel, with a
    /// busy loop on the other core and on the same core); 0 skips it.
    #[arg(long)]
    pub sched_clients: Option<usize>,
    /// Output folder (default bench/out/<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Quick,
    Full,
}

/// Everything one run produced (written as results.json).
#[derive(Debug, Serialize)]
pub struct RunResults {
    pub mode: Mode,
    pub started_utc: String,
    pub machine: Machine,
    pub cores: Cores,
    pub load_note: String,
    pub bar: Bar,
    pub bar_text: String,
    pub plan: Plan,
    pub searches: Vec<Search>,
    pub probe: Vec<ProbeResult>,
    pub scheduling: Vec<sched::SchedRow>,
    pub command: String,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Machine {
        cpus: Cores::detect().count,
        cpu_model,
        kernel,
    }
}

/// Workloads the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    DivisorVod,
    /// VoD with DES content encryption (`[vod] encryption = "des"`), all in the encoder.
    DivisorVodDes,
    /// As [`Workload::DivisorVodDes`] with a share of the frames encrypted by the
    /// protocol unit (`edge_share`).
    DivisorVodDesEdge,
    Live,
    LiveTranscode,
}

impl Workload {
    fn parse(s: &str) -> Result<Workload> {
        Ok(match s {
            "divisor-vod" => Workload::DivisorVod,
            "divisor-vod-des" => Workload::DivisorVodDes,
            "divisor-vod-des-edge" => Workload::DivisorVodDesEdge,
            "live" => Workload::Live,
            "live-transcode" => Workload::LiveTranscode,
            _ => bail!(
                "unknown workload `{s}`: use divisor-vod, divisor-vod-des, divisor-vod-des-edge, \
                 live or live-transcode"
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::DivisorVod => "divisor-vod",
            Workload::DivisorVodDes => "divisor-vod-des",
            Workload::DivisorVodDesEdge => "divisor-vod-des-edge",
            Workload::Live => "live",
            Workload::LiveTranscode => "live-transcode",
        }
    }

    /// Whether the content is encrypted (the peers cannot serve it).
    fn encrypted(self) -> bool {
        matches!(self, Workload::DivisorVodDes | Workload::DivisorVodDesEdge)
    }
}

/// Default share of the frames the protocol unit encrypts in `divisor-vod-des-edge`.
const DEFAULT_EDGE_SHARE: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Gst,
    Ffmpeg,
}

fn parse_peers(v: &[String]) -> Result<Vec<Peer>> {
    let mut out = Vec::new();
    for p in v {
        match p.as_str() {
            "none" => {}
            "gst" | "gst-rtsp-server" => out.push(Peer::Gst),
            "ffmpeg" => out.push(Peer::Ffmpeg),
            _ => bail!("unknown peer `{p}`: use gst, ffmpeg or none"),
        }
    }
    Ok(out)
}

/// The validated settings of a run.
struct Settings {
    scenarios: Vec<Scenario>,
    workloads: Vec<Workload>,
    peers: Vec<Peer>,
    plan: Plan,
    bar: Bar,
    probe_secs: f64,
    sched_clients: usize,
    edge_share: f64,
    out: PathBuf,
}

fn settings(mode: Mode, a: &RunArgs) -> Result<Settings> {
    let quick = mode == Mode::Quick;
    let scenarios = match &a.scenarios {
        Some(v) => v
            .iter()
            .map(|s| s.parse::<Scenario>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?,
        None => Scenario::ALL.to_vec(),
    };
    let workloads = match &a.workloads {
        Some(v) => v
            .iter()
            .map(|w| Workload::parse(w))
            .collect::<Result<Vec<_>>>()?,
        None => vec![Workload::DivisorVod],
    };
    let peers = match &a.peers {
        Some(v) => parse_peers(v)?,
        None => vec![Peer::Gst, Peer::Ffmpeg],
    };
    let plan = Plan {
        start: a.start.unwrap_or(if quick { 2 } else { 16 }),
        max: a
            .max
            .unwrap_or(if quick { 8 } else { nft::MAX_LOAD_CLIENTS }),
        bisect: a.bisect.unwrap_or(if quick { 0 } else { 3 }),
        measure_receivers: a.receivers.unwrap_or(if quick { 2 } else { 4 }),
        settle_secs: a.settle.unwrap_or(if quick { 1.5 } else { 3.0 }),
        window_secs: a.window.unwrap_or(if quick { 2.0 } else { 6.0 }),
    };
    if plan.start == 0 || plan.max == 0 {
        bail!("N = 0: the client counts --start and --max must be at least 1");
    }
    if plan.start > plan.max {
        bail!(
            "--start {} is above --max {}: lower --start or raise --max",
            plan.start,
            plan.max
        );
    }
    if plan.max > nft::MAX_LOAD_CLIENTS {
        bail!(
            "--max {} is above the {} clients the client port range holds",
            plan.max,
            nft::MAX_LOAD_CLIENTS
        );
    }
    if plan.measure_receivers == 0 {
        bail!("--receivers 0: at least one measuring receiver is needed");
    }
    if plan.window_secs <= 0.0 || plan.settle_secs < 0.0 {
        bail!("--window must be > 0 and --settle >= 0 seconds");
    }
    let level_secs = plan.settle_secs + plan.window_secs + 10.0;
    if level_secs > asset::SECONDS as f64 * 0.8 {
        bail!(
            "--settle + --window must stay well under the asset's {} s",
            asset::SECONDS
        );
    }
    let edge_share = a.edge_share.unwrap_or(DEFAULT_EDGE_SHARE);
    if !(0.0..=1.0).contains(&edge_share) {
        bail!("--edge-share {edge_share} is outside 0..=1");
    }
    let bar = Bar {
        max_p99_lateness_ms: a.max_p99_lateness_ms.unwrap_or(20.0),
        max_jitter_ms: a.max_jitter_ms.unwrap_or(5.0),
        max_p99_send_lateness_ms: a.max_p99_send_lateness_ms.unwrap_or(2.0),
    };
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("out")
            .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string())
    });
    Ok(Settings {
        scenarios,
        workloads,
        peers,
        plan,
        bar,
        probe_secs: a.probe_secs.unwrap_or(if quick { 1.0 } else { 3.0 }),
        sched_clients: a.sched_clients.unwrap_or(if quick { 4 } else { 200 }),
        edge_share,
        out,
    })
}

/// Checks that need no root and start nothing: bad input fails here, before any work.
fn preflight(s: &Settings) -> Result<()> {
    for w in &s.workloads {
        match w {
            Workload::DivisorVod => {}
            Workload::DivisorVodDes | Workload::DivisorVodDesEdge => {
                if !help_of("divisor-encoder")?.contains("DES") {
                    bail!(
                        "workload `{}` needs content encryption in divisor-encoder (`--config` \
                         with `[vod] encryption`), which this build does not have: rebuild",
                        w.name()
                    );
                }
            }
            Workload::Live => {
                if !help_of("divisor-encoder")?.contains("--live") {
                    bail!(
                        "workload `live` needs live channels in divisor-encoder (`--live NAME=loop:FILE`), \
                         which this build does not have: rebuild, or use --workloads divisor-vod"
                    );
                }
            }
            Workload::LiveTranscode => {
                if !help_of("divisor-encoder")?.contains("--config") {
                    bail!(
                        "workload `live-transcode` needs a rendition ladder in divisor-encoder \
                         (`--config` with `[[rendition]]`), which this build does not have: rebuild"
                    );
                }
            }
        }
    }
    for p in &s.peers {
        match p {
            Peer::Gst => servers::check_gst_peer()?,
            Peer::Ffmpeg => servers::check_ffmpeg_peer()?,
        }
    }
    for b in ["divisor-encoder", "divisor-protocol", "divisor-mono"] {
        divisor_tests::bin(b)?;
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("divisor-bench needs root (it creates network namespaces): run it with sudo");
    }
    Ok(())
}

/// `--help` of one of our binaries (to see which features this build has).
pub fn help_of(binary: &str) -> Result<String> {
    let out = std::process::Command::new(divisor_tests::bin(binary)?)
        .arg("--help")
        .output()
        .with_context(|| format!("running {binary} --help"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(mode: Mode, args: RunArgs) -> Result<()> {
    let s = settings(mode, &args)?;
    preflight(&s)?;
    let cores = Cores::detect();
    let load_note = if cores.load_shared() {
        format!(
            "{} cores: the load generator and the measuring receivers share core {} with the \
             units under test (the encoder unit in split-2x1c, divisor-mono in mono-2c). They \
             stay cheap: RTSP set-up only before the window, all but {} clients' packets dropped \
             by nftables at the client veth's ingress, receivers read with recvmmsg and kernel \
             timestamps.",
            cores.count, cores.load, s.plan.measure_receivers
        )
    } else {
        format!("load generator on its own core {}", cores.load)
    };
    std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
    // Absolute: the encoder unit reads its config and key file from another namespace's
    // working directory.
    let out_dir = std::fs::canonicalize(&s.out)?;
    let library = asset::library()?;
    let file = library.join(asset::ASSET);
    println!("divisor-bench {mode:?}: output in {}", s.out.display());
    println!("quality bar: {}", s.bar.describe());
    println!("{load_note}");
    let tag = format!("{}", std::process::id());
    let mut searches = Vec::new();
    for w in &s.workloads {
        let wname = w.name();
        let (stream, mut unit_args) = workload_setup(*w);
        let keys = encryption_setup(*w, s.edge_share, &out_dir, &mut unit_args)?;
        let spread = ladder_setup(*w, &out_dir, &mut unit_args)?;
        for sc in &s.scenarios {
            let mut srv = servers::start_ours(*sc, cores, &library, &stream, &unit_args, &tag)?;
            srv.spread_load(&spread, Duration::from_secs(30))?;
            searches.push(capacity::search(
                &mut srv,
                wname,
                cores,
                &s.plan,
                &s.bar,
                keys.as_ref(),
            )?);
        }
        if w.encrypted() && !s.peers.is_empty() {
            println!("{wname}: peers skipped (they serve no encrypted content)");
            continue;
        }
        if *w == Workload::LiveTranscode && !s.peers.is_empty() {
            println!("{wname}: peers skipped (they do not transcode a ladder)");
            continue;
        }
        // The peers serve the same file at the same rate: GStreamer with one pipeline per
        // client for VoD and one shared pipeline for live; ffmpeg always sends once to all.
        for p in &s.peers {
            let mut srv: Box<dyn Server> = match p {
                Peer::Gst => Box::new(servers::start_gst(
                    cores,
                    &file,
                    *w == Workload::Live,
                    &tag,
                )?),
                Peer::Ffmpeg => Box::new(servers::start_ffmpeg(cores, &file, &tag)?),
            };
            searches.push(capacity::search(
                srv.as_mut(),
                wname,
                cores,
                &s.plan,
                &s.bar,
                None,
            )?);
        }
    }
    let probe = if s.probe_secs > 0.0 {
        run_probe(cores, &s, &searches)?
    } else {
        Vec::new()
    };
    let scheduling = if s.sched_clients > 0
        && help_of("divisor-protocol")?.contains("--scheduler")
        && help_of("divisor-encoder")?.contains("--live")
    {
        sched::table(cores, &library, s.sched_clients, &s.plan, &s.bar, &tag)?
    } else {
        if s.sched_clients > 0 {
            eprintln!("scheduling table skipped: this build lacks --scheduler or --live");
        }
        Vec::new()
    };
    let results = RunResults {
        mode,
        started_utc: chrono::Utc::now().to_rfc3339(),
        machine: machine(),
        cores,
        load_note,
        bar: s.bar,
        bar_text: s.bar.describe(),
        plan: s.plan.clone(),
        searches,
        probe,
        scheduling,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(s.out.join("results.json"), json)?;
    let md = report::markdown(&results);
    std::fs::write(s.out.join("results.md"), &md)?;
    println!("\n{md}");
    if let Err(e) = crate::plot::all(&results, &s.out) {
        eprintln!("divisor-bench: plots not written: {e:#}");
    }
    println!("results: {}", s.out.join("results.json").display());
    Ok(())
}

/// The raw sendmmsg probe, without and with GSO, from the protocol namespace on the
/// protocol core to as many of the client's dropped ports as the largest capacity found,
/// in datagrams the size of that search's packets (the mean its measuring receivers got;
/// [`probe::PACKET_BYTES`] when no level passed): a probe of smaller datagrams than the
/// server sends would flatter the probe.
fn run_probe(cores: Cores, s: &Settings, searches: &[Search]) -> Result<Vec<ProbeResult>> {
    let widest = searches.iter().max_by_key(|x| x.max_clients);
    let clients = widest
        .map(|x| x.max_clients)
        .unwrap_or(1)
        .max(s.plan.max.min(1000))
        .max(1);
    let size = widest
        .and_then(|x| x.best())
        .map(|l| l.bytes_per_packet.round() as usize)
        .filter(|&b| b > 0)
        .unwrap_or(probe::PACKET_BYTES);
    let topo = divisor_tests::Topology::new(&format!("bench-{}-probe", std::process::id()))?;
    nft::install_drop(&topo.client_ns, &topo.client_if)?;
    servers::veth_gso_passthrough(&topo)?;
    let dests: Vec<SocketAddrV4> = (0..clients)
        .map(|i| SocketAddrV4::new(topo.client_ip, nft::load_port(i)))
        .collect();
    let mut out = Vec::new();
    for gso in [false, true] {
        match probe::run(
            &topo.proto_ns,
            cores.protocol,
            dests.clone(),
            gso,
            s.probe_secs,
            size,
        ) {
            Ok(r) => {
                println!(
                    "probe sendmmsg{} ({size} B datagrams): {:.0} packets/s ({:.2} Gbit/s) = {:.0} clients of 1 Mbit/s",
                    if gso { " + GSO x4" } else { "" },
                    r.packets_per_s,
                    r.gbit_per_s,
                    r.clients_1mbps
                );
                out.push(r);
            }
            Err(e) => eprintln!("probe (gso={gso}) failed: {e:#}"),
        }
    }
    Ok(out)
}

/// The encrypted workloads' set-up: writes a master secret and an encoder config
/// (`[vod] encryption = "des"`, `edge_share`) into `dir`, adds `--config` to the encoder's
/// arguments, and returns what the measuring receivers need to decrypt. `None` for clear
/// workloads.
fn encryption_setup(
    w: Workload,
    edge_share: f64,
    dir: &std::path::Path,
    args: &mut UnitArgs,
) -> Result<Option<KeySource>> {
    let share = match w {
        Workload::DivisorVodDes => 0.0,
        Workload::DivisorVodDesEdge => edge_share,
        _ => return Ok(None),
    };
    // A fresh secret per run; it only has to match between the encoder and the receivers.
    let master = format!(
        "divisor-bench-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let key_file = dir.join("content.key");
    std::fs::write(&key_file, format!("{master}\n"))
        .with_context(|| format!("writing {}", key_file.display()))?;
    let config = dir.join(format!("{}.toml", w.name()));
    std::fs::write(
        &config,
        format!(
            "# DES is insecure (56-bit keys): DIVISOR's workload, for measurement only.\n\
             [vod]\nencryption = \"des\"\nedge_share = {share}\n\n[encryption]\nkey_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    args.encoder.push("--config".into());
    args.encoder.push(config.into_os_string());
    Ok(Some(KeySource {
        master: master.into_bytes(),
        name: divisor_link::content::vod_key_name(asset::ASSET, ""),
    }))
}

/// live-transcode's ladder: (name, width, height, kbit/s). The bench asset is 640x360 at
/// about 1 Mbit/s, so the top rung re-encodes at the source size. The rungs have no
/// frame-rate tiers: tiers need B-frames, whose RTP timestamps (pts) run up to 5 frames
/// ahead of the send schedule (dts), which makes lateness and RFC 3550 jitter against the
/// RTP clock meaningless.
const LADDER: [(&str, u32, u32, u32); 3] = [
    ("360p", 640, 360, 900),
    ("270p", 480, 270, 500),
    ("180p", 320, 180, 250),
];

/// live-transcode: writes the encoder's config (a 3-rung H.264 ladder over the bench asset
/// looped as channel `bench`), adds `--config` to the encoder's arguments, and returns the
/// stream paths of the lower rungs, over which the load clients are spread (the measuring
/// receivers play the top rung). Other workloads: nothing to do.
fn ladder_setup(w: Workload, dir: &Path, args: &mut UnitArgs) -> Result<Vec<String>> {
    if w != Workload::LiveTranscode {
        return Ok(Vec::new());
    }
    let mut toml = String::from(
        "# divisor-bench live-transcode: one looped channel, encoded once per rung.\n",
    );
    for (name, width, height, kbps) in LADDER {
        toml.push_str(&format!(
            "\n[[rendition]]\nname = \"{name}\"\ncodec = \"h264\"\nwidth = {width}\n\
             height = {height}\nbitrate_kbps = {kbps}\nkeyint = 50\ntiers = false\n"
        ));
    }
    let names: Vec<String> = LADDER.iter().map(|r| format!("{:?}", r.0)).collect();
    toml.push_str(&format!(
        "\n[[channel]]\nname = \"bench\"\nsource = \"loop:{}\"\nrenditions = [{}]\n",
        asset::ASSET,
        names.join(", ")
    ));
    let config = dir.join(format!("{}.toml", w.name()));
    std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
    args.encoder.push("--config".into());
    args.encoder.push(config.into_os_string());
    Ok(LADDER[1..]
        .iter()
        .map(|(name, ..)| format!("live/bench/{name}"))
        .collect())
}

/// The stream URL path and unit arguments of a workload.
pub fn workload_setup(w: Workload) -> (String, UnitArgs) {
    match w {
        Workload::DivisorVod | Workload::DivisorVodDes | Workload::DivisorVodDesEdge => {
            (format!("vod/{}", asset::ASSET), UnitArgs::default())
        }
        // The top rung; `ladder_setup` writes the config and names the other rungs.
        Workload::LiveTranscode => (format!("live/bench/{}", LADDER[0].0), UnitArgs::default()),
        Workload::Live => (
            "live/bench".to_string(),
            UnitArgs {
                encoder: vec![
                    "--live".into(),
                    format!("bench=loop:{}", asset::ASSET).into(),
                ],
                protocol: Vec::new(),
            },
        ),
    }
}
