//! Change events (docs/spec.md §2, "Change events"): every committed change, one event
//! each, in one total order by timestamp, with the balances of both accounts right
//! after it.
//!
//! Encoding of one event ([`encode_change`]): compact, because a busy ledger writes
//! one per committed change. Every integer is an unsigned LEB128 varint (7 bits a byte,
//! low bits first; at most 19 bytes for a u128, 10 for a u64), in this order:
//! 1. the timestamp, as the difference from `previous` (the timestamp of the event
//!    before it, or any earlier one both sides agree on);
//! 2. the kind code (1 byte);
//! 3. for `account_created`: the account's id, user_data_128, user_data_64,
//!    user_data_32, ledger, code, flags (its balances are zero and its timestamp is the
//!    event's), and for an imported account the event's timestamp minus its own;
//! 4. for a transfer kind: the transfer's id, debit_account_id, credit_account_id,
//!    amount, pending_id, user_data_128, user_data_64, user_data_32, timeout, ledger,
//!    code, flags, and the event's timestamp minus the transfer's; then for the debit
//!    and then the credit account: the four balances (debits_pending, debits_posted,
//!    credits_pending, credits_posted), user_data_128, user_data_64, user_data_32, code,
//!    flags and timestamp. An account's id and ledger are the transfer's.
//!
//! A typical payment takes about 90 bytes instead of the 400 of three raw records.

use crate::flags::{AccountFlags, TransferFlags};
use crate::packed::{Packed, gather_groups};
use crate::records::{Account, Transfer};
use std::fmt;

/// The most bytes one encoded change event takes: the kind's byte, then at their widest
/// 7 fields of 64 bits (10 bytes each), 16 of 128 (19), 5 of 32 (5) and 6 of 16 (3).
pub const CHANGE_EVENT_BYTES_MAX: usize = 1 + 7 * 10 + 16 * 19 + 5 * 5 + 6 * 3;

/// Largest number of events one `get_change_events` call answers.
pub const CHANGE_EVENTS_LIMIT_MAX: usize = 8_190;

/// How many events a `get_change_events` call asking for `limit` reads: 0 asks for
/// the most ([`CHANGE_EVENTS_LIMIT_MAX`]), as a filter's limit does; `None` above it.
pub fn change_events_limit(limit: usize) -> Option<usize> {
    match limit {
        0 => Some(CHANGE_EVENTS_LIMIT_MAX),
        1..=CHANGE_EVENTS_LIMIT_MAX => Some(limit),
        _ => None,
    }
}

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
    /// pending transfer expired. For `account_created`, the account's timestamp. An
    /// imported record keeps its own timestamp; its event has the stamp of its place
    /// in the log.
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
    /// The bytes end inside the event.
    Truncated,
    /// A varint is longer than its type allows, or overflows it.
    BadNumber,
    /// A flags field has bits this build does not know.
    UnknownFlags(u16),
    /// A timestamp difference goes below zero.
    BadTimestamp,
}

impl fmt::Display for ChangeDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeDecodeError::UnknownKind(code) => write!(f, "unknown change kind {code}"),
            ChangeDecodeError::Truncated => f.write_str("the event is cut short"),
            ChangeDecodeError::BadNumber => f.write_str("a number is malformed or too large"),
            ChangeDecodeError::UnknownFlags(bits) => write!(f, "unknown flag bits {bits:#x}"),
            ChangeDecodeError::BadTimestamp => f.write_str("a timestamp goes below zero"),
        }
    }
}

impl std::error::Error for ChangeDecodeError {}

/// Appends the encoding of `event` to `out`; `previous` is a timestamp at most
/// `event.timestamp` that the decoder will be given too (the event before it).
pub fn encode_change(event: &ChangeEvent, previous: u64, out: &mut Vec<u8>) {
    assert!(previous <= event.timestamp, "events are encoded in order");
    let mut packed = Packed::<CHANGE_EVENT_BYTES_MAX>::new();
    packed.put(u128::from(event.timestamp - previous));
    packed.push(event.kind.code());
    if event.kind == ChangeKind::AccountCreated {
        let a = &event.debit_account;
        // A created account's balances are zero and its stamp is the event's: neither
        // is stored.
        debug_assert_eq!(
            (
                a.debits_pending,
                a.debits_posted,
                a.credits_pending,
                a.credits_posted
            ),
            (0, 0, 0, 0),
            "a created account has no balances"
        );
        debug_assert!(
            a.timestamp == event.timestamp
                || (a.flags.contains(AccountFlags::IMPORTED) && a.timestamp < event.timestamp),
            "an account is created at its event, or imported before it"
        );
        for value in [a.id, a.user_data_128, u128::from(a.user_data_64)] {
            packed.put(value);
        }
        for value in [
            a.user_data_32,
            a.ledger,
            u32::from(a.code),
            u32::from(a.flags.bits()),
        ] {
            packed.put(u128::from(value));
        }
        if a.flags.contains(AccountFlags::IMPORTED) {
            packed.put(u128::from(event.timestamp - a.timestamp));
        }
        out.extend_from_slice(packed.as_bytes());
        return;
    }
    let t = &event.transfer;
    for value in [
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.amount,
        t.pending_id,
        t.user_data_128,
    ] {
        packed.put(value);
    }
    packed.put(u128::from(t.user_data_64));
    for value in [
        t.user_data_32,
        t.timeout,
        t.ledger,
        u32::from(t.code),
        u32::from(t.flags.bits()),
    ] {
        packed.put(u128::from(value));
    }
    assert!(
        t.timestamp <= event.timestamp,
        "a change comes after its transfer"
    );
    packed.put(u128::from(event.timestamp - t.timestamp));
    for a in [&event.debit_account, &event.credit_account] {
        let balances = [
            a.debits_pending,
            a.debits_posted,
            a.credits_pending,
            a.credits_posted,
        ];
        for value in balances
            .into_iter()
            .chain([a.user_data_128, u128::from(a.user_data_64)])
        {
            packed.put(value);
        }
        for value in [a.user_data_32, u32::from(a.code), u32::from(a.flags.bits())] {
            packed.put(u128::from(value));
        }
        packed.put(u128::from(a.timestamp));
    }
    out.extend_from_slice(packed.as_bytes());
}

/// Reads varints off the front of a byte slice.
/// `value` when it fits in `BITS` bits.
#[inline]
fn fits<const BITS: u32>(value: u128) -> Result<u128, ChangeDecodeError> {
    if BITS < 128 && value >> BITS != 0 {
        return Err(ChangeDecodeError::BadNumber);
    }
    Ok(value)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    /// A LEB128 number of at most `BITS` bits (so of at most `BITS / 7` bytes,
    /// rounded up).
    #[inline]
    fn number<const BITS: u32>(&mut self) -> Result<u128, ChangeDecodeError> {
        match self.bytes.get(self.at) {
            Some(&byte) if byte < 0x80 => {
                self.at += 1;
                Ok(u128::from(byte))
            }
            Some(_) => self.number_wide::<BITS>(),
            None => Err(ChangeDecodeError::Truncated),
        }
    }

    /// Eight bytes a step (56 bits) while eight are left, then a byte at a time.
    #[inline(never)]
    fn number_wide<const BITS: u32>(&mut self) -> Result<u128, ChangeDecodeError> {
        let mut value: u128 = 0;
        for shift in [0, 56, 112] {
            let Some(chunk) = self.bytes.get(self.at..self.at + 8) else {
                return self.number_bytes::<BITS>(value, shift);
            };
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let ends = !word & 0x8080_8080_8080_8080;
            let len = if ends == 0 {
                8
            } else {
                ends.trailing_zeros() / 8 + 1
            };
            if shift + 7 * (len - 1) >= BITS {
                return Err(ChangeDecodeError::BadNumber);
            }
            let groups = gather_groups(if len == 8 {
                word
            } else {
                word & ((1 << (8 * len)) - 1)
            });
            // Only 16 bits fit above the first 112.
            if shift == 112 && groups >> 16 != 0 {
                return Err(ChangeDecodeError::BadNumber);
            }
            value |= u128::from(groups) << shift;
            self.at += len as usize;
            if ends != 0 {
                return fits::<BITS>(value);
            }
        }
        Err(ChangeDecodeError::BadNumber)
    }

    /// The rest of a number, a byte at a time, from bit `shift` on.
    fn number_bytes<const BITS: u32>(
        &mut self,
        mut value: u128,
        mut shift: u32,
    ) -> Result<u128, ChangeDecodeError> {
        while shift < BITS {
            let byte = self.byte()?;
            let part = u128::from(byte & 0x7f);
            if (part << shift) >> shift != part {
                return Err(ChangeDecodeError::BadNumber);
            }
            value |= part << shift;
            if byte & 0x80 == 0 {
                return fits::<BITS>(value);
            }
            shift += 7;
        }
        Err(ChangeDecodeError::BadNumber)
    }

    fn byte(&mut self) -> Result<u8, ChangeDecodeError> {
        let byte = *self
            .bytes
            .get(self.at)
            .ok_or(ChangeDecodeError::Truncated)?;
        self.at += 1;
        Ok(byte)
    }
    fn u128(&mut self) -> Result<u128, ChangeDecodeError> {
        self.number::<128>()
    }
    fn u64(&mut self) -> Result<u64, ChangeDecodeError> {
        Ok(self.number::<64>()? as u64)
    }
    fn u32(&mut self) -> Result<u32, ChangeDecodeError> {
        Ok(self.number::<32>()? as u32)
    }
    fn u16(&mut self) -> Result<u16, ChangeDecodeError> {
        Ok(self.number::<16>()? as u16)
    }
    fn account_flags(&mut self) -> Result<AccountFlags, ChangeDecodeError> {
        let bits = self.u16()?;
        AccountFlags::from_bits(bits).map_err(|_| ChangeDecodeError::UnknownFlags(bits))
    }
}

/// Decodes one event from the front of `bytes`, encoded against timestamp `previous`;
/// returns it and the bytes it took.
pub fn decode_change(
    bytes: &[u8],
    previous: u64,
) -> Result<(ChangeEvent, usize), ChangeDecodeError> {
    let mut c = Cursor { bytes, at: 0 };
    let timestamp = previous
        .checked_add(c.u64()?)
        .ok_or(ChangeDecodeError::BadTimestamp)?;
    let code = *bytes.get(c.at).ok_or(ChangeDecodeError::Truncated)?;
    c.at += 1;
    let kind = ChangeKind::from_code(code).ok_or(ChangeDecodeError::UnknownKind(code))?;
    if kind == ChangeKind::AccountCreated {
        let mut account = Account {
            id: c.u128()?,
            user_data_128: c.u128()?,
            user_data_64: c.u64()?,
            user_data_32: c.u32()?,
            ledger: c.u32()?,
            code: c.u16()?,
            flags: c.account_flags()?,
            timestamp,
            ..Account::default()
        };
        if account.flags.contains(AccountFlags::IMPORTED) {
            account.timestamp = timestamp
                .checked_sub(c.u64()?)
                .ok_or(ChangeDecodeError::BadTimestamp)?;
        }
        return Ok((
            ChangeEvent {
                timestamp,
                ..ChangeEvent::account_created(account)
            },
            c.at,
        ));
    }
    let mut transfer = Transfer {
        id: c.u128()?,
        debit_account_id: c.u128()?,
        credit_account_id: c.u128()?,
        amount: c.u128()?,
        pending_id: c.u128()?,
        user_data_128: c.u128()?,
        user_data_64: c.u64()?,
        user_data_32: c.u32()?,
        timeout: c.u32()?,
        ledger: c.u32()?,
        code: c.u16()?,
        ..Transfer::default()
    };
    let bits = c.u16()?;
    transfer.flags =
        TransferFlags::from_bits(bits).map_err(|_| ChangeDecodeError::UnknownFlags(bits))?;
    transfer.timestamp = timestamp
        .checked_sub(c.u64()?)
        .ok_or(ChangeDecodeError::BadTimestamp)?;
    let mut account = |id: u128| -> Result<Account, ChangeDecodeError> {
        Ok(Account {
            id,
            debits_pending: c.u128()?,
            debits_posted: c.u128()?,
            credits_pending: c.u128()?,
            credits_posted: c.u128()?,
            user_data_128: c.u128()?,
            user_data_64: c.u64()?,
            user_data_32: c.u32()?,
            ledger: transfer.ledger,
            code: c.u16()?,
            flags: c.account_flags()?,
            timestamp: c.u64()?,
        })
    };
    let debit_account = account(transfer.debit_account_id)?;
    let credit_account = account(transfer.credit_account_id)?;
    let event = ChangeEvent {
        timestamp,
        kind,
        transfer,
        debit_account,
        credit_account,
    };
    Ok((event, c.at))
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
    fn imported_records_keep_their_own_timestamps_in_events() {
        let account = Account {
            id: 4,
            ledger: 840,
            code: 1,
            flags: AccountFlags::IMPORTED,
            timestamp: 1_000,
            ..Account::default()
        };
        let created = ChangeEvent {
            timestamp: 1_796_000_000_000_000_000,
            ..ChangeEvent::account_created(account)
        };
        let single = ChangeEvent {
            timestamp: 1_796_000_000_000_000_001,
            kind: ChangeKind::SinglePhase,
            transfer: Transfer {
                id: 9,
                debit_account_id: 4,
                credit_account_id: 5,
                amount: 1,
                ledger: 840,
                code: 1,
                flags: TransferFlags::IMPORTED,
                timestamp: 2_000,
                ..Transfer::default()
            },
            debit_account: account,
            credit_account: Account { id: 5, ..account },
        };
        let mut bytes = Vec::new();
        encode_change(&created, 0, &mut bytes);
        let first = bytes.len();
        encode_change(&single, created.timestamp, &mut bytes);
        let (decoded, used) = decode_change(&bytes, 0).expect("decodes");
        assert_eq!((decoded, used), (created, first));
        let (decoded, _) = decode_change(&bytes[first..], created.timestamp).expect("decodes");
        assert_eq!(decoded, single);
    }

    #[test]
    fn events_round_trip_compactly_and_decoding_is_strict() {
        let pending = ChangeEvent {
            timestamp: 1_796_000_000_000_000_042,
            kind: ChangeKind::TwoPhasePending,
            transfer: Transfer {
                id: u128::MAX - 1,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 300,
                timeout: 5,
                ledger: 1,
                code: 9,
                flags: TransferFlags::PENDING,
                timestamp: 1_796_000_000_000_000_042,
                ..Transfer::default()
            },
            debit_account: Account {
                id: 1,
                debits_pending: 300,
                ledger: 1,
                code: 1,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                timestamp: 1_796_000_000_000_000_001,
                ..Account::default()
            },
            credit_account: Account {
                id: 2,
                credits_pending: 300,
                user_data_64: u64::MAX,
                ledger: 1,
                code: 1,
                timestamp: 1_796_000_000_000_000_002,
                ..Account::default()
            },
        };
        let created = ChangeEvent::account_created(Account {
            id: 3,
            ledger: 978,
            code: 7,
            timestamp: 1_796_000_000_000_000_043,
            ..Account::default()
        });
        let mut bytes = Vec::new();
        encode_change(&pending, 0, &mut bytes);
        let first = bytes.len();
        encode_change(&created, pending.timestamp, &mut bytes);
        assert!(
            first < 120 && bytes.len() - first < 16,
            "{first} {}",
            bytes.len()
        );
        assert!(bytes.len() <= 2 * CHANGE_EVENT_BYTES_MAX);
        let (decoded, used) = decode_change(&bytes, 0).expect("decodes");
        assert_eq!((decoded, used), (pending, first));
        let (decoded, used) = decode_change(&bytes[first..], pending.timestamp).expect("decodes");
        assert_eq!((decoded, first + used), (created, bytes.len()));
        for cut in 0..first {
            assert!(decode_change(&bytes[..cut], 0).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[9] = 99;
        assert!(decode_change(&bad, 0).is_err());
        // A u64 varint of 11 bytes, or a u128 one past 2^128, is malformed.
        let mut long = vec![0xffu8; 10];
        long.push(0x01);
        assert_eq!(
            decode_change(&long, 0).map(|_| ()),
            Err(ChangeDecodeError::BadNumber)
        );
    }

    /// The codec's plain definition: LEB128 a byte at a time, at most `bits` bits.
    fn reference_put(out: &mut Vec<u8>, mut value: u128) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn reference_number(bytes: &[u8], bits: u32) -> Result<(u128, usize), ChangeDecodeError> {
        let (mut value, mut shift) = (0u128, 0);
        for (at, &byte) in bytes.iter().enumerate() {
            if shift >= bits {
                return Err(ChangeDecodeError::BadNumber);
            }
            let part = u128::from(byte & 0x7f);
            if (part << shift) >> shift != part {
                return Err(ChangeDecodeError::BadNumber);
            }
            value |= part << shift;
            if byte & 0x80 == 0 {
                if bits < 128 && value >> bits != 0 {
                    return Err(ChangeDecodeError::BadNumber);
                }
                return Ok((value, at + 1));
            }
            shift += 7;
        }
        if shift >= bits {
            return Err(ChangeDecodeError::BadNumber);
        }
        Err(ChangeDecodeError::Truncated)
    }

    fn any_width() -> impl proptest::strategy::Strategy<Value = u128> {
        use proptest::prelude::*;
        (any::<u128>(), 0u32..=128).prop_map(|(value, width)| match width {
            0 => 0,
            128 => value,
            _ => value & ((1u128 << width) - 1),
        })
    }

    proptest::proptest! {
        #[test]
        fn numbers_encode_as_plain_leb128(value in any_width()) {
            let mut packed = crate::packed::Packed::<19>::new();
            packed.put(value);
            let fast = packed.as_bytes();
            let mut plain = Vec::new();
            reference_put(&mut plain, value);
            proptest::prop_assert_eq!(fast, &plain[..]);
            let mut cursor = Cursor { bytes: fast, at: 0 };
            proptest::prop_assert_eq!(cursor.number::<128>(), Ok(value));
            proptest::prop_assert_eq!(cursor.at, fast.len());
        }

        #[test]
        fn numbers_decode_as_plain_leb128(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![1 => proptest::num::u8::ANY, 7 => 0x80u8..=0xff], 0..40),
            bits in proptest::prop_oneof![proptest::strategy::Just(16u32),
                proptest::strategy::Just(32), proptest::strategy::Just(64),
                proptest::strategy::Just(128)],
        ) {
            let mut cursor = Cursor { bytes: &bytes, at: 0 };
            let fast = match bits {
                16 => cursor.number::<16>(),
                32 => cursor.number::<32>(),
                64 => cursor.number::<64>(),
                _ => cursor.number::<128>(),
            };
            let fast = fast.map(|value| (value, cursor.at));
            proptest::prop_assert_eq!(fast, reference_number(&bytes, bits));
        }
    }

    #[test]
    fn the_widest_event_fits_the_bound() {
        let account = |id| Account {
            id,
            debits_pending: u128::MAX,
            debits_posted: u128::MAX,
            credits_pending: u128::MAX,
            credits_posted: u128::MAX,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            flags: AccountFlags::CLOSED,
            timestamp: u64::MAX,
        };
        let widest = ChangeEvent {
            timestamp: u64::MAX,
            kind: ChangeKind::TwoPhasePending,
            transfer: Transfer {
                id: u128::MAX,
                debit_account_id: u128::MAX - 1,
                credit_account_id: u128::MAX - 2,
                amount: u128::MAX,
                pending_id: u128::MAX,
                user_data_128: u128::MAX,
                user_data_64: u64::MAX,
                user_data_32: u32::MAX,
                timeout: u32::MAX,
                ledger: u32::MAX,
                code: u16::MAX,
                flags: TransferFlags::CLOSING_CREDIT,
                timestamp: 0,
            },
            debit_account: account(u128::MAX - 1),
            credit_account: account(u128::MAX - 2),
        };
        let mut bytes = Vec::new();
        encode_change(&widest, 0, &mut bytes);
        // Valid flags take fewer bytes than any 16-bit value could.
        assert!(
            (CHANGE_EVENT_BYTES_MAX - 8..=CHANGE_EVENT_BYTES_MAX).contains(&bytes.len()),
            "{}",
            bytes.len()
        );
        assert_eq!(decode_change(&bytes, 0), Ok((widest, bytes.len())));
    }
}
