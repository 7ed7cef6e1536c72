//! The commit thread: take every waiting batch, stamp it, log the group with one sync,
//! apply it under the state lock, answer.

use crate::clock::{batch_stamp, wall_clock_ns};
use crate::error::SubmitError;
use crate::ledger::{EventResult, Shared};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tally_log::{LogRecord, Wal};
use tally_types::Batch;
use tokio::sync::oneshot;

/// The answer channel of one submission.
pub(crate) type Reply = oneshot::Sender<Result<Vec<EventResult>, SubmitError>>;

/// One submission waiting in the queue.
#[derive(Debug)]
pub(crate) struct Request {
    pub batch: Batch,
    /// Requested stamp (manual clock only).
    pub now: Option<u64>,
    pub reply: Reply,
    /// When the submitter enqueued it, for the commit-latency histogram.
    pub enqueued: Instant,
}

/// State owned by the commit thread alone.
pub(crate) struct CommitThread {
    pub shared: std::sync::Arc<Shared>,
    pub wal: Wal,
    /// Sequence of the last batch logged.
    pub sequence_last: u64,
    /// Stamp of the last event logged (what the state machine will have applied).
    pub timestamp_last: u64,
    pub events_since_snapshot: u64,
}

/// How long the idle commit thread sleeps before re-checking the queue. Submitters
/// unpark it, so this bounds only a missed wake-up, never normal latency.
const IDLE_PARK: Duration = Duration::from_millis(5);

impl CommitThread {
    pub fn run(mut self) {
        let mut group: Vec<Request> = Vec::new();
        loop {
            self.take_group(&mut group);
            if group.is_empty() {
                if self.shared.draining.load(Ordering::SeqCst) && self.shared.queue.is_empty() {
                    return;
                }
                std::thread::park_timeout(IDLE_PARK);
                continue;
            }
            self.commit(&mut group);
        }
    }

    /// Takes waiting requests until the queue is empty or the group is full.
    fn take_group(&mut self, group: &mut Vec<Request>) {
        let events_max = self.shared.config.group_events_max;
        let mut events = 0;
        while events < events_max {
            let Some(request) = self.shared.queue.pop() else {
                break;
            };
            events += request.batch.len();
            group.push(request);
        }
    }

    fn commit(&mut self, group: &mut Vec<Request>) {
        let group_started = group
            .iter()
            .map(|r| r.enqueued)
            .min()
            .unwrap_or_else(Instant::now);
        if let Some(message) = self.shared.failure.lock().clone() {
            for request in group.drain(..) {
                let _ = request
                    .reply
                    .send(Err(SubmitError::Failed(message.clone())));
            }
            return;
        }
        let mut records = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let wall_now = wall_clock_ns();
        for request in group.drain(..) {
            let requested = if self.shared.config.manual_clock {
                request.now.unwrap_or(0)
            } else {
                wall_now
            };
            let Some(stamp) = batch_stamp(requested, self.timestamp_last, request.batch.len())
            else {
                let now = request.now.unwrap_or(requested);
                let _ = request.reply.send(Err(SubmitError::TimeOutOfRange { now }));
                continue;
            };
            self.sequence_last += 1;
            self.timestamp_last = stamp + request.batch.len().saturating_sub(1) as u64;
            records.push(LogRecord {
                sequence: self.sequence_last,
                timestamp: stamp,
                batch: request.batch,
            });
            replies.push(request.reply);
        }
        if records.is_empty() {
            return;
        }
        if let Err(error) = self.wal.append(&records) {
            // The page cache may have dropped the data: never retry, never answer ok.
            let message = error.to_string();
            *self.shared.failure.lock() = Some(message.clone());
            for reply in replies {
                let _ = reply.send(Err(SubmitError::Failed(message.clone())));
            }
            return;
        }
        let mut answers = Vec::with_capacity(records.len());
        {
            let mut state = self.shared.state.write();
            for record in &records {
                let codes = state.apply(record.timestamp, &record.batch);
                self.shared.metrics.count_results(&codes);
                answers.push(
                    codes
                        .into_iter()
                        .enumerate()
                        .map(|(index, code)| EventResult {
                            code,
                            timestamp: if code.is_ok() {
                                record.timestamp + index as u64
                            } else {
                                0
                            },
                        })
                        .collect::<Vec<_>>(),
                );
            }
            assert_eq!(
                state.last_timestamp(),
                self.timestamp_last,
                "log and state agree"
            );
        }
        let events: usize = records.iter().map(|r| r.batch.len()).sum();
        self.record_metrics(&records, events, group_started);
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A submitter that gave up waiting dropped its receiver; its batch is still in.
            let _ = reply.send(Ok(answer));
        }
        self.events_since_snapshot += events as u64;
        self.maybe_snapshot();
    }

    fn record_metrics(&self, records: &[LogRecord], events: usize, started: Instant) {
        let metrics = &self.shared.metrics;
        metrics
            .batches_committed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        metrics
            .events_committed
            .fetch_add(events as u64, Ordering::Relaxed);
        metrics.groups_committed.fetch_add(1, Ordering::Relaxed);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = metrics.commit_latency_us.lock().record(latency_us.max(1));
        let _ = metrics.group_events.lock().record((events as u64).max(1));
    }

    fn maybe_snapshot(&mut self) {
        let interval = self.shared.config.snapshot_events_interval;
        if interval == 0 || self.events_since_snapshot < interval {
            return;
        }
        self.events_since_snapshot = 0;
        let image = self.shared.state.read().image();
        if let Err(error) = self.wal.write_snapshot(self.sequence_last, &image) {
            // The log still holds everything; only a poisoned log stops the ledger.
            if self.wal.is_poisoned() {
                *self.shared.failure.lock() = Some(error.to_string());
            }
        }
    }
}
