//! `divisor-bench`: Divisor's bench harness.
//!
//! Subcommands measure one aspect each; today: `link` (throughput of the encoder-protocol
//! link against a raw TCP socket).

mod link;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Link(args) => link::run(args),
    }
}
