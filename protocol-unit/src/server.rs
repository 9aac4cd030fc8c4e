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

use crate::rtsp::{self, RtspContext};
use crate::session::Sessions;
use crate::upstream::Upstream;

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
}

impl FrontEndArgs {
    pub fn config(&self) -> FrontEndConfig {
        FrontEndConfig {
            rtsp_listen: self.rtsp_listen,
            session_timeout: Duration::from_secs(self.session_timeout.max(1)),
        }
    }
}

/// Front-end settings.
#[derive(Clone, Debug)]
pub struct FrontEndConfig {
    pub rtsp_listen: SocketAddr,
    /// Idle time after which a session is dropped.
    pub session_timeout: Duration,
}

/// Serve RTSP on `config.rtsp_listen` with frames from `upstream`, forever.
pub async fn serve_rtsp(config: &FrontEndConfig, upstream: Upstream) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.rtsp_listen)
        .await
        .with_context(|| format!("cannot listen for RTSP on {}", config.rtsp_listen))?;
    info!(
        "RTSP on rtsp://{}/vod/<file>",
        listener.local_addr().unwrap_or(config.rtsp_listen)
    );
    let sessions = Sessions::new(config.session_timeout);
    tokio::spawn(sessions.clone().reaper());
    let ctx = RtspContext::new(upstream, sessions);
    rtsp::serve(listener, Arc::clone(&ctx)).await?;
    Ok(())
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
