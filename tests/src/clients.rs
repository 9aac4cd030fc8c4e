//! Real clients run in the client namespace: ffprobe, ffmpeg, GStreamer, tshark.

use crate::cmd::{kill_group, CmdOutput};
use crate::netns::{Node, Topology};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// RTSP lower transport a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpTransport {
    /// RTP/AVP over UDP unicast.
    Udp,
    /// RTP/AVP/TCP interleaved in the RTSP connection.
    Tcp,
}

impl RtpTransport {
    pub fn flag(self) -> &'static str {
        match self {
            RtpTransport::Udp => "udp",
            RtpTransport::Tcp => "tcp",
        }
    }
}

/// Result of decoding a stream with ffmpeg.
#[derive(Debug)]
pub struct Decode {
    /// Video frames decoded (ffmpeg's final `frame=` progress value).
    pub frames: u64,
    /// Lines of ffmpeg's stderr that report decode/transport trouble.
    pub error_lines: Vec<String>,
    pub out: CmdOutput,
}

impl Decode {
    /// A failure message with the relevant output.
    pub fn report(&self) -> String {
        format!(
            "frames={} error_lines={:?}\n{}",
            self.frames,
            self.error_lines,
            self.out.failure_report()
        )
    }
}

/// stderr fragments (lower-case) that mean frames were damaged or lost on the way.
const TROUBLE: &[&str] = &[
    "error",
    "missed",
    "conceal",
    "corrupt",
    "invalid",
    "non-existing",
    "max delay reached",
    "packet loss",
    "out of order",
    "no frame",
    "decoding for stream",
];

/// Frames ffmpeg reported in its `-progress` output: it prints blocks of key=value, and
/// the last `frame=` is the total.
pub fn progress_frames(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("frame="))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .next_back()
        .unwrap_or(0)
}

/// `gst-launch-1.0` arguments that play `url` with `rtspsrc` over `transport` into two
/// decode branches (`decodebin ! fakesink sync=true`, one per stream).
pub fn gst_rtspsrc_args(url: &str, transport: RtpTransport) -> Vec<String> {
    let mut args = vec![
        "-e".to_string(),
        "rtspsrc".into(),
        format!("location={url}"),
        format!("protocols={}", transport.flag()),
        "name=src".into(),
    ];
    for _ in 0..2 {
        args.extend(
            [
                "src.",
                "!",
                "queue",
                "!",
                "decodebin",
                "!",
                "fakesink",
                "sync=true",
            ]
            .map(String::from),
        );
    }
    args
}

/// The lines of `stderr` that report trouble (see `TROUBLE`).
pub fn trouble_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            TROUBLE.iter().any(|t| l.contains(t))
        })
        .map(str::to_string)
        .collect()
}

impl Topology {
    /// `ffprobe -show_streams -show_format -of json` of `url` from the client ns.
    pub fn ffprobe_json(&self, url: &str, transport: RtpTransport) -> Result<Value> {
        let out = self
            .run_in(
                Node::Client,
                "ffprobe",
                [
                    "-v",
                    "error",
                    "-timeout",
                    "10000000",
                    "-rtsp_transport",
                    transport.flag(),
                    "-show_streams",
                    "-show_format",
                    "-of",
                    "json",
                    url,
                ],
                Duration::from_secs(30),
            )?
            .check()
            .with_context(|| format!("ffprobe {url} over {transport:?}"))?;
        serde_json::from_str(&out.stdout).with_context(|| format!("ffprobe JSON: {}", out.stdout))
    }

    /// The packets (`codec_type`, `pts_time`) ffprobe reads from `url` in its first 4 s,
    /// over RTSP interleaved in TCP, from the client ns: what lip-sync checks look at.
    pub fn ffprobe_packets(&self, url: &str) -> Result<Vec<Value>> {
        let out = self
            .run_in(
                Node::Client,
                "ffprobe",
                [
                    "-v",
                    "error",
                    "-timeout",
                    "10000000",
                    "-rtsp_transport",
                    "tcp",
                    "-read_intervals",
                    "%+4",
                    "-show_entries",
                    "packet=codec_type,pts_time",
                    "-of",
                    "json",
                    url,
                ],
                Duration::from_secs(40),
            )?
            .check()
            .with_context(|| format!("ffprobe packets of {url}"))?;
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("ffprobe JSON: {}", out.stdout))?;
        Ok(v["packets"].as_array().cloned().unwrap_or_default())
    }

    /// Decodes `url` to `-f null` with ffmpeg from the client ns and counts the video
    /// frames. `input_opts` go before `-i` (e.g. `-ss 5`). Every stream is decoded, so audio
    /// errors show up in `error_lines` too. Runs with `-fps_mode passthrough` so the count
    /// is exactly the decoder's output (no frame duplication or dropping).
    pub fn ffmpeg_decode(
        &self,
        url: &str,
        transport: RtpTransport,
        input_opts: &[&str],
        timeout: Duration,
    ) -> Result<Decode> {
        let mut args: Vec<&str> = vec![
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-loglevel",
            "warning",
            "-timeout",
            "10000000",
            "-rtsp_transport",
            transport.flag(),
        ];
        args.extend_from_slice(input_opts);
        args.extend_from_slice(&[
            "-i",
            url,
            "-map",
            "0:v:0",
            "-map",
            "0:a?",
            "-fps_mode",
            "passthrough",
            "-f",
            "null",
            "-",
            "-progress",
            "pipe:1",
        ]);
        let out = self.run_in(Node::Client, "ffmpeg", args, timeout)?;
        let frames = progress_frames(&out.stdout);
        let error_lines = trouble_lines(&out.stderr);
        Ok(Decode {
            frames,
            error_lines,
            out,
        })
    }

    /// Plays `url` to the end with `gst-launch-1.0 -e rtspsrc ! decodebin ! fakesink`
    /// (one decode branch per stream, clock-synchronised sinks). Returns the finished
    /// command; success means GStreamer reached EOS and exited 0.
    pub fn gst_play(
        &self,
        url: &str,
        transport: RtpTransport,
        timeout: Duration,
    ) -> Result<CmdOutput> {
        self.run_in(
            Node::Client,
            "gst-launch-1.0",
            gst_rtspsrc_args(url, transport),
            timeout,
        )
    }

    /// Starts a tshark capture on interface `iface` of `node`, written to
    /// `<log_dir>/<name>.pcapng`; returns once tshark reports it is capturing.
    pub fn start_capture(&self, node: Node, iface: &str, name: &str) -> Result<Capture> {
        let file = self.log_dir.join(format!("{name}.pcapng"));
        let log = self.log_path(name);
        let f = OpenOptions::new().create(true).append(true).open(&log)?;
        let child = self
            .command(node, "tshark")
            .args(["-n", "-i", iface, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0)
            .spawn()
            .context("starting tshark")?;
        let mut cap = Capture {
            child: Some(child),
            file,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Capturing on")
            {
                // dumpcap prints before the first packet is read; give it a moment.
                thread::sleep(Duration::from_millis(300));
                return Ok(cap);
            }
            if let Some(Ok(Some(st))) = cap.child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "tshark exited with {st}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tshark did not start capturing: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running tshark capture; stopped (and flushed) by [`Capture::stop`] or on drop.
pub struct Capture {
    child: Option<Child>,
    pub file: PathBuf,
}

impl Capture {
    /// Stops tshark (SIGTERM, it flushes the file) and returns the capture file.
    pub fn stop(mut self) -> PathBuf {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c, Duration::from_secs(10));
        }
        self.file.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c, Duration::from_secs(5));
        }
    }
}

/// Starts ffmpeg on `node` reading `url` over UDP for `secs` seconds in the background as
/// process `name` (decoding, or with `copy` only demuxing: a cheap load client); its
/// `-progress` lands in `<name>.stdout`, its warnings in the log. ffmpeg follows RTSP
/// redirects (302) by itself.
pub fn spawn_ffmpeg_on(
    lan: &crate::lan::Lan,
    node: &str,
    name: &str,
    url: &str,
    secs: u64,
    copy: bool,
) -> anyhow::Result<()> {
    let t = secs.to_string();
    let mut args = vec![
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-timeout",
        "10000000",
        "-rtsp_transport",
        "udp",
        "-i",
        url,
        "-t",
        &t,
        "-map",
        "0:v:0",
        "-map",
        "0:a?",
    ];
    if copy {
        args.extend(["-c", "copy"]);
    } else {
        args.extend(["-fps_mode", "passthrough"]);
    }
    args.extend(["-f", "null", "-", "-progress", "pipe:1"]);
    lan.spawn_in(node, name, "ffmpeg", args)
}

/// `gst-launch-1.0 rtspsrc` on `node` plays `url` over UDP for `secs` seconds, then gets
/// SIGINT (a live channel has no end) and, with `-e`, stops cleanly.
pub fn gst_play_on(
    lan: &crate::lan::Lan,
    node: &str,
    url: &str,
    secs: u64,
) -> anyhow::Result<crate::CmdOutput> {
    let mut args: Vec<String> = ["-s", "INT", "-k", "10"].map(String::from).to_vec();
    args.push(secs.to_string());
    args.push("gst-launch-1.0".into());
    args.extend(gst_rtspsrc_args(url, RtpTransport::Udp));
    lan.run_in(node, "timeout", args, Duration::from_secs(secs + 30))
}

/// Starts tshark on `node`'s interface (UDP only), as process `name`, writing
/// `<name>.pcapng`; returns once it captures.
pub fn start_capture_on(
    lan: &crate::lan::Lan,
    node: &str,
    name: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let file = lan.log_dir.join(format!("{name}.pcapng"));
    let f = file.to_string_lossy().into_owned();
    lan.spawn_in(
        node,
        name,
        "tshark",
        ["-n", "-i", crate::lan::NODE_IF, "-f", "udp", "-w", &f],
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !lan.log(name).contains("Capturing on") {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("tshark did not start: {}", lan.log(name));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(file)
}

/// Stops a capture started with [`start_capture_on`] (SIGINT flushes it).
pub fn stop_capture_on(lan: &crate::lan::Lan, name: &str) -> anyhow::Result<()> {
    std::thread::sleep(Duration::from_millis(300));
    lan.signal(name, libc::SIGINT)?;
    lan.wait_exit(name, Duration::from_secs(15))?;
    Ok(())
}
