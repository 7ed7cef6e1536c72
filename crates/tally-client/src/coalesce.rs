//! Coalescing: create calls from many tasks gathered into batches, the way TigerBeetle's
//! clients do it.
//!
//! One background task per operation (accounts, transfers) owns the receiving end of a
//! bounded queue of calls, each a single event or a small batch whose last event closes
//! its linked chain. It keeps at most `batches_in_flight` batches out at once. A call
//! that finds a flight free leaves at once (there is no timer); while every flight is
//! out, the calls that arrive fill the next batch, which leaves the moment an answer
//! comes back. So a fast server gets small batches soon and a slow one, such as a
//! cluster waiting for a Raft round, gets full batches several at a time. A call's
//! events stay contiguous and in order inside the batch, and since its last event is
//! not linked, no chain runs from one caller's events into another's. A batch is all
//! imported events or none, as its first event decides, so a call whose first event is
//! imported never shares a batch with one whose first is not. So each caller gets the
//! results it would have got alone. Calls made concurrently may commit in any order; a
//! call made after another was answered commits after it.
//!
//! Bounds, per operation: the queue holds at most `batch_events_max` calls of at most
//! [`COALESCED_CALL_EVENTS_MAX`] events, the filling batch and each batch in flight at
//! most `batch_events_max` events. A caller that finds the queue full waits for room
//! (backpressure).
//!
//! A batch refused as a whole for what one call carried (`INVALID_ARGUMENT`,
//! `PERMISSION_DENIED`: nothing of it was applied) is sent again call by call, so only
//! the calls at fault get the error.
//!
//! Invariant: every call that enters the queue gets exactly one answer, unless its caller
//! has gone away; the results at positions `i..i + n` of a batch go to the caller whose
//! `n` events were placed at `i`.

use crate::CreateResult;
use crate::error::ClientError;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

/// Most events of one call that is coalesced; a larger batch fills a request on its
/// own and goes straight through.
pub(crate) const COALESCED_CALL_EVENTS_MAX: usize = 64;

/// The answer a caller waits for: one result per event of its call.
pub(crate) type Reply = oneshot::Sender<Result<Vec<CreateResult>, ClientError>>;

/// What the coalescer needs to know of an event.
pub(crate) trait CoalescedEvent {
    /// Whether it carries the `imported` flag.
    fn imported(&self) -> bool;
}

impl CoalescedEvent for tally_types::Account {
    fn imported(&self) -> bool {
        self.flags.contains(tally_types::AccountFlags::IMPORTED)
    }
}

impl CoalescedEvent for tally_types::Transfer {
    fn imported(&self) -> bool {
        self.flags.contains(tally_types::TransferFlags::IMPORTED)
    }
}

/// One call waiting in the queue: its events, where their results go, and whether its
/// first event is imported (which batches it may join).
#[derive(Debug)]
pub(crate) struct Pending<E> {
    events: Vec<E>,
    reply: Reply,
    imported: bool,
}

impl<E: CoalescedEvent> Pending<E> {
    pub(crate) fn new(events: Vec<E>, reply: Reply) -> Self {
        let imported = events.first().is_some_and(E::imported);
        Pending {
            events,
            reply,
            imported,
        }
    }
}

/// The batch being filled, and the call that did not fit in it.
struct Filling<E> {
    calls: Vec<Pending<E>>,
    events: usize,
    /// Whether the batch's first call is imported: every call in it is alike.
    imported: bool,
    carry: Option<Pending<E>>,
    events_max: usize,
}

impl<E> Filling<E> {
    /// Adds a call, or holds it over for the next batch when it does not fit or is of
    /// the other kind (imported or not).
    fn add(&mut self, pending: Pending<E>) {
        assert!(self.carry.is_none());
        if self.calls.is_empty() {
            self.imported = pending.imported;
        }
        let fits = self.events + pending.events.len() <= self.events_max;
        if fits && pending.imported == self.imported {
            self.events += pending.events.len();
            self.calls.push(pending);
        } else {
            self.carry = Some(pending);
        }
    }

    /// True while another call may still be added.
    fn has_room(&self) -> bool {
        self.carry.is_none() && self.events < self.events_max
    }

    /// The batch's events and each caller's reply with its count; starts the next batch
    /// with the call held over.
    fn take(&mut self) -> (Vec<E>, Vec<(Reply, usize)>) {
        let mut events = Vec::with_capacity(self.events);
        let mut replies = Vec::with_capacity(self.calls.len());
        for pending in self.calls.drain(..) {
            replies.push((pending.reply, pending.events.len()));
            events.extend(pending.events);
        }
        self.events = 0;
        if let Some(carried) = self.carry.take() {
            self.add(carried);
        }
        (events, replies)
    }
}

/// How large a coalescer's batches grow and how many it keeps out at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) batch_events_max: usize,
    pub(crate) batches_in_flight: usize,
}

/// Runs the coalescer until every sender of `queue` is gone and every queued call is
/// answered. `send` sends one batch (retries included) and answers its results in order.
pub(crate) async fn run<E, S, F>(mut queue: mpsc::Receiver<Pending<E>>, limits: Limits, send: S)
where
    E: Clone,
    S: Fn(Vec<E>) -> F,
    F: Future<Output = Result<Vec<CreateResult>, ClientError>>,
{
    assert!(limits.batch_events_max > 0 && limits.batches_in_flight > 0);
    let mut filling = Filling {
        calls: Vec::new(),
        events: 0,
        imported: false,
        carry: None,
        events_max: limits.batch_events_max,
    };
    let mut flights = FuturesUnordered::new();
    let mut queue_open = true;
    loop {
        while flights.len() < limits.batches_in_flight && !filling.calls.is_empty() {
            while filling.has_room() {
                match queue.try_recv() {
                    Ok(pending) => filling.add(pending),
                    Err(_) => break,
                }
            }
            let (events, replies) = filling.take();
            assert!(!events.is_empty() && events.len() <= limits.batch_events_max);
            flights.push(fly(&send, events, replies));
        }
        if flights.is_empty() {
            assert!(filling.calls.is_empty());
            match queue.recv().await {
                Some(pending) => filling.add(pending),
                None => return,
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = flights.next() => {}
            pending = queue.recv(), if queue_open && filling.has_room() => {
                match pending {
                    Some(pending) => filling.add(pending),
                    None => queue_open = false,
                }
            }
        }
    }
}

/// Sends one batch and answers its callers; should it be refused for what one call
/// carried, sends each call again on its own.
async fn fly<E, S, F>(send: &S, events: Vec<E>, replies: Vec<(Reply, usize)>)
where
    E: Clone,
    S: Fn(Vec<E>) -> F,
    F: Future<Output = Result<Vec<CreateResult>, ClientError>>,
{
    // Kept to send the calls one by one should the batch be refused for one of them.
    let kept = (replies.len() > 1).then(|| events.clone());
    match (send(events).await, kept) {
        (Err(error), Some(events)) if error.is_per_call() => {
            send_one_by_one(send, replies, events).await;
        }
        (answer, _) => answer_callers(replies, answer),
    }
}

/// Sends each call of a refused batch on its own and answers each caller.
async fn send_one_by_one<E, S, F>(send: &S, replies: Vec<(Reply, usize)>, events: Vec<E>)
where
    S: Fn(Vec<E>) -> F,
    F: Future<Output = Result<Vec<CreateResult>, ClientError>>,
{
    let mut events = events.into_iter();
    for (reply, count) in replies {
        let own: Vec<E> = events.by_ref().take(count).collect();
        answer_callers(vec![(reply, count)], send(own).await);
    }
}

/// Hands each caller its own results, or every caller the batch's error.
fn answer_callers(replies: Vec<(Reply, usize)>, answer: Result<Vec<CreateResult>, ClientError>) {
    let events: usize = replies.iter().map(|(_, count)| count).sum();
    match answer {
        Ok(results) if results.len() == events => {
            let mut results = results.into_iter();
            for (reply, count) in replies {
                let own: Vec<CreateResult> = results.by_ref().take(count).collect();
                // A caller that went away no longer wants its answer.
                let _ = reply.send(Ok(own));
            }
        }
        Ok(results) => {
            let error = ClientError::Protocol(format!(
                "{} results for a batch of {events} events",
                results.len(),
            ));
            for (reply, _) in replies {
                let _ = reply.send(Err(error.duplicate()));
            }
        }
        Err(error) => {
            for (reply, _) in replies {
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

    /// Events of the tests: from [`IMPORTED_FROM`] on they count as imported.
    const IMPORTED_FROM: u64 = 1_000;

    impl CoalescedEvent for u64 {
        fn imported(&self) -> bool {
            *self >= IMPORTED_FROM
        }
    }

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

    /// Batches of up to `batch_events_max` events, `batches_in_flight` out at once.
    fn limits(batch_events_max: usize, batches_in_flight: usize) -> Limits {
        Limits {
            batch_events_max,
            batches_in_flight,
        }
    }

    fn start(batch_events_max: usize, queue_capacity: usize) -> Harness {
        start_flying(limits(batch_events_max, 1), queue_capacity)
    }

    fn start_flying(limits: Limits, queue_capacity: usize) -> Harness {
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
        let task = tokio::spawn(run(receiver, limits, send));
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
        let results = call_batch(queue, vec![event]).await?;
        assert_eq!(results.len(), 1);
        Ok(results[0])
    }

    async fn call_batch(
        queue: &mpsc::Sender<Pending<u64>>,
        events: Vec<u64>,
    ) -> Result<Vec<CreateResult>, ClientError> {
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending::new(events, reply))
            .await
            .expect("coalescer running");
        answer.await.expect("coalescer answers")
    }

    /// With a call of event 0 flying, queues `calls` behind it, lets the batches go and
    /// checks that each caller gets its own results, in order; answers the batches sent,
    /// once there are `batches`.
    async fn behind_a_flight(
        harness: &Harness,
        calls: Vec<Vec<u64>>,
        batches: usize,
    ) -> Vec<Vec<u64>> {
        let queue = harness.queue.clone();
        let first = tokio::spawn(async move { call(&queue, 0).await });
        batches_sent(harness, 1).await;
        let mut callers = Vec::new();
        for events in calls {
            let (reply, answer) = oneshot::channel();
            let pending = Pending::new(events.clone(), reply);
            harness.queue.send(pending).await.expect("running");
            callers.push((events, answer));
        }
        harness.gate.add_permits(batches);
        first.await.expect("joined").expect("ok");
        for (events, answer) in callers {
            let results = answer.await.expect("answered").expect("ok");
            let stamps: Vec<u64> = results.iter().map(|r| r.timestamp).collect();
            assert_eq!(stamps, events, "each caller gets its own results, in order");
        }
        batches_sent(harness, batches).await
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
            let pending = Pending::new(vec![event], reply);
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
            let results = answer.await.expect("answered").expect("ok");
            assert_eq!(results[0].timestamp, event, "own result");
        }
        let batches = batches_sent(&harness, 2).await;
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1].len(), 20);
    }

    #[tokio::test]
    async fn small_batches_stay_whole_and_in_order() {
        let harness = start(5, 16);
        // While the first flies: calls of 2, 2 and 3 events; the third does not fit
        // beside the first two (limit 5), so it leaves whole in the batch after.
        let calls = vec![vec![10, 11], vec![20, 21], vec![30, 31, 32]];
        let batches = behind_a_flight(&harness, calls, 3).await;
        assert_eq!(
            batches,
            vec![vec![0], vec![10, 11, 20, 21], vec![30, 31, 32]]
        );
    }

    #[tokio::test]
    async fn imported_calls_never_share_a_batch_with_others() {
        let harness = start(100, 16);
        // While the first flies: plain, imported, imported, plain. A call's own events
        // stay whole: the last is plain first, imported after (the server decides by
        // its first event).
        let calls = vec![
            vec![10],
            vec![IMPORTED_FROM + 1],
            vec![IMPORTED_FROM + 2, IMPORTED_FROM + 3],
            vec![20, IMPORTED_FROM + 4],
        ];
        let imported = IMPORTED_FROM;
        assert_eq!(
            behind_a_flight(&harness, calls, 4).await,
            vec![
                vec![0],
                vec![10],
                vec![imported + 1, imported + 2, imported + 3],
                vec![20, imported + 4],
            ]
        );
    }

    #[tokio::test]
    async fn batches_never_exceed_the_limit() {
        for batches_in_flight in [1, 2, 5] {
            let harness = start_flying(limits(3, batches_in_flight), 16);
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
    }

    #[tokio::test]
    async fn calls_leave_at_once_while_a_flight_is_free() {
        let harness = start_flying(limits(100, 3), 100);
        let mut callers = Vec::new();
        for event in 0..3 {
            let queue = harness.queue.clone();
            callers.push(tokio::spawn(async move { call(&queue, event).await }));
            batches_sent(&harness, event as usize + 1).await;
        }
        // Every flight is out: these fill one batch, which leaves when an answer comes.
        let mut answers = Vec::new();
        for event in 3..6 {
            let (reply, answer) = oneshot::channel();
            let pending = Pending::new(vec![event], reply);
            harness.queue.send(pending).await.expect("running");
            answers.push((event, answer));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            harness.batches.lock().expect("lock").len(),
            3,
            "all flights out"
        );
        harness.gate.add_permits(1);
        let batches = batches_sent(&harness, 4).await;
        assert_eq!(batches, vec![vec![0], vec![1], vec![2], vec![3, 4, 5]]);
        harness.gate.add_permits(3);
        for (event, caller) in callers.into_iter().enumerate() {
            let result = caller.await.expect("joined").expect("ok");
            assert_eq!(result.timestamp, event as u64, "own result");
        }
        for (event, answer) in answers {
            let results = answer.await.expect("answered").expect("ok");
            assert_eq!(results[0].timestamp, event, "own result");
        }
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_callers() {
        let (queue, receiver) = mpsc::channel(8);
        let send = |_events: Vec<u64>| async { Err(ClientError::Busy { attempts: 3 }) };
        tokio::spawn(run(receiver, limits(8, 1), send));
        let error = call(&queue, 1).await.expect_err("batch failed");
        assert!(
            matches!(error, ClientError::Busy { attempts: 3 }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_batch_refused_for_one_call_is_sent_again_call_by_call() {
        let (queue, receiver) = mpsc::channel(8);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sent);
        let gate = Arc::new(Semaphore::new(0));
        let permits = Arc::clone(&gate);
        // Event 13 is invalid: any batch holding it is refused whole.
        let send = move |events: Vec<u64>| {
            seen.lock().expect("lock").push(events.clone());
            let permits = Arc::clone(&permits);
            async move {
                permits.acquire().await.expect("open").forget();
                if events.contains(&13) {
                    Err(ClientError::InvalidArgument("event 13".into()))
                } else {
                    Ok(answer(&events))
                }
            }
        };
        tokio::spawn(run(receiver, limits(8, 1), send));
        let first = queue.clone();
        let first = tokio::spawn(async move { call(&first, 1).await });
        while sent.lock().expect("lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut answers = Vec::new();
        for events in [vec![20, 21], vec![13]] {
            let (reply, answer) = oneshot::channel();
            queue
                .send(Pending::new(events, reply))
                .await
                .expect("running");
            answers.push(answer);
        }
        gate.add_permits(10);
        assert!(first.await.expect("joined").is_ok());
        let mut answers = answers.into_iter();
        let good = answers.next().expect("two calls");
        let good = good
            .await
            .expect("answered")
            .expect("the good call is not blamed");
        assert_eq!(
            good.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            vec![20, 21]
        );
        let bad = answers.next().expect("two calls");
        let bad = bad
            .await
            .expect("answered")
            .expect_err("the bad call is refused");
        assert!(matches!(bad, ClientError::InvalidArgument(_)), "{bad}");
        let batches = sent.lock().expect("lock").clone();
        assert_eq!(
            batches,
            vec![vec![1], vec![20, 21, 13], vec![20, 21], vec![13]]
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
        tokio::spawn(run(receiver, limits(8, 1), send));
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
