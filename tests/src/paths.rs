//! Where things are: the workspace, its target dir, the release binaries, per-test logs.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Cargo's target dir (`CARGO_TARGET_DIR` if set, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        None => repo_root().join("target"),
    }
}

/// Path of a Divisor binary: `$DIVISOR_BIN_DIR/<name>` or `target/release/<name>`.
/// Errors with a clear message when it has not been built.
pub fn bin(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("DIVISOR_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => target_dir().join("release"),
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "binary {} not found: build it first with `cargo build --release --workspace --bins` \
             (or point DIVISOR_BIN_DIR at the folder holding divisor-encoder, divisor-protocol \
             and divisor-mono)",
            path.display()
        );
    }
    Ok(path)
}

/// `target/test-logs/<test>/`, emptied and created.
pub fn fresh_log_dir(test: &str) -> Result<PathBuf> {
    let dir = target_dir().join("test-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
