//! Tally: a durable, in-memory double-entry payment ledger.
//!
//! This umbrella crate re-exports the layers so an application can depend on one crate:
//! [`types`] (records and result codes) → [`state`] (the reference state machine) →
//! [`log`] (write-ahead log and snapshots) → [`engine`] (the embeddable [`Ledger`]).
//! See ARCHITECTURE.md for the life of a transfer.

pub use tally_engine as engine;
pub use tally_log as log;
pub use tally_state as state;
pub use tally_types as types;

pub use tally_engine::{Config, Ledger, SubmitError};
