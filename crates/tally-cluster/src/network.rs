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
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The largest peer message: a full AppendEntries of large groups, or a snapshot chunk.
pub(crate) const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;

/// The size of a snapshot chunk (openraft's `snapshot_max_chunk_size`).
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 3 << 20;

/// How long a snapshot chunk may take to reach a replica and be stored there.
const SNAPSHOT_CHUNK_WAIT: Duration = Duration::from_secs(10);

/// The rate a replica is at least expected to decode, rebuild and save a snapshot at
/// (on 2 busy cores one of 2.2 GB took 21 s: about 100 MB/s).
const SNAPSHOT_INSTALL_BYTES_PER_SECOND_MIN: u64 = 16 << 20;

/// The longest wait for a replica to install a snapshot: openraft's deadline for each
/// chunk (`install_snapshot_timeout`), within which [`snapshot_install_wait`] falls.
pub(crate) const SNAPSHOT_INSTALL_WAIT_MAX: Duration = Duration::from_secs(3_600);

/// How long the last chunk of a snapshot of `bytes` may take: its answer comes once the
/// replica has decoded the whole snapshot, rebuilt its state and saved it, which takes
/// seconds per GiB. Under a fixed deadline the leader gave up on a large one while the
/// replica was still installing it, and sent the whole snapshot again (the replica then
/// receiving a second copy beside the state it was rebuilding).
pub(crate) fn snapshot_install_wait(bytes: u64) -> Duration {
    let install = Duration::from_secs(bytes / SNAPSHOT_INSTALL_BYTES_PER_SECOND_MIN);
    (SNAPSHOT_CHUNK_WAIT + install).min(SNAPSHOT_INSTALL_WAIT_MAX)
}

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

/// The metadata key of the cluster's peer secret, carried by every peer call.
const PEER_SECRET_KEY: &str = "x-tally-peer-secret";

/// Fewest and most characters of a peer secret.
const PEER_SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;

/// The secret the replicas of a cluster share: each peer call carries it, and a replica
/// that has one answers `UNAUTHENTICATED` to any call without it (docs/cluster.md,
/// "Security"). Printable ASCII, 16 to 256 characters (`openssl rand -hex 32` makes
/// one). Never printed.
#[derive(Clone)]
pub struct PeerSecret {
    /// As sent: marked sensitive, so HTTP/2 header compression never indexes it.
    value: MetadataValue<Ascii>,
    /// Its SHA-256 digest, which a call's secret is compared against.
    digest: [u8; 32],
}

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

impl PeerSecret {
    /// A secret from its text (surrounding white space ignored).
    ///
    /// # Errors
    ///
    /// Not 16 to 256 printable ASCII characters.
    pub fn new(text: &str) -> Result<PeerSecret, String> {
        let text = text.trim();
        if !PEER_SECRET_CHARS.contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "a peer secret is {} to {} printable ASCII characters without spaces",
                PEER_SECRET_CHARS.start(),
                PEER_SECRET_CHARS.end()
            ));
        }
        let mut value = MetadataValue::try_from(text).map_err(|e| format!("a peer secret: {e}"))?;
        value.set_sensitive(true);
        Ok(PeerSecret {
            value,
            digest: sha256(text.as_bytes()),
        })
    }

    /// The secret in the file at `path` (its whole text).
    ///
    /// # Errors
    ///
    /// The file does not read, or does not hold a secret ([`PeerSecret::new`]).
    pub fn read(path: &std::path::Path) -> Result<PeerSecret, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PeerSecret::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Compares digests, so the time taken says nothing of where, or whether in length,
    /// `given` differs.
    fn matches(&self, given: &[u8]) -> bool {
        let given = sha256(given);
        let differing = self
            .digest
            .iter()
            .zip(given)
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(differing) == 0
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Adds the secret, if any, to each outgoing peer call.
#[derive(Debug, Clone)]
pub(crate) struct SendSecret(Option<PeerSecret>);

impl Interceptor for SendSecret {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secret) = &self.0 {
            request
                .metadata_mut()
                .insert(PEER_SECRET_KEY, secret.value.clone());
        }
        Ok(request)
    }
}

/// Refuses incoming peer calls without the secret, when the replica has one.
#[derive(Debug, Clone)]
pub(crate) struct CheckSecret(pub(crate) Option<PeerSecret>);

impl Interceptor for CheckSecret {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(secret) = &self.0 else {
            return Ok(request);
        };
        match request.metadata().get(PEER_SECRET_KEY) {
            Some(given) if secret.matches(given.as_bytes()) => Ok(request),
            _ => Err(tonic::Status::unauthenticated(
                "a peer call without this cluster's peer secret",
            )),
        }
    }
}

/// A client of a replica's peer service.
pub(crate) type PeerRpc = PeerClient<InterceptedService<Channel, SendSecret>>;

/// A lazily connected client of the replica at `addr`, each call carrying `secret`.
pub(crate) fn peer_client(addr: &str, secret: Option<&PeerSecret>) -> Result<PeerRpc, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("peer address {addr}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20));
    Ok(
        PeerClient::with_interceptor(endpoint.connect_lazy(), SendSecret(secret.cloned()))
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
    )
}

/// Makes one connection per peer for openraft.
#[derive(Debug, Clone, Default)]
pub struct PeerNetwork {
    /// The cluster's peer secret, carried by every call.
    pub(crate) secret: Option<PeerSecret>,
}

impl RaftNetworkFactory<TallyRaft> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            client: peer_client(&node.addr, self.secret.as_ref()),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: u64,
    client: Result<PeerRpc, String>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl PeerConnection {
    /// Sends one request frame; the answer is the peer's `Result<T, RaftError<E>>`.
    async fn call<Req, T, E>(
        &mut self,
        method: Method,
        request: &Req,
        wait: Duration,
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
        request.set_timeout(wait);
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
        self.call(Method::Append, &rpc, option.hard_ttl()).await
    }

    /// openraft's own deadline for a chunk is `SNAPSHOT_INSTALL_WAIT_MAX`: each chunk
    /// gets its own here, the last one time to install the whole snapshot.
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TallyRaft>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let wait = if rpc.done {
            snapshot_install_wait(rpc.offset + rpc.data.len() as u64)
        } else {
            SNAPSHOT_CHUNK_WAIT
        };
        self.call(Method::Snapshot, &rpc, wait).await
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
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_snapshot_chunk_waits_in_proportion_to_the_snapshot() {
        assert_eq!(snapshot_install_wait(0), SNAPSHOT_CHUNK_WAIT);
        let two_gib = snapshot_install_wait(2 << 30);
        assert_eq!(two_gib, SNAPSHOT_CHUNK_WAIT + Duration::from_secs(128));
        assert!(snapshot_install_wait(4 << 30) > two_gib);
        assert_eq!(snapshot_install_wait(u64::MAX), SNAPSHOT_INSTALL_WAIT_MAX);
    }
}
