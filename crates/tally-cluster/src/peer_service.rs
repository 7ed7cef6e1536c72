//! The peer service: what a replica answers its peers (Raft messages, forwarded writes,
//! read indexes, membership changes).

use crate::election::PreVote;
use crate::group::Group;
use crate::network::{from_frame, to_frame};
use crate::replica::{AdminRequest, Core, forward_answer, peer_message_bytes_max};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use std::sync::Arc;
use tally_proto::peer::Frame;
use tally_proto::peer::peer_server::{Peer, PeerServer};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

struct PeerService {
    core: Arc<Core>,
}

fn decode<T: serde::de::DeserializeOwned>(request: &Request<Frame>) -> Result<T, Status> {
    from_frame(request.get_ref()).map_err(Status::invalid_argument)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Response<Frame>, Status> {
    to_frame(value).map(Response::new).map_err(Status::internal)
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let rpc: AppendEntriesRequest<crate::TallyRaft> = decode(&request)?;
        let leader_commit = rpc.leader_commit.map(|id| id.index);
        let answer = self.core.raft.append_entries(rpc).await;
        self.core
            .elections
            .append_entries_answered(leader_commit, &answer);
        encode(&answer)
    }

    async fn vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let rpc: VoteRequest<u64> = decode(&request)?;
        encode(&self.core.elections.vote(rpc).await)
    }

    async fn pre_vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let question: PreVote = decode(&request)?;
        encode(&self.core.elections.answer(&question))
    }

    async fn install_snapshot(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let rpc: InstallSnapshotRequest<crate::TallyRaft> = decode(&request)?;
        encode(&self.core.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let group: Group = decode(&request)?;
        for batch in group.batches.iter() {
            tally_engine::validate_batch(batch)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let outcomes = self.core.propose_forwarded(group).await;
        forward_answer(outcomes)
            .map(Response::new)
            .map_err(Status::internal)
    }

    async fn read_index(&self, _request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let index: Result<u64, String> = match self.core.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |id| id.index)),
            Err(error) => Err(error.to_string()),
        };
        encode(&index)
    }

    async fn admin(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let admin: AdminRequest = decode(&request)?;
        encode(&self.core.admin(admin).await)
    }
}

/// Serves the peer service on `listener` until the returned sender fires.
pub(crate) fn serve(
    core: Arc<Core>,
    listener: tokio::net::TcpListener,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let check = crate::network::CheckSecret(core.peer_secret.clone());
    let service = PeerServer::new(PeerService { core })
        .max_decoding_message_size(peer_message_bytes_max())
        .max_encoding_message_size(peer_message_bytes_max());
    let service = tonic::service::interceptor::InterceptedService::new(service, check);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the peer service stopped");
        }
    });
    (stop, task)
}
