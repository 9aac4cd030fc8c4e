//! Running the protocol unit: the RTSP listener, the session reaper, and keeping a link to
//! the encoder unit up. Shared by `divisor-protocol` (link over the network) and
//! `divisor-mono` (in-process link): one code path for both deployments.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use divisor_link::{LinkConfig, LinkListener};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admission::{Admission, AdmissionArgs, AdmissionConfig};
use crate::fanout::{FanOut, FanOutConfig, SendPath};
use crate::http::HttpArgs;
use crate::live::LiveHub;
use crate::metrics::{ChannelStatus, LinkStatus, Metrics, UnitStatus};
use crate::rtsp::{self, RtspContext};
use crate::schedule::{SchedulerConfig, SchedulerMode};
use crate::session::Sessions;
use crate::upstream::Upstream;
use crate::whep::{WebRtcArgs, Whep, WhepConfig};

/// The front-end's command-line flags, shared by `divisor-protocol` and `divisor-mono` so
/// both deployments are configured the same way (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct FrontEndArgs {
    /// Where RTSP clients connect.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8554")]
    pub rtsp_listen: SocketAddr,

    /// Seconds without a request or RTCP report after which a client's session is dropped.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub session_timeout: u64,

    /// The server's UDP port pair for RTP (this port, even) and RTCP (the next one), shared
    /// by every client. 0 picks a free pair.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub rtp_port: u16,

    /// How packets reach the kernel: `sendmmsg` (batched system calls) or `uring`
    /// (io_uring submissions).
    #[arg(
        long,
        value_name = "sendmmsg|uring",
        value_enum,
        default_value = "sendmmsg"
    )]
    pub send_path: SendPath,

    /// Send each client's runs of equal-size packets as one UDP GSO message (one trip
    /// through the stack for up to 64 packets; about 4x the packet rate per core). On by
    /// default; a kernel that refuses it is logged once and plain messages are sent.
    /// `--gso false` turns it off. Note that a veth hands GSO packets to its peer unsplit
    /// (captures there see one frame per run) unless its `gso_max_segs` is 1.
    #[arg(
        long,
        value_name = "true|false",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub gso: bool,

    /// The sender: `rt` (own thread, SCHED_FIFO and locked memory when permitted,
    /// clock_nanosleep) or `plain` (tokio timers, for comparison).
    #[arg(long, value_name = "rt|plain", value_enum, default_value = "rt")]
    pub scheduler: SchedulerMode,

    /// Pin the real-time sender to this CPU core.
    #[arg(long, value_name = "N")]
    pub rt_core: Option<usize>,

    /// Busy-wait this many microseconds before each send deadline (rt scheduler).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    pub spin_us: u64,

    /// Milliseconds between a live frame's arrival and its send time: frames then leave at
    /// media time from that anchor, so a gap in arrivals shorter than this (an upstream
    /// reflector switching parents, link jitter) never reaches clients. Costs as much
    /// latency. Default 50 ms; a public reflector defaults to its own, longer delay.
    #[arg(long, value_name = "MILLISECONDS")]
    pub edge_delay_ms: Option<u64>,

    /// Seconds a live channel stays subscribed after its last viewer leaves.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub live_linger: u64,

    /// Seconds a live channel's viewers are held when its source goes away (the encoder
    /// unit restarts, the link is cut): the channel shows `stalled` in `/status`, the
    /// unit subscribes again as the link returns, and the viewers get frames again on
    /// the same sessions. Past this, every viewer gets an RTCP BYE and its connection
    /// is closed. 0 ends the channel at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub live_resume_secs: u64,

    /// Require RTSP Digest authentication (MD5, as ffmpeg and GStreamer send it) against
    /// this file: one `user:password:/path-prefix[,/path-prefix...]` per line, `#` for
    /// comments. A user reads the paths at or below its prefixes (`/live/cam`,
    /// `/vod/`; `/` is everything); another path gets 403, wrong credentials 401.
    /// OPTIONS stays open. Repeated failures from one address are answered slower.
    #[arg(long, value_name = "FILE")]
    pub rtsp_users_file: Option<std::path::PathBuf>,

    /// Budgets (`--max-clients`, `--max-egress-mbps`, `--max-sessions-per-ip`): a SETUP
    /// over budget gets 453 Not Enough Bandwidth.
    #[command(flatten)]
    pub admission: AdmissionArgs,

    /// `--http-listen`: `/metrics` and `/status`.
    #[command(flatten)]
    pub http: HttpArgs,

    /// WebRTC playback (WHEP on the HTTP port): `--webrtc-public-ip`, `--webrtc-udp-port`,
    /// `--webrtc-timeout-secs`.
    #[command(flatten)]
    pub webrtc: WebRtcArgs,
}

impl FrontEndArgs {
    pub fn config(&self) -> FrontEndConfig {
        FrontEndConfig {
            rtsp_listen: self.rtsp_listen,
            session_timeout: Duration::from_secs(self.session_timeout.max(1)),
            fan_out: FanOutConfig {
                rtp_listen: SocketAddr::new(
                    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    self.rtp_port,
                ),
                send_path: self.send_path,
                gso: self.gso,
                scheduler: SchedulerConfig {
                    mode: self.scheduler,
                    rt_core: self.rt_core,
                    spin: Duration::from_micros(self.spin_us),
                },
                live_delay: self
                    .edge_delay_ms
                    .map(Duration::from_millis)
                    .unwrap_or(crate::fanout::live_feed::LIVE_DELAY),
            },
            live_linger: Duration::from_secs(self.live_linger),
            live_resume: Duration::from_secs(self.live_resume_secs),
            rtsp_users_file: self.rtsp_users_file.clone(),
            admission: self.admission.config(),
            http_listen: self.http.http_listen,
            webrtc: self.webrtc.config(),
        }
    }
}

/// Front-end settings.
#[derive(Clone, Debug)]
pub struct FrontEndConfig {
    pub rtsp_listen: SocketAddr,
    /// Idle time after which a session is dropped.
    pub session_timeout: Duration,
    pub fan_out: FanOutConfig,
    pub live_linger: Duration,
    /// How long a live channel waits for its source to return (`--live-resume-secs`).
    pub live_resume: Duration,
    /// RTSP Digest authentication's users (`--rtsp-users-file`); open when `None`.
    pub rtsp_users_file: Option<std::path::PathBuf>,
    pub admission: AdmissionConfig,
    /// Where `/metrics` and `/status` are served; off when `None`.
    pub http_listen: Option<SocketAddr>,
    /// WHEP (served on the HTTP port).
    pub webrtc: WhepConfig,
}

/// The running front-end's shared parts: what `/metrics` and the status endpoint read.
#[derive(Clone)]
pub struct FrontEnd {
    pub sessions: Arc<Sessions>,
    pub fan: Arc<FanOut>,
    pub live: Arc<LiveHub>,
    pub ctx: Arc<RtspContext>,
    pub metrics: Metrics,
    pub whep: Arc<Whep>,
}

impl FrontEnd {
    /// Start the fan-out (sockets, sender, RTCP reader), the live hub and the session
    /// reaper. Needs a tokio runtime.
    pub fn start(config: &FrontEndConfig, upstream: Upstream) -> anyhow::Result<FrontEnd> {
        let fan = FanOut::start(config.fan_out).with_context(|| {
            format!(
                "cannot start the fan-out on UDP {}",
                config.fan_out.rtp_listen
            )
        })?;
        let live = LiveHub::with_resume(
            upstream.clone(),
            fan.clone(),
            config.live_linger,
            config.live_resume,
        );
        let sessions = Sessions::new(config.session_timeout);
        tokio::spawn(sessions.clone().reaper());
        let metrics = Metrics::new();
        metrics.attach_fanout(fan.stats.clone());
        let status_upstream = upstream.clone();
        let status_live = live.clone();
        metrics.register_status_source(Arc::new(move || UnitStatus {
            link: LinkStatus {
                state: if status_upstream.is_up() {
                    "up"
                } else {
                    "down"
                }
                .into(),
                peer: None,
            },
            channels: status_live
                .status()
                .into_iter()
                .map(|c| ChannelStatus {
                    name: if c.rendition.is_empty() {
                        c.channel
                    } else {
                        format!("{}/{}", c.channel, c.rendition)
                    },
                    // The encoder reports a state on changes only; frames mean live.
                    state: match c.state {
                        None if c.frames > 0 => "live",
                        None => "starting",
                        Some(divisor_link::ChannelState::Live) => "live",
                        Some(divisor_link::ChannelState::Stalled) => "stalled",
                        Some(divisor_link::ChannelState::Ended) => "ended",
                    }
                    .into(),
                    clients: c.viewers as u64,
                })
                .collect(),
        }));
        let admission = Admission::new(config.admission.clone());
        let whep = Whep::start(
            config.webrtc.clone(),
            live.clone(),
            fan.clone(),
            admission.clone(),
            metrics.clone(),
        )?;
        let status_whep = Arc::downgrade(&whep);
        metrics.register_webrtc_status(Arc::new(move || {
            status_whep
                .upgrade()
                .map(|w| w.status())
                .unwrap_or_default()
        }));
        let auth = match &config.rtsp_users_file {
            Some(path) => {
                let users = crate::rtsp::auth::Users::load(path)
                    .with_context(|| format!("--rtsp-users-file {}", path.display()))?;
                info!(users = users.len(), file = %path.display(), "RTSP requires Digest authentication");
                Some(crate::rtsp::auth::DigestAuth::new(users))
            }
            None => None,
        };
        let ctx = RtspContext::new(
            upstream,
            sessions.clone(),
            fan.clone(),
            live.clone(),
            metrics.clone(),
            admission,
            auth,
        );
        Ok(FrontEnd {
            sessions,
            fan,
            live,
            ctx,
            metrics,
            whep,
        })
    }

    /// Serve `/metrics` and `/status` on `listen` in the background. Fails when the
    /// address cannot be bound, so a mistyped flag stops start-up.
    pub async fn serve_http(&self, listen: SocketAddr) -> anyhow::Result<()> {
        let listener = crate::http::bind(listen).await?;
        let at = listener.local_addr().unwrap_or(listen);
        info!("metrics on http://{at}/metrics, status on http://{at}/status");
        info!("WHEP on http://{at}/whep/<channel>[/<rendition>], player on http://{at}/play/<channel>[/<rendition>]");
        let router = crate::http::router(self.metrics.clone())
            .merge(crate::whep::signal::router(self.whep.clone()));
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve_router(listener, router).await {
                warn!("HTTP server ended: {e}");
            }
        });
        Ok(())
    }

    /// Serve RTSP on `listen`, forever.
    pub async fn serve(&self, listen: SocketAddr) -> anyhow::Result<()> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for RTSP on {listen}"))?;
        let at = listener.local_addr().unwrap_or(listen);
        info!("RTSP on rtsp://{at}/vod/<file> and rtsp://{at}/live/<channel>[/<rendition>]");
        rtsp::serve(listener, Arc::clone(&self.ctx)).await?;
        Ok(())
    }
}

/// Serve RTSP on `config.rtsp_listen` with frames from `upstream`, forever.
pub async fn serve_rtsp(config: &FrontEndConfig, upstream: Upstream) -> anyhow::Result<()> {
    let front = FrontEnd::start(config, upstream)?;
    if let Some(listen) = config.http_listen {
        front.serve_http(listen).await?;
    }
    front.serve(config.rtsp_listen).await
}

/// How this unit reaches the encoder unit.
#[derive(Clone, Copy, Debug)]
pub enum LinkMode {
    /// Dial the encoder unit, and dial again (with backoff) whenever the link drops.
    Connect(SocketAddr),
    /// Wait for the encoder unit to dial in; a new link replaces the old one.
    Listen(SocketAddr),
}

/// Keep `upstream` attached to an encoder unit, forever.
pub async fn maintain_link(
    upstream: Upstream,
    config: LinkConfig,
    mode: LinkMode,
) -> anyhow::Result<()> {
    match mode {
        LinkMode::Connect(addr) => loop {
            let link = divisor_link::connect_with_backoff(&config, addr).await;
            let ended = upstream.attach(link);
            let _ = ended.await;
            warn!(%addr, "link to the encoder unit down; reconnecting");
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
        LinkMode::Listen(addr) => {
            let listener = LinkListener::bind(&config, addr)
                .await
                .with_context(|| format!("cannot listen for the link on {addr}"))?;
            info!(addr = %listener.local_addr(), "waiting for the encoder unit to dial in");
            loop {
                match listener.accept().await {
                    Ok(link) => {
                        upstream.attach(link);
                    }
                    Err(e) => warn!("link from an encoder unit refused: {e}"),
                }
            }
        }
    }
}
