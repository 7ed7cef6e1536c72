//! Waiting for room in the queue: async waiters do not block their thread and need no
//! runtime timer, a timed-out wait hands the same batch back, a cancelled wait leaves
//! nothing queued, shutdown answers every waiter, and the deadline thread ends.
#![allow(clippy::unwrap_used)]

use super::Ledger;
use crate::config::{Backpressure, Config};
use crate::error::SubmitError;
use crate::request::EventResult;

/// What a submitter gets: one result per event, or why the batch got none.
type Answer = Result<Vec<EventResult>, crate::SubmitError>;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tally_log::SyncMode;
use tally_types::{Account, Batch, ResultCode, Transfer};

/// A ledger whose queue holds one batch, with two funded-free accounts.
fn ledger(dir: &std::path::Path, wait: Duration) -> Ledger {
    let mut config = Config::new(dir);
    config.shards = 1;
    config.sync = SyncMode::UnsafeNoSync;
    config.queue_batches_max = 1;
    config.backpressure = Backpressure::Wait(wait);
    let ledger = Ledger::open(config).unwrap();
    let account = |id| Account {
        id,
        ledger: 1,
        code: 1,
        ..Account::default()
    };
    let created = ledger
        .create_accounts(vec![account(1), account(2)])
        .unwrap();
    assert!(created.iter().all(|r| r.code == ResultCode::Ok));
    ledger
}

fn pay(id: u128) -> Batch {
    Batch::CreateTransfers(vec![Transfer {
        id,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 1,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }])
}

/// Holds the state's read lock on a thread of its own, so that the apply thread cannot
/// apply, the log thread soon cannot hand groups over, and the queue stays full.
struct Stall {
    release: mpsc::Sender<()>,
    holder: JoinHandle<()>,
}

impl Stall {
    fn start(ledger: &Ledger) -> Stall {
        let (held, holding) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let ledger = ledger.clone();
        let holder = std::thread::spawn(move || {
            ledger.with_state(|_| {
                held.send(()).unwrap();
                let _ = released.recv();
            });
        });
        holding.recv().unwrap();
        Stall { release, holder }
    }

    fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

/// Blocking submitters on threads of their own: each returns its batch and answer.
fn submit_on_threads(
    ledger: &Ledger,
    ids: std::ops::Range<u128>,
) -> Vec<JoinHandle<(Batch, Answer)>> {
    ids.map(|id| {
        let ledger = ledger.clone();
        std::thread::spawn(move || (pay(id), ledger.submit(pay(id))))
    })
    .collect()
}

/// Waits until blocking submitters wait for room behind a stalled pipeline (one batch
/// stuck in the queue); returns how many wait.
fn waiting_behind_the_stall(ledger: &Ledger) -> usize {
    eventually("a submitter waits", || ledger.shared().room.waiters() > 0);
    eventually("the pipeline is stuck", || {
        let before = ledger.metrics().queue_depth;
        std::thread::sleep(Duration::from_millis(20));
        before == 1 && ledger.metrics().queue_depth == 1
    });
    ledger.shared().room.waiters()
}

/// A current-thread runtime with no driver enabled (no timer, no I/O): an async wait
/// for room must work on it.
fn bare_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Polls `done` every millisecond for at most ten seconds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// On a current-thread runtime, the task that frees the queue runs on the same thread
/// as the tasks waiting for room: a waiter that slept its thread would stop it, and
/// every waiter would end `Busy` after the minute's wait. The runtime has no timer.
#[test]
fn an_async_waiter_is_admitted_when_room_appears_without_blocking_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path(), Duration::from_secs(60));
    let stall = Stall::start(&ledger);
    let runtime = bare_runtime();
    let answers = runtime.block_on(async {
        let tasks: Vec<_> = (100..120u128)
            .map(|id| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.submit_async(pay(id)).await })
            })
            .collect();
        let started = Instant::now();
        while ledger.shared().room.waiters() == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "nobody waits");
            tokio::task::yield_now().await;
        }
        // Frees the queue from this thread, which the waiters share.
        stall.release();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    for answer in answers {
        assert_eq!(answer.unwrap()[0].code, ResultCode::Ok);
    }
    assert_eq!(ledger.shared().room.waiters(), 0);
    assert_eq!(ledger.metrics().busy_rejections, 0);
}

/// A wait that times out answers `Busy` with the very batch submitted, blocking or
/// async (on a runtime without a timer, and on a bare executor), and nothing of that
/// batch is applied.
#[test]
fn a_timed_out_wait_hands_the_same_batch_back() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path(), Duration::from_millis(50));
    let stall = Stall::start(&ledger);
    let submitters = submit_on_threads(&ledger, 200..212);
    eventually("a submitter is busy", || {
        ledger.metrics().busy_rejections > 0
    });
    let waited = Instant::now();
    let refused = bare_runtime().block_on(ledger.submit_async(pay(300)));
    assert!(waited.elapsed() >= Duration::from_millis(50));
    assert_eq!(refused, Err(SubmitError::Busy(pay(300))));
    let waited = Instant::now();
    let refused = block_on(ledger.submit_async(pay(301)));
    assert!(waited.elapsed() >= Duration::from_millis(50));
    assert_eq!(refused, Err(SubmitError::Busy(pay(301))));
    stall.release();
    let mut busy = 0;
    for submitter in submitters {
        let (batch, answer) = submitter.join().unwrap();
        match answer {
            Ok(results) => assert_eq!(results[0].code, ResultCode::Ok),
            Err(SubmitError::Busy(back)) => {
                assert_eq!(back, batch, "the same batch comes back");
                let Batch::CreateTransfers(transfers) = &back else {
                    unreachable!()
                };
                assert!(ledger.lookup_transfers(&[transfers[0].id]).is_empty());
                busy += 1;
            }
            Err(other) => panic!("unexpected answer: {other}"),
        }
    }
    assert!(
        busy > 0,
        "a queue of one behind a stalled ledger refuses some"
    );
    assert!(ledger.lookup_transfers(&[300, 301]).is_empty());
}

/// The smallest executor: polls `future` on this thread, parking between wakes.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// Dropping `submit_async` while it waits for room leaves nothing queued; dropping it
/// once admitted still commits the batch.
#[test]
fn a_cancelled_submission_is_queued_only_if_it_was_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path(), Duration::from_secs(60));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let poll_briefly = |id| {
        runtime.block_on(async {
            let submission = ledger.submit_async(pay(id));
            let timed_out = tokio::time::timeout(Duration::from_millis(20), submission).await;
            assert!(timed_out.is_err(), "still pending behind the stall");
        })
    };

    // Admitted, then dropped: the batch commits anyway.
    let stall = Stall::start(&ledger);
    poll_briefly(400);
    assert_eq!(ledger.shared().room.waiters(), 0, "it was admitted at once");
    stall.release();
    assert_eq!(ledger.submit(pay(401)).unwrap()[0].code, ResultCode::Ok);
    assert_eq!(ledger.lookup_transfers(&[400]).len(), 1);

    // Waiting for room, then dropped: nothing queued.
    let stall = Stall::start(&ledger);
    let submitters = submit_on_threads(&ledger, 500..512);
    let waiters = waiting_behind_the_stall(&ledger);
    poll_briefly(600);
    assert_eq!(
        ledger.shared().room.waiters(),
        waiters,
        "the dropped wait left"
    );
    stall.release();
    for submitter in submitters {
        let (_, answer) = submitter.join().unwrap();
        assert_eq!(answer.unwrap()[0].code, ResultCode::Ok);
    }
    assert!(ledger.lookup_transfers(&[600]).is_empty());
    ledger.shutdown().unwrap();
}

/// Shutdown answers `Stopped` at once to a blocking and an async submitter waiting
/// for room, though their wait has most of a minute left, and stops the deadline
/// thread, while the stalled pipeline still keeps shutdown itself from finishing.
#[test]
fn shutdown_answers_the_waiters_at_once_and_stops_the_deadline_thread() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path(), Duration::from_secs(60));
    let timer = ledger.shared().room.timer_probe();
    let stall = Stall::start(&ledger);
    let fillers = submit_on_threads(&ledger, 700..712);
    let waiters = waiting_behind_the_stall(&ledger);
    let (answered, answers) = mpsc::channel();
    let blocking = {
        let (ledger, answered) = (ledger.clone(), answered.clone());
        std::thread::spawn(move || answered.send(("blocking", ledger.submit(pay(800)))))
    };
    let asynchronous = {
        let ledger = ledger.clone();
        std::thread::spawn(move || {
            let answer = bare_runtime().block_on(ledger.submit_async(pay(801)));
            answered.send(("async", answer))
        })
    };
    eventually("both wait", || {
        ledger.shared().room.waiters() == waiters + 2
    });
    assert_eq!(timer.strong_count(), 2, "the deadline thread runs");

    let stopping = {
        let ledger = ledger.clone();
        std::thread::spawn(move || ledger.shutdown())
    };
    for _ in 0..2 {
        let (who, answer) = answers.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(answer, Err(SubmitError::Stopped), "{who}");
    }
    blocking.join().unwrap().unwrap();
    asynchronous.join().unwrap().unwrap();
    eventually("every waiter is answered", || {
        ledger.shared().room.waiters() == 0
    });
    eventually("the deadline thread ends", || timer.strong_count() == 1);
    stall.release();
    stopping.join().unwrap().unwrap();
    for filler in fillers {
        match filler.join().unwrap() {
            (_, Ok(results)) => assert_eq!(results[0].code, ResultCode::Ok),
            (_, Err(SubmitError::Stopped)) => {}
            (_, Err(other)) => panic!("unexpected answer: {other}"),
        }
    }
    assert_eq!(
        timer.strong_count(),
        1,
        "shutdown joined the deadline thread"
    );
    assert!(ledger.lookup_transfers(&[800, 801]).is_empty());
}

/// The deadline thread ends when the ledger is dropped without shutdown, and when a
/// room is dropped on its own.
#[test]
fn the_deadline_thread_ends_when_its_room_is_dropped() {
    let room = crate::admission::Room::default();
    let timer = room.timer_probe();
    let wait = Duration::from_millis(10);
    let never = bare_runtime().block_on(room.wait_async(Instant::now() + wait, || None::<()>));
    assert_eq!(never, None);
    assert_eq!(timer.strong_count(), 2, "the first async wait starts it");
    drop(room);
    assert_eq!(timer.strong_count(), 0, "dropping the room joins it");

    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path(), wait);
    let timer = ledger.shared().room.timer_probe();
    let stall = Stall::start(&ledger);
    let fillers = submit_on_threads(&ledger, 900..912);
    eventually("a submitter is busy", || {
        ledger.metrics().busy_rejections > 0
    });
    let refused = bare_runtime().block_on(ledger.submit_async(pay(950)));
    assert_eq!(refused, Err(SubmitError::Busy(pay(950))));
    assert_eq!(timer.strong_count(), 2, "an async wait started it");
    stall.release();
    for filler in fillers {
        match filler.join().unwrap() {
            (_, Ok(results)) => assert_eq!(results[0].code, ResultCode::Ok),
            (batch, Err(SubmitError::Busy(back))) => assert_eq!(back, batch),
            (_, Err(other)) => panic!("unexpected answer: {other}"),
        }
    }
    drop(ledger);
    eventually("the deadline thread ends", || timer.strong_count() == 0);
}
