//! The calls on each connection: counted while in flight, so that a connection's idle
//! time counts from its last call rather than its last byte (every live client answers
//! the server's keepalive pings, which would otherwise keep a connection that makes no
//! calls open for ever); and their requests' bytes, bounded for each peer address and
//! in all while tonic reads them. Only calls past the token check count (and health
//! checks, which take no token): refused calls do not keep a connection open.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Bytes, Service, http};
use tonic::server::NamedService;

/// One connection's calls: how many are in flight, and when the last one ended.
#[derive(Debug)]
pub(crate) struct ConnectionCalls {
    state: Mutex<CallsState>,
}

#[derive(Debug)]
struct CallsState {
    in_flight: usize,
    /// When the last call ended; the connection's start before the first.
    last_end: Instant,
}

impl ConnectionCalls {
    pub(crate) fn new() -> Arc<ConnectionCalls> {
        Arc::new(ConnectionCalls {
            state: Mutex::new(CallsState {
                in_flight: 0,
                last_end: Instant::now(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CallsState> {
        // The counts stay whole whatever panicked while holding them.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start(self: &Arc<Self>) -> CallGuard {
        self.state().in_flight += 1;
        CallGuard(Arc::clone(self))
    }

    /// Since when the connection has had no call in flight; `None` while one is.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let state = self.state();
        (state.in_flight == 0).then_some(state.last_end)
    }
}

/// A call in flight: counted from its request until its answer's body is done or
/// dropped (for a stream, until it ends).
#[derive(Debug)]
struct CallGuard(Arc<ConnectionCalls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        assert!(state.in_flight > 0, "a call ended that never started");
        state.in_flight -= 1;
        state.last_end = Instant::now();
    }
}

/// What each request learns of its connection (tonic puts it in the request's
/// extensions): the calls on it, and the request bytes its peer address and the whole
/// server may be reading.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) calls: Arc<ConnectionCalls>,
    pub(crate) request_bytes: [Arc<RequestBytes>; 2],
    /// How long a request's body may take to arrive whole (the header timeout).
    pub(crate) body_timeout: Duration,
}

/// `request` with its body's bytes taken from its connection's budgets as they
/// arrive, and the whole body due within the connection's body timeout. Called for
/// admitted calls only, so a caller without a token draws on no budget.
pub(crate) fn budgeted(request: http::Request<Body>) -> http::Request<Body> {
    let Some(info) = request.extensions().get::<ConnectionInfo>().cloned() else {
        return request;
    };
    request.map(|body| {
        Body::new(BudgetedBody {
            body,
            budgets: info.request_bytes,
            held: 0,
            deadline: Box::pin(tokio::time::sleep(info.body_timeout)),
            body_timeout: info.body_timeout,
        })
    })
}

/// `inner` with each call counted on its connection.
#[derive(Debug, Clone)]
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
}

impl<S> Service<http::Request<Body>> for Counted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // tonic puts the connection's own info in every request's extensions, for a
        // TLS connection beside the TLS details.
        let info = request.extensions().get::<ConnectionInfo>();
        let guard = info.map(|info| info.calls.start());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Body::new(GuardedBody { body, guard })))
        })
    }
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

/// An answer's body that holds its call's guard until it is done or dropped.
struct GuardedBody {
    body: Body,
    guard: Option<CallGuard>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Bytes of requests being read, within a bound: one budget for each peer address,
/// one for the whole server. tonic reads a call's whole message before its handler
/// runs, so without it a peer could make the server hold up to its connections ×
/// streams × `message_bytes_max`.
#[derive(Debug)]
pub(crate) struct RequestBytes {
    held: AtomicUsize,
    max: usize,
}

impl RequestBytes {
    pub(crate) fn new(max: usize) -> Arc<RequestBytes> {
        Arc::new(RequestBytes {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes `bytes` if they fit.
    fn take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&after| after <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        let before = self.held.fetch_sub(bytes, Ordering::AcqRel);
        assert!(before >= bytes, "request bytes given back twice");
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// A request's body that takes each frame's bytes from its peer's budget and the
/// server's as it arrives, and gives them back when the body is dropped (its message
/// decoded, or the call ended). A frame over either bound fails the call with
/// `RESOURCE_EXHAUSTED`, and a body not whole by its deadline with `INVALID_ARGUMENT`,
/// before its handler runs: nothing of it is applied.
struct BudgetedBody {
    body: Body,
    budgets: [Arc<RequestBytes>; 2],
    held: usize,
    /// When the whole body must have arrived: a stalled upload gives its bytes back.
    deadline: Pin<Box<Sleep>>,
    body_timeout: Duration,
}

impl BudgetedBody {
    fn take(&mut self, bytes: usize) -> Result<(), Status> {
        let [peer, all] = &self.budgets;
        if !peer.take(bytes) {
            return Err(Status::resource_exhausted(format!(
                "calls from this address are reading more than {} request bytes: \
                 retry once earlier calls are answered",
                peer.max
            )));
        }
        if !all.take(bytes) {
            peer.give_back(bytes);
            return Err(Status::resource_exhausted(format!(
                "the server is reading more than {} request bytes: retry later",
                all.max
            )));
        }
        self.held += bytes;
        Ok(())
    }
}

impl Drop for BudgetedBody {
    fn drop(&mut self) {
        for budget in &self.budgets {
            budget.give_back(self.held);
        }
    }
}

impl http_body::Body for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                return Poll::Ready(Some(Err(Status::invalid_argument(format!(
                    "the request did not arrive whole within {} s",
                    self.body_timeout.as_secs_f64()
                )))));
            }
        };
        let bytes = match &frame {
            Some(Ok(frame)) => frame.data_ref().map_or(0, Bytes::len),
            _ => 0,
        };
        if let Err(refused) = self.take(bytes) {
            return Poll::Ready(Some(Err(refused)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_are_taken_within_the_bound_and_given_back() {
        let budget = RequestBytes::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "over the bound");
        assert!(budget.take(40));
        assert!(!budget.take(1));
        budget.give_back(100);
        assert_eq!(budget.held(), 0);
        assert!(!budget.take(101), "one frame over the whole bound");
    }

    #[tokio::test]
    async fn a_body_past_its_peers_budget_is_refused_and_gives_back_what_it_took() {
        let (peer, all) = (RequestBytes::new(100), RequestBytes::new(1_000));
        let budgeted = |budgets: [Arc<RequestBytes>; 2]| BudgetedBody {
            body: Body::empty(),
            budgets,
            held: 0,
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(60))),
            body_timeout: Duration::from_secs(60),
        };
        let mut first = budgeted([Arc::clone(&peer), Arc::clone(&all)]);
        first.take(60).expect("within both budgets");
        let mut second = budgeted([Arc::clone(&peer), Arc::clone(&all)]);
        let refused = second.take(50).expect_err("past the peer's budget");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("request bytes"));
        assert_eq!(
            (peer.held(), all.held()),
            (60, 60),
            "the refused take holds nothing"
        );
        drop(first);
        assert_eq!((peer.held(), all.held()), (0, 0));
        second.take(50).expect("room once the first is read");
        // Past the server's budget: the peer's share is given back too.
        let small_all = RequestBytes::new(40);
        let mut third = budgeted([Arc::clone(&peer), Arc::clone(&small_all)]);
        let refused = third.take(45).expect_err("past the server's budget");
        assert!(refused.message().contains("the server"));
        assert_eq!(peer.held(), 50);
    }
}
