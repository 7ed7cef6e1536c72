//! Publishing: the journal's events, in order, to JetStream, through a bounded window
//! of unacknowledged publishes.
//!
//! Each event goes to `<subject>.<kind>` with its JSON line as payload and header
//! `Nats-Msg-Id` = its timestamp, so JetStream drops a second copy within its duplicate
//! window. Each publish also carries `Nats-Expected-Last-Sequence`: the stream sequence
//! the previous publish will have. If one publish of the window is refused or lost,
//! every later one is refused too, so the stream never holds events out of order or
//! with a gap; after any broker error the publisher reads the stream's last message
//! again and resumes after it.

use crate::config::{Config, ConnectError};
use crate::journal::Journal;
use crate::resume::{self, Position};
use async_nats::jetstream::{self, context::Publish, context::PublishAckFuture, stream::Stream};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tally_types::CHANGE_EVENTS_LIMIT_MAX;
use tally_types::ChangeEvent;
use tally_types::currency::CurrencyTable;

/// Events read from the journal at once, at most (about 3 MiB).
const READ_EVENTS_MAX: usize = CHANGE_EVENTS_LIMIT_MAX;

/// One publish sent and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    /// The event's timestamp.
    timestamp: u64,
    /// The stream sequence it gets once stored.
    stream_sequence: u64,
    ack: PublishAckFuture,
}

/// Publishes a journal to a stream, from a position on.
#[derive(Debug)]
pub struct Publisher {
    config: Config,
    jetstream: jetstream::Context,
    stream: Stream,
    journal: Journal,
    currencies: CurrencyTable,
    /// What the stream is known to hold.
    position: Position,
    /// Events published since the start (acknowledged, duplicates included).
    events_published: u64,
}

impl Publisher {
    /// A publisher that starts after `position`.
    pub fn new(
        config: Config,
        jetstream: jetstream::Context,
        stream: Stream,
        journal: Journal,
        position: Position,
    ) -> Publisher {
        assert!(config.window_publishes_max > 0);
        Publisher {
            config,
            jetstream,
            stream,
            journal,
            currencies: CurrencyTable::default(),
            position,
            events_published: 0,
        }
    }

    /// Publishes every event after the position, then follows the journal forever.
    /// Broker errors are retried (with the same message ids) until the broker answers;
    /// only a journal error or a stream that is not Tally's ends it.
    pub async fn follow(&mut self) -> Result<Infallible, ConnectError> {
        let mut retry_interval = Duration::from_millis(100);
        loop {
            let Err(error) = self.publish_until_error().await;
            if !error.is_transient() {
                return Err(error);
            }
            tracing::warn!(%error, timestamp = self.position.timestamp, "publishing paused");
            loop {
                tokio::time::sleep(retry_interval).await;
                retry_interval = (retry_interval * 2).min(self.config.retry_interval_max);
                match self.resync().await {
                    Ok(()) => break,
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, "the stream is not reachable yet");
                    }
                    Err(error) => return Err(error),
                }
            }
            retry_interval = Duration::from_millis(100);
            tracing::info!(
                timestamp = self.position.timestamp,
                stream_sequence = self.position.stream_sequence,
                "publishing resumed"
            );
        }
    }

    /// What the stream is known to hold.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Reads the stream's last message again after an error: publishes that were sent
    /// but not acknowledged may have been stored.
    async fn resync(&mut self) -> Result<(), ConnectError> {
        self.stream = resume::ensure_stream(&self.jetstream, &self.config).await?;
        let last = resume::last_published(&self.stream, &self.config).await?;
        if last.stream_sequence != self.position.stream_sequence && last.timestamp > 0 {
            // Stored after the last acknowledgement (or lost by the broker since): the
            // stream's last message is the truth.
            self.position = last;
        } else {
            // As known (or a stream made anew, or purged: nothing to go back to).
            self.position.stream_sequence = last.stream_sequence;
        }
        Ok(())
    }

    /// Publishes until a publish or the journal fails.
    async fn publish_until_error(&mut self) -> Result<Infallible, ConnectError> {
        let window_max = self.config.window_publishes_max;
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(window_max);
        // Read ahead in large batches: one journal read per window would decode the
        // same frame again and again.
        let mut read: VecDeque<ChangeEvent> = VecDeque::with_capacity(READ_EVENTS_MAX);
        let mut timestamp_next = self.position.timestamp + 1;
        loop {
            if read.is_empty() {
                read.extend(self.journal.read(timestamp_next, READ_EVENTS_MAX)?);
                let Some(last) = read.back() else {
                    // Caught up: settle every publish, then wait for the journal.
                    if in_flight.is_empty() {
                        tokio::time::sleep(self.config.poll_interval).await;
                    }
                    while let Some(flight) = in_flight.pop_front() {
                        self.settle(flight).await?;
                    }
                    continue;
                };
                assert!(read[0].timestamp >= timestamp_next, "journal out of order");
                timestamp_next = last.timestamp + 1;
            }
            while in_flight.len() < window_max
                && let Some(event) = read.pop_front()
            {
                let stream_sequence = self.position.stream_sequence + in_flight.len() as u64;
                in_flight.push_back(self.send(&event, stream_sequence).await?);
            }
            if in_flight.len() >= window_max
                && let Some(flight) = in_flight.pop_front()
            {
                self.settle(flight).await?;
            }
        }
    }

    /// Sends one event, expecting the stream's last sequence to be
    /// `stream_sequence_last` when it arrives.
    async fn send(
        &self,
        event: &ChangeEvent,
        stream_sequence_last: u64,
    ) -> Result<InFlight, ConnectError> {
        let subject = format!("{}.{}", self.config.subject, event.kind.name());
        let payload = crate::journal::event_line(event, &self.currencies);
        let mut publish = Publish::build()
            .payload(payload.into())
            .message_id(event.timestamp.to_string());
        if stream_sequence_last > 0 {
            // JetStream ignores an expected sequence of 0: the first message of an
            // empty stream goes unchecked (its message id still deduplicates it).
            publish = publish.expected_last_sequence(stream_sequence_last);
        }
        let ack = self
            .jetstream
            .send_publish(subject, publish)
            .await
            .map_err(ConnectError::nats("publish"))?;
        Ok(InFlight {
            timestamp: event.timestamp,
            stream_sequence: stream_sequence_last + 1,
            ack,
        })
    }

    /// Waits for one publish's acknowledgement and advances the position.
    async fn settle(&mut self, flight: InFlight) -> Result<(), ConnectError> {
        let ack = flight
            .ack
            .await
            .map_err(ConnectError::nats("publish acknowledgement"))?;
        self.events_published += 1;
        if ack.duplicate {
            // Stored before (its acknowledgement was lost, or `--after` went back):
            // the stream's sequence did not move, so the publishes sent after this one
            // expect a sequence one too high and are refused; the resync that follows
            // picks up from here.
            self.position.timestamp = flight.timestamp;
            return Ok(());
        }
        if ack.sequence != flight.stream_sequence {
            return Err(ConnectError::Nats {
                call: "publish acknowledgement",
                message: format!(
                    "event {} stored at stream sequence {}, expected {}",
                    flight.timestamp, ack.sequence, flight.stream_sequence
                ),
            });
        }
        self.position = Position {
            timestamp: flight.timestamp,
            stream_sequence: ack.sequence,
        };
        if self.events_published.is_multiple_of(100_000) {
            tracing::info!(
                events_published = self.events_published,
                timestamp = self.position.timestamp,
                "published"
            );
        }
        Ok(())
    }
}
