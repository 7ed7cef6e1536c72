//! Starting and stopping a server: bind, TLS, tokens, health, then serve until told to
//! stop; stopping drains the calls in flight, then shuts the ledger down (its last
//! group synced).

use crate::authenticate::{Access, Authenticated};
use crate::backend::Backend;
use crate::calls::Counted;
use crate::config::{ServerConfig, ServerError, TlsFiles};
use crate::health::{ServerHealth, follow_readiness};
use crate::incoming::Incoming;
use crate::metrics_http;
use crate::service::LedgerService;
use crate::stats::ServerStats;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tally_engine::Ledger;
use tally_proto::LedgerServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthReporter;

/// Largest health check request: a service's name.
const HEALTH_REQUEST_BYTES_MAX: usize = 1 << 10;

/// HTTP/2 flow-control window of one call: room for a full batch (about 1.4 MB) in
/// one go.
const WINDOW_STREAM_BYTES: u32 = 2 << 20;

/// HTTP/2 flow-control window of a connection: two full batches in flight. It bounds
/// the bytes a connection has sent that no call has read yet; each call reads its
/// message as it arrives, up to `message_bytes_max`, so a connection can make the
/// server hold at most `streams_per_connection_max` × `message_bytes_max` (see
/// docs/server.md, "Limits").
const WINDOW_CONNECTION_BYTES: u32 = 4 << 20;

/// The gRPC server of one ledger.
#[derive(Debug)]
pub struct Server;

/// A server accepting calls. Stop it with [`RunningServer::shutdown`]; dropping it
/// stops accepting without draining.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    backend: Backend,
    stats: Arc<ServerStats>,
    health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    metrics_stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Set to `true` to make every connection's reads fail (see `incoming`).
    close_connections: watch::Sender<bool>,
    /// Set to `true` when stopping: every change-event subscription ends.
    stopping: watch::Sender<bool>,
    drain_timeout: Duration,
}

impl Server {
    /// Binds `config.listen` and serves `ledger` on the current tokio runtime.
    pub async fn start(ledger: Ledger, config: ServerConfig) -> Result<RunningServer, ServerError> {
        Server::start_backend(Backend::Node(ledger), config).await
    }

    /// Binds `config.listen` and serves `backend` (a ledger, or a cluster replica) on
    /// the current tokio runtime.
    pub async fn start_backend(
        backend: Backend,
        config: ServerConfig,
    ) -> Result<RunningServer, ServerError> {
        let (tokens, tls) = config.checked()?;
        let access = match tokens {
            Some(tokens) => Access::Tokens(Arc::new(tokens)),
            None => {
                let certificates = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
                if !config.listen.ip().to_canonical().is_loopback() && !certificates {
                    tracing::warn!(
                        listen = %config.listen,
                        "no token file on a non-loopback address: anyone who can reach it \
                         may call every operation on every ledger (pass --tokens)"
                    );
                }
                Access::open()
            }
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let stats = Arc::new(ServerStats::default());
        let (stopping, stopping_seen) = watch::channel(false);
        let service = LedgerService {
            backend: backend.clone(),
            stats: Arc::clone(&stats),
            busy_retry_after_ms: config.busy_retry_after.as_millis() as u64,
            message_bytes_max: config.limits.message_bytes_max,
            stopping: stopping_seen,
        };
        let limits = &config.limits;
        // Counted behind the token check: a call refused for its token is no activity,
        // so a connection that makes only such calls is closed once idle.
        let grpc = Authenticated {
            // Requests only: an answer is bounded by the batch and page limits instead
            // (a few MB), and a write's answer refused after its batch was applied
            // would tell the caller nothing was.
            inner: Counted {
                inner: LedgerServer::new(service)
                    .max_decoding_message_size(limits.message_bytes_max),
            },
            access,
            stats: Arc::clone(&stats),
        };
        let health = HealthReporter::new();
        let health_service =
            HealthServer::new(ServerHealth::new(health.clone(), stopping.subscribe()))
                // A health check names a service: it needs no room. The health service takes
                // no token, so it stays out of the request budgets by being this small.
                .max_decoding_message_size(HEALTH_REQUEST_BYTES_MAX);
        health.set_serving::<LedgerServer<LedgerService>>().await;
        if matches!(backend, Backend::Replica(_)) {
            let follow = follow_readiness(health.clone(), backend.clone(), stopping.subscribe());
            tokio::spawn(follow);
        }
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(limits.streams_per_connection_max))
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_interval))
            // A full batch is about 1.4 MB: with HTTP/2's default 64 KiB windows it
            // would wait for a window update round trip every 64 KiB.
            .initial_stream_window_size(Some(WINDOW_STREAM_BYTES))
            .initial_connection_window_size(Some(WINDOW_CONNECTION_BYTES));
        if let (Some(files), Some(tls)) = (&config.tls, tls) {
            builder = builder
                .tls_config(tls)
                .map_err(|error| tls_refused(files, error))?;
        }
        let (metrics_addr, metrics_stop) = match config.metrics {
            Some(addr) => {
                let sources = metrics_http::Sources {
                    backend: backend.clone(),
                    stats: Arc::clone(&stats),
                    stopping: stopping.subscribe(),
                };
                let (addr, stop) = start_metrics(addr, sources).await?;
                (Some(addr), Some(stop))
            }
            None => (None, None),
        };
        let (close_connections, close) = watch::channel(false);
        let incoming = Incoming::new(listener, limits, Arc::clone(&stats), close);
        let (stop, stopped) = oneshot::channel::<()>();
        let router = builder
            .add_service(Counted {
                inner: health_service,
            })
            .add_service(grpc);
        let serving = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        tracing::info!(%local_addr, ?metrics_addr, tls = config.tls.is_some(), "serving");
        Ok(RunningServer {
            local_addr,
            metrics_addr,
            backend,
            stats,
            health,
            stop: Some(stop),
            metrics_stop,
            serving,
            close_connections,
            stopping,
            drain_timeout: config.drain_timeout,
        })
    }
}

impl RunningServer {
    /// The address bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the Prometheus metrics endpoint, when one was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The counters of answered and refused calls.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// What is served: a ledger or a cluster replica.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Stops accepting, answers every call in flight, ends every change-event
    /// subscription (with `UNAVAILABLE`: its client subscribes again elsewhere or
    /// later) and every health watch (after NOT_SERVING), then shuts the ledger down:
    /// every acknowledged batch is durable, and the data directory is released.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        // First, so that the readiness follower sets no status after the one below. No
        // receiver left means no subscription left.
        self.stopping.send_replace(true);
        crate::health::set_all(&self.health, tonic_health::ServingStatus::NotServing).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(self.drain_timeout, &mut self.serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "server stopped with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "server task failed"),
            Err(_) => {
                // Each connection is served by a task of its own, which aborting the
                // accept loop does not reach: the close signal makes every connection's
                // reads fail, so its task ends and drops it. What the ledger admitted
                // is still committed by its shutdown below.
                tracing::warn!(
                    drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                    "calls still in flight after the drain timeout: dropping connections"
                );
                // No receiver left means no connection left.
                let _ = self.close_connections.send(true);
                self.serving.abort();
            }
        }
        // Probes got 503 from `/ready` while the calls drained.
        if let Some(stop) = self.metrics_stop.take() {
            let _ = stop.send(());
        }
        let ledger = match &self.backend {
            Backend::Node(ledger) => ledger.clone(),
            Backend::Replica(hosted) => {
                hosted.replica().shutdown().await;
                return Ok(());
            }
        };
        let stopped = tokio::task::spawn_blocking(move || ledger.shutdown()).await;
        match stopped {
            Ok(result) => result.map_err(ServerError::Engine),
            Err(_) => Err(ServerError::Engine(
                tally_engine::EngineError::ThreadPanicked {
                    name: "tally-server-shutdown",
                },
            )),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stopping.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.metrics_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds the metrics address and answers scrapes until the sender is used or dropped.
async fn start_metrics(
    addr: SocketAddr,
    sources: metrics_http::Sources,
) -> Result<(SocketAddr, oneshot::Sender<()>), ServerError> {
    let bind_error = |source| ServerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(metrics_http::serve(listener, sources, stopped));
    Ok((local_addr, stop))
}

/// The file at `path`, which must hold a PEM block whose label ends in `label`
/// (`CERTIFICATE`, `PRIVATE KEY`): rustls's own word for a file without one, "peer
/// sent no certificates", does not say which file is wrong.
fn read_pem(path: &Path, label: &'static str) -> Result<Vec<u8>, ServerError> {
    let bytes = std::fs::read(path).map_err(|source| ServerError::TlsFile {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text.lines().any(|line| {
        line.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if !has_block {
        return Err(ServerError::TlsPem {
            path: path.to_path_buf(),
            label,
        });
    }
    Ok(bytes)
}

/// Reads the TLS files and has tonic (rustls) check them, as the server will; answers
/// the settings read.
pub(crate) fn server_tls_checked(
    files: &TlsFiles,
    handshake_timeout: Duration,
) -> Result<ServerTlsConfig, ServerError> {
    let tls = server_tls(files, handshake_timeout)?;
    tonic::transport::Server::builder()
        .tls_config(tls.clone())
        .map_err(|error| tls_refused(files, error))?;
    Ok(tls)
}

fn tls_refused(files: &TlsFiles, error: tonic::transport::Error) -> ServerError {
    ServerError::Tls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        error,
    }
}

/// The TLS settings; a handshake not done within `handshake_timeout` is dropped, so a
/// peer that sends a few bytes and stalls holds its slot no longer than a silent one.
fn server_tls(
    files: &TlsFiles,
    handshake_timeout: Duration,
) -> Result<ServerTlsConfig, ServerError> {
    let identity = Identity::from_pem(
        read_pem(&files.cert, "CERTIFICATE")?,
        read_pem(&files.key, "PRIVATE KEY")?,
    );
    let mut tls = ServerTlsConfig::new()
        .identity(identity)
        .timeout(handshake_timeout);
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem(ca, "CERTIFICATE")?));
    }
    Ok(tls)
}
