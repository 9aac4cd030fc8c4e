//! The command-line side of the configuration, shared by `divisor-encoder` and
//! `divisor-mono`: `--config FILE`, `--live NAME=SOURCE`, and re-reading on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::{LiveRegistry, SourceSpec};
use crate::chains::ChainFactory;
use crate::config::{ChannelConfig, Config, ConfigError, EncryptionMode};
use crate::storage::Library;

const LIVE_HELP: &str = "\
Add a live channel NAME, served as rtsp://HOST:PORT/live/NAME (repeatable; the input \
passes through as it is). SOURCE is one of:
  testsrc            the synthetic test source (moving pattern, burnt-in clock and frame \
counter, tone)
  loop:FILE          a file of the --library played in real time and looped (timestamps \
keep increasing across the loop point)
  udp://ADDR:PORT    MPEG-TS over UDP, e.g. from `ffmpeg -re -i x.mp4 -c copy -f mpegts \
udp://ADDR:PORT`; ADDR may be 0.0.0.0 or a multicast group
  rtp://ADDR:PORT    RTP (H.264, AAC or Opus). Without an SDP: H.264 in payload type 96 \
on PORT, video only, SPS/PPS in band. With `,sdp=FILE` appended (e.g. \
rtp://0.0.0.0:5004,sdp=in.sdp) the SDP file describes the streams, such as the one \
`ffmpeg ... -f rtp -sdp_file in.sdp rtp://ADDR:PORT` writes
An input that sends nothing for 2 s is reported stalled; it is reopened until it comes back.";

/// `--config` and `--live`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LiveArgs {
    /// Configuration file (TOML): the rendition ladder, live channels, VoD renditions,
    /// content encryption (`encryption = "des"` is INSECURE: 56-bit DES, kept only to
    /// reproduce the paper's workload; use "aes"). Re-read on SIGHUP: live channels that
    /// changed are added, removed or restarted, the others keep playing; a bad file is
    /// logged and ignored.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[arg(long = "live", value_name = "NAME=SOURCE", long_help = LIVE_HELP,
          help = "Add a live channel (repeatable): SOURCE = testsrc | loop:FILE | \
                  udp://ADDR:PORT | rtp://ADDR:PORT[,sdp=FILE] (see --help)")]
    pub live: Vec<String>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--live {arg:?}: {reason}")]
    Live { arg: String, reason: String },
}

/// Parse one `--live NAME=SOURCE[,sdp=FILE]`.
pub fn parse_live(arg: &str) -> Result<ChannelConfig, LoadError> {
    let bad = |reason: String| LoadError::Live {
        arg: arg.to_string(),
        reason,
    };
    let (name, rest) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOURCE".into()))?;
    let (source, sdp) = match rest.split_once(",sdp=") {
        Some((s, file)) if !file.is_empty() => (s, Some(PathBuf::from(file))),
        Some(_) => return Err(bad("sdp= needs a file name".into())),
        None => (rest, None),
    };
    SourceSpec::parse(source, sdp.as_ref()).map_err(|e| bad(e.reason))?;
    Ok(ChannelConfig {
        name: name.to_string(),
        source: source.to_string(),
        sdp,
        renditions: Vec::new(),
        encryption: EncryptionMode::None,
        edge_share: 0.0,
    })
}

impl LiveArgs {
    /// The configuration file (or the empty one) plus the `--live` channels, checked.
    pub fn load(&self) -> Result<Config, LoadError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        for arg in &self.live {
            config.channels.push(parse_live(arg)?);
        }
        config.validate()?;
        for c in &config.channels {
            SourceSpec::parse(&c.source, c.sdp.as_ref())
                .map_err(|e| ConfigError::Invalid(format!("channel {:?}: {e}", c.name)))?;
        }
        Ok(config)
    }
}

/// The chain factory and live registry of a running encoder unit.
pub struct Running {
    pub chains: Arc<ChainFactory>,
    pub live: Arc<LiveRegistry>,
}

/// Start the live channels of `config` (blocking: call at start-up or in
/// `spawn_blocking`).
pub fn start(config: Config, library: Arc<Library>) -> Running {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let channels = config.channels.clone();
    let chains = Arc::new(ChainFactory::new(config, threads));
    let live = Arc::new(LiveRegistry::new(library, chains.clone()));
    match live.apply(&channels) {
        Ok(report) if !channels.is_empty() => info!("live channels: {report}"),
        Ok(_) => {}
        // `LiveArgs::load` checked every source already.
        Err(e) => error!("{e}"),
    }
    Running { chains, live }
}

/// Re-read the configuration on every SIGHUP and apply what changed. Runs forever.
pub async fn reload_on_sighup(args: LiveArgs, running: &Running) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGHUP, configuration reload disabled: {e}");
            return std::future::pending().await;
        }
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: re-reading the configuration");
        let config = match args.load() {
            Ok(c) => c,
            Err(e) => {
                error!("configuration reload failed, keeping the running one: {e}");
                continue;
            }
        };
        let live = running.live.clone();
        let channels = config.channels.clone();
        running.chains.set_config(config);
        match tokio::task::spawn_blocking(move || live.apply(&channels)).await {
            Ok(Ok(report)) => info!("configuration reloaded: live channels {report}"),
            Ok(Err(e)) => error!("configuration reload: {e}"),
            Err(e) => error!("configuration reload failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_flags_parse() {
        let c = parse_live("news=udp://0.0.0.0:5000").unwrap();
        assert_eq!(
            (c.name.as_str(), c.source.as_str()),
            ("news", "udp://0.0.0.0:5000")
        );
        let c = parse_live("cam=rtp://0.0.0.0:5004,sdp=/tmp/in.sdp").unwrap();
        assert_eq!(c.sdp, Some(PathBuf::from("/tmp/in.sdp")));
        assert_eq!(c.source, "rtp://0.0.0.0:5004");
        for bad in ["news", "news=ftp://x:1", "x=rtp://a:1,sdp="] {
            assert!(parse_live(bad).is_err(), "{bad}");
        }
        let args = LiveArgs {
            config: None,
            live: vec!["a=testsrc".into(), "a=loop:x.mp4".into()],
        };
        let e = args.load().unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
