//! The file layer under the log: one flat directory of named files. Small on purpose, so
//! that `faulty::FaultyStorage` (feature `fault-injection`) can model every call's durability
//! exactly.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One flat directory of files. Files are appended to, truncated, renamed and removed;
/// the log writes in place (`write_at`) only over zeros it preallocated itself.
///
/// Durability contract (what the log relies on): `append`, `write_at` and `truncate`
/// reach the disk only at the next successful `sync_data` of that file, and a crash may
/// keep any prefix of the last unsynced write; a file's creation, rename or removal
/// reaches the disk only at the next successful `sync_dir`.
pub trait Storage: Send + fmt::Debug {
    /// The path of `name`, for error messages.
    fn path(&self, name: &str) -> PathBuf;
    /// Names of every file in the directory, in no particular order.
    fn list(&mut self) -> io::Result<Vec<String>>;
    /// Creates `name` empty, replacing any file of that name.
    fn create(&mut self, name: &str) -> io::Result<()>;
    /// The file's length in bytes.
    fn len(&mut self, name: &str) -> io::Result<u64>;
    /// Fills `buf` from `offset`; a short file is an `UnexpectedEof` error.
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `bytes` at the end of the file.
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Writes `bytes` at `offset`, over what is there, extending the file if it is
    /// shorter (a gap reads as zeros).
    fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes the file's content and length durable (`fdatasync`).
    fn sync_data(&mut self, name: &str) -> io::Result<()>;
    /// Cuts the file to `len` bytes (or extends it with zeros).
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing `to`.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name`.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable (`fsync` of the directory).
    fn sync_dir(&mut self) -> io::Result<()>;
    /// Releases any handle kept open on `name`; a hint, never an error.
    fn close(&mut self, name: &str);
    /// Lets the page cache free `len` bytes of `name` from `offset`, already written and
    /// synced and not to be read again soon; a hint, never an error (nothing by
    /// default).
    fn drop_cached(&mut self, name: &str, offset: u64, len: u64) {
        let _ = (name, offset, len);
    }
    /// A second, independent handle on the same directory, so a snapshot can be written
    /// on another thread while the log keeps appending through this one.
    fn another_handle(&self) -> io::Result<Box<dyn Storage>>;
}

/// Real files in a directory. `sync_data` is `fdatasync(2)` (`File::sync_data`).
///
/// Handles of files being appended to stay open (one per file the log writes: the
/// current segment and a snapshot in progress); reads of other files open and close.
pub struct FsStorage {
    dir: PathBuf,
    open: HashMap<String, File>,
}

impl fmt::Debug for FsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStorage")
            .field("dir", &self.dir)
            .field("open", &self.open.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl FsStorage {
    /// Storage over `dir`, creating it (and its parents) if missing.
    pub fn create_dir(dir: &Path) -> io::Result<FsStorage> {
        fs::create_dir_all(dir)?;
        Ok(FsStorage::existing(dir))
    }

    /// Storage over a directory that must already exist (read-only tools use this).
    pub fn existing(dir: &Path) -> FsStorage {
        FsStorage {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        }
    }

    /// The directory this storage works in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn handle(&mut self, name: &str) -> io::Result<&mut File> {
        if !self.open.contains_key(name) {
            // Not O_APPEND: on Linux that makes `pwrite` ignore its offset, and the log
            // writes in place into preallocated segments. `append` seeks to the end.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(name))?;
            self.open.insert(name.to_string(), file);
        }
        self.open
            .get_mut(name)
            .ok_or_else(|| io::Error::other("handle vanished"))
    }
}

impl Storage for FsStorage {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                // A name that is not UTF-8 is not one of ours.
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        self.open.remove(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(name))?;
        file.set_len(0)?;
        self.open.insert(name.to_string(), file);
        Ok(())
    }

    fn len(&mut self, name: &str) -> io::Result<u64> {
        match self.open.get(name) {
            Some(file) => Ok(file.metadata()?.len()),
            None => Ok(fs::metadata(self.dir.join(name))?.len()),
        }
    }

    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut read = |file: &mut File| -> io::Result<()> {
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(buf)
        };
        match self.open.get_mut(name) {
            Some(file) => read(file),
            None => read(&mut File::open(self.dir.join(name))?),
        }
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let file = self.handle(name)?;
        file.seek(SeekFrom::End(0))?;
        file.write_all(bytes)
    }

    fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let file = self.handle(name)?;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(bytes)
    }

    fn sync_data(&mut self, name: &str) -> io::Result<()> {
        self.handle(name)?.sync_data()
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.handle(name)?.set_len(len)
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.open.remove(from);
        self.open.remove(to);
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.open.remove(name);
        fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        sync_directory(&self.dir)
    }

    fn close(&mut self, name: &str) {
        self.open.remove(name);
    }

    fn drop_cached(&mut self, name: &str, offset: u64, len: u64) {
        if let Ok(file) = self.handle(name) {
            crate::page_cache::drop_cached(file, offset, len);
        }
    }

    fn another_handle(&self) -> io::Result<Box<dyn Storage>> {
        Ok(Box::new(FsStorage::existing(&self.dir)))
    }
}

#[cfg(unix)]
fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for fsync here; renames are durable on return.
    Ok(())
}
