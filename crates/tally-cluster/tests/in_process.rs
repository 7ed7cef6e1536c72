//! Three replicas in one process, on loopback: writes through any replica, reads that
//! see them, equal digests, a leader lost and a new one elected, a replica restarted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tally_cluster::{ClusterConfig, ClusterError, Replica};
use tally_testkit::{
    TEST_LEDGER, account, accounts_for_every_outcome, free_port, transfer,
    transfers_with_every_outcome,
};
use tally_types::{AccountFlags, Batch, ResultCode};

fn members(n: u64) -> BTreeMap<u64, String> {
    (1..=n)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect()
}

async fn open(id: u64, members: &BTreeMap<u64, String>, root: &std::path::Path) -> Replica {
    let config = ClusterConfig::new(id, members.clone(), root.join(format!("r{id}")));
    Replica::open(config).await.expect("opens")
}

/// Accounts 1 and 2 of the test ledger, without limits.
fn two_accounts() -> Batch {
    Batch::CreateAccounts(vec![
        account(1, TEST_LEDGER, AccountFlags::empty()),
        account(2, TEST_LEDGER, AccountFlags::empty()),
    ])
}

/// Calls `call` until the cluster answers: `Unavailable` (leadership moving) is retried
/// with the same events, as a client does.
async fn until_answered<T, Call>(mut call: impl FnMut() -> Call) -> T
where
    Call: Future<Output = Result<T, ClusterError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(results) => return results,
            Err(ClusterError::Unavailable(why)) if Instant::now() < deadline => {
                eprintln!("retrying: {why}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("submit failed: {error}"),
        }
    }
}

/// Submits `batch` until the cluster answers ([`until_answered`]).
async fn submit(replica: &Replica, batch: Batch) -> Vec<tally_engine::EventResult> {
    until_answered(|| replica.submit(batch.clone())).await
}

/// Replicas 1 to 3 of `members`, each in its directory under `root`.
async fn open_three(members: &BTreeMap<u64, String>, root: &std::path::Path) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(open(id, members, root).await);
    }
    replicas
}

/// Replicas 1 to 3 as [`open_three`] opens them, but snapshotting once their log
/// passes 16 KiB, so that they snapshot and purge while a test writes.
async fn open_three_snapshotting(
    members: &BTreeMap<u64, String>,
    root: &std::path::Path,
) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for id in 1..=3 {
        let mut config = ClusterConfig::new(id, members.clone(), root.join(format!("r{id}")));
        config.snapshot_log_bytes = 16 << 10;
        replicas.push(Replica::open(config).await.expect("opens"));
    }
    replicas
}

/// The leader in the highest term any replica reports. (At start-up two replicas may
/// both have led term 1: openraft orders them by id, the greater one leads.)
async fn wait_for_leader(replicas: &[&Replica]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses: Vec<_> = replicas.iter().map(|r| r.status()).collect();
        let term_max = statuses.iter().map(|s| s.term).max().unwrap_or(0);
        if let Some(leader) = statuses
            .iter()
            .filter(|s| s.role == "leader")
            .max_by_key(|s| (s.term, s.replica_id))
            .filter(|s| s.term >= term_max)
        {
            return leader.replica_id;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_converged(replicas: &[&Replica]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses: Vec<_> = replicas.iter().map(|r| r.status()).collect();
        let first = &statuses[0];
        if statuses
            .iter()
            .all(|s| s.applied_index == first.applied_index && s.digest == first.digest)
            && first.applied_index > 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_and_survive_the_loss_of_the_leader() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let mut replicas: Vec<Option<Replica>> = open_three(&members, root.path())
        .await
        .into_iter()
        .map(Some)
        .collect();
    let all: Vec<&Replica> = replicas.iter().flatten().collect();
    let leader = wait_for_leader(&all).await;
    let follower = all.iter().find(|r| r.id() != leader).expect("a follower");

    let accounts = two_accounts();
    let results = submit(follower, accounts).await;
    assert!(
        results.iter().all(|r| r.code == ResultCode::Ok),
        "{results:?}"
    );
    for id in 0..100u128 {
        let results = submit(
            all[(id % 3) as usize],
            Batch::CreateTransfers(vec![transfer(100 + id, 1, 2, 5)]),
        )
        .await;
        assert_eq!(results[0].code, ResultCode::Ok);
    }
    // Every replica reads every acknowledged write.
    for replica in &all {
        let debits = replica
            .read(|state| state.lookup_account(1).map(|a| a.debits_posted))
            .await
            .expect("reads");
        assert_eq!(debits, Some(500));
    }
    wait_converged(&all).await;

    // The leader goes away: the others elect a new one and keep every write.
    let index = replicas
        .iter()
        .position(|r| r.as_ref().is_some_and(|r| r.id() == leader))
        .expect("leader");
    let old = replicas[index].take().expect("leader");
    old.shutdown().await;
    drop(old);
    let survivors: Vec<&Replica> = replicas.iter().flatten().collect();
    let started = Instant::now();
    let new_leader = wait_for_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failover took {:?}",
        started.elapsed()
    );
    let retried = submit(
        survivors[0],
        Batch::CreateTransfers(vec![transfer(100, 1, 2, 5), transfer(500, 1, 2, 5)]),
    )
    .await;
    assert_eq!(retried[0].code, ResultCode::Exists);
    assert_eq!(retried[1].code, ResultCode::Ok);

    // The old leader comes back from its disk and catches up.
    replicas[index] = Some(open(leader, &members, root.path()).await);
    let all: Vec<&Replica> = replicas.iter().flatten().collect();
    wait_converged(&all).await;
    let back = replicas[index].as_ref().expect("back");
    assert_eq!(
        back.read_local(|s| s.lookup_account(1).map(|a| a.debits_posted)),
        Some(505)
    );
    for replica in all {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_catches_up_from_a_snapshot_and_an_old_one_leaves() {
    let root = tempfile::tempdir().expect("dir");
    let mut members = members(3);
    let replicas = open_three_snapshotting(&members, root.path()).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_for_leader(&all).await;
    let accounts = two_accounts();
    submit(&replicas[0], accounts).await;
    // Snapshots are taken once the log passes 16 KiB, at most one every 5 s per
    // replica, and a purge keeps the 64 entries before a snapshot: write until every
    // replica has taken a second snapshot more than 64 entries after its first.
    let started = std::time::SystemTime::now();
    let snapshot_at = |id: u64| {
        let path = root.path().join(format!("r{id}")).join("replica.snapshot");
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    };
    let mut second_after = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0u128;
    loop {
        let batch = (0..20)
            .map(|i| transfer(1_000 + round * 20 + i, 1, 2, 1))
            .collect();
        let results = submit(&replicas[1], Batch::CreateTransfers(batch)).await;
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
        round += 1;
        let taken: Vec<_> = (1..=3).map(snapshot_at).collect();
        if second_after.is_none() && taken.iter().all(|at| at.is_some_and(|at| at > started)) {
            second_after = Some((round + 70, std::time::SystemTime::now()));
        }
        if let Some((rounds, since)) = second_after
            && round >= rounds
            && taken.iter().all(|at| at.is_some_and(|at| at > since))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no second snapshot was taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let transfers = round as u64 * 20;

    // Replica 4 starts empty and joins: the log it needs is purged, so it installs a
    // snapshot, then votes.
    members.insert(4, format!("127.0.0.1:{}", free_port()));
    let mut config = ClusterConfig::new(4, members.clone(), root.path().join("r4"));
    config.join = true;
    let fourth = Replica::open(config).await.expect("opens");
    let status = replicas[2]
        .add_replica(4, members[&4].clone())
        .await
        .expect("adds");
    assert!(status.voters.contains_key(&4), "{status:?}");
    let removed = replicas[0].remove_replica(3).await.expect("removes");
    assert!(!removed.voters.contains_key(&3), "{removed:?}");
    let results = submit(&fourth, Batch::CreateTransfers(vec![transfer(9, 1, 2, 1)])).await;
    // A retry after a commit that answered too late finds the transfer in: `exists`.
    assert!(
        matches!(results[0].code, ResultCode::Ok | ResultCode::Exists),
        "{results:?}"
    );
    let kept = [&replicas[0], &replicas[1], &fourth];
    wait_converged(&kept).await;
    assert_eq!(
        fourth.read_local(|s| s.lookup_account(2).map(|a| a.credits_posted)),
        Some(u128::from(transfers) + 1)
    );
    // The replicas that took snapshots of their own kept every event; the one that
    // installed another's has none from before it, and says so.
    let every = change_events(&replicas[0], 0).await;
    assert_eq!(every.len() as u64, 2 + transfers + 1);
    assert_eq!(change_events(&replicas[1], 0).await, every);
    let error = fourth.get_change_events(0, 100).await.expect_err("a gap");
    let message = error.to_string();
    assert!(message.contains("never held"), "{message}");
    let next: u64 = message
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("names the next event it holds");
    let kept = change_events(&fourth, next - 1).await;
    assert_eq!(kept[0].timestamp, next);
    assert!(every.ends_with(&kept), "{kept:?}");
    for replica in replicas.iter().chain([&fourth]) {
        replica.shutdown().await;
    }
}

/// Two replicas added at once: each add that answers success leaves its replica a
/// voter (an add must not replace the voters with a set read before the other's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_added_at_once_both_stay_voters() {
    let root = tempfile::tempdir().expect("dir");
    let mut members = members(1);
    let first = open(1, &members, root.path()).await;
    assert_eq!(wait_for_leader(&[&first]).await, 1);
    submit(&first, two_accounts()).await;
    let mut joining = Vec::new();
    for id in [2, 3] {
        members.insert(id, format!("127.0.0.1:{}", free_port()));
        let mut config =
            ClusterConfig::new(id, members.clone(), root.path().join(format!("r{id}")));
        config.join = true;
        joining.push(Replica::open(config).await.expect("opens"));
    }
    let (two, three) = tokio::join!(
        first.add_replica(2, members[&2].clone()),
        first.add_replica(3, members[&3].clone())
    );
    let added: Vec<u64> = [(2, &two), (3, &three)]
        .into_iter()
        .filter_map(|(id, answer)| answer.is_ok().then_some(id))
        .collect();
    assert!(!added.is_empty(), "{two:?} {three:?}");
    // Whatever answered success is a voter now, on the leader's latest membership.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let voters = first.status().voters;
        if added.iter().all(|id| voters.contains_key(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "added {added:?}, voters {voters:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One that did not answer success was refused, not half done: adding it again works.
    for id in [2, 3].into_iter().filter(|id| !added.contains(id)) {
        let status = first
            .add_replica(id, members[&id].clone())
            .await
            .expect("adds");
        assert!(status.voters.contains_key(&id), "{status:?}");
    }
    assert_eq!(first.status().voters.len(), 3);
    for replica in joining.iter().chain([&first]) {
        replica.shutdown().await;
    }
}

/// Two voters removed at once: each remove that answers success leaves its replica no
/// longer a voter; one refused leaves it a voter, and removing it again works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_removed_at_once_answer_by_what_stands() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(5);
    let mut replicas = Vec::new();
    for id in 1..=5 {
        replicas.push(open(id, &members, root.path()).await);
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = wait_for_leader(&all).await;
    submit(&replicas[leader as usize - 1], two_accounts()).await;
    let leading = &replicas[leader as usize - 1];
    let [a, b] = [1u64, 2, 3, 4, 5]
        .into_iter()
        .filter(|id| *id != leader)
        .take(2)
        .collect::<Vec<_>>()[..]
    else {
        unreachable!("four replicas other than the leader")
    };
    let (first, second) = tokio::join!(leading.remove_replica(a), leading.remove_replica(b));
    let voters = leading.status().voters;
    for (id, answer) in [(a, &first), (b, &second)] {
        match answer {
            Ok(_) => assert!(!voters.contains_key(&id), "{id} removed: {voters:?}"),
            Err(refused) => {
                assert!(voters.contains_key(&id), "{id}: {refused}, {voters:?}");
                let status = leading.remove_replica(id).await.expect("removes");
                assert!(!status.voters.contains_key(&id), "{status:?}");
            }
        }
    }
    assert_eq!(leading.status().voters.len(), 3);
    for replica in &replicas {
        replica.shutdown().await;
    }
}

/// An add at a wrong address fails once the learner has not caught up in time; added
/// again at the right one, the replica joins there (the learner's address is moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_at_a_wrong_address_joins_when_added_again() {
    let root = tempfile::tempdir().expect("dir");
    let mut members = members(1);
    let mut config = ClusterConfig::new(1, members.clone(), root.path().join("r1"));
    config.learner_catch_up_max = Duration::from_secs(1);
    let first = Replica::open(config).await.expect("opens");
    assert_eq!(wait_for_leader(&[&first]).await, 1);
    submit(&first, two_accounts()).await;
    members.insert(2, format!("127.0.0.1:{}", free_port()));
    let mut config = ClusterConfig::new(2, members.clone(), root.path().join("r2"));
    config.join = true;
    let second = Replica::open(config).await.expect("opens");
    let wrong = format!("127.0.0.1:{}", free_port());
    let refused = first.add_replica(2, wrong).await;
    assert!(refused.is_err(), "{refused:?}");
    let status = first
        .add_replica(2, members[&2].clone())
        .await
        .expect("adds at the right address");
    assert_eq!(status.voters.get(&2), Some(&members[&2]), "{status:?}");
    let results = submit(&second, Batch::CreateTransfers(vec![transfer(5, 1, 2, 1)])).await;
    assert!(matches!(
        results[0].code,
        ResultCode::Ok | ResultCode::Exists
    ));
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_one_leads_at_once_and_again_after_a_restart() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(1);
    let replica = open(1, &members, root.path()).await;
    assert_eq!(wait_for_leader(&[&replica]).await, 1);
    let accounts = two_accounts();
    submit(&replica, accounts).await;
    let term = replica.status().term;
    replica.shutdown().await;
    drop(replica);

    let replica = open(1, &members, root.path()).await;
    assert_eq!(wait_for_leader(&[&replica]).await, 1);
    let results = submit(&replica, Batch::CreateTransfers(vec![transfer(7, 1, 2, 5)])).await;
    assert_eq!(results[0].code, ResultCode::Ok);
    // Standing once is enough: the lone voter never stands over its own candidacy.
    assert!(replica.status().term <= term + 1, "{:?}", replica.status());
    replica.shutdown().await;
}

/// Past a full proposal queue a submitter waits a bounded time, then gets `Busy`, and
/// its batch changed nothing; the batches that were answered are all applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_proposal_queue_answers_busy_after_a_bounded_wait() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(1);
    let mut config = ClusterConfig::new(1, members.clone(), root.path().join("r1"));
    config.proposal_queue = 1;
    config.proposals_in_flight = 1;
    config.submit_wait_max = Duration::from_millis(1);
    let replica = std::sync::Arc::new(Replica::open(config).await.expect("opens"));
    assert_eq!(wait_for_leader(&[&replica]).await, 1);
    let accounts = two_accounts();
    submit(&replica, accounts).await;
    let mut calls = tokio::task::JoinSet::new();
    for id in 100..400u128 {
        let replica = std::sync::Arc::clone(&replica);
        calls.spawn(async move {
            let batch = Batch::CreateTransfers(vec![transfer(id, 1, 2, 1)]);
            (id, replica.submit(batch).await)
        });
    }
    let (mut applied, mut busy) = (Vec::new(), Vec::new());
    while let Some(call) = calls.join_next().await {
        match call.expect("joins") {
            (id, Ok(results)) => {
                assert_eq!(results[0].code, ResultCode::Ok);
                applied.push(id);
            }
            (id, Err(ClusterError::Busy)) => busy.push(id),
            (id, Err(error)) => panic!("transfer {id}: {error}"),
        }
    }
    assert!(!busy.is_empty(), "300 at once through a queue of one");
    assert!(!applied.is_empty());
    let stored = |ids: Vec<u128>| {
        let replica = std::sync::Arc::clone(&replica);
        async move {
            replica
                .read(move |state| state.lookup_transfers(&ids).len())
                .await
                .expect("reads")
        }
    };
    assert_eq!(stored(applied.clone()).await, applied.len());
    assert_eq!(stored(busy).await, 0, "a busy batch changed nothing");
    replica.shutdown().await;
}

/// A pending transfer's reservation is released at its expiry instant on a cluster
/// with no traffic: the leader proposes an empty group then, as a single node logs an
/// empty batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_runs_at_its_instant_without_traffic() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(1);
    let replica = open(1, &members, root.path()).await;
    assert_eq!(wait_for_leader(&[&replica]).await, 1);
    let accounts = two_accounts();
    submit(&replica, accounts).await;
    let mut pending = transfer(10, 1, 2, 5);
    pending.flags = tally_types::TransferFlags::PENDING;
    pending.timeout = 1;
    let results = submit(&replica, Batch::CreateTransfers(vec![pending])).await;
    assert_eq!(results[0].code, ResultCode::Ok);
    let reserved = || replica.read_local(|state| state.lookup_accounts(&[1])[0].debits_pending);
    assert_eq!(reserved(), 5);
    // Released at its instant (1 s after it was stamped), give or take the leader's
    // poll and a commit: well within 3 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    while reserved() != 0 {
        assert!(Instant::now() < deadline, "still reserved with no traffic");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica.shutdown().await;
}

/// Submits transfers asking for balances until the cluster answers ([`until_answered`]).
async fn submit_with_balances(
    replica: &Replica,
    transfers: Vec<tally_types::Transfer>,
) -> Vec<tally_engine::TransferResult> {
    until_answered(|| replica.submit_with_balances(transfers.clone())).await
}

/// Balances with results: a replica answers them as a single node does, through the
/// leader and through a follower (the forward path), beside batches that did not ask
/// for them in the same groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_with_results_answer_as_a_single_node_does() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let replicas = open_three(&members, root.path()).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader_id = wait_for_leader(&all).await;
    let leader = all.iter().find(|r| r.id() == leader_id).expect("leader");
    let follower = all.iter().find(|r| r.id() != leader_id).expect("follower");
    let single = tally_engine::Ledger::open(tally_engine::Config::new(root.path().join("single")))
        .expect("opens");

    let mut accounts = accounts_for_every_outcome();
    accounts.extend([4, 5].map(|id| account(id, TEST_LEDGER, AccountFlags::empty())));
    let accounts = Batch::CreateAccounts(accounts);
    submit(leader, accounts.clone()).await;
    single.submit_async(accounts).await.expect("single node");

    let mut seen = Vec::new();
    for (round, transfers) in transfers_with_every_outcome().into_iter().enumerate() {
        let through = if round % 2 == 0 { follower } else { leader };
        // Another batch, on other accounts, proposed at the same time without balances.
        let beside = Batch::CreateTransfers(vec![transfer(100 + round as u128, 4, 5, 7)]);
        let (cluster, other) = tokio::join!(
            submit_with_balances(through, transfers.clone()),
            submit(leader, beside.clone()),
        );
        assert_eq!(other[0].code, ResultCode::Ok);
        let expected = single
            .create_transfers_with_balances_async(transfers)
            .await
            .expect("single node");
        single.submit_async(beside).await.expect("single node");
        let strip = |results: &[tally_engine::TransferResult]| {
            results
                .iter()
                .map(|r| (r.code, r.balances))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&cluster), strip(&expected), "round {round}");
        seen.extend(cluster.iter().map(|r| r.code));
        assert!(
            cluster
                .iter()
                .all(|r| r.balances.is_some() == (r.code == ResultCode::Ok)),
            "balances exactly for the applied transfers: {cluster:?}"
        );
    }
    for code in [
        ResultCode::Ok,
        ResultCode::ExceedsCredits,
        ResultCode::LinkedEventFailed,
    ] {
        assert!(seen.contains(&code), "the rounds meet {code:?}: {seen:?}");
    }
    single.shutdown().expect("shuts down");
    for replica in all {
        replica.shutdown().await;
    }
}

/// Every change event `replica` keeps, read at a read index, in pages.
async fn change_events(replica: &Replica, after: u64) -> Vec<tally_types::ChangeEvent> {
    let mut events = Vec::new();
    let mut from = after + 1;
    loop {
        let page = until_answered(|| replica.get_change_events(from, 100)).await;
        let Some(last) = page.last() else {
            return events;
        };
        from = last.timestamp + 1;
        events.extend(page);
    }
}

/// What a change event says, without the instants: the kind, the transfer or account,
/// and the balances after it.
fn without_instants(events: &[tally_types::ChangeEvent]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            let balances = |a: &tally_types::Account| {
                (
                    a.id,
                    a.debits_pending,
                    a.debits_posted,
                    a.credits_pending,
                    a.credits_posted,
                )
            };
            format!(
                "{:?} {} {} {:?} {:?}",
                event.kind,
                event.transfer.id,
                event.transfer.amount,
                balances(&event.debit_account),
                balances(&event.credit_account)
            )
        })
        .collect()
}

/// Each replica keeps the change events of what it applies: the same on every replica,
/// the same as a single node's for the same batches, read through the leader and a
/// follower, followed live, and each exactly once across a follower's restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_keeps_the_change_events_a_single_node_would() {
    use futures_util::StreamExt;
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let mut replicas = open_three(&members, root.path()).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader_id = wait_for_leader(&all).await;
    let follower_index = all.iter().position(|r| r.id() != leader_id).expect("one");
    let follower_id = all[follower_index].id();
    let followed = all[follower_index]
        .change_event_reader()
        .expect("events are on")
        .subscribe(0)
        .expect("follows");
    let single = tally_engine::Ledger::open(tally_engine::Config::new(root.path().join("single")))
        .expect("opens");
    let accounts = Batch::CreateAccounts(accounts_for_every_outcome());
    submit(all[0], accounts.clone()).await;
    single.submit_async(accounts).await.expect("single node");
    let rounds = transfers_with_every_outcome();
    for transfers in &rounds[..2] {
        let batch = Batch::CreateTransfers(transfers.clone());
        submit(all[follower_index], batch.clone()).await;
        single.submit_async(batch).await.expect("single node");
    }

    // The follower restarts: what it replays is not written twice.
    let restarted = replicas.remove(follower_index);
    restarted.shutdown().await;
    drop(restarted);
    replicas.insert(
        follower_index,
        open(follower_id, &members, root.path()).await,
    );
    let all: Vec<&Replica> = replicas.iter().collect();
    let batch = Batch::CreateTransfers(rounds[2].clone());
    submit(all[follower_index], batch.clone()).await;
    single.submit_async(batch).await.expect("single node");
    wait_converged(&all).await;

    let expected = single.get_change_events(0, 8_190).expect("single node");
    assert!(expected.len() >= 7, "{expected:?}");
    let leader_events =
        change_events(all.iter().find(|r| r.id() == leader_id).expect("leader"), 0).await;
    assert_eq!(
        without_instants(&leader_events),
        without_instants(&expected)
    );
    for replica in &all {
        assert_eq!(
            change_events(replica, 0).await,
            leader_events,
            "replica {}",
            replica.id()
        );
    }
    // From the middle on, as a consumer resuming after the last event it handled.
    let middle = leader_events[3].timestamp;
    assert_eq!(
        change_events(all[follower_index], middle).await,
        leader_events[4..]
    );
    // What the follower's subscriber saw before the restart ended it: a prefix.
    let live: Vec<_> = followed
        .map(|event| event.expect("an event"))
        .collect::<Vec<_>>()
        .await;
    assert!(
        !live.is_empty() && leader_events.starts_with(&live),
        "{live:?}"
    );
    let error = all[0]
        .get_change_events(0, 8_191)
        .await
        .expect_err("a limit above the most");
    assert!(error.to_string().contains("limit"), "{error}");
    let most = all[0]
        .get_change_events(0, 0)
        .await
        .expect("0 asks for the most");
    assert_eq!(
        most,
        all[0].get_change_events(0, 8_190).await.expect("reads")
    );

    single.shutdown().expect("shuts down");
    for replica in all {
        replica.shutdown().await;
    }
}

/// A follower that lost its disk comes back empty under its own id: it catches up from
/// the leader, which neither stops nor loses a write (openraft's check that a
/// follower's log never goes back is loosened for exactly this: without it the leader's
/// Raft core panics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_disk_catches_up_empty() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let mut replicas: Vec<Option<Replica>> = open_three(&members, root.path())
        .await
        .into_iter()
        .map(Some)
        .collect();
    let all: Vec<&Replica> = replicas.iter().flatten().collect();
    let leader = wait_for_leader(&all).await;
    submit(all[0], two_accounts()).await;
    for id in 0..50u128 {
        let batch = Batch::CreateTransfers(vec![transfer(100 + id, 1, 2, 1)]);
        submit(all[(id % 3) as usize], batch).await;
    }
    wait_converged(&all).await;

    let index = replicas
        .iter()
        .position(|r| r.as_ref().is_some_and(|r| r.id() != leader))
        .expect("a follower");
    let lost = replicas[index].take().expect("follower");
    let lost_id = lost.id();
    lost.shutdown().await;
    drop(lost);
    std::fs::remove_dir_all(root.path().join(format!("r{lost_id}"))).expect("wiped");
    let survivors: Vec<&Replica> = replicas.iter().flatten().collect();
    submit(
        survivors[0],
        Batch::CreateTransfers(vec![transfer(500, 1, 2, 1)]),
    )
    .await;

    replicas[index] = Some(open(lost_id, &members, root.path()).await);
    let all: Vec<&Replica> = replicas.iter().flatten().collect();
    submit(
        all[index],
        Batch::CreateTransfers(vec![transfer(501, 1, 2, 1)]),
    )
    .await;
    wait_converged(&all).await;
    for replica in &all {
        let debits = replica.read_local(|s| s.lookup_account(1).map(|a| a.debits_posted));
        assert_eq!(debits, Some(52), "replica {}", replica.id());
    }
    let leaders = all.iter().filter(|r| r.status().role == "leader").count();
    assert_eq!(
        leaders,
        1,
        "{:?}",
        all.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
    for replica in all {
        replica.shutdown().await;
    }
}

/// A replica added at an address where nothing answers never becomes a voter: it
/// stays a learner (no vote, so no majority waits on it), the add answers an error,
/// and the learner can be removed. A replica added at a member's address is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_catch_up_is_not_made_a_voter() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let mut replicas = Vec::new();
    for id in 1..=3 {
        let mut config =
            ClusterConfig::new(id, members.clone(), root.path().join(format!("r{id}")));
        config.learner_catch_up_max = Duration::from_secs(1);
        replicas.push(Replica::open(config).await.expect("opens"));
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_for_leader(&all).await;
    submit(all[0], two_accounts()).await;

    let nowhere = format!("127.0.0.1:{}", free_port());
    let error = all[1]
        .add_replica(5, nowhere)
        .await
        .expect_err("nothing answers there");
    assert!(error.contains("did not catch up"), "{error}");
    let status = all[0].status();
    assert_eq!(status.voters.len(), 3, "{status:?}");
    let again = all[2].add_replica(1, members[&1].clone()).await;
    assert!(again.is_err_and(|e| e.contains("already a voter")));
    // A second id at a member's address would let that member vote twice.
    let twice = all[2].add_replica(6, members[&2].clone()).await;
    assert!(
        twice
            .as_ref()
            .is_err_and(|e| e.contains("replica 2 is already at")),
        "{twice:?}"
    );
    assert_eq!(all[0].status().voters.len(), 3);

    let removed = all[0].remove_replica(5).await.expect("removes the learner");
    assert!(!removed.learners.contains_key(&5), "{removed:?}");
    assert!(
        all[0].remove_replica(5).await.is_err(),
        "no longer a member"
    );
    let results = submit(all[1], Batch::CreateTransfers(vec![transfer(7, 1, 2, 1)])).await;
    assert_eq!(results[0].code, ResultCode::Ok);
    for replica in all {
        replica.shutdown().await;
    }
}

/// The leader removed from the membership steps down; from then on it answers every
/// call at once that it is no longer a member (a client moves on to another replica),
/// rather than waiting for a leader it will never hear. The other two elect one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_leader_steps_down_and_turns_calls_away_at_once() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let replicas = open_three(&members, root.path()).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = wait_for_leader(&all).await;
    submit(all[0], two_accounts()).await;
    let removed = all[leader as usize - 1];
    let status = removed.remove_replica(leader).await.expect("removes");
    assert!(!status.voters.contains_key(&leader), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while removed.leads() {
        assert!(Instant::now() < deadline, "the removed leader still leads");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let write = removed
        .submit(Batch::CreateTransfers(vec![transfer(3, 1, 2, 1)]))
        .await;
    let read = removed.read(|state| state.lookup_account(1).copied()).await;
    for error in [write.map(|_| ()), read.map(|_| ())] {
        match error {
            Err(ClusterError::Unavailable(why)) => {
                assert!(why.contains("not a member"), "{why}");
            }
            other => panic!("the removed replica answered {other:?}"),
        }
    }
    let rest: Vec<&Replica> = all.iter().copied().filter(|r| r.id() != leader).collect();
    let next = wait_for_leader(&rest).await;
    assert_ne!(next, leader);
    let results = submit(rest[0], Batch::CreateTransfers(vec![transfer(4, 1, 2, 1)])).await;
    assert_eq!(results[0].code, ResultCode::Ok);
    for replica in all {
        replica.shutdown().await;
    }
}

/// A replica is not opened over a single-node ledger's directory, nor a single-node
/// ledger over a replica's: each would start empty beside the other's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_and_a_single_node_never_share_a_directory() {
    let root = tempfile::tempdir().expect("dir");
    let single = root.path().join("single");
    let ledger = tally_engine::Ledger::open(tally_engine::Config::new(&single)).expect("opens");
    ledger.shutdown().expect("shuts down");
    let members = members(1);
    let error = Replica::open(ClusterConfig::new(1, members.clone(), &single))
        .await
        .expect_err("a single node's directory");
    assert!(error.contains("holds a single-node ledger"), "{error}");

    let replica = open(1, &members, root.path()).await;
    wait_for_leader(&[&replica]).await;
    replica.shutdown().await;
    drop(replica);
    let error = tally_engine::Ledger::open(tally_engine::Config::new(root.path().join("r1")))
        .expect_err("a replica's directory")
        .to_string();
    assert!(error.contains("holds a cluster replica"), "{error}");
}

/// Once the Raft core stops, `stopped` resolves and the status says so, instead of
/// the last role the core published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_core_is_seen_as_stopped() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(1);
    let replica = open(1, &members, root.path()).await;
    wait_for_leader(&[&replica]).await;
    let pending = tokio::time::timeout(Duration::from_millis(200), replica.stopped()).await;
    assert!(pending.is_err(), "not stopped while it runs");
    replica.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), replica.stopped())
        .await
        .expect("resolves once stopped");
    assert_eq!(replica.status().role, "shutdown");
    let refused = replica
        .submit(Batch::CreateTransfers(vec![transfer(1, 1, 2, 1)]))
        .await;
    assert_eq!(refused, Err(ClusterError::Stopped));
}

/// With a peer secret, replicas that share it form a cluster, and a peer call without
/// it, or with another, is refused: no write or membership change from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_without_the_clusters_secret_are_refused() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let secret = tally_cluster::PeerSecret::new("0123456789abcdef0123").expect("a secret");
    let mut replicas = Vec::new();
    for id in 1..=3 {
        let mut config =
            ClusterConfig::new(id, members.clone(), root.path().join(format!("r{id}")));
        config.peer_secret = Some(secret.clone());
        replicas.push(Replica::open(config).await.expect("opens"));
    }
    submit(&replicas[1], two_accounts()).await;
    wait_converged(&replicas.iter().collect::<Vec<_>>()).await;

    let peer = &members[&1];
    let refused = tally_cluster::admin::status(peer, None)
        .await
        .expect_err("refused");
    assert!(refused.contains("peer secret"), "{refused}");
    let other = tally_cluster::PeerSecret::new("another-secret-of-20c").expect("a secret");
    let refused = tally_cluster::admin::remove(peer, Some(&other), 3)
        .await
        .expect_err("refused");
    assert!(refused.contains("peer secret"), "{refused}");
    let status = tally_cluster::admin::status(peer, Some(&secret))
        .await
        .expect("answers");
    assert_eq!(status.voters.len(), 3, "nothing changed: {status:?}");
    assert!(tally_cluster::PeerSecret::new("short").is_err());
    assert!(tally_cluster::PeerSecret::new("twenty characters \u{e9}\u{e9}").is_err());
    for replica in &replicas {
        replica.shutdown().await;
    }
}

/// The state a replica holds, as the test compares it: every account and the number
/// of transfers.
fn held(state: &tally_state::StateMachine) -> (Vec<tally_types::Account>, usize) {
    (state.accounts().cloned().collect(), state.transfer_count())
}

/// Read offline once stopped, each replica's directory gives back the state, position
/// and digest it held: its snapshot, then the committed entries after it replayed.
/// Damage inside its log is an error naming the offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replicas_directory_reads_back_the_state_it_held() {
    let root = tempfile::tempdir().expect("dir");
    let members = members(3);
    let mut replicas = open_three_snapshotting(&members, root.path()).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_for_leader(&all).await;
    let accounts = Batch::CreateAccounts(accounts_for_every_outcome());
    submit(&replicas[0], accounts).await;
    for transfers in transfers_with_every_outcome() {
        submit(&replicas[1], Batch::CreateTransfers(transfers)).await;
    }
    let snapshot = |id: u64| root.path().join(format!("r{id}/replica.snapshot"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0u128;
    // Until every replica has a snapshot, then 20 rounds more for the log after it.
    let mut rounds_after = None;
    while rounds_after.is_none_or(|last| round < last) {
        let batch = (0..20)
            .map(|i| transfer(10_000 + round * 20 + i, 2, 3, 1))
            .collect();
        submit(&replicas[2], Batch::CreateTransfers(batch)).await;
        round += 1;
        if rounds_after.is_none() && (1..=3).all(|id| snapshot(id).exists()) {
            rounds_after = Some(round + 20);
        }
        assert!(Instant::now() < deadline, "no replica snapshotted");
    }
    wait_converged(&all).await;
    let live: Vec<_> = replicas
        .iter()
        .map(|replica| (replica.status(), replica.read_local(held)))
        .collect();
    // The leader last: followers stopped first cannot elect another, whose first
    // entry would move the applied index past what was read above.
    let leader = wait_for_leader(&all).await;
    drop(all);
    replicas.sort_by_key(|replica| replica.id() == leader);
    for replica in &replicas {
        replica.shutdown().await;
    }
    drop(replicas);
    let mut replayed_after_snapshot = 0;
    for (id, (status, state)) in (1..=3).zip(live) {
        let dir = root.path().join(format!("r{id}"));
        let read = tally_cluster::offline::read_replica_dir(&dir).expect("reads back");
        let applied_at = read.applied_at().expect("entries applied");
        assert_eq!(applied_at.index, status.applied_index, "replica {id}");
        assert_eq!(read.applied.digest, status.digest, "replica {id}");
        assert_eq!(held(&read.applied.state), state, "replica {id}");
        // A replica may have snapshotted its last entry just before it stopped.
        let snapshot = read.snapshot.expect("a snapshot");
        assert!(snapshot.index <= applied_at.index);
        replayed_after_snapshot += usize::from(snapshot.index < applied_at.index);
        assert_eq!(read.torn_tail_bytes, 0);
    }
    assert!(
        replayed_after_snapshot > 0,
        "entries replayed after a snapshot"
    );

    // A flipped byte in the middle of a log, where frames follow it, is damage.
    let log = root.path().join("r1/replica.log");
    let mut bytes = std::fs::read(&log).expect("reads");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&log, bytes).expect("writes");
    let error = tally_cluster::offline::read_replica_dir(&root.path().join("r1"))
        .expect_err("damage inside the log");
    assert!(error.contains("damaged frame at offset"), "{error}");
    assert!(
        tally_cluster::offline::read_replica_dir(root.path()).is_err(),
        "no replica in the parent directory"
    );
}
