//! The engine's errors: opening fails with [`EngineError`], a submission with
//! [`SubmitError`]. Event-level outcomes are `ResultCode`s, not errors.

use std::fmt;
use tally_log::LogError;

/// Why a ledger could not be opened, or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// The log, the snapshot or the directory lock failed (the message names the file).
    Log(LogError),
    /// A snapshot or the log held a state that does not load.
    Recovery(String),
    /// The configuration is invalid.
    Config(String),
    /// A commit thread (log or apply) could not be started or joined.
    Thread(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Log(error) => write!(f, "{error}"),
            EngineError::Recovery(message) => write!(f, "recovery failed: {message}"),
            EngineError::Config(message) => write!(f, "invalid configuration: {message}"),
            EngineError::Thread(message) => write!(f, "commit thread: {message}"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<LogError> for EngineError {
    fn from(error: LogError) -> Self {
        EngineError::Log(error)
    }
}

/// Why a batch got no results. Nothing of the batch was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError {
    /// The queue is full: push back, retry later.
    Busy,
    /// More events than the batch limit.
    BatchTooLarge { events: usize, max: usize },
    /// An event carries a field the engine owns (balances, timestamp).
    InvalidEvent { index: usize, reason: String },
    /// A request time was given, but the ledger runs on the wall clock.
    ManualClockDisabled,
    /// The requested time is past [`tally_types::NOW_NS_MAX`], or the ledger's time
    /// leaves no room for the batch's stamps in u64.
    TimeOutOfRange { now: u64 },
    /// The ledger was shut down.
    Stopped,
    /// The log failed to write or sync; the ledger accepts no more writes.
    Failed(String),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Busy => f.write_str("busy: the submission queue is full, retry later"),
            SubmitError::BatchTooLarge { events, max } => {
                write!(
                    f,
                    "batch of {events} events is larger than the maximum {max}"
                )
            }
            SubmitError::InvalidEvent { index, reason } => write!(f, "event {index}: {reason}"),
            SubmitError::ManualClockDisabled => {
                f.write_str("\"now\" requires the manual clock (--manual-clock)")
            }
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
