//! A change-event subscription that outlives its connections: when the stream breaks
//! (the server stopped, the connection dropped), it subscribes again after the last
//! event it yielded, so its consumer sees every event once, in order.

use crate::error::{ClientError, Failure, classify, from_status};
use crate::rpc::{Rpc, gave_up};
use tally_proto::v1;
use tally_types::ChangeEvent;
use tonic::{Status, Streaming};

/// The state of one subscription between two events.
pub(crate) struct Subscription {
    rpc: Rpc,
    /// The timestamp of the last event yielded (or the one asked to start after).
    after: u64,
    stream: Option<Streaming<v1::ChangeEvent>>,
    /// Attempts failed in a row since the last event or the last stream opened.
    failures: u32,
    done: bool,
}

impl Subscription {
    pub(crate) fn new(rpc: Rpc, after: u64) -> Subscription {
        Subscription {
            rpc,
            after,
            stream: None,
            failures: 0,
            done: false,
        }
    }

    /// The next event, resubscribing as needed; `None` after an error was yielded.
    pub(crate) async fn next(&mut self) -> Option<Result<ChangeEvent, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            let status = match &mut self.stream {
                None => match self.rpc.subscribe_change_events(self.after).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        self.failures = 0;
                        continue;
                    }
                    Err(status) => status,
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(wire)) => {
                        let event = self.accept(&wire);
                        self.done = event.is_err();
                        return Some(event);
                    }
                    Ok(None) => Status::unavailable("the server ended the subscription"),
                    Err(status) => status,
                },
            };
            self.stream = None;
            if let Err(error) = self.back_off(status).await {
                self.done = true;
                return Some(Err(error));
            }
        }
    }

    /// A received event, checked to come after the last one.
    fn accept(&mut self, wire: &v1::ChangeEvent) -> Result<ChangeEvent, ClientError> {
        let event = tally_proto::change_event_from_proto(0, wire)
            .map_err(|error| ClientError::Protocol(format!("change {error}")))?;
        if event.timestamp <= self.after {
            return Err(ClientError::Protocol(format!(
                "change event {} is not after {}",
                event.timestamp, self.after
            )));
        }
        self.after = event.timestamp;
        self.failures = 0;
        Ok(event)
    }

    /// Waits before subscribing again, or gives up: a final status, or the retry
    /// policy's attempts spent in a row.
    async fn back_off(&mut self, status: Status) -> Result<(), ClientError> {
        let retry_after = match classify(&status) {
            Failure::Final => return Err(from_status(status, self.rpc.request_timeout)),
            Failure::Unavailable => None,
            Failure::Busy { retry_after } => retry_after,
        };
        self.failures += 1;
        if self.failures >= self.rpc.retry.attempts_max {
            return Err(gave_up(self.failures, status));
        }
        let wait = self.rpc.retry.backoff(self.failures, retry_after);
        tracing::debug!(after = self.after, failures = self.failures,
            wait_ms = wait.as_millis() as u64, code = ?status.code(),
            message = status.message(), "subscribing again");
        tokio::time::sleep(wait).await;
        Ok(())
    }
}
