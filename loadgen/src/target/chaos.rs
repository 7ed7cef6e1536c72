//! What happens to a cluster during a run, and what is seen of it: the chaos (kill
//! the leader with SIGKILL, restart it from its data directory after a pause), the
//! watcher that counts failovers from the replicas' status, and the check after the
//! run that every replica reached the same applied index and state digest.

use super::ReplicaEnd;
use super::replicas::{Killer, LocalCluster};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tally_cluster::ReplicaStatus;
use tokio::runtime::{Handle, Runtime};

/// How often the watcher asks every replica for its status.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// How long the chaos (or the start) waits for a leader to exist.
pub(super) const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// When the chaos strikes.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// The first kill, after the run's load starts.
    pub first_after: Duration,
    /// Then again every so often, while the run lasts (`None`: once).
    pub every: Option<Duration>,
    /// How long a killed leader stays down after the others elected a new one.
    pub down: Duration,
}

impl ChaosPlan {
    /// The report's line.
    pub fn describe(&self) -> String {
        let again = match self.every {
            Some(every) => format!(", then every {:.1} s", every.as_secs_f64()),
            None => String::new(),
        };
        format!(
            "kill-leader: SIGKILL the leader {:.1} s into the run{again}; restart it {:.1} s after a new leader is elected",
            self.first_after.as_secs_f64(),
            self.down.as_secs_f64()
        )
    }
}

/// What the chaos did.
#[derive(Debug, Clone, Default)]
pub(super) struct ChaosLog {
    pub(super) kills: u64,
    pub(super) errors: Vec<String>,
}

/// The cluster's peer secret, for a cluster at --addr started with one (set once, at
/// start, from --peer-secret-file).
static PEER_SECRET: std::sync::OnceLock<tally_cluster::PeerSecret> = std::sync::OnceLock::new();

/// Sends `secret` with every status call (a cluster at --addr with a peer secret).
pub fn use_peer_secret(secret: tally_cluster::PeerSecret) {
    let _ = PEER_SECRET.set(secret);
}

/// Every replica's status, `None` where one did not answer. A refusal for a missing or
/// wrong peer secret stops the run with that message instead of a silent wait.
async fn statuses(peers: &[(u64, String)]) -> Vec<Option<ReplicaStatus>> {
    let secret = PEER_SECRET.get();
    let mut answers = Vec::with_capacity(peers.len());
    // Asked one after the other: a handful of loopback calls, a few ms in all.
    for (_, peer) in peers {
        let answer = tally_cluster::admin::status(peer, secret).await;
        if let Err(error) = &answer
            && error.contains("peer secret")
        {
            eprintln!("loadgen: {error} (--peer-secret-file)");
        }
        answers.push(answer.ok());
    }
    answers
}

/// The leader with the highest term any replica reports: (term, replica id).
fn leader_of(statuses: &[Option<ReplicaStatus>]) -> Option<(u64, u64)> {
    statuses
        .iter()
        .flatten()
        .filter(|status| status.role == "leader")
        .map(|status| (status.term, status.replica_id))
        .max()
}

/// The current leader's id, waiting up to `timeout` for one.
pub(super) async fn leader(peers: &[(u64, String)], timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((_, id)) = leader_of(&statuses(peers).await) {
            return Ok(id);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no leader among the replicas after {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// Waits up to `timeout` until every replica answers, all in one term and following
/// one leader: a cluster just started may hold a second election before it settles.
pub(super) async fn settled(peers: &[(u64, String)], timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let answers = statuses(peers).await;
        let first = answers.first().cloned().flatten();
        let agreed = first.as_ref().and_then(|first| {
            let same = answers.iter().all(|answer| {
                answer
                    .as_ref()
                    .is_some_and(|a| a.term == first.term && a.leader == first.leader)
            });
            if same { first.leader } else { None }
        });
        if let Some(leader) = agreed {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the replicas agree on no leader after {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// Counts failovers: each time a leader of a higher term than the last one seen takes
/// over (the first leader seen is no failover).
#[derive(Debug)]
pub(super) struct Watcher {
    stop: Arc<AtomicBool>,
    failovers: Arc<AtomicU64>,
}

impl Watcher {
    /// Starts watching `peers` on `runtime`.
    pub(super) fn start(runtime: &Runtime, peers: Vec<(u64, String)>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let failovers = Arc::new(AtomicU64::new(0));
        let (stop_seen, counted) = (stop.clone(), failovers.clone());
        runtime.spawn(async move {
            let mut last: Option<(u64, u64)> = None;
            while !stop_seen.load(Ordering::Acquire) {
                if let Some(now) = leader_of(&statuses(&peers).await) {
                    if last.is_some_and(|(term, _)| now.0 > term) {
                        counted.fetch_add(1, Ordering::AcqRel);
                        eprintln!("loadgen: replica {} leads (term {})", now.1, now.0);
                    }
                    if last.is_none_or(|(term, _)| now.0 > term) {
                        last = Some(now);
                    }
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        });
        Watcher { stop, failovers }
    }

    /// Stops watching; the failovers seen.
    pub(super) fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.failovers.load(Ordering::Acquire)
    }
}

/// The chaos, on a thread of its own while the run lasts.
#[derive(Debug)]
pub(super) struct Chaos {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ChaosLog>,
    cluster: Arc<LocalCluster>,
}

impl Chaos {
    /// Starts `plan` against `cluster`; status calls run on `handle`.
    pub(super) fn start(
        cluster: Arc<LocalCluster>,
        handle: Handle,
        plan: ChaosPlan,
    ) -> Result<Chaos, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_seen, target) = (stop.clone(), cluster.clone());
        let thread = std::thread::Builder::new()
            .name("loadgen-chaos".into())
            .spawn(move || chaos_loop(&target, &handle, &plan, &stop_seen))
            .map_err(|e| format!("starting the chaos thread: {e}"))?;
        Ok(Chaos {
            stop,
            thread,
            cluster,
        })
    }

    /// Stops the chaos and restarts every replica it left down; what it did.
    pub(super) fn stop(self) -> ChaosLog {
        self.stop.store(true, Ordering::Release);
        let mut log = self.thread.join().unwrap_or_else(|_| ChaosLog {
            kills: 0,
            errors: vec!["the chaos thread panicked".into()],
        });
        for id in self.cluster.stopped() {
            if let Err(error) = self.cluster.restart(id) {
                log.errors.push(error);
            }
        }
        log
    }
}

/// Sleeps until `due`; false when stopped first.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < due {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let left = due.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    !stop.load(Ordering::Acquire)
}

fn chaos_loop(
    cluster: &LocalCluster,
    handle: &Handle,
    plan: &ChaosPlan,
    stop: &AtomicBool,
) -> ChaosLog {
    let mut log = ChaosLog::default();
    let mut due = Instant::now() + plan.first_after;
    while sleep_until(due, stop) {
        match kill_leader(cluster, handle, plan.down) {
            Ok((id, elected)) => {
                log.kills += 1;
                eprintln!("loadgen: chaos: replica {elected} took over; {id} restarted");
            }
            Err(error) => {
                eprintln!("loadgen: chaos: {error}");
                log.errors.push(error);
            }
        }
        let Some(every) = plan.every else { break };
        due = (due + every).max(Instant::now());
    }
    log
}

/// Kills the leader, waits until the others elect a new one, leaves it down for
/// `down` more, restarts it; its id and the new leader's. Waiting for the new leader
/// makes every kill a failover: a leader back within the election timeout would
/// simply carry on.
fn kill_leader(
    cluster: &LocalCluster,
    handle: &Handle,
    down: Duration,
) -> Result<(u64, u64), String> {
    let peers = cluster.peer_addrs();
    let id = handle.block_on(leader(&peers, LEADER_TIMEOUT))?;
    cluster.kill(id)?;
    eprintln!("loadgen: chaos: SIGKILL to leader {id}");
    let others: Vec<(u64, String)> = peers.into_iter().filter(|(peer, _)| *peer != id).collect();
    let elected = handle.block_on(leader(&others, LEADER_TIMEOUT));
    std::thread::sleep(down);
    cluster.restart(id)?;
    Ok((id, elected?))
}

/// Waits up to `timeout` for every replica to answer with the same applied index and
/// digest; whether they did, and each one's last answer.
pub(super) async fn converge(
    peers: &[(u64, String)],
    timeout: Duration,
) -> (bool, Vec<ReplicaEnd>) {
    let deadline = Instant::now() + timeout;
    loop {
        let answers = statuses(peers).await;
        let first = answers.first().cloned().flatten();
        let equal = first.as_ref().is_some_and(|first| {
            answers.iter().all(|answer| {
                answer.as_ref().is_some_and(|a| {
                    a.applied_index == first.applied_index && a.digest == first.digest
                })
            })
        });
        if equal || Instant::now() >= deadline {
            let ends = peers
                .iter()
                .zip(&answers)
                .map(|((id, _), answer)| ReplicaEnd {
                    replica_id: *id,
                    applied_index: answer.as_ref().map(|a| a.applied_index),
                    digest: answer.as_ref().map(|a| a.digest),
                })
                .collect();
            return (equal, ends);
        }
        tokio::time::sleep(WATCH_INTERVAL * 2).await;
    }
}

/// On SIGINT or SIGTERM: kills the replica processes and exits (status 130).
pub(super) async fn kill_on_signal(killer: Killer) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("loadgen: cannot catch SIGINT/SIGTERM; the replicas outlive an interrupt");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    killer.kill_all();
    eprintln!("loadgen: interrupted; the replicas were killed");
    std::process::exit(130);
}
