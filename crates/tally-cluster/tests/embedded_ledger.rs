//! `tally_cluster::Ledger`: one `Ledger::open` for a single node's config and a
//! cluster's. The same calls on three embedded replicas and on a single node answer the
//! same; blocking calls from plain threads, async ones on the caller's runtime.

use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tally_cluster::{ClusterConfig, ClusterError, Ledger, LedgerError};
use tally_engine::Config;
use tally_testkit::{
    TEST_LEDGER, account, accounts_for_every_outcome, free_port, transfer,
    transfers_with_every_outcome,
};
use tally_types::{Account, AccountFilter, AccountFlags, Batch, QueryFilter, ResultCode, Transfer};

fn members(n: u64) -> BTreeMap<u64, String> {
    (1..=n)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect()
}

/// Accounts 1 to 3; 1 may not go into debit, 3 keeps its balance history.
fn accounts() -> Vec<Account> {
    let mut accounts = accounts_for_every_outcome();
    accounts[2].flags = AccountFlags::HISTORY;
    accounts
}

/// Batches with every kind of outcome: applied, over the limit, pending and posted, a
/// failed chain, a repeated id.
fn batches() -> Vec<Vec<Transfer>> {
    let mut batches = transfers_with_every_outcome();
    batches.push(vec![transfer(10, 2, 1, 100)]);
    batches
}

/// Calls `call` until it answers: `Unavailable` (no leader yet, or leadership moving)
/// is retried with the same events, as a client does.
fn until_answered<T>(mut call: impl FnMut() -> Result<T, LedgerError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match call() {
            Ok(answer) => return answer,
            Err(LedgerError::Cluster(ClusterError::Unavailable(why)))
                if Instant::now() < deadline =>
            {
                eprintln!("retrying: {why}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("the call failed: {error}"),
        }
    }
}

/// What a ledger answers to every call of the test, without the timestamps (a node and
/// a cluster stamp from their own clocks).
fn answers(ledgers: &[&Ledger]) -> Vec<String> {
    let mut seen = Vec::new();
    let at = |n: usize| ledgers[n % ledgers.len()];
    let created = until_answered(|| at(0).create_accounts(accounts()));
    seen.push(format!(
        "{:?}",
        created.iter().map(|r| r.code).collect::<Vec<_>>()
    ));
    for (n, batch) in batches().into_iter().enumerate() {
        let results = until_answered(|| at(n + 1).create_transfers(batch.clone()));
        seen.push(format!(
            "{:?}",
            results.iter().map(|r| r.code).collect::<Vec<_>>()
        ));
    }
    let with_balances = until_answered(|| {
        at(0).create_transfers_with_balances(vec![transfer(20, 2, 3, 7), transfer(21, 1, 2, 999)])
    });
    for result in &with_balances {
        let balances = result.balances.map(|b| {
            (
                b.debit_account.debits_posted,
                b.credit_account.credits_posted,
            )
        });
        seen.push(format!("{:?} {balances:?}", result.code));
    }
    for (n, ledger) in ledgers.iter().enumerate() {
        let accounts = until_answered(|| ledger.lookup_accounts(&[1, 2, 3, 99]));
        let balances: Vec<_> = accounts
            .iter()
            .map(|a| (a.id, a.debits_posted, a.credits_posted, a.debits_pending))
            .collect();
        seen.push(format!("replica {n}: {balances:?}"));
        let transfers = until_answered(|| ledger.lookup_transfers(&[10, 11, 12, 13, 16, 99]));
        let amounts: Vec<_> = transfers.iter().map(|t| (t.id, t.amount)).collect();
        seen.push(format!("replica {n}: {amounts:?}"));
    }
    let filter = AccountFilter::new(3);
    let history = until_answered(|| at(1).get_account_transfers(&filter));
    seen.push(format!(
        "{:?}",
        history.iter().map(|t| t.id).collect::<Vec<_>>()
    ));
    let rows = until_answered(|| at(2).get_account_balances(&filter));
    seen.push(format!(
        "{:?}",
        rows.iter()
            .map(|r| r.balances.credits_posted)
            .collect::<Vec<_>>()
    ));
    let query = QueryFilter {
        ledger: TEST_LEDGER,
        limit: 100,
        ..QueryFilter::default()
    };
    let found = until_answered(|| at(0).query_accounts(&query));
    seen.push(format!(
        "{:?}",
        found.iter().map(|a| a.id).collect::<Vec<_>>()
    ));
    let found = until_answered(|| at(1).query_transfers(&query));
    seen.push(format!(
        "{:?}",
        found.iter().map(|t| t.id).collect::<Vec<_>>()
    ));
    let events = until_answered(|| at(2).get_change_events(0, 100));
    seen.push(format!(
        "{:?}",
        events.iter().map(|e| e.kind).collect::<Vec<_>>()
    ));
    seen
}

#[test]
fn ledger_open_embeds_a_replica_that_answers_as_a_single_node() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    // Plain threads, no runtime: each replica gets one of its own.
    let replicas: Vec<Ledger> = (1..=3)
        .map(|id| {
            let dir = root.path().join(format!("r{id}"));
            Ledger::open(ClusterConfig::new(id, members.clone(), dir)).expect("opens")
        })
        .collect();
    assert!(replicas.iter().all(|r| matches!(r, Ledger::Replica(_))));
    let node = Ledger::open(Config::new(root.path().join("node"))).expect("opens");
    assert!(matches!(node, Ledger::Node(_)));

    let from_cluster = answers(&replicas.iter().collect::<Vec<_>>());
    let from_node = answers(&[&node, &node, &node]);
    assert_eq!(from_cluster, from_node);
    assert!(from_node[0].contains("Ok"), "{from_node:?}");

    // Refused whole by either, nothing applied.
    let too_many = Batch::CreateTransfers(vec![transfer(30, 1, 2, 1); 8_191]);
    match replicas[0].submit(too_many.clone()) {
        Err(LedgerError::Cluster(ClusterError::Invalid(_))) => {}
        other => panic!("a replica refuses an oversized batch, not {other:?}"),
    }
    match node.submit(too_many) {
        Err(LedgerError::Submit(_)) => {}
        other => panic!("a node refuses an oversized batch, not {other:?}"),
    }

    for replica in &replicas {
        replica.shutdown().expect("shuts down");
    }
    let after = replicas[0].create_accounts(vec![account(40, TEST_LEDGER, AccountFlags::empty())]);
    assert!(
        matches!(after, Err(LedgerError::Cluster(_))),
        "a stopped replica answers an error, not {after:?}"
    );
    node.shutdown().expect("shuts down");

    // The last handle of a replica on its own runtime stops it before its directory
    // goes: opened again at once, it finds its lock free and its accounts.
    let alone: BTreeMap<u64, String> = [(1, format!("127.0.0.1:{}", free_port()))].into();
    let dir = root.path().join("alone");
    let replica = Ledger::open(ClusterConfig::new(1, alone.clone(), &dir)).expect("opens");
    until_answered(|| replica.create_accounts(accounts()));
    drop(replica);
    let replica = Ledger::open(ClusterConfig::new(1, alone, &dir)).expect("reopens");
    assert_eq!(
        until_answered(|| replica.lookup_accounts(&[1, 2, 3])).len(),
        3
    );
    drop(replica);

    let reopened = Ledger::open(Config::new(root.path().join("node"))).expect("reopens");
    assert_eq!(
        reopened.lookup_accounts(&[1, 2, 3]).expect("reads").len(),
        3
    );
    reopened.shutdown().expect("shuts down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_async_runs_a_replica_on_the_callers_runtime() {
    let root = tempfile::tempdir().expect("dir");
    let config = ClusterConfig::new(1, members(1), root.path().join("r1"));
    let replica = Ledger::open_async(config).await.expect("opens");
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        match replica
            .submit_async(Batch::CreateAccounts(accounts()))
            .await
        {
            Ok(results) => break results,
            Err(LedgerError::Cluster(ClusterError::Unavailable(_)))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("submit failed: {error}"),
        }
    };
    assert!(created.iter().all(|r| r.code == ResultCode::Ok));
    // A blocking call from the replica's own runtime would never return: refused.
    match replica.lookup_accounts(&[1]) {
        Err(LedgerError::BlockingOnItsRuntime) => {}
        other => panic!("a blocking call on its runtime is refused, not {other:?}"),
    }
    let paid = replica
        .create_transfers_with_balances_async(vec![transfer(10, 2, 1, 100)])
        .await
        .expect("durable");
    assert_eq!(paid[0].code, ResultCode::Ok);
    let found = replica.lookup_accounts_async(&[1, 2]).await.expect("reads");
    assert_eq!(found[0].credits_posted, 100);
    assert_eq!(found[1].debits_posted, 100);
    let events = replica
        .get_change_events_async(0, 10)
        .await
        .expect("events");
    assert_eq!(events.len(), 4);
    // A subscription follows the same events, then the next one as it is applied.
    let followed = replica.subscribe(0).expect("events are on");
    let mut followed = std::pin::pin!(followed);
    let mut seen = Vec::new();
    for _ in 0..events.len() {
        seen.push(followed.next().await.expect("an event").expect("reads"));
    }
    assert_eq!(seen, events);
    let batches = replica.subscribe_batches(events[1].timestamp).expect("on");
    let mut batches = std::pin::pin!(batches);
    let batch = batches.next().await.expect("a batch").expect("reads");
    assert_eq!(batch[0], events[2], "resumes after the timestamp given");
    replica
        .create_transfers_async(vec![transfer(11, 1, 2, 5)])
        .await
        .expect("durable");
    let next = followed.next().await.expect("an event").expect("reads");
    assert_eq!((next.transfer.id, next.transfer.amount), (11, 5));
    replica.shutdown_async().await.expect("shuts down");
    assert!(
        replica
            .submit_async(Batch::CreateAccounts(accounts()))
            .await
            .is_err()
    );

    let node = Ledger::open_async(Config::new(root.path().join("node")))
        .await
        .expect("opens");
    let created = node
        .submit_async(Batch::CreateAccounts(accounts()))
        .await
        .expect("durable");
    assert!(created.iter().all(|r| r.code == ResultCode::Ok));
    assert_eq!(
        node.get_change_events_async(0, 10)
            .await
            .expect("events")
            .len(),
        3
    );
    let followed = node.subscribe(0).expect("events are on");
    let first = std::pin::pin!(followed)
        .next()
        .await
        .expect("one")
        .expect("reads");
    let read = node.get_change_events_async(0, 1).await.expect("events");
    assert_eq!(vec![first], read);
    node.shutdown_async().await.expect("shuts down");
}

/// A single node's long read holds no runtime thread: on a runtime of one thread, a
/// lookup is answered while another read waits.
#[test]
fn a_long_read_on_a_node_leaves_the_runtime_free() {
    let root = tempfile::tempdir().expect("dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let node = runtime
        .block_on(Ledger::open_async(Config::new(root.path().join("node"))))
        .expect("opens");
    runtime
        .block_on(node.create_accounts_async(accounts()))
        .expect("created");
    let (started, has_started) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let long = runtime.spawn({
        let node = node.clone();
        async move {
            let wait = move |_: &tally_state::StateMachine| {
                started.send(()).expect("test waits");
                released.recv_timeout(Duration::from_secs(60)).is_ok()
            };
            node.read_async(wait).await
        }
    });
    has_started
        .recv_timeout(Duration::from_secs(30))
        .expect("the long read started");
    let (answer, answered) = std::sync::mpsc::channel();
    runtime.spawn({
        let node = node.clone();
        async move {
            let _ = answer.send(node.lookup_accounts_async(&[1]).await);
        }
    });
    let lookup = answered.recv_timeout(Duration::from_secs(10));
    release.send(()).expect("the long read waits");
    let found = lookup.expect("answered while the long read waited");
    assert_eq!(found.expect("a node answers").len(), 1);
    assert!(runtime.block_on(long).expect("joined").expect("read"));
    runtime.block_on(node.shutdown_async()).expect("shuts down");
}
