//! Conversions between the wire messages and the ledger's records. Every conversion from
//! the wire checks what the records' types cannot hold (a code above 65,535, an unknown
//! flag bit) and names the event at fault.

use crate::v1;
use std::fmt;
use tally_types::codec::{self, RECORD_SIZE};
use tally_types::{
    Account, AccountBalance, AccountBalances, AccountFilter, AccountFlags, BATCH_EVENTS_MAX,
    ChangeEvent, ChangeKind, QueryFilter, ResultCode, Transfer, TransferFlags,
};

/// A wire message that does not fit the ledger's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// The event's position in its request; `None` for the request as a whole.
    pub index: Option<usize>,
    /// The field at fault and why.
    pub reason: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(index) => write!(f, "event {index}: {}", self.reason),
            None => write!(f, "request: {}", self.reason),
        }
    }
}

impl std::error::Error for ConvertError {}

/// A 128-bit value on the wire; 0 is sent as an absent field.
pub fn u128_to_proto(value: u128) -> Option<v1::U128> {
    (value != 0).then_some(v1::U128 {
        lo: value as u64,
        hi: (value >> 64) as u64,
    })
}

/// A 128-bit value from the wire; an absent field is 0.
pub fn u128_from_proto(value: Option<v1::U128>) -> u128 {
    value.map_or(0, |v| (u128::from(v.hi) << 64) | u128::from(v.lo))
}

fn code_from_proto(index: usize, code: u32) -> Result<u16, ConvertError> {
    u16::try_from(code).map_err(|_| ConvertError {
        index: Some(index),
        reason: format!("code {code} is above 65535"),
    })
}

fn flags_bits(index: usize, flags: u32) -> Result<u16, ConvertError> {
    u16::try_from(flags).map_err(|_| ConvertError {
        index: Some(index),
        reason: format!("flags {flags:#x} has unknown bits"),
    })
}

/// An account for the wire.
pub fn account_to_proto(account: &Account) -> v1::Account {
    v1::Account {
        id: u128_to_proto(account.id),
        debits_pending: u128_to_proto(account.debits_pending),
        debits_posted: u128_to_proto(account.debits_posted),
        credits_pending: u128_to_proto(account.credits_pending),
        credits_posted: u128_to_proto(account.credits_posted),
        user_data_128: u128_to_proto(account.user_data_128),
        user_data_64: account.user_data_64,
        user_data_32: account.user_data_32,
        ledger: account.ledger,
        code: u32::from(account.code),
        flags: u32::from(account.flags.bits()),
        timestamp: account.timestamp,
    }
}

/// An account from the wire (`index`: its position in the request, for the error).
pub fn account_from_proto(index: usize, account: &v1::Account) -> Result<Account, ConvertError> {
    let bits = flags_bits(index, account.flags)?;
    let flags = AccountFlags::from_bits(bits).map_err(|error| ConvertError {
        index: Some(index),
        reason: error.0,
    })?;
    Ok(Account {
        id: u128_from_proto(account.id),
        debits_pending: u128_from_proto(account.debits_pending),
        debits_posted: u128_from_proto(account.debits_posted),
        credits_pending: u128_from_proto(account.credits_pending),
        credits_posted: u128_from_proto(account.credits_posted),
        user_data_128: u128_from_proto(account.user_data_128),
        user_data_64: account.user_data_64,
        user_data_32: account.user_data_32,
        ledger: account.ledger,
        code: code_from_proto(index, account.code)?,
        flags,
        timestamp: account.timestamp,
    })
}

/// A transfer for the wire.
pub fn transfer_to_proto(transfer: &Transfer) -> v1::Transfer {
    v1::Transfer {
        id: u128_to_proto(transfer.id),
        debit_account_id: u128_to_proto(transfer.debit_account_id),
        credit_account_id: u128_to_proto(transfer.credit_account_id),
        amount: u128_to_proto(transfer.amount),
        pending_id: u128_to_proto(transfer.pending_id),
        user_data_128: u128_to_proto(transfer.user_data_128),
        user_data_64: transfer.user_data_64,
        user_data_32: transfer.user_data_32,
        timeout: transfer.timeout,
        ledger: transfer.ledger,
        code: u32::from(transfer.code),
        flags: u32::from(transfer.flags.bits()),
        timestamp: transfer.timestamp,
    }
}

/// A transfer from the wire (`index`: its position in the request, for the error).
pub fn transfer_from_proto(
    index: usize,
    transfer: &v1::Transfer,
) -> Result<Transfer, ConvertError> {
    let bits = flags_bits(index, transfer.flags)?;
    let flags = TransferFlags::from_bits(bits).map_err(|error| ConvertError {
        index: Some(index),
        reason: error.0,
    })?;
    Ok(Transfer {
        id: u128_from_proto(transfer.id),
        debit_account_id: u128_from_proto(transfer.debit_account_id),
        credit_account_id: u128_from_proto(transfer.credit_account_id),
        amount: u128_from_proto(transfer.amount),
        pending_id: u128_from_proto(transfer.pending_id),
        user_data_128: u128_from_proto(transfer.user_data_128),
        user_data_64: transfer.user_data_64,
        user_data_32: transfer.user_data_32,
        timeout: transfer.timeout,
        ledger: transfer.ledger,
        code: code_from_proto(index, transfer.code)?,
        flags,
        timestamp: transfer.timestamp,
    })
}

/// Why a create request's events do not load.
fn request_error(reason: String) -> ConvertError {
    ConvertError {
        index: None,
        reason,
    }
}

/// The number of records in `bytes`, within the batch limit.
fn record_count(bytes: &[u8], events_in_messages: usize) -> Result<usize, ConvertError> {
    if events_in_messages > 0 {
        return Err(request_error(
            "the request carries both messages and records; send one of the two".into(),
        ));
    }
    if !bytes.len().is_multiple_of(RECORD_SIZE) {
        return Err(request_error(format!(
            "records are {RECORD_SIZE} bytes each; {} bytes is not a whole number of them",
            bytes.len()
        )));
    }
    let count = bytes.len() / RECORD_SIZE;
    if count > BATCH_EVENTS_MAX {
        return Err(request_error(format!(
            "{count} events is more than the maximum {BATCH_EVENTS_MAX}"
        )));
    }
    Ok(count)
}

/// The events of a create request: its messages converted by `from_proto`, or its
/// records decoded by `decode`, in order.
fn events_from_request<W, T>(
    messages: &[W],
    records: &[u8],
    from_proto: impl Fn(usize, &W) -> Result<T, ConvertError>,
    decode: impl Fn(&[u8; RECORD_SIZE]) -> Result<T, codec::DecodeError>,
) -> Result<Vec<T>, ConvertError> {
    if records.is_empty() {
        return messages
            .iter()
            .enumerate()
            .map(|(index, message)| from_proto(index, message))
            .collect();
    }
    let count = record_count(records, messages.len())?;
    (0..count)
        .map(|index| {
            codec::record_at(records, index)
                .and_then(&decode)
                .map_err(|error| ConvertError {
                    index: Some(index),
                    reason: error.to_string(),
                })
        })
        .collect()
}

/// The accounts of a create request, from its messages or its records, in order.
pub fn accounts_from_request(
    request: &v1::CreateAccountsRequest,
) -> Result<Vec<Account>, ConvertError> {
    events_from_request(
        &request.accounts,
        &request.account_records,
        account_from_proto,
        codec::decode_account,
    )
}

/// The transfers of a create request, from its messages or its records, in order.
pub fn transfers_from_request(
    request: &v1::CreateTransfersRequest,
) -> Result<Vec<Transfer>, ConvertError> {
    events_from_request(
        &request.transfers,
        &request.transfer_records,
        transfer_from_proto,
        codec::decode_transfer,
    )
}

/// `events` encoded by `encode` as concatenated records.
fn encode_records<T>(events: &[T], encode: impl Fn(&T, &mut [u8; RECORD_SIZE])) -> Vec<u8> {
    let mut records = vec![0u8; events.len() * RECORD_SIZE];
    for (event, out) in events.iter().zip(records.chunks_exact_mut(RECORD_SIZE)) {
        let out: &mut [u8; RECORD_SIZE] = out.try_into().expect("chunks are RECORD_SIZE");
        encode(event, out);
    }
    records
}

/// A create request carrying `accounts` as records.
pub fn accounts_to_records(accounts: &[Account]) -> v1::CreateAccountsRequest {
    v1::CreateAccountsRequest {
        accounts: Vec::new(),
        account_records: encode_records(accounts, codec::encode_account),
    }
}

/// A create request carrying `transfers` as records; with `balances`, asking for each
/// applied transfer's balances with its result.
pub fn transfers_to_records(transfers: &[Transfer], balances: bool) -> v1::CreateTransfersRequest {
    v1::CreateTransfersRequest {
        transfers: Vec::new(),
        transfer_records: encode_records(transfers, codec::encode_transfer),
        balances,
    }
}

/// A result code for the wire: the same number the log stores.
pub fn result_code_to_proto(code: ResultCode) -> v1::ResultCode {
    // Every code has a wire value: `tests::result_codes_match_the_proto` pins it.
    v1::ResultCode::try_from(i32::from(code as u8)).unwrap_or(v1::ResultCode::Ok)
}

/// A result code from the wire; `None` for a number this build does not know.
pub fn result_code_from_proto(code: i32) -> Option<ResultCode> {
    u8::try_from(code)
        .ok()
        .and_then(|value| ResultCode::from_u8(value).ok())
}

/// A `get_account_transfers` filter for the wire.
pub fn filter_to_proto(filter: &AccountFilter) -> v1::AccountFilter {
    v1::AccountFilter {
        account_id: u128_to_proto(filter.account_id),
        timestamp_min: filter.timestamp_min,
        timestamp_max: filter.timestamp_max,
        limit: filter.limit,
        // Neither direction set: both (proto3 leaves an unset bool false).
        debits: filter.debits || !filter.credits,
        credits: filter.credits || !filter.debits,
        reversed: filter.reversed,
        user_data_128: u128_to_proto(filter.user_data_128),
        user_data_64: filter.user_data_64,
        user_data_32: filter.user_data_32,
        ledger: filter.ledger,
        code: u32::from(filter.code),
    }
}

/// A `get_account_transfers` filter from the wire; a `code` past u16 is an error.
pub fn filter_from_proto(filter: &v1::AccountFilter) -> Result<AccountFilter, String> {
    let code = filter_code(filter.code)?;
    Ok(AccountFilter {
        account_id: u128_from_proto(filter.account_id),
        timestamp_min: filter.timestamp_min,
        timestamp_max: filter.timestamp_max,
        limit: filter.limit,
        // Neither direction set: both (proto3 leaves an unset bool false).
        debits: filter.debits || !filter.credits,
        credits: filter.credits || !filter.debits,
        reversed: filter.reversed,
        user_data_128: u128_from_proto(filter.user_data_128),
        user_data_64: filter.user_data_64,
        user_data_32: filter.user_data_32,
        ledger: filter.ledger,
        code,
    })
}

/// An account's four balances for the wire.
pub fn balances_to_proto(balances: &AccountBalances) -> v1::Balances {
    v1::Balances {
        debits_pending: u128_to_proto(balances.debits_pending),
        debits_posted: u128_to_proto(balances.debits_posted),
        credits_pending: u128_to_proto(balances.credits_pending),
        credits_posted: u128_to_proto(balances.credits_posted),
    }
}

/// An account's four balances from the wire (absent: zero).
pub fn balances_from_proto(balances: Option<&v1::Balances>) -> AccountBalances {
    let Some(b) = balances else {
        return AccountBalances::default();
    };
    AccountBalances {
        debits_pending: u128_from_proto(b.debits_pending),
        debits_posted: u128_from_proto(b.debits_posted),
        credits_pending: u128_from_proto(b.credits_pending),
        credits_posted: u128_from_proto(b.credits_posted),
    }
}

/// A balance history row for the wire.
pub fn account_balance_to_proto(row: &AccountBalance) -> v1::AccountBalance {
    v1::AccountBalance {
        timestamp: row.timestamp,
        balances: Some(balances_to_proto(&row.balances)),
    }
}

/// A balance history row from the wire (absent balances: zero).
pub fn account_balance_from_proto(row: &v1::AccountBalance) -> AccountBalance {
    AccountBalance {
        timestamp: row.timestamp,
        balances: balances_from_proto(row.balances.as_ref()),
    }
}

/// A filter's `code` from the wire: past u16 is an error.
fn filter_code(code: u32) -> Result<u16, String> {
    u16::try_from(code).map_err(|_| format!("code: {code} is past the u16 range"))
}

/// A `query_accounts` / `query_transfers` filter for the wire.
pub fn query_filter_to_proto(filter: &QueryFilter) -> v1::QueryFilter {
    v1::QueryFilter {
        user_data_128: u128_to_proto(filter.user_data_128),
        user_data_64: filter.user_data_64,
        user_data_32: filter.user_data_32,
        ledger: filter.ledger,
        code: u32::from(filter.code),
        timestamp_min: filter.timestamp_min,
        timestamp_max: filter.timestamp_max,
        limit: filter.limit,
        reversed: filter.reversed,
    }
}

/// A query filter from the wire; a `code` past u16 is an error.
pub fn query_filter_from_proto(filter: &v1::QueryFilter) -> Result<QueryFilter, String> {
    let code = filter_code(filter.code)?;
    Ok(QueryFilter {
        user_data_128: u128_from_proto(filter.user_data_128),
        user_data_64: filter.user_data_64,
        user_data_32: filter.user_data_32,
        ledger: filter.ledger,
        code,
        timestamp_min: filter.timestamp_min,
        timestamp_max: filter.timestamp_max,
        limit: filter.limit,
        reversed: filter.reversed,
    })
}

/// A change event's kind for the wire: the same number the event journal stores.
pub fn change_kind_to_proto(kind: ChangeKind) -> v1::ChangeEventType {
    // Every kind has a wire value: `tests::change_kinds_match_the_proto` pins it.
    v1::ChangeEventType::try_from(i32::from(kind.code()))
        .unwrap_or(v1::ChangeEventType::Unspecified)
}

/// A change event's kind from the wire; `None` for 0 (unspecified) or a number this
/// build does not know.
pub fn change_kind_from_proto(kind: i32) -> Option<ChangeKind> {
    u8::try_from(kind).ok().and_then(ChangeKind::from_code)
}

/// A change event for the wire: `account` for `account_created`, else the transfer and
/// both accounts.
pub fn change_event_to_proto(event: &ChangeEvent) -> v1::ChangeEvent {
    let kind = change_kind_to_proto(event.kind) as i32;
    if event.kind == ChangeKind::AccountCreated {
        return v1::ChangeEvent {
            timestamp: event.timestamp,
            r#type: kind,
            account: Some(account_to_proto(&event.debit_account)),
            ..v1::ChangeEvent::default()
        };
    }
    v1::ChangeEvent {
        timestamp: event.timestamp,
        r#type: kind,
        transfer: Some(transfer_to_proto(&event.transfer)),
        debit_account: Some(account_to_proto(&event.debit_account)),
        credit_account: Some(account_to_proto(&event.credit_account)),
        account: None,
    }
}

/// A change event from the wire (`index`: its position in the answer, for the error).
/// An absent record reads as all zero.
pub fn change_event_from_proto(
    index: usize,
    event: &v1::ChangeEvent,
) -> Result<ChangeEvent, ConvertError> {
    let kind = change_kind_from_proto(event.r#type).ok_or_else(|| ConvertError {
        index: Some(index),
        reason: format!("unknown change event type {}", event.r#type),
    })?;
    let account = |account: &Option<v1::Account>| {
        account.as_ref().map_or(Ok(Account::default()), |account| {
            account_from_proto(index, account)
        })
    };
    if kind == ChangeKind::AccountCreated {
        return Ok(ChangeEvent {
            timestamp: event.timestamp,
            kind,
            transfer: Transfer::default(),
            debit_account: account(&event.account)?,
            credit_account: Account::default(),
        });
    }
    let transfer = event
        .transfer
        .as_ref()
        .map_or(Ok(Transfer::default()), |transfer| {
            transfer_from_proto(index, transfer)
        })?;
    Ok(ChangeEvent {
        timestamp: event.timestamp,
        kind,
        transfer,
        debit_account: account(&event.debit_account)?,
        credit_account: account(&event.credit_account)?,
    })
}

/// The ledger a change event belongs to: the transfer's, or the created account's.
pub fn change_event_ledger(event: &ChangeEvent) -> u32 {
    match event.kind {
        ChangeKind::AccountCreated => event.debit_account.ledger,
        _ => event.transfer.ledger,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_filter_crosses_the_wire_whole() {
        let filter = AccountFilter {
            timestamp_min: 3,
            timestamp_max: 9,
            limit: 7,
            debits: false,
            reversed: true,
            user_data_128: u128::MAX,
            user_data_64: 5,
            user_data_32: 6,
            ledger: 978,
            code: 65_535,
            ..AccountFilter::new(u128::MAX - 1)
        };
        let wire = filter_to_proto(&filter);
        assert_eq!(filter_from_proto(&wire), Ok(filter));
    }

    #[test]
    fn a_filter_without_a_direction_lists_both() {
        let directions = |debits, credits| {
            let wire = v1::AccountFilter {
                debits,
                credits,
                ..v1::AccountFilter::default()
            };
            let filter = filter_from_proto(&wire).expect("valid");
            (filter.debits, filter.credits)
        };
        assert_eq!(directions(false, false), (true, true));
        assert_eq!(directions(true, false), (true, false));
        assert_eq!(directions(false, true), (false, true));
        assert_eq!(directions(true, true), (true, true));
    }

    #[test]
    fn result_codes_match_the_proto() {
        for &code in ResultCode::ALL {
            let wire = v1::ResultCode::try_from(i32::from(code as u8))
                .unwrap_or_else(|_| panic!("{code} has no wire value"));
            let expected = format!("RESULT_CODE_{}", code.name().to_uppercase());
            assert_eq!(wire.as_str_name(), expected);
            assert_eq!(result_code_to_proto(code), wire);
            assert_eq!(result_code_from_proto(wire as i32), Some(code));
        }
        assert_eq!(result_code_from_proto(-1), None);
        assert_eq!(result_code_from_proto(250), None);
    }

    #[test]
    fn change_kinds_match_the_proto() {
        for kind in ChangeKind::ALL {
            let wire = change_kind_to_proto(kind);
            let expected = format!("CHANGE_EVENT_TYPE_{}", kind.name().to_uppercase());
            assert_eq!(wire.as_str_name(), expected);
            assert_eq!(change_kind_from_proto(wire as i32), Some(kind));
        }
        assert_eq!(change_kind_from_proto(0), None, "unspecified");
        assert_eq!(change_kind_from_proto(8), None);
        assert_eq!(change_kind_from_proto(-1), None);
    }

    #[test]
    fn change_events_round_trip_with_their_records_where_the_proto_says() {
        let account = |id, debits_posted| Account {
            id,
            debits_posted,
            ledger: 978,
            code: 1,
            timestamp: 5,
            ..Account::default()
        };
        let created = ChangeEvent::account_created(account(1, 0));
        let wire = change_event_to_proto(&created);
        assert!(wire.account.is_some());
        assert!(wire.transfer.is_none() && wire.debit_account.is_none());
        assert_eq!(change_event_from_proto(0, &wire), Ok(created));
        assert_eq!(change_event_ledger(&created), 978);
        let moved = ChangeEvent {
            timestamp: 9,
            kind: ChangeKind::TwoPhaseExpired,
            transfer: Transfer {
                id: 7,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 3,
                ledger: 840,
                code: 1,
                flags: TransferFlags::PENDING,
                timestamp: 6,
                ..Transfer::default()
            },
            debit_account: account(1, 3),
            credit_account: account(2, 0),
        };
        let wire = change_event_to_proto(&moved);
        assert!(wire.account.is_none());
        assert_eq!(wire.r#type, v1::ChangeEventType::TwoPhaseExpired as i32);
        assert_eq!(change_event_from_proto(0, &wire), Ok(moved));
        assert_eq!(change_event_ledger(&moved), 840);
        let unknown = v1::ChangeEvent::default();
        let error = change_event_from_proto(4, &unknown).expect_err("unspecified type");
        assert_eq!(error.index, Some(4));
    }

    #[test]
    fn u128_round_trips_and_zero_is_absent() {
        for value in [
            0,
            1,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX,
        ] {
            assert_eq!(u128_from_proto(u128_to_proto(value)), value);
        }
        assert_eq!(u128_to_proto(0), None);
        let wire = v1::U128 { lo: 5, hi: 1 };
        assert_eq!(u128_from_proto(Some(wire)), (1u128 << 64) + 5);
    }

    #[test]
    fn records_round_trip() {
        let account = Account {
            id: u128::MAX - 1,
            credits_posted: 7,
            user_data_128: 1 << 100,
            user_data_64: 3,
            user_data_32: 4,
            ledger: 978,
            code: u16::MAX,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            timestamp: 99,
            ..Account::default()
        };
        let back = account_from_proto(0, &account_to_proto(&account));
        assert_eq!(back, Ok(account));
        let transfer = Transfer {
            id: 1 << 70,
            debit_account_id: 2,
            credit_account_id: 3,
            amount: u128::MAX,
            pending_id: 4,
            timeout: 60,
            ledger: 840,
            code: 1,
            flags: TransferFlags::PENDING.with(TransferFlags::LINKED),
            ..Transfer::default()
        };
        assert_eq!(
            transfer_from_proto(0, &transfer_to_proto(&transfer)),
            Ok(transfer)
        );
    }

    #[test]
    fn records_and_messages_carry_the_same_events() {
        let transfers: Vec<Transfer> = (1..=3)
            .map(|id| Transfer {
                id: id << 80,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 7,
                ledger: 978,
                code: 1,
                flags: TransferFlags::LINKED,
                ..Transfer::default()
            })
            .collect();
        let request = transfers_to_records(&transfers, false);
        assert_eq!(transfers_from_request(&request), Ok(transfers.clone()));
        let messages = v1::CreateTransfersRequest {
            transfers: transfers.iter().map(transfer_to_proto).collect(),
            transfer_records: Vec::new(),
            balances: false,
        };
        assert_eq!(transfers_from_request(&messages), Ok(transfers));
        let accounts = vec![Account {
            id: 5,
            ledger: 1,
            code: 2,
            ..Account::default()
        }];
        assert_eq!(
            accounts_from_request(&accounts_to_records(&accounts)),
            Ok(accounts)
        );
    }

    #[test]
    fn bad_records_are_refused() {
        let one = transfers_to_records(&[Transfer::default()], false);
        let both = v1::CreateTransfersRequest {
            transfers: vec![v1::Transfer::default()],
            ..one.clone()
        };
        assert!(transfers_from_request(&both).is_err(), "both forms");
        let mut torn = one.clone();
        torn.transfer_records.pop();
        assert!(transfers_from_request(&torn).is_err(), "not whole records");
        let mut flagged = one;
        flagged.transfer_records[119] = 0xff;
        let error = transfers_from_request(&flagged).expect_err("unknown flag bits");
        assert_eq!(error.index, Some(0));
        let too_many =
            transfers_to_records(&vec![Transfer::default(); BATCH_EVENTS_MAX + 1], false);
        assert!(transfers_from_request(&too_many).is_err(), "over the limit");
        let mut reserved = accounts_to_records(&[Account::default()]);
        reserved.account_records[108] = 1;
        assert!(accounts_from_request(&reserved).is_err(), "reserved bytes");
    }

    #[test]
    fn out_of_range_fields_name_the_event() {
        let wide_code = v1::Account {
            code: 70_000,
            ..v1::Account::default()
        };
        let error = account_from_proto(3, &wide_code).expect_err("code too wide");
        assert_eq!(error.index, Some(3));
        assert!(error.to_string().contains("70000"), "{error}");
        let unknown_flag = v1::Transfer {
            flags: 1 << 10,
            ..v1::Transfer::default()
        };
        assert!(transfer_from_proto(0, &unknown_flag).is_err());
        let huge_flags = v1::Transfer {
            flags: 1 << 20,
            ..v1::Transfer::default()
        };
        assert!(transfer_from_proto(0, &huge_flags).is_err());
    }
}
