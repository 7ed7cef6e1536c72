//! Change events over the wire (docs/spec.md §2, "Change events"): `GetChangeEvents`
//! reads a page of the ledger's event journal, `SubscribeChangeEvents` follows it.
//! Both leave out the events of ledgers outside the token's rights (lookups refuse
//! such records instead: an event page is a range of the log, not a list of ids).
//!
//! A subscription is one task per call that pulls from the ledger's follower (which
//! reads the journal's files) and pushes into a channel of
//! [`SUBSCRIPTION_EVENTS_BUFFERED_MAX`] events that tonic drains as HTTP/2 flow control
//! lets it: a slow reader makes the task wait, so it holds at most that many events,
//! and the ledger's commits never wait for it. The task ends when the client goes
//! away, when the ledger's follower ends, or when the server stops: then the stream
//! ends with `UNAVAILABLE`, and the client subscribes again after the last event it
//! handled.

use crate::auth::{Operation, Rights};
use crate::stats::ServerStats;
use std::pin::pin;
use std::sync::Arc;
use tally_engine::{ChangeEventReader, EngineError};
use tally_proto::v1;
use tally_types::{CHANGE_EVENTS_LIMIT_MAX, ChangeEvent, change_events_limit};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// Events a subscription holds for a client that reads slower than the ledger commits:
/// about 64 × 700 bytes encoded.
pub(crate) const SUBSCRIPTION_EVENTS_BUFFERED_MAX: usize = 64;

/// Pages of the journal one `GetChangeEvents` call reads when the token's ledgers
/// leave events out: bounds one call's work at 16 × 8,190 events read. The answer's
/// `timestamp_last` tells the client where to go on.
const CHANGE_EVENTS_PAGES_MAX: usize = 16;

/// The number of events asked for: 0 means the most, above the most is refused.
pub(crate) fn events_limit(limit: u32) -> Result<usize, Status> {
    usize::try_from(limit)
        .ok()
        .and_then(change_events_limit)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "limit {limit} is more than the maximum {CHANGE_EVENTS_LIMIT_MAX}"
            ))
        })
}

/// The status of a change-event read that failed.
pub(crate) fn events_status(error: &EngineError) -> Status {
    match error {
        // Off, past retention, or the journal failed: asking again does not help.
        EngineError::ChangeEvents { .. } => Status::failed_precondition(error.to_string()),
        // The journal was late (`ChangeEventsLate`), or the ledger stopped: it may help.
        _ => Status::unavailable(error.to_string()),
    }
}

/// True when the token may see `event`.
fn allowed(rights: &Rights, event: &ChangeEvent) -> bool {
    rights.ledger_allowed(tally_proto::change_event_ledger(event))
}

/// Room kept in a page's message for its `timestamp_last` field and framing.
const PAGE_FRAMING_BYTES: usize = 64;

/// The framing of one event in a page: its field tag and length (at most 4 bytes).
const EVENT_FRAMING_BYTES: usize = 8;

/// Up to `limit` events of the token's ledgers from `timestamp_min` on, in a message of
/// at most `bytes_max` bytes: a page that would grow past it ends early, and its
/// `timestamp_last` says where the next starts. Blocking: it waits for the journal to
/// hold every change up to `committed` (the last committed before the call), then
/// reads files.
pub(crate) fn read_page(
    reader: &ChangeEventReader,
    committed: u64,
    rights: &Rights,
    timestamp_min: u64,
    limit: usize,
    bytes_max: usize,
) -> Result<v1::ChangeEvents, EngineError> {
    assert!((1..=CHANGE_EVENTS_LIMIT_MAX).contains(&limit));
    let mut answer = v1::ChangeEvents::default();
    let mut bytes = PAGE_FRAMING_BYTES;
    let mut from = timestamp_min;
    for _ in 0..CHANGE_EVENTS_PAGES_MAX {
        let wanted = limit - answer.events.len();
        let events = reader.get(from, wanted, committed)?;
        let Some(last) = events.last() else {
            break;
        };
        assert!(
            last.timestamp >= answer.timestamp_last,
            "events out of order"
        );
        for event in &events {
            if allowed(rights, event) {
                let wire = tally_proto::change_event_to_proto(event);
                let size = prost::Message::encoded_len(&wire) + EVENT_FRAMING_BYTES;
                if bytes + size > bytes_max && !answer.events.is_empty() {
                    return Ok(answer);
                }
                bytes += size;
                answer.events.push(wire);
            }
            answer.timestamp_last = event.timestamp;
        }
        let journal_end = events.len() < wanted;
        if journal_end || answer.events.len() == limit || last.timestamp == u64::MAX {
            break;
        }
        from = last.timestamp + 1;
    }
    assert!(answer.events.len() <= limit);
    Ok(answer)
}

/// Forwards `events` (batches, `Ledger::subscribe_batches`) that the token may see
/// into `sender` until the client goes away, the ledger's follower ends, or `stopping`
/// turns `true`.
pub(crate) async fn forward(
    events: impl Stream<Item = Result<Vec<ChangeEvent>, EngineError>> + Send,
    rights: Arc<Rights>,
    sender: mpsc::Sender<Result<v1::ChangeEvent, Status>>,
    mut stopping: watch::Receiver<bool>,
    stats: Arc<ServerStats>,
) {
    let mut events = pin!(events);
    let follow = async {
        while let Some(item) = events.next().await {
            let batch = match item {
                Ok(batch) => batch,
                Err(error) => return Some(events_status(&error)),
            };
            for event in batch.iter().filter(|event| allowed(&rights, event)) {
                let wire = tally_proto::change_event_to_proto(event);
                if sender.send(Ok(wire)).await.is_err() {
                    return None;
                }
                stats.streamed(Operation::GetChangeEvents, 1);
            }
        }
        Some(Status::unavailable(
            "the ledger has shut down; subscribe again after the last event handled",
        ))
    };
    let last = tokio::select! {
        end = follow => end,
        // A dropped sender (no stop ever sent) keeps the stream going.
        Ok(_) = stopping.wait_for(|stopping| *stopping) => Some(Status::unavailable(
            "the server is stopping; subscribe again after the last event handled",
        )),
        () = sender.closed() => None,
    };
    if let Some(status) = last {
        // Ends the stream with this status once the client has read what came before
        // (a client that stops reading is dropped by the drain timeout at a stop).
        let _ = sender.send(Err(status)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal that was late may catch up: `UNAVAILABLE`, which clients retry; one
    /// that is off or failed will not: `FAILED_PRECONDITION`.
    #[test]
    fn a_late_journal_is_unavailable_and_a_failed_one_a_precondition() {
        let late = EngineError::ChangeEventsLate {
            timestamp: 7,
            waited: std::time::Duration::from_secs(5),
        };
        assert_eq!(events_status(&late).code(), tonic::Code::Unavailable);
        let off = EngineError::ChangeEvents {
            message: "off".into(),
        };
        assert_eq!(events_status(&off).code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn a_limit_of_zero_is_the_most_and_above_it_is_refused() {
        assert_eq!(events_limit(0).ok(), Some(CHANGE_EVENTS_LIMIT_MAX));
        assert_eq!(events_limit(1).ok(), Some(1));
        assert_eq!(events_limit(8_190).ok(), Some(8_190));
        let status = events_limit(8_191).expect_err("above the most");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
