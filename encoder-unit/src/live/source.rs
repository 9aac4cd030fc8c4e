//! What feeds a live channel: the `source` strings of the configuration, parsed, and the
//! inputs they open.
//!
//! | source | what it is |
//! |---|---|
//! | `testsrc` | the synthetic test source (moving pattern, burnt-in clock and counter, tone) |
//! | `loop:FILE` | a file of the media library, played in real time and looped |
//! | `rtp://ADDR:PORT` | RTP from an outside sender. With `sdp = FILE` (config) the SDP file describes the streams (e.g. the one `ffmpeg ... -f rtp -sdp_file FILE` writes). Without it: H.264, payload type 96, on PORT (video only; give an SDP for audio) |
//! | `udp://ADDR:PORT` | MPEG-TS over UDP (e.g. `ffmpeg -re -i x.mp4 -c copy -f mpegts udp://ADDR:PORT`); ADDR may be a multicast group |
//!
//! Network inputs are opened through libavformat ([`FileSource::open_url`]) with a read
//! time-out, so a silent sender is noticed and the channel reports it as stalled.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use divisor_link::{Frame, TrackInfo};

use crate::ingest::testsrc::{TestSource, TestSourceConfig};
use crate::ingest::{Demuxed, FileSource, IngestError, UrlOptions};
use crate::storage::Library;

/// How long a live input may send nothing before the channel counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(2);
/// How long opening a network input (including probing its streams) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(6);
/// RTP payload type of H.264 in the default SDP.
pub const DEFAULT_RTP_PT: u8 = 96;

/// A parsed `source` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The synthetic test source.
    TestSrc,
    /// A library file, looped.
    Loop(String),
    /// RTP; the SDP file, or the default SDP for H.264 on `port`.
    Rtp {
        host: String,
        port: u16,
        sdp: Option<PathBuf>,
    },
    /// MPEG-TS over UDP; `url` is passed to libavformat as written.
    Udp { url: String },
}

/// Why a `source` string is not usable.
#[derive(Debug, thiserror::Error)]
#[error("live source {source_text:?}: {reason}")]
pub struct SourceSpecError {
    pub source_text: String,
    pub reason: String,
}

fn host_port(rest: &str) -> Option<(String, u16)> {
    let hp = rest.split(['?', '/']).next()?;
    let (host, port) = hp.rsplit_once(':')?;
    let host = host.trim_start_matches('@');
    let port: u16 = port.parse().ok()?;
    (port != 0).then(|| (host.to_string(), port))
}

impl SourceSpec {
    /// Parse `source` (and the channel's `sdp` file, for RTP).
    pub fn parse(source: &str, sdp: Option<&PathBuf>) -> Result<SourceSpec, SourceSpecError> {
        let err = |reason: &str| SourceSpecError {
            source_text: source.to_string(),
            reason: reason.to_string(),
        };
        if source == "testsrc" {
            return Ok(SourceSpec::TestSrc);
        }
        if let Some(file) = source.strip_prefix("loop:") {
            if file.is_empty() {
                return Err(err("loop: needs a file name of the library (loop:FILE)"));
            }
            return Ok(SourceSpec::Loop(file.to_string()));
        }
        if let Some(rest) = source.strip_prefix("rtp://") {
            let (host, port) = host_port(rest).ok_or_else(|| err("expected rtp://ADDR:PORT"))?;
            if host.is_empty() {
                return Err(err("expected rtp://ADDR:PORT (ADDR may be 0.0.0.0)"));
            }
            return Ok(SourceSpec::Rtp {
                host,
                port,
                sdp: sdp.cloned(),
            });
        }
        if let Some(rest) = source.strip_prefix("udp://") {
            host_port(rest).ok_or_else(|| err("expected udp://ADDR:PORT"))?;
            return Ok(SourceSpec::Udp {
                url: source.to_string(),
            });
        }
        Err(err(
            "unknown source: expected testsrc, loop:FILE, rtp://ADDR:PORT or udp://ADDR:PORT",
        ))
    }

    /// Whether the input produces frames as fast as asked, so the channel paces it by
    /// its timestamps (files, the test source); network inputs arrive in real time.
    pub fn paced(&self) -> bool {
        matches!(self, SourceSpec::TestSrc | SourceSpec::Loop(_))
    }
}

/// The SDP used for `rtp://HOST:PORT` without an SDP file: H.264 in payload type 96 on
/// PORT (packetization mode 1; SPS/PPS in band).
pub fn default_sdp(host: &str, port: u16) -> String {
    let ip = if host.contains(':') { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=- 0 0 IN {ip} {host}\r\ns=Divisor live input\r\nc=IN {ip} {host}\r\nt=0 0\r\n\
         m=video {port} RTP/AVP {pt}\r\na=rtpmap:{pt} H264/90000\r\n\
         a=fmtp:{pt} packetization-mode=1\r\n",
        pt = DEFAULT_RTP_PT
    )
}

/// An open input of a channel.
pub enum Input {
    /// A demuxed file or network stream; `looped` files rewind at their end.
    File { source: FileSource, looped: bool },
    /// The synthetic test source (never ends).
    Test(Box<TestSource>),
}

impl Input {
    /// Open what `spec` names. `stop` aborts a blocking open or read from another thread.
    pub fn open(
        spec: &SourceSpec,
        library: &Library,
        stop: &Arc<AtomicBool>,
    ) -> Result<Input, IngestError> {
        let network = |url: &str, format: &str, options: Vec<(&str, &str)>| {
            let opts = UrlOptions {
                format: Some(format.to_string()),
                options: options
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                read_timeout: Some(STALL_AFTER),
                open_timeout: Some(OPEN_TIMEOUT),
                stop: Some(stop.clone()),
            };
            FileSource::open_url(url, &opts)
        };
        let source = match spec {
            SourceSpec::TestSrc => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let cfg = TestSourceConfig {
                    threads,
                    ..TestSourceConfig::default()
                };
                return Ok(Input::Test(Box::new(TestSource::new(cfg)?)));
            }
            SourceSpec::Loop(name) => {
                let path = library.resolve(name).map_err(|e| IngestError::Open {
                    path: PathBuf::from(name),
                    reason: e.to_string(),
                })?;
                return Ok(Input::File {
                    source: FileSource::open(&path)?,
                    looped: true,
                });
            }
            SourceSpec::Udp { url } => network(
                url,
                "mpegts",
                vec![
                    ("overrun_nonfatal", "1"),
                    ("buffer_size", "4194304"),
                    ("analyzeduration", "2000000"),
                ],
            )?,
            SourceSpec::Rtp { host, port, sdp } => {
                let url = match sdp {
                    Some(file) => file.display().to_string(),
                    // libavformat's data: protocol takes the text after the comma as is.
                    None => format!("data:application/sdp,{}", default_sdp(host, *port)),
                };
                network(
                    &url,
                    "sdp",
                    vec![
                        ("protocol_whitelist", "file,data,udp,rtp"),
                        ("buffer_size", "4194304"),
                        ("analyzeduration", "2000000"),
                        ("reorder_queue_size", "64"),
                    ],
                )?
            }
        };
        Ok(Input::File {
            source,
            looped: false,
        })
    }

    /// The tracks, as announced to subscribers of the source rendition.
    pub fn tracks(&self) -> Vec<TrackInfo> {
        match self {
            Input::File { source, .. } => source.tracks().to_vec(),
            Input::Test(t) => t.tracks().to_vec(),
        }
    }

    /// The next frame; `Ok(None)` when the input ended (a looped file then rewinds with
    /// [`Input::rewind`]).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, IngestError> {
        match self {
            Input::File { source, .. } => match source.next_frame()? {
                Demuxed::Frame(f) => Ok(Some(f)),
                Demuxed::End => Ok(None),
            },
            Input::Test(t) => t.next_frame().map(Some),
        }
    }

    /// Whether the end of the input is the loop point rather than the input going away.
    pub fn loops(&self) -> bool {
        match self {
            Input::File { looped, .. } => *looped,
            Input::Test(_) => false,
        }
    }

    /// Go back to the start (looped files).
    pub fn rewind(&mut self) -> Result<(), IngestError> {
        match self {
            Input::File { source, .. } => source.seek(0).map(|_| ()),
            Input::Test(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            SourceSpec::parse("testsrc", None).unwrap(),
            SourceSpec::TestSrc
        );
        assert_eq!(
            SourceSpec::parse("loop:a/b.mp4", None).unwrap(),
            SourceSpec::Loop("a/b.mp4".into())
        );
        assert_eq!(
            SourceSpec::parse("rtp://0.0.0.0:5004", None).unwrap(),
            SourceSpec::Rtp {
                host: "0.0.0.0".into(),
                port: 5004,
                sdp: None
            }
        );
        assert!(matches!(
            SourceSpec::parse("udp://239.0.0.1:1234?fifo_size=100", None).unwrap(),
            SourceSpec::Udp { .. }
        ));
        for bad in [
            "",
            "loop:",
            "rtp://x",
            "udp://:0",
            "http://x:1",
            "rtp://:5004",
        ] {
            let e = SourceSpec::parse(bad, None).unwrap_err();
            assert!(e.to_string().contains("live source"), "{bad}: {e}");
        }
    }

    #[test]
    fn default_sdp_names_the_port_and_payload_type() {
        let sdp = default_sdp("127.0.0.1", 5004);
        assert!(sdp.contains("m=video 5004 RTP/AVP 96"), "{sdp}");
        assert!(sdp.contains("H264/90000"), "{sdp}");
    }
}
