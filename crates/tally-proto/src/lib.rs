//! Tally's gRPC interface, generated from `proto/tally/v1/tally.proto`, and the
//! conversions between its messages and the ledger's records.
#![deny(missing_docs)]

/// The generated messages, client and server of package `tally.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod v1 {
    tonic::include_proto!("tally.v1");
}

/// The replicas' own service, package `tally.cluster.v1` (`proto/tally/cluster/v1/peer.proto`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod peer {
    tonic::include_proto!("tally.cluster.v1");
}

mod convert;

pub use convert::{
    ConvertError, account_balance_from_proto, account_balance_to_proto, account_from_proto,
    account_to_proto, accounts_from_request, accounts_to_records, balances_from_proto,
    balances_to_proto, change_event_from_proto, change_event_ledger, change_event_to_proto,
    change_kind_from_proto, change_kind_to_proto, filter_from_proto, filter_to_proto,
    query_filter_from_proto, query_filter_to_proto, result_code_from_proto, result_code_to_proto,
    transfer_from_proto, transfer_to_proto, transfers_from_request, transfers_to_records,
    u128_from_proto, u128_to_proto,
};
pub use v1::ledger_client::LedgerClient;

/// The metadata key a cluster replica that does not lead sets (to `1`) on its answer
/// to a create call it passed on to the leader: the client may move its writes on to
/// another replica it knows, towards the leader, and save the hop.
pub const FORWARDED_HEADER: &str = "tally-forwarded";
pub use v1::ledger_server::{Ledger as LedgerService, LedgerServer};
