//! What the library holds: every file probed once with libavformat.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::RwLock;

use divisor_link::{Codec, TrackInfo};

use super::Library;
use crate::ingest::FileSource;

/// What a probe learned about one playable asset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetInfo {
    /// The name clients use (relative to the library).
    pub name: String,
    pub path: PathBuf,
    /// libavformat's container name.
    pub container: String,
    pub duration_ms: Option<u64>,
    /// The tracks that would be announced (video first, then audio).
    pub tracks: Vec<TrackInfo>,
}

impl AssetInfo {
    /// Describe an opened source.
    pub fn from_source(name: &str, source: &FileSource) -> AssetInfo {
        AssetInfo {
            name: name.to_string(),
            path: source.path().to_path_buf(),
            container: source.container(),
            duration_ms: source.duration_ms(),
            tracks: source.tracks().to_vec(),
        }
    }
}

impl fmt::Display for AssetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        match self.duration_ms {
            Some(ms) => write!(f, "{}.{:03} s", ms / 1000, ms % 1000)?,
            None => write!(f, "unknown duration")?,
        }
        write!(f, ", {}", self.container)?;
        for t in &self.tracks {
            match t.codec {
                Codec::H264 => write!(f, ", h264 {}x{}", t.width, t.height)?,
                Codec::Aac => write!(f, ", aac {} Hz {} ch", t.sample_rate, t.channels)?,
                Codec::Opus => write!(f, ", opus {} Hz {} ch", t.sample_rate, t.channels)?,
                Codec::Av1 => write!(f, ", av1 {}x{}", t.width, t.height)?,
            }
        }
        Ok(())
    }
}

/// The playable assets of a [`Library`], probed at start-up; files added later are
/// probed when first opened. Thread-safe: share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct Catalog {
    assets: RwLock<BTreeMap<String, AssetInfo>>,
    rejected: RwLock<BTreeMap<String, String>>,
}

impl Catalog {
    /// An empty catalog (everything gets probed on first open).
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Probe every file of `library` (blocking: call it at start-up or from
    /// `spawn_blocking`). Logs one line per asset, and why each skipped file is not
    /// playable. Never fails on a bad file.
    pub fn scan(library: &Library) -> Catalog {
        let catalog = Catalog::new();
        let names = match library.list() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("cannot list the library: {e}");
                return catalog;
            }
        };
        for name in names {
            let _ = catalog.probe(library, &name);
        }
        tracing::info!(
            library = %library.root().display(),
            "catalog: {} playable assets, {} files skipped",
            catalog.assets.read().map(|a| a.len()).unwrap_or(0),
            catalog.rejected.read().map(|r| r.len()).unwrap_or(0),
        );
        catalog
    }

    /// Probe one asset now (blocking), record and log the result.
    pub fn probe(&self, library: &Library, name: &str) -> Result<AssetInfo, String> {
        let result = library
            .resolve(name)
            .map_err(|e| e.to_string())
            .and_then(|path| FileSource::open(&path).map_err(|e| e.to_string()));
        match result {
            Ok(source) => {
                let info = AssetInfo::from_source(name, &source);
                self.record(info.clone());
                Ok(info)
            }
            Err(reason) => {
                tracing::warn!("skipping {name}: {reason}");
                if let Ok(mut a) = self.assets.write() {
                    a.remove(name);
                }
                if let Ok(mut r) = self.rejected.write() {
                    r.insert(name.to_string(), reason.clone());
                }
                Err(reason)
            }
        }
    }

    /// Record (and log) an asset, unless it is already known with the same description.
    pub fn record(&self, info: AssetInfo) {
        let Ok(mut assets) = self.assets.write() else {
            return;
        };
        if assets.get(&info.name) != Some(&info) {
            tracing::info!("asset {info}");
            if let Ok(mut r) = self.rejected.write() {
                r.remove(&info.name);
            }
            assets.insert(info.name.clone(), info);
        }
    }

    /// The asset called `name`, if known and playable.
    pub fn get(&self, name: &str) -> Option<AssetInfo> {
        self.assets.read().ok()?.get(name).cloned()
    }

    /// All playable assets, by name.
    pub fn assets(&self) -> Vec<AssetInfo> {
        self.assets
            .read()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Files found not playable, with the reason, by name.
    pub fn rejected(&self) -> Vec<(String, String)> {
        self.rejected
            .read()
            .map(|r| r.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}
