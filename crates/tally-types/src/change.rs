//! Change events (docs/spec.md §2, "Change events"): every committed change, one event
//! each, in one total order by timestamp, with the balances of both accounts right
//! after it.
//!
//! Layout of one encoded event ([`CHANGE_EVENT_SIZE`] bytes, little-endian):
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | timestamp |
//! | 8 | 1 | kind ([`ChangeKind::code`]) |
//! | 9 | 7 | reserved, zero |
//! | 16 | 128 | transfer (all zero for `account_created`) |
//! | 144 | 128 | debit account after the change, or the account created |
//! | 272 | 128 | credit account after the change (all zero for `account_created`) |

use crate::codec::{
    DecodeError, RECORD_SIZE, decode_account, decode_transfer, encode_account, encode_transfer,
};
use crate::records::{Account, Transfer};
use std::fmt;

/// Bytes of one encoded change event.
pub const CHANGE_EVENT_SIZE: usize = 400;

/// Largest number of events one `get_change_events` call answers.
pub const CHANGE_EVENTS_LIMIT_MAX: usize = 8_190;

/// What a change event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A single-phase transfer moved money.
    SinglePhase,
    /// A pending transfer reserved money.
    TwoPhasePending,
    /// A pending transfer was posted (the event's transfer is the post).
    TwoPhasePosted,
    /// A pending transfer was voided (the event's transfer is the void).
    TwoPhaseVoided,
    /// A pending transfer's timeout ran out (the event's transfer is the pending one,
    /// the event's timestamp the instant it expired).
    TwoPhaseExpired,
    /// A refund moved money back.
    Refund,
    /// An account was created (the event carries the account, no transfer).
    AccountCreated,
}

impl ChangeKind {
    /// Every kind, in code order.
    pub const ALL: [ChangeKind; 7] = [
        ChangeKind::SinglePhase,
        ChangeKind::TwoPhasePending,
        ChangeKind::TwoPhasePosted,
        ChangeKind::TwoPhaseVoided,
        ChangeKind::TwoPhaseExpired,
        ChangeKind::Refund,
        ChangeKind::AccountCreated,
    ];

    /// The kind's name in JSON and on the wire (`single_phase`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::SinglePhase => "single_phase",
            ChangeKind::TwoPhasePending => "two_phase_pending",
            ChangeKind::TwoPhasePosted => "two_phase_posted",
            ChangeKind::TwoPhaseVoided => "two_phase_voided",
            ChangeKind::TwoPhaseExpired => "two_phase_expired",
            ChangeKind::Refund => "refund",
            ChangeKind::AccountCreated => "account_created",
        }
    }

    /// The kind named `name`, if any.
    pub fn from_name(name: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The kind's stable numeric code (1–7), as stored and sent.
    pub fn code(self) -> u8 {
        match self {
            ChangeKind::SinglePhase => 1,
            ChangeKind::TwoPhasePending => 2,
            ChangeKind::TwoPhasePosted => 3,
            ChangeKind::TwoPhaseVoided => 4,
            ChangeKind::TwoPhaseExpired => 5,
            ChangeKind::Refund => 6,
            ChangeKind::AccountCreated => 7,
        }
    }

    /// The kind with numeric code `code`, if any.
    pub fn from_code(code: u8) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|kind| kind.code() == code)
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChangeEvent {
    /// When it was committed: unique, and increasing in commit order. For a transfer
    /// event, the transfer's timestamp, except for `two_phase_expired`: the instant the
    /// pending transfer expired. For `account_created`, the account's timestamp.
    pub timestamp: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The transfer as stored (for `two_phase_expired`, the pending transfer); all zero
    /// for `account_created`.
    pub transfer: Transfer,
    /// The debit account right after the change; for `account_created`, the account.
    pub debit_account: Account,
    /// The credit account right after the change; all zero for `account_created`.
    pub credit_account: Account,
}

impl ChangeEvent {
    /// The `account_created` event of `account` (as stored, with its timestamp).
    pub fn account_created(account: Account) -> ChangeEvent {
        ChangeEvent {
            timestamp: account.timestamp,
            kind: ChangeKind::AccountCreated,
            transfer: Transfer::default(),
            debit_account: account,
            credit_account: Account::default(),
        }
    }
}

/// Why bytes are not a valid change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeDecodeError {
    /// The kind byte names no kind.
    UnknownKind(u8),
    /// A reserved byte is not zero.
    ReservedNotZero,
    /// An embedded record is invalid.
    Record(DecodeError),
}

impl fmt::Display for ChangeDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeDecodeError::UnknownKind(code) => write!(f, "unknown change kind {code}"),
            ChangeDecodeError::ReservedNotZero => f.write_str("reserved bytes are not zero"),
            ChangeDecodeError::Record(error) => write!(f, "change event record: {error}"),
        }
    }
}

impl std::error::Error for ChangeDecodeError {}

/// Encodes `event` into its fixed layout.
pub fn encode_change(event: &ChangeEvent, out: &mut [u8; CHANGE_EVENT_SIZE]) {
    out[0..8].copy_from_slice(&event.timestamp.to_le_bytes());
    out[8] = event.kind.code();
    out[9..16].fill(0);
    let mut record = [0u8; RECORD_SIZE];
    encode_transfer(&event.transfer, &mut record);
    out[16..144].copy_from_slice(&record);
    encode_account(&event.debit_account, &mut record);
    out[144..272].copy_from_slice(&record);
    encode_account(&event.credit_account, &mut record);
    out[272..400].copy_from_slice(&record);
}

/// Decodes one event from its fixed layout; strict, like the record decoders.
pub fn decode_change(bytes: &[u8; CHANGE_EVENT_SIZE]) -> Result<ChangeEvent, ChangeDecodeError> {
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&bytes[0..8]);
    let kind = ChangeKind::from_code(bytes[8]).ok_or(ChangeDecodeError::UnknownKind(bytes[8]))?;
    if bytes[9..16].iter().any(|&byte| byte != 0) {
        return Err(ChangeDecodeError::ReservedNotZero);
    }
    let record = |start: usize| -> &[u8; RECORD_SIZE] {
        bytes[start..start + RECORD_SIZE]
            .try_into()
            .expect("a fixed slice of the fixed layout")
    };
    Ok(ChangeEvent {
        timestamp: u64::from_le_bytes(timestamp),
        kind,
        transfer: decode_transfer(record(16)).map_err(ChangeDecodeError::Record)?,
        debit_account: decode_account(record(144)).map_err(ChangeDecodeError::Record)?,
        credit_account: decode_account(record(272)).map_err(ChangeDecodeError::Record)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountFlags, TransferFlags};

    #[test]
    fn kinds_round_trip_by_name_and_code() {
        for kind in ChangeKind::ALL {
            assert_eq!(ChangeKind::from_name(kind.name()), Some(kind));
            assert_eq!(ChangeKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ChangeKind::from_code(0), None);
        assert_eq!(ChangeKind::from_name("expired"), None);
    }

    #[test]
    fn events_round_trip_and_decoding_is_strict() {
        let event = ChangeEvent {
            timestamp: 42,
            kind: ChangeKind::TwoPhasePending,
            transfer: Transfer {
                id: 7,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 300,
                timeout: 5,
                ledger: 1,
                code: 9,
                flags: TransferFlags::PENDING,
                timestamp: 42,
                ..Transfer::default()
            },
            debit_account: Account {
                id: 1,
                debits_pending: 300,
                ledger: 1,
                code: 1,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                ..Account::default()
            },
            credit_account: Account {
                id: 2,
                credits_pending: 300,
                ledger: 1,
                code: 1,
                ..Account::default()
            },
        };
        let mut bytes = [0u8; CHANGE_EVENT_SIZE];
        encode_change(&event, &mut bytes);
        assert_eq!(decode_change(&bytes), Ok(event));
        let mut bad = bytes;
        bad[8] = 99;
        assert_eq!(decode_change(&bad), Err(ChangeDecodeError::UnknownKind(99)));
        let mut bad = bytes;
        bad[12] = 1;
        assert_eq!(decode_change(&bad), Err(ChangeDecodeError::ReservedNotZero));
    }
}
