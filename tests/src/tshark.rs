//! Reading tshark captures: per-stream RTP statistics and per-packet RTP header fields.

use crate::cmd::run;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Dissector options: RTSP on our port (so tshark reads SDP and SETUP transports and knows
/// each RTP stream's payload type and clock rate) and heuristic RTP as a fallback.
const DECODE_OPTS: &[&str] = &["-o", "rtp.heuristic_rtp:TRUE", "-d", "tcp.port==8554,rtsp"];

/// One row of `tshark -z rtp,streams`.
#[derive(Debug, Clone)]
pub struct RtpStream {
    pub src: String,
    pub dst: String,
    pub ssrc: u32,
    pub payload: String,
    pub packets: u64,
    pub lost: i64,
    pub max_delta_ms: f64,
    pub mean_jitter_ms: f64,
    pub max_jitter_ms: f64,
    /// tshark flagged the stream (sequence errors, wrong timestamps, ...).
    pub problem: bool,
    pub line: String,
}

/// Runs `tshark -r FILE -q -z rtp,streams` and parses the table.
pub fn rtp_streams(file: &Path) -> Result<(Vec<RtpStream>, String)> {
    let out = run(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(DECODE_OPTS)
            .args(["-q", "-z", "rtp,streams"]),
        Duration::from_secs(60),
    )?
    .check()?;
    let mut streams = Vec::new();
    for line in out.stdout.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = t.iter().position(|w| w.starts_with("0x")) else {
            continue;
        };
        if i < 6 || t.len() < i + 11 {
            continue;
        }
        let num = |k: usize| -> Result<f64> {
            t.get(k)
                .context("short row")?
                .parse::<f64>()
                .with_context(|| format!("column {k} of {line:?}"))
        };
        streams.push(RtpStream {
            src: format!("{}:{}", t[i - 4], t[i - 3]),
            dst: format!("{}:{}", t[i - 2], t[i - 1]),
            ssrc: u32::from_str_radix(t[i].trim_start_matches("0x"), 16)?,
            payload: t[i + 1].to_string(),
            packets: t[i + 2].parse()?,
            lost: t[i + 3].parse()?,
            // i+4 is "(x%)", then min/mean/max delta, min/mean/max jitter.
            max_delta_ms: num(i + 7)?,
            mean_jitter_ms: num(i + 9)?,
            max_jitter_ms: num(i + 10)?,
            problem: t.get(i + 11).is_some_and(|p| p.contains('X')),
            line: line.to_string(),
        });
    }
    Ok((streams, out.stdout))
}

/// One RTP packet of a capture.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket {
    /// Seconds since the capture started.
    pub time: f64,
    pub ssrc: u32,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
}

/// Every RTP packet of a capture, in capture order.
pub fn rtp_packets(file: &Path) -> Result<Vec<RtpPacket>> {
    let out = run(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(DECODE_OPTS)
            .args(["-Y", "rtp && !rtcp", "-T", "fields", "-E", "separator=,"])
            .args([
                "-e",
                "frame.time_relative",
                "-e",
                "rtp.ssrc",
                "-e",
                "rtp.p_type",
            ])
            .args(["-e", "rtp.seq", "-e", "rtp.timestamp"]),
        Duration::from_secs(60),
    )?
    .check()?;
    let mut pkts = Vec::new();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            bail!("unexpected tshark line {line:?}");
        }
        pkts.push(RtpPacket {
            time: f[0].parse()?,
            ssrc: u32::from_str_radix(f[1].trim_start_matches("0x"), 16)?,
            payload_type: f[2].parse()?,
            seq: f[3].parse()?,
            timestamp: f[4].parse()?,
        });
    }
    Ok(pkts)
}

/// Text of the RTSP messages in a capture (`-z follow` is awkward; the SDP lines suffice).
pub fn sdp_lines(file: &Path) -> Result<Vec<String>> {
    let out = run(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(DECODE_OPTS)
            .args(["-Y", "sdp", "-T", "fields", "-e", "sdp.media_attr"]),
        Duration::from_secs(60),
    )?
    .check()?;
    Ok(out
        .stdout
        .lines()
        .flat_map(|l| l.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Every RTP stream of a capture: none lost, none flagged by tshark; returns the largest
/// arrival gap (ms) of any stream and a table for the log.
pub fn check_lossless(checks: &mut crate::Checks, file: &Path, min_streams: usize) -> f64 {
    let (streams, table) = match rtp_streams(file) {
        Ok(x) => x,
        Err(e) => {
            checks.check(false, || format!("tshark: {e:#}"));
            return f64::INFINITY;
        }
    };
    eprintln!("{table}");
    checks.check(streams.len() >= min_streams, || {
        format!(
            "{} RTP streams captured, expected at least {min_streams}",
            streams.len()
        )
    });
    for s in &streams {
        checks.check(s.lost == 0 && !s.problem, || {
            format!("RTP stream lost packets or has sequence errors: {}", s.line)
        });
    }
    streams.iter().map(|s| s.max_delta_ms).fold(0.0, f64::max)
}
