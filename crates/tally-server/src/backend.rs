//! What a server serves: a ledger embedded in this process, or one replica of a
//! cluster (which forwards writes to its leader and reads at a read index). The service
//! speaks to both alike; only the errors differ, and both map to the same statuses.

use std::sync::Arc;
use tally_cluster::{ClusterError, Replica};
use tally_engine::{
    ChangeEventReader, EngineError, EventResult, Ledger, SubmitError, TransferResult,
};
use tally_types::{Account, AccountBalance, AccountFilter, Batch, QueryFilter, Transfer};

/// The ledger behind a server.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A single-node ledger in this process.
    Ledger(Ledger),
    /// One replica of a cluster, in this process.
    Replica(Arc<Replica>),
}

/// Why a call got no answer from the backend.
#[derive(Debug)]
pub(crate) enum BackendError {
    /// The single-node engine refused or failed the batch.
    Submit(SubmitError),
    /// The cluster refused the batch, or could not answer in time.
    Cluster(ClusterError),
    /// The single node's change events could not be read.
    Events(EngineError),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Submit(error) => write!(f, "{error}"),
            BackendError::Cluster(error) => write!(f, "{error}"),
            BackendError::Events(error) => write!(f, "{error}"),
        }
    }
}

impl Backend {
    pub(crate) async fn submit(&self, batch: Batch) -> Result<Vec<EventResult>, BackendError> {
        match self {
            Backend::Ledger(ledger) => ledger
                .submit_async(batch)
                .await
                .map_err(BackendError::Submit),
            Backend::Replica(replica) => replica.submit(batch).await.map_err(BackendError::Cluster),
        }
    }

    pub(crate) async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, BackendError> {
        match self {
            Backend::Ledger(ledger) => Ok(ledger.lookup_accounts(ids)),
            Backend::Replica(replica) => replica
                .read(|state| state.lookup_accounts(ids))
                .await
                .map_err(BackendError::Cluster),
        }
    }

    pub(crate) async fn lookup_transfers(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Transfer>, BackendError> {
        match self {
            Backend::Ledger(ledger) => Ok(ledger.lookup_transfers(ids)),
            Backend::Replica(replica) => replica
                .read(|state| state.lookup_transfers(ids))
                .await
                .map_err(BackendError::Cluster),
        }
    }

    pub(crate) async fn get_account_transfers(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<Transfer>, BackendError> {
        match self {
            Backend::Ledger(ledger) => Ok(ledger.get_account_transfers(filter)),
            Backend::Replica(replica) => replica
                .read(|state| state.account_transfers(filter))
                .await
                .map_err(BackendError::Cluster),
        }
    }

    /// Transfers with both accounts' balances after each.
    pub(crate) async fn submit_with_balances(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, BackendError> {
        match self {
            Backend::Ledger(ledger) => ledger
                .create_transfers_with_balances_async(transfers)
                .await
                .map_err(BackendError::Submit),
            Backend::Replica(replica) => replica
                .submit_with_balances(transfers)
                .await
                .map_err(BackendError::Cluster),
        }
    }

    pub(crate) async fn get_account_balances(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<AccountBalance>, BackendError> {
        match self {
            Backend::Ledger(ledger) => Ok(ledger.get_account_balances(filter)),
            Backend::Replica(replica) => replica
                .read(|state| state.account_balances(filter))
                .await
                .map_err(BackendError::Cluster),
        }
    }

    pub(crate) async fn query_accounts(
        &self,
        filter: &QueryFilter,
    ) -> Result<Vec<Account>, BackendError> {
        match self {
            Backend::Ledger(ledger) => Ok(ledger.query_accounts(filter)),
            Backend::Replica(replica) => replica
                .read(|state| state.query_accounts(filter))
                .await
                .map_err(BackendError::Cluster),
        }
    }

    pub(crate) async fn query_transfers(
        &self,
        filter: &QueryFilter,
    ) -> Result<Vec<Transfer>, BackendError> {
        match self {
            Backend::Ledger(ledger) => Ok(ledger.query_transfers(filter)),
            Backend::Replica(replica) => replica
                .read(|state| state.query_transfers(filter))
                .await
                .map_err(BackendError::Cluster),
        }
    }

    /// The reading side of the change-event journal, and the last timestamp committed
    /// before the call (for a replica, at a read index from the leader): a read that
    /// waits for the journal to hold it sees every change acknowledged before.
    pub(crate) async fn change_events_at_commit(
        &self,
    ) -> Result<(ChangeEventReader, u64), BackendError> {
        match self {
            Backend::Ledger(ledger) => {
                let reader = ledger.change_event_reader().map_err(BackendError::Events)?;
                Ok((reader, ledger.with_state(|state| state.last_timestamp())))
            }
            Backend::Replica(replica) => replica
                .change_events_at_read_index()
                .await
                .map_err(BackendError::Cluster),
        }
    }

    /// The reading side of the change-event journal.
    pub(crate) fn change_event_reader(&self) -> Result<ChangeEventReader, BackendError> {
        match self {
            Backend::Ledger(ledger) => ledger.change_event_reader().map_err(BackendError::Events),
            Backend::Replica(replica) => {
                replica.change_event_reader().map_err(BackendError::Cluster)
            }
        }
    }

    /// The Prometheus text of the backend's own figures.
    pub(crate) fn metrics_text(&self) -> String {
        match self {
            Backend::Ledger(ledger) => ledger.metrics().to_prometheus(),
            Backend::Replica(replica) => replica_metrics(&replica.status()),
        }
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
