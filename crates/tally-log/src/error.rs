//! The one error type of the log crate. Every variant names the file (and, for damage,
//! the byte offset) so that an operator can find it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a log operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LogError {
    /// An operating-system call failed (EIO, ENOSPC, permission, ...).
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The operation: "append", "fdatasync", "rename", ...
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another holder (this process or another) has the data directory locked.
    Locked {
        /// The locked data directory.
        dir: PathBuf,
    },
    /// Checksummed data is damaged or inconsistent inside the committed log or a snapshot.
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage in `file`.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A segment the log needs is not there: a gap in the sequence of segments.
    MissingSegment {
        /// The file that should hold `first_sequence`.
        file: PathBuf,
        /// The first sequence the missing segment would hold.
        first_sequence: u64,
        /// How the gap was found.
        reason: String,
    },
    /// An earlier append hit an I/O error; the log refuses writes until it is reopened.
    Poisoned,
    /// No usable snapshot, and the log does not reach back far enough to do without one.
    Snapshot {
        /// The newest snapshot file found, or the directory when there is none.
        file: PathBuf,
        /// Why no snapshot could be used.
        reason: String,
    },
    /// Change events at or after `timestamp_min` are missing from the event journal: its
    /// retention deleted them, or it never held them (`EventJournal::skip_to`).
    EventsRetired {
        /// The event journal's directory.
        dir: PathBuf,
        /// The first timestamp asked for.
        timestamp_min: u64,
        /// The first event the journal holds after the gap (for a read before every
        /// segment, the oldest event retained).
        next_timestamp_kept: u64,
    },
    /// An earlier event-journal write hit an I/O error; the journal refuses writes until
    /// it is reopened.
    JournalPoisoned,
}

impl LogError {
    pub(crate) fn io(path: PathBuf, op: &'static str, source: io::Error) -> LogError {
        LogError::Io { path, op, source }
    }

    pub(crate) fn corrupt(file: PathBuf, offset: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            file,
            offset,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io { path, op, source } => {
                write!(f, "{op} failed on {}: {source}", path.display())
            }
            LogError::Locked { dir } => write!(
                f,
                "data directory {} is locked by another process (one at a time may open it: \
                 a ledger, or a reader such as `tally verify`)",
                dir.display()
            ),
            LogError::Corrupt {
                file,
                offset,
                reason,
            } => write!(
                f,
                "corrupt log data in {} at byte offset {offset}: {reason}",
                file.display()
            ),
            LogError::MissingSegment {
                file,
                first_sequence,
                reason,
            } => write!(
                f,
                "missing log segment {} (should start at sequence {first_sequence}): {reason}",
                file.display()
            ),
            LogError::Poisoned => f.write_str(
                "the write-ahead log refused the write: an earlier I/O error left its durability unknown; reopen the data directory",
            ),
            LogError::Snapshot { file, reason } => {
                write!(f, "no usable snapshot ({}): {reason}", file.display())
            }
            LogError::EventsRetired {
                dir,
                timestamp_min,
                next_timestamp_kept,
            } => write!(
                f,
                "change events from timestamp {timestamp_min} on are not all in the event \
                 journal in {}: deleted by its retention, or never held (a cluster replica that \
                 took its state from another's snapshot); the next event it holds has timestamp \
                 {next_timestamp_kept}",
                dir.display()
            ),
            LogError::JournalPoisoned => f.write_str(
                "the event journal refused the write: an earlier I/O error left its contents unknown; reopen it",
            ),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
