//! The event journal's byte layouts, as `docs/log-format.md` §6 specifies them. All
//! integers are little-endian; every header and body carries a CRC32C.
//!
//! Segment header (64 bytes):
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TALLYEVJ` |
//! | 8 | 2 | journal format version ([`JOURNAL_FORMAT_VERSION`]) |
//! | 10 | 2 | record layout version (`tally_types::codec::RECORD_LAYOUT_VERSION`) |
//! | 12 | 4 | header bytes (64) |
//! | 16 | 8 | first timestamp (equals the number in the file name) |
//! | 24 | 8 | last timestamp of the previous segment (0 for the first segment ever) |
//! | 32 | 28 | reserved, zero |
//! | 60 | 4 | CRC32C of bytes 0..60 |
//!
//! Frame header (48 bytes), followed by `event_count` 400-byte events:
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TEVF` |
//! | 4 | 4 | frame bytes, header included (48 + 400 × event_count) |
//! | 8 | 8 | timestamp of the first event |
//! | 16 | 8 | timestamp of the last event |
//! | 24 | 4 | event count (1 ..= [`FRAME_EVENTS_MAX`]) |
//! | 28 | 4 | CRC32C of the body |
//! | 32 | 12 | reserved, zero |
//! | 44 | 4 | CRC32C of bytes 0..44 |

use crate::format::{le_u16, le_u32, le_u64};
use tally_types::codec::RECORD_LAYOUT_VERSION;
use tally_types::{CHANGE_EVENT_SIZE, ChangeEvent, decode_change, encode_change};

/// Version of the journal's segment and frame layouts; bump on any change.
pub const JOURNAL_FORMAT_VERSION: u16 = 1;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TALLYEVJ";
/// Bytes of a journal segment header; the first frame starts right after it.
pub const SEGMENT_HEADER_SIZE: usize = 64;

pub(crate) const FRAME_MAGIC: [u8; 4] = *b"TEVF";
/// Bytes of a journal frame header; the frame's events follow it.
pub const FRAME_HEADER_SIZE: usize = 48;

/// Most events in one frame: a longer append is split into frames of at most this many.
/// Bounds every frame buffer to 48 + 400 × 16,384 bytes (6.6 MB).
pub const FRAME_EVENTS_MAX: usize = 16_384;

/// Largest frame in bytes.
pub const FRAME_BYTES_MAX: usize = FRAME_HEADER_SIZE + FRAME_EVENTS_MAX * CHANGE_EVENT_SIZE;

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(CHANGE_EVENT_SIZE.is_multiple_of(16) && FRAME_HEADER_SIZE == 48);

/// `events-<first timestamp, 20 digits>.log`: names sort in timestamp order.
pub fn journal_segment_name(first_timestamp: u64) -> String {
    format!("events-{first_timestamp:020}.log")
}

/// The first timestamp named by a journal segment file name, if it is one.
pub(crate) fn parse_journal_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("events-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub first_timestamp: u64,
    /// Last timestamp of the segment before this one; 0 for the first segment ever.
    pub previous_last_timestamp: u64,
}

pub(crate) fn encode_segment_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_SIZE] {
    let mut bytes = [0u8; SEGMENT_HEADER_SIZE];
    bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
    bytes[8..10].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
    bytes[10..12].copy_from_slice(&RECORD_LAYOUT_VERSION.to_le_bytes());
    bytes[12..16].copy_from_slice(&(SEGMENT_HEADER_SIZE as u32).to_le_bytes());
    bytes[16..24].copy_from_slice(&header.first_timestamp.to_le_bytes());
    bytes[24..32].copy_from_slice(&header.previous_last_timestamp.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(decode_segment_header(&bytes), Ok(header));
    bytes
}

/// Checks a segment header; the error says what is wrong.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    let bytes = bytes
        .get(..SEGMENT_HEADER_SIZE)
        .ok_or("segment header is incomplete")?;
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err("segment header magic is wrong".into());
    }
    if crc32c::crc32c(&bytes[0..60]) != le_u32(bytes, 60) {
        return Err("segment header CRC32C does not match".into());
    }
    let version = le_u16(bytes, 8);
    if version != JOURNAL_FORMAT_VERSION {
        return Err(format!(
            "journal format version {version}, this build reads {JOURNAL_FORMAT_VERSION}"
        ));
    }
    let layout = le_u16(bytes, 10);
    if layout != RECORD_LAYOUT_VERSION {
        return Err(format!(
            "record layout version {layout}, this build reads {RECORD_LAYOUT_VERSION}"
        ));
    }
    if le_u32(bytes, 12) as usize != SEGMENT_HEADER_SIZE || bytes[32..60].iter().any(|&b| b != 0) {
        return Err("segment header size or reserved bytes are wrong".into());
    }
    Ok(SegmentHeader {
        first_timestamp: le_u64(bytes, 16),
        previous_last_timestamp: le_u64(bytes, 24),
    })
}

/// A decoded frame header: where the frame ends and what it spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub frame_bytes: u64,
    pub first_timestamp: u64,
    pub last_timestamp: u64,
    pub event_count: usize,
    pub body_crc: u32,
}

/// Appends the frame of `events` (1 ..= [`FRAME_EVENTS_MAX`], timestamps increasing) to `out`.
pub(crate) fn encode_frame(events: &[ChangeEvent], out: &mut Vec<u8>) {
    assert!(!events.is_empty() && events.len() <= FRAME_EVENTS_MAX);
    let start = out.len();
    out.resize(start + FRAME_HEADER_SIZE, 0);
    let mut event_bytes = [0u8; CHANGE_EVENT_SIZE];
    for event in events {
        encode_change(event, &mut event_bytes);
        out.extend_from_slice(&event_bytes);
    }
    let body_crc = crc32c::crc32c(&out[start + FRAME_HEADER_SIZE..]);
    let frame_bytes = (out.len() - start) as u32;
    let header = &mut out[start..start + FRAME_HEADER_SIZE];
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4..8].copy_from_slice(&frame_bytes.to_le_bytes());
    header[8..16].copy_from_slice(&events[0].timestamp.to_le_bytes());
    header[16..24].copy_from_slice(&events[events.len() - 1].timestamp.to_le_bytes());
    header[24..28].copy_from_slice(&(events.len() as u32).to_le_bytes());
    header[28..32].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[0..44]);
    header[44..48].copy_from_slice(&header_crc.to_le_bytes());
}

/// Checks a frame header (its own CRC, sizes, timestamps); the error says what is wrong.
pub(crate) fn decode_frame_header(bytes: &[u8]) -> Result<FrameHeader, String> {
    let bytes = bytes
        .get(..FRAME_HEADER_SIZE)
        .ok_or("frame header is incomplete")?;
    if bytes[0..4] != FRAME_MAGIC {
        return Err("frame magic is wrong".into());
    }
    if crc32c::crc32c(&bytes[0..44]) != le_u32(bytes, 44) {
        return Err("frame header CRC32C does not match".into());
    }
    let event_count = le_u32(bytes, 24) as usize;
    let frame_bytes = u64::from(le_u32(bytes, 4));
    if event_count == 0 || event_count > FRAME_EVENTS_MAX {
        return Err(format!("frame event count {event_count} is out of range"));
    }
    if frame_bytes != (FRAME_HEADER_SIZE + event_count * CHANGE_EVENT_SIZE) as u64 {
        return Err(format!(
            "frame bytes {frame_bytes} do not match its event count"
        ));
    }
    let header = FrameHeader {
        frame_bytes,
        first_timestamp: le_u64(bytes, 8),
        last_timestamp: le_u64(bytes, 16),
        event_count,
        body_crc: le_u32(bytes, 28),
    };
    if header.first_timestamp == 0 || header.last_timestamp < header.first_timestamp {
        return Err("frame timestamps are out of order".into());
    }
    if bytes[32..44].iter().any(|&b| b != 0) {
        return Err("frame reserved bytes are not zero".into());
    }
    Ok(header)
}

/// Checks a frame body's CRC32C against its header.
pub(crate) fn check_frame_body(header: &FrameHeader, body: &[u8]) -> Result<(), String> {
    assert_eq!(body.len(), header.event_count * CHANGE_EVENT_SIZE);
    if crc32c::crc32c(body) != header.body_crc {
        return Err("frame body CRC32C does not match".into());
    }
    Ok(())
}

/// Checks a frame body against its header and decodes its events into `out`.
pub(crate) fn decode_frame_body(
    header: &FrameHeader,
    body: &[u8],
    out: &mut Vec<ChangeEvent>,
) -> Result<(), String> {
    check_frame_body(header, body)?;
    let start = out.len();
    let decoded = decode_events(header, body, out);
    if decoded.is_err() {
        out.truncate(start);
    }
    decoded
}

fn decode_events(
    header: &FrameHeader,
    body: &[u8],
    out: &mut Vec<ChangeEvent>,
) -> Result<(), String> {
    let mut previous: Option<u64> = None;
    for chunk in body.chunks_exact(CHANGE_EVENT_SIZE) {
        let bytes: &[u8; CHANGE_EVENT_SIZE] =
            chunk.try_into().expect("chunks_exact yields whole events");
        let event = decode_change(bytes).map_err(|error| format!("frame event: {error}"))?;
        let in_order = match previous {
            None => event.timestamp == header.first_timestamp,
            Some(previous) => event.timestamp > previous,
        };
        if !in_order {
            return Err("frame event timestamps do not increase from its first".into());
        }
        previous = Some(event.timestamp);
        out.push(event);
    }
    if previous != Some(header.last_timestamp) {
        return Err("frame's last event timestamp does not match its header".into());
    }
    Ok(())
}
