//! Tally's embeddable ledger.
//!
//! A payment service opens a [`Ledger`] on a data directory and shares the handle
//! (`Send + Sync + Clone`) among its request handlers. Each [`Ledger::submit`] puts a
//! batch on a bounded lock-free queue; the log thread takes every batch waiting, stamps
//! them and writes them to the write-ahead log with **one** `fdatasync` (group commit);
//! the apply thread then applies the synced group to the state machine and answers,
//! while the next group is being synced. Nothing a caller sees was not durable first.
//!
//! ```
//! use tally_engine::prelude::*;
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let ledger = Ledger::open(Config::new(dir.path())).expect("open");
//! let wallet = Account {
//!     id: 1, ledger: 156, code: 1,
//!     flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
//!     ..Account::default()
//! };
//! let bank = Account { id: 2, ledger: 156, code: 1, ..Account::default() };
//! let results = ledger.submit(Batch::CreateAccounts(vec![wallet, bank])).expect("durable");
//! assert!(results.iter().all(|r| r.code == ResultCode::Ok));
//!
//! let top_up = Transfer {
//!     id: 10, debit_account_id: 2, credit_account_id: 1, amount: 1250, ledger: 156, code: 1,
//!     ..Transfer::default()
//! };
//! let results = ledger.submit(Batch::CreateTransfers(vec![top_up])).expect("durable");
//! assert_eq!(results[0].code, ResultCode::Ok);
//! assert_eq!(ledger.lookup_accounts(&[1])[0].credits_posted, 1250);
//! ledger.shutdown().expect("clean shutdown");
//! ```
//!
//! With several shards ([`Config::shards`]) the state is split into parts, one per shard
//! thread, and each durable group is applied by plan on all of them at once; results
//! and state are the same as with one shard. Async services share the same handle:
//!
//! ```
//! use tally_engine::{Account, AccountFilter, Batch, Config, Ledger, ResultCode, Transfer};
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let mut config = Config::new(dir.path());
//! config.shards = 4;
//! let ledger = Ledger::open(config).expect("open");
//! let accounts = (1..=8).map(|id| Account { id, ledger: 156, code: 1, ..Account::default() });
//! ledger.submit(Batch::CreateAccounts(accounts.collect())).expect("durable");
//!
//! let runtime = tokio::runtime::Builder::new_multi_thread().build().expect("runtime");
//! runtime.block_on(async {
//!     let payments = (1..=8u128).map(|n| {
//!         let ledger = ledger.clone();
//!         tokio::spawn(async move {
//!             let pay = Transfer {
//!                 id: 100 + n, debit_account_id: n, credit_account_id: 1 + n % 8,
//!                 amount: 5, ledger: 156, code: 1, ..Transfer::default()
//!             };
//!             ledger.submit_async(Batch::CreateTransfers(vec![pay])).await
//!         })
//!     });
//!     for payment in payments.collect::<Vec<_>>() {
//!         let results = payment.await.expect("task").expect("durable");
//!         assert_eq!(results[0].code, ResultCode::Ok);
//!     }
//! });
//! // Account 3 paid once and was paid once, whichever shards those transfers ran on.
//! let history = ledger.get_account_transfers(&AccountFilter::new(3));
//! assert_eq!(history.len(), 2);
//! assert!(ledger.ledger_totals()[&156].balanced());
//! ledger.shutdown().expect("clean shutdown");
//! ```
//!
//! Invariant: a result is returned only after its batch is synced to the log.
//! Invariant: reads take the state lock, which the apply thread holds while it applies a
//! whole group, so a read never sees half a batch or half a chain.

#![deny(missing_docs)]

mod admission;
pub mod clock;
mod commit;
mod config;
mod error;
mod events;
#[doc(hidden)]
pub mod gate;
pub mod inspect;
mod ledger;
mod metrics;
mod pacing;
mod recovery;
mod request;
mod shards;
mod shared;
pub mod simulation;
mod snapshot_source;
mod sync;
mod tables;
mod threads;

pub use config::{Backpressure, COMMIT_INTERVAL_MAX, Config, ShardExecution};
pub use error::{EngineError, RecoveryError, SubmitError};
pub use events::{ChangeEventReader, ChangeJournal, SUBSCRIPTION_BATCH_EVENTS_MAX};
pub use ledger::{Ledger, events_dir, refuse_replica_dir, validate as validate_batch};
pub use metrics::MetricsSnapshot;
pub use recovery::Recovery;
pub use request::{EventResult, TransferResult, transfer_balances};
pub use tally_log::SyncMode;
pub use tally_state::{InvariantViolation, LedgerTotals, Placement};
/// Currencies and amounts at the API edge: ISO 4217 scales, scales an application
/// registers (`CurrencyTable::register`), and exact conversion between decimals
/// (`Decimal`, `"12.50"`) and minor units.
pub use tally_types::currency;
pub use tally_types::{
    Account, AccountBalance, AccountBalances, AccountFilter, AccountFlags, BATCH_EVENTS_MAX, Batch,
    CHANGE_EVENTS_LIMIT_MAX, ChangeEvent, ChangeKind, QueryFilter, ResultCode, Transfer,
    TransferBalances, TransferFlags,
};

/// What an embedding service usually needs, in one import:
/// `use tally_engine::prelude::*;`.
pub mod prelude {
    pub use crate::currency::{CurrencyTable, Decimal};
    pub use crate::{
        Account, AccountFilter, AccountFlags, Backpressure, Batch, ChangeEvent, ChangeKind, Config,
        EngineError, EventResult, Ledger, QueryFilter, ResultCode, SubmitError, Transfer,
        TransferFlags,
    };
}

/// The most shards a ledger can run (one state part per shard).
pub const SHARDS_MAX: usize = tally_state::PARTS_MAX;
