//! The journal's single writer: appends frames, rolls segments, applies retention and
//! cuts a torn tail at open.

use super::format::{
    FRAME_EVENTS_MAX, FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, SegmentHeader, check_frame_body,
    decode_frame_header, encode_frame, encode_segment_header, journal_segment_name,
};
use super::segments::{
    ReadAhead, SegmentFile, list_segments, read_frame_header, read_segment_header,
};
use crate::LogError;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tally_types::ChangeEvent;

/// Tuning of an [`EventJournal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// A new segment starts when the next frame would take the current one past this.
    /// A frame larger than this gets a segment of its own.
    pub segment_bytes_max: u64,
    /// Once the segments together take more than this, the oldest whole segments are
    /// deleted, never the newest.
    pub retention_bytes: u64,
}

/// Default segment size: 256 MiB.
pub const JOURNAL_SEGMENT_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;

/// Default retention: 4 GiB (about ten million events).
pub const JOURNAL_RETENTION_BYTES_DEFAULT: u64 = 4 * 1024 * 1024 * 1024;

/// The end of the current journal segment kept in the page cache for subscribers
/// reading live ([`EventJournal::start_writeback`]): at a million events a second,
/// about the last half second.
pub const JOURNAL_CACHED_BYTES: u64 = 64 * 1024 * 1024;

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes_max: JOURNAL_SEGMENT_BYTES_MAX_DEFAULT,
            retention_bytes: JOURNAL_RETENTION_BYTES_DEFAULT,
        }
    }
}

/// A segment the journal holds.
#[derive(Debug)]
struct Retained {
    path: PathBuf,
    bytes: u64,
}

/// The segment appends go to.
#[derive(Debug)]
struct Current {
    file: File,
    path: PathBuf,
    /// The timestamp in its name and header.
    first_timestamp: u64,
    /// Bytes written, header included: where the next frame goes.
    bytes: u64,
    frame_count: u64,
}

/// The event journal's single writer (docs/log-format.md §6).
///
/// Appends are not synced: the write-ahead log is the source of truth, and the engine
/// re-derives a lost tail from it. [`EventJournal::sync`] makes everything appended so
/// far durable.
///
/// Invariant: event timestamps strictly increase across frames and segments.
/// Invariant: after an I/O error on the write path the journal refuses every later
/// append and sync ([`LogError::JournalPoisoned`]).
#[derive(Debug)]
pub struct EventJournal {
    dir: PathBuf,
    options: JournalOptions,
    /// Oldest first; the last one is `current`'s.
    segments: VecDeque<Retained>,
    segments_bytes: u64,
    current: Option<Current>,
    /// Segments rolled away from since the last sync, not yet synced.
    unsynced_previous: Vec<File>,
    /// Bytes appended since the last sync or write-back started.
    bytes_not_written_back: u64,
    /// Where in the current segment the next write-back starts.
    writeback_from: u64,
    /// Where the current segment's pages still in the page cache begin.
    cached_from: u64,
    /// The segment rolled away from and where its pages still cached begin: let go once
    /// the current segment holds [`JOURNAL_CACHED_BYTES`] (its end stays cached for
    /// subscribers until then).
    previous_cached: Option<(File, u64)>,
    dir_sync_pending: bool,
    first_timestamp: Option<u64>,
    last_timestamp: Option<u64>,
    /// One frame being encoded; at most `FRAME_BYTES_MAX`.
    buffer: Vec<u8>,
    poisoned: bool,
    /// Set by [`EventJournal::skip_to`]: the next frame starts a segment, whose header
    /// records the skipped-to timestamp.
    roll_pending: bool,
}

/// What recovering the newest segment found.
struct RecoveredNewest {
    current: Current,
    first_timestamp: Option<u64>,
    last_timestamp: Option<u64>,
}

impl EventJournal {
    /// Opens or creates the journal in `dir` (created if missing); cuts a torn or corrupt
    /// tail off the last segment only. A damaged header of an older segment, or of the
    /// first frame of the oldest, is an error naming file and offset; older segments'
    /// frames are checked by [`EventReader`](super::EventReader) as it reads them.
    pub fn open(dir: &Path, options: JournalOptions) -> Result<EventJournal, LogError> {
        std::fs::create_dir_all(dir)
            .map_err(|error| LogError::io(dir.to_path_buf(), "create_dir_all", error))?;
        let mut listed = list_segments(dir)?;
        let mut newest = None;
        while let Some(segment) = listed.last() {
            if let Some(recovered) = recover_newest(segment)? {
                newest = Some(recovered);
                break;
            }
            // A header torn by a crash right after the file was created: no frame
            // follows it, so the file holds nothing.
            std::fs::remove_file(&segment.path)
                .map_err(|error| LogError::io(segment.path.clone(), "remove_file", error))?;
            sync_dir(dir)?;
            listed.pop();
        }
        let mut journal = EventJournal {
            dir: dir.to_path_buf(),
            options,
            segments: VecDeque::new(),
            segments_bytes: 0,
            current: None,
            unsynced_previous: Vec::new(),
            bytes_not_written_back: 0,
            writeback_from: 0,
            cached_from: 0,
            previous_cached: None,
            dir_sync_pending: false,
            first_timestamp: None,
            last_timestamp: None,
            buffer: Vec::new(),
            poisoned: false,
            roll_pending: false,
        };
        let Some(newest) = newest else {
            return Ok(journal);
        };
        let older = &listed[..listed.len() - 1];
        for segment in older {
            let file = File::open(&segment.path)
                .map_err(|error| LogError::io(segment.path.clone(), "open", error))?;
            if let Err(reason) = read_segment_header(&file, segment)? {
                return Err(LogError::corrupt(segment.path.clone(), 0, reason));
            }
            let bytes = file
                .metadata()
                .map_err(|error| LogError::io(segment.path.clone(), "metadata", error))?
                .len();
            journal.push_segment(segment.path.clone(), bytes);
        }
        journal.first_timestamp = match older.first() {
            Some(oldest) => Some(first_frame_timestamp(&oldest.path)?),
            None => newest.first_timestamp,
        };
        journal.last_timestamp = newest.last_timestamp;
        journal.push_segment(newest.current.path.clone(), newest.current.bytes);
        journal.current = Some(newest.current);
        Ok(journal)
    }

    /// The directory of its segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its tuning.
    pub fn options(&self) -> JournalOptions {
        self.options
    }

    /// Timestamp of the last event kept.
    pub fn last_timestamp(&self) -> Option<u64> {
        self.last_timestamp
    }

    /// Timestamp of the oldest event retained.
    pub fn first_timestamp(&self) -> Option<u64> {
        self.first_timestamp
    }

    /// The segment appends go to, by the timestamp in its name; `None` before the
    /// first. A reader told this by the writer need not list the directory while it
    /// reads that segment ([`EventReader::read_beside_writer`](super::EventReader)).
    pub fn newest_segment(&self) -> Option<u64> {
        self.current.as_ref().map(|current| current.first_timestamp)
    }

    /// Appends `events` as one checksummed frame (split into frames of at most
    /// [`FRAME_EVENTS_MAX`](super::FRAME_EVENTS_MAX) events); an empty slice is a no-op.
    /// Starts a new segment when the current one would pass `segment_bytes_max`, then
    /// applies retention. Not synced.
    ///
    /// # Panics
    ///
    /// Unless timestamps strictly increase and the first is greater than
    /// [`EventJournal::last_timestamp`] (and than 0).
    pub fn append(&mut self, events: &[ChangeEvent]) -> Result<(), LogError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        assert!(first.timestamp > self.last_timestamp.unwrap_or(0));
        assert!(
            events
                .windows(2)
                .all(|pair| pair[0].timestamp < pair[1].timestamp)
        );
        if self.poisoned {
            return Err(LogError::JournalPoisoned);
        }
        for chunk in events.chunks(FRAME_EVENTS_MAX) {
            self.buffer.clear();
            encode_frame(chunk, &mut self.buffer);
            if let Err(error) = self.write_frame(chunk[0].timestamp) {
                self.poisoned = true;
                return Err(error);
            }
            self.first_timestamp.get_or_insert(chunk[0].timestamp);
            self.last_timestamp = Some(chunk[chunk.len() - 1].timestamp);
        }
        self.apply_retention()
    }

    /// Records that the events up to `timestamp` that this journal does not hold will
    /// never be written to it (a cluster replica that took its state from another's
    /// snapshot has no events for the stretch the snapshot covers): the next frame
    /// starts a new segment whose header records `timestamp` as the last before it, so
    /// a reader asking for an event in the gap gets [`LogError::EventsRetired`], never
    /// a silent skip. A `timestamp` at or before [`EventJournal::last_timestamp`] does
    /// nothing. Not durable until the next frame is synced: whoever skips must find the
    /// gap again at the next open.
    pub fn skip_to(&mut self, timestamp: u64) {
        if timestamp > self.last_timestamp.unwrap_or(0) {
            self.last_timestamp = Some(timestamp);
            self.roll_pending = true;
        }
    }

    /// Makes everything appended so far durable: `fdatasync` of the segments written
    /// since the last sync, and of the directory after a new segment.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::JournalPoisoned);
        }
        let synced = self.sync_all_pending();
        if synced.is_err() {
            self.poisoned = true;
        }
        synced
    }

    /// Bytes appended since the last [`EventJournal::sync`] or
    /// [`EventJournal::start_writeback`]: the page cache holds them until the kernel
    /// writes them back (in bulk, once they are 30 s old by default).
    pub fn bytes_not_written_back(&self) -> u64 {
        self.bytes_not_written_back
    }

    /// Starts writing what the current segment gained since the last call out to the
    /// disk, without waiting for it and without making anything durable (see
    /// [`EventJournal::sync`] for that): called every MiB or so, it keeps the kernel
    /// from writing a busy minute's events back in one burst that the write-ahead
    /// log's syncs would queue behind.
    ///
    /// It also lets the page cache go of the pages more than [`JOURNAL_CACHED_BYTES`]
    /// behind, whose write-back started long ago (any still dirty stay): subscribers
    /// reading near the end find theirs cached, and the journal's new pages reuse freed
    /// memory (see `Wal::drop_synced_pages`).
    pub fn start_writeback(&mut self) {
        if let Some(current) = &self.current {
            let from = self.writeback_from.min(current.bytes);
            crate::page_cache::start_writeback(&current.file, from, current.bytes - from);
            self.writeback_from = current.bytes;
            let behind = crate::page_cache::page_start(from.saturating_sub(JOURNAL_CACHED_BYTES));
            if behind > self.cached_from {
                crate::page_cache::drop_cached(
                    &current.file,
                    self.cached_from,
                    behind - self.cached_from,
                );
                self.cached_from = behind;
            }
            if current.bytes >= JOURNAL_CACHED_BYTES {
                self.drop_previous_cached();
            }
        }
        self.bytes_not_written_back = 0;
    }

    /// Lets the page cache go of the rolled segment's tail, if one is still held.
    fn drop_previous_cached(&mut self) {
        if let Some((previous, cached_from)) = self.previous_cached.take() {
            // Length 0: to the end of the file.
            crate::page_cache::drop_cached(&previous, cached_from, 0);
        }
    }

    fn sync_all_pending(&mut self) -> Result<(), LogError> {
        self.bytes_not_written_back = 0;
        for file in self.unsynced_previous.drain(..) {
            file.sync_data()
                .map_err(|error| LogError::io(self.dir.clone(), "fdatasync", error))?;
        }
        if let Some(current) = &self.current {
            current
                .file
                .sync_data()
                .map_err(|error| LogError::io(current.path.clone(), "fdatasync", error))?;
        }
        if self.dir_sync_pending {
            sync_dir(&self.dir)?;
            self.dir_sync_pending = false;
        }
        Ok(())
    }

    /// Writes the encoded frame in `buffer`, first rolling to a new segment if needed.
    fn write_frame(&mut self, first_timestamp: u64) -> Result<(), LogError> {
        let frame_bytes = self.buffer.len() as u64;
        let roll = match &self.current {
            None => true,
            Some(_) if self.roll_pending => true,
            Some(current) => {
                current.frame_count > 0
                    && current.bytes + frame_bytes > self.options.segment_bytes_max
            }
        };
        if roll {
            self.roll(first_timestamp)?;
        }
        let current = self.current.as_mut().expect("a segment after rolling");
        current
            .file
            .write_all_at(&self.buffer, current.bytes)
            .map_err(|error| LogError::io(current.path.clone(), "append", error))?;
        current.bytes += frame_bytes;
        current.frame_count += 1;
        self.bytes_not_written_back += frame_bytes;
        self.segments_bytes += frame_bytes;
        let newest = self.segments.back_mut().expect("current is retained");
        newest.bytes = current.bytes;
        Ok(())
    }

    /// Starts the segment whose first event is `first_timestamp`.
    fn roll(&mut self, first_timestamp: u64) -> Result<(), LogError> {
        self.roll_pending = false;
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.frame_count == 0)
        {
            // A segment with no frame (its frames cut at open) must not stay behind a
            // newer one: readers take an older segment without frames for damage.
            self.remove_empty_current()?;
        }
        let path = self.dir.join(journal_segment_name(first_timestamp));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|error| LogError::io(path.clone(), "create", error))?;
        let header = encode_segment_header(SegmentHeader {
            first_timestamp,
            previous_last_timestamp: self.last_timestamp.unwrap_or(0),
        });
        file.write_all_at(&header, 0)
            .map_err(|error| LogError::io(path.clone(), "write header", error))?;
        if let Some(previous) = self.current.take() {
            let from = self.writeback_from.min(previous.bytes);
            crate::page_cache::start_writeback(&previous.file, from, previous.bytes - from);
            // Rolled twice within 64 MiB: the older one's tail goes now.
            self.drop_previous_cached();
            // A hint: without a second descriptor the pages are left to the kernel.
            self.previous_cached = previous
                .file
                .try_clone()
                .ok()
                .map(|f| (f, self.cached_from));
            self.unsynced_previous.push(previous.file);
        }
        self.dir_sync_pending = true;
        self.writeback_from = 0;
        self.cached_from = 0;
        self.push_segment(path.clone(), SEGMENT_HEADER_SIZE as u64);
        self.current = Some(Current {
            file,
            path,
            first_timestamp,
            bytes: SEGMENT_HEADER_SIZE as u64,
            frame_count: 0,
        });
        Ok(())
    }

    fn remove_empty_current(&mut self) -> Result<(), LogError> {
        let Some(empty) = self.current.take() else {
            return Ok(());
        };
        assert_eq!(empty.frame_count, 0);
        let retained = self.segments.pop_back().expect("current is retained");
        assert_eq!(retained.path, empty.path);
        self.segments_bytes -= retained.bytes;
        std::fs::remove_file(&empty.path)
            .map_err(|error| LogError::io(empty.path.clone(), "remove_file", error))?;
        self.dir_sync_pending = true;
        Ok(())
    }

    fn push_segment(&mut self, path: PathBuf, bytes: u64) {
        self.segments_bytes += bytes;
        self.segments.push_back(Retained { path, bytes });
    }

    /// Deletes the oldest segments while the journal holds more than `retention_bytes`,
    /// never the newest.
    fn apply_retention(&mut self) -> Result<(), LogError> {
        let mut deleted = false;
        while self.segments.len() > 1 && self.segments_bytes > self.options.retention_bytes {
            let oldest = self.segments.pop_front().expect("more than one segment");
            match std::fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(LogError::io(oldest.path, "remove_file", error)),
            }
            self.segments_bytes -= oldest.bytes;
            deleted = true;
        }
        if deleted {
            let oldest = self.segments.front().expect("the newest is never deleted");
            self.first_timestamp = Some(first_frame_timestamp(&oldest.path)?);
        }
        Ok(())
    }
}

/// Checks the newest segment and cuts whatever follows its last whole, valid frame.
/// `None` when its header is torn and nothing follows it (the file can go).
fn recover_newest(segment: &SegmentFile) -> Result<Option<RecoveredNewest>, LogError> {
    let path = &segment.path;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| LogError::io(path.clone(), "open", error))?;
    let file_bytes = file
        .metadata()
        .map_err(|error| LogError::io(path.clone(), "metadata", error))?
        .len();
    let header = match read_segment_header(&file, segment)? {
        Ok(header) => header,
        Err(_) if file_bytes <= SEGMENT_HEADER_SIZE as u64 => return Ok(None),
        Err(reason) => return Err(LogError::corrupt(path.clone(), 0, reason)),
    };
    let mut offset = SEGMENT_HEADER_SIZE as u64;
    let mut first_timestamp = None;
    let mut last_timestamp = header.previous_last_timestamp;
    let mut frame_count = 0;
    let mut reader = ReadAhead::new(&file, path);
    while let Ok(frame) = decode_frame_header(reader.read(offset, FRAME_HEADER_SIZE)?) {
        if frame.first_timestamp <= last_timestamp {
            break;
        }
        let body_bytes = frame.frame_bytes as usize - FRAME_HEADER_SIZE;
        let body = reader.read(offset + FRAME_HEADER_SIZE as u64, body_bytes)?;
        if body.len() < body_bytes || check_frame_body(&frame, body).is_err() {
            break;
        }
        first_timestamp.get_or_insert(frame.first_timestamp);
        last_timestamp = frame.last_timestamp;
        offset += frame.frame_bytes;
        frame_count += 1;
    }
    if offset < file_bytes {
        file.set_len(offset)
            .map_err(|error| LogError::io(path.clone(), "truncate", error))?;
        file.sync_data()
            .map_err(|error| LogError::io(path.clone(), "fdatasync", error))?;
    }
    Ok(Some(RecoveredNewest {
        current: Current {
            file,
            path: path.clone(),
            first_timestamp: segment.first_timestamp,
            bytes: offset,
            frame_count,
        },
        first_timestamp,
        last_timestamp: (last_timestamp > 0).then_some(last_timestamp),
    }))
}

/// The first event's timestamp in an older segment, which always holds a frame.
fn first_frame_timestamp(path: &Path) -> Result<u64, LogError> {
    let file = File::open(path).map_err(|error| LogError::io(path.to_path_buf(), "open", error))?;
    let offset = SEGMENT_HEADER_SIZE as u64;
    match read_frame_header(&file, path, offset)? {
        Some(Ok(frame)) => Ok(frame.first_timestamp),
        Some(Err(reason)) => Err(LogError::corrupt(path.to_path_buf(), offset, reason)),
        None => Err(LogError::corrupt(
            path.to_path_buf(),
            offset,
            "an older segment holds no frame",
        )),
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| LogError::io(dir.to_path_buf(), "fsync directory", error))
}
