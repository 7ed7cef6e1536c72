//! A simulated disk for a replica (feature `simulation`): the replicated log's bytes and
//! the snapshot in memory, so that a simulation of the cluster runs a seed in
//! milliseconds, on one thread, and models crashes and I/O errors.
//!
//! The log's bytes are kept as written, with the length of the prefix a sync made
//! durable; [`SimDisk::crash`] keeps only that prefix (plus, when asked, a torn prefix
//! of the rest: the kernel may have written some of it). The snapshot is replaced
//! atomically and durably, as the real file is (a new file, synced, renamed).
//! [`SimDisk::fail_next_write`] and [`SimDisk::fail_next_sync`] make the next write or
//! sync of the log fail with an I/O error; the log then never writes again, as on a
//! real disk. [`SimDisk::slow_next_install`] makes the next snapshot from the leader
//! take a while to install, as a large one does, so that a crash can land in it.
//!
//! Writes complete inline, in the task that makes them: no thread, so a simulation on
//! a single-threaded runtime with paused time is not perturbed by the disk.

use crate::log_store::parse_log;
use crate::types::TallyRaft;
use openraft::Entry;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

/// The simulated disk of one replica: cheap to clone, clones share the disk.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<DiskState>>,
}

#[derive(Debug, Default)]
struct DiskState {
    /// The log file's bytes, as written.
    log: Vec<u8>,
    /// How many of them a sync made durable.
    synced_len: usize,
    snapshot: Option<Arc<Vec<u8>>>,
    /// How long the next snapshot received from the leader takes to install.
    next_install_delay: Option<std::time::Duration>,
    /// Until when the snapshot being installed is still being installed.
    installing_until: Option<tokio::time::Instant>,
    /// Snapshots from the leader this replica began to install, over its crashes.
    installs: u64,
    fail_next_write: bool,
    fail_next_sync: bool,
    /// Set by a crash: this incarnation of the disk is gone.
    crashed: bool,
    /// Set by a failed write or sync: the log writes nothing more until a restart.
    refused: bool,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Makes the next write of the log fail (nothing of it is written).
    pub fn fail_next_write(&self) {
        self.inner.lock().fail_next_write = true;
    }

    /// Makes the next sync of the log fail (its bytes stay written but not durable).
    pub fn fail_next_sync(&self) {
        self.inner.lock().fail_next_sync = true;
    }

    /// Makes the next snapshot received from the leader take `delay` to install (as a
    /// large one does), so that a crash can land while it is installed.
    pub fn slow_next_install(&self, delay: std::time::Duration) {
        self.inner.lock().next_install_delay = Some(delay);
    }

    /// Counts a snapshot from the leader being installed, and returns how long it
    /// takes (see [`SimDisk::slow_next_install`]).
    pub(crate) fn begin_install(&self) -> Option<std::time::Duration> {
        let mut state = self.inner.lock();
        state.installs += 1;
        let delay = state.next_install_delay.take()?;
        state.installing_until = Some(tokio::time::Instant::now() + delay);
        Some(delay)
    }

    /// How many snapshots from the leader this replica began to install, over its
    /// crashes.
    pub fn installs(&self) -> u64 {
        self.inner.lock().installs
    }

    /// Whether a snapshot made slow by [`SimDisk::slow_next_install`] is being
    /// installed now.
    pub fn is_installing(&self) -> bool {
        let until = self.inner.lock().installing_until;
        until.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Crashes the machine: this disk fails every later call, and the disk the replica
    /// finds when it restarts is returned. It holds the synced bytes of the log and
    /// the first `torn_bytes` (at most all) of the bytes written after the last sync.
    pub fn crash(&self, torn_bytes: usize) -> SimDisk {
        let mut state = self.inner.lock();
        state.crashed = true;
        let kept = state.log.len().min(state.synced_len + torn_bytes);
        SimDisk {
            inner: Arc::new(Mutex::new(DiskState {
                log: state.log[..kept].to_vec(),
                synced_len: kept,
                snapshot: state.snapshot.clone(),
                installs: state.installs,
                ..DiskState::default()
            })),
        }
    }

    /// Bytes of the log written but not yet synced.
    pub fn unsynced_bytes(&self) -> usize {
        let state = self.inner.lock();
        state.log.len() - state.synced_len
    }

    /// Every entry the log's bytes hold, as the log would read them back, except that
    /// purges are ignored: entries a snapshot made redundant are still there (the
    /// simulation compares them with a reference). Truncations are applied.
    pub fn logged_entries(&self) -> Result<BTreeMap<u64, Entry<TallyRaft>>, String> {
        let bytes = self.inner.lock().log.clone();
        let (contents, _) = parse_log(&bytes, "the simulated log", false)?;
        Ok(contents
            .entries
            .into_iter()
            .map(|(index, (entry, _))| (index, entry))
            .collect())
    }

    /// The log's bytes a restart reads: all of them (a crash already dropped the rest).
    pub(crate) fn log_bytes(&self) -> Vec<u8> {
        self.inner.lock().log.clone()
    }

    /// Appends `bytes` to the log.
    pub(crate) fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.inner.lock();
        state.usable()?;
        if std::mem::take(&mut state.fail_next_write) {
            return Err(io::Error::other("simulated write failure"));
        }
        state.log.extend_from_slice(bytes);
        Ok(())
    }

    /// Makes every byte written so far durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut state = self.inner.lock();
        state.usable()?;
        if std::mem::take(&mut state.fail_next_sync) {
            return Err(io::Error::other("simulated sync failure"));
        }
        state.synced_len = state.log.len();
        Ok(())
    }

    /// Replaces the whole log with `bytes`, durably (a new file, synced, renamed).
    pub(crate) fn replace_log(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.inner.lock();
        state.usable()?;
        state.log = bytes.to_vec();
        state.synced_len = bytes.len();
        Ok(())
    }

    /// Refuses every later write, until the machine restarts.
    pub(crate) fn refuse_writes(&self) {
        self.inner.lock().refused = true;
    }

    /// The snapshot, if one was saved.
    pub(crate) fn snapshot(&self) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().snapshot.clone()
    }

    /// Saves `bytes` as the snapshot, durably.
    pub(crate) fn save_snapshot(&self, bytes: Arc<Vec<u8>>) -> io::Result<()> {
        let mut state = self.inner.lock();
        if state.crashed {
            return Err(io::Error::other("the simulated machine crashed"));
        }
        state.snapshot = Some(bytes);
        Ok(())
    }
}

impl DiskState {
    fn usable(&self) -> io::Result<()> {
        if self.crashed {
            return Err(io::Error::other("the simulated machine crashed"));
        }
        if self.refused {
            return Err(io::Error::other("the simulated log failed earlier"));
        }
        Ok(())
    }
}
