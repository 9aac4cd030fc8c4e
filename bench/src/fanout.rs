//! `divisor-bench fanout`: the fan-out engine's per-packet cost against the raw sendmmsg
//! probe, on the same core, to the same destinations, in one run (issue 4).
//!
//! The capacity search (`full`) measures whole deployments in real time, where the
//! sender idles between frames and the figures swing with whatever else the machine does.
//! This subcommand isolates the send path: in a protocol namespace, on the protocol core,
//! it drives the real [`Engine`] (one live H.264 feed, N clients, 1 Mbit/s at 25 frames/s,
//! about 100 packets/s per client) in *virtual time* — each frame is handed in and run at
//! its own deadline immediately, so the engine sends as fast as one core lets it — and
//! counts packets per second of wall time. Beside it the raw probe ([`crate::probe`])
//! sends the same number of datagrams per destination with plain `sendmmsg` and with
//! 4-segment GSO. Every destination is a load client's port, dropped by nftables at the
//! client veth's ingress, exactly as in the capacity search.
//!
//! The engine phases send the way the server sends to plain-RTP viewers: every client
//! announces the feed's shared SSRC and gets the pre-built wire packets. `engine-gso-own`
//! gives each client its own numbering instead (what SRTP, lower-tier and interleaved
//! viewers get), so the two ways compare in one run.
//!
//! `--what` runs a single phase so that `perf stat -e instructions,cycles` around the
//! process gives instructions per packet for that phase alone (the process prints the
//! packet count to divide by).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use divisor_link::{Codec, Frame, FrameFlags, TrackInfo};
use divisor_protocol::fanout::live_feed::LIVE_DELAY;
use divisor_protocol::fanout::udp::UdpSender;
use divisor_protocol::fanout::{
    ClientStats, Command, Engine, LiveJoin, LiveTrack, SendPath, ServerStats, Tier, TrackDest,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::sync::atomic::Ordering;

use crate::servers::Cores;
use crate::{nft, nsthread, probe};

/// Frame interval of the synthetic feed (25 frames/s).
const FRAME: Duration = Duration::from_millis(40);
/// Bytes per frame: one NAL unit cut into exactly four full 1400-byte RTP packets
/// (the packetiser's MTU; FU-A carries 1386 bytes of it per packet after the NAL header
/// byte), 1.12 Mbit/s at 25 frames/s.
const FRAME_BYTES: usize = 1 + 4 * 1386;
/// Datagram size the probe sends: the engine's packets.
const PACKET_BYTES: usize = 1400;
/// A keyframe every this many frames.
const GOP: u64 = 50;

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Clients of the live feed (each a load client's port, dropped at ingress).
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 4.0)]
    pub secs: f64,
    /// Phases, comma-separated: probe, probe-gso, engine, engine-gso, engine-gso-own.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "probe,probe-gso,engine,engine-gso"
    )]
    pub what: Vec<String>,
    /// The engine's send path.
    #[arg(long, value_enum, default_value = "sendmmsg")]
    pub send_path: SendPath,
    /// Core to run on (default: the protocol unit's core of the capacity search).
    #[arg(long)]
    pub core: Option<usize>,
    /// Keep the test topology's software segmentation of GSO sends before the client veth
    /// (like a NIC without UDP segmentation offload) instead of letting the veth pass GSO
    /// super-packets whole, as the capacity search does (like a NIC that segments them).
    #[arg(long)]
    pub veth_gso_segmented: bool,
}

/// What one phase measured.
#[derive(Debug, Clone)]
struct PhaseResult {
    name: String,
    packets: u64,
    secs: f64,
    cpu_secs: f64,
    bytes: u64,
    syscalls: u64,
    drops: u64,
}

pub fn run(args: FanoutArgs) -> Result<()> {
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(
        args.clients <= nft::MAX_LOAD_CLIENTS,
        "--clients must be at most {} (the load port range)",
        nft::MAX_LOAD_CLIENTS
    );
    let cores = Cores::detect();
    let core = args.core.unwrap_or(cores.protocol);
    let topo = divisor_tests::Topology::new(&format!("bench-{}-fanout", std::process::id()))
        .context("creating namespaces (needs root)")?;
    nft::install_drop(&topo.client_ns, &topo.client_if)?;
    if !args.veth_gso_segmented {
        crate::servers::veth_gso_passthrough(&topo)?;
    }
    let dests: Vec<SocketAddrV4> = (0..args.clients)
        .map(|i| SocketAddrV4::new(topo.client_ip, nft::load_port(i)))
        .collect();
    println!(
        "divisor-bench fanout: {} clients, {} s per phase, core {core}, {FRAME_BYTES}-byte \
         frames at 25/s (4 RTP packets of {PACKET_BYTES} B, 100 packets/s per client)",
        args.clients, args.secs
    );
    let mut results = Vec::new();
    for what in &args.what {
        let r = match what.as_str() {
            "probe" | "probe-gso" => {
                let gso = what == "probe-gso";
                let r = probe::run(
                    &topo.proto_ns,
                    core,
                    dests.clone(),
                    gso,
                    args.secs,
                    PACKET_BYTES,
                )?;
                PhaseResult {
                    name: what.clone(),
                    packets: r.packets,
                    secs: r.secs,
                    cpu_secs: r.cpu_secs,
                    bytes: r.packets * PACKET_BYTES as u64,
                    syscalls: 0,
                    drops: r.errors,
                }
            }
            "engine" | "engine-gso" | "engine-gso-own" => {
                let gso = what != "engine";
                let shared = what != "engine-gso-own";
                let d = dests.clone();
                let (path, secs) = (args.send_path, args.secs);
                let h = nsthread::spawn_in_ns("fanout", &topo.proto_ns, Some(core), move || {
                    engine_phase(&d, path, gso, shared, secs)
                })?;
                let mut r = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("engine thread panicked"))??;
                r.name = what.clone();
                r
            }
            other => {
                anyhow::bail!(
                    "unknown phase {other:?}: use probe, probe-gso, engine, engine-gso or \
                     engine-gso-own"
                )
            }
        };
        print_phase(&r);
        results.push(r);
    }
    let rate = |n: &str| {
        results.iter().find(|r| r.name == n).map(|r| {
            (
                r.packets as f64 / r.secs,
                r.packets as f64 / r.cpu_secs.max(1e-9),
            )
        })
    };
    for (ours, base) in [
        ("engine", "probe"),
        ("engine-gso", "probe-gso"),
        ("engine-gso-own", "probe-gso"),
    ] {
        if let (Some(a), Some(b)) = (rate(ours), rate(base)) {
            println!(
                "{ours} / {base}: {:.0} % of the packet rate, {:.0} % per CPU-second",
                100.0 * a.0 / b.0,
                100.0 * a.1 / b.1
            );
        }
    }
    Ok(())
}

fn print_phase(r: &PhaseResult) {
    let pps = r.packets as f64 / r.secs;
    let cpu_ns = r.cpu_secs * 1e9 / r.packets.max(1) as f64;
    println!(
        "{:<11} {:>9} packets of {:>4.0} B in {:.2} s = {:>8.0} packets/s = {:>6.0} Mbit/s; \
         thread CPU {:.2} s = {:>5.0} ns/packet ({:>8.0} packets per CPU-second){}{}",
        r.name,
        r.packets,
        r.bytes as f64 / r.packets.max(1) as f64,
        r.secs,
        pps,
        r.bytes as f64 * 8.0 / r.secs / 1e6,
        r.cpu_secs,
        cpu_ns,
        1e9 / cpu_ns,
        if r.syscalls > 0 {
            format!(
                ", {:.1} packets/syscall",
                r.packets as f64 / r.syscalls as f64
            )
        } else {
            String::new()
        },
        if r.drops > 0 {
            format!(", {} dropped", r.drops)
        } else {
            String::new()
        },
    );
}

use probe::thread_cpu_secs as thread_cpu;

fn video() -> TrackInfo {
    TrackInfo {
        track: 0,
        codec: Codec::H264,
        clock_rate: 90_000,
        width: 640,
        height: 360,
        sample_rate: 0,
        channels: 0,
        bitrate: 1_000_000,
        params: vec![],
    }
}

/// Frame `k` of the synthetic feed: one NAL unit of [`FRAME_BYTES`].
fn frame(k: u64) -> Frame {
    let key = k.is_multiple_of(GOP);
    let mut data = vec![0x5au8; FRAME_BYTES];
    data[..5].copy_from_slice(&[0, 0, 0, 1, if key { 0x65 } else { 0x41 }]);
    let mut flags = FrameFlags::empty();
    if key {
        flags.insert(FrameFlags::KEYFRAME);
    }
    Frame {
        channel: 1,
        track: 0,
        codec: Codec::H264,
        flags,
        pts: (k * 3600) as i64,
        dts: (k * 3600) as i64,
        duration: 3600,
        data: Bytes::from(data),
    }
}

fn bind(port: u16) -> Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

/// The feed's shared SSRC in the engine phases.
const SHARED_SSRC: u32 = 0x5EED_0001;

/// The engine with one live feed and a client per destination, run in virtual time for
/// `secs` of wall time. With `shared`, every client takes the feed's shared numbering
/// (the pre-built packets); without, each its own.
fn engine_phase(
    dests: &[SocketAddrV4],
    path: SendPath,
    gso: bool,
    shared: bool,
    secs: f64,
) -> Result<PhaseResult> {
    let rtp = Arc::new(bind(0)?);
    let rtcp = Arc::new(bind(0)?);
    let stats = ServerStats::new();
    let mut engine = Engine::new(
        UdpSender::new(rtp, path, gso)?,
        UdpSender::new(rtcp, SendPath::Sendmmsg, false)?,
        stats.clone(),
    );
    let t0 = Instant::now();
    engine.handle(
        Command::AddLive {
            feed: 1,
            tracks: vec![video()],
            shared_ssrcs: vec![SHARED_SSRC],
            name: "bench".into(),
        },
        t0,
    );
    for (i, d) in dests.iter().enumerate() {
        let client = i as u64 + 1;
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let addr = SocketAddr::V4(*d);
        let rtcp = SocketAddr::V4(SocketAddrV4::new(*d.ip(), d.port() + 1));
        engine.handle(
            Command::JoinLive(LiveJoin {
                client,
                feed: 1,
                tier: Tier::Full,
                tracks: vec![LiveTrack {
                    track: 0,
                    dest: TrackDest::Udp {
                        rtp: addr,
                        rtcp,
                        srtp: None,
                    },
                    ssrc: if shared { SHARED_SSRC } else { client as u32 },
                }],
                stats: ClientStats::new(client, "bench", "live/bench/", "bench"),
                reply: tx,
            }),
            t0,
        );
        engine.handle(Command::Start { client }, t0);
    }
    // Warm up one GOP's worth (first keyframe starts every client), then measure.
    let mut k = 0u64;
    let step = |engine: &mut Engine, k: &mut u64| {
        let now = t0 + FRAME * (*k as u32);
        engine.handle(
            Command::LiveFrame {
                feed: 1,
                frame: frame(*k),
            },
            now,
        );
        engine.run_due(now + LIVE_DELAY);
        *k += 1;
    };
    for _ in 0..5 {
        step(&mut engine, &mut k);
    }
    let p0 = stats.packets.load(Ordering::Relaxed);
    let s0 = stats.syscalls.load(Ordering::Relaxed);
    let d0 = stats.drops.load(Ordering::Relaxed);
    let b0 = stats.bytes.load(Ordering::Relaxed);
    let c0 = thread_cpu();
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    while start.elapsed() < until {
        step(&mut engine, &mut k);
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(PhaseResult {
        name: String::new(),
        packets: stats.packets.load(Ordering::Relaxed) - p0,
        secs: wall,
        cpu_secs: thread_cpu() - c0,
        bytes: stats.bytes.load(Ordering::Relaxed) - b0,
        syscalls: stats.syscalls.load(Ordering::Relaxed) - s0,
        drops: stats.drops.load(Ordering::Relaxed) - d0,
    })
}
