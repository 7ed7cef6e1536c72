//! Readers of the journal: no lock, in this process or another, while the writer
//! appends, rolls and deletes segments.

use super::format::{
    FRAME_HEADER_SIZE, FRAME_MAGIC, SEGMENT_HEADER_SIZE, decode_frame_body, decode_frame_header,
};
use super::segments::{
    SegmentFile, list_segments, open_segment, read_at_most, read_frame_header, read_segment_header,
};
use crate::LogError;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tally_types::ChangeEvent;

/// How often a seek starts over because the segment it chose was deleted under it.
const SEEK_ATTEMPTS_MAX: usize = 8;

/// Where a reader is: a position between two frames of one segment.
#[derive(Debug)]
struct Cursor {
    segment: SegmentFile,
    /// Kept open: a segment deleted by retention stays readable through it.
    file: File,
    /// Where the next frame starts.
    offset: u64,
    /// Timestamp of the last event before `offset` (at the header: the previous
    /// segment's last).
    last_timestamp: u64,
}

/// Why reading a segment stopped.
enum Stop {
    /// `limit` events collected.
    Full,
    /// No whole, valid frame at the cursor: the end of the segment (`None`), or a frame
    /// that is incomplete or invalid (being written, if the segment is the newest).
    End(Option<String>),
}

/// What entering the next segment found.
enum Entered {
    Yes,
    /// Its header is not whole yet: the writer is creating it.
    NotReady,
    /// Deleted by retention before it could be opened.
    Gone,
}

/// A frame at the end of what the newest segment holds that does not check
/// ([`EventReader::unreadable_tail`]): one the writer is writing at this moment (it
/// finishes it at once), a write cut short by a crash, or damage. Opening the ledger
/// cuts it, and everything after it, and writes the events again from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the frame starts.
    pub offset: u64,
    /// Why it does not check.
    pub reason: String,
}

impl UnreadableTail {
    /// Where a frame with a valid header starts after this one, if any: then the bad
    /// frame is damage inside the journal, not a write cut short at its end.
    pub fn valid_frame_after(&self) -> Result<Option<u64>, LogError> {
        let file = File::open(&self.path)
            .map_err(|error| LogError::io(self.path.clone(), "open", error))?;
        // A window of 1 MiB at a time, overlapping by a header less one byte.
        let mut window = vec![0u8; 1 << 20];
        let mut from = self.offset + 1;
        loop {
            let read = read_at_most(&file, &self.path, from, &mut window)?;
            let bytes = &window[..read];
            let found = (0..read.saturating_sub(FRAME_HEADER_SIZE - 1)).find(|&at| {
                bytes[at..].starts_with(&FRAME_MAGIC)
                    && decode_frame_header(&bytes[at..at + FRAME_HEADER_SIZE]).is_ok()
            });
            if let Some(at) = found {
                return Ok(Some(from + at as u64));
            }
            if read < window.len() {
                return Ok(None);
            }
            from += (read - (FRAME_HEADER_SIZE - 1)) as u64;
        }
    }
}

/// A reader of the event journal (docs/log-format.md §6). Takes no lock: it works while
/// the writer, even in another process, appends, rolls segments and deletes old ones.
#[derive(Debug)]
pub struct EventReader {
    dir: PathBuf,
    cursor: Option<Cursor>,
    /// The events of one frame; at most `FRAME_EVENTS_MAX`.
    decoded: Vec<ChangeEvent>,
    /// Which frame `decoded` holds: its segment's first timestamp and its offset. A
    /// call that stops inside a frame leaves it here, so the next goes on without
    /// reading and decoding the frame again.
    decoded_frame: Option<(u64, u64)>,
    /// One frame body; at most `FRAME_BYTES_MAX`.
    body: Vec<u8>,
    /// Where the last [`EventReader::read`] stopped at a frame that does not check.
    unreadable_tail: Option<UnreadableTail>,
}

impl EventReader {
    /// Opens the journal in `dir` for reading, with no lock. A missing directory reads as
    /// empty.
    pub fn open(dir: &Path) -> Result<EventReader, LogError> {
        Ok(EventReader {
            dir: dir.to_path_buf(),
            cursor: None,
            decoded: Vec::new(),
            decoded_frame: None,
            body: Vec::new(),
            unreadable_tail: None,
        })
    }

    /// The frame that the last [`EventReader::read`] stopped at because it does not
    /// check, at the end of the newest segment; `None` when it read up to the end of
    /// what is written. A frame being written reads so for an instant; one that stays
    /// is a write cut short by a crash or damage ([`UnreadableTail`]).
    pub fn unreadable_tail(&self) -> Option<&UnreadableTail> {
        self.unreadable_tail.as_ref()
    }

    /// Timestamp of the oldest event the journal holds now, if any.
    pub fn first_timestamp(&self) -> Result<Option<u64>, LogError> {
        oldest_retained(&self.dir)
    }

    /// Up to `limit` events with timestamp >= `timestamp_min`, in order, from what is
    /// complete on disk now (a frame still being written at the tail of the newest
    /// segment is not there yet). Called again with `timestamp_min` just above the last
    /// event it returned, it goes on from where it stopped, without a rescan.
    ///
    /// Errors: [`LogError::EventsRetired`] when events at or after `timestamp_min` may
    /// have been deleted by retention; [`LogError::Corrupt`] for a damaged frame that is
    /// not at the tail of the newest segment.
    pub fn read(&mut self, timestamp_min: u64, limit: usize) -> Result<Vec<ChangeEvent>, LogError> {
        self.read_beside_writer(timestamp_min, limit, None)
    }

    /// [`EventReader::read`] for a reader in the writer's process, given the newest
    /// segment as the writer last reported it ([`EventJournal::newest_segment`], taken
    /// before this call): at the end of what that segment holds the read stops without
    /// listing the directory, which [`EventReader::read`] does at every end it reaches.
    /// A follower woken at each append would otherwise list it thousands of times a
    /// second. A segment started after `newest_segment` was taken is found by a later
    /// call, given the writer's next report.
    ///
    /// [`EventJournal::newest_segment`]: super::EventJournal::newest_segment
    pub fn read_beside_writer(
        &mut self,
        mut timestamp_min: u64,
        limit: usize,
        newest_segment: Option<u64>,
    ) -> Result<Vec<ChangeEvent>, LogError> {
        let mut events = Vec::new();
        self.unreadable_tail = None;
        if limit == 0 {
            return Ok(events);
        }
        let resumable = self
            .cursor
            .as_ref()
            .is_some_and(|cursor| cursor.last_timestamp < timestamp_min);
        if !resumable {
            self.cursor = self.seek(timestamp_min)?;
        }
        let mut sought_again = false;
        while self.cursor.is_some() {
            let stop = self.read_frames(timestamp_min, limit, &mut events)?;
            if let Stop::Full = stop {
                break;
            }
            let cursor = self.cursor.as_ref().expect("checked by the loop");
            let listed = match newest_segment == Some(cursor.segment.first_timestamp) {
                true => Vec::new(),
                false => list_segments(&self.dir)?,
            };
            let Some(next) = listed
                .iter()
                .find(|segment| segment.first_timestamp > cursor.segment.first_timestamp)
            else {
                if !listed.is_empty() && !sought_again && replaced(&cursor.segment, &cursor.file)? {
                    // The file was removed, or another took its name (a journal
                    // restored from a copy): find the events in the files there now.
                    // What this call read from the old file is not read again.
                    sought_again = true;
                    self.decoded_frame = None;
                    if let Some(last) = events.last() {
                        timestamp_min = last.timestamp + 1;
                    }
                    self.cursor = self.seek(timestamp_min)?;
                    continue;
                }
                // The newest segment: the rest is not written yet, or does not check.
                if let Stop::End(Some(reason)) = stop {
                    self.unreadable_tail = Some(UnreadableTail {
                        path: cursor.segment.path.clone(),
                        offset: cursor.offset,
                        reason,
                    });
                }
                break;
            };
            let newest = listed.last() == Some(next);
            // The writer finished this segment before it started `next`: read to its
            // end once more, and anything left there now is damage.
            match self.read_frames(timestamp_min, limit, &mut events)? {
                Stop::Full => break,
                Stop::End(Some(reason)) => {
                    let cursor = self.cursor.as_ref().expect("checked by the loop");
                    return Err(LogError::corrupt(
                        cursor.segment.path.clone(),
                        cursor.offset,
                        reason,
                    ));
                }
                Stop::End(None) => {}
            }
            match self.enter(next, newest, timestamp_min) {
                Ok(Entered::Yes | Entered::Gone) => {}
                Ok(Entered::NotReady) => break,
                // Hand out what was read first; the next call reports the gap.
                Err(LogError::EventsRetired { .. }) if !events.is_empty() => break,
                Err(error) => return Err(error),
            }
        }
        Ok(events)
    }

    /// Reads whole frames from the cursor, collecting events >= `timestamp_min`.
    /// Frames wholly before `timestamp_min` are skipped by their headers alone.
    fn read_frames(
        &mut self,
        timestamp_min: u64,
        limit: usize,
        events: &mut Vec<ChangeEvent>,
    ) -> Result<Stop, LogError> {
        let cursor = self.cursor.as_mut().expect("a cursor to read from");
        loop {
            if events.len() >= limit {
                return Ok(Stop::Full);
            }
            let path = &cursor.segment.path;
            let frame = match read_frame_header(&cursor.file, path, cursor.offset)? {
                None => return Ok(Stop::End(None)),
                Some(Err(reason)) => return Ok(Stop::End(Some(reason))),
                Some(Ok(frame)) => frame,
            };
            if frame.first_timestamp <= cursor.last_timestamp {
                return Ok(Stop::End(Some("frame timestamps go back".into())));
            }
            if frame.last_timestamp >= timestamp_min {
                let here = (cursor.segment.first_timestamp, cursor.offset);
                if self.decoded_frame != Some(here) {
                    self.decoded_frame = None;
                    self.body
                        .resize(frame.frame_bytes as usize - FRAME_HEADER_SIZE, 0);
                    let body_offset = cursor.offset + FRAME_HEADER_SIZE as u64;
                    if read_at_most(&cursor.file, path, body_offset, &mut self.body)?
                        < self.body.len()
                    {
                        return Ok(Stop::End(Some("frame is incomplete".into())));
                    }
                    self.decoded.clear();
                    if let Err(reason) = decode_frame_body(&frame, &self.body, &mut self.decoded) {
                        return Ok(Stop::End(Some(reason)));
                    }
                    self.decoded_frame = Some(here);
                }
                // A frame's events are in timestamp order.
                let first = self
                    .decoded
                    .partition_point(|event| event.timestamp < timestamp_min);
                let wanted = &self.decoded[first..];
                let room = limit - events.len();
                if wanted.len() > room {
                    // The cursor stays before this frame: the next call goes on in it.
                    events.extend_from_slice(&wanted[..room]);
                    return Ok(Stop::Full);
                }
                events.extend_from_slice(wanted);
            }
            cursor.offset += frame.frame_bytes;
            cursor.last_timestamp = frame.last_timestamp;
        }
    }

    /// Moves the cursor to the start of `next`, the segment after the cursor's, checking
    /// that no segment between them was deleted while events in it are still wanted.
    fn enter(
        &mut self,
        next: &SegmentFile,
        newest: bool,
        timestamp_min: u64,
    ) -> Result<Entered, LogError> {
        let Some(file) = open_segment(&next.path)? else {
            return Ok(Entered::Gone);
        };
        let header = match read_segment_header(&file, next)? {
            Ok(header) => header,
            Err(_) if newest => return Ok(Entered::NotReady),
            Err(reason) => return Err(LogError::corrupt(next.path.clone(), 0, reason)),
        };
        let cursor = self.cursor.as_ref().expect("a cursor to move on from");
        let previous_last = header.previous_last_timestamp;
        if previous_last < cursor.last_timestamp {
            return Err(LogError::corrupt(
                next.path.clone(),
                0,
                format!(
                    "the previous segment's last timestamp {previous_last} is before {}, read there",
                    cursor.last_timestamp
                ),
            ));
        }
        if previous_last > cursor.last_timestamp && timestamp_min <= previous_last {
            // Retention deleted the segments between, or the writer skipped: either way
            // the journal goes on at `next`.
            return Err(LogError::EventsRetired {
                dir: self.dir.clone(),
                timestamp_min,
                next_timestamp_kept: next.first_timestamp,
            });
        }
        self.cursor = Some(Cursor {
            segment: next.clone(),
            file,
            offset: SEGMENT_HEADER_SIZE as u64,
            last_timestamp: previous_last,
        });
        Ok(Entered::Yes)
    }

    /// A cursor at the start of the segment that holds `timestamp_min` (found by the
    /// segments' names); `None` when the journal holds no whole segment yet.
    fn seek(&mut self, timestamp_min: u64) -> Result<Option<Cursor>, LogError> {
        for _ in 0..SEEK_ATTEMPTS_MAX {
            let listed = list_segments(&self.dir)?;
            let Some(oldest) = listed.first() else {
                return Ok(None);
            };
            let start = listed
                .iter()
                .rposition(|segment| segment.first_timestamp <= timestamp_min)
                .unwrap_or(0);
            let segment = &listed[start];
            let Some(file) = open_segment(&segment.path)? else {
                continue; // Deleted by retention since it was listed.
            };
            let header = match read_segment_header(&file, segment)? {
                Ok(header) => header,
                Err(_) if start + 1 == listed.len() => return Ok(None),
                Err(reason) => return Err(LogError::corrupt(segment.path.clone(), 0, reason)),
            };
            let previous_last = header.previous_last_timestamp;
            if start == 0 && previous_last > 0 && timestamp_min <= previous_last {
                return Err(self.retired(timestamp_min, oldest.first_timestamp));
            }
            return Ok(Some(Cursor {
                segment: segment.clone(),
                file,
                offset: SEGMENT_HEADER_SIZE as u64,
                last_timestamp: header.previous_last_timestamp,
            }));
        }
        Err(LogError::io(
            self.dir.clone(),
            "open segment",
            io::Error::new(
                io::ErrorKind::NotFound,
                "segments kept being deleted while the reader looked for one",
            ),
        ))
    }

    /// The gap before the oldest segment.
    fn retired(&self, timestamp_min: u64, first_timestamp_fallback: u64) -> LogError {
        let next_timestamp_kept = oldest_retained(&self.dir)
            .ok()
            .flatten()
            .unwrap_or(first_timestamp_fallback);
        LogError::EventsRetired {
            dir: self.dir.clone(),
            timestamp_min,
            next_timestamp_kept,
        }
    }
}

/// Whether `segment`'s name no longer leads to `file`, the one a reader holds open: the
/// file was removed, or another took its name.
fn replaced(segment: &SegmentFile, file: &File) -> Result<bool, LogError> {
    let held = file
        .metadata()
        .map_err(|error| LogError::io(segment.path.clone(), "metadata", error))?;
    match std::fs::metadata(&segment.path) {
        Ok(named) => Ok((named.dev(), named.ino()) != (held.dev(), held.ino())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(LogError::io(segment.path.clone(), "metadata", error)),
    }
}

/// Timestamp of the first event of the oldest segment, if it holds a whole frame.
fn oldest_retained(dir: &Path) -> Result<Option<u64>, LogError> {
    for _ in 0..SEEK_ATTEMPTS_MAX {
        let listed = list_segments(dir)?;
        let Some(oldest) = listed.first() else {
            return Ok(None);
        };
        let Some(file) = open_segment(&oldest.path)? else {
            continue;
        };
        let offset = SEGMENT_HEADER_SIZE as u64;
        return match read_frame_header(&file, &oldest.path, offset)? {
            Some(Ok(frame)) => Ok(Some(frame.first_timestamp)),
            None | Some(Err(_)) if listed.len() == 1 => Ok(None),
            None => Err(LogError::corrupt(
                oldest.path.clone(),
                offset,
                "an older segment holds no frame",
            )),
            Some(Err(reason)) => Err(LogError::corrupt(oldest.path.clone(), offset, reason)),
        };
    }
    Ok(None)
}
