//! Where publishing resumes: the last Tally event the stream holds.
//!
//! The stream is the record of what was published. Its last message names the last
//! event published (header `Nats-Msg-Id`, the event's timestamp, or else the payload's
//! `timestamp`), so a restart of the connector or of the broker resumes right after it:
//! nothing is lost and nothing is published twice.

use crate::config::{Config, ConnectError};
use async_nats::jetstream::{self, message::StreamMessage, stream::Stream};

/// How far the stream goes: the last event published and the stream's last sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The timestamp of the last event published (0: none).
    pub timestamp: u64,
    /// The stream's last sequence (0: the stream never held a message).
    pub stream_sequence: u64,
}

/// The stream of `config`, created if missing; an existing stream must take
/// `<subject>.>`.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: &Config,
) -> Result<Stream, ConnectError> {
    let subjects = config.stream_subjects();
    let stream = jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: vec![subjects.clone()],
            ..Default::default()
        })
        .await
        .map_err(ConnectError::nats("create or look up the stream"))?;
    let stream_subjects = &stream.cached_info().config.subjects;
    if !stream_subjects.contains(&subjects) {
        return Err(ConnectError::Stream {
            stream: config.stream.clone(),
            message: format!("it takes subjects {stream_subjects:?}, not {subjects}"),
        });
    }
    Ok(stream)
}

/// The stream's last message and sequence, as a position to resume from.
pub async fn last_published(stream: &Stream, config: &Config) -> Result<Position, ConnectError> {
    let info = stream
        .get_info()
        .await
        .map_err(ConnectError::nats("stream info"))?;
    let stream_sequence = info.state.last_sequence;
    if info.state.messages == 0 {
        // Empty, or purged: nothing tells which event came last.
        return Ok(Position {
            timestamp: 0,
            stream_sequence,
        });
    }
    let message = stream
        .get_raw_message(stream_sequence)
        .await
        .map_err(ConnectError::nats("get the stream's last message"))?;
    let timestamp = event_timestamp(&message).ok_or_else(|| ConnectError::Stream {
        stream: config.stream.clone(),
        message: format!(
            "its last message (sequence {stream_sequence}, subject {}) is not a Tally \
             change event: no numeric Nats-Msg-Id header and no JSON timestamp",
            message.subject
        ),
    })?;
    Ok(Position {
        timestamp,
        stream_sequence,
    })
}

/// The event timestamp a published message carries: its `Nats-Msg-Id` header, or else
/// the payload's `timestamp` field (a number or a decimal string).
pub fn event_timestamp(message: &StreamMessage) -> Option<u64> {
    let from_header = message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .and_then(|id| id.as_str().parse::<u64>().ok());
    from_header.or_else(|| payload_timestamp(&message.payload))
}

/// The `timestamp` field of a JSON event.
pub fn payload_timestamp(payload: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.get("timestamp")? {
        serde_json::Value::Number(number) => number.as_u64(),
        serde_json::Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::payload_timestamp;

    #[test]
    fn payload_timestamp_reads_a_number_or_a_decimal_string() {
        assert_eq!(
            payload_timestamp(br#"{"timestamp":42,"kind":"refund"}"#),
            Some(42)
        );
        assert_eq!(
            payload_timestamp(br#"{"timestamp":"18446744073709551615"}"#),
            Some(u64::MAX)
        );
        assert_eq!(payload_timestamp(br#"{"timestamp":-1}"#), None);
        assert_eq!(payload_timestamp(br#"{"kind":"refund"}"#), None);
        assert_eq!(payload_timestamp(b"not json"), None);
    }
}
