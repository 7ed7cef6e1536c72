//! A replica: the handle a payment service (or `tally serve --cluster`) holds. It
//! validates batches, groups them, and proposes each group to the leader (itself, or
//! through the peer service); it answers reads once linearizable.
//!
//! Invariant: a write is answered `Ok` only with the results of its committed entry,
//! which openraft commits once a majority has it synced; every other answer says the
//! outcome is unknown (`Unavailable`) or that the batch never entered the log.

use crate::config::ClusterConfig;
use crate::election::{Elections, PreVote};
use crate::group::{BatchRefusal, GROUP_EVENTS_MAX, Group, GroupResults};
use crate::log_store::LogStore;
use crate::network::{
    PEER_MESSAGE_BYTES_MAX, PeerNetwork, PeerRpc, PeerSecret, from_frame, peer_client, to_frame,
};
use crate::snapshot_floor::SnapshotFloor;
use crate::state_machine::{Applied, StateStore};
use crate::types::Raft;
use openraft::{BasicNode, ChangeMembers, Membership, ServerState, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_engine::{ChangeEventReader, EventResult, SubmitError, TransferResult, validate_batch};
use tally_proto::peer::Frame;
use tally_state::StateMachine;
use tally_types::{Batch, ChangeEvent, Transfer};
use tokio::sync::{mpsc, oneshot};

/// How long a call waits for a leader before it answers `Unavailable`.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// How long a proposed group may wait to be committed before its writes answer
/// `Unavailable` (outcome unknown): a leader cut off from its majority never commits.
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// How long a shutdown waits for the change-event journal's writer to finish.
const JOURNAL_CLOSE_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a membership change that failed waits for the membership to settle
/// before it answers ([`Core::settled_outcome`]): a concurrent change commits in
/// a round or two.
const MEMBERSHIP_SETTLE_MAX: Duration = Duration::from_secs(5);

const CUT_OFF: &str = "this replica leads but has not heard from a majority lately";

/// Why a replica did not answer a call with results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// The batch was refused before it was proposed; it changed nothing.
    Invalid(SubmitError),
    /// The leader's time leaves no room for the batch's stamps; it changed nothing.
    TimeOutOfRange {
        /// The leader's clock reading.
        now: u64,
    },
    /// No leader answered in time, or leadership changed while the call was in
    /// flight: a write may or may not have been applied. Retry: ids are idempotency
    /// keys, so a retried event answers `exists` if it was applied.
    Unavailable(String),
    /// The proposal queue stayed full for `ClusterConfig::submit_wait_max`: the batch
    /// was not proposed and changed nothing; retry later.
    Busy,
    /// The replica is shut down.
    Stopped,
    /// Change events could not be read: they are off, writing them failed, or the
    /// events asked for are not kept here.
    ChangeEvents(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Invalid(error) => write!(f, "{error}"),
            ClusterError::TimeOutOfRange { now } => {
                write!(
                    f,
                    "the time {now} leaves no room for the batch's timestamps"
                )
            }
            ClusterError::Unavailable(why) => write!(f, "the cluster is unavailable: {why}"),
            ClusterError::Busy => f.write_str(
                "the replica is busy: its proposal queue stayed full; the batch changed nothing",
            ),
            ClusterError::Stopped => f.write_str("the replica is shut down"),
            ClusterError::ChangeEvents(why) => write!(f, "change events: {why}"),
        }
    }
}

impl std::error::Error for ClusterError {}

impl ClusterError {
    /// Why, without the words its `Display` puts before it: for an error carried on
    /// inside another `Unavailable`.
    fn reason(&self) -> String {
        match self {
            ClusterError::Unavailable(why) => why.clone(),
            other => other.to_string(),
        }
    }
}

/// Where a replica stands, as `tally cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// This replica.
    pub replica_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader this replica knows of.
    pub leader: Option<u64>,
    /// The last index in its log.
    pub last_log_index: u64,
    /// The last index applied to its state.
    pub applied_index: u64,
    /// The state digest at `applied_index`.
    pub digest: u64,
    /// Events applied since the log began.
    pub events_applied: u64,
    /// Voting replicas and their peer addresses.
    pub voters: BTreeMap<u64, String>,
    /// Non-voting replicas catching up.
    pub learners: BTreeMap<u64, String>,
}

/// What the peer service's `Admin` call carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminRequest {
    Status,
    Add { replica_id: u64, addr: String },
    Remove { replica_id: u64 },
}

/// What a forwarded write answers, per batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WireOutcome {
    Applied,
    TimeOutOfRange(u64),
    Unavailable(String),
    Stopped,
}

struct Proposal {
    batch: Batch,
    /// Whether the results carry balances.
    balances: bool,
    reply: oneshot::Sender<Result<Vec<TransferResult>, ClusterError>>,
}

/// What the proposer, the peer service and the handle share.
pub(crate) struct Core {
    pub(crate) id: u64,
    pub(crate) raft: Raft,
    /// A leader that has not heard from a majority for this long refuses writes: it is
    /// probably cut off, and a new leader is being elected on the other side.
    quorum_silence_max: Duration,
    pub(crate) applied: Arc<RwLock<Applied>>,
    peers: Mutex<BTreeMap<String, PeerRpc>>,
    /// [`ClusterConfig::peer_secret`]: carried by this replica's calls, asked of others'.
    pub(crate) peer_secret: Option<PeerSecret>,
    /// When this replica stands for leader (openraft's own timer is off).
    pub(crate) elections: Arc<Elections>,
    /// [`ClusterConfig::learner_catch_up_max`].
    learner_catch_up_max: Duration,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("id", &self.id).finish()
    }
}

enum Leader {
    Me,
    /// This replica leads but has not heard from a majority lately.
    CutOff,
    Peer(String),
    Unknown,
}

impl Core {
    /// True once the Raft core has stopped (shut down, or failed): its metrics are
    /// then the last it published, no longer the truth.
    fn core_stopped(&self) -> bool {
        self.raft.metrics().has_changed().is_err()
    }

    fn leader(&self) -> Leader {
        if self.core_stopped() {
            return Leader::Unknown;
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        match metrics.current_leader {
            Some(id) if id == self.id && metrics.state == ServerState::Leader => {
                let silence = metrics.millis_since_quorum_ack.map(Duration::from_millis);
                match silence {
                    Some(silence) if silence > self.quorum_silence_max => Leader::CutOff,
                    _ => Leader::Me,
                }
            }
            Some(id) if id != self.id => metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map_or(Leader::Unknown, |node| Leader::Peer(node.addr.clone())),
            _ => Leader::Unknown,
        }
    }

    /// True when this replica knows it was removed: its membership names voters, not
    /// it (a removed leader steps down knowing that). A replica whose membership is
    /// still empty (joining, or just started) waits for one like any other.
    fn knows_it_was_removed(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership.voter_ids().next().is_some() && membership.get_node(&self.id).is_none()
    }

    /// Waits until some replica is known to lead, up to [`LEADER_WAIT`]. A replica
    /// that knows it was removed answers at once, even while it still hears of a
    /// leader (the new one's first messages can reach it before that one's membership
    /// drops it): it is no longer a member, and a client should ask another replica.
    async fn find_leader(&self) -> Result<Leader, ClusterError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            if self.core_stopped() {
                return Err(ClusterError::Stopped);
            }
            if self.knows_it_was_removed() {
                return Err(ClusterError::Unavailable(format!(
                    "replica {} is not a member of the cluster (it was removed): ask \
                     another replica",
                    self.id
                )));
            }
            match self.leader() {
                Leader::Unknown if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Leader::Unknown => {
                    return Err(ClusterError::Unavailable("no leader elected".into()));
                }
                known => return Ok(known),
            }
        }
    }

    fn peer(&self, addr: &str) -> Result<PeerRpc, ClusterError> {
        let mut peers = self.peers.lock();
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let client =
            peer_client(addr, self.peer_secret.as_ref()).map_err(ClusterError::Unavailable)?;
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Proposes the batches of `group` passed on by a follower: only while this
    /// replica leads.
    pub(crate) async fn propose_forwarded(&self, group: Group) -> Vec<WireOutcomeWith> {
        let (batches, balances) = group.into_parts();
        let refuse =
            |why: &str| vec![(WireOutcome::Unavailable(why.into()), Vec::new()); batches.len()];
        match self.leader() {
            Leader::Me => self.propose_here(batches, balances).await,
            Leader::CutOff => refuse(CUT_OFF),
            Leader::Peer(_) | Leader::Unknown => refuse("this replica does not lead"),
        }
    }

    /// Proposes `batches` as one group, this replica being the leader (`balances[i]`:
    /// batch `i`'s results carry balances).
    async fn propose_here(&self, batches: Vec<Batch>, balances: Vec<bool>) -> Vec<WireOutcomeWith> {
        let count = batches.len();
        let group = Group::with_balances(tally_engine::clock::wall_clock_ns(), batches, balances);
        let written = tokio::time::timeout(COMMIT_WAIT, self.raft.client_write(group)).await;
        let Ok(written) = written else {
            let why = "the write was not committed in time; it may still be";
            return vec![(WireOutcome::Unavailable(why.into()), Vec::new()); count];
        };
        match written {
            Ok(response) => {
                let answers = &response.data;
                (0..answers.batches.len())
                    .map(|index| match &answers.batches[index] {
                        Ok(_) => (
                            WireOutcome::Applied,
                            answers.with_balances(index).unwrap_or_default(),
                        ),
                        Err(BatchRefusal::TimeOutOfRange { now }) => {
                            (WireOutcome::TimeOutOfRange(*now), Vec::new())
                        }
                    })
                    .collect()
            }
            Err(error) => {
                let outcome = match error {
                    openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped) => {
                        WireOutcome::Stopped
                    }
                    openraft::error::RaftError::APIError(
                        openraft::error::ClientWriteError::ForwardToLeader(_),
                    ) => WireOutcome::Unavailable(
                        "this replica stopped leading before the write was proposed".into(),
                    ),
                    other => WireOutcome::Unavailable(other.to_string()),
                };
                vec![(outcome, Vec::new()); count]
            }
        }
    }

    /// Proposes `batches` wherever the leader is (`balances[i]`: batch `i`'s results
    /// carry balances).
    async fn propose(&self, batches: Vec<Batch>, balances: Vec<bool>) -> Vec<WireOutcomeWith> {
        let count = batches.len();
        let fail = |outcome: WireOutcome| vec![(outcome, Vec::new()); count];
        let leader = match self.find_leader().await {
            Ok(leader) => leader,
            Err(ClusterError::Stopped) => return fail(WireOutcome::Stopped),
            Err(error) => return fail(WireOutcome::Unavailable(error.reason())),
        };
        match leader {
            Leader::Me => self.propose_here(batches, balances).await,
            Leader::CutOff => fail(WireOutcome::Unavailable(CUT_OFF.into())),
            Leader::Unknown => fail(WireOutcome::Unavailable("no leader elected".into())),
            Leader::Peer(addr) => match self.forward(&addr, batches, balances).await {
                Ok(outcomes) if outcomes.len() == count => outcomes,
                Ok(_) => fail(WireOutcome::Unavailable(
                    "the leader answered the wrong count".into(),
                )),
                Err(error) => fail(WireOutcome::Unavailable(error.reason())),
            },
        }
    }

    async fn forward(
        &self,
        addr: &str,
        batches: Vec<Batch>,
        balances: Vec<bool>,
    ) -> Result<Vec<WireOutcomeWith>, ClusterError> {
        let mut client = self.peer(addr)?;
        let group = Group::with_balances(0, batches, balances);
        let frame = to_frame(&group).map_err(ClusterError::Unavailable)?;
        let mut request = tonic::Request::new(frame);
        request.set_timeout(LEADER_WAIT * 2);
        let answer = client.forward(request).await.map_err(|status| {
            ClusterError::Unavailable(format!("the leader at {addr}: {}", status.message()))
        })?;
        let (outcomes, results): (Vec<WireOutcome>, GroupResults) =
            from_frame(answer.get_ref()).map_err(ClusterError::Unavailable)?;
        Ok(outcomes
            .into_iter()
            .enumerate()
            .map(|(index, outcome)| {
                let events = results.with_balances(index).unwrap_or_default();
                (outcome, events)
            })
            .collect())
    }

    /// Waits until a read here would see every write acknowledged before the call.
    async fn read_barrier(&self) -> Result<(), ClusterError> {
        let leader = self.find_leader().await?;
        let index = match leader {
            Leader::Me => self
                .raft
                .ensure_linearizable()
                .await
                .map_err(|e| ClusterError::Unavailable(e.to_string()))?
                .map_or(0, |id| id.index),
            Leader::Peer(addr) => {
                let mut client = self.peer(&addr)?;
                let frame = to_frame(&()).map_err(ClusterError::Unavailable)?;
                let mut request = tonic::Request::new(frame);
                request.set_timeout(LEADER_WAIT);
                let answer = client.read_index(request).await.map_err(|status| {
                    ClusterError::Unavailable(format!("the leader at {addr}: {}", status.message()))
                })?;
                let index: Result<u64, String> =
                    from_frame(answer.get_ref()).map_err(ClusterError::Unavailable)?;
                index.map_err(ClusterError::Unavailable)?
            }
            Leader::CutOff => return Err(ClusterError::Unavailable(CUT_OFF.into())),
            Leader::Unknown => return Err(ClusterError::Unavailable("no leader elected".into())),
        };
        if self.applied.read().applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| {
                ClusterError::Unavailable(format!(
                    "this replica did not apply the leader's read index {index} within {} s",
                    LEADER_WAIT.as_secs()
                ))
            })
    }

    /// This replica's status.
    pub(crate) fn status(&self) -> ReplicaStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let applied = self.applied.read();
        let membership = metrics.membership_config.membership();
        let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
        let mut voters = BTreeMap::new();
        let mut learners = BTreeMap::new();
        for (id, node) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.insert(*id, node.addr.clone());
            } else {
                learners.insert(*id, node.addr.clone());
            }
        }
        ReplicaStatus {
            replica_id: self.id,
            role: match metrics.state {
                _ if self.core_stopped() => "shutdown",
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_string(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: applied.applied_index(),
            digest: applied.digest,
            events_applied: applied.events_applied,
            voters,
            learners,
        }
    }

    /// Runs a membership change or a status query, on the leader.
    pub(crate) async fn admin(&self, request: AdminRequest) -> Result<ReplicaStatus, String> {
        if matches!(request, AdminRequest::Status) {
            return Ok(self.status());
        }
        match self.find_leader().await.map_err(|e| e.to_string())? {
            Leader::Me => {}
            Leader::CutOff => return Err(CUT_OFF.into()),
            Leader::Peer(addr) => {
                let mut client = self.peer(&addr).map_err(|e| e.to_string())?;
                let answer = client
                    .admin(to_frame(&request)?)
                    .await
                    .map_err(|status| format!("the leader at {addr}: {}", status.message()))?;
                let answer: Result<ReplicaStatus, String> = from_frame(answer.get_ref())?;
                return answer;
            }
            Leader::Unknown => return Err("no leader elected".into()),
        }
        let (voters, addresses): (BTreeSet<u64>, BTreeMap<u64, String>) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let addresses = membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()));
            (membership.voter_ids().collect(), addresses.collect())
        };
        match request {
            AdminRequest::Status => {}
            AdminRequest::Add { replica_id, addr } => {
                if voters.contains(&replica_id) {
                    return Err(format!("replica {replica_id} is already a voter"));
                }
                // Peer messages name no replica: whoever answers at an address answers
                // for every id there, so one replica would count as two votes.
                if let Some((other, _)) = addresses
                    .iter()
                    .find(|(id, at)| **id != replica_id && **at == addr)
                {
                    return Err(format!(
                        "replica {other} is already at {addr}: one replica per peer address"
                    ));
                }
                let node = BasicNode::new(addr.clone());
                if addresses.get(&replica_id).is_some_and(|at| *at != addr) {
                    // A learner left by an add that failed, at an address now corrected:
                    // adding keeps a node's address, so set it (safe for a learner, which
                    // votes for no one).
                    let nodes = BTreeMap::from([(replica_id, node.clone())]);
                    self.raft
                        .change_membership(ChangeMembers::SetNodes(nodes), false)
                        .await
                        .map_err(|e| format!("moving learner {replica_id} to {addr}: {e}"))?;
                }
                let added = self
                    .raft
                    .add_learner(replica_id, node, false)
                    .await
                    .map_err(|e| format!("adding replica {replica_id} as a learner: {e}"))?;
                self.learner_caught_up(replica_id, added.log_id.index)
                    .await?;
                // This replica alone, not the voters read above plus it: a change made
                // meanwhile (another add) would be undone by a whole new set.
                let add = ChangeMembers::AddVoterIds(BTreeSet::from([replica_id]));
                if let Err(error) = self.raft.change_membership(add, false).await {
                    let refused = format!("making replica {replica_id} a voter: {error}");
                    return self
                        .settled_outcome(refused, |membership| {
                            membership.voter_ids().any(|id| id == replica_id)
                        })
                        .await;
                }
            }
            AdminRequest::Remove { replica_id } => {
                if !voters.contains(&replica_id) {
                    return self.remove_learner(replica_id).await;
                }
                if voters.len() == 1 {
                    return Err("the last replica cannot be removed".into());
                }
                let remove = ChangeMembers::RemoveVoters(BTreeSet::from([replica_id]));
                if let Err(error) = self.raft.change_membership(remove, false).await {
                    let refused = format!("removing replica {replica_id}: {error}");
                    return self
                        .settled_outcome(refused, |membership| {
                            !membership.voter_ids().any(|id| id == replica_id)
                        })
                        .await;
                }
            }
        }
        Ok(self.status())
    }
}

impl Core {
    /// Answers a membership change that failed. Raft changes voters in two steps (a
    /// joint configuration, then the new one), and another change running at once can
    /// carry this one's first step into its own configuration while refusing this one's
    /// second, so what was asked may be done all the same. Once the membership has
    /// settled (one configuration, applied), the change answers success if `done` holds
    /// for it, else `refused`: nothing of it stands, and it can be asked again.
    async fn settled_outcome(
        &self,
        refused: String,
        done: impl Fn(&Membership<u64, BasicNode>) -> bool,
    ) -> Result<ReplicaStatus, String> {
        let settled = self
            .raft
            .wait(Some(MEMBERSHIP_SETTLE_MAX))
            .metrics(
                |metrics| {
                    let stored = &metrics.membership_config;
                    stored.membership().get_joint_config().len() == 1
                        && stored.log_id() <= &metrics.last_applied
                },
                "membership settled",
            )
            .await;
        match settled.is_ok_and(|metrics| done(metrics.membership_config.membership())) {
            true => Ok(self.status()),
            false => Err(refused),
        }
    }

    /// Removes learner `replica_id` (one that never caught up), on the leader.
    async fn remove_learner(&self, replica_id: u64) -> Result<ReplicaStatus, String> {
        let is_learner = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .any(|id| id == replica_id);
        if !is_learner {
            return Err(format!("replica {replica_id} is not a member"));
        }
        let removal = openraft::ChangeMembers::RemoveNodes([replica_id].into());
        if let Err(error) = self.raft.change_membership(removal, false).await {
            let refused = format!("removing learner {replica_id}: {error}");
            return self
                .settled_outcome(refused, |membership| {
                    !membership.nodes().any(|(id, _)| *id == replica_id)
                })
                .await;
        }
        Ok(self.status())
    }

    /// Waits, on the leader, until learner `replica_id` holds the log up to `index`
    /// (the entry that added it), up to [`ClusterConfig::learner_catch_up_max`].
    async fn learner_caught_up(&self, replica_id: u64, index: u64) -> Result<(), String> {
        let caught_up = self
            .raft
            .wait(Some(self.learner_catch_up_max))
            .metrics(
                |metrics| {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(&replica_id).cloned())
                        .flatten()
                        .is_some_and(|matched| matched.index >= index)
                },
                "learner caught up",
            )
            .await;
        caught_up.map(|_| ()).map_err(|_| {
            format!(
                "replica {replica_id} did not catch up within {} s (is it running, at the \
                 address given?): it stays a learner, without a vote; add it again once \
                 it is reachable, or remove it",
                self.learner_catch_up_max.as_secs()
            )
        })
    }
}

/// A forwarded batch's outcome and, when applied, its results (with balances where
/// the batch asked for them).
pub(crate) type WireOutcomeWith = (WireOutcome, Vec<TransferResult>);

/// A result's code and timestamp.
fn without_balances(result: &TransferResult) -> EventResult {
    EventResult {
        code: result.code,
        timestamp: result.timestamp,
    }
}

fn to_answer((outcome, results): WireOutcomeWith) -> Result<Vec<TransferResult>, ClusterError> {
    match outcome {
        WireOutcome::Applied => Ok(results),
        WireOutcome::TimeOutOfRange(now) => Err(ClusterError::TimeOutOfRange { now }),
        WireOutcome::Unavailable(why) => Err(ClusterError::Unavailable(why)),
        WireOutcome::Stopped => Err(ClusterError::Stopped),
    }
}

/// One replica of a Tally cluster, embedded in this process.
#[derive(Debug)]
pub struct Replica {
    core: Arc<Core>,
    proposals: mpsc::Sender<Proposal>,
    /// [`ClusterConfig::submit_wait_max`].
    submit_wait_max: std::time::Duration,
    server: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    peer_addr: std::net::SocketAddr,
    /// The change-event journal's readers, when change events are on.
    change_events: Option<ChangeEventReader>,
    /// The replicated log, flushed at shutdown.
    log: LogStore,
    _lock: tally_log::DirLock,
}

impl Replica {
    /// Opens the replica described by `config`: its data directory (created if
    /// missing), its peer service on its address, and (unless `config.join`) the
    /// cluster's first membership if its log is empty. Call inside a tokio runtime.
    pub async fn open(config: ClusterConfig) -> Result<Replica, String> {
        config.validate()?;
        refuse_single_node_dir(&config.data_dir)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
        let lock = tally_log::DirLock::acquire(&config.data_dir).map_err(|e| e.to_string())?;
        crate::state_machine::remove_unfinished_snapshots(&config.data_dir)?;
        let floor = SnapshotFloor::new();
        let log = LogStore::open(&config.data_dir, floor.clone())?;
        let log_size = log.clone();
        let log_at_shutdown = log.clone();
        let remembers_vote = log.remembers_vote();
        let events = config
            .change_events
            .then_some(config.events_retention_bytes);
        let state = StateStore::open(&config.data_dir, events, floor)?;
        check_snapshot_reaches_purge(&log, &state)?;
        let applied = state.applied();
        let change_events = state.change_event_reader();
        let raft_config = openraft::Config {
            cluster_name: "tally".into(),
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            max_payload_entries: 2,
            // Snapshots are triggered by the log's size (see `snapshot_when_large`).
            snapshot_policy: SnapshotPolicy::Never,
            // A follower further behind than this gets the snapshot instead.
            max_in_snapshot_log_to_keep: 64,
            // Each chunk's own deadline is set where it is sent (`PeerConnection`).
            install_snapshot_timeout: crate::network::SNAPSHOT_INSTALL_WAIT_MAX.as_millis() as u64,
            snapshot_max_chunk_size: crate::network::SNAPSHOT_CHUNK_BYTES as u64,
            // Elections are started by `Elections::run` (see `election`).
            enable_elect: false,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| format!("the Raft configuration: {e}"))?;
        let raft = Raft::new(
            config.replica_id,
            Arc::new(raft_config),
            PeerNetwork {
                secret: config.peer_secret.clone(),
            },
            log,
            state,
        )
        .await
        .map_err(|e| format!("starting Raft: {e}"))?;
        let core = Arc::new(Core {
            id: config.replica_id,
            raft: raft.clone(),
            quorum_silence_max: config.election_timeout.1,
            applied,
            peers: Mutex::new(BTreeMap::new()),
            peer_secret: config.peer_secret.clone(),
            elections: Arc::new(Elections::new(
                config.replica_id,
                raft.clone(),
                config.election_timeout,
                // The clock, so that replicas started together draw apart.
                tally_engine::clock::wall_clock_ns(),
                remembers_vote,
            )),
            learner_catch_up_max: config.learner_catch_up_max,
        });
        let own = match &config.peer_listen {
            Some(listen) => listen.clone(),
            None => config.own_address().unwrap_or_default().to_string(),
        };
        let listener = tokio::net::TcpListener::bind(&own)
            .await
            .map_err(|e| format!("the peer address {own}: {e}"))?;
        let peer_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server = crate::peer_service::serve(Arc::clone(&core), listener);
        if !config.join && !raft.is_initialized().await.map_err(|e| e.to_string())? {
            let members: BTreeMap<u64, BasicNode> = config
                .members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {}
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(error) => return Err(format!("forming the cluster: {error}")),
            }
        }
        let (proposals, queue) = mpsc::channel(config.proposal_queue);
        tokio::spawn(propose_loop(
            Arc::clone(&core),
            queue,
            config.proposals_in_flight,
        ));
        tokio::spawn(Elections::run(
            Arc::downgrade(&core.elections),
            pre_vote_asker(Arc::downgrade(&core), config.election_timeout.0),
        ));
        let stagger = config.snapshot_log_bytes / 4 * (config.replica_id % 4);
        tokio::spawn(snapshot_when_large(
            Arc::downgrade(&core),
            log_size,
            config.snapshot_log_bytes.saturating_add(stagger),
        ));
        if config.expire_when_idle {
            tokio::spawn(expire_when_due(Arc::downgrade(&core)));
        }
        Ok(Replica {
            core,
            proposals,
            submit_wait_max: config.submit_wait_max,
            server: Mutex::new(Some(server)),
            peer_addr,
            change_events,
            log: log_at_shutdown,
            _lock: lock,
        })
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.core.id
    }

    /// The address the peer service listens on.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.peer_addr
    }

    /// Submits a batch; answers once its group is committed on a majority and applied
    /// here or on the leader.
    pub async fn submit(&self, batch: Batch) -> Result<Vec<EventResult>, ClusterError> {
        let results = self.propose_batch(batch, false).await?;
        Ok(results.iter().map(without_balances).collect())
    }

    /// Submits transfers as [`Replica::submit`] does, each applied one answered with
    /// both accounts' balances right after it, as the leader applied it (the same on
    /// every replica).
    pub async fn submit_with_balances(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, ClusterError> {
        self.propose_batch(Batch::CreateTransfers(transfers), true)
            .await
    }

    async fn propose_batch(
        &self,
        batch: Batch,
        balances: bool,
    ) -> Result<Vec<TransferResult>, ClusterError> {
        validate_batch(&batch).map_err(ClusterError::Invalid)?;
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal {
            batch,
            balances,
            reply,
        };
        // A bounded wait for room, as the engine's backpressure: past it, busy.
        match tokio::time::timeout(self.submit_wait_max, self.proposals.send(proposal)).await {
            Err(_) => return Err(ClusterError::Busy),
            Ok(sent) => sent.map_err(|_| ClusterError::Stopped)?,
        }
        answer.await.map_err(|_| ClusterError::Stopped)?
    }

    /// Runs `read` on the state once every write acknowledged before the call is
    /// applied here (a read index from the leader).
    pub async fn read<T>(&self, read: impl FnOnce(&StateMachine) -> T) -> Result<T, ClusterError> {
        self.core.read_barrier().await?;
        Ok(read(&self.core.applied.read().state))
    }

    /// A read taken in bounded steps (a query, an account's history), once every write
    /// acknowledged before the call is applied here: `start` begins it over the state
    /// as it stands, and `step` takes one step, giving the answer once the read is
    /// over. The state's read lock is taken per step, so applying goes on between them.
    pub async fn read_in_steps<R, T>(
        &self,
        start: impl FnOnce(&StateMachine) -> R,
        mut step: impl FnMut(&mut R, &StateMachine) -> Option<T>,
    ) -> Result<T, ClusterError> {
        self.core.read_barrier().await?;
        let mut read = start(&self.core.applied.read().state);
        loop {
            if let Some(answer) = step(&mut read, &self.core.applied.read().state) {
                return Ok(answer);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Runs `read` on this replica's state as it is now, without asking the leader
    /// (may lag behind acknowledged writes).
    pub fn read_local<T>(&self, read: impl FnOnce(&StateMachine) -> T) -> T {
        read(&self.core.applied.read().state)
    }

    /// `get_change_events`: up to `limit` (at most 8,190; 0 asks for the most) change
    /// events with timestamp at or after `timestamp_min`, in commit order, from this
    /// replica's own journal. Every change acknowledged before the call is there (a
    /// read index from the leader, then a wait for this replica's journal to hold it),
    /// as on a single node.
    /// Events before a snapshot this replica installed from another are not kept here:
    /// asking for them is an error that names the next event it holds.
    pub async fn get_change_events(
        &self,
        timestamp_min: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>, ClusterError> {
        let (reader, committed) = self.change_events_at_read_index().await?;
        // Waiting for the journal and reading files: off the async threads.
        tokio::task::spawn_blocking(move || reader.get(timestamp_min, limit, committed))
            .await
            .map_err(|_| ClusterError::Stopped)?
            .map_err(|error| ClusterError::ChangeEvents(error.to_string()))
    }

    /// The reading side of this replica's change-event journal and the last timestamp
    /// applied at the leader's read index: a read that waits for the journal to hold
    /// it (`ChangeEventReader::get`) sees every change acknowledged before the call.
    pub async fn change_events_at_read_index(
        &self,
    ) -> Result<(ChangeEventReader, u64), ClusterError> {
        let reader = self.change_event_reader()?;
        let committed = self.read(StateMachine::last_timestamp).await?;
        Ok((reader, committed))
    }

    /// The reading side of this replica's change-event journal: pages at a given
    /// commit point, and followers (`ChangeEventReader::subscribe`) that read every
    /// event after a timestamp, then each new one as this replica applies it.
    pub fn change_event_reader(&self) -> Result<ChangeEventReader, ClusterError> {
        self.change_events.clone().ok_or_else(|| {
            ClusterError::ChangeEvents("change events are off for this replica".into())
        })
    }

    /// True while this replica leads and hears from a majority: its writes go to no
    /// other replica.
    pub fn leads(&self) -> bool {
        matches!(self.core.leader(), Leader::Me)
    }

    /// Where this replica stands.
    pub fn status(&self) -> ReplicaStatus {
        self.core.status()
    }

    /// Resolves once the replica's Raft core has stopped: after [`Replica::shutdown`],
    /// or when it failed (then every call answers `Unavailable` or `Stopped`, and a
    /// process serving the replica should exit, so that it is restarted).
    pub async fn stopped(&self) {
        let mut metrics = self.core.raft.metrics();
        while metrics.changed().await.is_ok() {}
    }

    /// Adds replica `replica_id` at peer address `addr`: it joins as a learner, catches
    /// up (from a snapshot if the log was purged), then votes.
    pub async fn add_replica(
        &self,
        replica_id: u64,
        addr: String,
    ) -> Result<ReplicaStatus, String> {
        self.core
            .admin(AdminRequest::Add { replica_id, addr })
            .await
    }

    /// Removes replica `replica_id` from the voters.
    pub async fn remove_replica(&self, replica_id: u64) -> Result<ReplicaStatus, String> {
        self.core.admin(AdminRequest::Remove { replica_id }).await
    }

    /// Stops the peer service and Raft; pending calls answer `Stopped`. Returns once
    /// the change-event journal has written what was applied (bounded: its writer ends
    /// when Raft's state-machine task lets the state go).
    pub async fn shutdown(&self) {
        let server = self.server.lock().take();
        if let Some((stop, task)) = server {
            let _ = stop.send(());
            let _ = task.await;
        }
        let _ = self.core.raft.shutdown().await;
        // Writes waiting for a snapshot being installed are dropped: none was answered.
        self.log.abandon_held();
        // The last commit recorded reaches the disk before the directory is let go, so
        // that a restart, or `tally verify`, finds everything this replica applied.
        let _ = self.log.flush().await;
        if let Some(reader) = &self.change_events {
            let _ = tokio::time::timeout(JOURNAL_CLOSE_WAIT_MAX, reader.closed()).await;
        }
    }
}

/// Refuses a replica whose log was purged past its snapshot: the entries between are
/// gone, so its state cannot be rebuilt. (A crash while a replica of an earlier version
/// installed a snapshot from the leader could leave this; the log now waits for the
/// snapshot.)
pub fn check_snapshot_reaches_purge(log: &LogStore, state: &StateStore) -> Result<(), String> {
    let Some(purged) = log.last_purged_index() else {
        return Ok(());
    };
    let held = state.last_applied_index();
    if held.is_some_and(|held| held >= purged) {
        return Ok(());
    }
    let held = held.map_or("none".to_string(), |held| format!("up to entry {held}"));
    Err(format!(
        "the replica's log was purged up to entry {purged}, but its snapshot holds {held}: \
         the entries between are gone and its state cannot be rebuilt. Empty its data \
         directory and start it again: it catches up from the leader, as a replica whose \
         disk was lost does"
    ))
}

/// Refuses a directory that holds a single-node ledger (its write-ahead log segments,
/// `wal-*`): a replica opened there would start empty beside them.
fn refuse_single_node_dir(dir: &std::path::Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // Missing: created next. Unreadable: the lock says why.
    };
    let single_node = entries
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().starts_with("wal-"));
    match single_node {
        Some(entry) => Err(format!(
            "{} holds a single-node ledger ({}), not a cluster replica: a replica needs a \
             directory of its own",
            dir.display(),
            entry.file_name().to_string_lossy()
        )),
        None => Ok(()),
    }
}

/// Asks for a snapshot whenever the log holds more than `bytes_max` of entries; stops
/// with the replica.
async fn snapshot_when_large(core: std::sync::Weak<Core>, log: LogStore, bytes_max: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade() else {
            return;
        };
        if log.live_bytes() > bytes_max {
            if core.raft.trigger().snapshot().await.is_err() {
                return;
            }
            // Give the snapshot time to be built and the log purged before asking again.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

/// How often the leader looks for an expiry instant that passed with no traffic.
const EXPIRY_POLL: Duration = Duration::from_millis(10);

/// On the leader: once the earliest expiry instant of a waiting pending transfer has
/// passed on the wall clock, proposes a group of one empty batch, stamped then, so the
/// expiry runs at its instant on every replica rather than with the next write (a
/// single node logs an empty batch the same way). One such group at a time.
async fn expire_when_due(core: std::sync::Weak<Core>) {
    let mut tick = tokio::time::interval(EXPIRY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade() else {
            return;
        };
        let next = core.applied.read().state.next_expiry_instant();
        let due = next.is_some_and(|at| at <= tally_engine::clock::wall_clock_ns());
        if due && matches!(core.leader(), Leader::Me) {
            let pulse = Batch::CreateTransfers(Vec::new());
            let _ = core.propose_here(vec![pulse], Vec::new()).await;
        }
    }
}

/// How a replica's pre-vote reaches a voter: the peer call `PreVote`, its deadline
/// `wait` (`Elections` stops waiting then); a voter that cannot be reached says no.
fn pre_vote_asker(
    core: std::sync::Weak<Core>,
    wait: Duration,
) -> impl Fn(u64, String, PreVote) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> {
    move |_voter, addr, question| {
        let client = core.upgrade().and_then(|core| core.peer(&addr).ok());
        Box::pin(async move {
            let (Some(mut client), Ok(frame)) = (client, to_frame(&question)) else {
                return false;
            };
            let mut request = tonic::Request::new(frame);
            request.set_timeout(wait);
            match client.pre_vote(request).await {
                Ok(answer) => from_frame::<bool>(answer.get_ref()).unwrap_or(false),
                Err(_) => false,
            }
        })
    }
}

/// Takes waiting batches into groups and proposes them, a bounded number at a time.
async fn propose_loop(core: Arc<Core>, mut queue: mpsc::Receiver<Proposal>, in_flight: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(mut slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let mut events = first.batch.len();
        let mut proposals = vec![first];
        while events < GROUP_EVENTS_MAX {
            match queue.try_recv() {
                Ok(next) if events + next.batch.len() <= GROUP_EVENTS_MAX => {
                    events += next.batch.len();
                    proposals.push(next);
                }
                Ok(next) => {
                    // Too large for this group: the group goes with its slot, and
                    // `next` starts the next one once a slot is free.
                    let core_for_group = Arc::clone(&core);
                    let rest = std::mem::take(&mut proposals);
                    tokio::spawn(async move {
                        answer_all(&core_for_group, rest).await;
                        drop(slot);
                    });
                    let Ok(free) = Arc::clone(&slots).acquire_owned().await else {
                        return;
                    };
                    slot = free;
                    events = next.batch.len();
                    proposals.push(next);
                }
                Err(_) => break,
            }
        }
        let core = Arc::clone(&core);
        tokio::spawn(async move {
            answer_all(&core, proposals).await;
            drop(slot);
        });
    }
}

async fn answer_all(core: &Core, proposals: Vec<Proposal>) {
    if proposals.is_empty() {
        return;
    }
    let mut batches = Vec::with_capacity(proposals.len());
    let mut balances = Vec::with_capacity(proposals.len());
    let mut replies = Vec::with_capacity(proposals.len());
    for proposal in proposals {
        batches.push(proposal.batch);
        balances.push(proposal.balances);
        replies.push(proposal.reply);
    }
    let outcomes = core.propose(batches, balances).await;
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(to_answer(outcome));
    }
}

/// Settings for the peer service's server, shared with tests.
pub(crate) fn peer_message_bytes_max() -> usize {
    PEER_MESSAGE_BYTES_MAX
}

/// Wraps a forwarded write's outcomes for the wire.
pub(crate) fn forward_answer(outcomes: Vec<WireOutcomeWith>) -> Result<Frame, String> {
    let (outcomes, results): (Vec<WireOutcome>, Vec<Vec<TransferResult>>) =
        outcomes.into_iter().unzip();
    let mut balances: Vec<Vec<_>> = results
        .iter()
        .map(|list| list.iter().map(|result| result.balances).collect())
        .collect();
    if balances.iter().flatten().all(Option::is_none) {
        balances.clear();
    }
    let batches = results
        .iter()
        .map(|list| Ok(list.iter().map(without_balances).collect()))
        .collect();
    let results = GroupResults { batches, balances };
    to_frame(&(outcomes, results))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log purged past the snapshot (as an earlier version could leave it after a
    /// crash) is refused at open with the remedy, not left to fail inside Raft.
    #[tokio::test]
    async fn a_log_purged_past_its_snapshot_is_refused() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().expect("dir");
        let floor = SnapshotFloor::new();
        floor.raise(9);
        let mut log = LogStore::open(dir.path(), floor).expect("opens");
        let leader = openraft::CommittedLeaderId::new(1, 1);
        log.purge(openraft::LogId::new(leader, 9))
            .await
            .expect("purge");
        log.flush().await.expect("flush");
        drop(log);
        let floor = SnapshotFloor::new();
        let log = LogStore::open(dir.path(), floor.clone()).expect("opens");
        let state = StateStore::open(dir.path(), None, floor).expect("opens");
        let error = check_snapshot_reaches_purge(&log, &state).expect_err("refused");
        assert!(
            error.contains("purged up to entry 9, but its snapshot holds none"),
            "{error}"
        );
        assert!(error.contains("Empty its data directory"), "{error}");
        let empty = tempfile::tempdir().expect("dir");
        let floor = SnapshotFloor::new();
        let log = LogStore::open(empty.path(), floor.clone()).expect("opens");
        let state = StateStore::open(empty.path(), None, floor).expect("opens");
        check_snapshot_reaches_purge(&log, &state).expect("an empty replica opens");
    }

    /// An unavailable leader's reason, carried on by a follower, is said once.
    #[test]
    fn a_reason_carried_on_is_not_prefixed_twice() {
        let from_leader = ClusterError::Unavailable("the leader at a:1: refused".into());
        let carried = ClusterError::Unavailable(from_leader.reason());
        assert_eq!(
            carried.to_string(),
            "the cluster is unavailable: the leader at a:1: refused"
        );
        assert_eq!(ClusterError::Busy.reason(), ClusterError::Busy.to_string());
    }
}
