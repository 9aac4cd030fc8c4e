//! `divisor-bench crypto`: content-cipher throughput per core, ours beside `openssl speed`
//! in the same run.
//!
//! Each measurement runs on one thread over one buffer of `--size` bytes (16 KiB by default,
//! `openssl speed`'s largest standard block), in place, counting wall time: MB/s of one
//! core. OpenSSL is run as `openssl speed -elapsed -seconds S -bytes SIZE -evp <cipher>`
//! (wall time too), with `-provider legacy -provider default` for DES on OpenSSL 3.

use anyhow::{anyhow, bail, Context, Result};
use des::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use divisor_link::content::{derive_key, FrameCipher};
use divisor_link::Cipher;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct CryptoArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds; the table shows medians (each round measures ours, then OpenSSL).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Buffer size in bytes (a multiple of 16).
    #[arg(long, default_value_t = 16384)]
    size: usize,
    /// The openssl binary.
    #[arg(long, default_value = "openssl")]
    openssl: String,
}

/// One line of the table.
struct Row {
    name: &'static str,
    /// `openssl speed` arguments of the matching OpenSSL measurement, if any.
    openssl: Option<&'static [&'static str]>,
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

pub fn run(args: CryptoArgs) -> Result<()> {
    if args.seconds <= 0.0 || args.size == 0 || !args.size.is_multiple_of(16) {
        bail!("--seconds must be positive and --size a positive multiple of 16");
    }
    let secs = Duration::from_secs_f64(args.seconds);
    let master = b"divisor-bench master secret";
    let des = FrameCipher::new(
        Cipher::DesCbc,
        0,
        &derive_key(master, "bench", 0, Cipher::DesCbc),
    )?;
    let aes = FrameCipher::new(
        Cipher::Aes128Ctr,
        0,
        &derive_key(master, "bench", 0, Cipher::Aes128Ctr),
    )?;
    let des_crate = des::Des::new(GenericArray::from_slice(&derive_key(
        master,
        "bench",
        0,
        Cipher::DesCbc,
    )));
    let mut buf = vec![0x5au8; args.size];
    let frame: Vec<u8> = (0..args.size).map(|i| i as u8).collect();

    println!(
        "divisor-bench crypto: {} B buffers, {} s per measurement, {} rounds, one thread each ({} CPUs)",
        args.size,
        args.seconds,
        args.repeat.max(1),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("  DES is insecure (56-bit key): measured as DIVISOR's workload, not for protecting content.");
    let mut rows = vec![
        Row {
            name: "DES-CBC encrypt",
            openssl: Some(&[
                "-provider",
                "legacy",
                "-provider",
                "default",
                "-evp",
                "des-cbc",
            ]),
            ours: vec![],
            theirs: vec![],
        },
        Row {
            name: "DES-CBC decrypt",
            openssl: Some(&[
                "-provider",
                "legacy",
                "-provider",
                "default",
                "-decrypt",
                "-evp",
                "des-cbc",
            ]),
            ours: vec![],
            theirs: vec![],
        },
        Row {
            name: "DES-CBC encrypt, des crate",
            openssl: None,
            ours: vec![],
            theirs: vec![],
        },
        Row {
            name: "DES-CBC frame (alloc+header)",
            openssl: None,
            ours: vec![],
            theirs: vec![],
        },
        Row {
            name: "AES-128-CTR",
            openssl: Some(&["-evp", "aes-128-ctr"]),
            ours: vec![],
            theirs: vec![],
        },
        Row {
            name: "AES-128-CTR frame (alloc+header)",
            openssl: None,
            ours: vec![],
            theirs: vec![],
        },
    ];
    for _ in 0..args.repeat.max(1) {
        for row in &mut rows {
            let mbps = match row.name {
                "DES-CBC encrypt" => {
                    measure(secs, args.size, || des.encrypt_in_place_raw(&mut buf))
                }
                "DES-CBC decrypt" => {
                    measure(secs, args.size, || des.decrypt_in_place_raw(&mut buf))
                }
                "DES-CBC encrypt, des crate" => {
                    measure(secs, args.size, || cbc_with_des_crate(&des_crate, &mut buf))
                }
                "DES-CBC frame (alloc+header)" => measure(secs, args.size, || {
                    std::hint::black_box(des.encrypt(0, 3600, &frame));
                }),
                "AES-128-CTR" => measure(secs, args.size, || aes.encrypt_in_place_raw(&mut buf)),
                _ => measure(secs, args.size, || {
                    std::hint::black_box(aes.encrypt(0, 3600, &frame));
                }),
            };
            row.ours.push(mbps);
            if let Some(extra) = row.openssl {
                let theirs = openssl_speed(&args.openssl, extra, args.size, args.seconds)
                    .with_context(|| format!("openssl speed for {}", row.name))?;
                row.theirs.push(theirs);
            }
        }
    }
    println!();
    println!(
        "{:<34} {:>12} {:>14} {:>8}   per-round ours / openssl MB/s",
        "measurement", "ours MB/s", "openssl MB/s", "ratio"
    );
    for row in &rows {
        let ours = median(&row.ours);
        let (theirs, ratio) = if row.theirs.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let t = median(&row.theirs);
            (format!("{t:.1}"), format!("{:.2}", ours / t))
        };
        let rounds: Vec<String> = row
            .ours
            .iter()
            .enumerate()
            .map(|(i, o)| match row.theirs.get(i) {
                Some(t) => format!("{o:.0}/{t:.0}"),
                None => format!("{o:.0}"),
            })
            .collect();
        println!(
            "{:<34} {:>12.1} {:>14} {:>8}   {}",
            row.name,
            ours,
            theirs,
            ratio,
            rounds.join(" ")
        );
    }
    println!();
    println!("MB = 10^6 bytes; one thread per measurement, so MB/s is per core.");
    Ok(())
}

/// CBC encryption with the `des` crate, one block at a time: the baseline issue 3 quotes.
fn cbc_with_des_crate(des: &des::Des, buf: &mut [u8]) {
    let mut chain = [0u8; 8];
    for block in buf.chunks_exact_mut(8) {
        for (b, c) in block.iter_mut().zip(chain) {
            *b ^= c;
        }
        des.encrypt_block(GenericArray::from_mut_slice(block));
        chain.copy_from_slice(block);
    }
}

/// MB/s of calling `f` (which processes `bytes` bytes) repeatedly for `secs`.
fn measure(secs: Duration, bytes: usize, mut f: impl FnMut()) -> f64 {
    // Warm caches and the branch predictor.
    for _ in 0..8 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..16 {
            f();
        }
        n += 16;
        let t = start.elapsed();
        if t >= secs {
            return n as f64 * bytes as f64 / t.as_secs_f64() / 1e6;
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `openssl speed -elapsed -seconds S -bytes SIZE <extra>` and returns MB/s.
fn openssl_speed(openssl: &str, extra: &[&str], size: usize, seconds: f64) -> Result<f64> {
    let secs = (seconds.round() as u64).max(1).to_string();
    let size_s = size.to_string();
    let mut args = vec!["speed", "-elapsed", "-seconds", &secs, "-bytes", &size_s];
    args.extend_from_slice(extra);
    let mut out = Command::new(openssl)
        .args(&args)
        .output()
        .with_context(|| format!("running {openssl}"))?;
    if !out.status.success() && extra.contains(&"legacy") {
        // OpenSSL 1.1 has no providers: DES is built in.
        args.retain(|a| *a != "-provider" && *a != "legacy" && *a != "default");
        out = Command::new(openssl).args(&args).output()?;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{openssl} {} failed: {}{}",
            args.join(" "),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The last line reads e.g. "DES-CBC  80915.55k": thousands of bytes per second.
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("empty openssl speed output"))?;
    let field = last
        .split_whitespace()
        .last()
        .and_then(|f| f.strip_suffix('k'))
        .ok_or_else(|| anyhow!("unexpected openssl speed output: {last:?}"))?;
    let kbps: f64 = field
        .parse()
        .with_context(|| format!("unexpected openssl speed figure {field:?}"))?;
    Ok(kbps * 1000.0 / 1e6)
}
