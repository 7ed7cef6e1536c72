//! A replica's directory read back without running the replica, for `tally verify`,
//! `tally accounts` and `tally transfers`: its snapshot, then the committed entries of
//! its log after it, applied as the replica applies them, with the state digest
//! chained over them, so that replicas stopped at the same position can be compared.
//! Nothing in the directory is changed.

use crate::log_store::{LOG_FILE, read_log};
use crate::snapshot_floor::SnapshotFloor;
use crate::state_machine::{Applied, SNAPSHOT_FILE, StateStore};
use openraft::LogId;
use std::path::Path;

/// A position in the replicated log: an entry's index and its leader's term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The entry's index.
    pub index: u64,
    /// The term of the leader that wrote it.
    pub term: u64,
}

impl Position {
    fn of(id: Option<LogId<u64>>) -> Option<Position> {
        id.map(|id| Position {
            index: id.index,
            term: id.leader_id.term,
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (term {})", self.index, self.term)
    }
}

/// What a replica's directory holds, read back.
#[derive(Debug)]
pub struct ReplicaDir {
    /// The state at its last applied entry, with its digest and membership.
    pub applied: Applied,
    /// Where the snapshot stands, if the directory holds one.
    pub snapshot: Option<Position>,
    /// The last commit the log records. After a crash it may be older than the
    /// cluster's: the record is not synced on its own, so entries after it may be
    /// committed too.
    pub committed: Option<Position>,
    /// The first and last index of the entries the log holds after its purged prefix.
    pub entries: Option<(u64, u64)>,
    /// Entries after the recorded commit and the snapshot: not applied, since a new
    /// leader may still replace them.
    pub entries_past_commit: u64,
    /// Bytes at the end of the log that do not check: a write cut short by a crash,
    /// never acknowledged, or damage to the last frame. The replica cuts them at its
    /// next start and keeps a copy.
    pub torn_tail_bytes: u64,
}

impl ReplicaDir {
    /// Where the state stands: its last applied entry.
    pub fn applied_at(&self) -> Option<Position> {
        Position::of(self.applied.last_applied)
    }
}

/// Whether `dir` holds a cluster replica (its log or its snapshot).
pub fn is_replica_dir(dir: &Path) -> bool {
    dir.join(LOG_FILE).exists() || dir.join(SNAPSHOT_FILE).exists()
}

/// Reads the replica's directory `dir` (which the caller has locked): its snapshot,
/// then its log's entries after it up to the recorded commit, applied in order.
///
/// # Errors
///
/// `dir` holds no replica; the snapshot does not decode; the log is damaged before its
/// last frame; or the log lacks an entry between the snapshot and the commit, or
/// holds another term at the commit's index.
pub fn read_replica_dir(dir: &Path) -> Result<ReplicaDir, String> {
    let log_path = dir.join(LOG_FILE);
    if !is_replica_dir(dir) {
        return Err(format!("{}: no replica here", dir.display()));
    }
    let mut applied = {
        let store = StateStore::open(dir, None, SnapshotFloor::new())?;
        std::mem::take(&mut *store.applied().write())
    };
    let snapshot = applied.last_applied;
    let (contents, valid_bytes) = read_log(&log_path)?;
    let file_bytes = match std::fs::metadata(&log_path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(format!("{}: {error}", log_path.display())),
    };
    let committed = contents.committed;
    let commit_index = committed.map(|id| id.index);
    let entries = contents
        .entries
        .first_key_value()
        .zip(contents.entries.last_key_value())
        .map(|((&first, _), (&last, _))| (first, last));
    if let Some(committed) = committed
        && let Some((entry, _)) = contents.entries.get(&committed.index)
        && entry.log_id != committed
    {
        return Err(format!(
            "{}: the entry at the recorded commit (index {}) is of term {}, the commit's \
             is {}",
            log_path.display(),
            committed.index,
            entry.log_id.leader_id.term,
            committed.leader_id.term
        ));
    }
    let mut entries_past_commit = 0;
    for (index, (entry, _)) in contents.entries {
        let last = applied.last_applied.map(|id| id.index);
        if Some(index) <= last {
            continue; // In the snapshot.
        }
        if Some(index) > commit_index {
            entries_past_commit += 1;
            continue;
        }
        let expected = last.map_or(0, |last| last + 1);
        if index != expected {
            return Err(format!(
                "{}: entry {expected} is missing after {}, before the recorded commit",
                log_path.display(),
                reached(last)
            ));
        }
        applied.apply_entry(entry, None);
    }
    let last = applied.last_applied.map(|id| id.index);
    if let Some(commit) = commit_index
        && last < Some(commit)
    {
        return Err(format!(
            "{}: the entries end at {}, before the recorded commit {commit}",
            log_path.display(),
            reached(last)
        ));
    }
    Ok(ReplicaDir {
        applied,
        snapshot: Position::of(snapshot),
        committed: Position::of(committed),
        entries,
        entries_past_commit,
        torn_tail_bytes: file_bytes.saturating_sub(valid_bytes),
    })
}

/// Where applying has got to, in words: an entry's index, or the start.
fn reached(last: Option<u64>) -> String {
    last.map_or("the start".to_string(), |index| format!("entry {index}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::{KIND_COMMITTED, KIND_ENTRY, push_frame};
    use crate::types::TallyRaft;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    /// A replica's directory whose log holds blank entries at `indexes` (term 1) and
    /// records `committed` as its commit.
    fn replica_with(indexes: &[u64], committed: LogId<u64>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = Vec::new();
        for &index in indexes {
            let entry = Entry::<TallyRaft> {
                log_id: log_id(1, index),
                payload: EntryPayload::Blank,
            };
            push_frame(
                &mut bytes,
                KIND_ENTRY,
                &postcard::to_allocvec(&entry).expect("entry"),
            );
        }
        let commit = postcard::to_allocvec(&committed).expect("commit");
        push_frame(&mut bytes, KIND_COMMITTED, &commit);
        std::fs::write(dir.path().join(LOG_FILE), bytes).expect("write");
        dir
    }

    #[test]
    fn every_entry_up_to_the_recorded_commit_is_applied_and_none_after() {
        let dir = replica_with(&[0, 1, 2, 3, 4], log_id(1, 3));
        let read = read_replica_dir(dir.path()).expect("reads");
        assert_eq!(read.applied_at(), Some(Position { index: 3, term: 1 }));
        assert_eq!(read.entries, Some((0, 4)));
        assert_eq!(read.entries_past_commit, 1);
        assert_eq!(read.snapshot, None);
        assert_eq!(read.torn_tail_bytes, 0);
    }

    /// After a crash the recorded commit may trail the snapshot: the entries the
    /// snapshot holds are neither applied again nor counted as past the commit.
    #[tokio::test]
    async fn entries_in_the_snapshot_are_not_counted_past_an_older_commit() {
        use openraft::RaftSnapshotBuilder;
        let dir = replica_with(&[0, 1, 2, 3, 4, 5], log_id(1, 2));
        let mut store = StateStore::open(dir.path(), None, SnapshotFloor::new()).expect("opens");
        store.applied().write().last_applied = Some(log_id(1, 3));
        store.build_snapshot().await.expect("a snapshot at entry 3");
        let read = read_replica_dir(dir.path()).expect("reads");
        assert_eq!(read.snapshot, Some(Position { index: 3, term: 1 }));
        assert_eq!(read.applied_at(), read.snapshot);
        assert_eq!(read.committed, Some(Position { index: 2, term: 1 }));
        assert_eq!(read.entries_past_commit, 2, "entries 4 and 5");
    }

    #[test]
    fn a_log_that_cannot_reach_its_recorded_commit_is_refused() {
        let gap = replica_with(&[0, 1, 3, 4], log_id(1, 4));
        let error = read_replica_dir(gap.path()).expect_err("a gap");
        assert!(
            error.contains("entry 2 is missing after entry 1"),
            "{error}"
        );
        let short = replica_with(&[0, 1, 2], log_id(1, 4));
        let error = read_replica_dir(short.path()).expect_err("ends early");
        assert!(
            error.contains("end at entry 2, before the recorded commit 4"),
            "{error}"
        );
        let other_term = replica_with(&[0, 1, 2], log_id(2, 2));
        let error = read_replica_dir(other_term.path()).expect_err("another term");
        assert!(error.contains("is of term 1, the commit's is 2"), "{error}");
        let empty = tempfile::tempdir().expect("dir");
        let error = read_replica_dir(empty.path()).expect_err("no replica");
        assert!(error.contains("no replica here"), "{error}");
    }
}
