//! Asking a replica, over its peer service, where it stands or to change the
//! membership (`tally cluster status|add|remove`). Any replica will do: a membership
//! change is passed on to the leader.

use crate::network::{PeerSecret, from_frame, peer_client, to_frame};
use crate::replica::{AdminRequest, ReplicaStatus};
use std::time::Duration;

/// How long a status query waits; a membership change waits for the new replica to
/// catch up, so it may take much longer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

async fn call(
    peer: &str,
    secret: Option<&PeerSecret>,
    request: AdminRequest,
    timeout: Duration,
) -> Result<ReplicaStatus, String> {
    let mut client = peer_client(peer, secret)?;
    let mut message = tonic::Request::new(to_frame(&request)?);
    message.set_timeout(timeout);
    let answer = client
        .admin(message)
        .await
        .map_err(|status| format!("replica at {peer}: {}", status.message()))?;
    let answer: Result<ReplicaStatus, String> = from_frame(answer.get_ref())?;
    answer
}

/// The status of the replica whose peer address is `peer`; `secret`: the cluster's
/// peer secret, if it has one.
pub async fn status(peer: &str, secret: Option<&PeerSecret>) -> Result<ReplicaStatus, String> {
    call(peer, secret, AdminRequest::Status, STATUS_TIMEOUT).await
}

/// Adds replica `replica_id` (peer address `addr`, already running with `--join`):
/// it catches up as a learner, then votes. Answers the leader's status after.
pub async fn add(
    peer: &str,
    secret: Option<&PeerSecret>,
    replica_id: u64,
    addr: &str,
) -> Result<ReplicaStatus, String> {
    let request = AdminRequest::Add {
        replica_id,
        addr: addr.to_string(),
    };
    call(peer, secret, request, CHANGE_TIMEOUT).await
}

/// Removes replica `replica_id` from the voters. Answers the leader's status after.
pub async fn remove(
    peer: &str,
    secret: Option<&PeerSecret>,
    replica_id: u64,
) -> Result<ReplicaStatus, String> {
    let request = AdminRequest::Remove { replica_id };
    call(peer, secret, request, CHANGE_TIMEOUT).await
}
