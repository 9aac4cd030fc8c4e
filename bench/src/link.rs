//! `divisor-bench link`: link throughput versus a raw TCP socket.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use divisor_link::{
    connect, Codec, Frame, FrameFlags, LinkConfig, LinkListener, Message, Role, TransportKind,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time each measurement runs before counting, so connection setup and slow start are out.
const WARM_UP: Duration = Duration::from_millis(300);

#[derive(clap::Args)]
pub struct LinkArgs {
    /// Seconds counted per measurement (after a 0.3 s warm-up).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds per frame size. Each round measures raw, then every transport, back to back;
    /// the table shows medians over rounds (the ratio is the median of per-round ratios, so
    /// each link figure is compared with the raw figure taken seconds before it).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Frame payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1024,1048576")]
    sizes: Vec<usize>,
    /// Link transports to measure, comma-separated (tcp, uring).
    #[arg(long, value_delimiter = ',', default_value = "tcp,uring")]
    transports: Vec<TransportKind>,
}

/// What one measurement counted.
#[derive(Clone, Copy)]
struct Rate {
    frames: u64,
    secs: f64,
}

impl Rate {
    fn fps(&self) -> f64 {
        self.frames as f64 / self.secs
    }
    fn gbps(&self, size: usize) -> f64 {
        self.fps() * size as f64 * 8.0 / 1e9
    }
}

pub fn run(args: LinkArgs) -> Result<()> {
    if args.seconds <= 0.0 {
        return Err(anyhow!("--seconds must be positive"));
    }
    let secs = Duration::from_secs_f64(args.seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    println!(
        "divisor-bench link: {} s per measurement after {} ms warm-up, 127.0.0.1, {} CPUs",
        args.seconds,
        WARM_UP.as_millis(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "{:>10}  {:<12} {:>12} {:>10} {:>8}   per-round Gbit/s (ratio)",
        "frame", "path", "frames/s", "Gbit/s", "vs raw"
    );
    let repeat = args.repeat.max(1);
    for &size in &args.sizes {
        if size == 0 {
            return Err(anyhow!("frame sizes must be positive"));
        }
        let mut raws = Vec::new();
        let mut links: Vec<Vec<(Rate, f64)>> = args.transports.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeat {
            let raw = raw_tcp(size, secs).context("raw TCP baseline")?;
            for (i, &kind) in args.transports.iter().enumerate() {
                let r = rt
                    .block_on(link(kind, size, secs))
                    .with_context(|| format!("{} link, {size} B", name(kind)))?;
                links[i].push((r, r.fps() / raw.fps()));
            }
            raws.push(raw);
        }
        let raw_detail: Vec<String> = raws
            .iter()
            .map(|r| format!("{:.1}", r.gbps(size)))
            .collect();
        print_row(
            size,
            "raw tcp",
            median_rate(&raws),
            None,
            &raw_detail.join(" "),
        );
        for (i, &kind) in args.transports.iter().enumerate() {
            let detail: Vec<String> = links[i]
                .iter()
                .map(|(r, x)| format!("{:.1} ({:.0}%)", r.gbps(size), x * 100.0))
                .collect();
            let rates: Vec<Rate> = links[i].iter().map(|(r, _)| *r).collect();
            let ratios: Vec<f64> = links[i].iter().map(|(_, x)| *x).collect();
            print_row(
                size,
                &format!("link {}", name(kind)),
                median_rate(&rates),
                Some(median(&ratios)),
                &detail.join(" "),
            );
        }
    }
    Ok(())
}

fn name(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Tcp => "tcp",
        TransportKind::Uring => "uring",
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn median_rate(rs: &[Rate]) -> &Rate {
    let mut v: Vec<&Rate> = rs.iter().collect();
    v.sort_by(|a, b| a.fps().total_cmp(&b.fps()));
    v[v.len() / 2]
}

fn print_row(size: usize, path: &str, r: &Rate, ratio: Option<f64>, detail: &str) {
    let size_s = if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    };
    let ratio = ratio
        .map(|x| format!("{:.0}%", x * 100.0))
        .unwrap_or_else(|| "-".into());
    println!(
        "{:>10}  {:<12} {:>12.0} {:>10.2} {:>8}   {}",
        size_s,
        path,
        r.fps(),
        r.gbps(size),
        ratio,
        detail
    );
}

/// Counts `unit`-sized pieces arriving between the end of the warm-up and `secs` later.
struct Window {
    start: Instant,
    end: Instant,
    counted: u64,
}

impl Window {
    fn new(secs: Duration) -> Window {
        let start = Instant::now() + WARM_UP;
        Window {
            start,
            end: start + secs,
            counted: 0,
        }
    }
    /// Returns false once the window is over.
    fn add(&mut self, n: u64) -> bool {
        let now = Instant::now();
        if now >= self.end {
            return false;
        }
        if now >= self.start {
            self.counted += n;
        }
        true
    }
    fn secs(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// A blocking std TCP write loop of `size`-byte buffers into a reader that discards.
fn raw_tcp(size: usize, secs: Duration) -> Result<Rate> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = stop.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let buf = vec![0x5au8; size];
        while !stop_w.load(Ordering::Relaxed) {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
        Ok(())
    });
    let (mut r, _) = listener.accept()?;
    r.set_nodelay(true)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut w = Window::new(secs);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 || !w.add(n as u64) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(r);
    let _ = writer.join();
    Ok(Rate {
        frames: w.counted / size as u64,
        secs: w.secs(),
    })
}

/// One link of `kind`; a task sends frames of `size` payload bytes, this one counts them.
async fn link(kind: TransportKind, size: usize, secs: Duration) -> Result<Rate> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let cfg = |role| LinkConfig {
        key: b"divisor-bench".to_vec(),
        role,
        transport: kind,
    };
    let listener = LinkListener::bind(&cfg(Role::Protocol), any).await?;
    let enc_cfg = cfg(Role::Encoder);
    let (client, server) =
        tokio::join!(connect(&enc_cfg, listener.local_addr()), listener.accept());
    let (client, mut server) = (client?, server?);
    // One payload shared by every frame: what the encoder unit does with a frame it sends
    // once per channel; the link must not copy it.
    let payload = Bytes::from(vec![0x5au8; size]);
    let sender = client.sender.clone();
    let send_task = tokio::spawn(async move {
        let mut i: i64 = 0;
        loop {
            let f = Frame {
                channel: 1,
                track: 0,
                codec: Codec::H264,
                flags: FrameFlags::empty(),
                pts: i * 3000,
                dts: i * 3000,
                duration: 3000,
                data: payload.clone(),
            };
            if sender.send(Message::Frame(f)).await.is_err() {
                break;
            }
            i += 1;
        }
    });
    let mut w = Window::new(secs);
    loop {
        match server.receiver.recv().await? {
            Message::Frame(f) if f.data.len() == size => {
                if !w.add(1) {
                    break;
                }
            }
            other => return Err(anyhow!("unexpected message {other:?}")),
        }
    }
    send_task.abort();
    let _ = send_task.await;
    drop(server);
    drop(client);
    Ok(Rate {
        frames: w.counted,
        secs: w.secs(),
    })
}
