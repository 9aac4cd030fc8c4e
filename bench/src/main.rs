//! `divisor-bench`: Divisor's bench harness.
//!
//! Subcommands measure one aspect each; today: `link` (throughput of the encoder-protocol
//! link against a raw TCP socket).

mod asset;
mod capacity;
mod cpu;
mod crypto;
mod decrypt;
mod failover;
mod fanout;
mod janus;
mod link;
mod loadgen;
mod nft;
mod nsthread;
mod plot;
mod probe;
mod receiver;
mod relay;
mod report;
mod rtsp_client;
mod run;
mod sched;
mod server_metrics;
mod servers;
mod stats;
mod transcode;
mod webrtc_capacity;
mod whep_client;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "divisor-bench", about = "Divisor's bench harness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Link throughput: frames/s and Gbit/s of payload over the divisor link (TCP and
    /// io_uring transports) on 127.0.0.1, beside a raw TCP baseline of the same frame sizes.
    ///
    /// For each frame size, in this order: a raw baseline (a blocking std TcpStream writing
    /// buffers of that size in a loop into a reader that discards them), then one link per
    /// transport, with a sender task queueing Frame messages of that payload size as fast as
    /// the link takes them and a receiver task counting them. Each measurement warms up for
    /// 0.3 s and then counts received frames for --seconds; --repeat rounds of all of that
    /// give medians (every round's figure is printed too, so the spread is visible: the
    /// machine may be shared). Gbit/s counts payload bytes only
    /// (the link's ~38-byte frame header is overhead, not throughput). The "vs raw" column is the
    /// link's rate over the raw baseline's of the same round (median over rounds).
    ///
    /// Everything runs in one process on loopback: sender and receiver share the machine's
    /// cores, as they share the CPU in the raw baseline.
    #[command(verbatim_doc_comment)]
    Link(link::LinkArgs),
    /// Content-cipher throughput per core: our DES-CBC (INSECURE, 56-bit key: DIVISOR's
    /// workload, for measurement only) and AES-128-CTR, beside `openssl speed -evp des-cbc`
    /// and `-evp aes-128-ctr` run in the same invocation; prints MB/s and ratios.
    #[command(verbatim_doc_comment)]
    Crypto(crypto::CryptoArgs),
    /// Monolithic versus split, side by side with peers, in under 3 minutes: tiny client
    /// ramps (2, 4, 8) on mono-1c, split-2x1c and mono-2c, the GStreamer RTSP server and
    /// ffmpeg, plus the raw sendmmsg probe. Proves the harness works; the figures are small.
    /// Writes bench/out/<timestamp>/{results.json,results.md,*.png,*.svg}. Needs root.
    Quick(run::RunArgs),
    /// The full capacity run (see bench/README.md): ramps every scenario and peer to the
    /// largest client count that keeps the quality bar. Needs root; takes a while.
    Full(run::RunArgs),
    /// Transcode speed: our TranscodeStage (demux, decode, swscale, libx264) against the
    /// `ffmpeg` command line with the same encoder options on the same input, in one run;
    /// prints wall time, frames/s and the ratio (goal >= 0.95).
    #[command(verbatim_doc_comment)]
    Transcode(transcode::TranscodeArgs),
    /// Fan-out send path against the raw sendmmsg probe on one core (issue 4): the engine
    /// driven in virtual time to N dropped clients beside the probe, packets/s of each.
    /// Needs root. Wrap in `perf stat` with one --what phase for instructions per packet.
    #[command(verbatim_doc_comment)]
    Fanout(fanout::FanoutArgs),
    /// WHEP viewers on webrtc-rs: --viewers N receive-only peer connections in this process
    /// POST offers to --url (http://HOST:PORT/whep/CHANNEL[/RENDITION]), receive for
    /// --seconds, DELETE; prints per-viewer and total RTP loss and join times (--json).
    #[command(verbatim_doc_comment)]
    Webrtc(whep_client::WebrtcArgs),
    /// WebRTC viewers per core (issue 6): our split server (WHEP) beside Janus's streaming
    /// plugin in one run, doubling viewer ramps with the same quality bar; CPU of the
    /// server and of the load client. Needs root and Debian's janus.
    #[command(verbatim_doc_comment)]
    WebrtcCapacity(webrtc_capacity::CapacityArgs),
    /// Join time (issue 6): WHEP POST to first decoded frame in headless Chromium
    /// (tests/browser/play.mjs) on /play/cam/web, warm and cold channel, median and p95.
    #[command(verbatim_doc_comment)]
    WebrtcJoin(webrtc_capacity::JoinArgs),
    /// Reflector relay (issue 7): frames/s and Gbit/s one reflector core forwards to 1, 10
    /// and 100 children beside a raw TCP fan-out probe on the same core, and the latency
    /// one relay hop adds (p50/p99 against a child of the parent itself).
    #[command(verbatim_doc_comment)]
    Relay(relay::RelayArgs),
    /// Reflector fail-over (issue 7): the test tree with a decoder at each public
    /// reflector while the active intermediate is killed, cut off (nftables) and taken out
    /// gracefully, --rounds times each; switch times and the gaps and losses at the
    /// clients. Needs root; about 20 s a round.
    #[command(verbatim_doc_comment)]
    Failover(failover::FailoverArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Link(args) => link::run(args),
        Command::Crypto(args) => crypto::run(args),
        Command::Quick(args) => run::run(run::Mode::Quick, args),
        Command::Full(args) => run::run(run::Mode::Full, args),
        Command::Transcode(args) => transcode::run(args),
        Command::Fanout(args) => fanout::run(args),
        Command::Webrtc(args) => whep_client::run(args),
        Command::WebrtcCapacity(args) => webrtc_capacity::run_capacity(args),
        Command::Relay(args) => relay::run(args),
        Command::Failover(args) => failover::run(args),
        Command::WebrtcJoin(args) => webrtc_capacity::run_join(args),
    }
}
