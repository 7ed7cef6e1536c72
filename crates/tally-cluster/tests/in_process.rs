//! Three replicas in one process, on loopback: writes through any replica, reads that
//! see them, equal digests, a leader lost and a new one elected, a replica restarted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tally_cluster::{ClusterConfig, Replica};
use tally_testkit::{TEST_LEDGER, account, transfer};
use tally_types::{AccountFlags, Batch, ResultCode};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn members(n: u64) -> BTreeMap<u64, String> {
    (1..=n)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect()
}

async fn open(id: u64, members: &BTreeMap<u64, String>, root: &std::path::Path) -> Replica {
    let config = ClusterConfig::new(id, members.clone(), root.join(format!("r{id}")));
    Replica::open(config).await.expect("opens")
}

async fn wait_for_leader(replicas: &[&Replica]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(leader) = replicas
            .iter()
            .map(|r| r.status())
            .find(|s| s.role == "leader")
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
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(Some(open(id, &members, root.path()).await));
    }
    let all: Vec<&Replica> = replicas.iter().flatten().collect();
    let leader = wait_for_leader(&all).await;
    let follower = all.iter().find(|r| r.id() != leader).expect("a follower");

    let accounts = Batch::CreateAccounts(vec![
        account(1, TEST_LEDGER, AccountFlags::empty()),
        account(2, TEST_LEDGER, AccountFlags::empty()),
    ]);
    let results = follower.submit(accounts).await.expect("accounts");
    assert!(
        results.iter().all(|r| r.code == ResultCode::Ok),
        "{results:?}"
    );
    for id in 0..100u128 {
        let results = all[(id % 3) as usize]
            .submit(Batch::CreateTransfers(vec![transfer(100 + id, 1, 2, 5)]))
            .await
            .expect("a transfer");
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
    let retried = survivors[0]
        .submit(Batch::CreateTransfers(vec![
            transfer(100, 1, 2, 5),
            transfer(500, 1, 2, 5),
        ]))
        .await
        .expect("writes after failover");
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
