//! `divisor-dump`: run one library asset through the transcode stage of a rendition and
//! write its video track to a file that ffmpeg / ffprobe read, to check what the encoder
//! unit sends without a protocol unit or a network in between.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use divisor_encoder::config::{Config, VideoCodec};
use divisor_encoder::ingest::{Demuxed, FileSource};
use divisor_encoder::pipeline::Stage;
use divisor_encoder::transcode::ivf::IvfWriter;
use divisor_encoder::transcode::TranscodeStage;
use divisor_encoder::Library;
use divisor_link::{Frame, FrameFlags, Message};

/// Transcode one asset of the media library into one rendition of the ladder and write
/// the video track, exactly as the encoder unit would send it over the link:
/// AV1 renditions as IVF (`--out x.ivf`), H.264 renditions as an Annex B elementary
/// stream (`--out x.h264` or `x.264`). Audio is not written.
///
/// Check the result with, for example:
///   ffprobe -count_frames -show_streams out.h264
///   ffmpeg -c:v libdav1d -i out.ivf -f null -
///
/// --max-layer keeps only the frames of temporal layers 0..=N (frame-rate tiers: 1 = half
/// rate, 0 = quarter rate), as the protocol unit does for a lower tier.
#[derive(Debug, Parser)]
#[command(name = "divisor-dump", version, verbatim_doc_comment)]
struct Args {
    /// Folder holding the media files.
    #[arg(long, value_name = "DIR")]
    library: PathBuf,

    /// Asset name: a file path relative to the library folder.
    #[arg(long, value_name = "NAME")]
    asset: String,

    /// Encoder unit config file (TOML) declaring the rendition ladder.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Name of the [[rendition]] to produce.
    #[arg(long, value_name = "NAME")]
    rendition: String,

    /// Output file: .ivf for AV1, .h264 / .264 for H.264.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Encoder and decoder threads (default: the machine's cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Keep only temporal layers 0..=N.
    #[arg(long, value_name = "N")]
    max_layer: Option<u8>,
}

/// Where the video frames go.
enum Sink {
    AnnexB(BufWriter<File>),
    Ivf(IvfWriter<BufWriter<File>>),
}

impl Sink {
    fn write(&mut self, frame: &Frame) -> Result<()> {
        match self {
            Sink::AnnexB(w) => w.write_all(&frame.data)?,
            Sink::Ivf(w) => w.write_frame(&frame.data, frame.pts)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::AnnexB(mut w) => w.flush()?,
            Sink::Ivf(w) => {
                w.finish()?;
            }
        }
        Ok(())
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    let rendition = config.rendition(&args.rendition).with_context(|| {
        let known: Vec<&str> = config.renditions.iter().map(|r| r.name.as_str()).collect();
        format!(
            "rendition {:?} is not in {} (it declares: {})",
            args.rendition,
            args.config.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    })?;
    let ext = extension(&args.out);
    match (rendition.codec, ext.as_str()) {
        (VideoCodec::Av1, "ivf") | (VideoCodec::H264, "h264" | "264") => {}
        (VideoCodec::Av1, _) => bail!(
            "rendition {} is AV1: write it to a .ivf file, not {}",
            rendition.name,
            args.out.display()
        ),
        (VideoCodec::H264, _) => bail!(
            "rendition {} is H.264: write it to a .h264 file, not {}",
            rendition.name,
            args.out.display()
        ),
    }

    let library = Library::open(&args.library)
        .with_context(|| format!("opening the library {}", args.library.display()))?;
    let path = library
        .resolve(&args.asset)
        .with_context(|| format!("asset {:?}", args.asset))?;
    let mut source =
        FileSource::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut stage = TranscodeStage::new(rendition, threads)?;
    let tracks = stage
        .tracks(source.tracks())
        .with_context(|| format!("{} cannot be transcoded", args.asset))?;
    let video = tracks
        .iter()
        .find(|t| t.codec.is_video())
        .context("the transcoded asset has no video track")?
        .clone();

    let file =
        File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut sink = match rendition.codec {
        VideoCodec::Av1 => Sink::Ivf(IvfWriter::new(
            BufWriter::new(file),
            video.width,
            video.height,
        )?),
        VideoCodec::H264 => Sink::AnnexB(BufWriter::new(file)),
    };

    let (mut written, mut keyframes) = (0u64, 0u64);
    let mut write = |out: Vec<Message>, sink: &mut Sink| -> Result<()> {
        for m in out {
            let Message::Frame(f) = m else { continue };
            if f.track != video.track || args.max_layer.is_some_and(|l| f.flags.layer() > l) {
                continue;
            }
            sink.write(&f)?;
            written += 1;
            keyframes += u64::from(f.flags.contains(FrameFlags::KEYFRAME));
        }
        Ok(())
    };
    loop {
        let mut out = Vec::new();
        match source
            .next_frame()
            .with_context(|| format!("reading {}", path.display()))?
        {
            Demuxed::Frame(frame) => stage.push(frame, &mut out)?,
            Demuxed::End => {
                stage.flush(&mut out)?;
                write(out, &mut sink)?;
                break;
            }
        }
        write(out, &mut sink)?;
    }
    sink.finish()
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}: {} frames ({} keyframes) of {:?} {}x{} at {} kbit/s written to {}",
        args.asset,
        written,
        keyframes,
        video.codec,
        video.width,
        video.height,
        rendition.bitrate_kbps,
        args.out.display()
    );
    Ok(())
}
