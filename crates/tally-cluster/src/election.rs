//! When a replica stands for leader: the election timer and the pre-vote, in place of
//! openraft's own timer (switched off with `enable_elect: false`).
//!
//! openraft 0.9 checks its timer once every 1.5 heartbeats (300 ms by default), and once
//! a replica has stood and met a longer log it adds twice the longest election timeout
//! to every later wait until it stands again: a follower that lost the cluster's first
//! election waited 2.1 s, not 0.9–1.2 s, when its leader was lost. Here the timer is
//! checked every [`TICK`], each wait is drawn afresh, and a replica asks before it
//! stands (a pre-vote, as in Ongaro's thesis §9.6): it raises its term only when a
//! majority would vote for it, each of them having heard no leader for a lease and
//! holding no longer log. So the replica with the longer log stands first, a replica
//! cut off from the majority never raises the term, and when it comes back it does not
//! depose a working leader. Safety stays openraft's: the real vote decides.

use crate::types::Raft;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{LogId, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Weak;
use std::time::Duration;
// tokio's clock, so that the simulation's paused time drives the timer too.
use tokio::time::Instant;

/// How often a replica looks at its timer.
const TICK: Duration = Duration::from_millis(10);

/// How many of the longest election timeouts a replica that started without a saved
/// vote withholds its vote, unless it hears a leader first: an election's candidates
/// give up their term within one, so three leave room for messages still in flight.
const VOTE_AMNESIA_ELECTION_TIMEOUTS: u32 = 3;

/// Where a replica that started without a saved vote (a new one, or one whose disk was
/// lost) stands before it may vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Amnesia {
    /// No leader heard yet: it votes once `until` passes (the election it may have
    /// voted in is over, and a cluster started afresh can elect).
    Unheard { until: Instant },
    /// A leader heard, whose commit index was `to`: it votes once its own log reaches
    /// it. Had it voted before, a candidate lacking entries committed with this
    /// replica's lost copy could win on its vote, and those entries would be lost.
    CatchingUp { to: u64 },
}

/// A replica's question to a voter before it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVote {
    /// Who asks.
    pub candidate: u64,
    /// The last entry of its log.
    pub last_log_id: Option<LogId<u64>>,
}

/// What the replica's Raft reports that the timer needs.
#[derive(Debug, Clone)]
struct RaftView {
    state: ServerState,
    /// Whether its vote is for a leader that was elected (not one still standing).
    vote_committed: bool,
    last_log_id: Option<LogId<u64>>,
    /// The voter sets: one, or two during a joint membership change.
    voter_sets: Vec<BTreeSet<u64>>,
    /// Where each voter is reached, from the same membership.
    voter_addrs: BTreeMap<u64, String>,
}

impl RaftView {
    /// What `raft` reports now.
    fn of(raft: &Raft) -> RaftView {
        let last_log_id = raft.data_metrics().borrow().last_log;
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        RaftView {
            state: metrics.state,
            vote_committed: metrics.vote.is_committed(),
            last_log_id,
            voter_sets: membership.get_joint_config().clone(),
            voter_addrs: membership
                .voter_ids()
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect(),
        }
    }

    fn is_voter(&self, id: u64) -> bool {
        self.voter_sets.iter().any(|set| set.contains(&id))
    }
}

/// A replica's election timer, fed by what its peer service sees.
#[derive(Debug)]
struct ElectionTimer {
    id: u64,
    /// How long a voter that heard a leader refuses others: the longest election
    /// timeout, as openraft's own lease.
    lease: Duration,
    /// The election timeout range a wait is drawn from.
    range: (Duration, Duration),
    clock: Mutex<Clock>,
}

#[derive(Debug)]
struct Clock {
    /// When a leader was last heard (an AppendEntries it accepted).
    leader_heard: Option<Instant>,
    /// What keeps a replica that started without a saved vote from voting, if anything
    /// still does ([`ElectionTimer::withholds_votes`]).
    amnesia: Option<Amnesia>,
    /// When the current wait started: a leader heard, a vote granted, or a try.
    since: Instant,
    /// This wait's election timeout.
    wait: Duration,
    /// State of the generator that draws the waits (splitmix64).
    seed: u64,
}

impl Clock {
    fn draw(&mut self, range: (Duration, Duration)) -> Duration {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = range.1.saturating_sub(range.0).as_micros().max(1) as u64;
        range.0 + Duration::from_micros(z % span)
    }
}

impl ElectionTimer {
    /// The timer of replica `id`, its first wait starting `now`, its waits drawn from
    /// `seed`; `remembers_vote` is false when its log held no saved vote.
    fn new(
        id: u64,
        range: (Duration, Duration),
        now: Instant,
        seed: u64,
        remembers_vote: bool,
    ) -> ElectionTimer {
        assert!(
            range.0 > Duration::ZERO && range.0 <= range.1,
            "election timeout range"
        );
        let withheld_for = VOTE_AMNESIA_ELECTION_TIMEOUTS * range.1;
        let mut clock = Clock {
            leader_heard: None,
            amnesia: (!remembers_vote).then(|| Amnesia::Unheard {
                until: now + withheld_for,
            }),
            since: now,
            wait: range.0,
            seed: seed ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d),
        };
        clock.wait = clock.draw(range);
        ElectionTimer {
            id,
            lease: range.1,
            range,
            clock: Mutex::new(clock),
        }
    }

    /// A leader was heard: an AppendEntries was accepted, from a leader whose commit
    /// index was `leader_commit`.
    fn leader_heard(&self, now: Instant, leader_commit: Option<u64>) {
        let mut clock = self.clock.lock();
        clock.leader_heard = Some(now);
        clock.since = clock.since.max(now);
        if let Some(Amnesia::Unheard { .. }) = clock.amnesia {
            let to = leader_commit.unwrap_or(0);
            clock.amnesia = Some(Amnesia::CatchingUp { to });
        }
    }

    /// This replica granted its vote: the candidate gets a full wait to win.
    fn vote_granted(&self, now: Instant) {
        let mut clock = self.clock.lock();
        clock.since = clock.since.max(now);
    }

    /// Starts a fresh wait after a try (a pre-vote, won or lost), or while leading.
    fn restart(&self, now: Instant) {
        let mut clock = self.clock.lock();
        clock.since = now;
        clock.wait = clock.draw(self.range);
    }

    /// Whether this replica should try to stand `now`. A follower of an elected leader
    /// waits out the leader's lease first (the others refuse it until then); a
    /// candidate, or a replica that voted for one, waits one election timeout. The only
    /// voter of a cluster never waits, but does not stand again while it stands.
    fn due(&self, now: Instant, raft: &RaftView) -> bool {
        if raft.state == ServerState::Leader || !raft.is_voter(self.id) {
            return false;
        }
        if raft.voter_sets.iter().all(|set| set.len() == 1) {
            // Alone, it wins as soon as its vote is saved: never stand over itself.
            return raft.state != ServerState::Candidate;
        }
        let clock = self.clock.lock();
        let lease = if raft.vote_committed {
            self.lease
        } else {
            Duration::ZERO
        };
        now.saturating_duration_since(clock.since) >= lease + clock.wait
    }

    /// Whether this replica grants no vote `now`, its log ending at `last_index`. It
    /// started without a saved vote (a new replica, or one whose disk was lost), and:
    /// - it has heard no leader yet, within [`VOTE_AMNESIA_ELECTION_TIMEOUTS`] election
    ///   timeouts of its start: it may have voted in the election still under way, and
    ///   a second vote in that term could elect two leaders (once the window passes,
    ///   that election has ended);
    /// - or it heard one, and its log has not yet reached that leader's commit index:
    ///   entries committed with its lost copy may be missing from a candidate's log.
    fn withholds_votes(&self, now: Instant, last_index: Option<u64>) -> bool {
        let mut clock = self.clock.lock();
        let withholds = match clock.amnesia {
            None => false,
            Some(Amnesia::Unheard { until }) => now < until,
            Some(Amnesia::CatchingUp { to }) => last_index.unwrap_or(0) < to,
        };
        if !withholds {
            clock.amnesia = None;
        }
        withholds
    }

    /// This voter's answer to `request`: yes when it would grant the candidate its real
    /// vote as far as the log and the lease go. It refuses while it leads, while it heard
    /// a leader less than a lease ago (and still follows it), while it withholds votes,
    /// and when its own log is longer. Terms are left to the real vote.
    fn answer(&self, now: Instant, request: &PreVote, raft: &RaftView) -> bool {
        let last_index = raft.last_log_id.map(|id| id.index);
        if raft.state == ServerState::Leader || self.withholds_votes(now, last_index) {
            return false;
        }
        let heard = self.clock.lock().leader_heard;
        let lease_runs =
            heard.is_some_and(|heard| now.saturating_duration_since(heard) < self.lease);
        if raft.vote_committed && lease_runs {
            return false;
        }
        request.last_log_id >= raft.last_log_id
    }
}

/// Whether the `granted` replicas are a majority of every voter set.
fn is_quorum(voter_sets: &[BTreeSet<u64>], granted: &BTreeSet<u64>) -> bool {
    !voter_sets.is_empty()
        && voter_sets.iter().all(|set| {
            let yes = set.iter().filter(|id| granted.contains(id)).count();
            yes * 2 > set.len()
        })
}

/// A replica's elections: its timer, fed by the messages its Raft answers, and the
/// loop that stands for it. `tally serve --cluster` and the cluster's simulation both
/// run it; only how a pre-vote reaches a voter differs.
pub struct Elections {
    id: u64,
    raft: Raft,
    timer: ElectionTimer,
    /// How long a pre-vote waits for the voters' answers: the shortest election timeout.
    pre_vote_wait: Duration,
}

impl std::fmt::Debug for Elections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elections").field("id", &self.id).finish()
    }
}

impl Elections {
    /// The elections of replica `id`, whose Raft runs with `enable_elect: false`;
    /// `range` is its election timeout range, `seed` draws its waits; `remembers_vote`
    /// is false when the replica's log held no saved vote at its start.
    pub fn new(
        id: u64,
        raft: Raft,
        range: (Duration, Duration),
        seed: u64,
        remembers_vote: bool,
    ) -> Elections {
        Elections {
            id,
            raft,
            timer: ElectionTimer::new(id, range, Instant::now(), seed, remembers_vote),
            pre_vote_wait: range.0,
        }
    }

    /// Answers a candidate's vote request: Raft's answer, or a refusal that changes
    /// nothing while this replica withholds votes (it started without a saved vote and
    /// has heard no leader yet).
    pub async fn vote(
        &self,
        request: VoteRequest<u64>,
    ) -> Result<VoteResponse<u64>, RaftError<u64>> {
        let last_log_id = self.raft.data_metrics().borrow().last_log;
        if self
            .timer
            .withholds_votes(Instant::now(), last_log_id.map(|id| id.index))
        {
            let vote = self.raft.metrics().borrow().vote;
            return Ok(VoteResponse::new(vote, last_log_id, false));
        }
        let answer = self.raft.vote(request).await;
        if answer.as_ref().is_ok_and(|answer| answer.vote_granted) {
            self.timer.vote_granted(Instant::now());
        }
        answer
    }

    /// Call with what this replica's Raft answered an AppendEntries whose leader's
    /// commit index was `leader_commit`: one it accepted came from a leader whose term
    /// is at least this replica's.
    pub fn append_entries_answered(
        &self,
        leader_commit: Option<u64>,
        answer: &Result<AppendEntriesResponse<u64>, RaftError<u64>>,
    ) {
        let accepted = answer
            .as_ref()
            .is_ok_and(|answer| !matches!(answer, AppendEntriesResponse::HigherVote(_)));
        if accepted {
            self.timer.leader_heard(Instant::now(), leader_commit);
        }
    }

    /// This replica's answer to a pre-vote: yes when it would grant the candidate its
    /// real vote as far as the log and the lease go.
    pub fn answer(&self, question: &PreVote) -> bool {
        self.timer
            .answer(Instant::now(), question, &RaftView::of(&self.raft))
    }

    /// Stands for leader whenever the timer runs out and a pre-vote wins, until the
    /// Raft shuts down or the elections are dropped. `ask(voter, address, question)`
    /// carries a pre-vote to a voter and answers its yes; no answer is a no.
    pub async fn run<Ask, Answer>(elections: Weak<Elections>, ask: Ask)
    where
        Ask: Fn(u64, String, PreVote) -> Answer,
        Answer: Future<Output = bool> + Send + 'static,
    {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(elections) = elections.upgrade() else {
                return;
            };
            let view = RaftView::of(&elections.raft);
            let now = Instant::now();
            match view.state {
                ServerState::Shutdown => return,
                ServerState::Leader => {
                    elections.timer.restart(now);
                    continue;
                }
                _ => {}
            }
            if !elections.timer.due(now, &view) {
                continue;
            }
            elections.timer.restart(now);
            if !elections.pre_vote(&view, &ask).await {
                tracing::debug!("no leader heard, but no majority would vote for this replica");
                continue;
            }
            tracing::info!("no leader heard and a majority would vote: standing for leader");
            if elections.raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }

    /// Asks the other voters; true once a majority of every voter set (this replica
    /// included) says yes.
    async fn pre_vote<Ask, Answer>(&self, view: &RaftView, ask: &Ask) -> bool
    where
        Ask: Fn(u64, String, PreVote) -> Answer,
        Answer: Future<Output = bool> + Send + 'static,
    {
        let mut granted = BTreeSet::from([self.id]);
        if is_quorum(&view.voter_sets, &granted) {
            return true;
        }
        let question = PreVote {
            candidate: self.id,
            last_log_id: view.last_log_id,
        };
        let mut asks = tokio::task::JoinSet::new();
        for (&id, addr) in view.voter_addrs.iter().filter(|(id, _)| **id != self.id) {
            let answer = ask(id, addr.clone(), question.clone());
            asks.spawn(async move { answer.await.then_some(id) });
        }
        let deadline = Instant::now() + self.pre_vote_wait;
        while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, asks.join_next()).await {
            if let Ok(Some(id)) = answer {
                granted.insert(id);
                if is_quorum(&view.voter_sets, &granted) {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    const RANGE: (Duration, Duration) = (Duration::from_millis(300), Duration::from_millis(600));

    fn view(state: ServerState, committed: bool, last: Option<(u64, u64)>) -> RaftView {
        RaftView {
            state,
            vote_committed: committed,
            last_log_id: last.map(|(term, index)| log_id(term, index)),
            voter_sets: vec![BTreeSet::from([1, 2, 3])],
            voter_addrs: BTreeMap::new(),
        }
    }

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    #[test]
    fn a_follower_waits_the_lease_and_an_election_timeout() {
        let start = Instant::now();
        let timer = ElectionTimer::new(1, RANGE, start, 7, true);
        let follower = view(ServerState::Follower, true, Some((1, 10)));
        timer.leader_heard(start, None);
        assert!(!timer.due(start + Duration::from_millis(899), &follower));
        assert!(timer.due(start + Duration::from_millis(1_200), &follower));
        // A candidate (its vote not committed) waits one election timeout only.
        let candidate = view(ServerState::Candidate, false, Some((1, 10)));
        assert!(!timer.due(start + Duration::from_millis(299), &candidate));
        assert!(timer.due(start + Duration::from_millis(600), &candidate));
    }

    #[test]
    fn leaders_and_learners_never_stand_and_a_lone_voter_always_does() {
        let start = Instant::now();
        let timer = ElectionTimer::new(4, RANGE, start, 7, true);
        let late = start + Duration::from_secs(10);
        let mut learner = view(ServerState::Learner, true, None);
        assert!(!timer.due(late, &learner));
        learner.voter_sets = vec![BTreeSet::from([4])];
        learner.state = ServerState::Follower;
        assert!(timer.due(start, &learner));
        learner.state = ServerState::Candidate;
        assert!(!timer.due(late, &learner));
        learner.state = ServerState::Leader;
        assert!(!timer.due(late, &learner));
    }

    #[test]
    fn each_wait_is_drawn_afresh_within_the_range() {
        let start = Instant::now();
        let timer = ElectionTimer::new(2, RANGE, start, 7, true);
        let mut waits = BTreeSet::new();
        for _ in 0..64 {
            timer.restart(start);
            let wait = timer.clock.lock().wait;
            assert!(wait >= RANGE.0 && wait < RANGE.1, "{wait:?}");
            waits.insert(wait);
        }
        assert!(waits.len() > 32, "the waits repeat: {waits:?}");
    }

    /// A replica that started without a saved vote (its disk lost) grants none, nor a
    /// pre-vote, until three election timeouts pass or it hears a leader and its log
    /// reaches that leader's commit index; one that remembers its vote is not held back.
    #[test]
    fn a_replica_without_its_vote_withholds_votes_until_caught_up_or_the_window() {
        let start = Instant::now();
        let follower = view(ServerState::Follower, false, None);
        let question = PreVote {
            candidate: 1,
            last_log_id: Some(log_id(3, 70)),
        };
        let window = start + 3 * RANGE.1;
        let amnesiac = ElectionTimer::new(2, RANGE, start, 7, false);
        assert!(amnesiac.withholds_votes(start, None));
        assert!(amnesiac.withholds_votes(window - Duration::from_millis(1), None));
        assert!(!amnesiac.answer(window - Duration::from_millis(1), &question, &follower));
        assert!(!amnesiac.withholds_votes(window, None));
        assert!(amnesiac.answer(window, &question, &follower));

        // A leader heard whose commit index is 60: no vote until the log reaches 60,
        // even past the window; then votes as any replica, however far behind later.
        let heard = ElectionTimer::new(2, RANGE, start, 7, false);
        let then = start + Duration::from_millis(100);
        heard.leader_heard(then, Some(60));
        assert!(heard.withholds_votes(then, None));
        assert!(heard.withholds_votes(window, Some(59)));
        let behind = view(ServerState::Follower, false, Some((3, 59)));
        assert!(!heard.answer(window, &question, &behind));
        let caught_up = view(ServerState::Follower, false, Some((3, 60)));
        assert!(heard.answer(window, &question, &caught_up));
        assert!(!heard.withholds_votes(window, Some(10)));
        // A leader with nothing committed: caught up at once.
        let fresh = ElectionTimer::new(2, RANGE, start, 7, false);
        fresh.leader_heard(then, None);
        assert!(!fresh.withholds_votes(then, None));

        let remembers = ElectionTimer::new(2, RANGE, start, 7, true);
        assert!(!remembers.withholds_votes(start, None));
        remembers.leader_heard(then, Some(60));
        assert!(!remembers.withholds_votes(then, None));
        assert!(remembers.answer(start, &question, &follower));
    }

    #[test]
    fn a_voter_refuses_a_shorter_log_and_while_its_lease_runs() {
        let start = Instant::now();
        let timer = ElectionTimer::new(2, RANGE, start, 7, true);
        let follower = view(ServerState::Follower, true, Some((3, 68)));
        let longer = PreVote {
            candidate: 1,
            last_log_id: Some(log_id(3, 70)),
        };
        let shorter = PreVote {
            candidate: 1,
            last_log_id: Some(log_id(3, 65)),
        };
        timer.leader_heard(start, None);
        let within = start + Duration::from_millis(599);
        let after = start + Duration::from_millis(600);
        assert!(!timer.answer(within, &longer, &follower));
        assert!(timer.answer(after, &longer, &follower));
        assert!(!timer.answer(after, &shorter, &follower));
        // An equal log is enough; a later term beats a longer log of an older term.
        let equal = PreVote {
            candidate: 1,
            last_log_id: Some(log_id(3, 68)),
        };
        assert!(timer.answer(after, &equal, &follower));
        let newer = PreVote {
            candidate: 1,
            last_log_id: Some(log_id(4, 2)),
        };
        assert!(timer.answer(after, &newer, &follower));
        // A voter that already voted for a candidate has no lease to keep.
        let voted = view(ServerState::Follower, false, Some((3, 68)));
        assert!(timer.answer(within, &longer, &voted));
        // A leader refuses everyone.
        let leader = view(ServerState::Leader, true, Some((3, 68)));
        assert!(!timer.answer(after, &longer, &leader));
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_voter_set() {
        let three = [BTreeSet::from([1, 2, 3])];
        assert!(is_quorum(&three, &BTreeSet::from([1, 2])));
        assert!(!is_quorum(&three, &BTreeSet::from([1])));
        assert!(!is_quorum(&three, &BTreeSet::from([1, 4, 5])));
        let joint = [BTreeSet::from([1, 2, 3]), BTreeSet::from([3, 4, 5, 6])];
        assert!(!is_quorum(&joint, &BTreeSet::from([1, 2, 3])));
        assert!(is_quorum(&joint, &BTreeSet::from([1, 3, 4, 5])));
        assert!(!is_quorum(&[], &BTreeSet::from([1])));
    }
}
