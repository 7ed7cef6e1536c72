//! The replicated log on disk: one append-only file of checksummed frames (entries,
//! votes, truncations, purges, the commit position), written by one thread that takes
//! every waiting write and makes them durable with one `fdatasync`: group commit, as
//! the single-node log does. Entries stay in memory until a snapshot purges them.
//!
//! Frame: `len: u32 | crc32c(kind ‖ payload): u32 | kind: u8 | payload`, little-endian.
//! At start-up a frame that fails its checksum ends the log when nothing valid follows
//! it (a torn tail: the write was never acknowledged) and stops start-up otherwise.
//!
//! Invariant: openraft is told an append is flushed only after the `fdatasync` that
//! covers it returned; a vote is saved durably before `save_vote` returns; a purge
//! reaches the file only once a durable snapshot holds what it lets go, and every write
//! after it waits with it (see `snapshot_floor`).

// openraft's own error type is large; its trait methods return it, so these do too.
#![allow(clippy::result_large_err)]

use crate::snapshot_floor::SnapshotFloor;
use crate::types::{TallyRaft, storage_error};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageError, Vote};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

/// The log file's name in the replica's directory.
pub(crate) const LOG_FILE: &str = "replica.log";
const FRAME_HEADER: usize = 9;
/// A frame larger than this is damage, not data (a group is at most ~2.1 MB).
const FRAME_BYTES_MAX: usize = 64 << 20;
/// The file is rewritten without its purged entries once it is this large and mostly
/// purged.
const REWRITE_BYTES_MIN: u64 = 256 << 20;

pub(crate) const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_PURGE: u8 = 4;
pub(crate) const KIND_COMMITTED: u8 = 5;

/// What the log holds in memory.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// Entries after the last purge, each with its frame's size on disk.
    pub(crate) entries: BTreeMap<u64, (Entry<TallyRaft>, u64)>,
    last_purged: Option<LogId<u64>>,
    vote: Option<Vote<u64>>,
    pub(crate) committed: Option<LogId<u64>>,
    /// Bytes of the file, and of the live entries' frames in it.
    file_bytes: u64,
    live_bytes: u64,
}

/// Where the log's frames go.
#[derive(Clone)]
enum Disk {
    /// The log file, written by the writer thread.
    File(mpsc::Sender<LogWrite>),
    /// A simulated disk, written inline (feature `simulation`).
    #[cfg(feature = "simulation")]
    Simulated(crate::sim_disk::SimDisk),
}

enum LogWrite {
    /// Frames to append; `done` is told once they are durable.
    Frames { bytes: Vec<u8>, done: Done },
    /// Replace the whole file with these frames.
    Rewrite { bytes: Vec<u8>, done: Done },
}

enum Done {
    Flushed(LogFlushed<TallyRaft>),
    Reply(tokio::sync::oneshot::Sender<io::Result<()>>),
    Nothing,
}

impl Done {
    fn complete(self, result: &io::Result<()>) {
        let copy = || match result {
            Ok(()) => Ok(()),
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
        };
        match self {
            Done::Flushed(callback) => callback.log_io_completed(copy()),
            Done::Reply(sender) => {
                let _ = sender.send(copy());
            }
            Done::Nothing => {}
        }
    }
}

/// Writes held back until a durable snapshot covers a purge among them, in order.
/// Few in practice: while a replica installs a snapshot its leader sends it nothing
/// more (it waits for the install's answer), and each append or vote waits for its
/// write.
#[derive(Default)]
struct Held {
    queue: VecDeque<HeldWrite>,
    /// The floor was abandoned while writes waited: the log writes nothing more.
    refused: bool,
}

enum HeldWrite {
    /// The writes after this wait until a durable snapshot holds the log up to it.
    UntilSnapshot(u64),
    Write(LogWrite),
}

/// The replicated log: cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    contents: Arc<Mutex<Contents>>,
    disk: Disk,
    held: Arc<Mutex<Held>>,
    floor: SnapshotFloor,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let contents = self.contents.lock();
        f.debug_struct("LogStore")
            .field("entries", &contents.entries.len())
            .field("last_purged", &contents.last_purged)
            .finish()
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir` and starts its writer thread. Its purges wait
    /// for `floor`, which the replica's state store raises.
    pub fn open(dir: &Path, floor: SnapshotFloor) -> Result<LogStore, String> {
        let path = dir.join(LOG_FILE);
        let (contents, valid_len) = read_log(&path)?;
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if created {
            // The new file's name must be durable before any entry in it is: a synced
            // entry in a file whose directory entry was lost is lost with it.
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| format!("{}: fsync directory: {e}", dir.display()))?;
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > valid_len {
            // Never in silence: a crash leaves such bytes, but so does damage to the
            // last frame, which may have been acknowledged.
            let kept = keep_torn_tail(dir, &path, valid_len)?;
            tracing::warn!(
                bytes = len - valid_len,
                kept = %kept.display(),
                "the replica log ended in bytes that do not check (a write cut short by a \
                 crash, never acknowledged, or damage to the last frame); cut from the log \
                 and kept"
            );
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("{}: cutting the torn tail: {e}", path.display()))?;
        }
        let (sender, receiver) = mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("tally-raft-log".into())
            .spawn(move || write_loop(dir, file, receiver))
            .map_err(|e| format!("starting the log writer: {e}"))?;
        Ok(LogStore {
            contents: Arc::new(Mutex::new(contents)),
            disk: Disk::File(sender),
            held: Arc::default(),
            floor,
        })
    }

    /// Opens the log on a simulated disk (feature `simulation`): what a replica finds
    /// there after a crash, its torn tail cut. Writes complete inline, without the
    /// writer thread, each durable write with one sync.
    #[cfg(feature = "simulation")]
    pub fn open_simulated(
        disk: crate::sim_disk::SimDisk,
        floor: SnapshotFloor,
    ) -> Result<LogStore, String> {
        let bytes = disk.log_bytes();
        let (contents, valid_len) = parse_log(&bytes, "the simulated log", true)?;
        if bytes.len() as u64 > valid_len {
            disk.replace_log(&bytes[..valid_len as usize])
                .map_err(|e| format!("cutting the torn tail: {e}"))?;
        }
        Ok(LogStore {
            contents: Arc::new(Mutex::new(contents)),
            disk: Disk::Simulated(disk),
            held: Arc::default(),
            floor,
        })
    }

    /// Whether the log holds a saved vote: false for a replica that never voted, and
    /// for one whose disk was lost (`Elections` then withholds its vote for a while).
    pub fn remembers_vote(&self) -> bool {
        self.contents.lock().vote.is_some()
    }

    /// The index of the last entry purged from the log, if any was.
    pub(crate) fn last_purged_index(&self) -> Option<u64> {
        self.contents.lock().last_purged.map(|id| id.index)
    }

    /// Bytes of the log's frames that a purge has not yet made obsolete: what the log
    /// holds in memory, about.
    pub fn live_bytes(&self) -> u64 {
        self.contents.lock().live_bytes
    }

    /// Hands `write` to the disk, after the writes held back if there are any.
    fn send(&self, write: LogWrite) -> Result<(), StorageError<u64>> {
        self.send_after_snapshot(None, write)
    }

    /// Hands `write` to the disk after the writes held back, and (a purge up to
    /// `index`) once a durable snapshot holds the log up to `index`: the writes after
    /// it wait with it.
    fn send_after_snapshot(
        &self,
        index: Option<u64>,
        write: LogWrite,
    ) -> Result<(), StorageError<u64>> {
        let mut held = self.held.lock();
        if held.refused {
            write.refuse();
            return Ok(());
        }
        let wait = index.filter(|&index| !self.floor.covers(index));
        let idle = held.queue.is_empty();
        if idle && wait.is_none() {
            return self.to_disk(write);
        }
        if let Some(index) = wait {
            held.queue.push_back(HeldWrite::UntilSnapshot(index));
        }
        held.queue.push_back(HeldWrite::Write(write));
        if idle {
            tokio::spawn(release_held(self.clone()));
        }
        Ok(())
    }

    /// Tells the log that no snapshot will be installed any more (the replica stops):
    /// writes waiting for one are never written.
    pub(crate) fn abandon_held(&self) {
        self.floor.abandon();
    }

    fn to_disk(&self, write: LogWrite) -> Result<(), StorageError<u64>> {
        match &self.disk {
            Disk::File(writer) => writer
                .send(write)
                .map_err(|_| storage_error("the log writer stopped".into())),
            #[cfg(feature = "simulation")]
            Disk::Simulated(disk) => {
                write_simulated(disk, write);
                Ok(())
            }
        }
    }

    /// Waits until every write handed to the log before this call is on disk, synced:
    /// the recorded commit, which is not synced on its own, included.
    pub(crate) async fn flush(&self) -> Result<(), StorageError<u64>> {
        self.write_durably(Vec::new()).await
    }

    /// Writes `bytes` and waits until they are durable.
    async fn write_durably(&self, bytes: Vec<u8>) -> Result<(), StorageError<u64>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(LogWrite::Frames {
            bytes,
            done: Done::Reply(reply),
        })?;
        answer
            .await
            .map_err(|_| storage_error("the log writer stopped".into()))?
            .map_err(|e| storage_error(format!("the replica log: {e}")))
    }

    /// Rewrites the file without purged entries when they make up most of it.
    fn rewrite_if_mostly_purged(&self, contents: &mut Contents) -> Result<(), StorageError<u64>> {
        if contents.file_bytes < REWRITE_BYTES_MIN || contents.live_bytes * 2 > contents.file_bytes
        {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(contents.live_bytes as usize + 256);
        if let Some(vote) = &contents.vote {
            push_frame(&mut bytes, KIND_VOTE, &encode(vote)?);
        }
        if let Some(purged) = &contents.last_purged {
            push_frame(&mut bytes, KIND_PURGE, &encode(purged)?);
        }
        if let Some(committed) = &contents.committed {
            push_frame(&mut bytes, KIND_COMMITTED, &encode(committed)?);
        }
        for (entry, _) in contents.entries.values() {
            push_frame(&mut bytes, KIND_ENTRY, &encode(entry)?);
        }
        contents.file_bytes = bytes.len() as u64;
        self.send(LogWrite::Rewrite {
            bytes,
            done: Done::Nothing,
        })
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError<u64>> {
    postcard::to_allocvec(value).map_err(|e| storage_error(format!("encoding a log frame: {e}")))
}

pub(crate) fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// The frame at `at`: its kind, payload and size; `None` when it is not whole and valid.
fn frame_at(bytes: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let header = bytes.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let kind = header[8];
    if len > FRAME_BYTES_MAX || !(KIND_ENTRY..=KIND_COMMITTED).contains(&kind) {
        return None;
    }
    let payload = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    (actual == crc).then_some((kind, payload, FRAME_HEADER + len))
}

/// Copies the log's bytes from `offset` on into `torn-replica-at-<offset>.bin` in
/// `dir` (`-2`, `-3`… after it when an earlier cut at the same offset kept its own),
/// durably, before they are cut; returns its path. A crash before the cut keeps them
/// again at the next start.
fn keep_torn_tail(dir: &Path, path: &Path, offset: u64) -> Result<PathBuf, String> {
    use std::io::{Seek, SeekFrom};
    let name = |n: u32| match n {
        1 => format!("torn-replica-at-{offset}.bin"),
        n => format!("torn-replica-at-{offset}-{n}.bin"),
    };
    let kept = (1..=u32::MAX)
        .map(|n| dir.join(name(n)))
        .find(|candidate| !candidate.exists())
        .ok_or_else(|| format!("{}: no free name for a torn tail", dir.display()))?;
    let failed = |what: &str, e: io::Error| format!("{}: {what}: {e}", kept.display());
    let mut log = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    log.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut copy = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&kept)
        .map_err(|e| failed("create", e))?;
    io::copy(&mut log, &mut copy).map_err(|e| failed("copy the torn tail", e))?;
    copy.sync_all().map_err(|e| failed("fsync", e))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| format!("{}: fsync directory: {e}", dir.display()))?;
    Ok(kept)
}

/// Reads the log file: its contents and how many of its bytes are valid.
pub(crate) fn read_log(path: &Path) -> Result<(Contents, u64), String> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("{}: {error}", path.display())),
    }
    parse_log(&bytes, &path.display().to_string(), true)
}

/// Reads the log's bytes (`name` says whose, in errors): its contents and how many of
/// its bytes are valid. Purge frames drop entries only when `apply_purges`.
pub(crate) fn parse_log(
    bytes: &[u8],
    name: &str,
    apply_purges: bool,
) -> Result<(Contents, u64), String> {
    let mut contents = Contents::default();
    let mut at = 0;
    while at < bytes.len() {
        let Some((kind, payload, size)) = frame_at(bytes, at) else {
            if (at + 1..bytes.len()).any(|later| frame_at(bytes, later).is_some()) {
                return Err(format!(
                    "{name}: damaged frame at offset {at} inside the log"
                ));
            }
            break;
        };
        if kind != KIND_PURGE || apply_purges {
            apply_frame(&mut contents, kind, payload, size as u64)
                .map_err(|e| format!("{name}: frame at offset {at}: {e}"))?;
        }
        at += size;
    }
    contents.file_bytes = at as u64;
    Ok((contents, at as u64))
}

fn apply_frame(contents: &mut Contents, kind: u8, payload: &[u8], size: u64) -> Result<(), String> {
    let decode_error = |e: postcard::Error| e.to_string();
    match kind {
        KIND_ENTRY => {
            let entry: Entry<TallyRaft> = postcard::from_bytes(payload).map_err(decode_error)?;
            contents.live_bytes += size;
            if let Some((_, old)) = contents.entries.insert(entry.log_id.index, (entry, size)) {
                contents.live_bytes -= old;
            }
        }
        KIND_VOTE => contents.vote = Some(postcard::from_bytes(payload).map_err(decode_error)?),
        KIND_COMMITTED => {
            contents.committed = Some(postcard::from_bytes(payload).map_err(decode_error)?);
        }
        KIND_TRUNCATE => {
            let from: u64 = postcard::from_bytes(payload).map_err(decode_error)?;
            remove_from(contents, from);
        }
        KIND_PURGE => {
            let upto: LogId<u64> = postcard::from_bytes(payload).map_err(decode_error)?;
            purge_upto(contents, upto);
        }
        _ => return Err(format!("unknown frame kind {kind}")),
    }
    Ok(())
}

fn remove_from(contents: &mut Contents, from: u64) {
    for (_, (_, size)) in contents.entries.split_off(&from) {
        contents.live_bytes -= size;
    }
}

fn purge_upto(contents: &mut Contents, upto: LogId<u64>) {
    let kept = contents.entries.split_off(&(upto.index + 1));
    for (_, size) in contents.entries.values() {
        contents.live_bytes -= size;
    }
    contents.entries = kept;
    contents.last_purged = Some(upto);
}

/// Hands the held writes to the disk in order, waiting for each snapshot they wait
/// for; ends once none is left (a later wait starts a new one).
async fn release_held(log: LogStore) {
    loop {
        let waiting_for = {
            let mut held = log.held.lock();
            loop {
                match held.queue.pop_front() {
                    None => return,
                    Some(HeldWrite::Write(write)) => {
                        // Errors reach the writes' waiters through their `done`.
                        let _ = log.to_disk(write);
                    }
                    Some(HeldWrite::UntilSnapshot(index)) if log.floor.covers(index) => {}
                    Some(HeldWrite::UntilSnapshot(index)) => {
                        held.queue.push_front(HeldWrite::UntilSnapshot(index));
                        break index;
                    }
                }
            }
        };
        if !log.floor.reached(waiting_for).await {
            let mut held = log.held.lock();
            held.refused = true;
            for write in std::mem::take(&mut held.queue) {
                if let HeldWrite::Write(write) = write {
                    write.refuse();
                }
            }
            return;
        }
    }
}

impl LogWrite {
    /// Drops the write unwritten, telling whoever waits for it.
    fn refuse(self) {
        let (LogWrite::Frames { done, .. } | LogWrite::Rewrite { done, .. }) = self;
        done.complete(&Err(io::Error::other(
            "the replica stopped before the snapshot this write waited for was installed",
        )));
    }
}

/// The writer thread: takes every waiting write, one `write`, one `fdatasync`.
fn write_loop(dir: PathBuf, mut file: File, receiver: mpsc::Receiver<LogWrite>) {
    let mut failure: Option<String> = None;
    while let Ok(first) = receiver.recv() {
        let mut pending = vec![first];
        pending.extend(receiver.try_iter());
        let mut buffer = Vec::new();
        let mut dones = Vec::with_capacity(pending.len());
        let mut result: io::Result<()> = Ok(());
        for write in pending {
            match write {
                LogWrite::Frames { bytes, done } => {
                    buffer.extend_from_slice(&bytes);
                    dones.push(done);
                }
                LogWrite::Rewrite { bytes, done } if failure.is_none() => {
                    // Everything before the rewrite is in its bytes already.
                    buffer.clear();
                    result = rewrite(&dir, &bytes).map(|new_file| file = new_file);
                    dones.push(done);
                }
                LogWrite::Rewrite { done, .. } => dones.push(done),
            }
        }
        if let Some(message) = &failure {
            result = Err(io::Error::other(message.clone()));
        } else if result.is_ok() {
            result = file.write_all(&buffer).and_then(|()| file.sync_data());
        }
        if let Err(error) = &result {
            // Data the kernel failed to write may be gone: never write again.
            tracing::error!(%error, "the replica log failed; the replica stops writing");
            failure.get_or_insert_with(|| error.to_string());
        }
        for done in dones {
            done.complete(&result);
        }
    }
}

/// One write on a simulated disk, as the writer thread would do it alone: the frames,
/// then one sync if someone waits for them; after a failure, never again.
#[cfg(feature = "simulation")]
fn write_simulated(disk: &crate::sim_disk::SimDisk, write: LogWrite) {
    let (result, done) = match write {
        LogWrite::Frames { bytes, done } => {
            let result = disk.write(&bytes).and_then(|()| match done {
                Done::Nothing => Ok(()),
                Done::Flushed(_) | Done::Reply(_) => disk.sync(),
            });
            (result, done)
        }
        LogWrite::Rewrite { bytes, done } => (disk.replace_log(&bytes), done),
    };
    if let Err(error) = &result {
        tracing::error!(%error, "the replica log failed; the replica stops writing");
        // Data the disk failed to write may be gone: never write again.
        disk.refuse_writes();
    }
    done.complete(&result);
}

fn rewrite(dir: &Path, bytes: &[u8]) -> io::Result<File> {
    let temporary = dir.join(format!("{LOG_FILE}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(LOG_FILE))?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(dir.join(LOG_FILE))
}

impl RaftLogReader<TallyRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TallyRaft>>, StorageError<u64>> {
        let contents = self.contents.lock();
        Ok(contents
            .entries
            .range(range)
            .map(|(_, (entry, _))| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TallyRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TallyRaft>, StorageError<u64>> {
        let contents = self.contents.lock();
        let last = contents
            .entries
            .values()
            .next_back()
            .map(|(entry, _)| *entry.get_log_id())
            .or(contents.last_purged);
        Ok(LogState {
            last_purged_log_id: contents.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, KIND_VOTE, &encode(vote)?);
        {
            let mut contents = self.contents.lock();
            contents.file_bytes += bytes.len() as u64;
        }
        self.write_durably(bytes).await?;
        self.contents.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.contents.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let Some(log_id) = committed else {
            return Ok(());
        };
        let mut contents = self.contents.lock();
        if contents.committed == committed {
            return Ok(());
        }
        contents.committed = committed;
        // Not synced by itself: a lower position read back after a crash is safe.
        let mut bytes = Vec::new();
        push_frame(&mut bytes, KIND_COMMITTED, &encode(&log_id)?);
        contents.file_bytes += bytes.len() as u64;
        self.send(LogWrite::Frames {
            bytes,
            done: Done::Nothing,
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.contents.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TallyRaft>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TallyRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut bytes = Vec::new();
        let mut contents = self.contents.lock();
        for entry in entries {
            let before = bytes.len();
            push_frame(&mut bytes, KIND_ENTRY, &encode(&entry)?);
            let size = (bytes.len() - before) as u64;
            contents.live_bytes += size;
            if let Some((_, old)) = contents.entries.insert(entry.log_id.index, (entry, size)) {
                contents.live_bytes -= old;
            }
        }
        contents.file_bytes += bytes.len() as u64;
        self.send(LogWrite::Frames {
            bytes,
            done: Done::Flushed(callback),
        })
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, KIND_TRUNCATE, &encode(&log_id.index)?);
        let mut contents = self.contents.lock();
        remove_from(&mut contents, log_id.index);
        contents.file_bytes += bytes.len() as u64;
        // Rides with the next sync: appends after it are ordered after it in the file.
        self.send(LogWrite::Frames {
            bytes,
            done: Done::Nothing,
        })
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, KIND_PURGE, &encode(&log_id)?);
        let mut contents = self.contents.lock();
        purge_upto(&mut contents, log_id);
        contents.file_bytes += bytes.len() as u64;
        self.send_after_snapshot(
            Some(log_id.index),
            LogWrite::Frames {
                bytes,
                done: Done::Nothing,
            },
        )?;
        self.rewrite_if_mostly_purged(&mut contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_and_inner_damage_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(LOG_FILE);
        let mut bytes = Vec::new();
        let vote = Vote::<u64>::new(3, 1);
        push_frame(
            &mut bytes,
            KIND_VOTE,
            &postcard::to_allocvec(&vote).expect("vote"),
        );
        let first = bytes.len();
        push_frame(
            &mut bytes,
            KIND_COMMITTED,
            &postcard::to_allocvec(&LogId::<u64>::default()).expect("id"),
        );
        std::fs::write(&path, &bytes[..bytes.len() - 2]).expect("write");
        let (contents, valid) = read_log(&path).expect("a torn tail is cut");
        assert_eq!(valid, first as u64);
        assert_eq!(contents.vote, Some(vote));

        // Opening the log cuts the tail and keeps its bytes.
        let store = LogStore::open(dir.path(), SnapshotFloor::new()).expect("opens");
        drop(store);
        assert_eq!(
            std::fs::metadata(&path).expect("log").len(),
            first as u64,
            "cut"
        );
        let kept = dir.path().join(format!("torn-replica-at-{first}.bin"));
        let kept = std::fs::read(kept).expect("the cut bytes are kept");
        assert_eq!(kept, &bytes[first..bytes.len() - 2]);

        let mut damaged = bytes.clone();
        damaged[FRAME_HEADER + 1] ^= 0x40;
        std::fs::write(&path, &damaged).expect("write");
        let error = read_log(&path).expect_err("damage inside is refused");
        assert!(error.contains("offset 0"), "{error}");
    }

    /// A purge past the durable snapshot, and what is written after it, reach the file
    /// only once the snapshot is in place; if none comes, never.
    #[tokio::test]
    async fn a_purge_waits_for_the_snapshot_that_holds_what_it_lets_go() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(LOG_FILE);
        let floor = SnapshotFloor::new();
        floor.raise(5);
        let mut log = LogStore::open(dir.path(), floor.clone()).expect("opens");
        let id = |index| LogId::new(openraft::CommittedLeaderId::new(1, 1), index);
        log.purge(id(5)).await.expect("purge");
        log.flush().await.expect("flush");
        let purged = |path: &Path| read_log(path).expect("reads").0.last_purged;
        assert_eq!(
            purged(&path),
            Some(id(5)),
            "a covered purge is written at once"
        );

        log.purge(id(9)).await.expect("purge");
        let vote = Vote::<u64>::new(2, 1);
        let mut saving = log.clone();
        let saved = tokio::spawn(async move { saving.save_vote(&vote).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !saved.is_finished(),
            "the vote after the purge waits with it"
        );
        let (on_disk, _) = read_log(&path).expect("reads");
        assert_eq!((on_disk.last_purged, on_disk.vote), (Some(id(5)), None));
        assert_eq!(log.last_purged_index(), Some(9), "purged in memory at once");

        floor.raise(9);
        saved
            .await
            .expect("joins")
            .expect("saved once the snapshot is in place");
        let (on_disk, _) = read_log(&path).expect("reads");
        assert_eq!(
            (on_disk.last_purged, on_disk.vote),
            (Some(id(9)), Some(vote))
        );

        log.purge(id(12)).await.expect("purge");
        let mut saving = log.clone();
        let saved = tokio::spawn(async move { saving.save_vote(&Vote::new(3, 1)).await });
        log.abandon_held();
        saved
            .await
            .expect("joins")
            .expect_err("refused: no snapshot will come");
        log.flush().await.expect_err("the log writes nothing more");
        floor.raise(12);
        log.purge(id(12)).await.expect("purge");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (on_disk, _) = read_log(&path).expect("reads");
        assert_eq!(
            (on_disk.last_purged, on_disk.vote),
            (Some(id(9)), Some(vote)),
            "nothing is written after an abandoned wait, a covered purge neither"
        );
    }
}
