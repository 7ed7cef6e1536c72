//! Prometheus metrics over HTTP/1.1 (`--metrics ADDR`): `GET /metrics` answers the
//! engine's figures and the server's counters as Prometheus text; `GET /health` (the
//! process answers: 200) and `GET /ready` (200 while it serves, 503 once it is
//! stopping or while a replica cannot serve) give the gRPC health protocol's answer to
//! probes that speak HTTP; every
//! other path is 404. A deliberately small responder: one request per connection, the request
//! bounded in size and in time, a bounded number of scrapes at once, in all and per
//! peer address.

use crate::backend::{Backend, metrics_text, not_ready};
use crate::stats::ServerStats;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};

/// The largest request head read; a scrape's is a few hundred bytes.
const REQUEST_BYTES_MAX: usize = 8 << 10;
/// A scraper must send its whole request head within this time (it sends it at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Scrapes answered at once; more wait in the listen backlog.
const SCRAPES_CONCURRENT_MAX: usize = 16;
/// Scrapes answered at once for one peer address; more are closed at once, so that
/// one peer holding connections open cannot keep probes from others waiting.
const SCRAPES_PER_IP_MAX: usize = 4;
/// A whole exchange (request, then answer) must be done within this time, so a peer
/// that never reads its answer does not keep its place.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a scrape reads.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub(crate) backend: Backend,
    pub(crate) stats: Arc<ServerStats>,
    /// True once the server is shutting down: no longer ready.
    pub(crate) stopping: watch::Receiver<bool>,
}

impl Sources {
    fn render(&self) -> String {
        let mut text = metrics_text(&self.backend);
        text.push_str(&self.stats.to_prometheus());
        text
    }
}

/// Answers scrapes on `listener` until `stop` fires.
pub(crate) async fn serve(listener: TcpListener, sources: Sources, stop: oneshot::Receiver<()>) {
    let permits = Arc::new(Semaphore::new(SCRAPES_CONCURRENT_MAX));
    let per_ip = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));
    let accepting = async {
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    // Descriptor exhaustion and the like: let it pass before retrying.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(share) = PeerShare::take(&per_ip, crate::incoming::peer_key(peer.ip())) else {
                tracing::debug!(%peer, "metrics: over the per-address limit, closed");
                continue; // Dropping the stream and the permit.
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &sources)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics: scrape failed"),
                    Err(_) => tracing::debug!(%peer, "metrics: scrape not done in time"),
                }
                drop((share, permit));
            });
        }
    };
    tokio::select! {
        () = accepting => {}
        _ = stop => {}
    }
}

/// One scrape's place in its peer address's share; given back on drop.
struct PeerShare {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerShare {
    fn take(per_ip: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<PeerShare> {
        let mut open = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= SCRAPES_PER_IP_MAX {
            return None;
        }
        *count += 1;
        Some(PeerShare {
            per_ip: Arc::clone(per_ip),
            ip,
        })
    }
}

impl Drop for PeerShare {
    fn drop(&mut self) {
        let mut open = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn answer(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    let response = match head {
        Err(_) => respond(408, "Request Timeout", "request not received in time\n"),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(None)) => respond(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
        Ok(Ok(Some(head))) => route(&head, sources),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The request head (through the blank line), or `None` when it exceeds the bound.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..read]);
        if head.windows(4).any(|window| window == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > REQUEST_BYTES_MAX {
            return Ok(None);
        }
    }
}

fn route(head: &[u8], sources: &Sources) -> Vec<u8> {
    let line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|byte| *byte == b' ');
    let (method, target) = (parts.next(), parts.next());
    // A scraper may add a query string; the path alone decides.
    let path = target.map(|target| {
        target
            .split(|byte| *byte == b'?')
            .next()
            .unwrap_or_default()
    });
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let mut response = response_head(200, "OK", "text/plain; version=0.0.4");
            let body = sources.render();
            response
                .extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            response.extend_from_slice(body.as_bytes());
            response
        }
        (Some(b"GET"), Some(b"/health")) => respond(200, "OK", "ok\n"),
        (Some(b"GET"), Some(b"/ready")) => {
            let stopping = *sources.stopping.borrow();
            match (stopping, not_ready(&sources.backend)) {
                (true, _) => respond(503, "Service Unavailable", "stopping\n"),
                (false, Some(why)) => {
                    respond(503, "Service Unavailable", &format!("not ready: {why}\n"))
                }
                (false, None) => respond(200, "OK", "ready\n"),
            }
        }
        (Some(b"GET"), Some(_)) => respond(
            404,
            "Not Found",
            "not found: try /metrics, /health or /ready\n",
        ),
        (Some(_), Some(_)) => respond(405, "Method Not Allowed", "only GET\n"),
        _ => respond(400, "Bad Request", "malformed request line\n"),
    }
}

fn response_head(status: u16, reason: &str, content_type: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nConnection: close\r\n")
        .into_bytes()
}

fn respond(status: u16, reason: &str, body: &str) -> Vec<u8> {
    let mut response = response_head(status, reason, "text/plain; charset=utf-8");
    response.extend_from_slice(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    response
}
