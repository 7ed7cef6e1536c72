//! What the connector is told at start, and its errors.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How to run the connector (`tally-connect --help` shows the same as flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory whose journal (`DATA/events`) is published.
    pub data: PathBuf,
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// The JetStream stream, created if missing.
    pub stream: String,
    /// The subject prefix: each event goes to `<subject>.<kind>`; the stream takes
    /// `<subject>.>`.
    pub subject: String,
    /// Publish the events after this timestamp instead of resuming after the stream's
    /// last message.
    pub after_timestamp: Option<u64>,
    /// Publishes sent and not yet acknowledged, at most.
    pub window_publishes_max: usize,
    /// How long to wait before looking at the journal again when it has nothing new.
    pub poll_interval: Duration,
    /// The longest wait between two attempts after a broker error.
    pub retry_interval_max: Duration,
}

impl Config {
    /// The defaults for a data directory and a NATS server: stream `TALLY_EVENTS`,
    /// subjects `tally.events.<kind>`, a window of 256 publishes, a 20 ms poll.
    pub fn new(data: impl Into<PathBuf>, nats_url: impl Into<String>) -> Config {
        Config {
            data: data.into(),
            nats_url: nats_url.into(),
            stream: "TALLY_EVENTS".to_string(),
            subject: "tally.events".to_string(),
            after_timestamp: None,
            window_publishes_max: 256,
            poll_interval: Duration::from_millis(20),
            retry_interval_max: Duration::from_secs(2),
        }
    }

    /// The journal directory of the data directory.
    pub fn journal_dir(&self) -> PathBuf {
        self.data.join("events")
    }

    /// The stream's subject filter, `<subject>.>`.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject)
    }
}

/// Why the connector stopped, or why one attempt failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The journal could not be opened or read: a fault of this machine, not retried.
    Journal {
        /// The journal directory.
        dir: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A call to NATS failed (connection lost, timeout, refused publish): retried.
    Nats {
        /// The call.
        call: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The stream is not one the connector can publish to (other subjects, a last
    /// message that is not a Tally event): not retried.
    Stream {
        /// The stream's name.
        stream: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConnectError {
    /// Whether another attempt may succeed (a broker or network fault).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectError::Nats { .. })
    }

    /// A `map_err` for the NATS call `call`.
    pub(crate) fn nats<E: fmt::Display>(call: &'static str) -> impl FnOnce(E) -> ConnectError {
        move |error| ConnectError::Nats {
            call,
            message: error.to_string(),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Journal { dir, message } => {
                write!(f, "event journal {}: {message}", dir.display())
            }
            ConnectError::Nats { call, message } => write!(f, "NATS {call}: {message}"),
            ConnectError::Stream { stream, message } => {
                write!(f, "JetStream stream {stream}: {message}")
            }
        }
    }
}

impl std::error::Error for ConnectError {}
