//! Coalescing: single create calls from many tasks gathered into batches, the way
//! TigerBeetle's clients do it.
//!
//! One background task per operation (accounts, transfers) owns the receiving end of a
//! bounded queue of single calls. It keeps at most one batch in flight; while that batch
//! is out, the calls that arrive fill the next one, which leaves the moment the answer of
//! the first comes back. There is no timer: a lone call leaves at once.
//!
//! Bounds, per operation: the queue holds at most `batch_events_max` calls, the filling
//! batch at most `batch_events_max`, the batch in flight at most `batch_events_max`. A
//! caller that finds the queue full waits for room (backpressure).
//!
//! Invariant: every call that enters the queue gets exactly one answer, unless its caller
//! has gone away; the answer of the event at position `i` of a batch goes to the caller
//! at position `i`.

use crate::CreateResult;
use crate::error::ClientError;
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

/// The answer a single caller waits for.
pub(crate) type Reply = oneshot::Sender<Result<CreateResult, ClientError>>;

/// One single call waiting in the queue: its event and where its answer goes.
#[derive(Debug)]
pub(crate) struct Pending<E> {
    pub(crate) event: E,
    pub(crate) reply: Reply,
}

/// Runs the coalescer until every sender of `queue` is gone and every queued call is
/// answered. `send` sends one batch (retries included) and answers its results in order.
pub(crate) async fn run<E, S, F>(
    mut queue: mpsc::Receiver<Pending<E>>,
    batch_events_max: usize,
    send: S,
) where
    S: Fn(Vec<E>) -> F,
    F: Future<Output = Result<Vec<CreateResult>, ClientError>>,
{
    assert!(batch_events_max > 0);
    let mut filling: Vec<Pending<E>> = Vec::with_capacity(batch_events_max);
    let mut queue_open = true;
    loop {
        if filling.is_empty() {
            match queue.recv().await {
                Some(pending) => filling.push(pending),
                None => return,
            }
        }
        take_ready(&mut queue, &mut filling, batch_events_max);
        assert!(!filling.is_empty() && filling.len() <= batch_events_max);
        let (events, replies): (Vec<E>, Vec<Reply>) = filling
            .drain(..)
            .map(|pending| (pending.event, pending.reply))
            .unzip();
        let in_flight = send(events);
        tokio::pin!(in_flight);
        let answer = loop {
            tokio::select! {
                biased;
                answer = &mut in_flight => break answer,
                pending = queue.recv(), if queue_open && filling.len() < batch_events_max => {
                    match pending {
                        Some(pending) => filling.push(pending),
                        None => queue_open = false,
                    }
                }
            }
        };
        answer_callers(replies, answer);
        if !queue_open && filling.is_empty() {
            return;
        }
    }
}

/// Moves the calls already queued into `filling`, without waiting, up to the limit.
fn take_ready<E>(
    queue: &mut mpsc::Receiver<Pending<E>>,
    filling: &mut Vec<Pending<E>>,
    batch_events_max: usize,
) {
    while filling.len() < batch_events_max {
        match queue.try_recv() {
            Ok(pending) => filling.push(pending),
            Err(_) => break,
        }
    }
}

/// Hands each caller its own result, or every caller the batch's error.
fn answer_callers(replies: Vec<Reply>, answer: Result<Vec<CreateResult>, ClientError>) {
    match answer {
        Ok(results) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away no longer wants its answer.
                let _ = reply.send(Ok(result));
            }
        }
        Ok(results) => {
            let error = ClientError::Protocol(format!(
                "{} results for a batch of {} events",
                results.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(error.duplicate()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tally_types::ResultCode;
    use tokio::sync::Semaphore;
    use tokio::task::JoinSet;

    /// A stand-in for the server's answer: event `n` gets timestamp `n`.
    fn answer(events: &[u64]) -> Vec<CreateResult> {
        events
            .iter()
            .map(|&event| CreateResult {
                code: ResultCode::Ok,
                timestamp: event,
            })
            .collect()
    }

    /// A coalescer whose batches wait for a permit of `gate` before answering, and which
    /// records the batches it sent.
    struct Harness {
        queue: mpsc::Sender<Pending<u64>>,
        batches: Arc<Mutex<Vec<Vec<u64>>>>,
        gate: Arc<Semaphore>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(batch_events_max: usize, queue_capacity: usize) -> Harness {
        let (queue, receiver) = mpsc::channel(queue_capacity);
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (seen, permits) = (Arc::clone(&batches), Arc::clone(&gate));
        let send = move |events: Vec<u64>| {
            seen.lock().expect("lock").push(events.clone());
            let permits = Arc::clone(&permits);
            async move {
                permits.acquire().await.expect("gate open").forget();
                Ok(answer(&events))
            }
        };
        let task = tokio::spawn(run(receiver, batch_events_max, send));
        Harness {
            queue,
            batches,
            gate,
            task,
        }
    }

    async fn call(
        queue: &mpsc::Sender<Pending<u64>>,
        event: u64,
    ) -> Result<CreateResult, ClientError> {
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { event, reply })
            .await
            .expect("coalescer running");
        answer.await.expect("coalescer answers")
    }

    /// Waits until the coalescer has sent `count` batches.
    async fn batches_sent(harness: &Harness, count: usize) -> Vec<Vec<u64>> {
        for _ in 0..1_000 {
            let batches = harness.batches.lock().expect("lock").clone();
            if batches.len() >= count {
                return batches;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("fewer than {count} batches were sent");
    }

    #[tokio::test]
    async fn a_lone_call_leaves_at_once() {
        let harness = start(8, 8);
        harness.gate.add_permits(1);
        let result = call(&harness.queue, 7).await.expect("answered");
        assert_eq!(result.timestamp, 7);
        assert_eq!(batches_sent(&harness, 1).await, vec![vec![7]]);
    }

    #[tokio::test]
    async fn calls_during_a_flight_fill_one_next_batch() {
        let harness = start(100, 100);
        let queue = harness.queue.clone();
        let first = tokio::spawn(async move { call(&queue, 0).await });
        batches_sent(&harness, 1).await;
        let mut answers = Vec::new();
        for event in 1..=20 {
            let (reply, answer) = oneshot::channel();
            let pending = Pending { event, reply };
            harness
                .queue
                .send(pending)
                .await
                .expect("coalescer running");
            answers.push((event, answer));
        }
        harness.gate.add_permits(2);
        assert_eq!(first.await.expect("joined").expect("ok").timestamp, 0);
        for (event, answer) in answers {
            let result = answer.await.expect("answered").expect("ok");
            assert_eq!(result.timestamp, event, "own result");
        }
        let batches = batches_sent(&harness, 2).await;
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1].len(), 20);
    }

    #[tokio::test]
    async fn batches_never_exceed_the_limit() {
        let harness = start(3, 16);
        harness.gate.add_permits(100);
        let mut callers = JoinSet::new();
        for event in 0..10 {
            let queue = harness.queue.clone();
            callers.spawn(async move { (event, call(&queue, event).await) });
        }
        while let Some(joined) = callers.join_next().await {
            let (event, result) = joined.expect("joined");
            assert_eq!(result.expect("ok").timestamp, event);
        }
        let batches = harness.batches.lock().expect("lock").clone();
        assert!(batches.iter().all(|batch| batch.len() <= 3), "{batches:?}");
        let mut events: Vec<u64> = batches.concat();
        events.sort_unstable();
        assert_eq!(events, (0..10).collect::<Vec<_>>(), "each event sent once");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_callers() {
        let (queue, receiver) = mpsc::channel(8);
        let send = |_events: Vec<u64>| async { Err(ClientError::Busy { attempts: 3 }) };
        tokio::spawn(run(receiver, 8, send));
        let error = call(&queue, 1).await.expect_err("batch failed");
        assert!(
            matches!(error, ClientError::Busy { attempts: 3 }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_wrong_result_count_is_a_protocol_error() {
        let (queue, receiver) = mpsc::channel(8);
        let send = |events: Vec<u64>| async move {
            let mut results = answer(&events);
            results.push(results[0]);
            Ok(results)
        };
        tokio::spawn(run(receiver, 8, send));
        let error = call(&queue, 1)
            .await
            .expect_err("two results for one event");
        assert!(matches!(error, ClientError::Protocol(_)), "{error}");
    }

    #[tokio::test]
    async fn the_task_ends_when_the_queue_closes_after_answering() {
        let harness = start(8, 8);
        let queue = harness.queue.clone();
        let caller = tokio::spawn(async move { call(&queue, 5).await });
        batches_sent(&harness, 1).await;
        drop(harness.queue);
        harness.gate.add_permits(1);
        assert_eq!(caller.await.expect("joined").expect("ok").timestamp, 5);
        harness.task.await.expect("coalescer ended");
    }
}
