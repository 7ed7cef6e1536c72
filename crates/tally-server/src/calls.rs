//! The calls in flight on each connection, so that a connection's idle time counts
//! from its last call rather than its last byte: every live client answers the
//! server's keepalive pings, which would otherwise keep a connection that makes no
//! calls open for ever.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::time::Instant;
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
/// extensions): the calls on it.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) calls: Arc<ConnectionCalls>,
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
