//! A Tally cluster over the network: the load goes through `tally-client`, which knows
//! every replica's client address and fails over between them. The cluster is either
//! one this process starts ([`LocalCluster`]: one `tally serve --cluster` process per
//! replica) or one already running.
//!
//! A replica may die mid-call (the chaos kills leaders on purpose), so a create call
//! can fail without saying whether it was applied. The target then sends the very same
//! events again until the cluster answers: the id is the idempotency key, so an event
//! the lost attempt applied answers `exists` (a linked chain: `exists` for its first
//! event, `linked_event_failed` for the rest). The generators draw every id once, so
//! such an answer can only mean "applied by an earlier attempt of this call": the
//! target looks the events up and reports them `ok` with their stored timestamps, as
//! the first attempt would have. The model thus sees one definite result per event.

use super::chaos::{self, Chaos, ChaosPlan, Watcher};
use super::replicas::LocalCluster;
use super::server::{connect_client, failure, outcome, runtime};
use super::{ClusterStats, Outcome, SubmitFailure, Target};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_client::{Client, ClientConfig, ClientError, CreateResult, RetryPolicy};
use tally_types::{Account, BATCH_EVENTS_MAX, Batch, ResultCode, Transfer, TransferFlags};
use tokio::runtime::Runtime;

/// How long one submission keeps being sent again while the cluster cannot answer it
/// (a leader election takes about a second; a replica restart a few).
const RESUBMIT_WINDOW: Duration = Duration::from_secs(60);

/// The wait between two attempts of a submission the cluster could not answer.
const RESUBMIT_PAUSE: Duration = Duration::from_millis(100);

/// How long the replicas get to agree on their applied index and digest after the run.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest gap between two acknowledgements while the run's load is on.
#[derive(Debug, Default)]
struct AckClock {
    on: bool,
    last: Option<Instant>,
    gap_max: Duration,
}

/// The client side of a cluster, the cluster's processes when this process runs them,
/// and what watches it during the run.
#[derive(Debug)]
pub struct ClusterTarget {
    runtime: Runtime,
    client: Client,
    addrs: Vec<String>,
    /// Peer addresses by replica id, for status queries (empty: not known).
    peers: Vec<(u64, String)>,
    local: Option<Arc<LocalCluster>>,
    plan: Option<ChaosPlan>,
    acks: Mutex<AckClock>,
    watcher: Mutex<Option<Watcher>>,
    chaos: Mutex<Option<Chaos>>,
    chaos_done: Mutex<chaos::ChaosLog>,
    /// Submissions sent again after a failure that left their fate open.
    resubmissions: AtomicU64,
    /// Events answered `exists` (or `linked_event_failed`) but found stored: applied by
    /// an attempt whose answer was lost.
    events_recovered: AtomicU64,
}

fn client_config(addrs: &[String]) -> ClientConfig {
    let mut urls = addrs.iter().map(|addr| format!("http://{addr}"));
    let endpoint = urls.next().unwrap_or_default();
    ClientConfig {
        replicas: urls.collect(),
        // A few quick attempts, each to the next replica when one cannot be reached;
        // the target itself sends again after that (see the module's documentation).
        retry: RetryPolicy {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
        },
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::new(endpoint)
    }
}

/// Errors after which a create call may or may not have been applied.
fn ambiguous(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unavailable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Protocol(_)
            | ClientError::Other(_)
            | ClientError::Connect(_)
    )
}

impl ClusterTarget {
    /// Connects to a running cluster through its replicas' client addresses; `peers`
    /// (peer addresses by replica id) lets the run count failovers and check that the
    /// replicas converge.
    pub fn connect(addrs: Vec<String>, peers: Vec<(u64, String)>) -> Result<ClusterTarget, String> {
        if addrs.is_empty() {
            return Err("no cluster address".into());
        }
        let runtime = runtime("loadgen-client", 2)?;
        let client = runtime.block_on(connect_client(client_config(&addrs)))?;
        let target = ClusterTarget {
            runtime,
            client,
            addrs,
            peers,
            local: None,
            plan: None,
            acks: Mutex::new(AckClock::default()),
            watcher: Mutex::new(None),
            chaos: Mutex::new(None),
            chaos_done: Mutex::new(chaos::ChaosLog::default()),
            resubmissions: AtomicU64::new(0),
            events_recovered: AtomicU64::new(0),
        };
        if !target.peers.is_empty() {
            let peers = &target.peers;
            target
                .runtime
                .block_on(chaos::settled(peers, chaos::LEADER_TIMEOUT))?;
        }
        Ok(target)
    }

    /// Drives `cluster`, started by this process: waits for its first leader, and has
    /// SIGINT and SIGTERM kill its processes; `plan` is the chaos to run during the run.
    pub fn start_local(
        cluster: LocalCluster,
        plan: Option<ChaosPlan>,
    ) -> Result<ClusterTarget, String> {
        let peers = cluster.peer_addrs();
        let addrs = cluster.client_addrs();
        let killer = cluster.killer();
        let mut target = ClusterTarget::connect(addrs, peers)?;
        target.runtime.spawn(chaos::kill_on_signal(killer));
        target.local = Some(Arc::new(cluster));
        target.plan = plan;
        Ok(target)
    }

    /// The replicas' client addresses.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// True when this process runs the replicas.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Calls the client made and events it sent, for the report.
    pub fn client_stats(&self) -> tally_client::ClientStats {
        self.client.stats()
    }

    /// One attempt of `batch`, as the client answers it.
    async fn attempt(&self, batch: &Batch) -> Result<Vec<CreateResult>, ClientError> {
        match batch {
            Batch::CreateTransfers(transfers)
                if transfers.len() == 1 && !transfers[0].flags.contains(TransferFlags::LINKED) =>
            {
                self.client
                    .create_transfer(transfers[0])
                    .await
                    .map(|r| vec![r])
            }
            Batch::CreateTransfers(transfers) => self.client.create_transfers(transfers).await,
            Batch::CreateAccounts(accounts) => self.client.create_accounts(accounts).await,
        }
    }

    /// Outcomes of `batch` from `results`, where every `exists` (and a chain's
    /// `linked_event_failed`) whose event is stored becomes the `ok` of the attempt
    /// whose answer was lost.
    async fn resolve(&self, batch: &Batch, results: &[CreateResult]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = results.iter().map(outcome).collect();
        let maybe_applied =
            |code: ResultCode| code == ResultCode::Exists || code == ResultCode::LinkedEventFailed;
        let ids: Vec<u128> = match batch {
            Batch::CreateTransfers(transfers) => transfers.iter().map(|t| t.id).collect(),
            Batch::CreateAccounts(accounts) => accounts.iter().map(|a| a.id).collect(),
        };
        let asked: Vec<u128> = ids
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| maybe_applied(o.code))
            .map(|(id, _)| *id)
            .collect();
        if asked.is_empty() {
            return outcomes;
        }
        let stored: Vec<(u128, u64)> = match batch {
            Batch::CreateTransfers(_) => self.transfers_stored(&asked).await,
            Batch::CreateAccounts(_) => self.accounts_stored(&asked).await,
        };
        for (id, outcome) in ids.iter().zip(outcomes.iter_mut()) {
            if !maybe_applied(outcome.code) {
                continue;
            }
            if let Some((_, timestamp)) = stored.iter().find(|(stored, _)| stored == id) {
                self.events_recovered.fetch_add(1, Ordering::Relaxed);
                *outcome = Outcome {
                    code: ResultCode::Ok,
                    timestamp: *timestamp,
                };
            }
        }
        outcomes
    }

    /// (id, timestamp) of the transfers among `ids` that the ledger holds.
    async fn transfers_stored(&self, ids: &[u128]) -> Vec<(u128, u64)> {
        let found = self.retried(|| self.client.lookup_transfers(ids)).await;
        found.iter().map(|t| (t.id, t.timestamp)).collect()
    }

    /// (id, timestamp) of the accounts among `ids` that the ledger holds.
    async fn accounts_stored(&self, ids: &[u128]) -> Vec<(u128, u64)> {
        let found = self.retried(|| self.client.lookup_accounts(ids)).await;
        found.iter().map(|a| (a.id, a.timestamp)).collect()
    }

    /// A lookup, tried again while the cluster cannot answer; empty after the window.
    async fn retried<T, F, Fut>(&self, call: F) -> Vec<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Vec<T>, ClientError>>,
    {
        let deadline = Instant::now() + RESUBMIT_WINDOW;
        loop {
            match call().await {
                Ok(found) => return found,
                Err(error) if ambiguous(&error) && Instant::now() < deadline => {
                    tokio::time::sleep(RESUBMIT_PAUSE).await;
                }
                // The model counts what is missing: a failed lookup shows as missing.
                Err(error) => {
                    eprintln!("loadgen: lookup failed: {error}");
                    return Vec::new();
                }
            }
        }
    }

    /// Notes an acknowledgement for the longest gap between two.
    fn acknowledged(&self) {
        let now = Instant::now();
        let mut acks = self.acks.lock();
        if !acks.on {
            return;
        }
        if let Some(last) = acks.last {
            acks.gap_max = acks.gap_max.max(now.saturating_duration_since(last));
        }
        acks.last = Some(now);
    }
}

impl Target for ClusterTarget {
    async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        let deadline = Instant::now() + RESUBMIT_WINDOW;
        loop {
            match self.attempt(&batch).await {
                Ok(results) => {
                    let outcomes = self.resolve(&batch, &results).await;
                    self.acknowledged();
                    return Ok(outcomes);
                }
                Err(error) if ambiguous(&error) && Instant::now() < deadline => {
                    self.resubmissions.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RESUBMIT_PAUSE).await;
                }
                Err(error) => return Err(failure(error)),
            }
        }
    }

    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.runtime.block_on(self.submit(batch))
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_EVENTS_MAX) {
            let call = || self.client.lookup_accounts(chunk);
            found.extend(self.runtime.block_on(self.retried(call)));
        }
        found
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_EVENTS_MAX) {
            let call = || self.client.lookup_transfers(chunk);
            found.extend(self.runtime.block_on(self.retried(call)));
        }
        found
    }

    fn shutdown(&self) -> Result<(), String> {
        self.stop_run();
        if let Some(local) = &self.local {
            local.kill_all();
        }
        Ok(())
    }

    fn run_started(&self) {
        *self.acks.lock() = AckClock {
            on: true,
            ..AckClock::default()
        };
        if !self.peers.is_empty() {
            *self.watcher.lock() = Some(Watcher::start(&self.runtime, self.peers.clone()));
        }
        if let (Some(local), Some(plan)) = (&self.local, &self.plan) {
            let handle = self.runtime.handle().clone();
            *self.chaos.lock() = Chaos::start(local.clone(), handle, plan.clone()).ok();
        }
    }

    fn run_finished(&self) {
        self.acks.lock().on = false;
        self.stop_run();
    }

    fn cluster_stats(&self) -> Option<ClusterStats> {
        let failovers = self.watcher.lock().take().map(|w| w.stop());
        let log = std::mem::take(&mut *self.chaos_done.lock());
        let (converged, replicas_end) = if self.peers.is_empty() {
            (None, Vec::new())
        } else {
            let (equal, ends) = self
                .runtime
                .block_on(chaos::converge(&self.peers, CONVERGE_TIMEOUT));
            (Some(equal), ends)
        };
        Some(ClusterStats {
            replicas: self.addrs.len(),
            chaos: self
                .plan
                .as_ref()
                .map_or("none".into(), ChaosPlan::describe),
            leader_kills: log.kills,
            chaos_errors: log.errors,
            failovers,
            ack_gap_us_max: self.acks.lock().gap_max.as_micros() as u64,
            resubmissions: self.resubmissions.load(Ordering::Relaxed),
            events_recovered: self.events_recovered.load(Ordering::Relaxed),
            replicas_end,
            converged,
        })
    }
}

impl ClusterTarget {
    /// Ends the chaos (every killed replica restarted) once; keeps what it did.
    fn stop_run(&self) {
        let Some(chaos) = self.chaos.lock().take() else {
            return;
        };
        let log = chaos.stop();
        let mut done = self.chaos_done.lock();
        done.kills += log.kills;
        done.errors.extend(log.errors);
    }
}
