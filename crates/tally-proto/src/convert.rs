//! Conversions between the wire messages and the ledger's records. Every conversion from
//! the wire checks what the records' types cannot hold (a code above 65,535, an unknown
//! flag bit) and names the event at fault.

use crate::v1;
use std::fmt;
use tally_types::{Account, AccountFilter, AccountFlags, ResultCode, Transfer, TransferFlags};

/// A wire message that does not fit the ledger's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// The event's position in its request.
    pub index: usize,
    /// The field at fault and why.
    pub reason: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}: {}", self.index, self.reason)
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
        index,
        reason: format!("code {code} is above 65535"),
    })
}

fn flags_bits(index: usize, flags: u32) -> Result<u16, ConvertError> {
    u16::try_from(flags).map_err(|_| ConvertError {
        index,
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
        index,
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
        index,
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
        debits: filter.debits,
        credits: filter.credits,
        reversed: filter.reversed,
    }
}

/// A `get_account_transfers` filter from the wire.
pub fn filter_from_proto(filter: &v1::AccountFilter) -> AccountFilter {
    AccountFilter {
        account_id: u128_from_proto(filter.account_id),
        timestamp_min: filter.timestamp_min,
        timestamp_max: filter.timestamp_max,
        limit: filter.limit,
        debits: filter.debits,
        credits: filter.credits,
        reversed: filter.reversed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn out_of_range_fields_name_the_event() {
        let wide_code = v1::Account {
            code: 70_000,
            ..v1::Account::default()
        };
        let error = account_from_proto(3, &wide_code).expect_err("code too wide");
        assert_eq!(error.index, 3);
        assert!(error.to_string().contains("70000"), "{error}");
        let unknown_flag = v1::Transfer {
            flags: 1 << 9,
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
