//! The packed layout of a [`Transfer`]: what the state machine keeps in memory and what
//! snapshots (format 3) store. `docs/log-format.md` §3.6 repeats it.
//!
//! A transfer is 128 bytes in the fixed layout ([`crate::codec`]), but most of it is
//! zeros or small numbers (user data, pending id, timeout; ids and amounts far below
//! 2^128). Packed, a payment takes about 30 bytes:
//!
//! | field | bytes |
//! |---|---|
//! | presence | 1: bits 0–4 pending_id, user_data_128, _64, _32, timeout; 5–7 zero |
//! | id, debit_account_id, credit_account_id, amount | a varint each |
//! | pending_id, user_data_128/64/32, timeout | a varint each, only if its bit is set (never 0) |
//! | ledger, code, flags | a varint each |
//! | timestamp | 8, little-endian |
//!
//! A varint is unsigned LEB128: 7 bits a byte, least significant group first, the top
//! bit set on every byte but the last; at most 19 bytes for 128 bits. Records follow one
//! another with nothing between them.
//!
//! [`decode_transfer`] is strict (for bytes read from disk): a record that runs past its
//! buffer, a varint too long or too wide for its field, a presence bit set on a zero
//! value, a reserved presence bit or an unknown flag bit is an error.
//! [`decode_transfer_trusted`] skips those checks for bytes the caller wrote itself.

use crate::codec::DecodeError;
use crate::flags::TransferFlags;
use crate::records::Transfer;

const HAS_PENDING_ID: u8 = 1;
const HAS_USER_DATA_128: u8 = 1 << 1;
const HAS_USER_DATA_64: u8 = 1 << 2;
const HAS_USER_DATA_32: u8 = 1 << 3;
const HAS_TIMEOUT: u8 = 1 << 4;
const PRESENCE_KNOWN: u8 =
    HAS_PENDING_ID | HAS_USER_DATA_128 | HAS_USER_DATA_64 | HAS_USER_DATA_32 | HAS_TIMEOUT;

/// Bytes of the longest varint: 128 bits in 7-bit groups.
const VARINT_BYTES_MAX: usize = 19;

/// The longest packed record: the presence byte, nine varints and the 8-byte stamp.
pub const PACKED_TRANSFER_BYTES_MAX: usize = 1 + 9 * VARINT_BYTES_MAX + 8;

/// Records per run of packed transfers: a chunk of the state machine's transfer store,
/// and a chunk of a snapshot's transfers section, so that a snapshot writes the store's
/// chunks as they are.
pub const PACKED_RUN_RECORDS: usize = 1 << 16;

/// One record of at most `N` bytes packed on the stack, then appended in one copy:
/// pushing byte by byte onto a vector paid a capacity check per byte.
pub(crate) struct Packed<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

/// The low 56 bits of `value` as eight 7-bit groups, one a byte, least significant
/// first, every top bit clear: halves of 28 bits into 32-bit lanes, quarters of 14 into
/// 16-bit lanes, then groups of 7 into bytes.
#[inline]
fn spread_groups(value: u64) -> u64 {
    let x = value & 0x00ff_ffff_ffff_ffff;
    let x = ((x & 0x00ff_ffff_f000_0000) << 4) | (x & 0x0fff_ffff);
    let x = ((x & 0x0fff_c000_0fff_c000) << 2) | (x & 0x0000_3fff_0000_3fff);
    ((x & 0x3f80_3f80_3f80_3f80) << 1) | (x & 0x007f_007f_007f_007f)
}

/// The inverse of [`spread_groups`]: the 7-bit groups in the eight bytes of `word`
/// (top bits ignored), least significant first, as one 56-bit number.
#[inline]
pub(crate) fn gather_groups(word: u64) -> u64 {
    let x = word & 0x7f7f_7f7f_7f7f_7f7f;
    let x = ((x & 0x7f00_7f00_7f00_7f00) >> 1) | (x & 0x007f_007f_007f_007f);
    let x = ((x & 0x3fff_0000_3fff_0000) >> 2) | (x & 0x0000_3fff_0000_3fff);
    ((x & 0x0fff_ffff_0000_0000) >> 4) | (x & 0x0fff_ffff)
}

impl<const N: usize> Packed<N> {
    pub(crate) fn new() -> Self {
        Packed {
            bytes: [0; N],
            len: 0,
        }
    }

    /// The bytes packed so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends `value` as a varint: a byte at a time in 64-bit arithmetic, cheapest for
    /// the small values that most fields hold; wider values (ids carrying a tag in their
    /// high half) first take whole words of eight groups.
    #[inline(always)]
    pub(crate) fn put(&mut self, value: u128) {
        match u64::try_from(value) {
            Ok(small) => self.put_u64(small),
            Err(_) => self.put_wide(value),
        }
    }

    #[inline(always)]
    fn put_u64(&mut self, mut small: u64) {
        loop {
            let byte = (small & 0x7f) as u8;
            small >>= 7;
            if small == 0 {
                self.push(byte);
                return;
            }
            self.push(byte | 0x80);
        }
    }

    #[inline(never)]
    fn put_wide(&mut self, value: u128) {
        const EIGHT_GROUPS: u32 = 56;
        let mut rest = value;
        while rest >> 64 != 0 {
            // More groups follow: all eight carry the continuation bit.
            self.put_word(spread_groups(rest as u64) | 0x8080_8080_8080_8080);
            rest >>= EIGHT_GROUPS;
        }
        self.put_u64(rest as u64);
    }

    /// Appends the 8 bytes of `word`, little-endian.
    #[inline]
    fn put_word(&mut self, word: u64) {
        self.bytes[self.len..self.len + 8].copy_from_slice(&word.to_le_bytes());
        self.len += 8;
    }

    #[inline]
    pub(crate) fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }
}

/// Appends `transfer`, packed, to `out`; returns the bytes it took.
pub fn encode_transfer(t: &Transfer, out: &mut Vec<u8>) -> usize {
    let mut present = 0;
    for (bit, nonzero) in [
        (HAS_PENDING_ID, t.pending_id != 0),
        (HAS_USER_DATA_128, t.user_data_128 != 0),
        (HAS_USER_DATA_64, t.user_data_64 != 0),
        (HAS_USER_DATA_32, t.user_data_32 != 0),
        (HAS_TIMEOUT, t.timeout != 0),
    ] {
        if nonzero {
            present |= bit;
        }
    }
    let mut packed = Packed::<PACKED_TRANSFER_BYTES_MAX>::new();
    packed.push(present);
    packed.put(t.id);
    packed.put(t.debit_account_id);
    packed.put(t.credit_account_id);
    packed.put(t.amount);
    if t.pending_id != 0 {
        packed.put(t.pending_id);
    }
    if t.user_data_128 != 0 {
        packed.put(t.user_data_128);
    }
    if t.user_data_64 != 0 {
        packed.put(t.user_data_64.into());
    }
    if t.user_data_32 != 0 {
        packed.put(t.user_data_32.into());
    }
    if t.timeout != 0 {
        packed.put(t.timeout.into());
    }
    packed.put(t.ledger.into());
    packed.put(t.code.into());
    packed.put(t.flags.bits().into());
    packed.put_word(t.timestamp);
    out.extend_from_slice(packed.as_bytes());
    packed.len
}

/// Packs `transfers` into runs of [`PACKED_RUN_RECORDS`] records and
/// hands each to `run` as `(records, bytes)`; the last run is shorter, none when empty.
pub fn pack_in_runs<E>(
    transfers: impl Iterator<Item = Transfer>,
    mut run: impl FnMut(usize, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut bytes = Vec::new();
    let mut records = 0;
    for transfer in transfers {
        encode_transfer(&transfer, &mut bytes);
        records += 1;
        if records == PACKED_RUN_RECORDS {
            run(records, &bytes)?;
            bytes.clear();
            records = 0;
        }
    }
    if records > 0 {
        run(records, &bytes)?;
    }
    Ok(())
}

/// A run of packed transfers whose bytes hold exactly `records` valid records, checked
/// when it is made: it can then be unpacked without checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedRun {
    records: usize,
    bytes: Vec<u8>,
}

/// Why bytes are not a run of `records` packed transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// Record `index` (at byte `offset` of the run) does not decode.
    Record {
        /// Position of the record in the run.
        index: usize,
        /// Its first byte in the run.
        offset: usize,
        /// Why it does not decode.
        error: DecodeError,
    },
    /// The records end at byte `offset`, before the run does.
    BytesAfterRecords {
        /// Where the records end.
        offset: usize,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Record { index, error, .. } => write!(f, "item {index}: {error}"),
            RunError::BytesAfterRecords { offset } => {
                write!(f, "bytes after its records, from byte {offset}")
            }
        }
    }
}

impl std::error::Error for RunError {}

/// Checks that `bytes` hold exactly `records` valid packed transfers, decoding each
/// strictly and handing it to `each` with the bytes it takes.
pub fn check_run(
    records: usize,
    bytes: &[u8],
    mut each: impl FnMut(Transfer, usize),
) -> Result<(), RunError> {
    let mut offset = 0;
    for index in 0..records {
        let (transfer, used) =
            decode_transfer(&bytes[offset..]).map_err(|error| RunError::Record {
                index,
                offset,
                error,
            })?;
        each(transfer, used);
        offset += used;
    }
    if offset != bytes.len() {
        return Err(RunError::BytesAfterRecords { offset });
    }
    Ok(())
}

impl PackedRun {
    /// A run of `records` records in `bytes`, checked strictly ([`check_run`]).
    pub fn new(records: usize, bytes: Vec<u8>) -> Result<PackedRun, RunError> {
        check_run(records, &bytes, |_, _| {})?;
        Ok(PackedRun { records, bytes })
    }

    /// How many records the run holds.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The packed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The records, unpacked, in order.
    pub fn iter(&self) -> impl Iterator<Item = Transfer> + '_ {
        self.iter_with_starts().map(|(transfer, _)| transfer)
    }

    /// The records, unpacked, in order, each with the byte of the run it starts at.
    pub fn iter_with_starts(&self) -> impl Iterator<Item = (Transfer, usize)> + '_ {
        let mut start = 0;
        (0..self.records).map(move |_| {
            let (transfer, used) = decode_transfer_trusted(&self.bytes[start..]);
            let this = start;
            start += used;
            (transfer, this)
        })
    }

    /// The packed bytes, given up: a store whose chunks are runs adopts them as they
    /// are.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A run of packed transfers unpacked: the records, the byte each starts at, and the
/// packed bytes (which a store whose chunks are runs adopts as they are). Loading a
/// snapshot as it is read takes runs in this form, unpacked by the reading thread as
/// it checks them, so the loading thread decodes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackedRun {
    /// The records, in order.
    pub transfers: Vec<Transfer>,
    /// Where each record starts in `bytes`.
    pub starts: Vec<u32>,
    /// The packed records.
    pub bytes: Vec<u8>,
}

impl UnpackedRun {
    /// Checks that `bytes` hold exactly `records` valid packed transfers, as
    /// [`check_run`] does, keeping each unpacked with its start; `reuse` lends its
    /// vectors' room (a spent run's).
    pub fn check(
        records: usize,
        bytes: Vec<u8>,
        reuse: UnpackedRun,
    ) -> Result<UnpackedRun, RunError> {
        assert!(
            u32::try_from(bytes.len()).is_ok(),
            "a run's bytes fit a chunk length"
        );
        let (mut transfers, mut starts) = reuse.emptied(records);
        let mut start = 0;
        check_run(records, &bytes, |transfer, used| {
            transfers.push(transfer);
            starts.push(start as u32);
            start += used;
        })?;
        Ok(UnpackedRun {
            transfers,
            starts,
            bytes,
        })
    }

    /// A checked run unpacked (trusting it); `reuse` lends its vectors' room.
    pub fn of(run: PackedRun, reuse: UnpackedRun) -> UnpackedRun {
        let (mut transfers, mut starts) = reuse.emptied(run.records());
        for (transfer, start) in run.iter_with_starts() {
            transfers.push(transfer);
            starts.push(u32::try_from(start).expect("a run stays under 4 GiB"));
        }
        UnpackedRun {
            transfers,
            starts,
            bytes: run.into_bytes(),
        }
    }

    /// How many records the run holds.
    pub fn records(&self) -> usize {
        self.transfers.len()
    }

    /// The run's vectors emptied, with room for `records` (its bytes are let go).
    fn emptied(self, records: usize) -> (Vec<Transfer>, Vec<u32>) {
        let UnpackedRun {
            mut transfers,
            mut starts,
            ..
        } = self;
        transfers.clear();
        starts.clear();
        transfers.reserve(records);
        starts.reserve(records);
        (transfers, starts)
    }
}

/// Reads one varint written by [`Packed::put`], trusting it; returns it and its bytes.
/// Eight bytes a step while eight are left (a record's varints always have its 8-byte
/// stamp after them), so a 128-bit id costs three steps, not nineteen.
#[inline]
fn take_trusted(bytes: &[u8]) -> (u128, usize) {
    let mut value: u128 = 0;
    let mut at = 0;
    for shift in [0, 56, 112] {
        let Some(chunk) = bytes.get(at..at + 8) else {
            return take_trusted_bytes(bytes, value, at, shift);
        };
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let (groups, len, ended) = word_step(word);
        value |= u128::from(groups) << shift;
        at += len as usize;
        if ended {
            return (value, at);
        }
    }
    unreachable!("a trusted varint ends within 19 bytes")
}

/// One 8-byte step of reading a varint: the groups of `word`'s bytes up to and
/// including the first without the continuation bit (all eight if none), how many
/// bytes that is, and whether the varint ends there.
#[inline(always)]
fn word_step(word: u64) -> (u64, u32, bool) {
    let ends = !word & 0x8080_8080_8080_8080;
    if ends == 0 {
        return (gather_groups(word), 8, false);
    }
    let len = ends.trailing_zeros() / 8 + 1;
    let mine = if len == 8 {
        word
    } else {
        word & ((1 << (8 * len)) - 1)
    };
    (gather_groups(mine), len, true)
}

/// The rest of a trusted varint a byte at a time, from byte `at` and bit `shift`.
#[cold]
fn take_trusted_bytes(bytes: &[u8], mut value: u128, at: usize, shift: u32) -> (u128, usize) {
    for (index, byte) in bytes[at..].iter().enumerate() {
        value |= u128::from(byte & 0x7f) << (shift + 7 * index as u32);
        if byte & 0x80 == 0 {
            return (value, at + index + 1);
        }
    }
    unreachable!("a trusted record ends within its buffer")
}

/// Reads one varint, checking its length and that it fits in `bits` bits: eight bytes
/// a step while eight are there, as [`take_trusted`] does, the checks on whole words;
/// [`take_checked_bytes`] near the end of `bytes`, with the same answers.
#[inline(always)]
fn take_checked(
    bytes: &[u8],
    bits: u32,
    field: &'static str,
) -> Result<(u128, usize), DecodeError> {
    /// The shift of the third word: 16 bits of 128 are left, in the two groups and
    /// the two bits that a varint's 17th to 19th bytes hold.
    const LAST_WORD_SHIFT: u32 = 112;
    let mut value: u128 = 0;
    let mut at = 0;
    for shift in [0, 56, LAST_WORD_SHIFT] {
        let Some(chunk) = bytes.get(at..at + 8) else {
            return take_checked_bytes(bytes, bits, field);
        };
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let (groups, len, ended) = word_step(word);
        // The third word may hold 3 bytes, 16 bits: more goes past the 19th byte or
        // past 128 bits.
        if shift == LAST_WORD_SHIFT && (!ended || len > 3 || groups >> 16 != 0) {
            return Err(DecodeError::FieldTooWide { field });
        }
        value |= u128::from(groups) << shift;
        at += len as usize;
        if !ended {
            continue;
        }
        if bits < 128 && value >> bits != 0 {
            return Err(DecodeError::FieldTooWide { field });
        }
        return Ok((value, at));
    }
    unreachable!("the third word ends the varint or fails it")
}

/// [`take_checked`] a byte at a time: for a varint whose bytes may end before eight
/// more are there.
#[cold]
fn take_checked_bytes(
    bytes: &[u8],
    bits: u32,
    field: &'static str,
) -> Result<(u128, usize), DecodeError> {
    let mut value: u128 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(VARINT_BYTES_MAX) {
        let group = u128::from(byte & 0x7f);
        let shift = 7 * index as u32;
        // The group must not carry bits past 128 (only 2 fit in the 19th byte).
        if shift > 0
            && group
                .checked_shl(shift)
                .is_none_or(|shifted| shifted >> shift != group)
        {
            return Err(DecodeError::FieldTooWide { field });
        }
        value |= group << shift;
        if byte & 0x80 == 0 {
            if bits < 128 && value >> bits != 0 {
                return Err(DecodeError::FieldTooWide { field });
            }
            return Ok((value, index + 1));
        }
    }
    if bytes.len() < VARINT_BYTES_MAX {
        Err(DecodeError::Truncated)
    } else {
        Err(DecodeError::FieldTooWide { field })
    }
}

/// The id of the packed record at the start of `bytes`, trusting it, without unpacking
/// the rest.
#[inline]
pub fn transfer_id_trusted(bytes: &[u8]) -> u128 {
    take_trusted(&bytes[1..]).0
}

/// The user data (128, 64 and 32 bits, widened) of the packed record at the start of
/// `bytes`, trusting it: the varints before them are skipped, not unpacked, and those
/// after them are not read (filling the user-data indexes reads only these).
#[inline]
pub fn transfer_user_data_trusted(bytes: &[u8]) -> [u128; 3] {
    let present = bytes[0];
    let mut at = 1;
    // id, debit_account_id, credit_account_id, amount, then pending_id if present.
    let before = 4 + usize::from(present & HAS_PENDING_ID != 0);
    for _ in 0..before {
        at += skip_trusted(&bytes[at..]);
    }
    let mut optional = |bit: u8| {
        if present & bit == 0 {
            return 0;
        }
        let (value, used) = take_trusted(&bytes[at..]);
        at += used;
        value
    };
    [
        optional(HAS_USER_DATA_128),
        optional(HAS_USER_DATA_64),
        optional(HAS_USER_DATA_32),
    ]
}

/// The bytes of one trusted varint, found eight bytes a step without gathering it.
#[inline]
fn skip_trusted(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let ends = !word & 0x8080_8080_8080_8080;
        if ends != 0 {
            return at + (ends.trailing_zeros() / 8 + 1) as usize;
        }
        at += 8;
    }
    take_trusted_bytes(bytes, 0, at, 0).1
}

/// Decodes one record this process packed itself; returns it and the bytes used.
#[inline]
pub fn decode_transfer_trusted(bytes: &[u8]) -> (Transfer, usize) {
    let present = bytes[0];
    let mut at = 1;
    let mut next = || {
        let (value, used) = take_trusted(&bytes[at..]);
        at += used;
        value
    };
    let id = next();
    let debit_account_id = next();
    let credit_account_id = next();
    let amount = next();
    let mut optional = |bit: u8| if present & bit != 0 { next() } else { 0 };
    let pending_id = optional(HAS_PENDING_ID);
    let user_data_128 = optional(HAS_USER_DATA_128);
    let user_data_64 = optional(HAS_USER_DATA_64) as u64;
    let user_data_32 = optional(HAS_USER_DATA_32) as u32;
    let timeout = optional(HAS_TIMEOUT) as u32;
    let ledger = next() as u32;
    let code = next() as u16;
    let flags = next() as u16;
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&bytes[at..at + 8]);
    let transfer = Transfer {
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
        // Only records that passed validation are packed, so the bits are known flags.
        flags: TransferFlags::from_bits(flags).expect("packed flags are valid"),
        timestamp: u64::from_le_bytes(stamp),
    };
    (transfer, at + 8)
}

/// The fields of one untrusted record, read in order, each varint checked
/// ([`take_checked`]). Its reads are always inlined: as closures, each field was a
/// call, a tenth of a snapshot load's samples on the thread that decodes.
struct CheckedFields<'a> {
    bytes: &'a [u8],
    at: usize,
    present: u8,
}

impl CheckedFields<'_> {
    #[inline(always)]
    fn next(&mut self, bits: u32, field: &'static str) -> Result<u128, DecodeError> {
        let (value, used) = take_checked(&self.bytes[self.at..], bits, field)?;
        self.at += used;
        Ok(value)
    }

    /// 0 when the record says the field is absent; else its value, which must not be 0.
    #[inline(always)]
    fn optional(&mut self, bit: u8, bits: u32, field: &'static str) -> Result<u128, DecodeError> {
        if self.present & bit == 0 {
            return Ok(0);
        }
        match self.next(bits, field)? {
            0 => Err(DecodeError::PresentButZero { field }),
            value => Ok(value),
        }
    }
}

/// Decodes one packed record from untrusted bytes (a snapshot), checking every field;
/// returns it and the bytes used.
pub fn decode_transfer(bytes: &[u8]) -> Result<(Transfer, usize), DecodeError> {
    let present = *bytes.first().ok_or(DecodeError::Truncated)?;
    if present & !PRESENCE_KNOWN != 0 {
        return Err(DecodeError::ReservedNotZero);
    }
    let mut fields = CheckedFields {
        bytes,
        at: 1,
        present,
    };
    let id = fields.next(128, "id")?;
    let debit_account_id = fields.next(128, "debit_account_id")?;
    let credit_account_id = fields.next(128, "credit_account_id")?;
    let amount = fields.next(128, "amount")?;
    let pending_id = fields.optional(HAS_PENDING_ID, 128, "pending_id")?;
    let user_data_128 = fields.optional(HAS_USER_DATA_128, 128, "user_data_128")?;
    let user_data_64 = fields.optional(HAS_USER_DATA_64, 64, "user_data_64")? as u64;
    let user_data_32 = fields.optional(HAS_USER_DATA_32, 32, "user_data_32")? as u32;
    let timeout = fields.optional(HAS_TIMEOUT, 32, "timeout")? as u32;
    let ledger = fields.next(32, "ledger")? as u32;
    let code = fields.next(16, "code")? as u16;
    let flag_bits = fields.next(16, "flags")? as u16;
    let at = fields.at;
    let flags = TransferFlags::from_bits(flag_bits).map_err(|_| DecodeError::UnknownFlags {
        field: "transfer.flags",
        bits: flag_bits,
    })?;
    let stamp: [u8; 8] = bytes
        .get(at..at + 8)
        .and_then(|slice| slice.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    let transfer = Transfer {
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
        timestamp: u64::from_le_bytes(stamp),
    };
    Ok((transfer, at + 8))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn any_transfer() -> impl Strategy<Value = Transfer> {
        // Widths from 0 to 128 bits, so every varint length shows up.
        let wide = || {
            (0u32..=128, any::<u128>())
                .prop_map(|(bits, v)| if bits == 0 { 0 } else { v >> (128 - bits) })
        };
        (
            (wide(), wide(), wide(), wide(), wide(), wide()),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u64>(),
            ),
            0u16..(1 << 8),
        )
            .prop_map(
                |(
                    (id, debit, credit, amount, pending, ud128),
                    (ud64, ud32, timeout, ledger, code, ts),
                    flags,
                )| Transfer {
                    id,
                    debit_account_id: debit,
                    credit_account_id: credit,
                    amount,
                    pending_id: pending,
                    user_data_128: ud128,
                    user_data_64: if ud64 % 3 == 0 { 0 } else { ud64 },
                    user_data_32: if ud32 % 3 == 0 { 0 } else { ud32 },
                    timeout: if timeout % 2 == 0 { 0 } else { timeout },
                    ledger,
                    code,
                    flags: TransferFlags::from_bits(flags & TransferFlags::ALL.bits()).unwrap(),
                    timestamp: ts,
                },
            )
    }

    proptest! {
        #[test]
        fn packed_round_trips_through_both_decoders(transfers in proptest::collection::vec(any_transfer(), 1..20)) {
            let mut bytes = Vec::new();
            let mut lengths = Vec::new();
            for transfer in &transfers {
                lengths.push(encode_transfer(transfer, &mut bytes));
            }
            let mut rest = bytes.as_slice();
            for (transfer, &length) in transfers.iter().zip(&lengths) {
                prop_assert!(length <= PACKED_TRANSFER_BYTES_MAX);
                let (checked, used) = decode_transfer(rest).unwrap();
                let (trusted, used_trusted) = decode_transfer_trusted(rest);
                prop_assert_eq!((checked, used), (*transfer, length));
                prop_assert_eq!((trusted, used_trusted), (*transfer, length));
                prop_assert_eq!(transfer_id_trusted(rest), transfer.id);
                let user_data = [
                    transfer.user_data_128,
                    u128::from(transfer.user_data_64),
                    u128::from(transfer.user_data_32),
                ];
                prop_assert_eq!(transfer_user_data_trusted(rest), user_data);
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
        }

        /// The word-at-a-time encoder writes exactly the bytes of the layout as
        /// documented, which this test spells out byte by byte.
        #[test]
        fn encoding_is_the_documented_layout(transfer in any_transfer()) {
            fn leb128(mut value: u128, out: &mut Vec<u8>) {
                loop {
                    let byte = (value & 0x7f) as u8;
                    value >>= 7;
                    if value == 0 {
                        out.push(byte);
                        return;
                    }
                    out.push(byte | 0x80);
                }
            }
            let t = &transfer;
            let optional = [
                (HAS_PENDING_ID, t.pending_id),
                (HAS_USER_DATA_128, t.user_data_128),
                (HAS_USER_DATA_64, t.user_data_64.into()),
                (HAS_USER_DATA_32, t.user_data_32.into()),
                (HAS_TIMEOUT, t.timeout.into()),
            ];
            let presence = optional
                .iter()
                .filter(|(_, value)| *value != 0)
                .fold(0, |bits, (bit, _)| bits | bit);
            let mut expected = vec![presence];
            for value in [t.id, t.debit_account_id, t.credit_account_id, t.amount] {
                leb128(value, &mut expected);
            }
            for (_, value) in optional.iter().filter(|(_, value)| *value != 0) {
                leb128(*value, &mut expected);
            }
            for value in [t.ledger.into(), t.code.into(), t.flags.bits().into()] {
                leb128(value, &mut expected);
            }
            expected.extend_from_slice(&t.timestamp.to_le_bytes());
            let mut bytes = vec![0xEE];
            let length = encode_transfer(t, &mut bytes);
            prop_assert_eq!(length, expected.len());
            prop_assert_eq!(&bytes[1..], expected.as_slice());
        }

        /// A varint reads the same whether it ends its buffer (read a byte at a time) or
        /// has a record's stamp after it (read a word at a time).
        #[test]
        fn trusted_varints_read_alike_at_the_end_and_inside(
            value in (0u32..=128, any::<u128>())
                .prop_map(|(bits, v)| if bits == 0 { 0 } else { v >> (128 - bits) }),
        ) {
            let mut packed = Packed::<VARINT_BYTES_MAX>::new();
            packed.put(value);
            let alone = packed.as_bytes().to_vec();
            let mut followed = alone.clone();
            followed.extend_from_slice(&[0xff; 8]);
            prop_assert_eq!(take_trusted(&alone), (value, alone.len()));
            prop_assert_eq!(take_trusted(&followed), (value, alone.len()));
        }

        /// The checked reader a word at a time gives the byte-at-a-time one's answer
        /// (value and length, or the error) for any field width and varints of every
        /// length up to past the longest, with groups at the edges of what fits,
        /// ending their buffer or not, followed by anything.
        #[test]
        fn checked_varints_read_alike_by_words_and_by_bytes(
            groups in prop_oneof![1usize..24, 16usize..21].prop_flat_map(|len| {
                proptest::collection::vec(
                    prop_oneof![Just(0u8), Just(1), Just(3), Just(4), Just(0x7f), 0u8..0x80],
                    len,
                )
            }),
            ends in any::<bool>(),
            after in proptest::collection::vec(any::<u8>(), 0..10),
            bits in prop_oneof![Just(16u32), Just(32), Just(64), Just(128)],
        ) {
            let last = groups.len() - 1;
            let mut bytes: Vec<u8> = groups
                .iter()
                .enumerate()
                .map(|(index, &group)| if index == last && ends { group } else { group | 0x80 })
                .collect();
            bytes.extend_from_slice(&after);
            prop_assert_eq!(
                take_checked(&bytes, bits, "field"),
                take_checked_bytes(&bytes, bits, "field")
            );
        }

        #[test]
        fn every_cut_record_is_an_error(transfer in any_transfer()) {
            let mut bytes = Vec::new();
            let length = encode_transfer(&transfer, &mut bytes);
            for cut in 0..length {
                prop_assert!(decode_transfer(&bytes[..cut]).is_err(), "cut at {}", cut);
            }
        }
    }

    /// Every varint about the longest, its last group at the edges of what fits and the
    /// groups before it empty or full, ending or not, with room after it or none: the
    /// word-at-a-time checked reader answers as the byte-at-a-time one.
    #[test]
    fn checked_varints_about_the_longest_read_alike() {
        for len in 1..=26 {
            for (last, middle, ends, after) in varint_edges() {
                let mut bytes: Vec<u8> = (0..len)
                    .map(|index| match index + 1 == len {
                        true if ends => last,
                        true => last | 0x80,
                        false => middle | 0x80,
                    })
                    .collect();
                bytes.extend(std::iter::repeat_n(0x55, after));
                for bits in [16, 32, 64, 128] {
                    assert_eq!(
                        take_checked(&bytes, bits, "field"),
                        take_checked_bytes(&bytes, bits, "field"),
                        "{bytes:02x?} in {bits} bits"
                    );
                }
            }
        }
    }

    /// (last group, the groups before it, whether the varint ends, bytes after it).
    fn varint_edges() -> impl Iterator<Item = (u8, u8, bool, usize)> {
        [0u8, 1, 3, 4, 0x7f].into_iter().flat_map(|last| {
            [0u8, 0x7f].into_iter().flat_map(move |middle| {
                [true, false].into_iter().flat_map(move |ends| {
                    [0usize, 3, 8]
                        .into_iter()
                        .map(move |after| (last, middle, ends, after))
                })
            })
        })
    }

    #[test]
    fn a_run_must_hold_exactly_its_records() {
        let transfers: Vec<Transfer> = (1..=3u128)
            .map(|id| Transfer {
                id,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: id * 100,
                ledger: 840,
                code: 1,
                timestamp: id as u64,
                ..Transfer::default()
            })
            .collect();
        let mut bytes = Vec::new();
        let lengths: Vec<usize> = transfers
            .iter()
            .map(|t| encode_transfer(t, &mut bytes))
            .collect();
        let run = PackedRun::new(3, bytes.clone()).unwrap();
        assert_eq!(run.records(), 3);
        assert!(run.iter().eq(transfers.iter().copied()));
        // Fewer records claimed than the bytes hold: bytes left over.
        assert_eq!(
            PackedRun::new(2, bytes.clone()),
            Err(RunError::BytesAfterRecords {
                offset: lengths[0] + lengths[1]
            })
        );
        // More claimed than there are: the fourth runs past the end.
        assert_eq!(
            PackedRun::new(4, bytes.clone()),
            Err(RunError::Record {
                index: 3,
                offset: bytes.len(),
                error: DecodeError::Truncated
            })
        );
        // A damaged second record is named by its index and offset.
        let mut damaged = bytes.clone();
        damaged[lengths[0]] |= 0x80;
        assert_eq!(
            PackedRun::new(3, damaged.clone()),
            Err(RunError::Record {
                index: 1,
                offset: lengths[0],
                error: DecodeError::ReservedNotZero
            })
        );
        // Checked and unpacked at once, the same verdicts, the same records, each with
        // where it starts; a spent run's room is reused whatever it held.
        let spent = UnpackedRun {
            transfers: vec![Transfer::default(); 7],
            starts: vec![9; 7],
            bytes: vec![1; 5],
        };
        let unpacked = UnpackedRun::check(3, bytes.clone(), spent).unwrap();
        let starts = [0, lengths[0] as u32, (lengths[0] + lengths[1]) as u32];
        assert_eq!(unpacked.transfers, transfers);
        assert_eq!(unpacked.starts, starts);
        assert_eq!(unpacked.bytes, bytes);
        assert_eq!(UnpackedRun::of(run, UnpackedRun::default()), unpacked);
        for (records, bytes) in [(2, &bytes), (4, &bytes), (3, &damaged)] {
            assert_eq!(
                UnpackedRun::check(records, bytes.clone(), UnpackedRun::default()),
                Err(PackedRun::new(records, bytes.clone()).unwrap_err())
            );
        }
    }

    #[test]
    fn every_field_round_trips_at_its_extremes() {
        let full = Transfer {
            id: u128::MAX,
            debit_account_id: u128::MAX - 1,
            credit_account_id: 1,
            amount: u128::MAX,
            pending_id: u128::MAX,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            timeout: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            flags: TransferFlags::PENDING.with(TransferFlags::LINKED),
            timestamp: u64::MAX,
        };
        // splitmix64: a fixed, seeded sequence without a test-kit dependency.
        let mut state = 5u64;
        let mut next_u64 = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut samples = vec![full, Transfer::default()];
        for _ in 0..2_000 {
            let mut wide = || {
                let bits = (next_u64() % 129) as u32;
                let value = u128::from(next_u64()) << 64 | u128::from(next_u64());
                if bits == 0 { 0 } else { value >> (128 - bits) }
            };
            samples.push(Transfer {
                id: wide(),
                debit_account_id: wide(),
                credit_account_id: wide(),
                amount: wide(),
                pending_id: wide(),
                user_data_128: wide(),
                user_data_64: wide() as u64,
                user_data_32: wide() as u32,
                timeout: wide() as u32,
                ledger: wide() as u32,
                code: wide() as u16,
                flags: TransferFlags::POST_PENDING_TRANSFER,
                timestamp: wide() as u64,
            });
        }
        let mut bytes = Vec::new();
        for sample in &samples {
            bytes.clear();
            encode_transfer(sample, &mut bytes);
            assert_eq!(decode_transfer_trusted(&bytes), (*sample, bytes.len()));
            assert_eq!(decode_transfer(&bytes), Ok((*sample, bytes.len())));
        }
        // A typical payment packs to under a third of its 128 bytes.
        let payment = Transfer {
            id: 123_456_789,
            debit_account_id: 500_000,
            credit_account_id: 1_000_042,
            amount: 19_999,
            ledger: 156,
            code: 1,
            timestamp: 1_479_000_000_000_000_000,
            ..Transfer::default()
        };
        bytes.clear();
        encode_transfer(&payment, &mut bytes);
        assert!(bytes.len() <= 32, "{} bytes", bytes.len());
    }

    #[test]
    fn the_longest_record_is_the_bound() {
        let widest = Transfer {
            id: u128::MAX,
            debit_account_id: u128::MAX,
            credit_account_id: u128::MAX,
            amount: u128::MAX,
            pending_id: u128::MAX,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            timeout: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            flags: TransferFlags::ALL,
            timestamp: u64::MAX,
        };
        let mut bytes = Vec::new();
        let length = encode_transfer(&widest, &mut bytes);
        // Only the six 128-bit fields take 19 bytes; the bound counts nine, loose but safe.
        assert!(length <= PACKED_TRANSFER_BYTES_MAX);
        // Flags take two bytes: bits 7 and 8 are defined.
        assert_eq!(length, 1 + 6 * 19 + 10 + 5 + 5 + 5 + 3 + 2 + 8);
        assert_eq!(decode_transfer(&bytes).unwrap(), (widest, length));
    }

    #[test]
    fn damaged_records_are_refused_with_a_reason() {
        let transfer = Transfer {
            id: 7,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 300,
            timeout: 5,
            ledger: 156,
            code: 1,
            timestamp: 99,
            ..Transfer::default()
        };
        let mut good = Vec::new();
        encode_transfer(&transfer, &mut good);
        let check = |mutate: &dyn Fn(&mut Vec<u8>), expected: DecodeError| {
            let mut bytes = good.clone();
            mutate(&mut bytes);
            assert_eq!(decode_transfer(&bytes), Err(expected));
        };
        // A reserved presence bit.
        check(&|b| b[0] |= 1 << 7, DecodeError::ReservedNotZero);
        // The timeout's presence bit with a zero value: [presence, 7, 1, 2, 172 2, 5, ...].
        check(
            &|b| b[6] = 0,
            DecodeError::PresentButZero { field: "timeout" },
        );
        // A code wider than 16 bits.
        check(
            &|b| {
                // ledger 156 is [0x9c, 0x01] at 7..9; code at 9.
                b.splice(9..10, [0xff, 0xff, 0x7f]);
            },
            DecodeError::FieldTooWide { field: "code" },
        );
        // An unknown flag bit (bit 10: a two-byte varint).
        check(
            &|b| {
                b.splice(10..11, [0x80, 0x08]);
            },
            DecodeError::UnknownFlags {
                field: "transfer.flags",
                bits: 0x400,
            },
        );
        // A varint that never ends.
        check(
            &|b| {
                b.truncate(1);
                b.extend([0x80; 25]);
            },
            DecodeError::FieldTooWide { field: "id" },
        );
        // A 19th byte carrying more than the two bits that fit in 128.
        check(
            &|b| {
                b.truncate(1);
                b.extend([0xff; 18]);
                b.push(0x04);
            },
            DecodeError::FieldTooWide { field: "id" },
        );
        // Cut inside the timestamp.
        check(&|b| b.truncate(b.len() - 1), DecodeError::Truncated);
    }
}
