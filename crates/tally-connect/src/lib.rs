//! Publishes Tally's change events to NATS JetStream.
//!
//! The connector reads the event journal of a data directory (`DATA/events`, without
//! the directory's lock, while the engine writes it) and publishes every event, in
//! order, to the subject `<subject>.<kind>` of a JetStream stream (`tally.events.
//! single_phase`, ...): the payload is the event's JSON line, the header `Nats-Msg-Id`
//! its timestamp. It waits for JetStream's acknowledgement of each publish before it
//! counts the event as published, with a bounded window of publishes in flight.
//!
//! Delivery is at least once, and in practice exactly once: at start the connector
//! reads the stream's last message and resumes after its timestamp, so a restart of
//! the connector or of the broker neither loses nor repeats an event, and a publish
//! repeated after a lost acknowledgement is dropped by JetStream's deduplication.
//! `tally-connect --help` lists the flags; docs/events.md is the operator's guide.
//!
//! ```no_run
//! # async fn run() -> Result<(), tally_connect::ConnectError> {
//! let config = tally_connect::Config::new("data", "nats://127.0.0.1:4222");
//! tally_connect::run(config).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod config;
mod journal;
pub mod publisher;
pub mod resume;

pub use config::{Config, ConnectError};
pub use journal::Journal;
pub use publisher::Publisher;
pub use resume::Position;

use std::convert::Infallible;
use std::time::Duration;

/// Connects to NATS, makes sure the stream exists, finds where to resume and publishes
/// the journal forever. Returns only on an error that retrying cannot mend.
pub async fn run(config: Config) -> Result<Infallible, ConnectError> {
    if !config.data.is_dir() {
        // A journal not written yet reads as empty; a mistyped directory must not.
        return Err(ConnectError::Journal {
            dir: config.journal_dir(),
            message: format!(
                "the data directory {} does not exist",
                config.data.display()
            ),
        });
    }
    let journal = Journal::open(&config.journal_dir())?;
    let client = connect(&config).await?;
    let jetstream = async_nats::jetstream::new(client);
    let (stream, last) = start_position(&jetstream, &config).await?;
    let position = match config.after_timestamp {
        Some(timestamp) => Position {
            timestamp,
            stream_sequence: last.stream_sequence,
        },
        None => last,
    };
    tracing::info!(
        stream = %config.stream,
        subjects = %config.stream_subjects(),
        after = position.timestamp,
        stream_sequence = position.stream_sequence,
        "publishing change events"
    );
    Publisher::new(config, jetstream, stream, journal, position)
        .follow()
        .await
}

/// A client that reconnects forever (also when the first attempt fails) and logs its
/// connection changes.
async fn connect(config: &Config) -> Result<async_nats::Client, ConnectError> {
    async_nats::ConnectOptions::new()
        .name("tally-connect")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                // One per failed reconnection attempt while the broker is down.
                async_nats::Event::ClientError(error) => tracing::debug!(%error, "NATS"),
                other => tracing::warn!(event = %other, "NATS"),
            }
        })
        .connect(config.nats_url.as_str())
        .await
        .map_err(|error| ConnectError::Nats {
            call: "connect",
            message: format!("{}: {error}", config.nats_url),
        })
}

/// The stream and its last event, retried while the broker cannot be reached.
async fn start_position(
    jetstream: &async_nats::jetstream::Context,
    config: &Config,
) -> Result<(async_nats::jetstream::stream::Stream, Position), ConnectError> {
    let mut retry_interval = Duration::from_millis(100);
    loop {
        let attempt = async {
            let stream = resume::ensure_stream(jetstream, config).await?;
            let last = resume::last_published(&stream, config).await?;
            Ok::<_, ConnectError>((stream, last))
        };
        match attempt.await {
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "waiting for the stream");
                tokio::time::sleep(retry_interval).await;
                retry_interval = (retry_interval * 2).min(config.retry_interval_max);
            }
            result => return result,
        }
    }
}
