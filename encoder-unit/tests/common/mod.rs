//! Test media, generated once per test binary with the ffmpeg CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Media {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

fn ffmpeg(args: &[&str], cwd: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A library folder with:
/// - `av.mp4`: 6 s, H.264 320x240 25 fps GOP 25 with B-frames + AAC 44.1 kHz mono;
/// - `av.mkv`, `av.ts`: the same streams remuxed;
/// - `opus.mkv`: H.264 + Opus, 3 s;
/// - `old.avi`: MPEG-4 part 2 + MP3 (not streamable);
/// - `notes.txt`: text;
/// - `truncated.mp4`: the first 55% of a fast-start copy of av.mp4;
/// - `cut.mp4`: the first 40% of av.mp4 (moov at the end: unreadable).
pub fn media() -> &'static Media {
    static MEDIA: OnceLock<Media> = OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let src = [
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
        ];
        let x264 = [
            "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-bf", "2", "-pix_fmt", "yuv420p",
        ];
        let mut a: Vec<&str> = src.to_vec();
        a.extend(["-t", "6"]);
        a.extend(x264);
        a.extend(["-c:a", "aac", "av.mp4"]);
        ffmpeg(&a, &root);
        ffmpeg(&["-i", "av.mp4", "-c", "copy", "av.mkv"], &root);
        ffmpeg(&["-i", "av.mp4", "-c", "copy", "av.ts"], &root);
        ffmpeg(
            &[
                "-i",
                "av.mp4",
                "-c",
                "copy",
                "-movflags",
                "+faststart",
                "fast.mp4",
            ],
            &root,
        );
        let mut a: Vec<&str> = src.to_vec();
        a.extend(["-t", "3"]);
        a.extend(x264);
        a.extend(["-c:a", "libopus", "-ar", "48000", "opus.mkv"]);
        ffmpeg(&a, &root);
        let mut a: Vec<&str> = src.to_vec();
        a.extend(["-t", "1", "-c:v", "mpeg4", "-c:a", "libmp3lame", "old.avi"]);
        ffmpeg(&a, &root);
        std::fs::write(root.join("notes.txt"), "these are not media\n").unwrap();
        let fast = std::fs::read(root.join("fast.mp4")).unwrap();
        std::fs::write(root.join("truncated.mp4"), &fast[..fast.len() * 55 / 100]).unwrap();
        std::fs::remove_file(root.join("fast.mp4")).unwrap();
        let plain = std::fs::read(root.join("av.mp4")).unwrap();
        std::fs::write(root.join("cut.mp4"), &plain[..plain.len() * 40 / 100]).unwrap();
        Media { _dir: dir, root }
    })
}

/// `ffprobe -count_frames` of the first video stream.
pub fn ffprobe_video_frames(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    // MPEG-TS prints the stream once per program too: take the first number.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .expect("ffprobe frame count")
}
