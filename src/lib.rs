//! Tally: a durable, in-memory double-entry payment ledger to embed in a payment service.
//!
//! * Accounts and transfers in integer minor units of a ledger's currency; single-phase,
//!   pending (post, void, expiry) and refund transfers; linked chains that succeed or
//!   fail as a whole; idempotent resubmission by transfer id.
//! * Nothing is answered before it is durable: batches are group-committed to a
//!   checksummed write-ahead log with one `fdatasync` per group; snapshots bound recovery.
//! * Backpressure instead of unbounded queues; several shards apply each durable group
//!   in parallel with the same results as one.
//! * Reads (lookups, an account's history) never see half a batch.
//!
//! This umbrella crate re-exports the layers so an application can depend on one crate:
//! [`types`] (records and result codes) → [`state`] (the reference state machine) →
//! [`log`] (write-ahead log and snapshots) → [`engine`] (the single node) → [`cluster`]
//! (replication on Raft). [`Ledger::open`] embeds either: a single node from a
//! [`Config`], or one replica of a cluster from a [`ClusterConfig`], answering the same
//! calls. See ARCHITECTURE.md for the life of a transfer.
//!
//! ```
//! use tally::{Account, Batch, Config, Ledger, ResultCode, Transfer};
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let ledger = Ledger::open(Config::new(dir.path())).expect("open");
//! let accounts = (1..=2).map(|id| Account { id, ledger: 156, code: 1, ..Account::default() });
//! ledger.submit(Batch::CreateAccounts(accounts.collect())).expect("durable");
//! let pay = Transfer {
//!     id: 10, debit_account_id: 1, credit_account_id: 2, amount: 1250, ledger: 156, code: 1,
//!     ..Transfer::default()
//! };
//! let results = ledger.submit(Batch::CreateTransfers(vec![pay])).expect("durable");
//! assert_eq!(results[0].code, ResultCode::Ok);
//! ledger.shutdown().expect("clean shutdown");
//! ```
#![deny(missing_docs)]

pub use tally_cluster as cluster;
pub use tally_engine as engine;
pub use tally_log as log;
pub use tally_state as state;
pub use tally_types as types;

pub use tally_cluster::{ClusterConfig, Ledger, LedgerConfig, LedgerError};
pub use tally_engine::{Config, EngineError, EventResult, SubmitError};
pub use tally_types::{
    Account, AccountFilter, AccountFlags, Batch, ResultCode, Transfer, TransferFlags,
};
