//! The async Rust client of Tally's gRPC server (`tally serve`, docs/spec.md §6).
//!
//! * **Batches**: [`Client::create_accounts`] and [`Client::create_transfers`] send up to
//!   8,190 events as one call and answer one [`CreateResult`] per event, in order, once
//!   the events are durable. Linked chains go this way.
//! * **Coalesced single calls**: [`Client::create_account`] and [`Client::create_transfer`]
//!   from many tasks are gathered into batches the way TigerBeetle's clients do it: per
//!   operation at most [`ClientConfig::batches_in_flight`] batches (default 4) are out
//!   while the next one fills, and the filled batch leaves the moment an answer comes
//!   back; a call that finds a flight free leaves at once (no timer). Each caller gets
//!   its own result; calls made concurrently may commit in any order. Small batches
//!   (at most 64 events) whose last event closes its linked chain are coalesced the
//!   same way, kept whole and in order.
//!   A single call with the `linked` flag is refused ([`ClientError::LinkedSingle`]): it
//!   would chain other callers' events.
//! * **Reads**: [`Client::lookup_accounts`], [`Client::lookup_transfers`],
//!   [`Client::get_account_transfers`].
//! * **Change events**: [`Client::get_change_events`] reads a page;
//!   [`Client::subscribe_change_events`] follows them live and, when its connection
//!   breaks, resumes after the last event it yielded: each event once, in order.
//! * **Safe retries**: `UNAVAILABLE`, a broken connection and `RESOURCE_EXHAUSTED` (the
//!   server is busy; its `retry-after-ms` hint is honoured) are retried per
//!   [`RetryPolicy`] with the very same events. Ids are idempotency keys, so **a retried
//!   create may answer `exists` for an event that the lost attempt applied**; it is never
//!   applied twice. A lost connection is made again by the next call.
//! * **Security**: TLS with the server's CA certificate and an optional client
//!   certificate ([`TlsConfig`]); a bearer token sent as `authorization: Bearer <token>`.
//! * **Typed errors**: [`ClientError`].
//!
//! Bounds: per operation, the coalescer holds at most `batch_events_max` queued calls,
//! `batch_events_max` in the batch that fills and `batch_events_max` in each batch in
//! flight; a caller that finds the queue full waits.
//!
//! Invariant: the client depends on the wire interface (`tally-proto`) and the records
//! (`tally-types`) only, never on the engine.
//!
//! # Example
//!
//! ```no_run
//! use tally_client::{Client, ClientConfig, ClientError};
//! use tally_types::{Account, ResultCode, Transfer};
//!
//! # async fn example() -> Result<(), ClientError> {
//! let client = Client::connect(ClientConfig::new("http://127.0.0.1:7400")).await?;
//! let account = |id| Account { id, ledger: 978, code: 1, ..Account::default() };
//! let results = client.create_accounts(vec![account(1), account(2)]).await?;
//! assert!(results.iter().all(|result| result.code == ResultCode::Ok));
//!
//! // Single calls from many tasks share batches.
//! let mut tasks = Vec::new();
//! for id in 1..=100 {
//!     let client = client.clone();
//!     tasks.push(tokio::spawn(async move {
//!         let transfer = Transfer {
//!             id,
//!             debit_account_id: 1,
//!             credit_account_id: 2,
//!             amount: 10,
//!             ledger: 978,
//!             code: 1,
//!             ..Transfer::default()
//!         };
//!         client.create_transfer(transfer).await
//!     }));
//! }
//! for task in tasks {
//!     let result = task.await.expect("task ran")?;
//!     assert!(matches!(result.code, ResultCode::Ok | ResultCode::Exists));
//! }
//! let accounts = client.lookup_accounts(vec![1, 2]).await?;
//! assert_eq!(accounts[1].credits_posted, 1_000);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod client;
mod coalesce;
mod config;
mod error;
mod rpc;
mod subscribe;

pub use client::{ChangeEventsPage, Client, ClientStats, CreateResult, TransferResult};
pub use config::{
    BATCHES_IN_FLIGHT_MAX, ClientConfig, ClientIdentity, RETRY_AFTER_HINT_MAX, RetryPolicy,
    TlsConfig,
};
pub use error::ClientError;
