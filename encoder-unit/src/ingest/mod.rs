//! Ingest: turning media sources into link frames.
//!
//! - [`file`](mod@file): demux of stored files (MP4/MOV/MKV/MPEG-TS) through libavformat;
//! - [`h264`], [`aac`]: the bitstream reshaping the link format asks for.

pub mod aac;
pub mod file;
pub mod h264;
pub mod testsrc;

pub use file::{Demuxed, FileSource, UrlOptions};

use std::path::PathBuf;
use std::sync::Once;

/// Why a media source could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// libavformat could not open the file as media at all (e.g. a text file).
    #[error("not playable media: cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// The file is media, but holds nothing the link can carry.
    #[error("unsupported media: {0}")]
    Unsupported(String),
    /// A seek failed.
    #[error("seek failed: {0}")]
    Seek(String),
    /// Reading went wrong beyond recovery (corrupt or truncated file).
    #[error("read error: {0}")]
    Read(String),
    /// A live input sent nothing within its read time-out (or was stopped).
    #[error("input stalled: {0}")]
    TimedOut(String),
}

/// Initialise libav* once (idempotent, cheap after the first call) and keep its own
/// logging down to errors: our errors carry the reasons.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if let Err(e) = ffmpeg_next::init() {
            tracing::warn!("ffmpeg initialisation reported {e}");
        }
        ffmpeg_next::log::set_level(ffmpeg_next::log::Level::Error);
    });
}
