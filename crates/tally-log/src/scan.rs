//! Reading the log back: listing the directory, checking segments frame by frame, and
//! telling a torn tail (cut it) from damage inside the committed log (stop). Shared by
//! recovery ([`crate::Wal::open`]) and [`crate::verify`].

use crate::LogRecord;
use crate::error::LogError;
use crate::format::{self, FrameError, FrameHeader, HeaderError};
use crate::storage::Storage;
use std::ops::Range;
use std::path::Path;

/// A segment file present in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    pub first_sequence: u64,
    pub name: String,
}

/// What the directory holds, sorted by sequence.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub segments: Vec<SegmentFile>,
    /// (last sequence included, file name), oldest first.
    pub snapshots: Vec<(u64, String)>,
    /// Snapshots and spare segments whose writer crashed before the rename.
    pub temps: Vec<String>,
    /// A whole, durable zero-filled file waiting to become the next segment.
    pub spare: Option<String>,
    /// The close marker, when the log was ever closed cleanly.
    pub close_marker: Option<String>,
}

pub(crate) fn list(storage: &mut dyn Storage) -> Result<Listing, LogError> {
    let names = storage
        .list()
        .map_err(|e| LogError::io(storage.path(""), "list data directory", e))?;
    let mut listing = Listing::default();
    for name in names {
        if let Some(first_sequence) = format::parse_segment_name(&name) {
            if first_sequence == 0 {
                // Sequences start at 1: the scan's arithmetic relies on it.
                return Err(LogError::corrupt(
                    storage.path(&name),
                    0,
                    "the segment's name says it starts at sequence 0; sequences start at 1"
                        .to_string(),
                ));
            }
            listing.segments.push(SegmentFile {
                first_sequence,
                name,
            });
        } else if let Some(sequence) = format::parse_snapshot_name(&name) {
            listing.snapshots.push((sequence, name));
        } else if name == format::SPARE_SEGMENT_NAME {
            listing.spare = Some(name);
        } else if name == format::CLOSE_MARKER_NAME {
            listing.close_marker = Some(name);
        } else if name == format::SPARE_SEGMENT_TEMP_NAME
            || name == format::CLOSE_MARKER_TEMP_NAME
            || name
                .strip_suffix(format::TEMP_SUFFIX)
                .and_then(format::parse_snapshot_name)
                .is_some()
        {
            listing.temps.push(name);
        }
    }
    listing.segments.sort_by_key(|s| s.first_sequence);
    listing.snapshots.sort_by_key(|s| s.0);
    Ok(listing)
}

/// How the end of a segment looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The frames end at the end of the file, or are followed only by zeros
    /// (preallocated space, [`SegmentScan::zero_tail_bytes`]).
    Clean,
    /// A crash left a partial or unchecksummable frame at `valid_bytes` with nothing
    /// valid after it: `torn_bytes` of it, up to the last non-zero byte, then
    /// `zero_bytes` of zeros to the end of the file. Zeros after a torn write are
    /// preallocated space the write did not reach (a write in place); recovery clears
    /// the torn bytes and keeps that space, or truncates when there is none.
    Torn {
        valid_bytes: u64,
        torn_bytes: u64,
        zero_bytes: u64,
    },
    /// The segment's own header never made it to disk whole (crash during rotation):
    /// the whole file is to be removed. `torn_bytes`: its bytes up to the last non-zero
    /// one (0 for a spare renamed into place before its header was written).
    TornHeader { torn_bytes: u64 },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentScan {
    /// One past the last valid frame's sequence.
    pub next_sequence: u64,
    /// Header plus whole valid frames.
    pub valid_bytes: u64,
    pub frames: u64,
    pub events: u64,
    pub tail: Tail,
    /// Zeros after the last frame, up to the end of the file: space preallocated for
    /// frames not written yet. Part of a clean tail, in any segment.
    pub zero_tail_bytes: u64,
}

/// What to do with each valid frame.
pub(crate) enum Collect<'a> {
    /// Decode the records after `base` and hand each to `out`, in sequence order
    /// (recovery after a snapshot at `base`).
    After {
        base: u64,
        out: &'a mut dyn FnMut(LogRecord),
    },
    /// Decode every record and drop it (verify).
    DecodeAll,
}

/// Checks one segment's bytes, read as the scan goes. Only the last segment may end in
/// a torn tail.
fn scan_segment(
    path: &Path,
    source: &mut SegmentBytes<'_>,
    name_sequence: u64,
    is_last: bool,
    collect: &mut Collect<'_>,
) -> Result<SegmentScan, LogError> {
    let corrupt = |offset: usize, reason: String| corrupt_at(path, offset, reason);
    source.load_from(0, format::SEGMENT_HEADER_SIZE)?;
    let header_matches = matches!(
        format::decode_segment_header(source.from(0)),
        Ok(first) if first == name_sequence
    );
    if !header_matches {
        source.load_from(0, source.len())?;
    }
    if let Some(torn_header) = check_segment_header(path, source.from(0), name_sequence, is_last)? {
        return Ok(torn_header);
    }
    let mut scan = SegmentScan {
        next_sequence: name_sequence,
        valid_bytes: format::SEGMENT_HEADER_SIZE as u64,
        frames: 0,
        events: 0,
        tail: Tail::Clean,
        zero_tail_bytes: 0,
    };
    let mut offset = format::SEGMENT_HEADER_SIZE;
    while offset < source.len() {
        // A whole frame, unless the file ends first: one that does not check is judged
        // on the rest of the file.
        source.load_from(offset, format::FRAME_BYTES_MAX)?;
        let mut checked = check_frame(source.from(offset));
        if checked.is_err() {
            // No frame starts with a zero byte (the magic), so zeros to the end of the
            // file are preallocated space, not a torn write.
            if source.zeros_to_end(offset)? {
                scan.zero_tail_bytes = (source.len() - offset) as u64;
                return Ok(scan);
            }
            source.load_from(offset, source.len() - offset)?;
            checked = check_frame(source.from(offset));
        }
        let rest = source.from(offset);
        let (header, body) = match checked {
            Ok((header, body)) => (header, &rest[body]),
            Err(error) => {
                let cut =
                    torn_tail(rest, offset, is_last, &error).map_err(|why| corrupt(offset, why))?;
                scan.tail = cut;
                return Ok(scan);
            }
        };
        if header.sequence != scan.next_sequence {
            return Err(corrupt(
                offset,
                format!(
                    "frame has sequence {}, expected {}",
                    header.sequence, scan.next_sequence
                ),
            ));
        }
        collect_frame(collect, &header, body)
            .map_err(|error| corrupt(offset, error.to_string()))?;
        offset += header.frame_bytes as usize;
        scan.next_sequence += 1;
        scan.valid_bytes = offset as u64;
        scan.frames += 1;
        scan.events += u64::from(header.event_count);
    }
    assert_eq!(
        offset,
        source.len(),
        "frames end exactly at the end of the file"
    );
    Ok(scan)
}

/// The frame at the start of `rest`, checked: its header and where its body is in
/// `rest`.
fn check_frame(rest: &[u8]) -> Result<(FrameHeader, Range<usize>), FrameError> {
    let header = format::decode_frame_header(rest)?;
    let body = format::check_frame_body(&header, rest)?;
    let start = format::FRAME_HEADER_SIZE;
    Ok((header, start..start + body.len()))
}

/// Bytes read from a segment at a time: the first frames are handed on while the rest
/// of the segment is still to be read (a whole 256 MiB segment read first held up the
/// replay of a restart by about 0.2 s).
const READ_STEP_BYTES: usize = 4 << 20;

/// A window on a segment's bytes, read as the scan asks ([`SegmentBytes::load_from`])
/// into a buffer reused across segments: what the scan has passed is let go, so the
/// buffer holds about [`READ_STEP_BYTES`] and a frame, not the segment (only damage
/// or a torn tail, judged on the rest of the file, reads that rest whole).
struct SegmentBytes<'s> {
    storage: &'s mut dyn Storage,
    name: &'s str,
    len: usize,
    /// The file's bytes from `start` on, as far as read.
    buffer: &'s mut Vec<u8>,
    start: usize,
}

impl<'s> SegmentBytes<'s> {
    fn open(
        storage: &'s mut dyn Storage,
        name: &'s str,
        buffer: &'s mut Vec<u8>,
    ) -> Result<Self, LogError> {
        let path = storage.path(name);
        let len = storage
            .len(name)
            .map_err(|e| LogError::io(path.clone(), "stat segment", e))?;
        if len > format::SEGMENT_FILE_BYTES_MAX {
            return Err(LogError::corrupt(
                path,
                0,
                format!(
                    "segment is {len} bytes, more than the {} a segment may hold",
                    format::SEGMENT_FILE_BYTES_MAX
                ),
            ));
        }
        buffer.clear();
        Ok(SegmentBytes {
            storage,
            name,
            len: usize::try_from(len).expect("a segment's length fits in memory"),
            buffer,
            start: 0,
        })
    }

    /// The file's length.
    fn len(&self) -> usize {
        self.len
    }

    /// The bytes read from `offset` on (which must not be before the window).
    fn from(&self, offset: usize) -> &[u8] {
        assert!(offset >= self.start, "the scan never goes back");
        &self.buffer[offset - self.start..]
    }

    /// Where the bytes read end in the file.
    fn end(&self) -> usize {
        self.start + self.buffer.len()
    }

    /// Reads on until the `bytes` bytes from `offset` (at most to the file's end) are
    /// in, in steps of at least [`READ_STEP_BYTES`]; the bytes before `offset` are let
    /// go first (the scan never goes back), so what stays to be moved is at most the
    /// frame that did not fit.
    fn load_from(&mut self, offset: usize, bytes: usize) -> Result<(), LogError> {
        let end = offset.saturating_add(bytes).min(self.len);
        if end <= self.end() {
            return Ok(());
        }
        assert!(offset >= self.start, "the scan never goes back");
        self.buffer.drain(..offset - self.start);
        self.start = offset;
        let loaded = self.end();
        let end = end.max(loaded + READ_STEP_BYTES).min(self.len);
        self.read(loaded, end)
    }

    /// Whether the file holds only zeros from `offset` to its end: read on step by step,
    /// each step let go once checked.
    fn zeros_to_end(&mut self, offset: usize) -> Result<bool, LogError> {
        if !format::is_zero(self.from(offset)) {
            return Ok(false);
        }
        while self.end() < self.len {
            // The window so far is zeros: only the file's position is kept.
            self.start = self.end();
            self.buffer.clear();
            let end = (self.start + READ_STEP_BYTES).min(self.len);
            self.read(self.start, end)?;
            if !format::is_zero(self.buffer) {
                // Back to an empty window at `offset`, for the rest to be read whole.
                self.start = offset;
                self.buffer.clear();
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Appends the file's bytes `from..end`, `from` being where the window ends.
    fn read(&mut self, from: usize, end: usize) -> Result<(), LogError> {
        debug_assert_eq!(from, self.end());
        let at = self.buffer.len();
        self.buffer.resize(at + (end - from), 0);
        self.storage
            .read_at(self.name, from as u64, &mut self.buffer[at..])
            .map_err(|e| LogError::io(self.storage.path(self.name), "read segment", e))
    }
}

fn corrupt_at(path: &Path, offset: usize, reason: String) -> LogError {
    LogError::corrupt(path.to_path_buf(), offset as u64, reason)
}

/// Checks a segment's header against its file name. `Ok(None)`: the frames follow.
/// `Ok(Some(scan))`: the last segment's header never reached the disk whole and nothing
/// valid follows it, so the whole file is a torn tail ([`Tail::TornHeader`]).
fn check_segment_header(
    path: &Path,
    bytes: &[u8],
    name_sequence: u64,
    is_last: bool,
) -> Result<Option<SegmentScan>, LogError> {
    let corrupt = |offset: usize, reason: String| corrupt_at(path, offset, reason);
    let error = match format::decode_segment_header(bytes) {
        Ok(first_sequence) if first_sequence != name_sequence => {
            return Err(corrupt(
                16,
                format!(
                    "header says first sequence {first_sequence}, the file name {name_sequence}"
                ),
            ));
        }
        Ok(_) => return Ok(None),
        Err(HeaderError::Unsupported(why)) => return Err(corrupt(0, why)),
        Err(error) => error,
    };
    if !is_last {
        return Err(corrupt(0, format!("segment {error}")));
    }
    // All zeros: a spare renamed into place whose header never reached the disk.
    let valid = match format::is_zero(bytes) {
        true => None,
        false => format::find_valid_frame_header(bytes, 0),
    };
    if let Some(valid) = valid {
        return Err(corrupt(
            0,
            format!("segment {error}, but a valid frame follows at byte {valid}"),
        ));
    }
    Ok(Some(SegmentScan {
        next_sequence: name_sequence,
        valid_bytes: 0,
        frames: 0,
        events: 0,
        tail: Tail::TornHeader {
            torn_bytes: (bytes.len() - format::zero_suffix_len(bytes)) as u64,
        },
        zero_tail_bytes: 0,
    }))
}

/// Does with one valid frame what `collect` asks: decodes its records and hands on
/// those after the base, or decodes and drops them. A body that does not decode is an
/// error.
fn collect_frame(
    collect: &mut Collect<'_>,
    header: &FrameHeader,
    body: &[u8],
) -> Result<(), FrameError> {
    match collect {
        Collect::After { base, out } if header.sequence > *base => {
            format::decode_body(header, body).map(|batch| {
                out(LogRecord {
                    sequence: header.sequence,
                    timestamp: header.timestamp,
                    batch,
                })
            })
        }
        Collect::After { .. } => Ok(()),
        Collect::DecodeAll => format::decode_body(header, body).map(drop),
    }
}

/// Decides whether a bad frame at `offset` is a torn tail (returns the cut) or damage
/// inside the committed log (returns why).
fn torn_tail(
    rest: &[u8],
    offset: usize,
    is_last: bool,
    error: &FrameError,
) -> Result<Tail, String> {
    if !error.may_be_torn_write() {
        return Err(error.to_string());
    }
    if !is_last {
        return Err(format!("{error}, in a segment that is not the last"));
    }
    if let Some(valid) = format::find_valid_frame_header(rest, 1) {
        let valid = offset + valid;
        return Err(format!(
            "{error}, but a valid frame follows at byte {valid}: damage inside the committed log"
        ));
    }
    let zero_bytes = format::zero_suffix_len(rest);
    Ok(Tail::Torn {
        valid_bytes: offset as u64,
        torn_bytes: (rest.len() - zero_bytes) as u64,
        zero_bytes: zero_bytes as u64,
    })
}

/// Totals over the segments read, and how the last one ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogScan {
    pub next_sequence: u64,
    pub segments: u64,
    pub frames: u64,
    pub events: u64,
    pub bytes: u64,
    /// Zeros after the frames, summed over the segments: preallocated, not yet written.
    pub zero_tail_bytes: u64,
    /// The last segment's scan, if any segment was read.
    pub last: Option<SegmentScan>,
}

/// Reads `segments[start..]` in order, checking that sequences run on without gaps from
/// at most `base + 1` (the first record after the snapshot) to the end.
pub(crate) fn scan_log(
    storage: &mut dyn Storage,
    segments: &[SegmentFile],
    start: usize,
    base: u64,
    collect: &mut Collect<'_>,
) -> Result<LogScan, LogError> {
    let mut log = LogScan {
        next_sequence: base + 1,
        segments: 0,
        frames: 0,
        events: 0,
        bytes: 0,
        zero_tail_bytes: 0,
        last: None,
    };
    let Some(first) = segments.get(start) else {
        return Ok(log);
    };
    if first.first_sequence > base + 1 {
        return Err(missing(
            storage,
            base + 1,
            format!(
                "the oldest segment present is {}, but sequence {} is needed{}",
                first.name,
                base + 1,
                if base == 0 {
                    String::new()
                } else {
                    format!(" after the snapshot at {base}")
                }
            ),
        ));
    }
    log.next_sequence = first.first_sequence;
    let mut buffer = Vec::new();
    for (index, segment) in segments.iter().enumerate().skip(start) {
        let path = storage.path(&segment.name);
        if segment.first_sequence > log.next_sequence {
            return Err(missing(
                storage,
                log.next_sequence,
                format!(
                    "the segment before ends at sequence {}, the next present is {}",
                    log.next_sequence - 1,
                    segment.name
                ),
            ));
        }
        if segment.first_sequence < log.next_sequence {
            return Err(LogError::corrupt(
                path,
                16,
                format!(
                    "segment starts at sequence {}, but the one before already reaches {}",
                    segment.first_sequence,
                    log.next_sequence - 1
                ),
            ));
        }
        let mut source = SegmentBytes::open(storage, &segment.name, &mut buffer)?;
        let is_last = index + 1 == segments.len();
        let scan = scan_segment(&path, &mut source, segment.first_sequence, is_last, collect)?;
        let segment_bytes = source.len() as u64;
        assert!(
            is_last || scan.tail == Tail::Clean,
            "only the last segment may be torn"
        );
        log.next_sequence = scan.next_sequence;
        log.segments += 1;
        log.frames += scan.frames;
        log.events += scan.events;
        log.bytes += segment_bytes;
        log.zero_tail_bytes += scan.zero_tail_bytes;
        log.last = Some(scan);
    }
    if log.next_sequence <= base {
        let last = segments.last().expect("at least one segment was read");
        return Err(LogError::corrupt(
            storage.path(&last.name),
            log.last.map_or(0, |scan| scan.valid_bytes),
            format!(
                "the log ends at sequence {}, before the snapshot at {base}: synced frames are gone",
                log.next_sequence - 1
            ),
        ));
    }
    Ok(log)
}

/// After a clean close every record up to the marker's sequence was whole and synced:
/// a log that now ends before it lost acknowledged records to damage (a flipped bit in
/// the newest frame looks like a torn write otherwise), which stops recovery. A marker
/// left from an earlier close stays true as the log grows, so it is never removed.
pub(crate) fn check_close_marker(
    storage: &mut dyn Storage,
    close_marker: Option<&str>,
    segments: &[SegmentFile],
    log: &LogScan,
) -> Result<(), LogError> {
    let Some(name) = close_marker else {
        return Ok(());
    };
    let path = storage.path(name);
    let len = storage
        .len(name)
        .map_err(|e| LogError::io(path.clone(), "stat close marker", e))?;
    let mut bytes = vec![0u8; (len as usize).min(format::CLOSE_MARKER_SIZE + 1)];
    storage
        .read_at(name, 0, &mut bytes)
        .map_err(|e| LogError::io(path.clone(), "read close marker", e))?;
    let closed_at = format::decode_close_marker(&bytes)
        .map_err(|error| LogError::corrupt(path, 0, format!("close marker {error}")))?;
    let log_last = log.next_sequence - 1;
    if log_last >= closed_at {
        return Ok(());
    }
    let (file, offset) = match (segments.last(), log.last) {
        (Some(segment), Some(scan)) => (storage.path(&segment.name), scan.valid_bytes),
        _ => (storage.path(""), 0),
    };
    Err(LogError::corrupt(
        file,
        offset,
        format!(
            "the log was closed cleanly at sequence {closed_at} but ends at {log_last}: \
             acknowledged frames after it are damaged"
        ),
    ))
}

fn missing(storage: &dyn Storage, first_sequence: u64, reason: String) -> LogError {
    LogError::MissingSegment {
        file: storage.path(&format::segment_name(first_sequence)),
        first_sequence,
        reason,
    }
}
