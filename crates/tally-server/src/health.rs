//! The gRPC health protocol, with watches that end when the server stops.
//!
//! `tonic_health` keeps a `Watch` open for as long as its status can change. A watch
//! is a call in flight, so a shutdown would wait the whole drain timeout for every
//! watcher to leave (and a watch takes no token). Here a watch ends once the server
//! stops, NOT_SERVING being the last status it sends.

use crate::backend::{Backend, not_ready};
use crate::service::LedgerService;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tally_proto::LedgerServer;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// How often a replica's readiness is looked at ([`follow_readiness`]).
const READINESS_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The service names whose status a server reports: `""` (the whole server, in the
/// health protocol) and the ledger service's.
const SERVICES: [&str; 2] = [
    "",
    <LedgerServer<LedgerService> as tonic::server::NamedService>::NAME,
];

/// Sets the status of both services of [`SERVICES`].
pub(crate) async fn set_all(health: &HealthReporter, status: tonic_health::ServingStatus) {
    for service in SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Keeps a replica's statuses to whether it can serve (`crate::backend::not_ready`:
/// a leader known, a member of its cluster), looking every [`READINESS_CHECK_EVERY`],
/// until the server stops; its calls answer `UNAVAILABLE` meanwhile, and a balancer
/// should send them elsewhere. A status set just as the stop began is set again.
pub(crate) async fn follow_readiness(
    health: HealthReporter,
    backend: Backend,
    mut stopping: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus as Serving;
    let mut ready = true;
    while !*stopping.borrow() {
        let now_ready = not_ready(&backend).is_none();
        if now_ready != ready {
            ready = now_ready;
            let status = if ready {
                Serving::Serving
            } else {
                Serving::NotServing
            };
            set_all(&health, status).await;
            if *stopping.borrow() {
                set_all(&health, Serving::NotServing).await;
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => {}
            () = tokio::time::sleep(READINESS_CHECK_EVERY) => {}
        }
    }
}

/// The health service: `tonic_health`'s, with watches that end on stopping.
pub(crate) struct ServerHealth {
    inner: HealthService,
    /// True once the server stops (set after the statuses say NOT_SERVING).
    stopping: watch::Receiver<bool>,
}

impl ServerHealth {
    pub(crate) fn new(reporter: HealthReporter, stopping: watch::Receiver<bool>) -> Self {
        ServerHealth {
            inner: HealthService::from_health_reporter(reporter),
            stopping,
        }
    }
}

#[tonic::async_trait]
impl Health for ServerHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilStopping;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            // An error means the server is gone: stopped all the same.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        Ok(Response::new(UntilStopping {
            statuses: Box::pin(statuses),
            stopped: Some(Box::pin(stopped)),
            last_sent: None,
        }))
    }
}

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// A watch's statuses until the server stops, then NOT_SERVING (unless it was the last
/// sent) and the end.
pub(crate) struct UntilStopping {
    statuses: Statuses,
    /// `None` once stopped and NOT_SERVING sent.
    stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The status last sent.
    last_sent: Option<i32>,
}

impl Stream for UntilStopping {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(stopped) = self.stopped.as_mut() else {
            return Poll::Ready(None);
        };
        if stopped.as_mut().poll(cx).is_ready() {
            self.stopped = None;
            let status = ServingStatus::NotServing as i32;
            if self.last_sent == Some(status) {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Ok(HealthCheckResponse { status })));
        }
        let next = self.statuses.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(answer))) = &next {
            self.last_sent = Some(answer.status);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn answer(status: ServingStatus) -> Result<HealthCheckResponse, Status> {
        Ok(HealthCheckResponse {
            status: status as i32,
        })
    }

    /// A watch over `statuses` (then nothing more, never ending) and the stop's sender.
    fn watch(statuses: Vec<ServingStatus>) -> (UntilStopping, watch::Sender<bool>) {
        let (stop, mut stopping) = watch::channel(false);
        let statuses =
            tokio_stream::iter(statuses.into_iter().map(answer)).chain(tokio_stream::pending());
        let stopped = async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        let watch = UntilStopping {
            statuses: Box::pin(statuses),
            stopped: Some(Box::pin(stopped)),
            last_sent: None,
        };
        (watch, stop)
    }

    async fn sent(watch: &mut UntilStopping) -> Option<ServingStatus> {
        let next = watch.next().await?;
        Some(next.expect("a status").status())
    }

    #[tokio::test]
    async fn a_watch_ends_with_one_not_serving_whichever_comes_first() {
        use ServingStatus::{NotServing, Serving};
        // The status reached the watch before the stop did: not sent twice.
        let (mut late, stop) = watch(vec![Serving, NotServing]);
        assert_eq!(sent(&mut late).await, Some(Serving));
        assert_eq!(sent(&mut late).await, Some(NotServing));
        stop.send_replace(true);
        assert_eq!(sent(&mut late).await, None);
        // The stop came first: NOT_SERVING is sent all the same, once.
        let (mut early, stop) = watch(vec![Serving]);
        assert_eq!(sent(&mut early).await, Some(Serving));
        stop.send_replace(true);
        assert_eq!(sent(&mut early).await, Some(NotServing));
        assert_eq!(sent(&mut early).await, None);
    }
}
