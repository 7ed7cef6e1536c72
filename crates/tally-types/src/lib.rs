//! Tally's domain types: the vocabulary every other crate speaks.
//!
//! * ids and amounts are `u128`; amounts are integer **minor units** of a ledger's
//!   currency (fen, cents, yen). Floating point never touches money.
//! * [`currency`] converts between minor units and decimals, exactly, with a ledger's scale.
//! * [`Account`] and [`Transfer`] are the two records; [`ResultCode`] is every answer an
//!   event can get; [`Batch`] is what a client submits.
//! * [`codec`] is the fixed 128-byte little-endian layout of both records, shared by the
//!   write-ahead log and snapshots; [`packed`] is the compact layout of a transfer kept
//!   in memory and in snapshots.
//!
//! Invariant: this crate does no I/O and holds no state.
#![deny(missing_docs)]

mod change;
pub mod codec;
pub mod currency;
mod flags;
mod image;
pub mod packed;
mod records;
mod result;

pub use change::{
    CHANGE_EVENT_BYTES_MAX, CHANGE_EVENTS_LIMIT_MAX, ChangeDecodeError, ChangeEvent, ChangeKind,
    change_events_limit, decode_change, encode_change,
};
pub use flags::{AccountFlags, FlagsError, TransferFlags};
pub use image::{LoadedImage, PendingStatus, StateImage};
pub use records::{
    ACCOUNT_FILTER_LIMIT_MAX, Account, AccountBalance, AccountBalances, AccountFilter, Batch,
    BatchKind, QueryFilter, Transfer, TransferBalances, TransferKind,
};
pub use result::{ResultCode, UnknownResultCode};

/// Largest number of events in one batch; a larger batch is rejected whole.
pub const BATCH_EVENTS_MAX: usize = 8_190;

/// Nanoseconds in one second, for pending-transfer timeouts given in seconds.
pub const NS_PER_S: u64 = 1_000_000_000;

/// The latest time a batch may ask to be stamped from (a manual clock's `now`), in ns
/// since the Unix epoch: i64::MAX, in the year 2262. Stamps move forward by one per
/// event, so a ledger can never run out of u64 time (2^63 ns are left above this); a
/// `now` nearer u64::MAX would leave the ledger unable to stamp any later batch.
pub const NOW_NS_MAX: u64 = i64::MAX as u64;

/// True when `id` may name an account or a transfer: zero and `u128::MAX` are reserved.
pub fn id_is_valid(id: u128) -> bool {
    id != 0 && id != u128::MAX
}
