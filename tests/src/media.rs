//! Test media: generated once per machine into `target/test-media/`, shared by all tests.
//!
//! Tests run in parallel threads and processes, so generation takes an exclusive `flock`
//! and every file is written under a temporary name and renamed into place.

use crate::cmd::run;
use crate::paths::target_dir;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Bump when the asset recipes change, so stale media is not reused.
const MEDIA_VERSION: &str = "v1";

/// 4 s, H.264 (no B-frames, keyframe every 2 s) + AAC 48 kHz stereo, MP4.
pub const CLIP_MP4: &str = "clip.mp4";
/// 4 s, H.264 with B-frames (`-bf 2`) + AAC, MP4.
pub const BFRAMES_MP4: &str = "bframes.mp4";
/// 10 s, H.264 keyframe every 2 s + AAC, MP4: seeking and long-running clients.
pub const LONG_MP4: &str = "long.mp4";
/// 4 s, H.264 + Opus, Matroska.
pub const CLIP_MKV: &str = "clip.mkv";
/// 4 s, H.264 + AAC, MPEG-TS.
pub const CLIP_TS: &str = "clip.ts";
/// Not media: the server must refuse it with 415.
pub const NOT_MEDIA: &str = "notes.txt";

/// Encoder configuration for one live channel everybody can play: the test source as
/// `cam` in one browser-safe rendition (`web`: constrained baseline H.264 and Opus), so
/// ffmpeg, rtspsrc and Chromium watch the same stream (`/play/cam/web` for a browser).
pub const WEB_LIVE_CONFIG: &str = r#"
[[rendition]]
name = "web"
codec = "h264"
profile = "baseline"
width = 640
height = 360
bitrate_kbps = 800
keyint = 50
audio = "opus"

[[channel]]
name = "cam"
source = "testsrc"
renditions = ["web"]
"#;

/// Encoder configuration for the browser-facing tests: a test-source channel `cam` with a
/// browser-safe H.264 rendition (`web`: constrained baseline, 42e01f) and an AV1 one
/// (`av1`), both with Opus audio, and `web` also offered for VoD.
pub const WEBRTC_CONFIG: &str = r#"
[[rendition]]
name = "web"
codec = "h264"
profile = "baseline"
width = 640
height = 360
bitrate_kbps = 800
keyint = 50
audio = "opus"

[[rendition]]
name = "av1"
codec = "av1"
width = 320
height = 180
bitrate_kbps = 300
keyint = 50
audio = "opus"

[vod]
renditions = ["web"]

[[channel]]
name = "cam"
source = "testsrc"
renditions = ["web", "av1"]
"#;

pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 360;
pub const FPS: u32 = 25;
pub const SAMPLE_RATE: u32 = 48_000;

struct Recipe {
    name: &'static str,
    secs: u32,
    args: &'static [&'static str],
}

const RECIPES: &[Recipe] = &[
    Recipe {
        name: CLIP_MP4,
        secs: 4,
        args: &[
            "-bf",
            "0",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-movflags",
            "+faststart",
        ],
    },
    Recipe {
        name: BFRAMES_MP4,
        secs: 4,
        args: &[
            "-bf",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-movflags",
            "+faststart",
        ],
    },
    Recipe {
        name: LONG_MP4,
        secs: 10,
        args: &[
            "-bf",
            "0",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-movflags",
            "+faststart",
        ],
    },
    Recipe {
        name: CLIP_MKV,
        secs: 4,
        args: &["-bf", "0", "-c:a", "libopus", "-b:a", "64k"],
    },
    Recipe {
        name: CLIP_TS,
        secs: 4,
        args: &["-bf", "0", "-c:a", "aac", "-b:a", "64k", "-f", "mpegts"],
    },
];

/// The test media library folder, generated on first use.
pub fn library() -> Result<&'static Path> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| generate().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(|p| p.as_path())
        .map_err(|e| anyhow::anyhow!("generating test media failed: {e}"))
}

/// Path of an asset of the test library.
pub fn asset_path(name: &str) -> Result<PathBuf> {
    Ok(library()?.join(name))
}

fn generate() -> Result<PathBuf> {
    let root = target_dir().join("test-media");
    let dir = root.join(MEDIA_VERSION);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = File::create(root.join(".lock"))?;
    // Exclusive across processes; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    for r in RECIPES {
        let path = dir.join(r.name);
        if path.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            continue;
        }
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), r.name));
        let secs = r.secs.to_string();
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
            .args(["-f", "lavfi", "-i"])
            .arg(format!(
                "testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={secs}"
            ))
            .args(["-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency=440:sample_rate={SAMPLE_RATE}:duration={secs}"
            ))
            .args(["-map", "0:v", "-map", "1:a", "-c:v", "libx264"])
            .args(["-preset", "ultrafast", "-crf", "30", "-pix_fmt", "yuv420p"])
            .args(["-profile:v", "high", "-g", "50", "-keyint_min", "50"])
            .args(["-sc_threshold", "0", "-ac", "2", "-t", &secs])
            .args(r.args)
            .arg(&tmp);
        run(&mut cmd, Duration::from_secs(120))?
            .check()
            .with_context(|| format!("generating {}", r.name))?;
        fs::rename(&tmp, &path)?;
    }
    let txt = dir.join(NOT_MEDIA);
    if !txt.exists() {
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), NOT_MEDIA));
        fs::write(
            &tmp,
            "Divisor test library. This file is deliberately not media: 415.\n",
        )?;
        fs::rename(&tmp, &txt)?;
    }
    Ok(dir)
}

/// What ffprobe says about a local file (the ground truth the streamed result is compared with).
#[derive(Debug, Clone)]
pub struct AssetInfo {
    pub name: String,
    pub path: PathBuf,
    /// Container duration, seconds.
    pub duration: f64,
    pub video_codec: String,
    pub audio_codec: String,
    pub width: u64,
    pub height: u64,
    pub sample_rate: u64,
    /// Decoded video frame count (`ffprobe -count_frames`).
    pub video_frames: u64,
    /// Presentation times (s) of every video frame, in presentation order.
    pub frame_times: Vec<f64>,
    /// Presentation times (s) of the keyframes.
    pub keyframe_times: Vec<f64>,
}

impl AssetInfo {
    /// The last keyframe at or before `t` seconds (what a keyframe-aligned seek starts at).
    pub fn keyframe_at_or_before(&self, t: f64) -> f64 {
        self.keyframe_times
            .iter()
            .copied()
            .filter(|&k| k <= t + 1e-6)
            .fold(0.0, f64::max)
    }

    /// Video frames presented at or after `t` seconds.
    pub fn frames_from(&self, t: f64) -> u64 {
        self.frame_times.iter().filter(|&&f| f >= t - 1e-6).count() as u64
    }
}

/// Probes an asset of the test library (cached per process).
pub fn asset(name: &str) -> Result<AssetInfo> {
    static CACHE: OnceLock<Mutex<HashMap<String, AssetInfo>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(a) = cache.lock().unwrap().get(name) {
        return Ok(a.clone());
    }
    let info = probe_file(name, &asset_path(name)?)?;
    cache.lock().unwrap().insert(name.to_string(), info.clone());
    Ok(info)
}

fn probe_file(name: &str, path: &Path) -> Result<AssetInfo> {
    let out = run(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_streams",
                "-show_format",
                "-of",
                "json",
            ])
            .arg(path),
        Duration::from_secs(30),
    )?
    .check()?;
    let v: Value = serde_json::from_str(&out.stdout)?;
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .context("no video stream")?;
    let audio = streams
        .iter()
        .find(|s| s["codec_type"] == "audio")
        .context("no audio stream")?;
    // Every video frame with its pts and key flag, decoded (so the count is what a decoder
    // outputs, not what the container claims).
    let frames = run(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_frames"])
            .args([
                "-show_entries",
                "frame=pts_time,best_effort_timestamp_time,key_frame",
            ])
            .args(["-of", "json"])
            .arg(path),
        Duration::from_secs(60),
    )?
    .check()?;
    let fv: Value = serde_json::from_str(&frames.stdout)?;
    let mut frame_times = Vec::new();
    let mut keyframe_times = Vec::new();
    for f in fv["frames"].as_array().context("no frames")? {
        let t = json_f64(&f["pts_time"])
            .or_else(|| json_f64(&f["best_effort_timestamp_time"]))
            .context("frame without time")?;
        frame_times.push(t);
        if f["key_frame"].as_i64() == Some(1) {
            keyframe_times.push(t);
        }
    }
    // Times relative to the first frame (MPEG-TS starts at 1.4 s, for example).
    let t0 = frame_times.iter().copied().fold(f64::INFINITY, f64::min);
    frame_times.iter_mut().for_each(|t| *t -= t0);
    keyframe_times.iter_mut().for_each(|t| *t -= t0);
    Ok(AssetInfo {
        name: name.to_string(),
        path: path.to_path_buf(),
        duration: json_f64(&v["format"]["duration"]).context("no duration")?,
        video_codec: video["codec_name"].as_str().unwrap_or_default().into(),
        audio_codec: audio["codec_name"].as_str().unwrap_or_default().into(),
        width: video["width"].as_u64().unwrap_or(0),
        height: video["height"].as_u64().unwrap_or(0),
        sample_rate: json_f64(&audio["sample_rate"]).unwrap_or(0.0) as u64,
        video_frames: frame_times.len() as u64,
        frame_times,
        keyframe_times,
    })
}

/// A number that ffprobe may print as a JSON number or as a string.
pub fn json_f64(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}
