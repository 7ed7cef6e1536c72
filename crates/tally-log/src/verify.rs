//! `tally verify`'s log half: every checksum of every segment and snapshot, read-only.

use crate::LogRecord;
use crate::error::LogError;
use crate::format;
use crate::scan::{self, Collect, Tail};
use crate::snapshot;
use crate::storage::{FsStorage, Storage};
use crate::wal::{Collected, RecoverySink};
use std::io;
use std::path::Path;
use tally_types::StateImage;

/// What [`verify`] found. Anything that would stop [`crate::Wal::open`] is an error
/// instead; what open would repair or work around is counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files present.
    pub segments: u64,
    /// Frames (client batches) in every segment present.
    pub records: u64,
    /// Events (accounts and transfers) in those frames.
    pub events: u64,
    /// Bytes of every segment present, preallocated zeros included.
    pub bytes: u64,
    /// Of those, zeros after the last frame of a segment: space preallocated for frames.
    pub preallocated_bytes: u64,
    /// First and last sequence present in the segments (0 and 0 for an empty log).
    pub sequence_first: u64,
    /// See `sequence_first`.
    pub sequence_last: u64,
    /// The newest readable snapshot's last sequence.
    pub snapshot_sequence: Option<u64>,
    /// Readable snapshots.
    pub snapshots: u64,
    /// Damaged snapshots, each with the reason; recovery falls back past them.
    pub snapshots_damaged: Vec<String>,
    /// Bytes of a torn write at the end of the log, up to its last non-zero byte, that
    /// the next open will discard (normal after a crash).
    pub torn_tail_bytes: u64,
    /// The last segment's header never reached the disk (a crash during rotation):
    /// the next open removes that segment.
    pub torn_segment: bool,
}

impl VerifyReport {
    /// True when nothing is damaged and nothing needs repair.
    pub fn is_clean(&self) -> bool {
        self.snapshots_damaged.is_empty() && self.torn_tail_bytes == 0 && !self.torn_segment
    }
}

/// Checks the data directory `dir` without changing anything.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    existing_dir(dir)?;
    verify_storage(&mut FsStorage::existing(dir))
}

/// [`verify`] over any storage.
pub fn verify_storage(storage: &mut dyn Storage) -> Result<VerifyReport, LogError> {
    check(storage, None)
}

/// What [`read_log`] found: the state to start from and every record after it.
#[derive(Debug)]
pub struct ReadLog {
    /// The checks of [`verify`], over the same bytes.
    pub report: VerifyReport,
    /// The newest readable snapshot: (last sequence included, state).
    pub snapshot: Option<(u64, StateImage)>,
    /// Every whole record after the snapshot, in sequence order (a torn tail left out,
    /// as recovery would cut it).
    pub records: Vec<LogRecord>,
}

/// Reads what recovery would recover from `dir`, checking every checksum as [`verify`]
/// does, and changing nothing: no torn tail is cut, no file made or removed. For
/// commands that only read a ledger (replaying the records onto the snapshot gives the
/// state [`crate::Wal::open`] would recover).
pub fn read_log(dir: &Path) -> Result<ReadLog, LogError> {
    existing_dir(dir)?;
    read_log_storage(&mut FsStorage::existing(dir))
}

/// [`read_log`] over any storage.
pub fn read_log_storage(storage: &mut dyn Storage) -> Result<ReadLog, LogError> {
    let mut collected = Collected::default();
    let report = check(storage, Some(&mut collected))?;
    Ok(ReadLog {
        report,
        snapshot: collected.snapshot,
        records: collected.records,
    })
}

/// [`read_log`], handing the snapshot and each record to `sink` as they are read (as
/// [`crate::Wal::open_with_sink`] does) instead of collecting them. On an error, what
/// the sink received must be dropped.
pub fn read_log_into(dir: &Path, sink: &mut dyn RecoverySink) -> Result<VerifyReport, LogError> {
    existing_dir(dir)?;
    check(&mut FsStorage::existing(dir), Some(sink))
}

fn existing_dir(dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(LogError::io(
        dir.to_path_buf(),
        "open data directory",
        io::Error::new(io::ErrorKind::NotFound, "not a directory"),
    ))
}

/// Checks every snapshot and segment; hands `keep` the state to recover from.
fn check(
    storage: &mut dyn Storage,
    keep: Option<&mut dyn RecoverySink>,
) -> Result<VerifyReport, LogError> {
    let listing = scan::list(storage)?;
    let mut report = VerifyReport::default();
    let keep_image = keep.is_some();
    let mut newest_image = None;
    // Newest first, so that the one recovery would load is read once, image kept when
    // asked; every older one is still checked.
    for (sequence, name) in listing.snapshots.iter().rev() {
        let newest = report.snapshot_sequence.is_none();
        match snapshot::read(storage, name, keep_image && newest) {
            Ok(loaded) => {
                assert_eq!(loaded.sequence, *sequence);
                report.snapshots += 1;
                if newest {
                    report.snapshot_sequence = Some(*sequence);
                    newest_image = loaded.image.map(|image| (*sequence, image));
                }
            }
            Err(error @ LogError::Corrupt { .. }) => {
                report.snapshots_damaged.push(error.to_string())
            }
            Err(error) => return Err(error),
        }
    }
    report.snapshots_damaged.reverse(); // oldest first, as listed
    let base = report.snapshot_sequence.unwrap_or(0);
    if listing.segments.is_empty() {
        if !listing.snapshots.is_empty() || listing.close_marker.is_some() {
            return Err(LogError::MissingSegment {
                file: storage.path(&format::segment_name(base + 1)),
                first_sequence: base + 1,
                reason: "snapshots or a close marker exist but no log segment does".into(),
            });
        }
        // An empty ledger: nothing to replay.
        if let Some(sink) = keep {
            sink.start(None);
        }
        return Ok(report);
    }
    let log = match keep {
        None => scan::scan_log(storage, &listing.segments, 0, base, &mut Collect::DecodeAll)?,
        Some(sink) => {
            assert_eq!(
                newest_image.as_ref().map(|(sequence, _)| *sequence),
                report.snapshot_sequence,
                "the newest readable snapshot was read with its image"
            );
            sink.start(newest_image);
            let mut collect = Collect::After {
                base,
                out: &mut |record| sink.record(record),
            };
            scan::scan_log(storage, &listing.segments, 0, base, &mut collect)?
        }
    };
    scan::check_close_marker(
        storage,
        listing.close_marker.as_deref(),
        &listing.segments,
        &log,
    )?;
    report.segments = log.segments;
    report.records = log.frames;
    report.events = log.events;
    report.bytes = log.bytes;
    report.preallocated_bytes = log.zero_tail_bytes;
    report.sequence_first = listing.segments[0].first_sequence;
    report.sequence_last = log.next_sequence - 1;
    if report.records == 0 {
        report.sequence_first = 0;
    }
    report.torn_tail_bytes = match log.last.map(|scan| scan.tail) {
        Some(Tail::Torn { torn_bytes, .. } | Tail::TornHeader { torn_bytes }) => torn_bytes,
        _ => 0,
    };
    report.torn_segment = matches!(
        log.last.map(|scan| scan.tail),
        Some(Tail::TornHeader { .. })
    );
    Ok(report)
}
