//! Files written atomically: a temporary file in the same directory, then a rename, so the
//! target is either the old file or the complete new one.

use std::path::{Path, PathBuf};

/// A file that could not be written; no temporary file is left behind.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The target file (not its temporary name).
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The temporary name `path` is written under: `.NAME.PID.tmp` in the same directory.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
/// A failure names `path` (not the temporary file) and leaves no temporary file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    if path.file_name().is_none() {
        return Err(err(std::io::Error::other("not a file name")));
    }
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_names_the_target_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // a directory in the way of the rename: the error names the target, no temporary
        // file stays
        let blocked = dir.path().join("sub");
        std::fs::create_dir(blocked.join("inner").parent().unwrap()).unwrap();
        std::fs::create_dir(blocked.join("inner")).unwrap();
        let e = write_atomic(&blocked, b"x").unwrap_err();
        assert_eq!(e.path, blocked);
        assert!(e
            .to_string()
            .starts_with(&format!("cannot write {}: ", blocked.display())));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "a.txt and sub only");
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
