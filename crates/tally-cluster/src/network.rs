//! The replicas' transport: openraft's messages over the gRPC service
//! `tally.cluster.v1.Peer` (`proto/tally/cluster/v1/peer.proto`), each message one
//! postcard frame. A peer that cannot be reached is `Unreachable` to openraft, which
//! backs off and retries.

use crate::types::TallyRaft;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tally_proto::peer::Frame;
use tally_proto::peer::peer_client::PeerClient;
use tonic::transport::{Channel, Endpoint};

/// The largest peer message: a full AppendEntries of large groups, or a snapshot chunk.
pub(crate) const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;

/// Encodes a message as a frame.
pub(crate) fn to_frame<T: Serialize>(value: &T) -> Result<Frame, String> {
    postcard::to_allocvec(value)
        .map(|data| Frame { data })
        .map_err(|e| format!("encoding a peer message: {e}"))
}

/// Decodes a frame.
pub(crate) fn from_frame<T: DeserializeOwned>(frame: &Frame) -> Result<T, String> {
    postcard::from_bytes(&frame.data).map_err(|e| format!("decoding a peer message: {e}"))
}

/// A lazily connected client of the replica at `addr`.
pub(crate) fn peer_client(addr: &str) -> Result<PeerClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("peer address {addr}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20));
    Ok(PeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

/// Makes one connection per peer for openraft.
#[derive(Debug, Clone, Default)]
pub struct PeerNetwork;

impl RaftNetworkFactory<TallyRaft> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            client: peer_client(&node.addr),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: u64,
    client: Result<PeerClient<Channel>, String>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl PeerConnection {
    /// Sends one request frame; the answer is the peer's `Result<T, RaftError<E>>`.
    async fn call<Req, T, E>(
        &mut self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<T, E>
    where
        Req: Serialize,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(message) => return Err(unreachable(message)),
        };
        let frame = to_frame(request).map_err(|e| network_error(&e))?;
        let mut request = tonic::Request::new(frame);
        request.set_timeout(option.hard_ttl());
        let mut client = client;
        let answer = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let frame = answer.map_err(|status| {
            let message = format!("replica {}: {}", self.target, status.message());
            match status.code() {
                // Nobody answers there: openraft backs off before trying again.
                tonic::Code::Unavailable => unreachable(&message),
                // A slow answer or a broken call: tried again at once.
                _ => network_error(&message),
            }
        })?;
        let answer: Result<T, RaftError<u64, E>> =
            from_frame(frame.get_ref()).map_err(|e| network_error(&e))?;
        answer.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

fn unreachable<E: std::error::Error>(message: &str) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(message)))
}

fn network_error<E: std::error::Error>(
    message: &str,
) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&AnyError::error(message)))
}

impl RaftNetwork<TallyRaft> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TallyRaft>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TallyRaft>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    /// After an unreachable peer, wait 100 ms before trying it again (openraft's own
    /// default is 500 ms, a long time for a replica restarted after a crash).
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
