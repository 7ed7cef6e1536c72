//! What a server is told at start: where to listen, TLS, tokens, limits.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::ServerTlsConfig;

/// The server's certificate and, for mutual TLS, the CA its clients' certificates
/// must chain to. All PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// When set, every client must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Bounds on what one client may hold or send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request message (bytes). A full batch of 8,190 transfers is at most
    /// about 1.4 MB. Answers are bounded by the batch and page limits instead.
    pub message_bytes_max: usize,
    /// Concurrent calls (HTTP/2 streams) on one connection.
    pub streams_per_connection_max: u32,
    /// Open connections from one IP address (an IPv6 one: its /64 network).
    pub connections_per_ip_max: usize,
    /// Open connections in all.
    pub connections_max: usize,
    /// A connection with no call in flight for this long is closed (a stream held open
    /// is a call; answers to keepalive pings are not).
    pub idle_timeout: Duration,
    /// A new connection must send its first bytes (TLS hello or HTTP/2 preface)
    /// within this time; with TLS, its handshake must also be done within it. A call's
    /// whole request must arrive within it too.
    pub header_timeout: Duration,
    /// Keepalive pings find half-open connections: one is sent after this much
    /// silence, and the connection is closed when its answer does not come within it.
    pub keepalive_interval: Duration,
    /// Request bytes the calls from one peer address may hold while they are read
    /// (tonic reads a call's whole message before its handler runs); a call past it
    /// is refused with `RESOURCE_EXHAUSTED`.
    pub request_bytes_per_ip_max: usize,
    /// Request bytes all calls may hold while they are read.
    pub request_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            message_bytes_max: 4 << 20,
            streams_per_connection_max: 256,
            connections_per_ip_max: 64,
            connections_max: 1_024,
            idle_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            request_bytes_per_ip_max: 256 << 20,
            request_bytes_max: 1 << 30,
        }
    }
}

impl Limits {
    /// Refuses request budgets that would refuse a message the size limit allows:
    /// every large batch would get `RESOURCE_EXHAUSTED`, which clients retry as busy.
    fn check(&self) -> Result<(), ServerError> {
        // A message travels with a 5-byte gRPC prefix.
        let message_whole = self.message_bytes_max.saturating_add(5);
        if self.request_bytes_per_ip_max < message_whole {
            return Err(ServerError::Limits(format!(
                "--request-bytes-per-ip-max ({}) must hold one message of \
                 --message-bytes-max ({}) and its 5-byte prefix",
                self.request_bytes_per_ip_max, self.message_bytes_max
            )));
        }
        if self.request_bytes_max < self.request_bytes_per_ip_max {
            return Err(ServerError::Limits(format!(
                "--request-bytes-max ({}) must be at least --request-bytes-per-ip-max ({})",
                self.request_bytes_max, self.request_bytes_per_ip_max
            )));
        }
        Ok(())
    }
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The gRPC address.
    pub listen: SocketAddr,
    /// TLS; `None` serves plain HTTP/2.
    pub tls: Option<TlsFiles>,
    /// The token file; `None` lets every caller do everything.
    pub tokens: Option<PathBuf>,
    /// Allows a non-loopback `listen` without TLS, or with neither tokens nor client
    /// certificates.
    pub insecure: bool,
    /// Prometheus metrics over HTTP at this address.
    pub metrics: Option<SocketAddr>,
    /// Bounds per client.
    pub limits: Limits,
    /// The hint sent with `RESOURCE_EXHAUSTED` when the engine's queue is full.
    pub busy_retry_after: Duration,
    /// The longest a graceful shutdown waits for calls in flight (a client may hold a
    /// stream open forever); then the connections are dropped. Calls already admitted
    /// to the ledger are still committed before it closes: their clients retry and get
    /// `exists`.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// Plain, open, default limits: for tests and local use.
    pub fn new(listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            tls: None,
            tokens: None,
            insecure: false,
            metrics: None,
            limits: Limits::default(),
            busy_retry_after: Duration::from_millis(5),
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// Refuses what would stop the server from starting, before anything is opened: a
    /// plain-text listener on a non-loopback address without `insecure` (TLS there
    /// without a token file or client certificates starts, with a warning), a token file
    /// that does not read or parse, TLS files that do not read or that rustls refuses
    /// (not PEM, a key that is not the certificate's). Answers the tokens read, when
    /// there is a file.
    pub fn check(&self) -> Result<Option<crate::auth::Tokens>, ServerError> {
        self.checked().map(|(tokens, _)| tokens)
    }

    /// [`ServerConfig::check`], answering the TLS settings read too, so that the
    /// server starts with the very files it checked.
    pub(crate) fn checked(
        &self,
    ) -> Result<(Option<crate::auth::Tokens>, Option<ServerTlsConfig>), ServerError> {
        let public = !self.listen.ip().to_canonical().is_loopback();
        if self.tls.is_none() && !self.insecure && public {
            return Err(ServerError::InsecureListen(self.listen));
        }
        // The metrics port is always plain HTTP.
        if let Some(metrics) = self
            .metrics
            .filter(|at| !at.ip().to_canonical().is_loopback())
            && !self.insecure
        {
            return Err(ServerError::InsecureMetrics(metrics));
        }
        self.limits.check()?;
        let tls = self
            .tls
            .as_ref()
            .map(|files| crate::server::server_tls_checked(files, self.limits.header_timeout))
            .transpose()?;
        let tokens = self
            .tokens
            .as_deref()
            .map(crate::auth::Tokens::load)
            .transpose()
            .map_err(ServerError::Tokens)?;
        Ok((tokens, tls))
    }
}

/// Why a server did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// A plain-text listener on a non-loopback address without `insecure`.
    InsecureListen(SocketAddr),
    /// The metrics port (plain HTTP) on a non-loopback address without `insecure`.
    InsecureMetrics(SocketAddr),
    /// A TLS file could not be read.
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Limits that contradict each other.
    Limits(String),
    /// A TLS file holds no PEM block of the kind it must.
    TlsPem {
        /// The file.
        path: PathBuf,
        /// The block's label: `CERTIFICATE` or `PRIVATE KEY`.
        label: &'static str,
    },
    /// The TLS configuration was refused.
    Tls {
        /// The server's certificate file.
        cert: PathBuf,
        /// Its private key's file.
        key: PathBuf,
        /// Why.
        error: tonic::transport::Error,
    },
    /// The token file did not load.
    Tokens(crate::auth::TokenFileError),
    /// The address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The ledger did not shut down cleanly.
    Engine(tally_engine::EngineError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::InsecureMetrics(addr) => write!(
                f,
                "refusing to serve metrics (plain HTTP) on non-loopback {addr}: serve them \
                 on loopback, or pass --insecure to accept the risk"
            ),
            ServerError::InsecureListen(addr) => write!(
                f,
                "refusing to serve plain text on non-loopback {addr}: give TLS files, \
                 or --insecure to accept the risk"
            ),
            ServerError::TlsFile { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ServerError::Limits(reason) => write!(f, "{reason}"),
            ServerError::TlsPem { path, label } => write!(
                f,
                "{} holds no PEM {label} (a \"-----BEGIN ...{label}-----\" block)",
                path.display()
            ),
            ServerError::Tls { cert, key, error } => {
                write!(
                    f,
                    "TLS configuration refused (certificate {}, key {}): {error}",
                    cert.display(),
                    key.display()
                )?;
                // tonic's own message is only "transport error": the cause is below it.
                let mut cause = std::error::Error::source(error);
                while let Some(error) = cause {
                    write!(f, ": {error}")?;
                    cause = error.source();
                }
                Ok(())
            }
            ServerError::Tokens(error) => write!(f, "{error}"),
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Engine(error) => write!(f, "ledger shutdown: {error}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::TlsFile { source, .. } | ServerError::Bind { source, .. } => Some(source),
            ServerError::Tls { error, .. } => Some(error),
            ServerError::Tokens(error) => Some(error),
            ServerError::Engine(error) => Some(error),
            ServerError::InsecureListen(_)
            | ServerError::InsecureMetrics(_)
            | ServerError::Limits(_)
            | ServerError::TlsPem { .. } => None,
        }
    }
}
