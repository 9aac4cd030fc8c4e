//! `divisor-protocol`: the protocol unit as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use divisor_link::{LinkConfig, Role, TransportKind};
use divisor_protocol::server::{maintain_link, serve_rtsp, FrontEndArgs, LinkMode};
use divisor_protocol::upstream::Upstream;

/// Divisor protocol unit: receives encoded frames from an encoder unit over the link and
/// serves them to RTSP clients as RTP (UDP or interleaved TCP), paced by media time.
///
/// Play with e.g. `ffplay rtsp://HOST:8554/vod/demo.mp4` (file names are those of the
/// encoder unit's library).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Dial the encoder unit at this address (it runs with --link-listen). Redials with
    /// backoff whenever the link drops.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:7400",
        conflicts_with = "link_listen"
    )]
    link_connect: SocketAddr,

    /// Instead of dialling, wait for the encoder unit to dial in here (it runs with
    /// --link-connect).
    #[arg(long, value_name = "ADDR:PORT")]
    link_listen: Option<SocketAddr>,

    /// File with the pre-shared link key; both units must hold the same bytes
    /// (e.g. `head -c 32 /dev/urandom | base64 > divisor-link.key`).
    #[arg(long, value_name = "FILE", default_value = "divisor-link.key")]
    link_key_file: PathBuf,

    /// How the link is carried: `tcp` (tokio sockets) or `uring` (io_uring sockets with
    /// batched submissions). Both ends must agree.
    #[arg(long, value_name = "tcp|uring", default_value = "tcp")]
    link_transport: TransportKind,

    #[command(flatten)]
    front_end: FrontEndArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    divisor_link::logging::init();
    let args = Args::parse();
    let key = divisor_link::read_key_file(&args.link_key_file).with_context(|| {
        format!(
            "cannot read the link key from {}",
            args.link_key_file.display()
        )
    })?;
    let link = LinkConfig {
        key,
        role: Role::Protocol,
        transport: args.link_transport,
    };
    let mode = match args.link_listen {
        Some(addr) => LinkMode::Listen(addr),
        None => LinkMode::Connect(args.link_connect),
    };
    let upstream = Upstream::new();
    let front = args.front_end.config();
    tokio::select! {
        r = maintain_link(upstream.clone(), link, mode) => r,
        r = serve_rtsp(&front, upstream) => r,
    }
}
