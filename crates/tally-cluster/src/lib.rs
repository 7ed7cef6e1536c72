//! Tally replicated on Raft: 3 or 5 replicas that behave as one ledger.
//!
//! Consensus is openraft's. What it replicates is what Tally's own log carries: groups
//! of batches, each group carrying the leader's clock reading so that every replica
//! stamps and applies the very same events. A group commits once a majority of replicas
//! has it synced to disk; every replica applies committed groups in log order to its
//! in-memory ledger, and chains a state digest over them that replicas compare.
//!
//! - [`Ledger`]: the ledger a service embeds, opened from a single node's config or a
//!   [`ClusterConfig`]: the same calls reach a single node or a replica.
//! - [`Replica`]: the handle: open, submit, linearizable reads, status, membership.
//! - [`ClusterConfig`]: who this replica is, its peers, its data directory.
//! - The replicas talk over the gRPC service `tally.cluster.v1.Peer`
//!   (`proto/tally/cluster/v1/peer.proto`).
//!
//! On disk (the replica's data directory): `replica.log`, the replicated log
//! (checksummed frames, one `fdatasync` per group of writes), and `replica.snapshot`,
//! the newest snapshot, after which the log is purged (sent to a lagging replica from
//! the file, never held in memory beside the state).
//!
//! # Features
//!
//! * `simulation` (off by default): `sim_disk::SimDisk`, an in-memory disk that
//!   keeps written and synced bytes apart, crashes and fails writes and syncs, with
//!   `LogStore::open_simulated` and `StateStore::open_simulated` to run a replica's
//!   storage on it: for the deterministic simulation of the cluster in the tests, never
//!   for production builds.
#![deny(missing_docs)]

pub mod admin;
mod config;
mod election;
mod group;
mod image_codec;
mod ledger;
mod log_store;
mod network;
pub mod offline;
mod peer_service;
mod replica;
#[cfg(feature = "simulation")]
pub mod sim_disk;
mod snapshot_data;
mod snapshot_floor;
mod state_machine;
mod types;

pub use config::{ClusterConfig, SNAPSHOT_LOG_BYTES_MIN};
pub use election::{Elections, PreVote};
pub use group::{BatchRefusal, GROUP_EVENTS_MAX, Group, GroupResults};
pub use ledger::{HostedReplica, Ledger, LedgerConfig, LedgerError};
pub use log_store::LogStore;
pub use network::{PeerConnection, PeerNetwork, PeerSecret};
pub use replica::{ClusterError, Replica, ReplicaStatus, check_snapshot_reaches_purge};
pub use snapshot_data::SnapshotData;
pub use snapshot_floor::SnapshotFloor;
pub use state_machine::{Applied, StateStore, group_stamps};
pub use types::{Raft, ReplicaId, TallyRaft};
