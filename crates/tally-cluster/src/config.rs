//! How a replica is configured: who it is, who its peers are, where its data lives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The configuration of one replica.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This replica's id (non-zero), a key of `members`.
    pub replica_id: u64,
    /// The peer address (`host:port`) of every replica of the initial membership,
    /// this one included. The replicas' own service listens there.
    pub members: BTreeMap<u64, String>,
    /// This replica's data directory (its log, its snapshot, its lock).
    pub data_dir: PathBuf,
    /// Where the peer service binds, when not at this replica's address in `members`
    /// (behind a proxy or a NAT, the address the others dial differs). Default: none.
    pub peer_listen: Option<String>,
    /// Join a running cluster instead of forming one: the replica starts empty and
    /// waits to be added (`tally cluster add`). `members` then needs only this replica.
    pub join: bool,
    /// The election timeout range. A follower that has heard nothing from its leader
    /// for the longest timeout (the leader's lease) plus a random time in this range
    /// asks the voters whether they would vote for it (a pre-vote) and stands if a
    /// majority would: with the default 300–600 ms, a leader lost is replaced 0.9–1.2 s
    /// after its last heartbeat, or one election timeout later (1.8 s at the most) in
    /// the rare case that both followers, their logs equal, stand at once.
    pub election_timeout: (Duration, Duration),
    /// How often the leader sends heartbeats. Default 200 ms. It is also the time
    /// openraft gives one AppendEntries message (up to 2 groups) to be delivered and
    /// synced by a follower, so it is as long as failover allows: a follower elects only
    /// after the lease and an election timeout, 0.9 s at the least by default.
    pub heartbeat_interval: Duration,
    /// A snapshot is taken once the log holds this many bytes of entries (replica `id`
    /// waits `(id mod 4) / 4` longer, so that replicas do not all write theirs at once);
    /// the log before it is then purged, which bounds the memory the log holds. A
    /// snapshot is the whole ledger: at a million accounts and a few million transfers
    /// it takes seconds of a core and half a gigabyte of writes. Default 1 GiB, at least
    /// [`SNAPSHOT_LOG_BYTES_MIN`].
    pub snapshot_log_bytes: u64,
    /// Groups proposed and not yet committed at once. Default 8.
    pub proposals_in_flight: usize,
    /// Batches waiting to be proposed; past it, submitters wait. Default 4,096.
    pub proposal_queue: usize,
    /// How long a submitter waits for room in a full proposal queue before its batch
    /// is refused as busy (changing nothing), as the engine's bounded wait
    /// (`tally_engine::Backpressure::Wait`). Default 100 ms.
    pub submit_wait_max: Duration,
    /// Whether the leader proposes an empty group when a pending transfer's expiry
    /// instant passes with no traffic, so the expiry runs then (as a single node logs
    /// an empty batch), not with the next write. Default on.
    pub expire_when_idle: bool,
    /// How long the leader waits, when a replica is added, for it to catch up as a
    /// learner before making it a voter. Past it the replica stays a learner (it never
    /// counts toward a majority it cannot yet serve) and the add answers an error.
    /// Default 60 s.
    pub learner_catch_up_max: Duration,
    /// Whether the replica keeps the change events of what it applies, in its own
    /// journal in `DATA/events` (docs/spec.md §2, "Change events"). Default on.
    pub change_events: bool,
    /// Bytes of change events the replica keeps: past it, the oldest journal segments
    /// are deleted, as on a single node (`tally_engine::Config::events_retention_bytes`).
    /// Default 4 GiB.
    pub events_retention_bytes: u64,
    /// The secret every replica of the cluster holds: this replica's peer calls carry
    /// it, and calls to its peer service without it are refused (`UNAUTHENTICATED`).
    /// Without one, anyone who reaches the peer address may forward writes and change
    /// the membership: keep such a cluster on loopback or a private network. Default:
    /// none.
    pub peer_secret: Option<crate::PeerSecret>,
}

/// The least [`ClusterConfig::snapshot_log_bytes`], a few entries' worth: with 0 a
/// replica would ask for a snapshot at every look at its log (twice a second).
pub const SNAPSHOT_LOG_BYTES_MIN: u64 = 4 << 10;

impl ClusterConfig {
    /// A replica `replica_id` of `members`, with the defaults.
    pub fn new(
        replica_id: u64,
        members: BTreeMap<u64, String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        ClusterConfig {
            replica_id,
            members,
            data_dir: data_dir.into(),
            peer_listen: None,
            join: false,
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            heartbeat_interval: Duration::from_millis(200),
            snapshot_log_bytes: 1 << 30,
            proposals_in_flight: 8,
            proposal_queue: 4_096,
            submit_wait_max: Duration::from_millis(100),
            expire_when_idle: true,
            learner_catch_up_max: Duration::from_secs(60),
            change_events: true,
            events_retention_bytes: tally_log::events::JOURNAL_RETENTION_BYTES_DEFAULT,
            peer_secret: None,
        }
    }

    /// This replica's peer address.
    pub fn own_address(&self) -> Option<&str> {
        self.members.get(&self.replica_id).map(String::as_str)
    }

    /// Checks the configuration before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.replica_id == 0 {
            return Err("replica ids start at 1".into());
        }
        if self.own_address().is_none() {
            return Err(format!(
                "replica {} is not in the cluster's members",
                self.replica_id
            ));
        }
        duplicate_address(&self.members)?;
        let (low, high) = self.election_timeout;
        if low.is_zero() || high <= low {
            return Err("the election timeout range must be non-empty and above zero".into());
        }
        if self.heartbeat_interval >= low {
            return Err("the heartbeat interval must be shorter than the election timeout".into());
        }
        if self.proposals_in_flight == 0 || self.proposal_queue == 0 {
            return Err("proposals in flight and the proposal queue must be at least 1".into());
        }
        if self.snapshot_log_bytes < SNAPSHOT_LOG_BYTES_MIN {
            return Err(format!(
                "the log must hold at least {SNAPSHOT_LOG_BYTES_MIN} bytes before a snapshot, \
                 not {}",
                self.snapshot_log_bytes
            ));
        }
        Ok(())
    }

    /// Parses `1=host:port,2=host:port,...`.
    pub fn parse_members(text: &str) -> Result<BTreeMap<u64, String>, String> {
        let mut members = BTreeMap::new();
        for item in text.split(',').filter(|item| !item.trim().is_empty()) {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: expected ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("`{item}`: the replica id is not a number"))?;
            let addr = addr.trim();
            if id == 0 || addr.is_empty() || !addr.contains(':') {
                return Err(format!("`{item}`: expected ID=HOST:PORT with ID ≥ 1"));
            }
            if members.insert(id, addr.to_string()).is_some() {
                return Err(format!("replica {id} is listed twice"));
            }
        }
        if members.is_empty() {
            return Err("the cluster lists no replica".into());
        }
        duplicate_address(&members)?;
        Ok(members)
    }
}

/// Refuses two replicas at one peer address: each would take the other's messages.
fn duplicate_address(members: &BTreeMap<u64, String>) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for (id, addr) in members {
        if let Some(first) = seen.insert(addr.as_str(), *id) {
            return Err(format!(
                "replicas {first} and {id} are both at {addr}: each needs its own peer address"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_bad_lists_are_refused() {
        let members =
            ClusterConfig::parse_members("1=127.0.0.1:7001, 2=127.0.0.1:7002").expect("parses");
        assert_eq!(members.len(), 2);
        for bad in [
            "",
            "1",
            "0=a:1",
            "x=a:1",
            "1=a:1,1=b:2",
            "1=nohost",
            "1=a:1,2=a:1",
        ] {
            assert!(ClusterConfig::parse_members(bad).is_err(), "{bad}");
        }
        let config = ClusterConfig::new(3, members, "/tmp/x");
        assert!(config.validate().is_err());
        let shared: BTreeMap<u64, String> = [(1, "a:1".to_string()), (2, "a:1".to_string())].into();
        let error = ClusterConfig::new(1, shared, "/tmp/x")
            .validate()
            .expect_err("one address for two replicas");
        assert!(error.contains("both at a:1"), "{error}");
    }
}
