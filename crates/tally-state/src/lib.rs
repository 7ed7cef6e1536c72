//! The reference ledger state machine.
//!
//! A plain, single-threaded implementation of every rule of SPEC.md sections 1 and 2:
//! batches of `create_accounts` or `create_transfers` are applied event by event, each
//! check in the order the spec lists, linked chains all or nothing. It is the yardstick
//! the sharded engine is tested against (sequential equivalence) and the executor that
//! replays the write-ahead log.
//!
//! Invariant: no I/O, no threads, no clock. The caller passes the batch timestamp; the
//! same batches with the same timestamps always give the same results and state.

mod apply;
mod check;
mod index;
mod part;
mod plan;
mod state;
mod store;

pub use apply::{Held, Parts};
pub use check::{InvariantViolation, LedgerTotals, Sum256};
pub use part::{PARTS_MAX, Part, part_of};
pub use plan::{Plan, Serial, Unit, Work, plan, run_unit};
pub use state::{FrozenState, ImageError, StateMachine};

#[cfg(test)]
mod tests;
