//! The bench's sample asset: H.264 video at about 1 Mbit/s (DIVISOR's client rate), made
//! once with the ffmpeg CLI into `target/bench-media/` (the library the units serve).
//!
//! One slice per frame, whatever the machine: `-tune zerolatency` alone turns on x264's
//! sliced threads, which cut every frame into as many slices as the encoding machine has
//! threads, so the asset (and every packet-rate figure measured with it) changed with the
//! machine that made it. Version 1 had two slices per frame on the 2-core bench machines;
//! each slice ends in a short packet, so a client's frame took two UDP GSO sends instead
//! of one (GSO needs equal-sized segments but for the last). Most live encoders send one
//! slice per frame by default; `bench/RESULTS.md` has the capacity with both assets.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// File name of the asset in the bench library (bump the version when the recipe changes).
pub const ASSET: &str = "bench-1mbps-v2.mp4";
/// Its length: longer than any level (set-up + settle + window).
pub const SECONDS: u32 = 150;

/// The bench library folder, with the asset generated if missing.
pub fn library() -> Result<PathBuf> {
    let dir = divisor_tests::paths::target_dir().join("bench-media");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(ASSET);
    if path.metadata().map(|m| m.len() > 0).unwrap_or(false) {
        return Ok(dir);
    }
    crate::servers::check_ffmpeg_peer()
        .context("ffmpeg is needed to make the bench's sample asset")?;
    eprintln!(
        "divisor-bench: generating {} ({SECONDS} s, ~1 Mbit/s H.264)...",
        path.display()
    );
    let tmp = dir.join(format!(".tmp-{}-{ASSET}", std::process::id()));
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=640x360:rate=25:duration={SECONDS}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-x264-params",
            "sliced-threads=0",
        ])
        .args(["-b:v", "950k", "-maxrate", "1000k", "-bufsize", "1000k"])
        .args(["-pix_fmt", "yuv420p", "-profile:v", "high", "-bf", "0"])
        .args(["-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-an"])
        .args(["-movflags", "+faststart", "-f", "mp4"])
        .arg(&tmp)
        .output()
        .context("running ffmpeg")?;
    if !out.status.success() {
        bail!(
            "ffmpeg could not make the bench asset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::rename(&tmp, &path)?;
    Ok(dir)
}
