//! Which [`Chain`] of stages a channel runs, decided from the configuration.
//!
//! A VoD open names an asset and a rendition; a live subscription names a channel and a
//! rendition. Both come here, so the rules (what the ladder holds, which renditions an
//! asset or channel may use, where encryption applies) live in one place, and the session
//! code only pushes frames through whatever chain it is given.
//!
//! Rendition `""` is the source as it is: a passthrough chain (plus encryption when the
//! configuration asks for it). A named rendition must be declared in the ladder and listed
//! for the asset (`[vod] renditions`) or the channel (`renditions`).

use std::sync::{Arc, RwLock};

use divisor_link::{content, TrackInfo};

use crate::config::{AudioMode, ChannelConfig, Config, EncryptionMode, RenditionConfig};
use crate::encrypt::ContentKeys;
use crate::pipeline::{Chain, StageError};
use crate::transcode::{AudioTranscodeStage, InterleaveStage, TranscodeStage};

/// Why no chain could be built.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The rendition is not in the ladder or not allowed for this asset or channel.
    #[error("{0}")]
    NoSuchRendition(String),
    /// The configuration asks for something this build or this input cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A stage refused the input's tracks (a ladder rung above the source...).
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// Builds chains from the current configuration. Shared by every link; the configuration
/// can be replaced at run time ([`ChainFactory::set_config`]), which affects chains built
/// afterwards only.
#[derive(Debug)]
pub struct ChainFactory {
    config: RwLock<Arc<Config>>,
    threads: usize,
}

impl Default for ChainFactory {
    fn default() -> Self {
        ChainFactory::passthrough()
    }
}

impl ChainFactory {
    /// Chains for `config`; encoder stages use up to `threads` threads each.
    pub fn new(config: Config, threads: usize) -> ChainFactory {
        ChainFactory {
            config: RwLock::new(Arc::new(config)),
            threads: threads.max(1),
        }
    }

    /// The empty configuration: VoD passthrough only.
    pub fn passthrough() -> ChainFactory {
        ChainFactory::new(Config::default(), 1)
    }

    /// The configuration chains are built from now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Use `config` for chains built from now on.
    pub fn set_config(&self, config: Config) {
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
    }

    /// Threads an encoder stage may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The chain for VoD `asset` in `rendition` ("" = the source), whose source has
    /// `tracks`. The caller announces `chain.tracks(tracks)`.
    pub fn vod_chain(
        &self,
        asset: &str,
        rendition: &str,
        tracks: &[TrackInfo],
    ) -> Result<Chain, ChainError> {
        let config = self.config();
        let rung = if rendition.is_empty() {
            None
        } else {
            if !config.vod.renditions.iter().any(|r| r == rendition) {
                let offered = list(&config.vod.renditions);
                return Err(ChainError::NoSuchRendition(format!(
                    "{asset}: no rendition {rendition:?} for stored assets (offered: {offered})"
                )));
            }
            Some(config.rendition(rendition).ok_or_else(|| {
                ChainError::NoSuchRendition(format!("rendition {rendition:?} is not declared"))
            })?)
        };
        let encryption = Encryption {
            mode: config.vod.encryption,
            name: content::vod_key_name(asset, rendition),
            edge_share: config.vod.edge_share,
        };
        self.build(&config, rung, encryption, tracks)
    }

    /// The rendition a live subscription to `channel` gets when it asks for `asked`:
    /// `""` is the channel's first rendition, or the source when it lists none.
    pub fn live_rendition(channel: &ChannelConfig, asked: &str) -> Result<String, ChainError> {
        if asked.is_empty() {
            return Ok(channel.renditions.first().cloned().unwrap_or_default());
        }
        if channel.renditions.iter().any(|r| r == asked) {
            Ok(asked.to_string())
        } else {
            Err(ChainError::NoSuchRendition(format!(
                "live channel {:?} has no rendition {asked:?} (offered: {})",
                channel.name,
                list(&channel.renditions)
            )))
        }
    }

    /// The chain for live `channel` in `rendition` (already resolved by
    /// [`ChainFactory::live_rendition`]; "" = the input as it is), whose input has `tracks`.
    pub fn live_chain(
        &self,
        channel: &ChannelConfig,
        rendition: &str,
        tracks: &[TrackInfo],
    ) -> Result<Chain, ChainError> {
        let config = self.config();
        let rung = if rendition.is_empty() {
            None
        } else {
            Some(config.rendition(rendition).ok_or_else(|| {
                ChainError::NoSuchRendition(format!(
                    "live channel {:?}: rendition {rendition:?} is not declared",
                    channel.name
                ))
            })?)
        };
        let encryption = Encryption {
            mode: channel.encryption,
            name: content::live_key_name(&channel.name, rendition),
            edge_share: channel.edge_share,
        };
        self.build(&config, rung, encryption, tracks)
    }

    /// Transcode (when a rung is given), then encrypt (when asked).
    fn build(
        &self,
        config: &Config,
        rung: Option<&RenditionConfig>,
        encryption: Encryption,
        tracks: &[TrackInfo],
    ) -> Result<Chain, ChainError> {
        let mut chain = Chain::passthrough();
        // ---- STAGES: transcode (issue 3 item 1) -----------------------------------------
        if let Some(rung) = rung {
            chain = chain.then(Box::new(TranscodeStage::new(rung, self.threads)?));
            // Audio after video: the video stage passes audio through untouched.
            if rung.audio == AudioMode::Opus {
                chain = chain.then(Box::new(AudioTranscodeStage::new(&rung.name)?));
            }
            // Transcoding delays video more than audio: restore presentation order so a
            // subscriber starting at a keyframe gets the audio of that moment.
            chain = chain.then(Box::new(InterleaveStage::new()));
        }
        // ---- STAGES: content encryption, after transcoding so keys protect what is sent.
        if encryption.mode != EncryptionMode::None {
            let keys = ContentKeys::from_config(&config.encryption)?.ok_or_else(|| {
                ChainError::Unsupported(
                    "content encryption is on but [encryption] key_file is not set".to_string(),
                )
            })?;
            let stage = keys.stage(encryption.mode, &encryption.name, encryption.edge_share)?;
            chain = chain.then(Box::new(stage));
        }
        // Check the stages accept the input now, not at the first frame.
        chain.tracks(tracks)?;
        Ok(chain)
    }
}

/// How one stream is encrypted: mode, key name (asset or channel, and rendition: each
/// stream has its own keys) and the share of frames left to the protocol unit.
struct Encryption {
    mode: EncryptionMode,
    name: String,
    edge_share: f64,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "only the source".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(renditions: &[&str]) -> ChannelConfig {
        ChannelConfig {
            name: "news".into(),
            source: "testsrc".into(),
            sdp: None,
            renditions: renditions.iter().map(|s| s.to_string()).collect(),
            encryption: EncryptionMode::None,
            edge_share: 0.0,
        }
    }

    #[test]
    fn source_is_passthrough() {
        let f = ChainFactory::passthrough();
        assert!(f.vod_chain("a.mp4", "", &[]).unwrap().is_empty());
        assert!(f.live_chain(&channel(&[]), "", &[]).unwrap().is_empty());
    }

    #[test]
    fn unknown_renditions_are_refused_by_name() {
        let f = ChainFactory::passthrough();
        let Err(e) = f.vod_chain("a.mp4", "720p", &[]) else {
            panic!("720p is not offered")
        };
        assert!(matches!(e, ChainError::NoSuchRendition(_)), "{e}");
        assert!(e.to_string().contains("720p"), "{e}");
        let e = ChainFactory::live_rendition(&channel(&["360p"]), "720p").unwrap_err();
        assert!(e.to_string().contains("360p"), "{e}");
    }

    #[test]
    fn empty_live_rendition_is_the_first() {
        assert_eq!(
            ChainFactory::live_rendition(&channel(&["360p", "180p"]), "").unwrap(),
            "360p"
        );
        assert_eq!(ChainFactory::live_rendition(&channel(&[]), "").unwrap(), "");
    }
}
