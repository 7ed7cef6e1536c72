//! The ledger state machine.
//!
//! Every rule of docs/spec.md §1 and §2: batches of `create_accounts` or
//! `create_transfers` are applied event by event, each check in the order the spec
//! lists, linked chains all or nothing. [`StateMachine::apply`] on one thread is the
//! reference: the yardstick the sharded engine is tested against (sequential
//! equivalence) and what replays the write-ahead log.
//!
//! The state is split into parts by id ([`Layout`]); one part is the plain reference.
//! A [`Plan`] cuts a group of batches into units with the parts each may touch, so that
//! shard threads, each holding some parts ([`Held`]), can apply the group in parallel
//! with the serial results ([`run_unit`]).
//!
//! Invariant: no I/O, no threads, no clock. The caller passes the batch timestamp; the
//! same batches with the same timestamps always give the same results and state.
#![deny(missing_docs)]

mod account_read;
mod apply;
mod balance_history;
mod burned;
mod check;
mod cost;
mod cow_map;
mod decide;
mod escrow;
mod execute;
mod hints;
mod history;
mod history_watch;
mod image_source;
mod index;
mod layout;
mod ledger_code_index;
mod load_values;
mod part;
mod plan;
mod prefetch;
mod query;
mod run;
mod state;
mod store;
mod tables;
mod value_index;

pub use account_read::{AccountBalancesRead, AccountTransfersRead};
pub use apply::Held;
pub use check::{InvariantViolation, LedgerTotals, Sum256};
pub use cost::{PlanCost, STEPS_PER_DELTA, STEPS_PER_EVENT};
pub use decide::{DeltaAccounts, Deltas};
pub use execute::{decide_unit, run_unit};
pub use image_source::{ImageSource, ImageStart};
pub use index::IndexTable;
pub use layout::{Layout, PARTS_MAX, Placement, part_of};
pub use part::Part;
pub use plan::{Plan, Serial, Touch, Unit, Work, plan, plan_with_escrow};
pub use query::{QUERY_STEP_RECORDS, Query, QueryTarget};
pub use run::Run;
pub use state::{FrozenState, ImageError, SideTables, StateMachine};
pub use tables::TableRequest;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
