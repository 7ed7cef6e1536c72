//! What a client needs to know to reach a server, and how it turns into a tonic endpoint.

use crate::error::ClientError;
use std::fmt;
use std::time::Duration;
use tally_types::BATCH_EVENTS_MAX;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How a [`Client`](crate::Client) reaches its server.
///
/// Built with [`ClientConfig::new`] and adjusted field by field:
///
/// ```
/// use std::time::Duration;
/// use tally_client::ClientConfig;
///
/// let config = ClientConfig {
///     token: Some("s3cret".to_string()),
///     request_timeout: Duration::from_secs(2),
///     ..ClientConfig::new("http://127.0.0.1:7400")
/// };
/// assert_eq!(config.batch_events_max, 8_190);
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's URL: `http://host:port`, or `https://host:port` with [`Self::tls`].
    pub endpoint: String,
    /// More URLs of the same ledger: the other replicas of a cluster (any replica takes
    /// any call; a follower passes writes on to the leader, and marks its answer so that
    /// the client moves on towards the leader). Calls go to one endpoint
    /// at a time; when it cannot be reached or answers `UNAVAILABLE`, the retry goes to
    /// the next, and after a call times out the next call does. Same scheme and TLS
    /// settings as `endpoint`. Default: none.
    pub replicas: Vec<String>,
    /// TLS settings; required for `https://`, refused for `http://`.
    pub tls: Option<TlsConfig>,
    /// A bearer token, sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// The longest wait for the answer of one attempt of one call (sent to the server as
    /// the gRPC deadline too). Default 10 s.
    pub request_timeout: Duration,
    /// The longest wait for a TCP (and TLS) connection. Default 5 s.
    pub connect_timeout: Duration,
    /// How often and how patiently failed calls are retried.
    pub retry: RetryPolicy,
    /// Most events in one batch sent by the coalescer, and most events (or ids) a batch
    /// call accepts: 1 to 8,190 ([`BATCH_EVENTS_MAX`]), default 8,190.
    pub batch_events_max: usize,
    /// Most batches of coalesced single calls out at once, per operation (accounts,
    /// transfers): 1 to [`BATCHES_IN_FLIGHT_MAX`], default 4. One keeps a single batch
    /// out, TigerBeetle's clients' way; more let the batches of a slow round, such as a
    /// cluster's, overlap. Batch calls are not limited by it.
    pub batches_in_flight: usize,
}

/// The most batches of coalesced calls a client keeps out at once, per operation.
pub const BATCHES_IN_FLIGHT_MAX: usize = 64;

impl ClientConfig {
    /// The defaults for `endpoint`: no TLS, no token, 10 s requests, 5 s connects, the
    /// default [`RetryPolicy`], batches of up to 8,190 events, four coalesced batches in
    /// flight.
    pub fn new(endpoint: impl Into<String>) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.into(),
            replicas: Vec::new(),
            tls: None,
            token: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            batch_events_max: BATCH_EVENTS_MAX,
            batches_in_flight: 4,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: say only whether there is one.
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("replicas", &self.replicas)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("batch_events_max", &self.batch_events_max)
            .field("batches_in_flight", &self.batches_in_flight)
            .finish()
    }
}

/// TLS settings of the connection (rustls).
#[derive(Clone)]
pub struct TlsConfig {
    /// The PEM certificate of the authority that signed the server's certificate.
    pub ca_certificate_pem: Vec<u8>,
    /// The name the server's certificate must carry; default: the endpoint's host.
    pub domain_name: Option<String>,
    /// A client certificate, for servers that require one (mutual TLS).
    pub identity: Option<ClientIdentity>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificate_pem_bytes", &self.ca_certificate_pem.len())
            .field("domain_name", &self.domain_name)
            .field("identity", &self.identity)
            .finish()
    }
}

/// A client certificate and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate (chain), PEM.
    pub certificate_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret.
        f.debug_struct("ClientIdentity")
            .field("certificate_pem_bytes", &self.certificate_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How failed calls are retried: `UNAVAILABLE`, a broken connection and
/// `RESOURCE_EXHAUSTED` (busy) are; every other failure is final at once.
///
/// The wait before retry `n` (1-based) is `backoff_initial * 2^(n-1)`, at most
/// `backoff_max`; after `RESOURCE_EXHAUSTED` it is at least the server's `retry-after-ms`
/// hint (itself capped at [`RETRY_AFTER_HINT_MAX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first one included; 1 means never retry. Default 5.
    pub attempts_max: u32,
    /// The wait before the first retry. Default 10 ms.
    pub backoff_initial: Duration,
    /// The longest wait between two attempts. Default 1 s.
    pub backoff_max: Duration,
}

/// HTTP/2 flow-control window of one call: room for a full batch (about 1.4 MB) in
/// one go.
const WINDOW_STREAM_BYTES: u32 = 2 << 20;

/// HTTP/2 flow-control window of the connection: several full batches in flight. It
/// bounds the answers the server may send before the client reads them.
const WINDOW_CONNECTION_BYTES: u32 = 8 << 20;

/// The longest server `retry-after-ms` hint the client honours; a longer one is cut to it.
pub const RETRY_AFTER_HINT_MAX: Duration = Duration::from_secs(5);

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 5,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based), before the next one.
    pub(crate) fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let backoff = self
            .backoff_initial
            .saturating_mul(1 << doublings)
            .min(self.backoff_max);
        match retry_after {
            Some(hint) => backoff.max(hint.min(RETRY_AFTER_HINT_MAX)),
            None => backoff,
        }
    }
}

/// The checked parts of a configuration, ready for the client.
pub(crate) struct Prepared {
    /// `endpoint`, then each of `replicas`.
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) authorization: Option<MetadataValue<Ascii>>,
}

/// Checks `config` and builds its endpoint; connects nothing.
pub(crate) fn prepare(config: &ClientConfig) -> Result<Prepared, ClientError> {
    if !(1..=BATCH_EVENTS_MAX).contains(&config.batch_events_max) {
        return Err(ClientError::Config(format!(
            "batch_events_max {} is not within 1..={BATCH_EVENTS_MAX}",
            config.batch_events_max
        )));
    }
    if !(1..=BATCHES_IN_FLIGHT_MAX).contains(&config.batches_in_flight) {
        return Err(ClientError::Config(format!(
            "batches_in_flight {} is not within 1..={BATCHES_IN_FLIGHT_MAX}",
            config.batches_in_flight
        )));
    }
    if config.retry.attempts_max == 0 {
        return Err(ClientError::Config("retry.attempts_max is 0".to_string()));
    }
    let authorization = match &config.token {
        Some(token) => Some(
            MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ClientError::Config("the token is not a valid header value".into()))?,
        ),
        None => None,
    };
    let endpoints = std::iter::once(&config.endpoint)
        .chain(&config.replicas)
        .map(|url| prepare_endpoint(config, url))
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        endpoints,
        authorization,
    })
}

/// The endpoint of one URL, with the connection settings and TLS.
fn prepare_endpoint(config: &ClientConfig, url: &str) -> Result<Endpoint, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(ClientError::Connect)?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        // A full batch is about 1.4 MB: HTTP/2's default 64 KiB windows would make it
        // wait for a window update round trip every 64 KiB.
        .initial_stream_window_size(WINDOW_STREAM_BYTES)
        .initial_connection_window_size(WINDOW_CONNECTION_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let https = url.starts_with("https://");
    match (&config.tls, https) {
        (Some(tls), true) => {
            endpoint = endpoint
                .tls_config(tls_client_config(tls))
                .map_err(ClientError::Connect)?;
        }
        (None, false) => {}
        (Some(_), false) => {
            return Err(ClientError::Config(format!(
                "TLS settings given for {url}: use https://"
            )));
        }
        (None, true) => {
            return Err(ClientError::Config(format!(
                "{url} needs TLS settings (the server's CA certificate)"
            )));
        }
    }
    Ok(endpoint)
}

fn tls_client_config(tls: &TlsConfig) -> ClientTlsConfig {
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_certificate_pem));
    if let Some(domain_name) = &tls.domain_name {
        config = config.domain_name(domain_name.clone());
    }
    if let Some(identity) = &tls.identity {
        config = config.identity(Identity::from_pem(
            &identity.certificate_pem,
            &identity.key_pem,
        ));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_max_and_honours_hints() {
        let policy = RetryPolicy {
            attempts_max: 10,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        };
        let waits_ms: Vec<u128> = (1..=5)
            .map(|attempt| policy.backoff(attempt, None).as_millis())
            .collect();
        assert_eq!(waits_ms, [10, 20, 40, 50, 50]);
        let hint = Some(Duration::from_millis(300));
        assert_eq!(policy.backoff(1, hint), Duration::from_millis(300));
        let huge = Some(Duration::from_secs(3600));
        assert_eq!(policy.backoff(1, huge), RETRY_AFTER_HINT_MAX);
        assert_eq!(policy.backoff(u32::MAX, None), Duration::from_millis(50));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let check = |config: ClientConfig, expected: &str| match prepare(&config) {
            Err(error) => assert!(error.to_string().contains(expected), "{error}"),
            Ok(_) => panic!("{config:?} was accepted"),
        };
        let base = || ClientConfig::new("http://127.0.0.1:1");
        check(
            ClientConfig {
                batch_events_max: 0,
                ..base()
            },
            "batch_events_max 0",
        );
        check(
            ClientConfig {
                batches_in_flight: 0,
                ..base()
            },
            "batches_in_flight 0",
        );
        check(
            ClientConfig {
                batches_in_flight: BATCHES_IN_FLIGHT_MAX + 1,
                ..base()
            },
            "batches_in_flight 65",
        );
        check(
            ClientConfig {
                batch_events_max: BATCH_EVENTS_MAX + 1,
                ..base()
            },
            "batch_events_max 8191",
        );
        check(
            ClientConfig {
                token: Some("line\nbreak".into()),
                ..base()
            },
            "token",
        );
        check(ClientConfig::new("https://127.0.0.1:1"), "needs TLS");
        check(ClientConfig::new("not a url"), "cannot connect");
        assert!(prepare(&base()).is_ok());
    }

    #[test]
    fn debug_hides_secrets() {
        let config = ClientConfig {
            token: Some("hunter2".into()),
            tls: Some(TlsConfig {
                ca_certificate_pem: b"ca".to_vec(),
                domain_name: None,
                identity: Some(ClientIdentity {
                    certificate_pem: b"cert".to_vec(),
                    key_pem: b"private key".to_vec(),
                }),
            }),
            ..ClientConfig::new("https://ledger:7400")
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("private key"),
            "{text}"
        );
    }
}
