//! Asking a replica, over its peer service, where it stands or to change the
//! membership (`tally cluster status|add|remove`). Any replica will do: a membership
//! change is passed on to the leader.

use crate::network::{from_frame, peer_client, to_frame};
use crate::replica::{AdminRequest, ReplicaStatus};
use std::time::Duration;

/// How long a status query waits; a membership change waits for the new replica to
/// catch up, so it may take much longer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

async fn call(
    peer: &str,
    request: AdminRequest,
    timeout: Duration,
) -> Result<ReplicaStatus, String> {
    let mut client = peer_client(peer)?;
    let mut message = tonic::Request::new(to_frame(&request)?);
    message.set_timeout(timeout);
    let answer = client
        .admin(message)
        .await
        .map_err(|status| format!("replica at {peer}: {}", status.message()))?;
    let answer: Result<ReplicaStatus, String> = from_frame(answer.get_ref())?;
    answer
}

/// The status of the replica whose peer address is `peer`.
pub async fn status(peer: &str) -> Result<ReplicaStatus, String> {
    call(peer, AdminRequest::Status, STATUS_TIMEOUT).await
}

/// Adds replica `replica_id` (peer address `addr`, already running with `--join`):
/// it catches up as a learner, then votes. Answers the leader's status after.
pub async fn add(peer: &str, replica_id: u64, addr: &str) -> Result<ReplicaStatus, String> {
    let request = AdminRequest::Add {
        replica_id,
        addr: addr.to_string(),
    };
    call(peer, request, CHANGE_TIMEOUT).await
}

/// Removes replica `replica_id` from the voters. Answers the leader's status after.
pub async fn remove(peer: &str, replica_id: u64) -> Result<ReplicaStatus, String> {
    call(peer, AdminRequest::Remove { replica_id }, CHANGE_TIMEOUT).await
}
