//! The log's byte layouts, as `docs/log-format.md` specifies them. All integers are
//! little-endian; every header and body carries a CRC32C (Castagnoli).
//!
//! Segment header (64 bytes):
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TALLYWAL` |
//! | 8 | 2 | format version ([`FORMAT_VERSION`]) |
//! | 10 | 2 | record layout version (`tally_types::codec::RECORD_LAYOUT_VERSION`) |
//! | 12 | 4 | header bytes (64) |
//! | 16 | 8 | first sequence (equals the number in the file name) |
//! | 24 | 36 | reserved, zero |
//! | 60 | 4 | CRC32C of bytes 0..60 |
//!
//! Frame header (48 bytes), followed by `event_count` 128-byte records:
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TLFR` |
//! | 4 | 4 | frame bytes, header included (48 + 128 × event_count) |
//! | 8 | 8 | sequence |
//! | 16 | 8 | timestamp of the first event |
//! | 24 | 4 | event count (0 ..= 8190) |
//! | 28 | 1 | kind: 1 create_accounts, 2 create_transfers |
//! | 29 | 3 | reserved, zero |
//! | 32 | 4 | CRC32C of the body |
//! | 36 | 8 | reserved, zero |
//! | 44 | 4 | CRC32C of bytes 0..44 (so it covers the body CRC too) |
//!
//! The header has its own CRC so that its size field can be trusted before the body is
//! read: a flipped size bit is caught as damage instead of looking like a short tail.

use crate::LogRecord;
use std::fmt;
use tally_types::codec::{
    self, DecodeError, RECORD_LAYOUT_VERSION, RECORD_SIZE, decode_account, decode_transfer,
    encode_account, encode_transfer,
};
use tally_types::{BATCH_EVENTS_MAX, Batch, BatchKind};

/// Version of the segment, frame and snapshot containers that this build writes; bump
/// on any change. Version 2 added preallocated segments: a segment's frames may be
/// followed by zeros up to the end of the file.
pub const FORMAT_VERSION: u16 = 2;

/// The oldest format version this build still reads. Version 1 differs only in that its
/// segments never end in zeros, which a version-2 reader accepts.
pub const FORMAT_VERSION_READ_OLDEST: u16 = 1;

pub const SEGMENT_MAGIC: [u8; 8] = *b"TALLYWAL";
/// Bytes of a segment header; the first frame starts right after it.
pub const SEGMENT_HEADER_SIZE: usize = 64;

pub const FRAME_MAGIC: [u8; 4] = *b"TLFR";
/// Bytes of a frame header; the frame's records follow it.
pub const FRAME_HEADER_SIZE: usize = 48;
/// The largest frame: a full batch. Every frame buffer is bounded by this.
pub const FRAME_BYTES_MAX: usize = FRAME_HEADER_SIZE + BATCH_EVENTS_MAX * RECORD_SIZE;

pub const KIND_CREATE_ACCOUNTS: u8 = 1;
pub const KIND_CREATE_TRANSFERS: u8 = 2;

/// Most bytes one `Wal::append` group may take: bounds the group-commit buffer.
/// 64 full batches; at 1M transfers/s and a 1 ms fdatasync a group is ~1,000 events.
pub const APPEND_BYTES_MAX: usize = 64 * FRAME_BYTES_MAX;

/// Largest segment file recovery reads into memory; a file past it is reported, not read.
pub const SEGMENT_FILE_BYTES_MAX: u64 = 1 << 30;

const _: () =
    assert!(FRAME_HEADER_SIZE.is_multiple_of(16) && SEGMENT_HEADER_SIZE.is_multiple_of(16));
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// `wal-<first sequence, 20 digits>.log`: names sort in sequence order.
pub fn segment_name(first_sequence: u64) -> String {
    format!("wal-{first_sequence:020}.log")
}

/// The first sequence named by a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_numbered(name, "wal-", ".log")
}

/// `snapshot-<last sequence included, 20 digits>.snap`.
pub fn snapshot_name(sequence: u64) -> String {
    format!("snapshot-{sequence:020}.snap")
}

pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    parse_numbered(name, "snapshot-", ".snap")
}

/// Suffix of a snapshot or spare segment still being written; leftovers are removed at
/// open.
pub const TEMP_SUFFIX: &str = ".tmp";

/// A zero-filled file waiting to become the next segment (renamed to its segment name,
/// then given its header). It only exists once whole and durable: it is written as
/// `SPARE_SEGMENT_NAME` + `.tmp`, synced, then renamed.
pub const SPARE_SEGMENT_NAME: &str = "wal-spare.log";

/// Written at a clean close: the last sequence the log held then, so that recovery can
/// tell damage to the newest frames (an error) from a write torn by a crash (cut).
pub const CLOSE_MARKER_NAME: &str = "wal-closed";

/// The close marker while it is being written: [`CLOSE_MARKER_NAME`] + `.tmp`.
pub const CLOSE_MARKER_TEMP_NAME: &str = "wal-closed.tmp";

/// Close marker bytes.
pub const CLOSE_MARKER_SIZE: usize = 64;

/// The close marker's magic.
pub const CLOSE_MARKER_MAGIC: [u8; 8] = *b"TALLYCLS";

/// The spare while it is being written: [`SPARE_SEGMENT_NAME`] + `.tmp`.
pub const SPARE_SEGMENT_TEMP_NAME: &str = "wal-spare.log.tmp";

/// True when every byte is zero: the unwritten, preallocated part of a segment.
pub fn is_zero(bytes: &[u8]) -> bool {
    // Word-sized compares: the tail of a preallocated segment can be hundreds of MB.
    let mut words = bytes.chunks_exact(8);
    let words_zero = words.by_ref().all(|word| word == [0u8; 8]);
    words_zero && words.remainder().iter().all(|&b| b == 0)
}

/// How many bytes at the end of `bytes` are zero.
pub fn zero_suffix_len(bytes: &[u8]) -> usize {
    bytes.iter().rev().take_while(|&&byte| byte == 0).count()
}

fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut field = [0u8; 2];
    field.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(field)
}

pub(crate) fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(field)
}

pub(crate) fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(field)
}

pub(crate) fn le_u128(bytes: &[u8], offset: usize) -> u128 {
    let mut field = [0u8; 16];
    field.copy_from_slice(&bytes[offset..offset + 16]);
    u128::from_le_bytes(field)
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Incomplete,
    /// The first 8 bytes are not the expected magic.
    BadMagic,
    /// The header's CRC32C does not match its bytes.
    BadChecksum,
    /// The checksum is good but the content is not something this build reads.
    Unsupported(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Incomplete => f.write_str("header is incomplete"),
            HeaderError::BadMagic => f.write_str("header magic is wrong"),
            HeaderError::BadChecksum => f.write_str("header CRC32C does not match"),
            HeaderError::Unsupported(why) => write!(f, "unsupported header: {why}"),
        }
    }
}

/// The 64-byte block shared by segment headers and the close marker: magic, format and
/// record-layout versions, its own size, one sequence, reserved zeros, CRC.
const BLOCK_SIZE: usize = 64;
const _: () = assert!(SEGMENT_HEADER_SIZE == BLOCK_SIZE && CLOSE_MARKER_SIZE == BLOCK_SIZE);

fn encode_block(magic: &[u8; 8], sequence: u64) -> [u8; BLOCK_SIZE] {
    let mut block = [0u8; BLOCK_SIZE];
    block[0..8].copy_from_slice(magic);
    block[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[10..12].copy_from_slice(&RECORD_LAYOUT_VERSION.to_le_bytes());
    block[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    block[16..24].copy_from_slice(&sequence.to_le_bytes());
    let crc = crc32c::crc32c(&block[0..60]);
    block[60..64].copy_from_slice(&crc.to_le_bytes());
    block
}

/// Checks the block at the start of `bytes` and returns its sequence.
fn decode_block(bytes: &[u8], magic: &[u8; 8]) -> Result<u64, HeaderError> {
    let block = bytes.get(..BLOCK_SIZE).ok_or(HeaderError::Incomplete)?;
    if block[0..8] != *magic {
        return Err(HeaderError::BadMagic);
    }
    if crc32c::crc32c(&block[0..60]) != le_u32(block, 60) {
        return Err(HeaderError::BadChecksum);
    }
    check_versions(block)?;
    if le_u32(block, 12) as usize != BLOCK_SIZE {
        return Err(HeaderError::Unsupported(format!(
            "header bytes {}",
            le_u32(block, 12)
        )));
    }
    if block[24..60].iter().any(|&b| b != 0) {
        return Err(HeaderError::Unsupported(
            "reserved bytes are not zero".into(),
        ));
    }
    Ok(le_u64(block, 16))
}

/// The header of a segment whose first frame holds `first_sequence`.
pub fn encode_segment_header(first_sequence: u64) -> [u8; SEGMENT_HEADER_SIZE] {
    let header = encode_block(&SEGMENT_MAGIC, first_sequence);
    debug_assert_eq!(decode_segment_header(&header), Ok(first_sequence));
    header
}

/// Checks a segment header and returns its first sequence.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderError> {
    decode_block(bytes, &SEGMENT_MAGIC)
}

/// The close marker of a log whose last record was `last_sequence`.
pub fn encode_close_marker(last_sequence: u64) -> [u8; CLOSE_MARKER_SIZE] {
    let marker = encode_block(&CLOSE_MARKER_MAGIC, last_sequence);
    debug_assert_eq!(decode_close_marker(&marker), Ok(last_sequence));
    marker
}

/// Checks a close marker (the whole file) and returns the last sequence it records.
pub fn decode_close_marker(bytes: &[u8]) -> Result<u64, HeaderError> {
    if bytes.len() != CLOSE_MARKER_SIZE {
        return Err(HeaderError::Incomplete);
    }
    decode_block(bytes, &CLOSE_MARKER_MAGIC)
}

/// Format and record-layout versions at bytes 8..12, shared by segment and snapshot headers.
pub(crate) fn check_versions(header: &[u8]) -> Result<(), HeaderError> {
    let format_version = le_u16(header, 8);
    let layout_version = le_u16(header, 10);
    if !(FORMAT_VERSION_READ_OLDEST..=FORMAT_VERSION).contains(&format_version) {
        return Err(HeaderError::Unsupported(format!(
            "format version {format_version}, this build reads \
             {FORMAT_VERSION_READ_OLDEST} to {FORMAT_VERSION}"
        )));
    }
    if layout_version != RECORD_LAYOUT_VERSION {
        return Err(HeaderError::Unsupported(format!(
            "record layout version {layout_version}, this build reads {RECORD_LAYOUT_VERSION}"
        )));
    }
    Ok(())
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of the whole frame, header included.
    pub frame_bytes: u32,
    /// The record's sequence.
    pub sequence: u64,
    /// Timestamp of the first event.
    pub timestamp: u64,
    /// Records in the body.
    pub event_count: u32,
    /// Accounts or transfers.
    pub kind: BatchKind,
    /// CRC32C of the body.
    pub body_crc: u32,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header, or than the body the header announces.
    Incomplete {
        /// Bytes the header or frame needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The first 4 bytes are not the frame magic.
    BadMagic,
    /// The header's own CRC32C does not match.
    BadHeaderChecksum,
    /// The body's CRC32C does not match the header's `body_crc`.
    BadBodyChecksum,
    /// The header checksum is good but a field is out of range: damage or a newer writer.
    Invalid(String),
    /// The body checksum is good but a record does not decode.
    BadRecord {
        /// Position of the record in the frame.
        index: usize,
        /// Why it does not decode.
        error: DecodeError,
    },
}

impl FrameError {
    /// True for what a crash can leave behind: a frame cut short or partly written.
    /// The other errors come with a good checksum, so the bytes were written that way.
    pub fn may_be_torn_write(&self) -> bool {
        matches!(
            self,
            FrameError::Incomplete { .. }
                | FrameError::BadMagic
                | FrameError::BadHeaderChecksum
                | FrameError::BadBodyChecksum
        )
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete { needed, available } => write!(
                f,
                "frame is incomplete: needs {needed} bytes, {available} present"
            ),
            FrameError::BadMagic => f.write_str("frame magic is wrong"),
            FrameError::BadHeaderChecksum => f.write_str("frame header CRC32C does not match"),
            FrameError::BadBodyChecksum => f.write_str("frame body CRC32C does not match"),
            FrameError::Invalid(why) => write!(f, "invalid frame header: {why}"),
            FrameError::BadRecord { index, error } => {
                write!(f, "record {index} of the frame does not decode: {error}")
            }
        }
    }
}

fn kind_byte(kind: BatchKind) -> u8 {
    match kind {
        BatchKind::CreateAccounts => KIND_CREATE_ACCOUNTS,
        BatchKind::CreateTransfers => KIND_CREATE_TRANSFERS,
    }
}

/// Appends the frame of one record to `out`.
///
/// # Panics
/// If the batch holds more than `BATCH_EVENTS_MAX` events: the engine rejects those
/// before they reach the log.
pub fn encode_frame(record: &LogRecord, out: &mut Vec<u8>) {
    let event_count = record.batch.len();
    assert!(
        event_count <= BATCH_EVENTS_MAX,
        "batch of {event_count} events exceeds BATCH_EVENTS_MAX"
    );
    let frame_bytes = FRAME_HEADER_SIZE + event_count * RECORD_SIZE;
    let start = out.len();
    out.resize(start + frame_bytes, 0);
    let (header, body) = out[start..].split_at_mut(FRAME_HEADER_SIZE);
    match &record.batch {
        Batch::CreateAccounts(accounts) => {
            for (account, slot) in accounts.iter().zip(body.chunks_exact_mut(RECORD_SIZE)) {
                let slot: &mut [u8; RECORD_SIZE] = slot.try_into().expect("chunk is RECORD_SIZE");
                encode_account(account, slot);
            }
        }
        Batch::CreateTransfers(transfers) => {
            for (transfer, slot) in transfers.iter().zip(body.chunks_exact_mut(RECORD_SIZE)) {
                let slot: &mut [u8; RECORD_SIZE] = slot.try_into().expect("chunk is RECORD_SIZE");
                encode_transfer(transfer, slot);
            }
        }
    }
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4..8].copy_from_slice(&(frame_bytes as u32).to_le_bytes());
    header[8..16].copy_from_slice(&record.sequence.to_le_bytes());
    header[16..24].copy_from_slice(&record.timestamp.to_le_bytes());
    header[24..28].copy_from_slice(&(event_count as u32).to_le_bytes());
    header[28] = kind_byte(record.batch.kind());
    header[32..36].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let header_crc = crc32c::crc32c(&header[0..44]);
    header[44..48].copy_from_slice(&header_crc.to_le_bytes());
    // Paired check: what we just wrote must read back as the same header.
    debug_assert!(
        decode_frame_header(&out[start..])
            .is_ok_and(|h| h.sequence == record.sequence && h.frame_bytes as usize == frame_bytes)
    );
}

/// Checks a frame header (not the body) at the start of `bytes`.
pub fn decode_frame_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = bytes
        .get(..FRAME_HEADER_SIZE)
        .ok_or(FrameError::Incomplete {
            needed: FRAME_HEADER_SIZE,
            available: bytes.len(),
        })?;
    if header[0..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if crc32c::crc32c(&header[0..44]) != le_u32(header, 44) {
        return Err(FrameError::BadHeaderChecksum);
    }
    let frame_bytes = le_u32(header, 4);
    let event_count = le_u32(header, 24);
    if event_count as usize > BATCH_EVENTS_MAX {
        return Err(FrameError::Invalid(format!(
            "event count {event_count} exceeds {BATCH_EVENTS_MAX}"
        )));
    }
    // event_count is bounded above, so this cannot overflow.
    let frame_bytes_expected = FRAME_HEADER_SIZE + event_count as usize * RECORD_SIZE;
    if frame_bytes as usize != frame_bytes_expected {
        return Err(FrameError::Invalid(format!(
            "frame bytes {frame_bytes} do not match {event_count} events"
        )));
    }
    let kind = match header[28] {
        KIND_CREATE_ACCOUNTS => BatchKind::CreateAccounts,
        KIND_CREATE_TRANSFERS => BatchKind::CreateTransfers,
        other => return Err(FrameError::Invalid(format!("unknown batch kind {other}"))),
    };
    if header[29..32].iter().any(|&b| b != 0) || header[36..44].iter().any(|&b| b != 0) {
        return Err(FrameError::Invalid("reserved bytes are not zero".into()));
    }
    Ok(FrameHeader {
        frame_bytes,
        sequence: le_u64(header, 8),
        timestamp: le_u64(header, 16),
        event_count,
        kind,
        body_crc: le_u32(header, 32),
    })
}

/// Checks the body of a frame whose header is `header`, without decoding the records.
pub fn check_frame_body<'a>(header: &FrameHeader, bytes: &'a [u8]) -> Result<&'a [u8], FrameError> {
    let frame_bytes = header.frame_bytes as usize;
    let frame = bytes.get(..frame_bytes).ok_or(FrameError::Incomplete {
        needed: frame_bytes,
        available: bytes.len(),
    })?;
    let body = &frame[FRAME_HEADER_SIZE..];
    if crc32c::crc32c(body) != header.body_crc {
        return Err(FrameError::BadBodyChecksum);
    }
    Ok(body)
}

/// Decodes the records of a checked body.
pub fn decode_body(header: &FrameHeader, body: &[u8]) -> Result<Batch, FrameError> {
    let event_count = header.event_count as usize;
    debug_assert_eq!(body.len(), event_count * RECORD_SIZE);
    let bad = |index, error| FrameError::BadRecord { index, error };
    Ok(match header.kind {
        BatchKind::CreateAccounts => {
            let mut accounts = Vec::with_capacity(event_count);
            for index in 0..event_count {
                let bytes = codec::record_at(body, index).map_err(|e| bad(index, e))?;
                accounts.push(decode_account(bytes).map_err(|e| bad(index, e))?);
            }
            Batch::CreateAccounts(accounts)
        }
        BatchKind::CreateTransfers => {
            let mut transfers = Vec::with_capacity(event_count);
            for index in 0..event_count {
                let bytes = codec::record_at(body, index).map_err(|e| bad(index, e))?;
                transfers.push(decode_transfer(bytes).map_err(|e| bad(index, e))?);
            }
            Batch::CreateTransfers(transfers)
        }
    })
}

/// Decodes one whole frame at the start of `bytes`: the record and the bytes it took.
/// Never panics, whatever the bytes. The log reads frames piecewise (header, checks,
/// body); this whole-frame form serves the `layout` module's users and the tests.
#[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
pub fn decode_frame(bytes: &[u8]) -> Result<(LogRecord, usize), FrameError> {
    let header = decode_frame_header(bytes)?;
    let body = check_frame_body(&header, bytes)?;
    let batch = decode_body(&header, body)?;
    Ok((
        LogRecord {
            sequence: header.sequence,
            timestamp: header.timestamp,
            batch,
        },
        header.frame_bytes as usize,
    ))
}

/// The offset of the first position at or after `from` where a frame header with a good
/// checksum starts, if any. Used to tell a torn tail (nothing valid after the damage)
/// from damage inside the committed log (a valid frame after it).
pub fn find_valid_frame_header(bytes: &[u8], from: usize) -> Option<usize> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_SIZE)?;
    (from..=last_start).find(|&offset| {
        bytes[offset..offset + 4] == FRAME_MAGIC && decode_frame_header(&bytes[offset..]).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tally_types::Transfer;

    fn transfers_record(sequence: u64, events: usize) -> LogRecord {
        let transfers = (0..events)
            .map(|i| Transfer {
                id: i as u128 + 1,
                amount: 7,
                ledger: 156,
                code: 1,
                ..Transfer::default()
            })
            .collect();
        LogRecord {
            sequence,
            timestamp: 1_000 + sequence,
            batch: Batch::CreateTransfers(transfers),
        }
    }

    #[test]
    fn frame_round_trips_and_has_documented_size() {
        for events in [0, 1, 3, BATCH_EVENTS_MAX] {
            let record = transfers_record(42, events);
            let mut bytes = Vec::new();
            encode_frame(&record, &mut bytes);
            assert_eq!(bytes.len(), FRAME_HEADER_SIZE + events * RECORD_SIZE);
            assert_eq!(decode_frame(&bytes), Ok((record, bytes.len())));
        }
    }

    #[test]
    fn frame_header_fields_sit_at_documented_offsets() {
        let mut bytes = Vec::new();
        encode_frame(&transfers_record(0x0102, 2), &mut bytes);
        assert_eq!(&bytes[0..4], b"TLFR");
        assert_eq!(le_u32(&bytes, 4), 48 + 256);
        assert_eq!(le_u64(&bytes, 8), 0x0102);
        assert_eq!(le_u32(&bytes, 24), 2);
        assert_eq!(bytes[28], KIND_CREATE_TRANSFERS);
        assert_eq!(le_u32(&bytes, 32), crc32c::crc32c(&bytes[48..]));
    }

    #[test]
    fn every_single_bit_flip_in_a_frame_is_detected() {
        let mut bytes = Vec::new();
        encode_frame(&transfers_record(9, 2), &mut bytes);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame(&damaged).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn close_marker_round_trips_and_is_never_taken_for_a_header() {
        let marker = encode_close_marker(42);
        assert_eq!(decode_close_marker(&marker), Ok(42));
        assert_eq!(decode_segment_header(&marker), Err(HeaderError::BadMagic));
        let header = encode_segment_header(42);
        assert_eq!(decode_close_marker(&header), Err(HeaderError::BadMagic));
        assert_eq!(
            decode_close_marker(&marker[..63]),
            Err(HeaderError::Incomplete)
        );
        let longer = [&marker[..], &[0u8]].concat();
        assert_eq!(decode_close_marker(&longer), Err(HeaderError::Incomplete));
        for bit in 0..CLOSE_MARKER_SIZE * 8 {
            let mut damaged = marker;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_close_marker(&damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_flips() {
        let header = encode_segment_header(77);
        assert_eq!(decode_segment_header(&header), Ok(77));
        assert_eq!(
            decode_segment_header(&header[..63]),
            Err(HeaderError::Incomplete)
        );
        for bit in 0..SEGMENT_HEADER_SIZE * 8 {
            let mut damaged = header;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&damaged).is_err());
        }
    }

    #[test]
    fn the_spare_temp_name_is_the_spare_name_and_the_temp_suffix() {
        assert_eq!(
            SPARE_SEGMENT_TEMP_NAME,
            format!("{SPARE_SEGMENT_NAME}{TEMP_SUFFIX}")
        );
    }

    #[test]
    fn names_round_trip_and_reject_strangers() {
        assert_eq!(segment_name(1), "wal-00000000000000000001.log");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_snapshot_name(&snapshot_name(5)), Some(5));
        assert_eq!(parse_segment_name("wal-1.log"), None);
        assert_eq!(parse_segment_name("wal-0000000000000000000x.log"), None);
        assert_eq!(
            parse_snapshot_name("snapshot-00000000000000000005.snap.tmp"),
            None
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_frame(&bytes);
            let _ = decode_segment_header(&bytes);
            let _ = find_valid_frame_header(&bytes, 0);
        }

        #[test]
        fn decoding_a_damaged_valid_frame_never_panics(
            events in 0usize..4,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut bytes = Vec::new();
            encode_frame(&transfers_record(3, events), &mut bytes);
            for (position, value) in edits {
                let index = position % bytes.len();
                bytes[index] = value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn a_valid_header_with_garbage_body_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..1024),
            kind in 0u8..4,
        ) {
            // Forge a header with a correct header CRC over arbitrary counts and kinds.
            let count = (body.len() / RECORD_SIZE) as u32;
            let mut frame = vec![0u8; FRAME_HEADER_SIZE];
            frame[0..4].copy_from_slice(&FRAME_MAGIC);
            frame[4..8].copy_from_slice(&((FRAME_HEADER_SIZE as u32) + count * RECORD_SIZE as u32).to_le_bytes());
            frame[24..28].copy_from_slice(&count.to_le_bytes());
            frame[28] = kind;
            frame[32..36].copy_from_slice(&crc32c::crc32c(&body[..count as usize * RECORD_SIZE]).to_le_bytes());
            let crc = crc32c::crc32c(&frame[0..44]);
            frame[44..48].copy_from_slice(&crc.to_le_bytes());
            frame.extend_from_slice(&body);
            let _ = decode_frame(&frame);
        }
    }
}
