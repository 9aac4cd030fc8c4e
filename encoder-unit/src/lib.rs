//! `divisor-encoder`: Divisor's encoder unit. It keeps the media library and streams
//! encoded frames of its assets over the link to protocol units.
//!
//! The public surface, for the `divisor-encoder` binary and the monolithic server:
//!
//! ```no_run
//! # async fn run(link: divisor_link::Link) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use divisor_encoder::{serve_link, Catalog, Library};
//!
//! let library = Arc::new(Library::open("sample-library")?);
//! // Probing is blocking: at start-up, or inside spawn_blocking.
//! let catalog = Arc::new(Catalog::scan(&library));
//! tokio::spawn(serve_link(link, library.clone(), catalog.clone()));
//! # Ok(()) }
//! ```
//!
//! Modules:
//! - [`config`]: the configuration file (ladder, live channels, encryption);
//! - [`storage`]: the library folder ([`Library`], path safety) and its [`Catalog`];
//! - [`ingest`]: the file demuxer ([`ingest::FileSource`]) and H.264/AAC bitstream helpers;
//! - [`pipeline`]: the [`pipeline::Stage`] chain (transcode, encrypt) between a source
//!   and the link;
//! - [`chains`]: which chain a VoD open or a live rendition runs, from the config;
//! - [`live`]: live channels (inputs, timeline, renditions, subscriptions);
//! - [`session`]: serving one link ([`serve_link`]): channels, seek, pause, credits;
//! - [`status`]: the optional HTTP port (`/status`, `/metrics`): live subscriptions and
//!   links served now.

pub mod chains;
pub mod config;
pub mod encrypt;
pub mod ingest;
pub mod live;
pub mod pipeline;
pub mod session;
pub mod status;
pub mod storage;
pub mod transcode;

pub use session::{serve_link, serve_link_with, Services, SessionError};
pub use storage::{AssetInfo, Catalog, Library, StorageError};
