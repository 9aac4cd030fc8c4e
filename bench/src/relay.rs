//! `divisor-bench relay`: one reflector core forwarding a live channel to N children,
//! beside a raw TCP fan-out probe on the same core; and the latency one relay hop adds.
//!
//! Throughput: a parent (its own thread, core 1) sends 20 KB video frames (a 4 Mbit/s
//! channel at 25 fps, sent as fast as the link takes them) to a reflector whose whole
//! runtime is one thread pinned to core 0; N children (core 1) read and count. The probe,
//! on core 0 in the same run, writes the same bytes (frame plus link header) to N
//! non-blocking TCP sockets (poll when none takes more), read by one reader thread
//! on core 1 (the children share one runtime thread there too). Figures are what reaches the children.
//!
//! Latency: the parent sends the channel at its real rate (25 frames/s) stamped with the
//! send time; one child reads straight from the parent, another through the reflector.
//! The difference of the two distributions is what the hop adds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use divisor_link::{
    Codec, Frame, FrameFlags, Link, LinkConfig, LinkListener, Message, Role, TrackInfo,
    TransportKind,
};
use divisor_reflector::driver::{DriverConfig, Reflector};
use divisor_reflector::relay::RelayConfig;

use crate::nsthread::pin_to_core;

#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// Children counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    children: Vec<usize>,
    /// Seconds per measurement (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds of the latency measurement.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
}

const FRAME_BYTES: usize = 20_000;
const KEY: &[u8] = b"divisor-bench relay";

fn cfg(role: Role) -> LinkConfig {
    LinkConfig {
        key: KEY.to_vec(),
        role,
        transport: TransportKind::Tcp,
    }
}

fn video() -> TrackInfo {
    TrackInfo {
        track: 0,
        codec: Codec::H264,
        clock_rate: 90_000,
        width: 1280,
        height: 720,
        sample_rate: 0,
        channels: 0,
        bitrate: 4_000_000,
        params: vec![],
    }
}

fn frame(channel: u32, n: i64, stamp_ns: u64) -> Frame {
    let mut data = vec![0u8; FRAME_BYTES];
    data[..8].copy_from_slice(&stamp_ns.to_le_bytes());
    Frame {
        channel,
        track: 0,
        codec: Codec::H264,
        flags: if n % 50 == 0 {
            FrameFlags::KEYFRAME
        } else {
            FrameFlags::empty()
        },
        pts: n * 3600,
        dts: n * 3600,
        duration: 3600,
        data: Bytes::from(data),
    }
}

/// A parent serving channel "cam" to whoever subscribes: frames as fast as the link takes
/// them (`pace` None) or every `pace`, stamped with ns since `epoch`.
async fn parent(epoch: Instant, pace: Option<Duration>) -> Result<SocketAddr> {
    let l = LinkListener::bind(&cfg(Role::Encoder), "127.0.0.1:0".parse()?).await?;
    let at = l.local_addr();
    tokio::spawn(async move {
        while let Ok(link) = l.accept().await {
            tokio::spawn(serve_parent(link, epoch, pace));
        }
    });
    Ok(at)
}

async fn serve_parent(link: Link, epoch: Instant, pace: Option<Duration>) {
    let Link {
        sender,
        mut receiver,
        ..
    } = link;
    let channel = loop {
        match receiver.recv().await {
            Ok(Message::Subscribe { channel, .. }) => break channel,
            Ok(Message::Ping { seq }) => {
                let _ = sender.send(Message::Pong { seq }).await;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    };
    let s2 = sender.clone();
    tokio::spawn(async move {
        while let Ok(m) = receiver.recv().await {
            if let Message::Ping { seq } = m {
                let _ = s2.send(Message::Pong { seq }).await;
            }
        }
    });
    let _ = sender
        .send(Message::Announce {
            channel,
            duration_ms: None,
            tracks: vec![video()],
        })
        .await;
    let mut n = 0i64;
    let mut tick = pace.map(tokio::time::interval);
    loop {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let stamp = epoch.elapsed().as_nanos() as u64;
        if sender
            .send(Message::Frame(frame(channel, n, stamp)))
            .await
            .is_err()
        {
            return;
        }
        n += 1;
    }
}

/// A child that subscribes to "cam" at `at` and counts frames and bytes (and, with
/// `lat`, records arrival minus stamp in µs).
async fn child(
    at: SocketAddr,
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    epoch: Instant,
    lat: Option<Arc<std::sync::Mutex<Vec<u64>>>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut link = divisor_link::connect(&cfg(Role::Protocol), at).await?;
    link.sender
        .send(Message::Subscribe {
            channel: 1,
            name: "cam".into(),
            rendition: String::new(),
        })
        .await?;
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), link.receiver.recv()).await {
            Ok(Ok(Message::Frame(f))) => {
                frames.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(f.data.len() as u64, Ordering::Relaxed);
                if let Some(l) = &lat {
                    let stamp = u64::from_le_bytes(f.data[..8].try_into().unwrap_or([0; 8]));
                    let now = epoch.elapsed().as_nanos() as u64;
                    l.lock().unwrap().push(now.saturating_sub(stamp) / 1000);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    Ok(())
}

fn runtime(core: usize, name: &str) -> Result<tokio::runtime::Runtime> {
    let name = name.to_string();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .thread_name(name)
        .on_thread_start(move || {
            let _ = pin_to_core(core);
        })
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn start_reflector(
    rt: &tokio::runtime::Runtime,
    upstream: SocketAddr,
) -> Result<(Reflector, SocketAddr)> {
    rt.block_on(async {
        let node = Reflector::start(
            RelayConfig::new("bench", vec![upstream.to_string()]),
            DriverConfig {
                link: cfg(Role::Encoder),
                child_queue: 1024,
                child_stall: Duration::from_secs(30),
            },
        );
        let at = node.listen("127.0.0.1:0".parse()?).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, anyhow::Error>((node, at))
    })
}

/// Frames/s delivered in total to `n` children of one reflector core.
fn relay_run(n: usize, secs: f64) -> Result<(f64, f64, u64)> {
    let epoch = Instant::now();
    let peers = runtime(1, "bench-peers")?;
    let node_rt = runtime(0, "bench-reflector")?;
    let up = peers.block_on(parent(epoch, None))?;
    let (node, at) = start_reflector(&node_rt, up)?;
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..n {
        peers.spawn(child(
            at,
            frames.clone(),
            bytes.clone(),
            epoch,
            None,
            stop.clone(),
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (f0, b0) = (
        frames.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let dt = t0.elapsed().as_secs_f64();
    let (f1, b1) = (
        frames.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    let skips = node
        .snapshot()
        .channels
        .iter()
        .map(|c| c.counters.skips)
        .sum();
    drop(node);
    node_rt.shutdown_timeout(Duration::from_secs(1));
    peers.shutdown_timeout(Duration::from_secs(1));
    Ok((
        (f1 - f0) as f64 / dt,
        (b1 - b0) as f64 * 8.0 / dt / 1e9,
        skips,
    ))
}

/// The raw probe: one thread on core 0 writes the same frames (payload plus a 38-byte
/// header) round-robin to `n` blocking TCP sockets; readers on core 1 discard.
fn probe_run(n: usize, secs: f64) -> Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..n {
        writers.push(TcpStream::connect(addr)?);
        let (s, _) = listener.accept()?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    // One reader thread for all sockets, as the children share one runtime thread.
    let (total_r, stop_r) = (total.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        let _ = pin_to_core(1);
        probe_reader(sockets, &total_r, &stop_r);
    });
    for w in &writers {
        w.set_nodelay(true)?;
        w.set_nonblocking(true)?;
    }
    let stop_w = stop.clone();
    let writer = std::thread::spawn(move || {
        let _ = pin_to_core(0);
        probe_writer(writers, &stop_w);
    });
    std::thread::sleep(Duration::from_millis(500));
    let b0 = total.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let dt = t0.elapsed().as_secs_f64();
    let b1 = total.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = reader.join();
    let bytes = (b1 - b0) as f64;
    // Payload only, as the relay figure counts.
    let payload = bytes * FRAME_BYTES as f64 / (FRAME_BYTES + 38) as f64;
    Ok((payload / FRAME_BYTES as f64 / dt, payload * 8.0 / dt / 1e9))
}

/// Writes frame after frame to every socket without blocking on any one of them (as the
/// reflector's async writers do): each socket keeps its place in its current frame, and
/// when none can take more, `poll` waits for the first that can.
fn probe_writer(mut writers: Vec<TcpStream>, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    let buf = vec![7u8; FRAME_BYTES + 38];
    let mut offset = vec![0usize; writers.len()];
    let mut fds: Vec<libc::pollfd> = writers
        .iter()
        .map(|w| libc::pollfd {
            fd: w.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let mut progressed = false;
        for (i, w) in writers.iter_mut().enumerate() {
            match w.write(&buf[offset[i]..]) {
                Ok(k) => {
                    offset[i] = (offset[i] + k) % buf.len();
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        if !progressed {
            // SAFETY: `fds` is a valid array of pollfd for the call's duration.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        }
    }
}

/// Reads and discards from every socket, polling when none has data.
fn probe_reader(mut sockets: Vec<TcpStream>, total: &AtomicU64, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 256 * 1024];
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let mut progressed = false;
        for s in sockets.iter_mut() {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(k) => {
                    total.fetch_add(k as u64, Ordering::Relaxed);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        if !progressed {
            // SAFETY: `fds` is a valid array of pollfd for the call's duration.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        }
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn latency_run(secs: f64) -> Result<(Vec<u64>, Vec<u64>)> {
    let epoch = Instant::now();
    let peers = runtime(1, "bench-peers")?;
    let node_rt = runtime(0, "bench-reflector")?;
    let up = peers.block_on(parent(epoch, Some(Duration::from_millis(40))))?;
    let (node, at) = start_reflector(&node_rt, up)?;
    let stop = Arc::new(AtomicBool::new(false));
    let direct = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hop = Arc::new(std::sync::Mutex::new(Vec::new()));
    let z = || Arc::new(AtomicU64::new(0));
    peers.spawn(child(
        up,
        z(),
        z(),
        epoch,
        Some(direct.clone()),
        stop.clone(),
    ));
    peers.spawn(child(at, z(), z(), epoch, Some(hop.clone()), stop.clone()));
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(600));
    drop(node);
    node_rt.shutdown_timeout(Duration::from_secs(1));
    peers.shutdown_timeout(Duration::from_secs(1));
    // Skip the first second (GOP replay, connection warm-up).
    let skip = 25;
    let d = direct.lock().unwrap().iter().skip(skip).copied().collect();
    let h = hop.lock().unwrap().iter().skip(skip).copied().collect();
    Ok((d, h))
}

pub fn run(args: RelayArgs) -> Result<()> {
    println!(
        "divisor-bench relay: 20 KB frames (a 4 Mbit/s channel at 25 fps), reflector on core 0, \
         children on core 1, {} s per measurement",
        args.seconds
    );
    println!();
    println!("  children  path        frames/s  Gbit/s   vs probe  skips");
    for &n in &args.children {
        let (pf, pg) = probe_run(n, args.seconds)?;
        let (rf, rg, skips) = relay_run(n, args.seconds)?;
        println!("  {n:>8}  raw probe  {pf:>9.0}  {pg:>6.2}          -");
        println!(
            "  {n:>8}  reflector  {rf:>9.0}  {rg:>6.2}   {:>6.0}%  {skips}",
            100.0 * rg / pg
        );
    }
    println!();
    let (mut d, mut h) = latency_run(args.latency_seconds)?;
    println!(
        "latency, parent send to child arrival, {} frames at 25 fps (µs):",
        h.len()
    );
    println!("  path              p50     p99     max");
    for (name, v) in [("direct", &mut d), ("one relay hop", &mut h)] {
        let p50 = percentile(v, 0.5);
        let p99 = percentile(v, 0.99);
        let max = v.iter().max().copied().unwrap_or(0);
        println!("  {name:<14} {p50:>6}  {p99:>6}  {max:>6}");
    }
    let added99 = percentile(&mut h, 0.99) as i64 - percentile(&mut d, 0.99) as i64;
    let added50 = percentile(&mut h, 0.5) as i64 - percentile(&mut d, 0.5) as i64;
    println!("  added by the hop: p50 {added50} µs, p99 {added99} µs (goal p99 <= 1000 µs)");
    Ok(())
}
