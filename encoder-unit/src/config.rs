//! The encoder unit's configuration file (TOML, `--config FILE`): the rendition ladder,
//! live channels, what VoD assets may be transcoded to, and content encryption.
//!
//! ```toml
//! [[rendition]]          # the ladder: named renditions, referenced by name below
//! name = "360p"
//! codec = "h264"         # or "av1" (rav1e)
//! width = 640
//! height = 360
//! bitrate_kbps = 800
//! keyint = 50            # frames between keyframes (default: 2 s of the source)
//! tiers = true           # make frames disposable for half/quarter frame-rate tiers
//! profile = "baseline"   # H.264 only: baseline (constrained, for browsers) | main | high
//! audio = "copy"         # copy (the source audio) | opus (transcoded, 48 kHz, for WebRTC)
//!
//! [[channel]]            # a live channel, served as rtsp://HOST/live/<name>[/<rendition>]
//! name = "news"
//! source = "testsrc"     # testsrc | loop:FILE | rtp://ADDR:PORT | udp://ADDR:PORT
//! renditions = ["360p"]  # empty: the input passes through as it is
//! encryption = "none"    # none | aes | des
//! edge_share = 0.0       # share of encrypted frames left to the protocol unit (0..=1)
//!
//! [vod]                  # stored assets, served as rtsp://HOST/vod/<file>[?rendition=NAME]
//! renditions = ["360p"]
//! encryption = "none"
//! edge_share = 0.0
//!
//! [encryption]
//! key_file = "content.key"  # master secret; per-channel and per-asset keys derive from it
//! rotate_secs = 0           # 0: no rotation
//! ```
//!
//! Everything has a default, so an empty file (or no file) is a valid configuration:
//! VoD passthrough, no live channel, no encryption.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, rename = "rendition")]
    pub renditions: Vec<RenditionConfig>,
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
    #[serde(default)]
    pub vod: VodConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
}

/// Video codec of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    H264,
    Av1,
}

/// What a rendition does with the source's audio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioMode {
    /// The source audio as it is (AAC from files and the test source).
    #[default]
    Copy,
    /// Transcoded to Opus, 48 kHz, 20 ms packets: what WebRTC clients can play.
    Opus,
}

/// The H.264 profile of a rendition. Without one, x264 picks what its preset allows
/// (High for the usual 4:2:0 8-bit input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum H264Profile {
    /// Constrained Baseline (no B-frames, no CABAC): what every browser decodes and what
    /// WebRTC negotiates as `profile-level-id=42e01f`. Excludes frame-rate tiers, which
    /// need B-frames.
    Baseline,
    Main,
    High,
}

impl H264Profile {
    /// The libx264 `profile` option value.
    pub fn x264_name(self) -> &'static str {
        match self {
            H264Profile::Baseline => "baseline",
            H264Profile::Main => "main",
            H264Profile::High => "high",
        }
    }
}

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRendition")]
pub struct RenditionConfig {
    pub name: String,
    #[serde(default = "default_codec")]
    pub codec: VideoCodec,
    pub width: u16,
    pub height: u16,
    pub bitrate_kbps: u32,
    /// Frames between keyframes; `None`: two seconds of the source frame rate.
    #[serde(default)]
    pub keyint: Option<u32>,
    /// Encode with disposable frames so the protocol unit can serve half and quarter
    /// frame rates without re-encoding. In the file it defaults to true, except for
    /// baseline H.264 (which has no B-frames to make disposable).
    pub tiers: bool,
    /// H.264 profile; `None`: the encoder's default.
    pub profile: Option<H264Profile>,
    /// Source audio as it is, or transcoded to Opus.
    pub audio: AudioMode,
}

/// A `[[rendition]]` as written, before defaults that depend on other keys are applied.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRendition {
    name: String,
    #[serde(default = "default_codec")]
    codec: VideoCodec,
    width: u16,
    height: u16,
    bitrate_kbps: u32,
    #[serde(default)]
    keyint: Option<u32>,
    #[serde(default)]
    tiers: Option<bool>,
    #[serde(default)]
    profile: Option<H264Profile>,
    #[serde(default)]
    audio: AudioMode,
}

impl TryFrom<RawRendition> for RenditionConfig {
    type Error = String;

    fn try_from(r: RawRendition) -> Result<Self, String> {
        let baseline = r.profile == Some(H264Profile::Baseline);
        if baseline && r.tiers == Some(true) {
            return Err(format!(
                "rendition {:?}: profile = \"baseline\" cannot have tiers = true \
                 (frame-rate tiers need B-frames, which baseline has not); drop one of them",
                r.name
            ));
        }
        Ok(RenditionConfig {
            tiers: r.tiers.unwrap_or(!baseline),
            name: r.name,
            codec: r.codec,
            width: r.width,
            height: r.height,
            bitrate_kbps: r.bitrate_kbps,
            keyint: r.keyint,
            profile: r.profile,
            audio: r.audio,
        })
    }
}

/// A live channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    /// `testsrc`, `loop:FILE` (a library file), `rtp://ADDR:PORT`, `udp://ADDR:PORT`.
    pub source: String,
    /// SDP file describing an `rtp://` input; without it the documented defaults apply.
    #[serde(default)]
    pub sdp: Option<PathBuf>,
    /// Rendition names from the ladder; empty = passthrough.
    #[serde(default)]
    pub renditions: Vec<String>,
    #[serde(default)]
    pub encryption: EncryptionMode,
    #[serde(default)]
    pub edge_share: f64,
}

/// Settings for stored assets.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VodConfig {
    /// Rendition names a client may ask for (`?rendition=NAME`); the source is always
    /// available.
    #[serde(default)]
    pub renditions: Vec<String>,
    #[serde(default)]
    pub encryption: EncryptionMode,
    #[serde(default)]
    pub edge_share: f64,
}

/// Content encryption of a channel or of VoD assets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    #[default]
    None,
    /// AES-128-CTR: the default when encryption is wanted.
    Aes,
    /// DES-CBC: DIVISOR's workload, insecure, for measurement only.
    Des,
}

/// Where content keys come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Master secret file; per-channel keys derive from it. Needed when anything is
    /// encrypted.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Seconds between key rotations; 0 = never.
    #[serde(default)]
    pub rotate_secs: u64,
}

fn default_codec() -> VideoCodec {
    VideoCodec::H264
}

impl Config {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parse and check TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The rendition called `name`.
    pub fn rendition(&self, name: &str) -> Option<&RenditionConfig> {
        self.renditions.iter().find(|r| r.name == name)
    }

    /// Checks what can be checked without the media: unique names, references to known
    /// renditions, sane numbers, a key file where something is encrypted.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (i, r) in self.renditions.iter().enumerate() {
            if r.name.is_empty() || r.name.contains(['/', '?', '&', ' ']) {
                return invalid(format!(
                    "rendition {:?}: a name must be non-empty, without '/', '?', '&' or spaces",
                    r.name
                ));
            }
            if self.renditions[..i].iter().any(|o| o.name == r.name) {
                return invalid(format!("rendition {:?} is declared twice", r.name));
            }
            if r.width < 16 || r.height < 16 || r.width % 2 != 0 || r.height % 2 != 0 {
                return invalid(format!(
                    "rendition {:?}: {}x{} must be even and at least 16x16",
                    r.name, r.width, r.height
                ));
            }
            if r.bitrate_kbps == 0 {
                return invalid(format!("rendition {:?}: bitrate_kbps must be > 0", r.name));
            }
            if r.keyint == Some(0) {
                return invalid(format!("rendition {:?}: keyint must be > 0", r.name));
            }
            if let Some(profile) = r.profile {
                if r.codec != VideoCodec::H264 {
                    return invalid(format!(
                        "rendition {:?}: profile = {:?} applies to H.264 renditions only",
                        r.name,
                        profile.x264_name()
                    ));
                }
                if profile == H264Profile::Baseline && r.tiers {
                    return invalid(format!(
                        "rendition {:?}: baseline H.264 cannot have frame-rate tiers \
                         (they need B-frames)",
                        r.name
                    ));
                }
            }
        }
        let check_refs = |what: &str, names: &[String]| -> Result<(), ConfigError> {
            for n in names {
                if self.rendition(n).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "{what} names rendition {n:?}, which no [[rendition]] declares"
                    )));
                }
            }
            Ok(())
        };
        let check_share = |what: &str, share: f64| -> Result<(), ConfigError> {
            if !(0.0..=1.0).contains(&share) {
                return Err(ConfigError::Invalid(format!(
                    "{what}: edge_share {share} is not between 0 and 1"
                )));
            }
            Ok(())
        };
        let mut encrypted = self.vod.encryption != EncryptionMode::None;
        check_refs("[vod]", &self.vod.renditions)?;
        check_share("[vod]", self.vod.edge_share)?;
        for (i, c) in self.channels.iter().enumerate() {
            let what = format!("channel {:?}", c.name);
            if c.name.is_empty() || c.name.contains(['/', '?', '&', ' ']) {
                return invalid(format!(
                    "{what}: a name must be non-empty, without '/', '?', '&' or spaces"
                ));
            }
            if self.channels[..i].iter().any(|o| o.name == c.name) {
                return invalid(format!("{what} is declared twice"));
            }
            check_refs(&what, &c.renditions)?;
            check_share(&what, c.edge_share)?;
            encrypted |= c.encryption != EncryptionMode::None;
        }
        if encrypted && self.encryption.key_file.is_none() {
            return invalid(
                "content encryption is on but [encryption] key_file is not set".to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_valid() {
        let c = Config::parse("").unwrap();
        assert!(c.renditions.is_empty() && c.channels.is_empty());
        assert_eq!(c.vod.encryption, EncryptionMode::None);
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
            [[rendition]]
            name = "360p"
            width = 640
            height = 360
            bitrate_kbps = 800
            [[rendition]]
            name = "av1"
            codec = "av1"
            width = 320
            height = 180
            bitrate_kbps = 300
            keyint = 25
            tiers = false
            [[channel]]
            name = "news"
            source = "testsrc"
            renditions = ["360p", "av1"]
            encryption = "des"
            edge_share = 0.5
            [vod]
            renditions = ["360p"]
            [encryption]
            key_file = "content.key"
            rotate_secs = 30
            "#,
        )
        .unwrap();
        assert_eq!(c.rendition("av1").unwrap().codec, VideoCodec::Av1);
        assert!(c.rendition("360p").unwrap().tiers);
        assert_eq!(c.channels[0].encryption, EncryptionMode::Des);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e =
            Config::parse("[[channel]]\nname = \"a\"\nsource = \"testsrc\"\nrenditions = [\"hd\"]")
                .unwrap_err()
                .to_string();
        assert!(e.contains("\"hd\""), "{e}");
        let e = Config::parse("[vod]\nencryption = \"aes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key_file"), "{e}");
        let e = Config::parse("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse(
            "[[rendition]]\nname = \"x\"\nwidth = 641\nheight = 360\nbitrate_kbps = 1",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("even"), "{e}");
    }

    const WEB: &str =
        "[[rendition]]\nname = \"web\"\nwidth = 640\nheight = 360\nbitrate_kbps = 800\n";

    #[test]
    fn audio_defaults_to_copy_and_takes_opus() {
        let c = Config::parse(WEB).unwrap();
        let web = c.rendition("web").unwrap();
        assert_eq!(web.audio, AudioMode::Copy);
        assert_eq!(web.profile, None);
        assert!(web.tiers);
        let c = Config::parse(&format!("{WEB}audio = \"opus\"")).unwrap();
        assert_eq!(c.rendition("web").unwrap().audio, AudioMode::Opus);
    }

    #[test]
    fn unknown_audio_is_refused_by_name() {
        let e = Config::parse(&format!("{WEB}audio = \"mp3\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mp3") && e.contains("opus") && e.contains("copy"),
            "{e}"
        );
    }

    #[test]
    fn baseline_turns_tiers_off_and_refuses_them() {
        let c = Config::parse(&format!("{WEB}profile = \"baseline\"")).unwrap();
        let web = c.rendition("web").unwrap();
        assert_eq!(web.profile, Some(H264Profile::Baseline));
        assert!(!web.tiers, "baseline has no B-frames to make tiers of");
        let e = Config::parse(&format!("{WEB}profile = \"baseline\"\ntiers = true"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("baseline") && e.contains("tiers"), "{e}");
        // Built in code rather than parsed: validate() catches it too.
        let mut c = Config::parse(&format!("{WEB}profile = \"baseline\"")).unwrap();
        c.renditions[0].tiers = true;
        assert!(c.validate().unwrap_err().to_string().contains("tiers"));
        let e = Config::parse(&format!("{WEB}profile = \"extended\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("extended"), "{e}");
    }

    #[test]
    fn profile_is_for_h264_only() {
        let e = Config::parse(&format!("{WEB}codec = \"av1\"\nprofile = \"main\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("H.264"), "{e}");
    }

    #[test]
    fn webrtc_contract_config_parses() {
        let c = Config::parse(
            r#"
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

            [[channel]]
            name = "cam"
            source = "testsrc"
            renditions = ["web", "av1"]
            "#,
        )
        .unwrap();
        let web = c.rendition("web").unwrap();
        assert_eq!(
            (web.profile, web.tiers, web.audio),
            (Some(H264Profile::Baseline), false, AudioMode::Opus)
        );
        assert_eq!(c.rendition("av1").unwrap().audio, AudioMode::Opus);
    }
}
