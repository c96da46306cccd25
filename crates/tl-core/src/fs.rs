//! Crash-safe file writes: after a crash, a kill or a full disk the destination holds either
//! its old content or the whole new file, never a part.
//!
//! The one protocol of the workspace (feature shards, store manifests, fetched assets,
//! checkpoints, exported models, saved classifiers): write a uniquely named temporary file
//! in the destination's folder, fsync it, rename it over the destination, fsync the folder
//! so the rename itself survives a power cut.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The prefix of every temporary file name [`temp_path`] makes (sweepers look for it).
pub const TEMP_PREFIX: &str = ".tmp-";

/// A sibling of `dest` named `.tmp-<pid>-<nanos>-<n>-<name>`: unique to this process, call
/// and moment (so writers on several hosts sharing a folder never collide), and never
/// mistaken for the real file.
pub fn temp_path(dest: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    dest.with_file_name(format!(
        "{TEMP_PREFIX}{}-{nanos}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Whether a file name is one of [`temp_path`]'s.
pub fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Makes the finished temporary file `tmp` the file `dest`: fsync, rename, fsync of the
/// folder (best-effort: not every filesystem can sync a folder).
pub fn persist(tmp: &Path, dest: &Path) -> io::Result<()> {
    fs::File::open(tmp)?.sync_all()?;
    fs::rename(tmp, dest)?;
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
    if let Ok(d) = fs::File::open(parent.unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` to `dest` atomically (see the module doc). A failed write removes its
/// temporary file; the error is the I/O error, to be reported with `dest`'s name.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(dest);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        persist(&tmp, dest)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("tl-core-fs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("a.json");
        write_atomic(&dest, b"first").unwrap();
        write_atomic(&dest, b"second").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"second");
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json"]);
        // A folder that does not exist: an error, and nothing left behind.
        assert!(write_atomic(&dir.join("missing/b.json"), b"x").is_err());
        let a = temp_path(&dest);
        let b = temp_path(&dest);
        assert_ne!(a, b);
        assert!(is_temp(&a.file_name().unwrap().to_string_lossy()));
        assert!(!is_temp("a.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
