//! `divisor-bench transcode`: our transcode stage against the `ffmpeg` command line with the
//! same encoder and settings on the same input, in one run.
//!
//! Both sides decode the same H.264 file (libavcodec, `--threads` frame threads), scale it
//! with swscale (bicubic) to the rendition size and encode with libx264 using the option
//! list of `divisor_encoder::transcode::x264_options` (preset, bit rate, VBV, GOP,
//! B-frames, threads, x264-params), so the difference is our own overhead: demux into
//! link frames, the stage's copies and bookkeeping. The ffmpeg side writes to `-f null`,
//! ours drops the frames after counting them. Video only (`-an`; audio frames are not fed
//! to our stage either). Wall time, frames/s and the ratio ours/ffmpeg (goal >= 0.95).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use divisor_encoder::config::{RenditionConfig, VideoCodec};
use divisor_encoder::ingest::{Demuxed, FileSource};
use divisor_encoder::pipeline::Stage;
use divisor_encoder::transcode::{
    default_keyint, x264_options, FrameRate, H264Settings, TranscodeStage, DEFAULT_FRAME_RATE,
};
use divisor_link::Message;

#[derive(clap::Args)]
pub struct TranscodeArgs {
    /// Input file (H.264 video). Default: a 20 s 1280x720 25 fps test clip generated once
    /// into target/bench-media/transcode-720p.mp4.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Rendition width.
    #[arg(long, default_value_t = 640)]
    width: u16,
    /// Rendition height.
    #[arg(long, default_value_t = 360)]
    height: u16,
    /// Rendition bit rate.
    #[arg(long, default_value_t = 800)]
    bitrate_kbps: u32,
    /// Frames between keyframes (default: 2 s of the input, as the encoder unit does).
    #[arg(long)]
    keyint: Option<u32>,
    /// Decoder and encoder threads, on both sides (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Encode without frame-rate tiers (no B-frames).
    #[arg(long)]
    no_tiers: bool,
    /// Rounds; medians are reported (each round runs ours, then ffmpeg).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The ffmpeg binary.
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: String,
}

fn default_input(ffmpeg: &str) -> Result<PathBuf> {
    let dir = divisor_tests::paths::target_dir().join("bench-media");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("transcode-720p.mp4");
    if path.exists() {
        return Ok(path);
    }
    let tmp = dir.join("transcode-720p.tmp.mp4");
    let status = Command::new(ffmpeg)
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=1280x720:rate=25")
        .args([
            "-t", "20", "-c:v", "libx264", "-preset", "medium", "-b:v", "3M",
        ])
        .args(["-g", "50", "-pix_fmt", "yuv420p", "-an"])
        .arg(&tmp)
        .status()
        .with_context(|| format!("running {ffmpeg}"))?;
    if !status.success() {
        bail!("{ffmpeg} could not generate the bench input");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The input's frame rate, from the first video frame's duration (as the stage measures).
fn input_rate(path: &Path) -> Result<FrameRate> {
    let mut src = FileSource::open(path)?;
    let video = src
        .tracks()
        .iter()
        .find(|t| t.codec.is_video())
        .context("the input has no video track")?
        .track;
    loop {
        match src.next_frame()? {
            Demuxed::Frame(f) if f.track == video => {
                return Ok(FrameRate::from_duration_90k(f.duration).unwrap_or(DEFAULT_FRAME_RATE))
            }
            Demuxed::Frame(_) => {}
            Demuxed::End => bail!("the input has no video frame"),
        }
    }
}

/// Our side: frames encoded and seconds taken.
fn ours(path: &Path, rendition: &RenditionConfig, threads: usize) -> Result<(u64, f64)> {
    let start = Instant::now();
    let mut src = FileSource::open(path)?;
    let mut stage = TranscodeStage::new(rendition, threads)?;
    let tracks = stage.tracks(src.tracks())?;
    let video = tracks
        .iter()
        .find(|t| t.codec.is_video())
        .context("no video track")?
        .track;
    let mut frames = 0u64;
    let mut out = Vec::new();
    let count = |out: &mut Vec<Message>| {
        let n = out
            .drain(..)
            .filter(|m| matches!(m, Message::Frame(f) if f.track == video))
            .count();
        n as u64
    };
    loop {
        match src.next_frame()? {
            Demuxed::Frame(f) if f.track == video => stage.push(f, &mut out)?,
            Demuxed::Frame(_) => continue,
            Demuxed::End => {
                stage.flush(&mut out)?;
                frames += count(&mut out);
                break;
            }
        }
        frames += count(&mut out);
    }
    Ok((frames, start.elapsed().as_secs_f64()))
}

/// The ffmpeg command line for the same work, minus the output.
fn ffmpeg_command(ffmpeg: &str, path: &Path, s: &H264Settings) -> Command {
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-v", "error", "-nostdin", "-threads"])
        .arg(s.threads.to_string())
        .arg("-i")
        .arg(path)
        .args(["-an", "-vf"])
        .arg(format!("scale={}:{}:flags=bicubic", s.width, s.height))
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx264"]);
    for (k, v) in x264_options(s) {
        cmd.arg(format!("-{k}:v")).arg(v);
    }
    cmd
}

/// ffmpeg's side: frames encoded (from `-progress`) and seconds taken.
fn theirs(ffmpeg: &str, path: &Path, s: &H264Settings) -> Result<(u64, f64)> {
    let mut cmd = ffmpeg_command(ffmpeg, path, s);
    cmd.args(["-nostats", "-progress", "pipe:1", "-f", "null", "-"]);
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {ffmpeg}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{ffmpeg} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("frame="))
        .find_map(|v| v.trim().parse().ok())
        .context("ffmpeg reported no frame count")?;
    Ok((frames, secs))
}

/// The settings string x264 writes into its first SEI ("x264 - core ... options: ...").
fn x264_settings(stream: &[u8]) -> Option<String> {
    let at = stream.windows(9).position(|w| w == b"options: ")?;
    let rest = &stream[at..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Check both sides really run x264 with the same settings: compare the settings SEI of
/// the first frame each produces.
fn same_settings(
    ffmpeg: &str,
    path: &Path,
    rendition: &RenditionConfig,
    s: &H264Settings,
) -> Result<(String, String)> {
    let mut src = FileSource::open(path)?;
    let mut stage = TranscodeStage::new(rendition, s.threads)?;
    stage.tracks(src.tracks())?;
    let mut out = Vec::new();
    let first = loop {
        match src.next_frame()? {
            Demuxed::Frame(f) if f.codec.is_video() => stage.push(f, &mut out)?,
            Demuxed::Frame(_) => {}
            Demuxed::End => stage.flush(&mut out)?,
        }
        if let Some(Message::Frame(f)) = out.iter().find(|m| matches!(m, Message::Frame(_))) {
            break f.data.clone();
        }
    };
    let mut cmd = ffmpeg_command(ffmpeg, path, s);
    cmd.args(["-frames:v", "1", "-f", "h264", "-"]);
    let theirs = cmd.output().with_context(|| format!("running {ffmpeg}"))?;
    Ok((
        x264_settings(&first).unwrap_or_default(),
        x264_settings(&theirs.stdout).unwrap_or_default(),
    ))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: TranscodeArgs) -> Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let input = match &args.input {
        Some(p) => p.clone(),
        None => default_input(&args.ffmpeg)?,
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let rate = input_rate(&input)?;
    let tiers = !args.no_tiers;
    let keyint = args.keyint.unwrap_or_else(|| default_keyint(rate, tiers));
    let rendition = RenditionConfig {
        name: "bench".into(),
        codec: VideoCodec::H264,
        width: args.width,
        height: args.height,
        bitrate_kbps: args.bitrate_kbps,
        keyint: Some(keyint),
        tiers,
        profile: None,
        audio: Default::default(),
    };
    let settings = H264Settings {
        width: u32::from(args.width),
        height: u32::from(args.height),
        bitrate_kbps: args.bitrate_kbps,
        keyint,
        frame_rate: rate,
        threads,
        tiers,
        profile: None,
    };
    println!(
        "input {} ({} fps); rendition {}x{} {} kbit/s, keyint {keyint}, tiers {}, {threads} threads",
        input.display(),
        rate.fps(),
        args.width,
        args.height,
        args.bitrate_kbps,
        if tiers { "on" } else { "off" },
    );
    let mut shown = ffmpeg_command(&args.ffmpeg, &input, &settings);
    shown.args(["-f", "null", "-"]);
    println!("ffmpeg side: {shown:?}");
    let (our_cfg, their_cfg) = same_settings(&args.ffmpeg, &input, &rendition, &settings)?;
    if our_cfg == their_cfg && !our_cfg.is_empty() {
        println!("x264 settings identical on both sides: {our_cfg}");
    } else {
        println!("WARNING: x264 settings differ\n  ours:   {our_cfg}\n  ffmpeg: {their_cfg}");
    }

    let (mut our_fps, mut their_fps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "{:>5}  {:>8} {:>8} {:>9}  {:>8} {:>8} {:>9}  {:>6}",
        "round", "ours s", "frames", "ours fps", "ffmpeg s", "frames", "ffmpeg fps", "ratio"
    );
    for round in 1..=args.repeat {
        let (of, os) = ours(&input, &rendition, threads)?;
        let (tf, ts) = theirs(&args.ffmpeg, &input, &settings)?;
        let (ofps, tfps) = (of as f64 / os, tf as f64 / ts);
        println!(
            "{round:>5}  {os:>8.2} {of:>8} {ofps:>9.1}  {ts:>8.2} {tf:>8} {tfps:>10.1}  {:>6.3}",
            ofps / tfps
        );
        if of != tf {
            println!("       WARNING: frame counts differ ({of} vs {tf})");
        }
        our_fps.push(ofps);
        their_fps.push(tfps);
        ratios.push(ofps / tfps);
    }
    println!(
        "median: ours {:.1} fps, ffmpeg {:.1} fps, ratio {:.3} (goal >= 0.95)",
        median(&mut our_fps),
        median(&mut their_fps),
        median(&mut ratios)
    );
    Ok(())
}
