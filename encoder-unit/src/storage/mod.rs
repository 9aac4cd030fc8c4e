//! The media library: a folder of files, names that cannot escape it, and a catalog of
//! what each file holds.

mod catalog;

pub use catalog::{AssetInfo, Catalog};

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why an asset name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The name is not acceptable or points outside the library.
    #[error("asset {name:?} is forbidden: {reason}")]
    Forbidden { name: String, reason: String },
    /// No such file in the library.
    #[error("asset {name:?} not found in the library")]
    NotFound { name: String },
    /// The library folder itself is unusable.
    #[error("library folder {path}: {source}")]
    Library {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Something else went wrong on the file system.
    #[error("asset {name:?}: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A folder of media files. Names given to [`Library::resolve`] are relative paths inside
/// it (subfolders allowed, `/`-separated).
#[derive(Clone, Debug)]
pub struct Library {
    root: PathBuf,
}

impl Library {
    /// Open the library folder `dir`; fails if it does not exist or is not a folder.
    pub fn open(dir: impl AsRef<Path>) -> Result<Library, StorageError> {
        let dir = dir.as_ref();
        let lib_err = |source| StorageError::Library {
            path: dir.to_path_buf(),
            source,
        };
        let root = dir.canonicalize().map_err(lib_err)?;
        if !root.is_dir() {
            return Err(lib_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a folder",
            )));
        }
        Ok(Library { root })
    }

    /// The canonical path of the library folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file an asset name refers to. Rejects empty names, NUL bytes, absolute paths,
    /// `..` components, and anything (symlinks included) that resolves outside the library.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, StorageError> {
        let forbidden = |reason: &str| StorageError::Forbidden {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(forbidden("empty name"));
        }
        if name.contains('\0') {
            return Err(forbidden("NUL byte in name"));
        }
        let rel = Path::new(name);
        for c in rel.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => return Err(forbidden("'..' is not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(forbidden("absolute paths are not allowed"))
                }
            }
        }
        let joined = self.root.join(rel);
        let real = match joined.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink is missing too; but say Forbidden if it aims outside.
                if let Ok(target) = std::fs::read_link(&joined) {
                    let target = joined.parent().unwrap_or(&self.root).join(target);
                    if !lexically_inside(&target, &self.root) {
                        return Err(forbidden("symlink points outside the library"));
                    }
                }
                return Err(StorageError::NotFound {
                    name: name.to_string(),
                });
            }
            Err(source) => {
                return Err(StorageError::Io {
                    name: name.to_string(),
                    source,
                })
            }
        };
        if !real.starts_with(&self.root) {
            return Err(forbidden("resolves outside the library"));
        }
        if !real.is_file() {
            return Err(StorageError::NotFound {
                name: name.to_string(),
            });
        }
        Ok(real)
    }

    /// Names of all regular files of the library (recursive, sorted, hidden files and
    /// folders skipped), as accepted by [`Library::resolve`].
    pub fn list(&self) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|source| StorageError::Library {
                path: dir.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let Some(name) = rel.to_str() else {
                    tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8");
                    continue;
                };
                // Follow symlinks for the type, but do not walk into linked folders.
                let is_symlink = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
                if path.is_dir() {
                    if !is_symlink {
                        stack.push(path.clone());
                    }
                } else {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Whether `path`, with `.`/`..` folded lexically, stays under `root`.
fn lexically_inside(path: &Path, root: &Path) -> bool {
    let mut parts: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if matches!(parts.last(), Some(Component::Normal(_))) {
                    parts.pop();
                } else {
                    return false;
                }
            }
            Component::CurDir => {}
            other => parts.push(other),
        }
    }
    parts.iter().collect::<PathBuf>().starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.mp4"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.mkv"), b"x").unwrap();
        let lib = Library::open(dir.path()).unwrap();
        (dir, lib)
    }

    fn forbidden(r: Result<PathBuf, StorageError>) -> bool {
        matches!(r, Err(StorageError::Forbidden { .. }))
    }

    #[test]
    fn resolves_names_inside() {
        let (_d, lib) = lib();
        assert!(lib.resolve("a.mp4").unwrap().ends_with("a.mp4"));
        assert!(lib.resolve("sub/b.mkv").unwrap().ends_with("sub/b.mkv"));
        assert!(lib.resolve("./a.mp4").is_ok());
        assert_eq!(lib.list().unwrap(), vec!["a.mp4", "sub/b.mkv"]);
    }

    #[test]
    fn rejects_unsafe_names() {
        let (_d, lib) = lib();
        assert!(forbidden(lib.resolve("")));
        assert!(forbidden(lib.resolve("../x")));
        assert!(forbidden(lib.resolve("sub/../a.mp4")));
        assert!(forbidden(lib.resolve("/etc/passwd")));
        assert!(forbidden(lib.resolve("a\0.mp4")));
    }

    #[test]
    fn missing_is_not_found() {
        let (_d, lib) = lib();
        assert!(matches!(
            lib.resolve("nope.mp4"),
            Err(StorageError::NotFound { .. })
        ));
        // A folder is not an asset.
        assert!(matches!(
            lib.resolve("sub"),
            Err(StorageError::NotFound { .. })
        ));
    }

    #[test]
    fn symlink_escape_is_forbidden() {
        let (dir, lib) = lib();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.mp4"),
            dir.path().join("link.mp4"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("linkdir")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("dangling.mp4")).unwrap();
        std::os::unix::fs::symlink("a.mp4", dir.path().join("inner.mp4")).unwrap();
        assert!(forbidden(lib.resolve("link.mp4")));
        assert!(forbidden(lib.resolve("linkdir/secret.mp4")));
        assert!(forbidden(lib.resolve("dangling.mp4")));
        assert!(lib.resolve("inner.mp4").is_ok());
    }

    #[test]
    fn missing_library_is_an_error() {
        let err = Library::open("/nonexistent/library").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/library"), "{err}");
    }
}
