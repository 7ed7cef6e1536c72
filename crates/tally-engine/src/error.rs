//! The engine's errors: opening (or stopping) fails with [`EngineError`], a submission
//! with [`SubmitError`]. Event-level outcomes are `ResultCode`s, not errors.

use std::fmt;
use std::path::PathBuf;
use tally_log::LogError;
use tally_types::Batch;

/// Why a ledger could not be opened, or stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// The log, the snapshot or the directory lock failed (the message names the file).
    Log(LogError),
    /// The log and snapshots were read, but the state they hold does not load.
    Recovery(RecoveryError),
    /// A configuration field is out of range.
    Config {
        /// The [`crate::Config`] field at fault.
        field: &'static str,
        /// What the field must be, and what it was.
        reason: String,
    },
    /// The data directory could not be created.
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A thread of the engine (log, apply, shard, log reader) could not be started.
    Thread {
        /// The thread's name (`tally-log`, `tally-apply`, ...).
        name: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A commit thread panicked; shutdown joined it.
    ThreadPanicked {
        /// The thread's name.
        name: &'static str,
    },
    /// The log failed while the ledger ran (a write or sync error): every write after it
    /// was refused. Reported by [`crate::Ledger::shutdown`].
    LogFailed {
        /// What failed, as the log reported it.
        message: String,
    },
    /// Change events cannot be read: they are off ([`crate::Config::change_events`], or
    /// a ledger over injected storage), or writing them failed (they come back, derived
    /// from the log, when the ledger opens again).
    ChangeEvents {
        /// Why.
        message: String,
    },
    /// The change-event journal had not caught up with the last commit within the
    /// bounded wait of a read (a busy journal thread): asking again may succeed.
    ChangeEventsLate {
        /// The timestamp the journal had not reached.
        timestamp: u64,
        /// How long the read waited.
        waited: std::time::Duration,
    },
}

/// Why the state recovered from the log and snapshots does not load.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The newest valid snapshot holds a state that does not load.
    Snapshot {
        /// The last sequence the snapshot includes (its file name).
        sequence: u64,
        /// Why it does not load.
        source: tally_state::ImageError,
    },
    /// A log record does not follow the one before it (sequence or timestamp).
    RecordOutOfOrder {
        /// The record's sequence.
        sequence: u64,
        /// The sequence before it (of the record or the snapshot).
        sequence_before: u64,
        /// The record's timestamp.
        timestamp: u64,
        /// The last timestamp before it.
        timestamp_before: u64,
    },
    /// The log reader stopped before handing anything over (its own error, reported
    /// instead, says why).
    LogNotRead,
    /// The change-event journal ends before the snapshot recovery starts from, so the
    /// events in between can no longer be derived (the journal was damaged or removed
    /// in part).
    ChangeEventsBehind {
        /// The timestamp of the journal's last event.
        journal_last: u64,
        /// The timestamp of the snapshot's last account or transfer.
        snapshot_last: u64,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Log(error) => write!(f, "{error}"),
            EngineError::Recovery(error) => write!(f, "recovery failed: {error}"),
            EngineError::Config { field, reason } => {
                write!(f, "invalid configuration: {field} {reason}")
            }
            EngineError::DataDir { path, source } => {
                write!(f, "cannot create {}: {source}", path.display())
            }
            EngineError::Thread { name, source } => {
                write!(f, "cannot start thread {name}: {source}")
            }
            EngineError::ThreadPanicked { name } => write!(f, "thread {name} panicked"),
            EngineError::LogFailed { message } => write!(f, "log failed: {message}"),
            EngineError::ChangeEvents { message } => write!(f, "change events: {message}"),
            EngineError::ChangeEventsLate { timestamp, waited } => write!(
                f,
                "change events: the event journal did not reach timestamp {timestamp} \
                 within {} s: ask again",
                waited.as_secs()
            ),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Log(error) => Some(error),
            EngineError::Recovery(error) => Some(error),
            EngineError::DataDir { source, .. } | EngineError::Thread { source, .. } => {
                Some(source)
            }
            EngineError::Config { .. }
            | EngineError::ThreadPanicked { .. }
            | EngineError::LogFailed { .. }
            | EngineError::ChangeEvents { .. }
            | EngineError::ChangeEventsLate { .. } => None,
        }
    }
}

impl From<LogError> for EngineError {
    fn from(error: LogError) -> Self {
        EngineError::Log(error)
    }
}

impl From<RecoveryError> for EngineError {
    fn from(error: RecoveryError) -> Self {
        EngineError::Recovery(error)
    }
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::Snapshot { sequence, source } => {
                write!(f, "snapshot {sequence} does not load: {source}")
            }
            RecoveryError::RecordOutOfOrder {
                sequence,
                sequence_before,
                timestamp,
                timestamp_before,
            } => write!(
                f,
                "log record {sequence} does not follow {sequence_before} \
                 (timestamp {timestamp} after {timestamp_before})"
            ),
            RecoveryError::ChangeEventsBehind {
                journal_last,
                snapshot_last,
            } => write!(
                f,
                "the change-event journal ends at timestamp {journal_last}, before the \
                 snapshot's last record at {snapshot_last}: the events between are lost"
            ),
            RecoveryError::LogNotRead => f.write_str("the log was not read"),
        }
    }
}

impl std::error::Error for RecoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecoveryError::Snapshot { source, .. } => Some(source),
            RecoveryError::RecordOutOfOrder { .. }
            | RecoveryError::LogNotRead
            | RecoveryError::ChangeEventsBehind { .. } => None,
        }
    }
}

/// Why a batch got no results. Nothing of the batch was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError {
    /// The queue is full (at once with [`crate::Backpressure::Busy`], or after the
    /// configured wait): push back, retry later. The batch is handed back untouched, so
    /// a retry submits the very same events (and the same ids: retries are idempotent).
    Busy(Batch),
    /// More events than the batch limit.
    BatchTooLarge {
        /// Events in the batch.
        events: usize,
        /// The limit, [`tally_types::BATCH_EVENTS_MAX`].
        max: usize,
    },
    /// An event carries a field the engine owns (balances, timestamp).
    InvalidEvent {
        /// The event's position in the batch.
        index: usize,
        /// Which field, and why.
        reason: String,
    },
    /// A request time was given, but the ledger runs on the wall clock.
    ManualClockDisabled,
    /// The requested time is past [`tally_types::NOW_NS_MAX`], or the ledger's time
    /// leaves no room for the batch's stamps in u64.
    TimeOutOfRange {
        /// The requested time (ns since the Unix epoch).
        now: u64,
    },
    /// The ledger was shut down.
    Stopped,
    /// The log failed to write or sync; the ledger accepts no more writes. The message
    /// is the log's.
    Failed(String),
}

impl SubmitError {
    /// The batch handed back by [`SubmitError::Busy`], to submit again.
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Batch, SubmitError};
    ///
    /// let refused = SubmitError::Busy(Batch::CreateTransfers(Vec::new()));
    /// assert!(refused.into_batch().is_some());
    /// assert!(SubmitError::Stopped.into_batch().is_none());
    /// ```
    pub fn into_batch(self) -> Option<Batch> {
        match self {
            SubmitError::Busy(batch) => Some(batch),
            _ => None,
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Busy(_) => f.write_str("busy: the submission queue is full, retry later"),
            SubmitError::BatchTooLarge { events, max } => {
                write!(
                    f,
                    "batch of {events} events is larger than the maximum {max}"
                )
            }
            SubmitError::InvalidEvent { index, reason } => write!(f, "event {index}: {reason}"),
            SubmitError::ManualClockDisabled => f.write_str(
                "a requested time (\"now\") needs a ledger opened with Config::manual_clock",
            ),
            SubmitError::TimeOutOfRange { now } => {
                if *now > tally_types::NOW_NS_MAX {
                    write!(
                        f,
                        "now {now} is past the latest time accepted, {} ns (year 2262)",
                        tally_types::NOW_NS_MAX
                    )
                } else {
                    f.write_str("the ledger's time leaves no room in u64 for this batch's stamps")
                }
            }
            SubmitError::Stopped => f.write_str("the ledger is shut down"),
            SubmitError::Failed(message) => {
                write!(
                    f,
                    "the ledger stopped accepting writes after a log failure: {message}"
                )
            }
        }
    }
}

impl std::error::Error for SubmitError {}
