//! Cutting the journal back to the write-ahead log's end, when it holds events of log
//! frames that are gone (a log tail cut at open, or frames lost from the disk).
//!
//! The log is the source of truth: an event the log no longer makes must not stay
//! readable, and its timestamp must not be taken by a new event. The cut events'
//! frames are kept in a file of their own, never deleted in silence; its name records
//! the last timestamp cut, so that the next open still knows it
//! ([`torn_events_floor`]).

use super::format::{
    FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, decode_frame_body, decode_frame_header,
};
use super::journal::{EventJournal, sync_dir};
use super::segments::{ReadAhead, SegmentFile, list_segments};
use crate::LogError;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use tally_types::ChangeEvent;

/// What [`EventJournal::cut_after`] took off the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalCut {
    /// Events removed: those stamped after the timestamp cut at.
    pub events: u64,
    /// The journal's last event before the cut: no later event may take a timestamp
    /// at or before it, which readers may have seen.
    pub last_before: u64,
    /// The file that keeps the removed frames' bytes, oldest first, as they were.
    pub kept: PathBuf,
}

const TORN_EVENTS_PREFIX: &str = "torn-events-after-";

/// The name of the file [`EventJournal::cut_after`] keeps the frames it cuts in, when
/// it cuts after `timestamp` a journal whose last event was at `last_before`:
/// `torn-events-after-<timestamp>-to-<last_before>.bin`, which no part of the journal
/// reads.
pub fn torn_events_name(timestamp: u64, last_before: u64) -> String {
    format!("{TORN_EVENTS_PREFIX}{timestamp}-to-{last_before}.bin")
}

/// The latest `last_before` that the files of cut events in `dir` record (0 when there
/// are none): a ledger stamps new events after it, even when it reopens before any new
/// event reached the journal.
///
/// # Errors
///
/// The directory cannot be listed.
pub fn torn_events_floor(dir: &Path) -> Result<u64, LogError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| LogError::io(dir.to_path_buf(), "read_dir", e))?;
    let mut floor = 0;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir.to_path_buf(), "read_dir", e))?;
        let name = entry.file_name();
        let last_before = name
            .to_str()
            .and_then(|name| name.strip_prefix(TORN_EVENTS_PREFIX))
            .and_then(|rest| rest.strip_suffix(".bin"))
            .and_then(|rest| rest.split_once("-to-"))
            .and_then(|(_, last)| last.parse::<u64>().ok());
        floor = floor.max(last_before.unwrap_or(0));
    }
    Ok(floor)
}

/// What one segment holds against the timestamp cut at.
enum SegmentCut {
    /// No frame at all (a roll just before a crash, or its frames cut at open).
    NoFrames,
    /// Every event at or before the timestamp.
    Before,
    /// From the frame at `offset` on, events after the timestamp: `events_cut` of them;
    /// `events_kept` are that first frame's events at or before it.
    At {
        offset: u64,
        events_cut: u64,
        events_kept: Vec<ChangeEvent>,
    },
}

impl EventJournal {
    /// Removes every event stamped after `timestamp`; a journal whose last event is at
    /// or before it comes back as it was, with `None`.
    ///
    /// The frames from the first one holding such an event on, over every segment
    /// concerned, are appended oldest first to `keep_dir`/[`torn_events_name`] and made
    /// durable (file and directory) before any is cut. Then they are cut (a segment
    /// left without a frame is deleted), the events of that first frame stamped at or
    /// before `timestamp` are appended again, and the journal is synced and reopened.
    ///
    /// A crash part way leaves the journal still ahead, which the next recovery cuts
    /// again (appending to the same kept file if the name is the same), or lacking some
    /// events at or before `timestamp`, which recovery writes again from the log.
    ///
    /// # Errors
    ///
    /// An I/O error, or a frame to cut that does not check (damage, named by file and
    /// offset).
    pub fn cut_after(
        mut self,
        timestamp: u64,
        keep_dir: &Path,
    ) -> Result<(EventJournal, Option<JournalCut>), LogError> {
        let Some(last_before) = self.last_timestamp().filter(|&last| last > timestamp) else {
            return Ok((self, None));
        };
        self.sync()?;
        let (dir, options) = (self.dir().to_path_buf(), self.options());
        drop(self);
        // Newest first, back to the segment the cut falls in.
        let mut plan: Vec<(SegmentFile, u64)> = Vec::new();
        let mut events = 0;
        let mut events_kept = Vec::new();
        for segment in list_segments(&dir)?.into_iter().rev() {
            match find_cut(&segment, timestamp)? {
                SegmentCut::Before => break,
                SegmentCut::NoFrames => plan.push((segment, SEGMENT_HEADER_SIZE as u64)),
                SegmentCut::At {
                    offset,
                    events_cut,
                    events_kept: kept,
                } => {
                    events += events_cut;
                    plan.push((segment, offset));
                    if offset > SEGMENT_HEADER_SIZE as u64 || !kept.is_empty() {
                        events_kept = kept;
                        break;
                    }
                }
            }
        }
        let kept = keep_dir.join(torn_events_name(timestamp, last_before));
        keep_frames(&plan, &kept, keep_dir)?;
        for (segment, offset) in &plan {
            cut_segment(segment, *offset)?;
        }
        sync_dir(&dir)?;
        let mut journal = EventJournal::open(&dir, options)?;
        journal.append(&events_kept)?;
        journal.sync()?;
        let cut = JournalCut {
            events,
            last_before,
            kept,
        };
        Ok((journal, Some(cut)))
    }
}

/// Where `segment` is to be cut against `timestamp`.
fn find_cut(segment: &SegmentFile, timestamp: u64) -> Result<SegmentCut, LogError> {
    let path = &segment.path;
    let file = File::open(path).map_err(|e| LogError::io(path.clone(), "open", e))?;
    let mut reader = ReadAhead::new(&file, path);
    let mut offset = SEGMENT_HEADER_SIZE as u64;
    let mut found = SegmentCut::NoFrames;
    loop {
        let bytes = reader.read(offset, FRAME_HEADER_SIZE)?;
        if bytes.is_empty() {
            return Ok(found);
        }
        let frame = decode_frame_header(bytes)
            .map_err(|reason| LogError::corrupt(path.clone(), offset, reason))?;
        match &mut found {
            SegmentCut::At { events_cut, .. } => *events_cut += frame.event_count as u64,
            _ if frame.last_timestamp <= timestamp => found = SegmentCut::Before,
            _ => {
                let body_bytes = frame.frame_bytes as usize - FRAME_HEADER_SIZE;
                let body = reader.read(offset + FRAME_HEADER_SIZE as u64, body_bytes)?;
                if body.len() < body_bytes {
                    return Err(LogError::corrupt(
                        path.clone(),
                        offset,
                        "frame is incomplete",
                    ));
                }
                let mut events = Vec::with_capacity(frame.event_count);
                decode_frame_body(&frame, body, &mut events)
                    .map_err(|reason| LogError::corrupt(path.clone(), offset, reason))?;
                events.retain(|event| event.timestamp <= timestamp);
                found = SegmentCut::At {
                    offset,
                    events_cut: (frame.event_count - events.len()) as u64,
                    events_kept: events,
                };
            }
        }
        offset += frame.frame_bytes;
    }
}

/// Appends the bytes each planned segment loses (`plan` is newest first) to `kept`,
/// oldest first, and makes the file and its directory entry durable.
fn keep_frames(plan: &[(SegmentFile, u64)], kept: &Path, keep_dir: &Path) -> Result<(), LogError> {
    let error = |op, e| LogError::io(kept.to_path_buf(), op, e);
    let mut keep = OpenOptions::new()
        .create(true)
        .append(true)
        .open(kept)
        .map_err(|e| error("create", e))?;
    for (segment, offset) in plan.iter().rev() {
        let path = &segment.path;
        let mut file = File::open(path).map_err(|e| LogError::io(path.clone(), "open", e))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(*offset))
            .map_err(|e| LogError::io(path.clone(), "seek", e))?;
        // Streamed: a segment may be large.
        std::io::copy(&mut file, &mut keep).map_err(|e| error("copy the cut frames", e))?;
    }
    keep.sync_data().map_err(|e| error("fdatasync", e))?;
    sync_dir(keep_dir)
}

/// Cuts `segment` at `offset`, or deletes it when no frame is left in it.
fn cut_segment(segment: &SegmentFile, offset: u64) -> Result<(), LogError> {
    let path = &segment.path;
    if offset <= SEGMENT_HEADER_SIZE as u64 {
        return std::fs::remove_file(path)
            .map_err(|e| LogError::io(path.clone(), "remove_file", e));
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path.clone(), "open", e))?;
    file.set_len(offset)
        .and_then(|()| file.sync_data())
        .map_err(|e| LogError::io(path.clone(), "truncate", e))
}
