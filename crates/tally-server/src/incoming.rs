//! The accepting side of the listener: connection limits and timeouts, below TLS and
//! HTTP/2.
//!
//! Every accepted TCP connection takes a slot: at most `connections_max` in all and
//! `connections_per_ip_max` per peer address ([`peer_key`]: an IPv6 peer by its /64
//! network). A connection over either limit is closed
//! at once (the peer sees the close before any byte), counted and logged; the clients
//! already connected are untouched. An admitted connection is wrapped in a
//! [`LimitedStream`], which must see its first bytes within `header_timeout` and is
//! closed after `idle_timeout` without a call in flight ([`crate::calls`]); its slot is
//! released when it is dropped, whatever closed it. Every connection also watches one
//! shared close signal: once it is set (a stop past its drain timeout), its reads fail,
//! so the task serving it ends and drops it.
//!
//! Invariant: the slot counts equal the number of live `LimitedStream`s (each holds one
//! [`Slot`], whose drop gives it back).

use crate::calls::{ConnectionCalls, ConnectionInfo, RequestBytes};
use crate::config::Limits;
use crate::stats::ServerStats;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// How much later an idle deadline is looked at again when bytes arrived with it:
/// far longer than counting a call takes, far shorter than the keepalive interval.
const IDLE_GRACE: Duration = Duration::from_millis(20);

/// Open connections, in all and per peer address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, FromIp>,
}

/// What one peer address holds: its connections, and the request bytes they share.
#[derive(Debug)]
struct FromIp {
    connections: usize,
    request_bytes: Arc<RequestBytes>,
}

/// Hands out connection slots within the limits.
#[derive(Debug)]
pub(crate) struct Admission {
    connections_max: usize,
    connections_per_ip_max: usize,
    request_bytes_per_ip_max: usize,
    /// The request bytes every connection shares.
    request_bytes: Arc<RequestBytes>,
    open: Mutex<Open>,
    stats: Arc<ServerStats>,
}

impl Admission {
    pub(crate) fn new(limits: &Limits, stats: Arc<ServerStats>) -> Arc<Admission> {
        Arc::new(Admission {
            connections_max: limits.connections_max,
            connections_per_ip_max: limits.connections_per_ip_max,
            request_bytes_per_ip_max: limits.request_bytes_per_ip_max,
            request_bytes: RequestBytes::new(limits.request_bytes_max),
            open: Mutex::new(Open::default()),
            stats,
        })
    }

    /// The map is only counted under the lock, never left half-updated, so a poisoned
    /// lock still holds consistent counts.
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a connection from `peer`, or `None` when a limit is reached.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        let ip = peer_key(peer.ip());
        let mut open = self.open();
        let from_ip = open.per_ip.get(&ip).map_or(0, |from| from.connections);
        if open.total >= self.connections_max || from_ip >= self.connections_per_ip_max {
            let (total, connections_max) = (open.total, self.connections_max);
            drop(open);
            self.stats.connection_refused();
            tracing::warn!(
                %peer,
                open_total = total,
                open_from_ip = from_ip,
                connections_max,
                connections_per_ip_max = self.connections_per_ip_max,
                "connection refused: over the connection limit"
            );
            return None;
        }
        open.total += 1;
        let from = open.per_ip.entry(ip).or_insert_with(|| FromIp {
            connections: 0,
            request_bytes: RequestBytes::new(self.request_bytes_per_ip_max),
        });
        from.connections += 1;
        let request_bytes = [
            Arc::clone(&from.request_bytes),
            Arc::clone(&self.request_bytes),
        ];
        assert!(open.total <= self.connections_max);
        drop(open);
        self.stats.connection_opened();
        Some(Slot {
            admission: Arc::clone(self),
            ip,
            request_bytes,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open();
        assert!(open.total > 0, "a slot released twice");
        open.total -= 1;
        match open.per_ip.get_mut(&ip) {
            Some(from) if from.connections > 1 => from.connections -= 1,
            Some(_) => {
                open.per_ip.remove(&ip);
            }
            None => panic!("a slot released for {ip}, which holds none"),
        }
        drop(open);
        self.stats.connection_closed();
    }

    /// Connections open now (for tests and metrics).
    #[cfg(test)]
    fn open_total(&self) -> usize {
        self.open().total
    }
}

/// The address whose limits a peer shares: an IPv4 address as it is (also when it
/// arrives mapped into IPv6), an IPv6 address by its /64 network, which is what one
/// host or site is given: it could otherwise take new limits with every address.
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
        },
    }
}

/// One connection's place within the limits; given back on drop.
#[derive(Debug)]
struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    /// Its peer address's request bytes, then the server's.
    request_bytes: [Arc<RequestBytes>; 2],
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

/// The listener as a stream of admitted connections, for
/// `serve_with_incoming_shutdown`. Refused connections never leave it.
#[derive(Debug)]
pub(crate) struct Incoming {
    listener: TcpListener,
    admission: Arc<Admission>,
    header_timeout: Duration,
    idle_timeout: Duration,
    close: watch::Receiver<bool>,
}

impl Incoming {
    /// Admits connections from `listener`; each is closed once `close` holds `true`.
    pub(crate) fn new(
        listener: TcpListener,
        limits: &Limits,
        stats: Arc<ServerStats>,
        close: watch::Receiver<bool>,
    ) -> Self {
        Incoming {
            listener,
            admission: Admission::new(limits, stats),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            close,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<LimitedStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let (stream, peer) = match ready!(this.listener.poll_accept(cx)) {
                Ok(accepted) => accepted,
                // tonic logs it and, for descriptor exhaustion, pauses before the next.
                Err(error) => return Poll::Ready(Some(Err(error))),
            };
            let Some(slot) = this.admission.admit(peer) else {
                // Dropping the stream closes it at once.
                continue;
            };
            // Answers are small and latency matters: never wait to coalesce them.
            let _ = stream.set_nodelay(true);
            return Poll::Ready(Some(Ok(LimitedStream::new(
                stream,
                slot,
                (this.header_timeout, this.idle_timeout),
                CloseSignal::new(this.close.clone()),
            ))));
        }
    }
}

/// Ready once the server closes every connection; never when the server is dropped
/// without a stop (the sender gone).
struct CloseSignal {
    set: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Set once `set` is ready: a finished future must not be polled again.
    closed: bool,
}

impl CloseSignal {
    fn new(mut close: watch::Receiver<bool>) -> CloseSignal {
        let set = Box::pin(async move {
            if close.wait_for(|close| *close).await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        CloseSignal { set, closed: false }
    }

    /// Ready with an error once the close signal is set.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.closed {
            ready!(self.set.as_mut().poll(cx));
            self.closed = true;
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server is stopping and its drain timeout has passed",
        ))
    }
}

impl fmt::Debug for CloseSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseSignal")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// A TCP connection that must speak first within `header_timeout` and then go no
/// longer than `idle_timeout` without a call in flight; reads fail with `TimedOut` past
/// either, and with `ConnectionAborted` once the server closes every connection.
#[derive(Debug)]
pub(crate) struct LimitedStream {
    inner: TcpStream,
    slot: Slot,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When the current allowance of silence ends.
    deadline: Instant,
    /// The timer, armed at `deadline` or earlier; re-armed lazily when it fires, so a
    /// busy connection does not touch the timer on every read. Invariant: it never
    /// fires after `deadline`.
    timer: Pin<Box<Sleep>>,
    spoken: bool,
    /// Bytes arrived since the idle deadline was last looked at: perhaps a call that
    /// is not counted yet.
    heard: bool,
    /// The calls on this connection: it is idle only while none is in flight.
    calls: Arc<ConnectionCalls>,
    close: CloseSignal,
}

impl LimitedStream {
    /// `timeouts`: the header timeout, then the idle timeout.
    fn new(
        inner: TcpStream,
        slot: Slot,
        (header_timeout, idle_timeout): (Duration, Duration),
        close: CloseSignal,
    ) -> LimitedStream {
        let deadline = Instant::now() + header_timeout;
        LimitedStream {
            inner,
            slot,
            header_timeout,
            idle_timeout,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            spoken: false,
            heard: false,
            calls: ConnectionCalls::new(),
            close,
        }
    }

    /// Ready with an error once the peer has sent nothing past the header timeout, or
    /// has had no call in flight for the idle timeout.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            if now >= self.deadline {
                if !self.spoken {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "header timeout: the peer sent nothing in time",
                    ));
                }
                let heard = std::mem::take(&mut self.heard);
                match self.calls.idle_since() {
                    None => self.deadline = now + self.idle_timeout,
                    Some(since) if since + self.idle_timeout > now => {
                        self.deadline = since + self.idle_timeout;
                    }
                    // Bytes came with the deadline: a call may be on its way to being
                    // counted. Look again a moment later.
                    Some(_) if heard => self.deadline = now + IDLE_GRACE,
                    Some(_) => {
                        return Poll::Ready(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "idle timeout: no call in time",
                        ));
                    }
                }
            }
            let deadline = self.deadline;
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(error) = this.close.poll_closed(cx) {
            tracing::info!(peer = ?this.inner.peer_addr().ok(), %error, "connection closed");
            return Poll::Ready(Err(error));
        }
        let filled_before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let read = result.is_ok() && buf.filled().len() > filled_before;
                this.heard |= read && this.spoken;
                if read && !this.spoken {
                    // From the header timeout to the idle timeout, which counts calls,
                    // not bytes: answers to the server's keepalive pings are bytes.
                    this.spoken = true;
                    this.deadline = Instant::now() + this.idle_timeout;
                    // Deadlines only move later, except this move to a shorter idle
                    // timeout: re-arm for that one.
                    if this.deadline < this.timer.deadline() {
                        let deadline = this.deadline;
                        this.timer.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_silence(cx) {
                Poll::Ready(error) => {
                    this.slot.admission.stats.connection_timed_out();
                    tracing::info!(peer = ?this.inner.peer_addr().ok(), %error, "connection closed");
                    Poll::Ready(Err(error))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for LimitedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            calls: Arc::clone(&self.calls),
            request_bytes: self.slot.request_bytes.clone(),
            body_timeout: self.header_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections_max: usize, connections_per_ip_max: usize) -> Limits {
        Limits {
            connections_max,
            connections_per_ip_max,
            ..Limits::default()
        }
    }

    #[test]
    fn slots_are_bounded_in_all_and_per_address_and_given_back() {
        let stats = Arc::new(ServerStats::default());
        let admission = Admission::new(&limits(3, 2), Arc::clone(&stats));
        let a: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:1000".parse().expect("addr");
        let a1 = admission.admit(a).expect("first from a");
        let a2 = admission.admit(a).expect("second from a");
        assert!(
            admission.admit(a).is_none(),
            "third from a: per-address limit"
        );
        let b1 = admission.admit(b).expect("first from b");
        assert!(admission.admit(b).is_none(), "fourth in all: total limit");
        assert_eq!(admission.open_total(), 3);
        drop(a1);
        let a3 = admission.admit(a).expect("a slot was given back");
        drop((a2, a3, b1));
        assert_eq!(admission.open_total(), 0);
        assert_eq!(stats.connections_refused(), 2);
        assert_eq!(stats.connections_open(), 0);
    }

    #[test]
    fn an_ipv6_network_of_64_bits_shares_one_peer_address_limit() {
        let stats = Arc::new(ServerStats::default());
        let admission = Admission::new(&limits(10, 2), Arc::clone(&stats));
        let addr = |text: &str| text.parse::<SocketAddr>().expect("addr");
        let one = admission
            .admit(addr("[2001:db8:1:2::1]:1000"))
            .expect("first");
        let two = admission
            .admit(addr("[2001:db8:1:2:ffff::9]:1000"))
            .expect("second");
        assert!(
            admission
                .admit(addr("[2001:db8:1:2:abcd::7]:1000"))
                .is_none(),
            "a third address of the same /64"
        );
        let other = admission.admit(addr("[2001:db8:1:3::1]:1000"));
        assert!(other.is_some(), "the next /64 has limits of its own");
        // An IPv4 peer mapped into IPv6 counts as that IPv4 address.
        let v4 = admission.admit(addr("10.0.0.1:1000")).expect("v4");
        let mapped = admission
            .admit(addr("[::ffff:10.0.0.1]:1000"))
            .expect("mapped");
        assert!(
            admission.admit(addr("10.0.0.1:1001")).is_none(),
            "third from 10.0.0.1"
        );
        assert_eq!(
            peer_key("2001:db8::1:2:3:4".parse().expect("ip")),
            "2001:db8::".parse::<IpAddr>().expect("ip")
        );
        drop((one, two, other, v4, mapped));
        assert_eq!(admission.open_total(), 0);
    }
}
