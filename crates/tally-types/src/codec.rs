//! Fixed 128-byte little-endian layouts of [`Account`] and [`Transfer`], shared by the
//! write-ahead log and snapshots. `docs/log-format.md` repeats these tables.
//!
//! Account (128 bytes):
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | id |
//! | 16 | 16 | debits_pending |
//! | 32 | 16 | debits_posted |
//! | 48 | 16 | credits_pending |
//! | 64 | 16 | credits_posted |
//! | 80 | 16 | user_data_128 |
//! | 96 | 8 | user_data_64 |
//! | 104 | 4 | user_data_32 |
//! | 108 | 4 | reserved, zero |
//! | 112 | 4 | ledger |
//! | 116 | 2 | code |
//! | 118 | 2 | flags |
//! | 120 | 8 | timestamp |
//!
//! Transfer (128 bytes):
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | id |
//! | 16 | 16 | debit_account_id |
//! | 32 | 16 | credit_account_id |
//! | 48 | 16 | amount |
//! | 64 | 16 | pending_id (refund_of for refunds) |
//! | 80 | 16 | user_data_128 |
//! | 96 | 8 | user_data_64 |
//! | 104 | 4 | user_data_32 |
//! | 108 | 4 | timeout |
//! | 112 | 4 | ledger |
//! | 116 | 2 | code |
//! | 118 | 2 | flags |
//! | 120 | 8 | timestamp |
//!
//! The layout version is [`RECORD_LAYOUT_VERSION`]; containers (log, snapshot) carry it
//! in their headers. Decoding is strict: unknown flag bits or non-zero reserved bytes are
//! errors, never silently dropped.

use crate::flags::{AccountFlags, TransferFlags};
use crate::records::{Account, Transfer};
use std::fmt;

/// Bytes of one encoded account or transfer.
pub const RECORD_SIZE: usize = 128;

/// Version of the record layouts above; bump on any change.
pub const RECORD_LAYOUT_VERSION: u16 = 1;

/// Why 128 bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A flags field has bits this build does not know.
    UnknownFlags {
        /// The flags field.
        field: &'static str,
        /// Its value.
        bits: u16,
    },
    /// Reserved bytes are not zero.
    ReservedNotZero,
    /// The buffer is not one record long.
    WrongLength {
        /// Bytes of a record.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A packed record runs past the end of its buffer.
    Truncated,
    /// A packed varint is longer than its field allows.
    FieldTooWide {
        /// The field.
        field: &'static str,
    },
    /// A packed optional field is marked present but is zero (never written so).
    PresentButZero {
        /// The field.
        field: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownFlags { field, bits } => {
                write!(f, "{field} has unknown flag bits {bits:#06x}")
            }
            DecodeError::ReservedNotZero => f.write_str("reserved bytes are not zero"),
            DecodeError::WrongLength { expected, actual } => {
                write!(f, "record is {actual} bytes, expected {expected}")
            }
            DecodeError::Truncated => f.write_str("packed record runs past its chunk"),
            DecodeError::FieldTooWide { field } => {
                write!(f, "packed {field} is wider than its field")
            }
            DecodeError::PresentButZero { field } => {
                write!(f, "packed {field} is marked present but is zero")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

struct Writer<'a> {
    bytes: &'a mut [u8; RECORD_SIZE],
    offset: usize,
}

impl Writer<'_> {
    fn put(&mut self, field: &[u8]) {
        self.bytes[self.offset..self.offset + field.len()].copy_from_slice(field);
        self.offset += field.len();
    }
}

struct Reader<'a> {
    bytes: &'a [u8; RECORD_SIZE],
    offset: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut field = [0u8; N];
        field.copy_from_slice(&self.bytes[self.offset..self.offset + N]);
        self.offset += N;
        field
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
}

/// Encodes an account into its 128-byte layout.
pub fn encode_account(account: &Account, out: &mut [u8; RECORD_SIZE]) {
    let mut w = Writer {
        bytes: out,
        offset: 0,
    };
    w.put(&account.id.to_le_bytes());
    w.put(&account.debits_pending.to_le_bytes());
    w.put(&account.debits_posted.to_le_bytes());
    w.put(&account.credits_pending.to_le_bytes());
    w.put(&account.credits_posted.to_le_bytes());
    w.put(&account.user_data_128.to_le_bytes());
    w.put(&account.user_data_64.to_le_bytes());
    w.put(&account.user_data_32.to_le_bytes());
    w.put(&[0u8; 4]);
    w.put(&account.ledger.to_le_bytes());
    w.put(&account.code.to_le_bytes());
    w.put(&account.flags.bits().to_le_bytes());
    w.put(&account.timestamp.to_le_bytes());
    debug_assert_eq!(w.offset, RECORD_SIZE);
}

/// Decodes an account from its 128-byte layout.
pub fn decode_account(bytes: &[u8; RECORD_SIZE]) -> Result<Account, DecodeError> {
    let mut r = Reader { bytes, offset: 0 };
    let id = r.u128();
    let debits_pending = r.u128();
    let debits_posted = r.u128();
    let credits_pending = r.u128();
    let credits_posted = r.u128();
    let user_data_128 = r.u128();
    let user_data_64 = r.u64();
    let user_data_32 = r.u32();
    if r.u32() != 0 {
        return Err(DecodeError::ReservedNotZero);
    }
    let ledger = r.u32();
    let code = r.u16();
    let flag_bits = r.u16();
    let flags = AccountFlags::from_bits(flag_bits).map_err(|_| DecodeError::UnknownFlags {
        field: "account.flags",
        bits: flag_bits,
    })?;
    let timestamp = r.u64();
    debug_assert_eq!(r.offset, RECORD_SIZE);
    Ok(Account {
        id,
        debits_pending,
        debits_posted,
        credits_pending,
        credits_posted,
        user_data_128,
        user_data_64,
        user_data_32,
        ledger,
        code,
        flags,
        timestamp,
    })
}

/// Encodes a transfer into its 128-byte layout.
pub fn encode_transfer(transfer: &Transfer, out: &mut [u8; RECORD_SIZE]) {
    let mut w = Writer {
        bytes: out,
        offset: 0,
    };
    w.put(&transfer.id.to_le_bytes());
    w.put(&transfer.debit_account_id.to_le_bytes());
    w.put(&transfer.credit_account_id.to_le_bytes());
    w.put(&transfer.amount.to_le_bytes());
    w.put(&transfer.pending_id.to_le_bytes());
    w.put(&transfer.user_data_128.to_le_bytes());
    w.put(&transfer.user_data_64.to_le_bytes());
    w.put(&transfer.user_data_32.to_le_bytes());
    w.put(&transfer.timeout.to_le_bytes());
    w.put(&transfer.ledger.to_le_bytes());
    w.put(&transfer.code.to_le_bytes());
    w.put(&transfer.flags.bits().to_le_bytes());
    w.put(&transfer.timestamp.to_le_bytes());
    debug_assert_eq!(w.offset, RECORD_SIZE);
}

/// Decodes a transfer from its 128-byte layout.
pub fn decode_transfer(bytes: &[u8; RECORD_SIZE]) -> Result<Transfer, DecodeError> {
    let mut r = Reader { bytes, offset: 0 };
    let id = r.u128();
    let debit_account_id = r.u128();
    let credit_account_id = r.u128();
    let amount = r.u128();
    let pending_id = r.u128();
    let user_data_128 = r.u128();
    let user_data_64 = r.u64();
    let user_data_32 = r.u32();
    let timeout = r.u32();
    let ledger = r.u32();
    let code = r.u16();
    let flag_bits = r.u16();
    let flags = TransferFlags::from_bits(flag_bits).map_err(|_| DecodeError::UnknownFlags {
        field: "transfer.flags",
        bits: flag_bits,
    })?;
    let timestamp = r.u64();
    debug_assert_eq!(r.offset, RECORD_SIZE);
    Ok(Transfer {
        id,
        debit_account_id,
        credit_account_id,
        amount,
        pending_id,
        user_data_128,
        user_data_64,
        user_data_32,
        timeout,
        ledger,
        code,
        flags,
        timestamp,
    })
}

/// Borrows 128 bytes out of a longer slice, for decoders walking a buffer.
pub fn record_at(bytes: &[u8], index: usize) -> Result<&[u8; RECORD_SIZE], DecodeError> {
    let start = index * RECORD_SIZE;
    bytes
        .get(start..start + RECORD_SIZE)
        .and_then(|slice| slice.try_into().ok())
        .ok_or(DecodeError::WrongLength {
            expected: start + RECORD_SIZE,
            actual: bytes.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_account() -> impl Strategy<Value = Account> {
        (
            any::<[u128; 6]>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            0u16..8,
            any::<u64>(),
        )
            .prop_map(|(w, ud64, ud32, ledger, code, flags, timestamp)| Account {
                id: w[0],
                debits_pending: w[1],
                debits_posted: w[2],
                credits_pending: w[3],
                credits_posted: w[4],
                user_data_128: w[5],
                user_data_64: ud64,
                user_data_32: ud32,
                ledger,
                code,
                flags: AccountFlags::from_bits(flags).expect("valid bits"),
                timestamp,
            })
    }

    fn any_transfer() -> impl Strategy<Value = Transfer> {
        (
            any::<[u128; 6]>(),
            any::<u64>(),
            any::<[u32; 3]>(),
            any::<u16>(),
            0u16..32,
            any::<u64>(),
        )
            .prop_map(|(w, ud64, n, code, flags, timestamp)| Transfer {
                id: w[0],
                debit_account_id: w[1],
                credit_account_id: w[2],
                amount: w[3],
                pending_id: w[4],
                user_data_128: w[5],
                user_data_64: ud64,
                user_data_32: n[0],
                timeout: n[1],
                ledger: n[2],
                code,
                flags: TransferFlags::from_bits(flags).expect("valid bits"),
                timestamp,
            })
    }

    proptest! {
        #[test]
        fn account_round_trips(account in any_account()) {
            let mut bytes = [0u8; RECORD_SIZE];
            encode_account(&account, &mut bytes);
            prop_assert_eq!(decode_account(&bytes), Ok(account));
        }

        #[test]
        fn transfer_round_trips(transfer in any_transfer()) {
            let mut bytes = [0u8; RECORD_SIZE];
            encode_transfer(&transfer, &mut bytes);
            prop_assert_eq!(decode_transfer(&bytes), Ok(transfer));
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::array::uniform32(any::<u8>())) {
            let mut record = [0u8; RECORD_SIZE];
            for chunk in record.chunks_mut(32) {
                chunk.copy_from_slice(&bytes);
            }
            let _ = decode_account(&record);
            let _ = decode_transfer(&record);
        }
    }

    #[test]
    fn layout_is_little_endian_at_the_documented_offsets() {
        let transfer = Transfer {
            id: 1,
            amount: 0x0102,
            ledger: 156,
            code: 7,
            flags: TransferFlags::PENDING,
            timestamp: 9,
            ..Transfer::default()
        };
        let mut bytes = [0u8; RECORD_SIZE];
        encode_transfer(&transfer, &mut bytes);
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[48..50], &[0x02, 0x01]);
        assert_eq!(&bytes[112..116], &156u32.to_le_bytes());
        assert_eq!(&bytes[116..118], &7u16.to_le_bytes());
        assert_eq!(&bytes[118..120], &2u16.to_le_bytes());
        assert_eq!(bytes[120], 9);
    }

    #[test]
    fn strict_decoding_rejects_unknown_bits_and_reserved_bytes() {
        let mut bytes = [0u8; RECORD_SIZE];
        bytes[118] = 0x80;
        bytes[119] = 0x80;
        assert!(matches!(
            decode_account(&bytes),
            Err(DecodeError::UnknownFlags { .. })
        ));
        assert!(matches!(
            decode_transfer(&bytes),
            Err(DecodeError::UnknownFlags { .. })
        ));
        let mut bytes = [0u8; RECORD_SIZE];
        bytes[109] = 1;
        assert_eq!(decode_account(&bytes), Err(DecodeError::ReservedNotZero));
    }
}
