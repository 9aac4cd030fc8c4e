//! What is measured: our three deployments (`mono-1c`, `split-2x1c`, `mono-2c`) and the
//! peers (GStreamer's RTSP server, ffmpeg as an RTP sender), each started in its own
//! network namespaces with every process pinned with `taskset`.
//!
//! Every server is driven through [`Server`]: open N sessions to given client ports, close
//! them, and name its processes for CPU accounting.

use crate::loadgen::LoadGen;
use crate::server_metrics::{self, Lateness};
use anyhow::{bail, Context, Result};
use divisor_tests::{Node, RtspConn, Topology};
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

pub const RTSP_PORT: u16 = 8554;
const LINK_PORT: u16 = 7400;

/// Our deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Scenario {
    #[serde(rename = "mono-1c")]
    Mono1c,
    #[serde(rename = "split-2x1c")]
    Split2x1c,
    #[serde(rename = "mono-2c")]
    Mono2c,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Mono1c, Scenario::Split2x1c, Scenario::Mono2c];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Mono1c => "mono-1c",
            Scenario::Split2x1c => "split-2x1c",
            Scenario::Mono2c => "mono-2c",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario `{s}`: use one of mono-1c, split-2x1c, mono-2c (comma-separated)"
                )
            })
    }
}

/// Which cores everything runs on. The machine this was written for has 2 cores; the
/// load generator then shares core 0 (with the encoder unit in the split scenario).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Cores {
    pub count: usize,
    /// Core of the load generator and the measuring receivers.
    pub load: usize,
    /// Core of the protocol unit (and the probe); mono-1c and the peers run here too.
    pub protocol: usize,
    /// Core of the encoder unit.
    pub encoder: usize,
}

impl Cores {
    pub fn detect() -> Cores {
        let count = thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Cores {
            count,
            load: if count >= 3 { 2 } else { 0 },
            protocol: if count >= 2 { 1 } else { 0 },
            encoder: 0,
        }
    }

    /// Whether the load generator shares a core with a unit under test.
    pub fn load_shared(&self) -> bool {
        self.load == self.encoder || self.load == self.protocol
    }
}

/// A server under test.
pub trait Server {
    /// Short name for tables ("split-2x1c", "gst-rtsp-server", ...).
    fn label(&self) -> String;
    /// The client namespace (receivers and load generator live there).
    fn topo(&self) -> &Topology;
    /// Starts sessions for `measure` (real receivers) and `load` (dropped) RTP ports;
    /// returns (sessions opened, failures, first error, RTP clock rate).
    fn open(&mut self, measure: &[u16], load: &[u16]) -> Result<OpenInfo>;
    /// Ends every session.
    fn close(&mut self) -> Result<()>;
    /// Processes per unit, for CPU accounting.
    fn units(&self) -> Vec<(String, Vec<u32>)>;
    /// The core(s) each unit is pinned to, for the report.
    fn pinning(&self) -> String;
    /// The server's own send-lateness histogram now, when it exports one (ours do).
    fn send_lateness(&self) -> Result<Option<Lateness>> {
        Ok(None)
    }
}

#[derive(Debug, Clone, Default)]
pub struct OpenInfo {
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub clock_rate: u32,
}

/// Ours or GStreamer's: an RTSP server the load generator talks to.
pub struct RtspServer {
    label: String,
    topo: Topology,
    load: LoadGen,
    url: String,
    /// Further stream URLs the load clients are spread over (besides `url`).
    spread: Vec<String>,
    addr: SocketAddr,
    units: Vec<(String, String)>,
    pinning: String,
    /// Whether the server exports `/metrics` on [`server_metrics::HTTP_PORT`] (ours).
    metrics: bool,
}

impl RtspServer {
    /// Deal the load clients over these stream paths (e.g. `live/bench/270p`) as well as
    /// the main stream; the measuring receivers stay on the main stream. Each path must
    /// describe within `timeout` (a live rendition starts on its first DESCRIBE).
    pub fn spread_load(&mut self, paths: &[String], timeout: Duration) -> Result<()> {
        for path in paths {
            let url = format!("rtsp://{}/{path}", self.addr);
            wait_described(&self.topo, self.addr, &url, timeout)?;
            self.spread.push(url);
        }
        Ok(())
    }
}

impl Server for RtspServer {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn topo(&self) -> &Topology {
        &self.topo
    }
    fn open(&mut self, measure: &[u16], load: &[u16]) -> Result<OpenInfo> {
        // The measuring receivers play the main stream; the load clients are dealt round
        // robin over the main stream and the spread streams (live-transcode's rungs).
        let mut groups: Vec<Vec<u16>> = vec![measure.to_vec()];
        groups.extend(self.spread.iter().map(|_| Vec::new()));
        let n_groups = groups.len();
        for (i, &port) in load.iter().enumerate() {
            groups[i % n_groups].push(port);
        }
        let urls = std::iter::once(&self.url).chain(&self.spread);
        let mut info = OpenInfo::default();
        for (n, (url, ports)) in urls.zip(groups).enumerate() {
            if ports.is_empty() {
                continue;
            }
            let o = self.load.open(self.addr, url, ports)?;
            info.opened += o.opened;
            info.failed += o.failed;
            if info.first_error.is_none() {
                info.first_error = o.first_error;
            }
            if n == 0 {
                info.clock_rate = o.described.clock_rate;
            }
        }
        Ok(info)
    }
    fn close(&mut self) -> Result<()> {
        self.load.close_all()
    }
    fn units(&self) -> Vec<(String, Vec<u32>)> {
        self.units
            .iter()
            .map(|(unit, ns)| (unit.clone(), crate::cpu::pids_in_ns(ns)))
            .collect()
    }
    fn pinning(&self) -> String {
        self.pinning.clone()
    }
    fn send_lateness(&self) -> Result<Option<Lateness>> {
        if !self.metrics {
            return Ok(None);
        }
        server_metrics::scrape(&self.topo).map(Some)
    }
}

/// Extra arguments for our units (a config file, live channels, scheduler flags...).
#[derive(Debug, Clone, Default)]
pub struct UnitArgs {
    pub encoder: Vec<OsString>,
    pub protocol: Vec<OsString>,
}

/// Our units' session idle time-out for the capacity search. The load clients never send
/// RTCP or RTSP keep-alives (their packets are dropped at ingress), so with the default 60 s
/// a level whose set-up takes longer than that (thousands of sessions on an overloaded
/// core) had its first sessions -- the measuring receivers -- reaped before the window,
/// which showed up as receivers getting no packets at all (mono-1c, N = 4096).
fn session_keepalive() -> [OsString; 2] {
    ["--session-timeout".into(), "3600".into()]
}

/// `/metrics` for [`Server::send_lateness`].
fn http_listen() -> [OsString; 2] {
    [
        "--http-listen".into(),
        format!("0.0.0.0:{}", server_metrics::HTTP_PORT).into(),
    ]
}

/// The namespaces a capacity level runs in, ready for thousands of load clients: their
/// packets dropped at the client veth's ingress ([`crate::nft::install_drop`]), the port
/// range for their connections, and GSO super-packets passed whole.
fn load_topology(name: &str) -> Result<Topology> {
    let topo = Topology::new(name)?;
    crate::nft::install_drop(&topo.client_ns, &topo.client_if)?;
    client_ns_many_connections(&topo)?;
    veth_gso_passthrough(&topo)?;
    Ok(topo)
}

/// Let the load generator open tens of thousands of RTSP connections in a row: in the
/// client namespace, the whole port range for outgoing TCP and reuse of ports in
/// TIME_WAIT. The levels of one search share the namespace, and each level's connections
/// wait 60 s in TIME_WAIT after its teardown: with the default 28,232 ports, a search that
/// tried 12,288 and 10,240 clients had no ports left for 9,216 (`Cannot assign requested
/// address`). The load clients' UDP ports are never bound, so they do not collide.
fn client_ns_many_connections(topo: &Topology) -> Result<()> {
    for (key, value) in [
        ("net.ipv4.ip_local_port_range", "1024 65535"),
        ("net.ipv4.tcp_tw_reuse", "1"),
    ] {
        let st = Command::new("ip")
            .args(["netns", "exec", &topo.client_ns, "sysctl", "-q", "-w"])
            .arg(format!("{key}={value}"))
            .status()
            .context("running sysctl in the client namespace")?;
        anyhow::ensure!(st.success(), "could not set {key} in {}", topo.client_ns);
    }
    Ok(())
}

/// Let the protocol namespace's client-facing veth hand UDP GSO super-packets to the client
/// side whole, as veths do by default and as a NIC with UDP segmentation offload does in
/// hardware. The test topology turns that off (`gso_max_segs 1`: software segmentation,
/// so packet captures see real packets); the bench measures servers and probe alike with
/// offload. `divisor-bench fanout --veth-gso-segmented` shows the other case.
pub fn veth_gso_passthrough(topo: &Topology) -> Result<()> {
    let out = Command::new("ip")
        .args(["-n", &topo.proto_ns, "-o", "link", "show", "type", "veth"])
        .output()
        .context("running ip")?;
    let list = String::from_utf8_lossy(&out.stdout);
    let dev = list
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .find(|n| !n.is_empty() && *n != topo.proto_link_if)
        .context("no client-facing veth in the protocol namespace")?;
    let st = Command::new("ip")
        .args(["-n", &topo.proto_ns, "link", "set", "dev", &dev])
        .args(["gso_max_segs", "65535"])
        .status()?;
    anyhow::ensure!(st.success(), "could not set gso_max_segs on {dev}");
    Ok(())
}

/// Starts scenario `s` serving `library` and waits until `stream` (a path such as
/// `vod/bench.mp4`) can be described.
pub fn start_ours(
    s: Scenario,
    cores: Cores,
    library: &Path,
    stream: &str,
    args: &UnitArgs,
    tag: &str,
) -> Result<RtspServer> {
    let topo = load_topology(&format!("bench-{tag}-{}", s.name()))?;
    let rtsp_listen = format!("0.0.0.0:{RTSP_PORT}");
    let lib = library.as_os_str().to_os_string();
    let (units, pinning) = match s {
        Scenario::Split2x1c => {
            let key = topo.log_dir.join("link.key");
            std::fs::write(&key, "divisor-bench-link-key-0123456789abcdef\n")?;
            let mut enc: Vec<OsString> = vec![
                "-c".into(),
                cores.encoder.to_string().into(),
                divisor_tests::bin("divisor-encoder")?.into(),
                "--library".into(),
                lib,
                "--link-listen".into(),
                format!("0.0.0.0:{LINK_PORT}").into(),
                "--link-key-file".into(),
                key.clone().into(),
            ];
            enc.extend(args.encoder.iter().cloned());
            topo.spawn_in(Node::Encoder, "encoder", "taskset", enc)?;
            topo.wait_listening(Node::Encoder, LINK_PORT, Duration::from_secs(20))?;
            let mut pro: Vec<OsString> = vec![
                "-c".into(),
                cores.protocol.to_string().into(),
                divisor_tests::bin("divisor-protocol")?.into(),
                "--link-connect".into(),
                format!("{}:{LINK_PORT}", topo.enc_ip).into(),
                "--link-key-file".into(),
                key.into(),
                "--rtsp-listen".into(),
                rtsp_listen.into(),
            ];
            pro.extend(session_keepalive());
            pro.extend(http_listen());
            pro.extend(args.protocol.iter().cloned());
            topo.spawn_in(Node::Protocol, "protocol", "taskset", pro)?;
            (
                vec![
                    ("encoder".to_string(), topo.enc_ns.clone()),
                    ("protocol".to_string(), topo.proto_ns.clone()),
                ],
                format!(
                    "encoder on core {}, protocol unit on core {}",
                    cores.encoder, cores.protocol
                ),
            )
        }
        Scenario::Mono1c | Scenario::Mono2c => {
            let cpus = if s == Scenario::Mono1c {
                cores.protocol.to_string()
            } else {
                format!("0-{}", cores.count.min(2) - 1)
            };
            let mut a: Vec<OsString> = vec![
                "-c".into(),
                cpus.clone().into(),
                divisor_tests::bin("divisor-mono")?.into(),
                "--library".into(),
                lib,
                "--rtsp-listen".into(),
                rtsp_listen.into(),
            ];
            a.extend(session_keepalive());
            a.extend(http_listen());
            a.extend(args.encoder.iter().cloned());
            a.extend(args.protocol.iter().cloned());
            topo.spawn_in(Node::Protocol, "mono", "taskset", a)?;
            (
                vec![("mono".to_string(), topo.proto_ns.clone())],
                format!("divisor-mono on core(s) {cpus}"),
            )
        }
    };
    let addr = SocketAddr::from((topo.rtsp_ip, RTSP_PORT));
    let url = format!("rtsp://{addr}/{stream}");
    wait_described(&topo, addr, &url, Duration::from_secs(30))?;
    let load = LoadGen::start(&topo.client_ns, Some(cores.load))?;
    Ok(RtspServer {
        label: s.name().to_string(),
        topo,
        load,
        url,
        spread: Vec::new(),
        addr,
        units,
        pinning,
        metrics: true,
    })
}

/// Polls DESCRIBE `url` from the client namespace until it answers 200.
fn wait_described(topo: &Topology, addr: SocketAddr, url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        topo.check_alive()?;
        match RtspConn::connect(topo, Node::Client, addr)
            .and_then(|mut c| c.request("DESCRIBE", url, &[("Accept", "application/sdp")]))
        {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => last = format!("{} {}", r.status, r.reason),
            Err(e) => last = format!("{e:#}"),
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "server not ready after {timeout:?}: DESCRIBE {url} -> {last}\n{}",
        topo.logs_report(30)
    )
}

/// The system Python that has GObject introspection (Debian's), not a pyenv shim;
/// `DIVISOR_BENCH_PYTHON` overrides it.
fn system_python() -> String {
    std::env::var("DIVISOR_BENCH_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// Errors naming the Debian packages when GStreamer's RTSP server cannot be used.
pub fn check_gst_peer() -> Result<()> {
    let python = system_python();
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); \
             from gi.repository import Gst, GstRtspServer",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "peer gst-rtsp-server unavailable: {python} cannot load GstRtspServer ({}). \
             Install the Debian packages: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 \
             gstreamer1.0-plugins-good gstreamer1.0-plugins-bad (or run scripts/install-deps.sh), \
             or leave the peer out with --peers none",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        ),
        Err(e) => bail!(
            "peer gst-rtsp-server unavailable: cannot run {python} ({e}). Install the \
             Debian packages: apt-get install python3 python3-gi gir1.2-gst-rtsp-server-1.0, \
             or leave the peer out with --peers none"
        ),
    }
}

/// Errors naming the Debian package when ffmpeg is missing.
pub fn check_ffmpeg_peer() -> Result<()> {
    match std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!(
            "peer ffmpeg unavailable: the `ffmpeg` binary is not on PATH. Install the Debian \
             package: apt-get install ffmpeg (or run scripts/install-deps.sh), or leave the \
             peer out with --peers none"
        ),
    }
}

/// Path of the GStreamer launcher script.
fn gst_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/gst_rtsp_server.py")
}

/// GStreamer's RTSP server in the protocol namespace, pinned to the protocol core: one
/// pipeline per client (like our VoD sessions) or, `shared`, one for all (a live channel).
pub fn start_gst(cores: Cores, file: &Path, shared: bool, tag: &str) -> Result<RtspServer> {
    check_gst_peer()?;
    let topo = load_topology(&format!("bench-{tag}-gst"))?;
    let mut args: Vec<OsString> = vec![
        "-c".into(),
        cores.protocol.to_string().into(),
        system_python().into(),
        gst_script().into(),
        "--port".into(),
        RTSP_PORT.to_string().into(),
        "--mount".into(),
        "/vod/bench".into(),
        "--file".into(),
        file.into(),
    ];
    if shared {
        args.push("--shared".into());
    }
    topo.spawn_in(Node::Protocol, "gst-rtsp-server", "taskset", args)?;
    topo.wait_listening(Node::Protocol, RTSP_PORT, Duration::from_secs(20))?;
    let addr = SocketAddr::from((topo.rtsp_ip, RTSP_PORT));
    let url = format!("rtsp://{addr}/vod/bench");
    wait_described(&topo, addr, &url, Duration::from_secs(30))?;
    let load = LoadGen::start(&topo.client_ns, Some(cores.load))?;
    let ns = topo.proto_ns.clone();
    Ok(RtspServer {
        label: "gst-rtsp-server".into(),
        topo,
        load,
        url,
        spread: Vec::new(),
        addr,
        units: vec![("gst-rtsp-server".into(), ns)],
        pinning: format!("gst-rtsp-server on core {}", cores.protocol),
        metrics: false,
    })
}

/// ffmpeg as a monolithic RTP sender: one process reading the file once and sending it
/// (`-c copy`, `tee` muxer) to every client's port, pinned to the protocol core.
pub struct FfmpegSender {
    topo: Topology,
    file: PathBuf,
    cores: Cores,
    run: u32,
    running: Option<String>,
}

pub fn start_ffmpeg(cores: Cores, file: &Path, tag: &str) -> Result<FfmpegSender> {
    check_ffmpeg_peer()?;
    let topo = load_topology(&format!("bench-{tag}-ffmpeg"))?;
    Ok(FfmpegSender {
        topo,
        file: file.to_path_buf(),
        cores,
        run: 0,
        running: None,
    })
}

impl Server for FfmpegSender {
    fn label(&self) -> String {
        "ffmpeg".into()
    }
    fn topo(&self) -> &Topology {
        &self.topo
    }
    fn open(&mut self, measure: &[u16], load: &[u16]) -> Result<OpenInfo> {
        self.close()?;
        let ip = self.topo.client_ip;
        let outs: Vec<String> = measure
            .iter()
            .chain(load)
            .map(|p| format!("[f=rtp:onfail=ignore]rtp://{ip}:{p}?rtcpport={}", p + 1))
            .collect();
        self.run += 1;
        let name = format!("ffmpeg-{}", self.run);
        let args: Vec<OsString> = [
            "-c",
            &self.cores.protocol.to_string(),
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "warning",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
        ]
        .iter()
        .map(OsString::from)
        .chain([self.file.clone().into_os_string()])
        .chain(
            ["-map", "0:v:0", "-c", "copy", "-f", "tee"]
                .iter()
                .map(OsString::from),
        )
        .chain([OsString::from(outs.join("|"))])
        .collect();
        self.topo
            .spawn_in(Node::Protocol, &name, "taskset", args)
            .context("starting ffmpeg")?;
        self.running = Some(name);
        thread::sleep(Duration::from_millis(300));
        self.topo.check_alive()?;
        Ok(OpenInfo {
            opened: measure.len() + load.len(),
            failed: 0,
            first_error: None,
            clock_rate: 90_000,
        })
    }
    fn close(&mut self) -> Result<()> {
        if let Some(n) = self.running.take() {
            self.topo.stop(&n);
        }
        Ok(())
    }
    fn units(&self) -> Vec<(String, Vec<u32>)> {
        vec![("ffmpeg".into(), crate::cpu::pids_in_ns(&self.topo.proto_ns))]
    }
    fn pinning(&self) -> String {
        format!("ffmpeg on core {}", self.cores.protocol)
    }
}
