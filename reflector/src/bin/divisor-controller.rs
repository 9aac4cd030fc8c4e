//! `divisor-controller`: the tree controller.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use divisor_reflector::control::{Codec, ControlKey, Limits};
use divisor_reflector::controller::driver::now_ms;
use divisor_reflector::controller::front::{self, Directory};
use divisor_reflector::controller::redirect::RegionMap;
use divisor_reflector::controller::scale::ScaleConfig;
use divisor_reflector::controller::{Controller, ControllerConfig, ControllerHandle};
use divisor_reflector::deploy::libvirt::{LibvirtConfig, LibvirtDeployer};
use divisor_reflector::deploy::local::LocalDeployer;
use divisor_reflector::deploy::{Deployer, NetConfig, ReflectorCommand};
use divisor_reflector::tree::Topology;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// Divisor tree controller (after SOLEIL): wires master, intermediate and public
/// reflectors into a tree, repairs it, and sends every client to the best public
/// reflector.
///
/// Reflectors join with `divisor-reflector ... --controller ADDR:PORT`. Each says HELLO;
/// the controller places it (the `--topology` design, or the least-loaded parent of the
/// right role) and sends it its upstream list, backups included. Masters are PINGed every
/// `--ping-ms`; a node below them is PINGed at once when a child reports losing it
/// (LOSTUPSTREAM) or its parent stops hearing its reports (CHILDSUPDATE), and otherwise
/// once per `--sweep-secs`. A node silent for
/// `--dead-after` PINGs is dead: its children move to their backups at once and the
/// tree is rebuilt on the surviving graph; when it returns, the designed tree comes back.
///
/// Clients open `rtsp://CONTROLLER:RTSP-PORT/live/CHANNEL` (302 to a public reflector),
/// `http://CONTROLLER:HTTP-PORT/play/CHANNEL` (307 to the player page) or
/// `POST /whep/CHANNEL` (307, WHEP). `GET /` draws the live tree, `GET /tree` is its JSON,
/// `GET /metrics` the counters.
///
/// Example:
///   divisor-controller --control-listen 0.0.0.0:7600 --control-key-file control.key \
///       --topology tree.toml --rtsp-listen 0.0.0.0:8654 --http-listen 0.0.0.0:8680
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// Where reflectors connect (the XML control protocol over TCP).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7600")]
    control_listen: SocketAddr,

    /// File with the pre-shared control key; every message carries an HMAC-SHA256 tag
    /// under it. The same file is given to every reflector.
    #[arg(long, value_name = "FILE", default_value = "divisor-control.key")]
    control_key_file: PathBuf,

    /// The administrator's topology (TOML: encoder units, nodes with roles, candidate
    /// links with costs, spare links). Without it every node is placed by policy.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,

    /// Where RTSP clients are redirected (`rtsp://HOST:PORT/live/CHANNEL` gets 302).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8654")]
    rtsp_listen: SocketAddr,

    /// HTTP: `/play/CH` and `POST /whep/CH` redirects, `/` the tree page, `/tree`,
    /// `/metrics`.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8680")]
    http_listen: SocketAddr,

    /// PING period. A node silent for `--dead-after` periods is declared dead.
    #[arg(long, value_name = "MILLISECONDS", default_value_t = 1000)]
    ping_ms: u64,

    /// PING periods of silence after which a node is dead.
    #[arg(long, value_name = "N", default_value_t = 2)]
    dead_after: u32,

    /// PING period of the nodes below the masters. A node's children report losing it
    /// (LOSTUPSTREAM) and its parent reports no longer hearing from it (CHILDSUPDATE),
    /// and either makes the controller PING it at once; this slow sweep is only the
    /// safety net, so the controller's messages grow with masters and events, not with
    /// the tree.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    sweep_secs: f64,

    /// The nodes' statistics period (their `--stats-secs`): FULLSTATS checks and scale
    /// decisions run once per period.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    stats_secs: f64,

    /// Client subnet to region, for locality: `SUBNET=REGION` (repeatable), e.g.
    /// `--region 10.1.0.0/16=eu`. A client may also ask with `?region=NAME`.
    #[arg(long, value_name = "SUBNET=REGION")]
    region: Vec<String>,

    /// Scale the public tier: grow above `--high-water` (a standby reflector from the
    /// pool, `--standby`, or with `--deploy` a new one), drain and KILL one below
    /// `--low-water` (and remove it, if deployed).
    #[arg(long)]
    scale: bool,

    /// Public-tier load (viewers over capacity) above which one more reflector joins.
    #[arg(long, value_name = "0..1", default_value_t = 0.8)]
    high_water: f64,

    /// Public-tier load below which one reflector is drained.
    #[arg(long, value_name = "0..1", default_value_t = 0.3)]
    low_water: f64,

    /// Consecutive statistics periods past a mark before acting.
    #[arg(long, value_name = "N", default_value_t = 3)]
    scale_periods: u32,

    /// Quiet time after a scale action.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    cooldown_secs: u64,

    /// Fewest public reflectors in service.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_public: usize,

    /// Most public reflectors in service.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_public: usize,

    /// A draining reflector is KILLed after this long even if viewers remain.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    drain_max_secs: u64,

    /// Fewest intermediates kept (deployed if missing, with `--deploy`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    min_intermediate: usize,

    /// Most intermediates deployed when every parent's fan-out is full.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_intermediate: usize,

    /// Start and stop reflectors for the scale policy (implies `--scale`): `local`
    /// (processes, each in its own network namespace on `--deploy-bridge`) or `libvirt`
    /// (domains on `--libvirt-uri`, LXC application containers on this machine).
    /// Deployed reflectors carry this controller's `--deploy-name`; a restarted
    /// controller adopts those still running.
    #[arg(long, value_name = "local|libvirt")]
    deploy: Option<Backend>,

    /// This controller's name, recorded in everything it deploys; only reflectors with
    /// this name are adopted, stopped or cleaned up.
    #[arg(long, value_name = "NAME", default_value = "divisor")]
    deploy_name: String,

    /// The address deployed reflectors reach this controller at (their `--controller`).
    /// Default: `--control-listen`, unless that is a wildcard.
    #[arg(long, value_name = "ADDR:PORT")]
    deploy_controller_addr: Option<String>,

    /// The `divisor-reflector` program deployed reflectors run. Default: the one beside
    /// this program.
    #[arg(long, value_name = "FILE")]
    reflector_bin: Option<PathBuf>,

    /// Link key file of deployed reflectors (their `--link-key-file`).
    #[arg(long, value_name = "FILE", default_value = "divisor-link.key")]
    link_key_file: PathBuf,

    /// `--region` of deployed reflectors.
    #[arg(long, value_name = "NAME", default_value = "")]
    deploy_region: String,

    /// One more flag for deployed reflectors, as is (repeatable), e.g.
    /// `--reflector-arg=--max-clients --reflector-arg=200`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    reflector_arg: Vec<String>,

    /// The bridge deployed reflectors' veths join (`local`: in `--deploy-bridge-netns`
    /// or this controller's namespace; `libvirt`: in libvirtd's).
    #[arg(long, value_name = "BRIDGE", default_value = "divisor0")]
    deploy_bridge: String,

    /// The network namespace that holds `--deploy-bridge` (local backend).
    #[arg(long, value_name = "NETNS")]
    deploy_bridge_netns: Option<String>,

    /// The bridge's subnet; deployed reflectors get addresses in it.
    #[arg(long, value_name = "CIDR", default_value = "10.77.0.0/24")]
    deploy_subnet: ipnet::Ipv4Net,

    /// Host number of the first address handed out (lower ones are left to the LAN).
    #[arg(long, value_name = "N", default_value_t = 100)]
    deploy_first_host: u32,

    /// Default route of deployed reflectors.
    #[arg(long, value_name = "IP")]
    deploy_gateway: Option<std::net::Ipv4Addr>,

    /// State and logs of deployed reflectors (`ID.json`, `ID.log`).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/divisor/deploy")]
    deploy_dir: PathBuf,

    /// Ports of deployed reflectors: links (masters, intermediates), RTSP (publics),
    /// HTTP `/metrics`.
    #[arg(long, value_name = "PORT", default_value_t = 7500)]
    deploy_link_port: u16,
    #[arg(long, value_name = "PORT", default_value_t = 8554)]
    deploy_rtsp_port: u16,
    #[arg(long, value_name = "PORT", default_value_t = 7580)]
    deploy_http_port: u16,

    /// A deployed reflector that has not said HELLO within this long is removed.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    boot_timeout_secs: u64,

    /// The libvirt connection of `--deploy libvirt`.
    #[arg(long, value_name = "URI", default_value = "lxc:///system")]
    libvirt_uri: String,

    /// Memory of each libvirt domain (its cgroup's hard limit).
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    libvirt_memory_mib: u32,

    /// On exit (SIGTERM, SIGINT), stop and remove every reflector deployed under
    /// `--deploy-name`. Without it they keep running, for the next controller to adopt.
    #[arg(long)]
    cleanup: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Local,
    Libvirt,
}

/// The deployer `--deploy` asks for.
fn deployer(args: &Args) -> anyhow::Result<Option<Arc<dyn Deployer>>> {
    let Some(backend) = args.deploy else {
        return Ok(None);
    };
    let controller_addr = match &args.deploy_controller_addr {
        Some(a) => a.clone(),
        None if !args.control_listen.ip().is_unspecified() => args.control_listen.to_string(),
        None => anyhow::bail!(
            "--deploy needs --deploy-controller-addr (the address deployed reflectors reach \
             this controller at) when --control-listen is a wildcard ({})",
            args.control_listen
        ),
    };
    let absolute = |p: &PathBuf, what: &str| {
        std::fs::canonicalize(p).with_context(|| format!("{what} {} not found", p.display()))
    };
    let binary = match &args.reflector_bin {
        Some(b) => absolute(b, "--reflector-bin")?,
        None => {
            let exe = std::env::current_exe().context("cannot find this program's path")?;
            exe.with_file_name("divisor-reflector")
        }
    };
    anyhow::ensure!(
        binary.is_file(),
        "the reflector program {} does not exist (--reflector-bin)",
        binary.display()
    );
    let cmd = ReflectorCommand {
        binary,
        controller_addr,
        control_key_file: absolute(&args.control_key_file, "--control-key-file")?,
        link_key_file: absolute(&args.link_key_file, "--link-key-file")?,
        link_port: args.deploy_link_port,
        rtsp_port: args.deploy_rtsp_port,
        http_port: args.deploy_http_port,
        region: args.deploy_region.clone(),
        extra: args.reflector_arg.clone(),
    };
    let net = NetConfig {
        bridge: args.deploy_bridge.clone(),
        bridge_netns: args.deploy_bridge_netns.clone(),
        subnet: args.deploy_subnet,
        first_host: args.deploy_first_host,
        gateway: args.deploy_gateway,
        ns_prefix: format!("dvd-{}-", args.deploy_name),
    };
    let d: Arc<dyn Deployer> = match backend {
        Backend::Local => Arc::new(LocalDeployer::new(
            &args.deploy_name,
            &args.deploy_dir,
            net,
            cmd,
        )?),
        Backend::Libvirt => {
            anyhow::ensure!(
                args.deploy_bridge_netns.is_none(),
                "--deploy-bridge-netns is for the local backend: libvirt plugs domains into a bridge in libvirtd's own namespace"
            );
            Arc::new(LibvirtDeployer::new(LibvirtConfig {
                uri: args.libvirt_uri.clone(),
                controller: args.deploy_name.clone(),
                net: Some(net),
                cmd,
                log_dir: args.deploy_dir.clone(),
                memory_mib: args.libvirt_memory_mib,
            })?)
        }
    };
    Ok(Some(d))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    divisor_link::logging::init();
    let args = Args::parse();
    let key = ControlKey::from_file(&args.control_key_file).with_context(|| {
        format!(
            "cannot read the control key from {}",
            args.control_key_file.display()
        )
    })?;
    let topology = match &args.topology {
        Some(p) => Topology::from_file(p)?,
        None => divisor_reflector::controller::core::empty_topology(),
    };
    anyhow::ensure!(args.ping_ms >= 10, "--ping-ms must be at least 10");
    anyhow::ensure!(
        args.low_water < args.high_water,
        "--low-water ({}) must be below --high-water ({})",
        args.low_water,
        args.high_water
    );
    let cfg = ControllerConfig {
        ping_ms: args.ping_ms,
        dead_after_missed: args.dead_after.max(1),
        sweep_ms: (args.sweep_secs.clamp(0.1, 86_400.0) * 1000.0) as u64,
        stats_ms: (args.stats_secs.clamp(0.1, 3600.0) * 1000.0) as u64,
        topology,
        regions: RegionMap::parse(&args.region)?,
        scale: (args.scale || args.deploy.is_some()).then(|| ScaleConfig {
            high_water: args.high_water,
            low_water: args.low_water,
            periods: args.scale_periods.max(1),
            cooldown_ms: args.cooldown_secs * 1000,
            min_public: args.min_public,
            max_public: args.max_public,
            drain_max_ms: args.drain_max_secs * 1000,
            deploy: args.deploy.is_some(),
            min_intermediate: args.min_intermediate,
            max_intermediate: args.max_intermediate,
            boot_timeout_ms: args.boot_timeout_secs * 1000,
            name_prefix: "auto".to_string(),
            ..ScaleConfig::default()
        }),
        ..ControllerConfig::default()
    };
    info!(
        nodes = cfg.topology.nodes.len(),
        links = cfg.topology.links.len(),
        encoders = %cfg.topology.encoders.join(","),
        "topology loaded"
    );
    let deployer = deployer(&args)?;
    let deployer = match deployer {
        Some(d) => {
            let running = d
                .list()
                .with_context(|| format!("cannot list what the {} deployer runs", d.backend()))?;
            info!(
                backend = d.backend(),
                name = %args.deploy_name,
                adopted = running.len(),
                "deployer ready"
            );
            Some((d, running))
        }
        None => None,
    };
    let handle = ControllerHandle::start_with(
        Controller::new(cfg, now_ms()),
        Codec::new(key, Limits::default()),
        deployer,
    );
    let dir: Arc<dyn Directory> = Arc::new(handle.clone());

    let control = TcpListener::bind(args.control_listen)
        .await
        .with_context(|| format!("cannot listen for reflectors on {}", args.control_listen))?;
    info!(at = %control.local_addr()?, "reflectors connect here (--controller)");
    let rtsp = TcpListener::bind(args.rtsp_listen)
        .await
        .with_context(|| format!("cannot listen for RTSP clients on {}", args.rtsp_listen))?;
    info!(at = %rtsp.local_addr()?, "RTSP clients: rtsp://HOST:PORT/live/CHANNEL is redirected");
    let http = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http_listen))?;
    let http_at = http.local_addr()?;
    info!("tree page on http://{http_at}/, JSON on /tree, metrics on /metrics, /play/CH and /whep/CH redirect");

    let mut tasks = tokio::task::JoinSet::new();
    let h = handle.clone();
    tasks.spawn(async move { h.serve_control(control).await.context("control listener") });
    let d = dir.clone();
    tasks.spawn(async move {
        front::rtsp::serve_rtsp(rtsp, d)
            .await
            .context("RTSP listener")
    });
    let d = dir.clone();
    tasks.spawn(async move {
        front::http::serve_http(http, d)
            .await
            .context("HTTP listener")
    });

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let result = tokio::select! {
        Some(r) = tasks.join_next() => {
            let r = r.context("listener task")?;
            warn!("a listener stopped");
            r
        }
        _ = term.recv() => { info!("SIGTERM: exiting"); Ok(()) }
        _ = int.recv() => { info!("SIGINT: exiting"); Ok(()) }
    };
    if args.cleanup {
        match handle.cleanup().await {
            Ok(n) => info!(
                removed = n,
                "--cleanup: deployed reflectors stopped and removed"
            ),
            Err(e) => warn!("--cleanup failed: {e}"),
        }
    }
    result
}
