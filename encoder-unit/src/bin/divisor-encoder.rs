//! `divisor-encoder`: the encoder unit as a process. Serves the media library and the
//! live channels to protocol units over the link, either listening for them or dialling
//! one. SIGHUP re-reads `--config`. With `--http-listen`, also serves `/status` and
//! `/metrics` (see [`divisor_encoder::status`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use divisor_encoder::live::cli::{self, LiveArgs};
use divisor_encoder::status::{self, LinkCounter, StatusSource};
use divisor_encoder::{serve_link_with, Catalog, Library, Services};
use divisor_link::{LinkConfig, LinkError, LinkListener, Role, TransportKind};
use tracing::{error, info, warn};

/// Divisor encoder unit: streams the frames of a media library and of live channels over
/// the link to protocol units (which packetise and send RTP to clients). Live channels are
/// served as rtsp://HOST:PORT/live/NAME by the protocol unit.
#[derive(Debug, Parser)]
#[command(name = "divisor-encoder", version)]
struct Args {
    /// Folder holding the media files (MP4, MOV, MKV, MPEG-TS with H.264 and AAC/Opus).
    /// Every file is probed at start-up; asset names are paths relative to this folder.
    #[arg(long, value_name = "DIR", default_value = "sample-library")]
    library: PathBuf,

    /// Accept links from protocol units on this address (several at once).
    /// This is the default mode.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "0.0.0.0:7400",
        conflicts_with = "link_connect"
    )]
    link_listen: SocketAddr,

    /// Instead of listening, dial the protocol unit at this address (host names allowed),
    /// and dial again with backoff whenever the link drops.
    #[arg(long, value_name = "ADDR:PORT")]
    link_connect: Option<String>,

    /// File holding the pre-shared link key (the same file as the protocol unit's).
    #[arg(long, value_name = "FILE", default_value = "divisor-link.key")]
    link_key_file: PathBuf,

    /// Link transport: tcp (tokio) or uring (io_uring).
    #[arg(long, value_name = "tcp|uring", default_value = "tcp")]
    link_transport: TransportKind,

    /// Serve GET /status (JSON: the live subscriptions held now per channel and rendition,
    /// from all links together, and the number of links) and GET /metrics (OpenMetrics:
    /// divisor_encoder_live_subscriptions{channel,rendition}, divisor_encoder_links) on
    /// this address. Off when not given.
    #[arg(long, value_name = "ADDR:PORT")]
    http_listen: Option<SocketAddr>,

    #[command(flatten)]
    live: LiveArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    divisor_link::logging::init();
    let args = Args::parse();

    if !args.library.is_dir() {
        bail!(
            "library folder {} does not exist (or is not a folder); pass --library DIR",
            args.library.display()
        );
    }
    let library = Arc::new(
        Library::open(&args.library)
            .with_context(|| format!("opening library folder {}", args.library.display()))?,
    );
    let key = divisor_link::read_key_file(&args.link_key_file).with_context(|| {
        format!(
            "reading link key file {} (pass --link-key-file FILE)",
            args.link_key_file.display()
        )
    })?;
    let cfg = LinkConfig {
        key,
        role: Role::Encoder,
        transport: args.link_transport,
    };

    let config = args.live.load().context("configuration")?;
    // Bind first: a busy port is an error before anything starts.
    let http = match args.http_listen {
        Some(addr) => Some(status::bind(addr).await?),
        None => None,
    };

    let lib = library.clone();
    let catalog = Arc::new(
        tokio::task::spawn_blocking(move || Catalog::scan(&lib))
            .await
            .context("probing the library")?,
    );
    let lib = library.clone();
    let running = Arc::new(
        tokio::task::spawn_blocking(move || cli::start(config, lib))
            .await
            .context("starting the live channels")?,
    );
    let services = Services {
        library,
        catalog,
        chains: running.chains.clone(),
        live: running.live.clone(),
    };
    let links = LinkCounter::new();
    if let Some(listener) = http {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving /status and /metrics");
        }
        let source = StatusSource {
            live: services.live.clone(),
            links: links.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = status::serve(listener, source).await {
                error!("{e}");
            }
        });
    }
    let live_args = args.live.clone();
    tokio::spawn(async move { cli::reload_on_sighup(live_args, &running).await });

    match args.link_connect {
        Some(target) => dial(cfg, &target, services, links).await,
        None => listen(cfg, args.link_listen, services, links).await,
    }
}

async fn listen(
    cfg: LinkConfig,
    addr: SocketAddr,
    services: Services,
    links: LinkCounter,
) -> Result<()> {
    let listener = LinkListener::bind(&cfg, addr)
        .await
        .with_context(|| format!("listening for links on {addr}"))?;
    info!(addr = %listener.local_addr(), transport = ?cfg.transport, "waiting for protocol units");
    loop {
        match listener.accept().await {
            Ok(link) => {
                let services = services.clone();
                let counted = links.track();
                tokio::spawn(async move {
                    let _counted = counted;
                    if let Err(e) = serve_link_with(link, services).await {
                        warn!("{e}");
                    }
                });
            }
            Err(LinkError::Closed) => bail!("the link listener on {addr} stopped"),
            Err(e) => {
                warn!("accepting a link: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn dial(cfg: LinkConfig, target: &str, services: Services, links: LinkCounter) -> Result<()> {
    let mut delay = Duration::from_millis(100);
    loop {
        let addr = match resolve(target).await {
            Ok(a) => a,
            Err(e) => {
                error!("{e:#}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        info!(%addr, transport = ?cfg.transport, "dialling the protocol unit");
        let link = divisor_link::connect_with_backoff(&cfg, addr).await;
        let counted = links.track();
        let served = serve_link_with(link, services.clone()).await;
        drop(counted);
        match served {
            Ok(()) => info!(%addr, "link closed; dialling again"),
            Err(e) => warn!(%addr, "{e}; dialling again"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn resolve(target: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("resolving --link-connect {target}"))?
        .next()
        .with_context(|| format!("--link-connect {target} resolves to no address"))
}
