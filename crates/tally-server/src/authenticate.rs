//! The bearer token check in front of the ledger service: a call is authenticated from
//! its headers alone, before its body is read or decoded, so a caller without a known
//! token cannot make the server buffer and decode a message of up to
//! `message_bytes_max`. An admitted call carries its token's [`Rights`] (an
//! `Arc<Rights>`) in its extensions; the handlers check the operation and the ledgers.

use crate::auth::{Operation, Rights, Tokens};
use crate::stats::ServerStats;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// Who may call: everyone (no token file) or the holders of known tokens.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    Open(Arc<Rights>),
    Tokens(Arc<Tokens>),
}

impl Access {
    pub(crate) fn open() -> Access {
        Access::Open(Arc::new(Rights::all()))
    }

    fn rights(&self, headers: &http::HeaderMap) -> Result<Arc<Rights>, Status> {
        match self {
            Access::Open(rights) => Ok(Arc::clone(rights)),
            Access::Tokens(tokens) => {
                let header = headers.get(http::header::AUTHORIZATION);
                tokens
                    .authenticate_header(header.map(http::HeaderValue::as_bytes))
                    .map(Arc::clone)
            }
        }
    }
}

/// `inner` (the ledger service) behind the token check.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    pub(crate) inner: S,
    pub(crate) access: Access,
    pub(crate) stats: Arc<ServerStats>,
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
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

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.access.rights(request.headers()) {
            Ok(rights) => {
                request.extensions_mut().insert(rights);
                let answer = self.inner.call(crate::calls::budgeted(request));
                Box::pin(async move {
                    let mut response = answer.await?;
                    refuse_undecodable(&mut response);
                    Ok(response)
                })
            }
            Err(status) => {
                // An unknown method is refused too, but counted under no operation.
                let operation = operation_of(request.uri().path());
                if let Some(operation) = operation {
                    self.stats.refused(operation, status.code());
                }
                tracing::info!(
                    operation = operation.map(Operation::name),
                    code = ?status.code(),
                    reason = status.message(),
                    "refused"
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Turns tonic's `INTERNAL` for a request it could not decode (not protobuf, or a
/// gRPC frame cut short) into `INVALID_ARGUMENT`: the call never reached the ledger,
/// and `INVALID_ARGUMENT` tells the caller that nothing was applied, where `INTERNAL`
/// leaves the outcome unknown. Such a refusal is a trailers-only answer, its status in
/// the headers; an answer whose body has begun is left as it is.
fn refuse_undecodable(response: &mut http::Response<Body>) {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return;
    };
    let undecodable = status.code() == tonic::Code::Internal
        && (status
            .message()
            .starts_with("failed to decode Protobuf message")
            || status
                .message()
                .starts_with("Unexpected EOF decoding stream")
            || status.message().starts_with("Missing request message"));
    if undecodable {
        let refused =
            Status::invalid_argument(format!("undecodable request: {}", status.message()));
        // A status message is percent-encoded into the header: it always fits.
        let _ = refused.add_header(response.headers_mut());
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

/// The operation a gRPC path calls, e.g. `/tally.v1.Ledger/CreateTransfers`.
fn operation_of(path: &str) -> Option<Operation> {
    let method = path.strip_prefix("/tally.v1.Ledger/")?;
    let operation = match method {
        "CreateAccounts" => Operation::CreateAccounts,
        "CreateTransfers" => Operation::CreateTransfers,
        "LookupAccounts" => Operation::LookupAccounts,
        "LookupTransfers" => Operation::LookupTransfers,
        "GetAccountTransfers" => Operation::GetAccountTransfers,
        "GetChangeEvents" | "SubscribeChangeEvents" => Operation::GetChangeEvents,
        "GetAccountBalances" => Operation::GetAccountBalances,
        "QueryAccounts" => Operation::QueryAccounts,
        "QueryTransfers" => Operation::QueryTransfers,
        _ => return None,
    };
    Some(operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_path() {
        for operation in Operation::ALL {
            let method: String = operation
                .name()
                .split('_')
                .map(|word| word[..1].to_uppercase() + &word[1..])
                .collect();
            let path = format!("/tally.v1.Ledger/{method}");
            assert_eq!(operation_of(&path), Some(operation), "{path}");
        }
        let subscribe = operation_of("/tally.v1.Ledger/SubscribeChangeEvents");
        assert_eq!(subscribe, Some(Operation::GetChangeEvents));
        assert_eq!(operation_of("/tally.v1.Ledger/Teleport"), None);
        assert_eq!(operation_of("/grpc.health.v1.Health/Check"), None);
    }
}
