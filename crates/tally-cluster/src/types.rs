//! The Raft type configuration: what Tally's replicated log carries and answers.

use crate::group::{Group, GroupResults};
use openraft::{AnyError, StorageError, StorageIOError};

openraft::declare_raft_types!(
    /// Tally's Raft: entries carry [`Group`]s, applying one answers [`GroupResults`];
    /// replicas are numbered by `u64` and known by their peer address.
    pub TallyRaft:
        D = Group,
        R = GroupResults,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TallyRaft>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica id.
pub type ReplicaId = u64;

/// The openraft handle of a replica.
pub type Raft = openraft::Raft<TallyRaft>;

/// A storage failure, as openraft wants it.
pub(crate) fn storage_error(message: String) -> StorageError<u64> {
    StorageIOError::write(AnyError::error(message)).into()
}
