//! Faults of a real cluster (docs/spec.md §7): three `tally serve --cluster` processes
//! on loopback under a load of transfers, then SIGKILL of the leader or a follower, a
//! network partition (through a proxy in front of each replica's peer service), a full
//! disk, a membership change, a follower so far behind that it catches up from the
//! leader's snapshot. After each: every acknowledged transfer is there as
//! written, the balances are the sums of the transfers that exist, and every replica
//! reports the same state digest at the same applied index.
//!
//! The tests run one at a time (each starts several processes; the failover times they
//! assert mean nothing on an overloaded machine). `--nocapture` shows what they measure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::load::{self, Load, Record};
use common::{Cluster, SmallDisk, leader_by_cli, run, tally};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_testkit::SeededRng;

/// The longest failover accepted (docs/spec.md §7): from the leader's death (or
/// isolation) to a new leader reported and a write acknowledged again. With the default
/// 300–600 ms election timeouts a follower stands once the leader's lease (600 ms) and
/// an election timeout have passed since the last heartbeat, 0.9–1.2 s, and only the
/// follower with the longer log stands (the pre-vote): about 1.3 s with the client's
/// retry, in a debug build sharing two cores with the load and the proxies.
const FAILOVER_MAX: Duration = Duration::from_secs(2);

/// How long replicas may take to agree once the faults are over.
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);

/// Acknowledgements the load must get between two steps of a test: enough to have
/// groups in flight across each fault.
const ACKS_STEP: u64 = 150;

const ALL: [u64; 3] = [1, 2, 3];

fn others(ids: &[u64], not: u64) -> Vec<u64> {
    ids.iter().copied().filter(|id| *id != not).collect()
}

/// From a fault at `since` to `old`, leader in `old_term`: the time until one of
/// `survivors` is reported leader in a later term, and the time until a write sent to
/// the survivors is acknowledged. The probe's transfers join `record`.
async fn measure_failover(
    cluster: &Cluster,
    survivors: &[u64],
    (old, old_term): (u64, u64),
    since: Instant,
    record: &Mutex<Record>,
) -> (Duration, Duration) {
    let leader = async {
        let new = cluster
            .wait_leader(survivors, Some(old), Duration::from_secs(20))
            .await;
        let elapsed = since.elapsed();
        let term = cluster.status(new).await.map_or(0, |status| status.term);
        assert!(
            term > old_term,
            "replica {new} leads in term {term}: no election after replica {old} led term \
             {old_term}"
        );
        elapsed
    };
    let write = async {
        let client = cluster.client(survivors, Duration::from_millis(800)).await;
        let mut rng = SeededRng::new(since.elapsed().as_nanos() as u64);
        let mut id = 900_000_000_000 + u128::from(rng.below(1 << 30)) * 1_000;
        loop {
            let batch = vec![load::transfer(id, &mut rng)];
            id += 1;
            if load::send(&client, batch, record).await {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "no write acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (leader, write) = tokio::join!(leader, write);
    eprintln!("failover: a new leader after {leader:?}, a write acknowledged after {write:?}");
    assert!(
        leader.max(write) < FAILOVER_MAX,
        "failover took {:?} (leader {leader:?}, write {write:?})",
        leader.max(write)
    );
    (leader, write)
}

/// `candidate` and the term it leads in if it still leads, else the leader found
/// again, with its term: asked just before a fault to the leader, so that the failover
/// measured is from the replica that led.
async fn confirmed_leader(cluster: &Cluster, mut candidate: u64) -> (u64, u64) {
    let deadline = Instant::now() + CONVERGE_LIMIT;
    loop {
        if let Ok(status) = cluster.status(candidate).await
            && status.role == "leader"
        {
            return (candidate, status.term);
        }
        assert!(Instant::now() < deadline, "no leader confirmed");
        candidate = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
    }
}

/// Stops the load, waits until `ids` agree, and checks the record through them.
async fn finish(cluster: &Cluster, ids: &[u64], load: Load, started: Instant) {
    let record = load.stop().await;
    let statuses = cluster.wait_converged(ids, CONVERGE_LIMIT).await;
    let existing = load::check(cluster, ids, &record).await;
    check_change_events(cluster, ids, &record, &[]).await;
    eprintln!(
        "{} acknowledged, {} unknown ({existing} transfers exist); replicas {ids:?} at \
         applied index {} with digest {:#x}; {:?} in all",
        record.acknowledged.len(),
        record.unknown.len(),
        statuses[0].applied_index,
        statuses[0].digest,
        started.elapsed()
    );
}

/// The change events in replica `id`'s journal (`tally events`, which reads its files
/// while it runs): each event's timestamp and line.
async fn journal_of(cluster: &Cluster, id: u64) -> BTreeMap<u64, serde_json::Value> {
    let dir = cluster.nodes[&id].dir.display().to_string();
    let lines = tally(vec!["events".into(), "--data".into(), dir]).await;
    let mut events = BTreeMap::new();
    let mut last = 0;
    for line in lines.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let timestamp: u64 = event["timestamp"].as_str().unwrap().parse().unwrap();
        assert!(
            timestamp > last,
            "replica {id}: timestamps go back at {line}"
        );
        last = timestamp;
        events.insert(timestamp, event);
    }
    events
}

/// Every replica of `ids` keeps the change events of what it applied, across its
/// crashes and restarts: each transfer once, each event the same on every replica, and
/// every acknowledged transfer in each journal. Every journal goes back to the start
/// but those of `from_snapshot`, which installed another's snapshot and keep nothing
/// before it.
async fn check_change_events(
    cluster: &Cluster,
    ids: &[u64],
    record: &Record,
    from_snapshot: &[u64],
) {
    let deadline = Instant::now() + CONVERGE_LIMIT;
    let mut journals = BTreeMap::new();
    for &id in ids {
        // The journal is written just after the state: wait for its last acknowledgements.
        let events = loop {
            let events = journal_of(cluster, id).await;
            let ids: BTreeSet<u128> = events.values().filter_map(transfer_id).collect();
            if from_snapshot.contains(&id) {
                assert!(
                    !events.is_empty(),
                    "replica {id}: no change event after its snapshot"
                );
                break events;
            }
            let from_start = events
                .values()
                .next()
                .is_some_and(|e| e["type"] == "account_created");
            assert!(
                from_start,
                "replica {id}: the journal does not start with the first account"
            );
            if record.acknowledged.keys().all(|id| ids.contains(id)) {
                break events;
            }
            assert!(
                Instant::now() < deadline,
                "replica {id}: acknowledged transfers have no event"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut seen = BTreeSet::new();
        for transfer in events.values().filter_map(transfer_id) {
            assert!(
                seen.insert(transfer),
                "replica {id}: transfer {transfer} twice"
            );
        }
        journals.insert(id, events);
    }
    let whole: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !from_snapshot.contains(id))
        .collect();
    let first_id = *whole.first().expect("a replica with its whole journal");
    let first = &journals[&first_id];
    for (id, events) in &journals {
        let mut shared = 0;
        for (timestamp, event) in events {
            if let Some(same) = first.get(timestamp) {
                assert_eq!(same, event, "replicas {first_id} and {id} at {timestamp}");
                shared += 1;
            }
        }
        if from_snapshot.contains(id) {
            assert!(
                shared > 0,
                "replica {id} shares no event with replica {first_id}"
            );
        } else {
            assert_eq!(
                shared,
                events.len().min(first.len()),
                "replicas {first_id} and {id}: one journal is not a prefix of the other"
            );
        }
    }
    eprintln!(
        "change events: {:?} kept",
        journals
            .iter()
            .map(|(id, events)| (*id, events.len()))
            .collect::<Vec<_>>()
    );
}

/// The transfer id of an event, unless it is an account's.
fn transfer_id(event: &serde_json::Value) -> Option<u128> {
    event["transfer"]["id"]
        .as_str()
        .map(|id| id.parse().unwrap())
}

/// Waits until replica `id` has applied at least what the leader had applied when
/// asked (it caught up after a restart).
async fn wait_caught_up(cluster: &Cluster, id: u64, leader: u64) {
    let target = cluster.status(leader).await.unwrap().applied_index;
    let deadline = Instant::now() + CONVERGE_LIMIT;
    loop {
        if cluster
            .status(id)
            .await
            .is_ok_and(|status| status.applied_index >= target)
        {
            return;
        }
        assert!(Instant::now() < deadline, "replica {id} did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A follower stopped while the others write on, snapshot and purge their logs past
/// it comes back through the leader's snapshot (another process's file, streamed over
/// the peer service), then the log; its journal starts at the snapshot.
#[test]
fn a_follower_behind_the_purged_log_catches_up_from_the_snapshot() {
    run(async {
        let started = Instant::now();
        let mut cluster = Cluster::prepare(3, false).await;
        cluster.serve_args = vec!["--snapshot-log-bytes".into(), "65536".into()];
        cluster.spawn_all(&ALL).await;
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0x5a4b).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        let (leader, _) = confirmed_leader(&cluster, leader).await;
        let follower = others(&ALL, leader)[0];
        let stopped_at = cluster.status(follower).await.unwrap().applied_index;
        cluster.kill(follower);
        // Far past what a snapshot leaves in the log (64 entries): the leader must send
        // its snapshot.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ahead = 0;
            for id in others(&ALL, follower) {
                let applied = cluster.status(id).await.map_or(0, |s| s.applied_index);
                ahead = ahead.max(applied);
            }
            if ahead > stopped_at + 300 {
                break;
            }
            assert!(Instant::now() < deadline, "the others wrote too little");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.spawn_all(&[follower]).await;
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        wait_caught_up(&cluster, follower, leader).await;
        let log = std::fs::read_to_string(&cluster.nodes[&follower].log).unwrap_or_default();
        assert!(
            log.contains("installed the leader's snapshot"),
            "replica {follower} caught up without a snapshot:\n{}",
            cluster.log_tail(follower)
        );
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        let record = load.stop().await;
        let statuses = cluster.wait_converged(&ALL, CONVERGE_LIMIT).await;
        load::check(&cluster, &ALL, &record).await;
        check_change_events(&cluster, &ALL, &record, &[follower]).await;
        eprintln!(
            "replica {follower} stopped at applied index {stopped_at}, caught up through a \
             snapshot; all at {} after {:?}",
            statuses[0].applied_index,
            started.elapsed()
        );
    });
}

#[test]
fn sigkill_of_the_leader_under_load_loses_nothing_acknowledged() {
    run(async {
        let started = Instant::now();
        let mut cluster = Cluster::start(3, false).await;
        cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0x1ead).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        let secret_file = cluster.secret_file();
        let leader = leader_by_cli(&cluster.peers(&ALL), &secret_file)
            .await
            .expect("a leader");
        let (leader, term) = confirmed_leader(&cluster, leader).await;
        let killed_at = Instant::now();
        cluster.kill(leader);
        let survivors = others(&ALL, leader);
        let record = load.record();
        measure_failover(&cluster, &survivors, (leader, term), killed_at, &record).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        cluster.spawn_all(&[leader]).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        finish(&cluster, &ALL, load, started).await;
    });
}

#[test]
fn sigkill_of_a_follower_then_of_the_leader_loses_nothing_acknowledged() {
    run(async {
        let started = Instant::now();
        let mut cluster = Cluster::start(3, false).await;
        cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0xf011).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        // Asked again under load: at start-up two replicas may both have led term 1.
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let follower = others(&ALL, leader)[0];
        cluster.kill(follower);
        // One replica down of three: writes go on without a pause.
        load.until_more_acks(ACKS_STEP, Duration::from_secs(10))
            .await;
        cluster.spawn_all(&[follower]).await;
        wait_caught_up(&cluster, follower, leader).await;
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let (leader, term) = confirmed_leader(&cluster, leader).await;
        let killed_at = Instant::now();
        cluster.kill(leader);
        let record = load.record();
        let survivors = others(&ALL, leader);
        measure_failover(&cluster, &survivors, (leader, term), killed_at, &record).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        cluster.spawn_all(&[leader]).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        finish(&cluster, &ALL, load, started).await;
    });
}

#[test]
fn an_isolated_leader_acknowledges_nothing_and_converges_after_healing() {
    run(async {
        let started = Instant::now();
        let cluster = Cluster::start(3, true).await;
        let net = cluster.net.clone().unwrap();
        cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0x150).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        // Asked again under load: at start-up two replicas may both have led term 1.
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let (leader, term) = confirmed_leader(&cluster, leader).await;
        let cut_at = Instant::now();
        net.isolate(leader);
        let majority = others(&ALL, leader);
        let record = load.record();
        measure_failover(&cluster, &majority, (leader, term), cut_at, &record).await;
        // The old leader may still believe it leads, but cannot commit: a write sent to
        // it is not acknowledged, and its applied index stays where it was.
        let before = cluster.status(leader).await.unwrap();
        let client = cluster.client(&[leader], Duration::from_secs(2)).await;
        let mut rng = SeededRng::new(7);
        let batch: Vec<_> = (0..3)
            .map(|i| load::transfer(800_000_000_000 + i, &mut rng))
            .collect();
        assert!(
            !load::send(&client, batch, &record).await,
            "a write to the isolated leader was acknowledged"
        );
        let after = cluster.status(leader).await.unwrap();
        assert_eq!(
            before.applied_index, after.applied_index,
            "the isolated leader applied entries without a majority: {after:?}"
        );
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        reads_at_the_isolated_leader_are_never_stale(&cluster, &client, &majority, &record).await;
        net.heal();
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        finish(&cluster, &ALL, load, started).await;
    });
}

/// Linearizable reads (docs/spec.md §3): transfers the majority acknowledged after the
/// leader was cut off are never answered as missing by the old leader, which cannot
/// confirm that it still leads: its read fails instead.
async fn reads_at_the_isolated_leader_are_never_stale(
    cluster: &Cluster,
    isolated: &tally_client::Client,
    majority: &[u64],
    record: &Mutex<Record>,
) {
    let client = cluster.client(majority, Duration::from_secs(5)).await;
    let mut rng = SeededRng::new(11);
    let batch: Vec<_> = (0..3)
        .map(|i| load::transfer(900_000_000_000 + i, &mut rng))
        .collect();
    let ids: Vec<u128> = batch.iter().map(|(transfer, _)| transfer.id).collect();
    assert!(
        load::send(&client, batch, record).await,
        "the majority acknowledged nothing"
    );
    let found = client.lookup_transfers(&ids).await.unwrap();
    assert_eq!(found.len(), ids.len(), "the majority reads its own writes");
    match isolated.lookup_transfers(&ids).await {
        Err(_) => {}
        Ok(stale) => assert_eq!(
            stale.len(),
            ids.len(),
            "the isolated leader answered a read without the majority's writes"
        ),
    }
}

#[test]
fn a_client_given_a_follower_first_finds_the_leader() {
    run(async {
        let cluster = Cluster::start(3, false).await;
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let follower = others(&ALL, leader)[0];
        // Until the follower has heard from the leader it answers UNAVAILABLE, and the
        // client would move on for that reason instead.
        let deadline = Instant::now() + CONVERGE_LIMIT;
        while cluster.status(follower).await.ok().and_then(|s| s.leader) != Some(leader) {
            assert!(
                Instant::now() < deadline,
                "the follower never heard of the leader"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = cluster
            .client(&[follower, leader], Duration::from_secs(5))
            .await;
        load::create_accounts(&client).await;
        // The follower passed the write on and said so: the client moved to the leader.
        assert_eq!(client.stats().forwarded, 1, "{:?}", client.stats());
        let record = Mutex::new(Record::default());
        let mut rng = SeededRng::new(5);
        for id in 1..=10 {
            let batch = vec![load::transfer(700_000_000_000 + id, &mut rng)];
            assert!(load::send(&client, batch, &record).await, "write {id}");
        }
        let leader_now = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        if leader_now == leader {
            assert_eq!(
                client.stats().forwarded,
                1,
                "writes still went through the follower"
            );
        }
    });
}

#[test]
fn an_isolated_follower_catches_up_after_healing() {
    run(async {
        let started = Instant::now();
        let cluster = Cluster::start(3, true).await;
        let net = cluster.net.clone().unwrap();
        cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0xf0).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        // Asked again under load: at start-up two replicas may both have led term 1.
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let term = cluster.status(leader).await.unwrap().term;
        let follower = others(&ALL, leader)[0];
        net.isolate(follower);
        // The majority goes on acknowledging; the isolated follower cannot reach the
        // leader, so a write sent to it is not acknowledged.
        load.until_more_acks(ACKS_STEP, Duration::from_secs(10))
            .await;
        let client = cluster.client(&[follower], Duration::from_secs(2)).await;
        let mut rng = SeededRng::new(8);
        let batch = vec![load::transfer(800_000_000_000, &mut rng)];
        assert!(
            !load::send(&client, batch, &load.record()).await,
            "a write to the isolated follower was acknowledged"
        );
        // Long enough for the follower's election timer to run out twice: no majority
        // answers its pre-vote, so it never raises the term...
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let cut_off = cluster.status(follower).await.unwrap();
        assert_eq!(
            cut_off.term, term,
            "the isolated follower stood: {cut_off:?}"
        );
        load.until_more_acks(ACKS_STEP, Duration::from_secs(10))
            .await;
        net.heal();
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        // ... and its return does not depose the leader.
        let after = cluster.status(leader).await.unwrap();
        assert_eq!(
            (after.role.as_str(), after.term),
            ("leader", term),
            "the follower's return changed the leadership"
        );
        finish(&cluster, &ALL, load, started).await;
    });
}

#[test]
fn a_flapping_lossy_network_loses_nothing_acknowledged() {
    run(async {
        let started = Instant::now();
        let cluster = Cluster::start(3, true).await;
        let net = cluster.net.clone().unwrap();
        cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0xf1a9).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        let mut rng = SeededRng::new(0xf1a9);
        net.reseed(0xf1a9);
        net.set_delay(Duration::from_millis(2));
        net.set_drops(3);
        let acks_before = load.acks();
        for _ in 0..12 {
            net.isolate(1 + rng.below(3));
            tokio::time::sleep(Duration::from_millis(200 + rng.below(300))).await;
            net.heal();
            tokio::time::sleep(Duration::from_millis(200 + rng.below(300))).await;
        }
        let flapping = load.acks() - acks_before;
        eprintln!("{flapping} transfers acknowledged while the network flapped");
        assert!(
            flapping > 0,
            "nothing acknowledged while the network flapped"
        );
        net.set_delay(Duration::ZERO);
        net.set_drops(0);
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        finish(&cluster, &ALL, load, started).await;
    });
}

/// Fills the file system of `dir` but for `free_bytes`.
fn fill(dir: &std::path::Path, free_bytes: u64) {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let length = file.metadata().unwrap().len();
    file.set_len(length.saturating_sub(free_bytes)).unwrap();
}

#[test]
fn a_full_disk_stops_one_replica_and_the_others_go_on() {
    run(async {
        let started = Instant::now();
        let mut cluster = Cluster::prepare(3, false).await;
        let full = 3;
        match SmallDisk::mount(&cluster.nodes[&full].dir, 8 << 20) {
            Ok(disk) => cluster.mounts.push(disk),
            // CI sets this where it has checked that it can mount one: the test must
            // run there, not skip.
            Err(why) if std::env::var_os("TALLY_REQUIRE_FULL_DISK").is_some() => {
                panic!("cannot mount a small tmpfs for the full disk: {why}")
            }
            Err(why) => {
                eprintln!("skipped: cannot mount a small tmpfs for the full disk ({why})");
                return;
            }
        }
        cluster.spawn_all(&ALL).await;
        cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0xd15c).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        fill(&cluster.nodes[&full].dir, 64 << 10);
        // The replica's log fails on the next writes; the other two go on.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stopped = match cluster.status(full).await {
                Err(_) => true,
                Ok(status) => status.role == "shutdown",
            };
            if stopped {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica on the full disk still runs: {:?}\n{}",
                cluster.status(full).await,
                cluster.log_tail(full)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(&cluster.nodes[&full].log).unwrap_or_default();
        assert!(
            log.contains("No space left on device"),
            "the replica stopped, but not for want of space:\n{}",
            cluster.log_tail(full)
        );
        eprintln!(
            "the replica on the full disk stopped after {:?}",
            started.elapsed()
        );
        let rest = others(&ALL, full);
        cluster.wait_leader(&rest, None, CONVERGE_LIMIT).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        let record = load.stop().await;
        cluster.wait_converged(&rest, CONVERGE_LIMIT).await;
        load::check(&cluster, &rest, &record).await;
        // Room again: the replica restarts from its log (its torn tail cut) and catches up.
        cluster.kill(full);
        std::fs::remove_file(cluster.nodes[&full].dir.join("filler")).unwrap();
        cluster.spawn_all(&[full]).await;
        let statuses = cluster.wait_converged(&ALL, CONVERGE_LIMIT).await;
        load::check(&cluster, &ALL, &record).await;
        eprintln!(
            "{} acknowledged; all at applied index {} after the restart; {:?} in all",
            record.acknowledged.len(),
            statuses[0].applied_index,
            started.elapsed()
        );
    });
}

#[test]
fn a_replica_added_then_an_old_one_removed_under_load() {
    run(async {
        let started = Instant::now();
        let mut cluster = Cluster::start(3, false).await;
        cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let load = Load::start(&cluster, 4, 0xadd).await;
        load.until_more_acks(ACKS_STEP, Duration::from_secs(30))
            .await;
        cluster.add_joining_node(4);
        cluster.spawn_all(&[4]).await;
        let peer = cluster.nodes[&2].peer_listen.clone();
        let addr = cluster.nodes[&4].peer_advertised.clone();
        let added = tally(
            [
                "cluster",
                "add",
                "--peer",
                &peer,
                "--replica",
                "4",
                "--addr",
                &addr,
                "--peer-secret-file",
                &cluster.secret_file(),
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        let status: serde_json::Value = serde_json::from_str(added.trim()).unwrap();
        assert!(status["voters"].get("4").is_some(), "{status}");
        // The answer is the leader's, labelled with the leader's own address.
        let leader = status["replica"].to_string();
        assert_eq!(status["peer"], status["voters"][&leader], "{status}");
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        // Caught up: the same digest at the same applied index (the load paused to let
        // the replicas meet).
        load.pause(true);
        cluster.wait_converged(&[1, 2, 3, 4], CONVERGE_LIMIT).await;
        load.pause(false);
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        // Remove replica 1, leader or not, through another replica.
        let removed = tally(
            [
                "cluster",
                "remove",
                "--peer",
                &peer,
                "--replica",
                "1",
                "--peer-secret-file",
                &cluster.secret_file(),
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        let status: serde_json::Value = serde_json::from_str(removed.trim()).unwrap();
        assert!(status["voters"].get("1").is_none(), "{status}");
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        cluster.terminate(1);
        load.until_more_acks(ACKS_STEP, Duration::from_secs(20))
            .await;
        let rest = [2, 3, 4];
        let record = load.stop().await;
        let statuses = cluster.wait_converged(&rest, CONVERGE_LIMIT).await;
        for status in &statuses {
            let voters: Vec<u64> = status.voters.keys().copied().collect();
            assert_eq!(voters, rest, "replica {}", status.replica_id);
        }
        load::check(&cluster, &rest, &record).await;
        eprintln!(
            "{} acknowledged through the change; {:?} in all",
            record.acknowledged.len(),
            started.elapsed()
        );
    });
}

/// Runs `tally ARGS` that must fail; answers its stderr.
fn tally_failing(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "tally {args:?} succeeded");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn verify_reads_each_stopped_replica_and_their_digests_agree() {
    run(async {
        let mut cluster = Cluster::start(3, false).await;
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        let client = cluster.client(&[leader], Duration::from_secs(5)).await;
        load::create_accounts(&client).await;
        let record = Mutex::new(Record::default());
        let mut rng = SeededRng::new(11);
        for round in 0..20 {
            let batch = (0..10)
                .map(|i| load::transfer(800_000_000_000 + round * 10 + i, &mut rng))
                .collect();
            assert!(load::send(&client, batch, &record).await, "round {round}");
        }
        let statuses = cluster.wait_converged(&ALL, CONVERGE_LIMIT).await;
        let dirs: BTreeMap<u64, String> = ALL
            .iter()
            .map(|id| (*id, cluster.nodes[id].dir.to_string_lossy().into_owned()))
            .collect();
        // A running replica holds its directory.
        let refused = tally_failing(&["verify", "--data", &dirs[&1]]);
        assert!(refused.contains("lock"), "{refused}");
        drop(client);
        // The leader last: followers stopped first cannot elect another, whose first
        // entry would move the applied index past the statuses above.
        let leader = cluster.wait_leader(&ALL, None, CONVERGE_LIMIT).await;
        for id in others(&ALL, leader).into_iter().chain([leader]) {
            cluster.terminate(id);
        }
        let acknowledged = record.lock().unwrap().acknowledged.len();
        for status in statuses {
            let data = dirs[&status.replica_id].clone();
            let out = tally(vec!["verify".into(), "--data".into(), data.clone()]).await;
            assert!(out.contains("verify: ok"), "{out}");
            let digest = format!("digest {:016x}", status.digest);
            assert!(
                out.contains(&digest),
                "replica {}: {out}",
                status.replica_id
            );
            assert!(
                out.contains(&format!("applied {} (term", status.applied_index)),
                "{out}"
            );
            let transfers = tally(vec!["transfers".into(), "--data".into(), data]).await;
            assert_eq!(transfers.lines().count(), acknowledged, "{transfers}");
        }
    });
}
