//! One writer per data directory (docs/spec.md §3.7): an exclusive advisory lock on `DIR/LOCK`.
//!
//! `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Linux: the lock belongs to the open
//! file description, so a second `open` + `try_lock` fails even inside the same process,
//! and the kernel drops the lock when the holder dies: no stale lock files to clean up.

use crate::error::LogError;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Holds the exclusive lock on a data directory for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    // Dropping the file closes the descriptor, which releases the lock.
    _file: File,
}

impl DirLock {
    /// Takes the lock, creating the directory if missing. A second holder, in this
    /// process or another, gets [`LogError::Locked`] naming the directory.
    pub fn acquire(dir: &Path) -> Result<DirLock, LogError> {
        fs::create_dir_all(dir)
            .map_err(|e| LogError::io(dir.to_path_buf(), "create data directory", e))?;
        let path = dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LogError::io(path.clone(), "open lock file", e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock {
                dir: dir.to_path_buf(),
                _file: file,
            }),
            Err(TryLockError::WouldBlock) => Err(LogError::Locked {
                dir: dir.to_path_buf(),
            }),
            Err(TryLockError::Error(e)) => Err(LogError::io(path, "lock", e)),
        }
    }

    /// The locked data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
