//! Waiting for room in the queue: async waiters do not block their thread, a timed-out
//! wait hands the same batch back, and a cancelled wait leaves nothing queued.
#![allow(clippy::unwrap_used)]

use super::Ledger;
use crate::config::{Backpressure, Config};
use crate::error::SubmitError;
use crate::request::Answer;
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
/// every waiter would end `Busy` after the minute's wait.
#[test]
fn an_async_waiter_is_admitted_when_room_appears_without_blocking_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path(), Duration::from_secs(60));
    let stall = Stall::start(&ledger);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
/// async, and nothing of that batch is applied.
#[test]
fn a_timed_out_wait_hands_the_same_batch_back() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path(), Duration::from_millis(50));
    let stall = Stall::start(&ledger);
    let submitters = submit_on_threads(&ledger, 200..212);
    eventually("a submitter is busy", || {
        ledger.metrics().busy_rejections > 0
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = Instant::now();
    let refused = runtime.block_on(ledger.submit_async(pay(300)));
    assert!(waited.elapsed() >= Duration::from_millis(50));
    assert_eq!(refused, Err(SubmitError::Busy(pay(300))));
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
    assert!(ledger.lookup_transfers(&[300]).is_empty());
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
    eventually("a submitter waits", || ledger.shared().room.waiters() > 0);
    eventually("the pipeline is stuck", || {
        let before = ledger.metrics().queue_depth;
        std::thread::sleep(Duration::from_millis(20));
        before == 1 && ledger.metrics().queue_depth == 1
    });
    let waiters = ledger.shared().room.waiters();
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
