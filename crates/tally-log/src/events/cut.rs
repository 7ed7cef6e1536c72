//! Cutting the journal back to the write-ahead log's end, when it holds events of log
//! frames that are gone (a log tail cut at open, or frames lost from the disk).
//!
//! The log is the source of truth: an event the log no longer makes must not stay
//! readable, and its timestamp must not be taken by a new event. The cut events'
//! frames are kept in a file of their own, never deleted in silence.

use super::format::{FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, decode_frame_body};
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
    /// The file that keeps the removed frames' bytes, as they were.
    pub kept: PathBuf,
}

/// The name of the file [`EventJournal::cut_after`] keeps the frames it cuts in:
/// `torn-events-after-<timestamp>.bin`, which no part of the journal reads.
pub fn torn_events_name(timestamp: u64) -> String {
    format!("torn-events-after-{timestamp}.bin")
}

/// Where one segment is cut: the offset of its first frame with an event after the
/// timestamp, and those of that frame's events stamped at or before it.
struct SegmentCut {
    offset: u64,
    events_cut: u64,
    events_kept: Vec<ChangeEvent>,
}

impl EventJournal {
    /// Removes every event stamped after `timestamp`; a journal whose last event is at
    /// or before it comes back as it was, with `None`. The frames from the first one
    /// holding such an event on are copied into `keep_dir`/[`torn_events_name`] and
    /// synced, then cut (a segment left with no event is deleted); the events of that
    /// first frame stamped at or before `timestamp` are appended again. The journal is
    /// synced and reopened.
    ///
    /// A crash part way leaves the journal still ahead, or lacking some events at or
    /// before `timestamp`; the next recovery cuts again, or writes those again from
    /// the log.
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
        let kept = keep_dir.join(torn_events_name(timestamp));
        let mut keep = File::create(&kept).map_err(|e| LogError::io(kept.clone(), "create", e))?;
        let mut events = 0;
        let mut events_kept = Vec::new();
        for segment in list_segments(&dir)?.iter().rev() {
            let Some(cut) = find_cut(segment, timestamp)? else {
                break;
            };
            events += cut.events_cut;
            copy_and_cut(segment, cut.offset, &mut keep, &kept)?;
            if cut.offset > SEGMENT_HEADER_SIZE as u64 || !cut.events_kept.is_empty() {
                events_kept = cut.events_kept;
                break;
            }
        }
        keep.sync_data()
            .map_err(|e| LogError::io(kept.clone(), "fdatasync", e))?;
        sync_dir(keep_dir)?;
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

/// Finds where `segment` is to be cut: at its first frame with an event stamped after
/// `timestamp`; `None` when it has none.
fn find_cut(segment: &SegmentFile, timestamp: u64) -> Result<Option<SegmentCut>, LogError> {
    let path = &segment.path;
    let file = File::open(path).map_err(|e| LogError::io(path.clone(), "open", e))?;
    let mut reader = ReadAhead::new(&file, path);
    let mut offset = SEGMENT_HEADER_SIZE as u64;
    let mut cut: Option<SegmentCut> = None;
    loop {
        let bytes = reader.read(offset, FRAME_HEADER_SIZE)?;
        if bytes.is_empty() {
            return Ok(cut);
        }
        let frame = super::format::decode_frame_header(bytes)
            .map_err(|reason| LogError::corrupt(path.clone(), offset, reason))?;
        if let Some(cut) = &mut cut {
            cut.events_cut += frame.event_count as u64;
        } else if frame.last_timestamp > timestamp {
            let body_bytes = frame.frame_bytes as usize - FRAME_HEADER_SIZE;
            let body = reader.read(offset + FRAME_HEADER_SIZE as u64, body_bytes)?;
            let mut events = Vec::with_capacity(frame.event_count);
            if body.len() < body_bytes {
                return Err(LogError::corrupt(
                    path.clone(),
                    offset,
                    "frame is incomplete",
                ));
            }
            decode_frame_body(&frame, body, &mut events)
                .map_err(|reason| LogError::corrupt(path.clone(), offset, reason))?;
            events.retain(|event| event.timestamp <= timestamp);
            cut = Some(SegmentCut {
                offset,
                events_cut: (frame.event_count - events.len()) as u64,
                events_kept: events,
            });
        }
        offset += frame.frame_bytes;
    }
}

/// Appends `segment`'s bytes from `offset` on to `keep` and syncs it, then cuts them
/// from the segment, or deletes the segment when no frame is left in it.
fn copy_and_cut(
    segment: &SegmentFile,
    offset: u64,
    keep: &mut File,
    kept: &Path,
) -> Result<(), LogError> {
    let path = &segment.path;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path.clone(), "open", e))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
        .map_err(|e| LogError::io(path.clone(), "seek", e))?;
    // Streamed: a segment may be large.
    std::io::copy(&mut file, keep)
        .and_then(|_| keep.sync_data())
        .map_err(|e| LogError::io(kept.to_path_buf(), "copy the cut frames", e))?;
    if offset <= SEGMENT_HEADER_SIZE as u64 {
        drop(file);
        return std::fs::remove_file(path)
            .map_err(|e| LogError::io(path.clone(), "remove_file", e));
    }
    file.set_len(offset)
        .and_then(|()| file.sync_data())
        .map_err(|e| LogError::io(path.clone(), "truncate", e))
}
