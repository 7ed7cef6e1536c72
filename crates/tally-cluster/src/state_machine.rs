//! The replica's state machine: committed log entries applied to Tally's ledger state,
//! in log order, each batch stamped from the leader's clock reading the same way on
//! every replica; each group's change events handed to the replica's journal; the state
//! digest; snapshots to and from disk.
//!
//! Invariant: `applied.last_applied` is the position of the last entry whose events are
//! in `applied.state`, and `applied.digest` is the digest at that position.

use crate::group::{BatchRefusal, Group, GroupResults, batch_balances};
use crate::image_codec::{self, SnapshotHead};
use crate::snapshot_data::SnapshotData;
use crate::snapshot_floor::SnapshotFloor;
use crate::types::{TallyRaft, storage_error};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership,
};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_engine::clock::{add_expiry_instants, clear_stamp};
use tally_engine::{ChangeEventReader, ChangeJournal, EventResult};
use tally_state::StateMachine;
use tally_types::Batch;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The file holding the newest snapshot, replaced atomically.
pub(crate) const SNAPSHOT_FILE: &str = "replica.snapshot";

/// The ledger state of a replica and where in the replicated log it stands.
#[derive(Debug, Default)]
pub struct Applied {
    /// The ledger.
    pub state: StateMachine,
    /// The last entry applied.
    pub last_applied: Option<LogId<u64>>,
    /// The membership as of the last membership entry applied.
    pub membership: StoredMembership<u64, openraft::BasicNode>,
    /// The state digest at `last_applied`: a hash chained over every applied entry's
    /// position, every batch's stamp, every event's id and result, and every change's
    /// balances (`digest_changes`).
    pub digest: u64,
    /// Events applied since the log began.
    pub events_applied: u64,
}

impl Applied {
    /// The index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.last_applied.map_or(0, |id| id.index)
    }

    /// Applies one committed entry: a group's batches, a membership, or nothing.
    pub(crate) fn apply_entry(
        &mut self,
        entry: Entry<TallyRaft>,
        journal: Option<&ChangeJournal>,
    ) -> GroupResults {
        self.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => GroupResults::default(),
            EntryPayload::Normal(group) => self.apply_group(entry.log_id, &group, journal),
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership);
                GroupResults::default()
            }
        }
    }

    /// Applies one committed group at `log_id`; answers each batch, with balances for
    /// the batches that asked (from the group's change events). The group's change
    /// events are always captured (the digest chains them) and go to `journal` when
    /// there is one.
    fn apply_group(
        &mut self,
        log_id: LogId<u64>,
        group: &Group,
        journal: Option<&ChangeJournal>,
    ) -> GroupResults {
        let stamps = group_stamps(&self.state, group);
        let refused: Vec<bool> = stamps.iter().map(Option::is_none).collect();
        let stamped: Vec<(u64, &Batch)> = stamps
            .into_iter()
            .zip(group.batches.iter())
            .filter_map(|(stamp, batch)| Some((stamp?, batch)))
            .collect();
        // Always: the digest chains every change, whether or not events are kept.
        self.state.set_change_capture(true);
        let codes = self.state.apply_run(&stamped);
        let changes = match journal {
            Some(journal) => self.state.take_changes_into(journal.spare()),
            None => self.state.take_changes(),
        };
        let any_balances = group.wants_any_balances();
        let mut digest = xxh3_64_with_seed(&log_id.index.to_le_bytes(), self.digest);
        let mut applied = stamped.iter().zip(codes);
        let mut batches = Vec::with_capacity(group.batches.len());
        let mut balances = Vec::new();
        for (index, was_refused) in refused.into_iter().enumerate() {
            if any_balances {
                balances.push(Vec::new());
            }
            if was_refused {
                digest = xxh3_64_with_seed(b"refused", digest);
                batches.push(Err(BatchRefusal::TimeOutOfRange {
                    now: group.proposed_ns,
                }));
                continue;
            }
            let Some(((stamp, batch), codes)) = applied.next() else {
                unreachable!("one result list per stamped batch");
            };
            digest = digest_batch(digest, *stamp, batch, &codes);
            self.events_applied += batch.len() as u64;
            let imported = batch.is_imported().then_some(*batch);
            let results = EventResult::for_batch(*stamp, &codes, imported);
            if group.wants_balances(index) {
                balances[index] = batch_balances(&changes, &results);
            }
            batches.push(Ok(results));
        }
        self.digest = digest_changes(digest, &changes);
        if let Some(journal) = journal {
            journal.send(changes, self.state.last_timestamp());
        }
        GroupResults { batches, balances }
    }
}

/// The stamp of each batch of `group` applied after `state` (`None`: refused, its
/// stamps past u64 or the leader's reading past `NOW_NS_MAX`). Each is stamped from
/// the group's reading as a single node stamps (`tally_engine::clock::Stamper`): clear
/// of the instants at which the state's waiting pending transfers, and those of the
/// group's batches stamped before it, expire. Both follow from the log alone, so every
/// replica stamps alike.
pub fn group_stamps(state: &StateMachine, group: &Group) -> Vec<Option<u64>> {
    let mut last = state.last_timestamp();
    let mut group_instants = BTreeSet::new();
    let mut stamps = Vec::with_capacity(group.batches.len());
    for batch in group.batches.iter() {
        let latest_in = |from: u64, to: u64| {
            let in_group = group_instants.range(from..=to).next_back().copied();
            state.expiry_instant_in(from, to).max(in_group)
        };
        let stamp = clear_stamp(group.proposed_ns, last, batch, latest_in)
            .filter(|_| group.proposed_ns <= tally_types::NOW_NS_MAX);
        if let Some(stamp) = stamp {
            last = stamp + batch.len().saturating_sub(1) as u64;
            add_expiry_instants(&mut group_instants, stamp, batch);
        }
        stamps.push(stamp);
    }
    stamps
}

/// Chains a batch into the digest: its stamp, then each event's id and result code.
fn digest_batch(seed: u64, stamp: u64, batch: &Batch, codes: &[tally_types::ResultCode]) -> u64 {
    let mut bytes = Vec::with_capacity(8 + batch.len() * 17);
    bytes.extend_from_slice(&stamp.to_le_bytes());
    let ids: Box<dyn Iterator<Item = u128> + '_> = match batch {
        Batch::CreateAccounts(accounts) => Box::new(accounts.iter().map(|a| a.id)),
        Batch::CreateTransfers(transfers) => Box::new(transfers.iter().map(|t| t.id)),
    };
    for (id, code) in ids.zip(codes) {
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.push(*code as u8);
    }
    xxh3_64_with_seed(&bytes, seed)
}

/// Chains a group's changes into the digest: each one's timestamp, kind, transfer id
/// and amount, and both accounts' ids and balances right after it. With the batches'
/// ids and result codes before it, equal digests at an equal log position mean equal
/// results and equal balances, every change of them, not only an equal log.
fn digest_changes(seed: u64, changes: &[tally_types::ChangeEvent]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    for change in changes {
        hasher.update(&change.timestamp.to_le_bytes());
        hasher.update(&[change.kind.code()]);
        hasher.update(&change.transfer.id.to_le_bytes());
        hasher.update(&change.transfer.amount.to_le_bytes());
        for account in [&change.debit_account, &change.credit_account] {
            for value in [
                account.id,
                account.debits_pending,
                account.debits_posted,
                account.credits_pending,
                account.credits_posted,
            ] {
                hasher.update(&value.to_le_bytes());
            }
        }
    }
    hasher.digest()
}

type Meta = SnapshotMeta<u64, openraft::BasicNode>;

/// A snapshot's metadata and the state it holds (seconds for a large ledger: run it off
/// the async threads).
fn decode_snapshot(input: impl std::io::Read, len: u64) -> Result<(Meta, Applied), String> {
    let (head, loaded) = image_codec::decode(input, len)?;
    let meta: Meta = postcard::from_bytes(&head.meta).map_err(|e| e.to_string())?;
    let state = StateMachine::from_loaded_image_in_parts(loaded, 1).map_err(|e| e.to_string())?;
    let applied = Applied {
        state,
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        digest: head.digest,
        events_applied: head.events_applied,
    };
    Ok((meta, applied))
}

/// Where the snapshot is kept.
#[derive(Debug, Clone)]
enum SnapshotPlace {
    /// [`SNAPSHOT_FILE`] in this directory.
    Dir(PathBuf),
    /// A simulated disk (feature `simulation`).
    #[cfg(feature = "simulation")]
    Simulated(crate::sim_disk::SimDisk),
}

/// The state machine openraft drives: the shared state, and the snapshot on disk.
#[derive(Debug, Clone)]
pub struct StateStore {
    applied: Arc<RwLock<Applied>>,
    place: SnapshotPlace,
    /// The newest snapshot's metadata, shared with the snapshot builder (a clone): the
    /// one it builds is the one the leader sends. Its bytes are in `place` only: a
    /// snapshot is as large as the ledger, and is read from disk when it is sent.
    current: Arc<Mutex<Option<Meta>>>,
    /// Held while a snapshot is written (on blocking threads): one writer at a time.
    writing: Arc<Mutex<()>>,
    /// The change-event journal (`DIR/events`), when change events are on.
    events: Option<Arc<ChangeJournal>>,
    /// Raised to each snapshot made current: the log's purges wait for it.
    floor: SnapshotFloor,
}

impl StateStore {
    /// Opens the state of the replica in `dir`: its newest snapshot, or empty; and,
    /// with `events_retention_bytes`, its change-event journal in `DIR/events`, keeping
    /// that many bytes of events. Raises `floor` to each snapshot it makes current.
    pub fn open(
        dir: &Path,
        events_retention_bytes: Option<u64>,
        floor: SnapshotFloor,
    ) -> Result<StateStore, String> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut store = StateStore {
            applied: Arc::new(RwLock::new(Applied::default())),
            place: SnapshotPlace::Dir(dir.to_path_buf()),
            current: Arc::default(),
            writing: Arc::default(),
            events: None,
            floor,
        };
        // Read as it is decoded: the file is as large as the ledger.
        match open_with_len(&path) {
            Ok((file, len)) => {
                let meta = store
                    .load(file, len)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                store.make_loaded_current(meta);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("{}: {error}", path.display())),
        }
        if let Some(retention_bytes) = events_retention_bytes {
            let events_dir = tally_engine::events_dir(dir);
            let state = &store.applied.read().state;
            let journal = ChangeJournal::open(&events_dir, state, retention_bytes)
                .map_err(|e| format!("the change-event journal: {e}"))?;
            store.events = Some(Arc::new(journal));
        }
        Ok(store)
    }

    /// The reading side of the change-event journal, when change events are on.
    pub fn change_event_reader(&self) -> Option<ChangeEventReader> {
        self.events.as_ref().map(|journal| journal.reader())
    }

    /// Opens the state kept on a simulated disk (feature `simulation`): its snapshot,
    /// or empty.
    #[cfg(feature = "simulation")]
    pub fn open_simulated(
        disk: &crate::sim_disk::SimDisk,
        floor: SnapshotFloor,
    ) -> Result<StateStore, String> {
        let mut store = StateStore {
            applied: Arc::new(RwLock::new(Applied::default())),
            place: SnapshotPlace::Simulated(disk.clone()),
            current: Arc::default(),
            writing: Arc::default(),
            events: None,
            floor,
        };
        if let Some(bytes) = disk.snapshot() {
            let meta = store
                .load(bytes.as_slice(), bytes.len() as u64)
                .map_err(|e| format!("the simulated snapshot: {e}"))?;
            store.make_loaded_current(meta);
        }
        Ok(store)
    }

    /// The state, shared with the readers.
    pub fn applied(&self) -> Arc<RwLock<Applied>> {
        Arc::clone(&self.applied)
    }

    /// Makes the snapshot just loaded from disk the current one.
    fn make_loaded_current(&self, meta: Meta) {
        self.raise_floor(&meta);
        *self.current.lock() = Some(meta);
    }

    /// Tells the log that the snapshot at `meta` is durably in place.
    fn raise_floor(&self, meta: &Meta) {
        if let Some(last) = meta.last_log_id {
            self.floor.raise(last.index);
        }
    }

    /// The last log index the state holds and the log's purged point must not pass:
    /// the snapshot's it was loaded from (none for an empty state).
    pub(crate) fn last_applied_index(&self) -> Option<u64> {
        self.applied.read().last_applied.map(|id| id.index)
    }

    /// Replaces the state with a snapshot's.
    fn load(&mut self, input: impl std::io::Read, len: u64) -> Result<Meta, String> {
        let (meta, applied) = decode_snapshot(input, len)?;
        *self.applied.write() = applied;
        Ok(meta)
    }

    /// Saves a snapshot durably, then makes it the current one unless the current one
    /// is newer, and returns it to be read (to send it). `write` puts its bytes out:
    /// into the snapshot file as it goes, so that no copy of the whole is made in
    /// memory on the way.
    fn save(
        &self,
        meta: Meta,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> std::io::Result<SnapshotData> {
        let _writing = self.writing.lock();
        let data = match &self.place {
            SnapshotPlace::Dir(dir) => {
                let temporary = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
                let mut out = std::io::BufWriter::with_capacity(
                    SNAPSHOT_WRITE_BUFFER_BYTES,
                    std::fs::File::create(&temporary)?,
                );
                write(&mut out)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                // Opened before the rename: it reads this snapshot even once a newer one
                // replaces the file.
                let sending = std::fs::File::open(&temporary)?;
                self.make_current(dir, meta, &temporary)?;
                SnapshotData::File(tokio::fs::File::from_std(sending))
            }
            #[cfg(feature = "simulation")]
            SnapshotPlace::Simulated(disk) => {
                let mut bytes = Vec::new();
                write(&mut bytes)?;
                let mut current = self.current.lock();
                if supersedes(&meta, current.as_ref()) {
                    disk.save_snapshot(Arc::new(bytes.clone()))?;
                    self.raise_floor(&meta);
                    *current = Some(meta);
                }
                SnapshotData::Bytes(std::io::Cursor::new(bytes))
            }
        };
        Ok(data)
    }

    /// Makes the synced snapshot file `from` (in `dir`) the current snapshot, at `meta`,
    /// unless the current one is newer: then `from` is removed.
    fn make_current(&self, dir: &Path, meta: Meta, from: &Path) -> std::io::Result<()> {
        let mut current = self.current.lock();
        if supersedes(&meta, current.as_ref()) {
            std::fs::rename(from, dir.join(SNAPSHOT_FILE))?;
            std::fs::File::open(dir)?.sync_all()?;
            self.raise_floor(&meta);
            *current = Some(meta);
            Ok(())
        } else {
            std::fs::remove_file(from)
        }
    }

    /// A snapshot received whole, its file's writes done and synced.
    async fn received(&self, snapshot: SnapshotData) -> std::io::Result<Received> {
        match (snapshot, &self.place) {
            (SnapshotData::File(mut file), SnapshotPlace::Dir(dir)) => {
                use tokio::io::AsyncWriteExt;
                file.flush().await?;
                file.sync_all().await?;
                Ok(Received::File(dir.clone()))
            }
            (snapshot, _) => Ok(Received::Bytes(snapshot.into_bytes().await?)),
        }
    }

    /// Installs a received snapshot: decodes it as it is read (seconds per GiB: on a
    /// blocking thread), checks it against `meta`, replaces the state, and keeps it as
    /// the current snapshot.
    fn install_received(&self, meta: &Meta, received: Received) -> Result<(), String> {
        let (loaded, applied) = match &received {
            Received::File(dir) => {
                let (file, len) = open_with_len(&dir.join(RECEIVING_FILE))
                    .map_err(|e| format!("opening the received snapshot: {e}"))?;
                decode_snapshot(file, len)?
            }
            Received::Bytes(bytes) => decode_snapshot(bytes.as_slice(), bytes.len() as u64)?,
        };
        if loaded.last_log_id != meta.last_log_id {
            return Err("the snapshot's contents do not match its metadata".into());
        }
        if let Some(journal) = &self.events {
            // The state jumps ahead without the events between: the journal says so.
            journal.jumped_to(&applied.state);
        }
        *self.applied.write() = applied;
        let kept = match received {
            Received::File(dir) => self.make_current(&dir, meta.clone(), &dir.join(RECEIVING_FILE)),
            Received::Bytes(bytes) => self
                .save(meta.clone(), |out| out.write_all(&bytes))
                .map(drop),
        };
        kept.map_err(|e| format!("writing the snapshot: {e}"))
    }

    /// Installs a snapshot received from the leader (see `install_received`).
    async fn install(&self, meta: &Meta, snapshot: SnapshotData) -> Result<(), String> {
        let received = self
            .received(snapshot)
            .await
            .map_err(|e| format!("receiving it: {e}"))?;
        #[cfg(feature = "simulation")]
        if let SnapshotPlace::Simulated(disk) = &self.place
            && let Some(delay) = disk.begin_install()
        {
            tokio::time::sleep(delay).await;
        }
        let store = self.clone();
        let installing = meta.clone();
        tokio::task::spawn_blocking(move || store.install_received(&installing, received))
            .await
            .map_err(|e| e.to_string())?
    }

    /// The current snapshot, to send: read from its file (or the simulated disk).
    fn current_snapshot(&self) -> std::io::Result<Option<Snapshot<TallyRaft>>> {
        let current = self.current.lock();
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let data = match &self.place {
            // Opened under the lock, so the file is the one `meta` describes.
            SnapshotPlace::Dir(dir) => SnapshotData::File(tokio::fs::File::from_std(
                std::fs::File::open(dir.join(SNAPSHOT_FILE))?,
            )),
            #[cfg(feature = "simulation")]
            SnapshotPlace::Simulated(disk) => {
                let bytes = disk
                    .snapshot()
                    .ok_or_else(|| std::io::Error::other("the simulated snapshot is gone"))?;
                SnapshotData::Bytes(std::io::Cursor::new(bytes.as_ref().clone()))
            }
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

/// How many times [`retry_passing`] tries, the waits between doubling from 10 ms
/// (2.5 s in all).
const PASSING_ERROR_TRIES: u32 = 9;

/// Runs `attempt` until it succeeds, fails for good, or has failed
/// [`PASSING_ERROR_TRIES`] times for a reason that passes: the process or the system
/// out of file descriptors, memory short, a call interrupted.
async fn retry_passing<T>(mut attempt: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut wait = std::time::Duration::from_millis(10);
    let mut tried = 1;
    loop {
        match attempt() {
            Err(error) if tried < PASSING_ERROR_TRIES && passes(&error) => {
                tracing::warn!(%error, tried, "opening the snapshot to send it; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                tried += 1;
            }
            result => return result,
        }
    }
}

/// Whether `error` may not recur if the call is made again a little later.
fn passes(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        || matches!(
            error.kind(),
            ErrorKind::Interrupted | ErrorKind::OutOfMemory | ErrorKind::WouldBlock
        )
}

/// Whether a snapshot at `meta` replaces the `current` one: a snapshot built from the
/// state before a newer one was installed must not put that one's place back behind
/// the log it let go.
fn supersedes(meta: &Meta, current: Option<&Meta>) -> bool {
    current.is_none_or(|current| meta.last_log_id >= current.last_log_id)
}

/// A snapshot file opened to be decoded, with its length (what the decoder expects).
fn open_with_len(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// Removes what a snapshot being written or received when the process stopped left in
/// `dir`: neither is a snapshot until renamed to [`SNAPSHOT_FILE`].
pub(crate) fn remove_unfinished_snapshots(dir: &Path) -> Result<(), String> {
    for name in [format!("{SNAPSHOT_FILE}.tmp"), RECEIVING_FILE.to_string()] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed an unfinished snapshot"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("{}: {error}", path.display())),
        }
    }
    Ok(())
}

/// A snapshot received from the leader, before it is installed.
enum Received {
    /// In [`RECEIVING_FILE`] of this directory.
    File(PathBuf),
    /// In memory (a simulated disk).
    Bytes(Vec<u8>),
}

/// The file a snapshot from the leader is received into, renamed to [`SNAPSHOT_FILE`]
/// once installed.
const RECEIVING_FILE: &str = "replica.snapshot.receiving";

/// The buffer a snapshot is written through.
const SNAPSHOT_WRITE_BUFFER_BYTES: usize = 1 << 20;

impl RaftSnapshotBuilder<TallyRaft> for StateStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TallyRaft>, StorageError<u64>> {
        // Under the lock only a frozen copy (chunk pointers, no data) is taken: the image
        // and its bytes are made on a blocking thread while applying goes on.
        let (meta, head, frozen) = {
            let applied = self.applied.read();
            let last = applied.last_applied;
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: applied.membership.clone(),
                snapshot_id: format!(
                    "{}-{}-{:016x}",
                    last.map_or(0, |id| id.leader_id.term),
                    last.map_or(0, |id| id.index),
                    applied.digest
                ),
            };
            let head = SnapshotHead {
                meta: postcard::to_allocvec(&meta).map_err(|e| storage_error(e.to_string()))?,
                digest: applied.digest,
                events_applied: applied.events_applied,
            };
            (meta, head, applied.state.freeze())
        };
        let store = self.clone();
        let saving = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
            // The events of every record in the frozen state were sent before it was
            // taken: on disk before the snapshot, they are never needed from the log
            // it retires. A journal that failed has told its readers; a later open
            // finds the events missing and says so to whoever asks for them.
            if let Some(journal) = &store.events {
                let _ = journal.sync();
            }
            store.save(saving, |out| image_codec::encode_to(&head, &frozen, out))
        })
        .await
        .map_err(|e| storage_error(format!("building the snapshot: {e}")))?
        .map_err(|e| storage_error(format!("writing the snapshot: {e}")))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TallyRaft> for StateStore {
    type SnapshotBuilder = StateStore;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let applied = self.applied.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupResults>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TallyRaft>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut applied = self.applied.write();
        let journal = self.events.as_deref();
        let answers = entries
            .into_iter()
            .map(|entry| applied.apply_entry(entry, journal))
            .collect();
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> StateStore {
        self.clone()
    }

    /// A snapshot from the leader is received into a file (`replica.snapshot.receiving`),
    /// not memory.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<u64>> {
        let data = match &self.place {
            SnapshotPlace::Dir(dir) => {
                let path = dir.join(RECEIVING_FILE);
                // A new file, not the old one truncated: a write still queued by an
                // abandoned earlier stream lands in the old one, not in this one.
                match tokio::fs::remove_file(&path).await {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(storage_error(format!("receiving a snapshot: {error}")));
                    }
                    _ => {}
                }
                let file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| storage_error(format!("receiving a snapshot: {e}")))?;
                SnapshotData::receiving_into(file)
            }
            #[cfg(feature = "simulation")]
            SnapshotPlace::Simulated(_) => SnapshotData::receiving(),
        };
        Ok(Box::new(data))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<u64>> {
        if let Err(error) = self.install(meta, *snapshot).await {
            // The log's purge of what the snapshot covers waits for it: never written.
            self.floor.abandon();
            return Err(storage_error(format!("installing a snapshot: {error}")));
        }
        tracing::info!(last_log_id = ?meta.last_log_id, "installed the leader's snapshot");
        Ok(())
    }

    /// An error here stops the replica's Raft: a file that could not be opened for a
    /// passing reason (no file descriptor left) is tried again for a while first.
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TallyRaft>>, StorageError<u64>> {
        retry_passing(|| self.current_snapshot())
            .await
            .map_err(|e| storage_error(format!("reading the snapshot: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tally_testkit::{TEST_LEDGER, account, transfer};
    use tally_types::{AccountFlags, ResultCode, TransferFlags};

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    #[test]
    fn a_snapshot_older_than_the_current_one_does_not_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), None, SnapshotFloor::new()).unwrap();
        let meta = |index| Meta {
            last_log_id: Some(log_id(index)),
            ..Meta::default()
        };
        store.save(meta(5), |out| out.write_all(b"newer")).unwrap();
        store.save(meta(3), |out| out.write_all(b"older")).unwrap();
        let file = dir.path().join(SNAPSHOT_FILE);
        assert_eq!(std::fs::read(file).unwrap(), b"newer");
        let current = store.current.lock().clone().unwrap();
        assert_eq!(current.last_log_id, Some(log_id(5)));
        assert!(!dir.path().join(format!("{SNAPSHOT_FILE}.tmp")).exists());
    }

    #[test]
    fn unfinished_snapshots_are_removed_and_the_snapshot_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = [SNAPSHOT_FILE, "replica.snapshot.tmp", RECEIVING_FILE];
        for name in files {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        remove_unfinished_snapshots(dir.path()).unwrap();
        remove_unfinished_snapshots(dir.path()).unwrap();
        let kept = |name: &str| dir.path().join(name).exists();
        assert_eq!(files.map(kept), [true, false, false]);
    }

    /// A batch whose stamps would cover a pending transfer's expiry instant is stamped
    /// just after it, as a single node stamps it: the expiry runs first, at its exact
    /// instant, and a post in that batch finds the transfer expired.
    #[test]
    fn batches_are_stamped_clear_of_expiry_instants() {
        let mut applied = Applied::default();
        let start = 1_000_000_000_000;
        let mut pending = transfer(10, 1, 2, 5);
        pending.flags = TransferFlags::PENDING;
        pending.timeout = 1;
        let setup = Group::new(
            start,
            vec![
                Batch::CreateAccounts(vec![
                    account(1, TEST_LEDGER, AccountFlags::empty()),
                    account(2, TEST_LEDGER, AccountFlags::empty()),
                ]),
                Batch::CreateTransfers(vec![pending]),
            ],
        );
        let results = applied.apply_group(log_id(1), &setup, None);
        let pending_at = results.batches[1].as_ref().unwrap()[0].timestamp;
        assert_eq!(pending_at, start + 2);
        let expiry = pending_at + 1_000_000_000;

        let mut post = transfer(11, 0, 0, 0);
        post.flags = TransferFlags::POST_PENDING_TRANSFER;
        post.pending_id = 10;
        post.ledger = 0;
        post.code = 0;
        let pay = transfer(12, 1, 2, 1);
        // Requested one nanosecond before the instant: its two stamps would cover it.
        let straddling = Group::new(expiry - 1, vec![Batch::CreateTransfers(vec![post, pay])]);
        let results = applied.apply_group(log_id(2), &straddling, None);
        let results = results.batches[0].as_ref().unwrap();
        assert_eq!(results[0].code, ResultCode::PendingTransferExpired);
        assert_eq!(results[1].code, ResultCode::Ok);
        assert_eq!(
            results[1].timestamp,
            expiry + 2,
            "moved just past the instant"
        );
    }

    /// Two replicas at the same log position and digest whose balances differ (here
    /// forced) part digests at the next write, though its ids, stamps and result codes
    /// are equal: the digest covers the state, not only the log.
    #[test]
    fn the_digest_tells_apart_equal_results_over_different_balances() {
        let start = 1_000_000_000_000;
        let accounts = Group::new(
            start,
            vec![Batch::CreateAccounts(vec![
                account(1, TEST_LEDGER, AccountFlags::empty()),
                account(2, TEST_LEDGER, AccountFlags::empty()),
            ])],
        );
        let paid = |amount| {
            let batch = Batch::CreateTransfers(vec![transfer(10, 1, 2, amount)]);
            Group::new(start + 10, vec![batch])
        };
        let (mut one, mut other) = (Applied::default(), Applied::default());
        one.apply_group(log_id(1), &accounts, None);
        other.apply_group(log_id(1), &accounts, None);
        one.apply_group(log_id(2), &paid(5), None);
        other.apply_group(log_id(2), &paid(7), None);
        other.digest = one.digest;

        let next = Group::new(
            start + 20,
            vec![Batch::CreateTransfers(vec![transfer(11, 1, 2, 1)])],
        );
        let answered = one.apply_group(log_id(3), &next, None);
        assert_eq!(
            answered.batches,
            other.apply_group(log_id(3), &next, None).batches
        );
        assert_ne!(one.digest, other.digest);
    }

    /// Opening the snapshot to send it is tried again while descriptors are short, and
    /// no longer than that; other errors are not tried again.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_open_is_tried_again_only_for_passing_errors() {
        let out_of_descriptors = || std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut tries = 0;
        let opened = retry_passing(|| {
            tries += 1;
            if tries < 3 {
                Err(out_of_descriptors())
            } else {
                Ok(tries)
            }
        })
        .await;
        assert_eq!(opened.unwrap(), 3);

        let mut tries = 0;
        let gone = retry_passing(|| -> std::io::Result<()> {
            tries += 1;
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        })
        .await;
        assert_eq!((gone.is_err(), tries), (true, 1));

        let mut tries = 0;
        let started = tokio::time::Instant::now();
        let never = retry_passing(|| -> std::io::Result<()> {
            tries += 1;
            Err(out_of_descriptors())
        })
        .await;
        assert_eq!(never.unwrap_err().raw_os_error(), Some(libc::EMFILE));
        assert_eq!(tries, PASSING_ERROR_TRIES);
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(2_550));
    }
}
