//! What a server serves: a ledger embedded in this process, or one replica of a
//! cluster (which forwards writes to its leader and reads at a read index). The service
//! speaks to both through `tally_cluster::Ledger`; only the errors differ, and both map
//! to the same statuses.

/// The ledger behind a server: `Backend::Node` (a single node) or `Backend::Replica`.
pub type Backend = tally_cluster::Ledger;

/// Why a call got no answer from the backend.
pub(crate) type BackendError = tally_cluster::LedgerError;

/// Why the backend cannot serve now, if it cannot: a replica that knows no leader (an
/// election under way, or cut off from the majority), that is not a member of its
/// cluster (removed, or not yet added), or whose Raft stopped. Its calls would answer
/// `UNAVAILABLE`. A single node can always serve.
pub(crate) fn not_ready(backend: &Backend) -> Option<&'static str> {
    let Backend::Replica(hosted) = backend else {
        return None;
    };
    let status = hosted.replica().status();
    let id = status.replica_id;
    if status.role == "shutdown" {
        Some("its Raft stopped")
    } else if !status.voters.contains_key(&id) && !status.learners.contains_key(&id) {
        Some("not a member of its cluster")
    } else if status.leader.is_none() {
        Some("no leader known")
    } else {
        None
    }
}

/// The Prometheus text of the backend's own figures.
pub(crate) fn metrics_text(backend: &Backend) -> String {
    match backend {
        Backend::Node(ledger) => ledger.metrics().to_prometheus(),
        Backend::Replica(hosted) => replica_metrics(&hosted.replica().status()),
    }
}

fn replica_metrics(status: &tally_cluster::ReplicaStatus) -> String {
    let id = status.replica_id;
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{replica=\"{id}\"}} {value}\n"
        ));
    };
    gauge(
        "tally_replica_term",
        "The replica's current Raft term.",
        status.term,
    );
    gauge(
        "tally_replica_leader",
        "The replica this one knows as leader (0: none).",
        status.leader.unwrap_or(0),
    );
    gauge(
        "tally_replica_is_leader",
        "1 when this replica leads.",
        u64::from(status.role == "leader"),
    );
    gauge(
        "tally_replica_last_log_index",
        "The last index in the replica's log.",
        status.last_log_index,
    );
    gauge(
        "tally_replica_applied_index",
        "The last index applied to the replica's state.",
        status.applied_index,
    );
    gauge(
        "tally_replica_events_applied",
        "Events applied since the log began.",
        status.events_applied,
    );
    gauge(
        "tally_replica_voters",
        "Voting replicas in the membership.",
        status.voters.len() as u64,
    );
    text.push_str(&format!(
        "# HELP tally_replica_digest_info The state digest at the applied index (label).\n\
         # TYPE tally_replica_digest_info gauge\n\
         tally_replica_digest_info{{replica=\"{id}\",applied_index=\"{}\",digest=\"{:016x}\"}} 1\n",
        status.applied_index, status.digest
    ));
    text
}
