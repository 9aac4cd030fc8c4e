//! `divisor-reflector`: one program for every reflector role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use divisor_link::{LinkConfig, TransportKind};
use divisor_protocol::server::{FrontEnd, FrontEndArgs};
use divisor_protocol::upstream::Upstream;
use divisor_reflector::control::{ControlKey, Hello, Limits};
use divisor_reflector::controller::client::{self, ClientConfig, ClientExit};
use divisor_reflector::controller::sampler::Sampler;
use divisor_reflector::driver::{DriverConfig, Reflector};
use divisor_reflector::relay::{ChannelKey, RelayConfig};
use divisor_reflector::role::Role;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// Divisor reflector: relays live channels down a tree of master, intermediate and public
/// reflectors (after the UIUC Reflector). Every role runs this program.
///
/// A reflector subscribes upstream to a channel only while a child or a local viewer wants
/// it, holds one upstream subscription however many want it, and keeps a GOP cache so
/// joiners start at a keyframe at once. `--upstream` lists parents in order of preference;
/// when the active one goes silent for `--silence-ms` (or its link drops, or it leaves),
/// the channel moves to the next and is spliced: same timeline, no gap and no duplicate.
///
/// With `--controller`, the node joins a tree controller's tree instead: it says HELLO
/// (id, role, addresses, capacity), takes its upstream list from the controller's
/// REDIRECTs, and sends its statistics up the tree every `--stats-secs`.
///
/// Signals: SIGTERM leaves gracefully (children move to their next parent first, then this
/// node exits); SIGHUP re-reads `--upstream-file` and re-wires without dropping a viewer.
///
/// Example, three tiers on one machine:
///   divisor-reflector --role master --id m --link-listen 127.0.0.1:7500 --upstream 127.0.0.1:7400
///   divisor-reflector --role intermediate --id i1 --link-listen 127.0.0.1:7501 --upstream 127.0.0.1:7500
///   divisor-reflector --role public --id p1 --upstream 127.0.0.1:7501 --rtsp-listen 127.0.0.1:8555
///
/// The same tree wired by a controller (`divisor-controller --control-listen 127.0.0.1:7600`):
///   divisor-reflector --role master --id m --link-listen 127.0.0.1:7500 --upstream 127.0.0.1:7400 --controller 127.0.0.1:7600
///   divisor-reflector --role public --id p1 --rtsp-listen 127.0.0.1:8555 --controller 127.0.0.1:7600
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// Which tier this node is. A master's upstream is an encoder unit; an intermediate's
    /// or a public reflector's is another reflector. A public reflector serves viewers
    /// (RTSP, WHEP) with the protocol unit's front-ends.
    #[arg(long, value_name = "master|intermediate|public")]
    role: Role,

    /// This node's id, named in every channel's path (loops are refused by id).
    #[arg(long, value_name = "NAME")]
    id: String,

    /// Where children (reflectors, protocol units) link in. A public reflector may omit it.
    #[arg(long, value_name = "ADDR:PORT")]
    link_listen: Option<SocketAddr>,

    /// Parents, primary first, then backups: `HOST:PORT[,HOST:PORT...]`.
    #[arg(
        long,
        value_name = "ADDR:PORT,...",
        value_delimiter = ',',
        required_unless_present_any = ["upstream_file", "controller"]
    )]
    upstream: Vec<String>,

    /// A file listing the parents (one per line or comma-separated; `#` comments). Read at
    /// start and again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    upstream_file: Option<PathBuf>,

    /// File with the pre-shared link key, the same on every node and the encoder unit.
    #[arg(long, value_name = "FILE", default_value = "divisor-link.key")]
    link_key_file: PathBuf,

    /// How links are carried: `tcp` or `uring`. Both ends of each link must agree.
    #[arg(long, value_name = "tcp|uring", default_value = "tcp")]
    link_transport: TransportKind,

    /// A channel whose parent sends nothing for this long moves to the next parent. 150 ms
    /// is about four video frames at 25 fps, well above link jitter on a LAN, and less than
    /// the public tier's default edge delay, so a switch never reaches viewers.
    #[arg(long, value_name = "MILLISECONDS", default_value_t = 150)]
    silence_ms: u64,

    /// Channels go back to a better (earlier) parent once it has been healthy this long.
    /// Long enough that a flapping parent is not trusted at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    return_secs: u64,

    /// Seconds a channel stays subscribed upstream after its last child or viewer left.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    linger_secs: u64,

    /// Keep these channels subscribed always (`NAME` or `NAME/RENDITION`, repeatable).
    #[arg(long, value_name = "CHANNEL")]
    pin: Vec<String>,

    /// Channels one child may hold at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_channels_per_child: usize,

    /// Messages queued per child before its frames are skipped to the next keyframe.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    child_queue: usize,

    /// Join the tree controller at this control address: HELLO, then upstreams from its
    /// REDIRECTs (a master given `--upstream` keeps those unless the topology names
    /// encoder units), PING/PONG liveness, statistics up the tree, BYE on SIGTERM, and a
    /// graceful exit on its KILL.
    #[arg(long, value_name = "ADDR:PORT")]
    controller: Option<String>,

    /// File with the control protocol's pre-shared key (HMAC-SHA256 on every message),
    /// the same at the controller.
    #[arg(long, value_name = "FILE", default_value = "divisor-control.key")]
    control_key_file: PathBuf,

    /// Statistics period: every node sends its subtree's figures to its parent this often.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    stats_secs: f64,

    /// The host name or address the controller tells others to reach this node at, when
    /// a listen address is a wildcard (0.0.0.0). Default: the listen address's own.
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,

    /// This node's region, matched against clients' regions by the redirect policy.
    #[arg(long, value_name = "NAME", default_value = "")]
    region: String,

    /// A public reflector that waits in the controller's pool, outside the tree, until
    /// the scale policy brings it into service.
    #[arg(long)]
    standby: bool,

    /// Every role: `--http-listen` for `/metrics` and `/status`. Public tier: the protocol
    /// unit's front-end flags (`--rtsp-listen`, `--edge-delay-ms`, admission, scheduler,
    /// WebRTC; WHEP on the HTTP port). `--edge-delay-ms` defaults to 300 here.
    #[command(flatten)]
    front_end: FrontEndArgs,
}

/// Viewers a public reflector tells the controller it takes when `--max-clients` is not
/// given.
const DEFAULT_MAX_VIEWERS: u32 = 1000;

/// The public tier's default edge delay: twice the silence time, so a switch (silence,
/// subscribe, splice from the new parent's GOP cache) completes inside it.
const PUBLIC_EDGE_DELAY_MS: u64 = 300;

fn read_upstream_file(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the upstream list {}", path.display()))?;
    let list: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    anyhow::ensure!(
        !list.is_empty(),
        "the upstream list {} names no parent",
        path.display()
    );
    Ok(list)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    divisor_link::logging::init();
    let mut args = Args::parse();
    let key = divisor_link::read_key_file(&args.link_key_file).with_context(|| {
        format!(
            "cannot read the link key from {}",
            args.link_key_file.display()
        )
    })?;
    let upstreams = match &args.upstream_file {
        Some(f) if args.upstream.is_empty() => read_upstream_file(f)?,
        _ => args.upstream.clone(),
    };
    anyhow::ensure!(!args.id.is_empty(), "--id must not be empty");
    if args.role != Role::Public {
        anyhow::ensure!(
            args.link_listen.is_some(),
            "a {} reflector needs --link-listen: its children link in there",
            args.role.as_str()
        );
    }
    let mut relay = RelayConfig::new(&args.id, upstreams.clone());
    relay.silence = Duration::from_millis(args.silence_ms.max(10));
    relay.return_after = Duration::from_secs(args.return_secs);
    relay.linger = Duration::from_secs(args.linger_secs);
    relay.pins = args.pin.iter().map(|p| ChannelKey::parse(p)).collect();
    relay.max_channels_per_child = args.max_channels_per_child.max(1);
    let node = Reflector::start(
        relay,
        DriverConfig {
            link: LinkConfig {
                key,
                role: divisor_link::Role::Encoder,
                transport: args.link_transport,
            },
            child_queue: args.child_queue,
            child_stall: Duration::from_secs(10),
        },
    );
    info!(
        role = args.role.as_str(),
        id = %args.id,
        upstreams = %upstreams.join(","),
        "reflector starting"
    );
    let mut link_at = None;
    if let Some(addr) = args.link_listen {
        let at = node
            .listen(addr)
            .await
            .with_context(|| format!("cannot listen for child links on {addr}"))?;
        info!(%at, "children link in here");
        link_at = Some(at);
    }

    // The public tier: the protocol unit's own front-ends, fed over the in-process link.
    let front = if args.role == Role::Public {
        args.front_end
            .edge_delay_ms
            .get_or_insert(PUBLIC_EDGE_DELAY_MS);
        let upstream = Upstream::new();
        upstream.attach(node.attach_local());
        let config = args.front_end.config();
        Some((FrontEnd::start(&config, upstream)?, config))
    } else {
        None
    };
    let http = args.front_end.http.http_listen;
    let mut http_at = None;
    if let Some(listen) = http {
        let listener = divisor_protocol::http::bind(listen).await?;
        let at = listener.local_addr().unwrap_or(listen);
        http_at = Some(at);
        info!("status on http://{at}/status, metrics on http://{at}/metrics");
        let router = divisor_reflector::http::router(
            args.role.as_str(),
            node.clone(),
            front.as_ref().map(|(f, _)| f.clone()),
        );
        tokio::spawn(async move {
            if let Err(e) = divisor_protocol::http::serve_router(listener, router).await {
                warn!("HTTP server ended: {e}");
            }
        });
    }
    let rtsp = async {
        match &front {
            Some((f, config)) => f.serve(config.rtsp_listen).await,
            None => std::future::pending().await,
        }
    };

    // The tree controller, if this node joins one.
    let control = match &args.controller {
        Some(addr) => {
            let key = ControlKey::from_file(&args.control_key_file).with_context(|| {
                format!(
                    "cannot read the control key from {}",
                    args.control_key_file.display()
                )
            })?;
            let advertise = |a: SocketAddr| match (&args.advertise, a.ip().is_unspecified()) {
                (Some(host), true) => format!("{host}:{}", a.port()),
                _ => a.to_string(),
            };
            let admission = &args.front_end.admission;
            let hello = Hello {
                id: args.id.clone(),
                role: args.role,
                link: link_at.map(advertise).unwrap_or_default(),
                rtsp: if front.is_some() {
                    advertise(args.front_end.rtsp_listen)
                } else {
                    String::new()
                },
                http: http_at.map(advertise),
                region: args.region.clone(),
                max_viewers: admission.max_clients.map_or(DEFAULT_MAX_VIEWERS, |n| {
                    u32::try_from(n).unwrap_or(u32::MAX)
                }),
                egress_budget_bps: admission
                    .max_egress_mbps
                    .filter(|m| m.is_finite() && *m > 0.0)
                    .map_or(0, |m| (m * 1e6) as u64),
                standby: args.standby,
            };
            let mut sampler = Sampler::new(
                &args.id,
                node.clone(),
                front.as_ref().map(|(f, _)| f.clone()),
            );
            let cfg = ClientConfig {
                controller: addr.clone(),
                key,
                hello,
                stats_every: Duration::from_secs_f64(args.stats_secs.clamp(0.1, 3600.0)),
                limits: Limits::default(),
            };
            info!(controller = %addr, "joining the tree controller");
            Some(client::spawn(
                cfg,
                node.clone(),
                Box::new(move |start, end| sampler.sample(start, end)),
            ))
        }
        None => None,
    };
    let (control_client, control_task) = match control {
        Some((c, t)) => (Some(c), Some(t)),
        None => (None, None),
    };
    // Completes only on the controller's KILL.
    let killed = async {
        if let Some(t) = control_task {
            if let Ok(ClientExit::Killed(reason)) = t.await {
                return reason;
            }
        }
        std::future::pending::<String>().await
    };
    tokio::pin!(killed);

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::pin!(rtsp);
    loop {
        tokio::select! {
            r = &mut rtsp => return r,
            reason = &mut killed => {
                info!("killed by the controller ({reason}): leaving gracefully");
                node.leave();
                node.left().await;
                info!("left; exiting");
                return Ok(());
            }
            _ = term.recv() => {
                info!("SIGTERM: leaving gracefully");
                if let Some(c) = &control_client {
                    c.bye("SIGTERM").await;
                }
                node.leave();
                tokio::select! {
                    _ = node.left() => {}
                    _ = int.recv() => warn!("SIGINT while leaving: exiting now"),
                }
                info!("left; exiting");
                return Ok(());
            }
            _ = int.recv() => {
                info!("SIGINT: exiting");
                return Ok(());
            }
            _ = hup.recv() => match &args.upstream_file {
                Some(f) => match read_upstream_file(f) {
                    Ok(list) => {
                        info!(upstreams = %list.join(","), "SIGHUP: re-wiring to the upstream list");
                        node.set_upstreams(list);
                    }
                    Err(e) => warn!("SIGHUP: {e:#}; keeping the current upstreams"),
                },
                None => warn!("SIGHUP: no --upstream-file to re-read; nothing changes"),
            },
        }
    }
}
