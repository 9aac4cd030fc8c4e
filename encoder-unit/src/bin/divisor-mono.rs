//! `divisor-mono`: the monolithic server. The same encoder-unit and protocol-unit code as
//! the split deployment, in one process, joined by the in-process link. It exists so the
//! monolithic-versus-split comparison measures the split, not a second implementation.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use divisor_encoder::live::cli::{self, LiveArgs};
use divisor_encoder::{serve_link_with, Catalog, Library, Services};
use divisor_protocol::server::{serve_rtsp, FrontEndArgs};
use divisor_protocol::upstream::Upstream;
use tracing::{error, info};

/// Divisor monolithic server: encoder unit and protocol unit in one process, joined by an
/// in-process link. Serves the files of --library to RTSP clients as
/// `rtsp://HOST:PORT/vod/<file>` and live channels as `rtsp://HOST:PORT/live/<name>`.
/// SIGHUP re-reads `--config`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Folder of media files (MP4, MOV, MKV, MPEG-TS with H.264 and AAC or Opus).
    #[arg(long, value_name = "DIR", default_value = "sample-library")]
    library: PathBuf,

    #[command(flatten)]
    front_end: FrontEndArgs,

    #[command(flatten)]
    live: LiveArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    divisor_link::logging::init();
    let args = Args::parse();
    let library =
        Arc::new(Library::open(&args.library).with_context(|| {
            format!("cannot open the media library {}", args.library.display())
        })?);
    let config = args.live.load().context("configuration")?;
    let scan = library.clone();
    let catalog = Arc::new(tokio::task::spawn_blocking(move || Catalog::scan(&scan)).await?);
    let lib = library.clone();
    let running = Arc::new(tokio::task::spawn_blocking(move || cli::start(config, lib)).await?);
    let services = Services {
        library,
        catalog,
        chains: running.chains.clone(),
        live: running.live.clone(),
    };
    let live_args = args.live.clone();
    tokio::spawn(async move { cli::reload_on_sighup(live_args, &running).await });

    let (encoder_end, protocol_end) = divisor_link::mem_pair();
    tokio::spawn(async move {
        match serve_link_with(encoder_end, services).await {
            Ok(()) => info!("in-process link closed"),
            Err(e) => error!("encoder side of the in-process link failed: {e}"),
        }
    });
    let upstream = Upstream::new();
    upstream.attach(protocol_end);
    let front = args.front_end.config();
    serve_rtsp(&front, upstream).await
}
