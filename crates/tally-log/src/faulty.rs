//! An in-memory [`Storage`] for crash and fault tests, here and in other crates' tests.
//!
//! Every file keeps two images: `written` (what reads see now) and `durable` (what
//! survives a crash: the content at its last successful `sync_data`). The directory keeps
//! two name tables the same way (`sync_dir` makes the current one durable). [`crash`]
//! throws away everything not durable, optionally keeping a prefix of the last unsynced
//! write (an append or an in-place `write_at`) to model a torn write. Faults (EIO,
//! ENOSPC) can be armed for the Nth write or the Nth sync.
//!
//! A `FaultyStorage` is a cheap handle: clones share the same files, so a test keeps one
//! clone to crash and inspect while the [`crate::Wal`] owns another.
//!
//! [`crash`]: FaultyStorage::crash

use crate::storage::Storage;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// An injected operating-system error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// EIO: the device failed.
    Eio,
    /// ENOSPC: the disk is full.
    Enospc,
}

impl Fault {
    /// The error as the OS reports it (Linux numbering).
    pub fn error(self) -> io::Error {
        match self {
            Fault::Eio => io::Error::from_raw_os_error(5),
            Fault::Enospc => io::Error::from_raw_os_error(28),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Images {
    written: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct WriteFault {
    /// Absolute number of the append that fails (1 = the first append ever).
    at: u64,
    fault: Fault,
    /// Bytes of the failing append that still land in the written image.
    bytes_written: usize,
}

/// Counts one kind of sync (of a file's data, or of the directory) and fails the one an
/// armed fault names.
#[derive(Debug, Default, Clone, Copy)]
struct Syncs {
    count: u64,
    /// (the count of the sync that fails, how).
    fault: Option<(u64, Fault)>,
}

impl Syncs {
    fn arm(&mut self, nth: u64, fault: Fault) {
        assert!(nth >= 1, "nth counts from 1");
        self.fault = Some((self.count + nth, fault));
    }

    /// Counts a sync; `Err` if it is the one armed to fail (the fault fires once).
    fn count_one(&mut self) -> io::Result<()> {
        self.count += 1;
        match self.fault {
            Some((at, fault)) if at == self.count => {
                self.fault = None;
                Err(fault.error())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    inode_next: u64,
    files: HashMap<u64, Images>,
    names: BTreeMap<String, u64>,
    names_durable: BTreeMap<String, u64>,
    appends: u64,
    write_fault: Option<WriteFault>,
    syncs: Syncs,
    dir_syncs: Syncs,
    /// The most recent write not yet covered by a sync: (inode, offset, length).
    append_unsynced_last: Option<(u64, usize, usize)>,
    /// Renames reach the disk at once, before any `sync_dir` (ext4 may do this).
    renames_durable_at_once: bool,
    /// Every range let go from the page cache: (name, offset, length), oldest first.
    cache_drops: Vec<(String, u64, u64)>,
}

impl State {
    fn inode(&self, name: &str) -> io::Result<u64> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file named {name}")))
    }

    fn images(&mut self, name: &str) -> io::Result<&mut Images> {
        let inode = self.inode(name)?;
        self.files
            .get_mut(&inode)
            .ok_or_else(|| io::Error::other("inode without content"))
    }
}

/// In-memory files with separate written and durable images; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

impl FaultyStorage {
    /// An empty directory with no fault armed.
    pub fn new() -> FaultyStorage {
        FaultyStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every range the callers let go from the page cache ([`Storage::drop_cached`]):
    /// (name, offset, length), oldest first.
    pub fn cache_drops(&self) -> Vec<(String, u64, u64)> {
        self.lock().cache_drops.clone()
    }

    /// Power loss: everything not synced is gone, and the fault plan is cleared.
    pub fn crash(&self) {
        self.crash_keeping_unsynced_bytes(0);
    }

    /// Power loss that tears the last unsynced write: its first `bytes_kept` bytes reach
    /// the disk, the rest do not. For a write past the durable end (an append), unsynced
    /// writes before it in the same file reach the disk too; for a write in place, only
    /// its own kept bytes do.
    pub fn crash_keeping_unsynced_bytes(&self, bytes_kept: usize) {
        let mut state = self.lock();
        if let Some((inode, offset, len)) = state.append_unsynced_last
            && bytes_kept > 0
            && let Some(images) = state.files.get_mut(&inode)
        {
            let keep_end = offset + bytes_kept.min(len);
            if images.written.len() >= keep_end {
                if images.durable.len() <= offset {
                    images.durable = images.written[..keep_end].to_vec();
                } else {
                    if images.durable.len() < keep_end {
                        images.durable.resize(keep_end, 0);
                    }
                    images.durable[offset..keep_end]
                        .copy_from_slice(&images.written[offset..keep_end]);
                }
            }
        }
        state.names = state.names_durable.clone();
        let live: Vec<u64> = state.names.values().copied().collect();
        state.files.retain(|inode, _| live.contains(inode));
        for images in state.files.values_mut() {
            images.written = images.durable.clone();
        }
        state.append_unsynced_last = None;
        state.write_fault = None;
        state.syncs.fault = None;
        state.dir_syncs.fault = None;
    }

    /// Clears every armed fault, changing no data: a process restart on a machine that
    /// keeps running (unsynced writes stay readable, as from the page cache).
    pub fn disarm(&self) {
        let mut state = self.lock();
        state.write_fault = None;
        state.syncs.fault = None;
        state.dir_syncs.fault = None;
    }

    /// Arms a fault on the `nth` write (append or `write_at`) from now (1 = the next
    /// one); nothing of it lands.
    pub fn fail_append(&self, nth: u64, fault: Fault) {
        self.fail_append_torn(nth, fault, 0);
    }

    /// Arms a fault on the `nth` write from now, after `bytes_written` of it landed.
    pub fn fail_append_torn(&self, nth: u64, fault: Fault, bytes_written: usize) {
        assert!(nth >= 1, "nth counts from 1");
        let mut state = self.lock();
        let at = state.appends + nth;
        state.write_fault = Some(WriteFault {
            at,
            fault,
            bytes_written,
        });
    }

    /// Arms a fault on the `nth` `sync_data` from now (1 = the next one). The failed
    /// sync makes nothing durable, as Linux may drop the dirty pages it could not write.
    pub fn fail_sync(&self, nth: u64, fault: Fault) {
        self.lock().syncs.arm(nth, fault);
    }

    /// Arms a fault on the `nth` `sync_dir` from now (1 = the next one): nothing of the
    /// directory's changes since the last successful one becomes durable.
    pub fn fail_sync_dir(&self, nth: u64, fault: Fault) {
        self.lock().dir_syncs.arm(nth, fault);
    }

    /// Directory syncs counted so far.
    pub fn dir_syncs(&self) -> u64 {
        self.lock().dir_syncs.count
    }

    /// Makes every later rename durable at once, as a file system may before the
    /// directory is synced, instead of at the next `sync_dir`.
    pub fn set_renames_durable_at_once(&self, on: bool) {
        self.lock().renames_durable_at_once = on;
    }

    /// Names of the files now visible, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.lock().names.keys().cloned().collect()
    }

    /// The written image of a file.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let mut state = self.lock();
        state.images(name).ok().map(|images| images.written.clone())
    }

    /// Replaces a file's content, durably (for building damaged directories in tests).
    pub fn write_file_durable(&self, name: &str, bytes: &[u8]) {
        let mut state = self.lock();
        let inode = match state.names.get(name) {
            Some(inode) => *inode,
            None => {
                state.inode_next += 1;
                state.inode_next
            }
        };
        state.names.insert(name.to_string(), inode);
        state.names_durable.insert(name.to_string(), inode);
        state.files.insert(
            inode,
            Images {
                written: bytes.to_vec(),
                durable: bytes.to_vec(),
            },
        );
    }

    /// Flips one bit of a file, durably. Panics if the file or offset does not exist.
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) {
        let mut bytes = self.read_file(name).expect("file to damage exists");
        assert!(
            offset < bytes.len(),
            "offset {offset} is past the end of {name}"
        );
        bytes[offset] ^= 1 << (bit % 8);
        self.write_file_durable(name, &bytes);
    }

    /// Removes a file, durably.
    pub fn remove_file_durable(&self, name: &str) {
        let mut state = self.lock();
        state.names.remove(name);
        state.names_durable.remove(name);
    }

    /// Writes (appends and `write_at`s) and syncs counted so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.appends, state.syncs.count)
    }

    /// One write, at the end (`offset` `None`) or in place; an armed fault lands only a
    /// prefix of it.
    fn write(&mut self, name: &str, offset: Option<usize>, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.inode(name)?;
        state.appends += 1;
        let fault = state.write_fault.filter(|f| f.at == state.appends);
        let landed = match fault {
            Some(f) => &bytes[..f.bytes_written.min(bytes.len())],
            None => bytes,
        };
        let images = state.images(name)?;
        let offset = offset.unwrap_or(images.written.len());
        let end = offset + landed.len();
        if images.written.len() < end {
            images.written.resize(end, 0);
        }
        images.written[offset..end].copy_from_slice(landed);
        if !landed.is_empty() {
            state.append_unsynced_last = Some((inode, offset, landed.len()));
        }
        match fault {
            Some(f) => {
                state.write_fault = None;
                Err(f.fault.error())
            }
            None => Ok(()),
        }
    }
}

impl Storage for FaultyStorage {
    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from("faulty").join(name)
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.inode_next += 1;
        let inode = state.inode_next;
        state.files.insert(inode, Images::default());
        state.names.insert(name.to_string(), inode);
        Ok(())
    }

    fn len(&mut self, name: &str) -> io::Result<u64> {
        Ok(self.lock().images(name)?.written.len() as u64)
    }

    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut state = self.lock();
        let images = state.images(name)?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let source = start
            .checked_add(buf.len())
            .and_then(|end| images.written.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.write(name, None, bytes)
    }

    fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        self.write(name, Some(offset), bytes)
    }

    fn sync_data(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.inode(name)?;
        state.syncs.count_one()?;
        let images = state.images(name)?;
        images.durable = images.written.clone();
        if state
            .append_unsynced_last
            .is_some_and(|(unsynced, _, _)| unsynced == inode)
        {
            state.append_unsynced_last = None;
        }
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let images = state.images(name)?;
        images.written.resize(len, 0);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.inode(from)?;
        state.names.remove(from);
        state.names.insert(to.to_string(), inode);
        if state.renames_durable_at_once {
            state.names_durable.remove(from);
            state.names_durable.insert(to.to_string(), inode);
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.inode(name)?;
        state.names.remove(name);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        state.dir_syncs.count_one()?;
        state.names_durable = state.names.clone();
        Ok(())
    }

    fn close(&mut self, _name: &str) {}

    /// Records the range after checking it holds only durable bytes: the callers let go
    /// of pages they synced, never of pages still on their way to the disk.
    fn drop_cached(&mut self, name: &str, offset: u64, len: u64) {
        let mut state = self.lock();
        if let Ok(images) = state.images(name) {
            let (start, end) = (offset as usize, (offset + len) as usize);
            assert!(
                end <= images.durable.len()
                    && images.written.get(start..end) == images.durable.get(start..end),
                "{name}: bytes {start}..{end} let go of before they were synced"
            );
        }
        state.cache_drops.push((name.to_string(), offset, len));
    }

    fn another_handle(&self) -> io::Result<Box<dyn Storage>> {
        // Clones share the same files and fault plan: one disk, two handles.
        Ok(Box::new(self.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_content_and_names() {
        let mut storage = FaultyStorage::new();
        storage.create("a").unwrap();
        storage.append("a", b"hello").unwrap();
        storage.sync_data("a").unwrap();
        storage.crash();
        assert!(storage.file_names().is_empty(), "name was never synced");

        storage.create("a").unwrap();
        storage.sync_dir().unwrap();
        storage.append("a", b"hello").unwrap();
        storage.sync_data("a").unwrap();
        storage.append("a", b" world").unwrap();
        storage.crash_keeping_unsynced_bytes(3);
        assert_eq!(storage.read_file("a").unwrap(), b"hello wo");
        storage.crash();
        assert_eq!(
            storage.read_file("a").unwrap(),
            b"hello wo",
            "tear became durable"
        );
    }

    #[test]
    fn a_torn_write_in_place_keeps_only_its_own_prefix() {
        let mut storage = FaultyStorage::new();
        storage.create("a").unwrap();
        storage.sync_dir().unwrap();
        storage.append("a", &[0; 8]).unwrap();
        storage.sync_data("a").unwrap();
        storage.write_at("a", 1, b"xy").unwrap();
        storage.sync_data("a").unwrap();
        storage.write_at("a", 6, b"zz").unwrap(); // lost: not the last write
        storage.write_at("a", 3, b"pqr").unwrap();
        storage.crash_keeping_unsynced_bytes(2);
        assert_eq!(storage.read_file("a").unwrap(), b"\0xypq\0\0\0");
        storage.write_at("a", 10, b"w").unwrap();
        assert_eq!(
            storage.read_file("a").unwrap().len(),
            11,
            "a gap reads as zeros"
        );
        storage.crash_keeping_unsynced_bytes(1);
        assert_eq!(storage.read_file("a").unwrap(), b"\0xypq\0\0\0\0\0w");
    }

    #[test]
    fn faults_fire_once_on_the_chosen_call() {
        let mut storage = FaultyStorage::new();
        storage.create("a").unwrap();
        storage.fail_append_torn(2, Fault::Enospc, 2);
        storage.append("a", b"ab").unwrap();
        let error = storage.append("a", b"cdef").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28));
        assert_eq!(storage.read_file("a").unwrap(), b"abcd");
        storage.fail_sync(1, Fault::Eio);
        assert_eq!(storage.sync_data("a").unwrap_err().raw_os_error(), Some(5));
        storage.sync_data("a").unwrap();
    }
}
