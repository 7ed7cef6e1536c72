//! The one error type of the client, and how a gRPC status maps onto it.

use std::error::Error;
use std::fmt;
use std::time::Duration;
use tonic::Code;

/// Why a call (or [`Client::connect`](crate::Client::connect)) failed.
///
/// A refused *event* is not an error: it is a [`ResultCode`](tally_types::ResultCode) in
/// its [`CreateResult`](crate::CreateResult). An error means the call as a whole got no
/// answer; for a create call the server applied none of its events, except after
/// [`ClientError::Timeout`], [`ClientError::Unavailable`], [`ClientError::Protocol`] and
/// [`ClientError::Other`], where the events may or may not have been applied: send
/// them again with the same ids to find out (an applied event answers `exists`; a
/// linked chain applied by the lost attempt answers `exists` for its first event and
/// `linked_event_failed` for the rest).
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server wants a valid bearer token (gRPC `UNAUTHENTICATED`).
    Unauthenticated(String),
    /// The token may not run this operation or touch this ledger (`PERMISSION_DENIED`).
    PermissionDenied(String),
    /// The request was malformed or too large (`INVALID_ARGUMENT`, or refused by the
    /// client before sending, e.g. a batch above the limit).
    InvalidArgument(String),
    /// The server stayed busy (`RESOURCE_EXHAUSTED`) through every attempt.
    Busy {
        /// Attempts made, the first one included.
        attempts: u32,
    },
    /// The server could not be reached through every attempt (`UNAVAILABLE` or a broken
    /// connection).
    Unavailable {
        /// Attempts made, the first one included.
        attempts: u32,
        /// The last attempt's status.
        status: tonic::Status,
    },
    /// An attempt got no answer within the request timeout (or the server answered
    /// `DEADLINE_EXCEEDED`, or cancelled the call when its deadline passed). The
    /// events may or may not have been applied.
    Timeout {
        /// The request timeout of the configuration.
        request_timeout: Duration,
    },
    /// The endpoint, its TLS settings or the first connection failed in
    /// [`Client::connect`](crate::Client::connect).
    Connect(tonic::transport::Error),
    /// The configuration cannot be used (a token that is not a valid header value, a
    /// batch limit out of range, `https://` without TLS settings, ...).
    Config(String),
    /// A single create call carried the `linked` flag: a linked chain must be sent as one
    /// batch, never mixed with other callers' events.
    LinkedSingle,
    /// The server answered something this client cannot understand: a wrong number of
    /// results, an unknown result code, a record that does not convert.
    Protocol(String),
    /// Any other gRPC status.
    Other(tonic::Status),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unauthenticated(message) => write!(f, "unauthenticated: {message}"),
            ClientError::PermissionDenied(message) => write!(f, "permission denied: {message}"),
            ClientError::InvalidArgument(message) => write!(f, "invalid argument: {message}"),
            ClientError::Busy { attempts } => {
                write!(f, "server busy after {attempts} attempts")
            }
            ClientError::Unavailable { attempts, status } => write!(
                f,
                "server unavailable after {attempts} attempts: {}",
                status.message()
            ),
            ClientError::Timeout { request_timeout } => {
                write!(f, "no answer within {} ms", request_timeout.as_millis())
            }
            ClientError::Connect(error) => write!(f, "cannot connect: {error}"),
            ClientError::Config(message) => write!(f, "bad client configuration: {message}"),
            ClientError::LinkedSingle => write!(
                f,
                "a single create call cannot carry the linked flag; send the chain as a batch"
            ),
            ClientError::Protocol(message) => write!(f, "protocol error: {message}"),
            ClientError::Other(status) => {
                write!(f, "server error {:?}: {}", status.code(), status.message())
            }
        }
    }
}

impl Error for ClientError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ClientError::Unavailable { status, .. } | ClientError::Other(status) => Some(status),
            ClientError::Connect(error) => Some(error),
            _ => None,
        }
    }
}

impl ClientError {
    /// True for an error that one call's events can earn a whole coalesced batch (an
    /// invalid event, a ledger outside the token's rights); nothing was applied, so the
    /// calls can be sent again one by one to find whose it is.
    pub(crate) fn is_per_call(&self) -> bool {
        matches!(
            self,
            ClientError::InvalidArgument(_) | ClientError::PermissionDenied(_)
        )
    }

    /// The same error for another caller of a coalesced batch. A connect error never
    /// comes out of a call; should one, it is passed on as its text.
    pub(crate) fn duplicate(&self) -> ClientError {
        match self {
            ClientError::Unauthenticated(message) => ClientError::Unauthenticated(message.clone()),
            ClientError::PermissionDenied(message) => {
                ClientError::PermissionDenied(message.clone())
            }
            ClientError::InvalidArgument(message) => ClientError::InvalidArgument(message.clone()),
            ClientError::Busy { attempts } => ClientError::Busy {
                attempts: *attempts,
            },
            ClientError::Unavailable { attempts, status } => ClientError::Unavailable {
                attempts: *attempts,
                status: status.clone(),
            },
            ClientError::Timeout { request_timeout } => ClientError::Timeout {
                request_timeout: *request_timeout,
            },
            ClientError::Connect(error) => ClientError::Protocol(format!("connect: {error}")),
            ClientError::Config(message) => ClientError::Config(message.clone()),
            ClientError::LinkedSingle => ClientError::LinkedSingle,
            ClientError::Protocol(message) => ClientError::Protocol(message.clone()),
            ClientError::Other(status) => ClientError::Other(status.clone()),
        }
    }
}

/// What to do with a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Try again after the backoff.
    Unavailable,
    /// Try again after the backoff, or after the server's hint when longer.
    Busy {
        /// The `retry-after-ms` metadata of the status, if any.
        retry_after: Option<Duration>,
    },
    /// Give up: the error is final.
    Final,
}

/// The metadata key of the server's hint on how long to wait after `RESOURCE_EXHAUSTED`.
pub(crate) const RETRY_AFTER_KEY: &str = "retry-after-ms";

/// Classifies a status: retry it, or turn it into the caller's error.
pub(crate) fn classify(status: &tonic::Status) -> Failure {
    match status.code() {
        Code::Unavailable => Failure::Unavailable,
        Code::ResourceExhausted => Failure::Busy {
            retry_after: retry_after_hint(status),
        },
        Code::Unknown | Code::Internal | Code::Cancelled if is_connection_error(status) => {
            Failure::Unavailable
        }
        _ => Failure::Final,
    }
}

/// The server's `retry-after-ms` hint, when present and a number.
fn retry_after_hint(status: &tonic::Status) -> Option<Duration> {
    let value = status.metadata().get(RETRY_AFTER_KEY)?;
    let millis: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(millis))
}

/// True when the status stands for a broken connection rather than an answer of the
/// server: a transport or I/O error somewhere in its source chain, or an HTTP/2
/// protocol error (how a call turned away by a server's GOAWAY at shutdown is reported;
/// retrying a create is safe in any case, its ids being idempotency keys).
fn is_connection_error(status: &tonic::Status) -> bool {
    if status.message().contains("h2 protocol error") {
        return true;
    }
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The caller's error for a status that is final (not retried).
pub(crate) fn from_status(status: tonic::Status, request_timeout: Duration) -> ClientError {
    match status.code() {
        Code::Unauthenticated => ClientError::Unauthenticated(status.message().to_string()),
        Code::PermissionDenied => ClientError::PermissionDenied(status.message().to_string()),
        Code::InvalidArgument => ClientError::InvalidArgument(status.message().to_string()),
        // The server cancels a call whose deadline (the request timeout) passed, maybe
        // after its batch was queued: the outcome is unknown, as for a timeout.
        Code::DeadlineExceeded | Code::Cancelled => ClientError::Timeout { request_timeout },
        _ => ClientError::Other(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_errors() {
        let timeout = Duration::from_secs(1);
        let check = |status: tonic::Status, expected: &str| {
            let error = from_status(status, timeout);
            assert!(format!("{error:?}").starts_with(expected), "{error:?}");
        };
        check(
            tonic::Status::unauthenticated("no token"),
            "Unauthenticated",
        );
        check(
            tonic::Status::permission_denied("ledger 7"),
            "PermissionDenied",
        );
        check(tonic::Status::invalid_argument("flags"), "InvalidArgument");
        check(tonic::Status::deadline_exceeded("late"), "Timeout");
        check(tonic::Status::cancelled("Timeout expired"), "Timeout");
        check(tonic::Status::internal("bug"), "Other");
    }

    #[test]
    fn a_call_turned_away_at_shutdown_is_retried() {
        let goaway = tonic::Status::internal("h2 protocol error: error reading a body");
        assert_eq!(classify(&goaway), Failure::Unavailable);
        assert_eq!(classify(&tonic::Status::internal("bug")), Failure::Final);
    }

    #[test]
    fn busy_honours_the_retry_hint() {
        let mut status = tonic::Status::resource_exhausted("busy");
        status
            .metadata_mut()
            .insert(RETRY_AFTER_KEY, tonic::metadata::MetadataValue::from(25u64));
        let expected = Some(Duration::from_millis(25));
        assert_eq!(
            classify(&status),
            Failure::Busy {
                retry_after: expected
            }
        );
        let bare = tonic::Status::resource_exhausted("busy");
        assert_eq!(classify(&bare), Failure::Busy { retry_after: None });
        assert_eq!(
            classify(&tonic::Status::unavailable("down")),
            Failure::Unavailable
        );
        assert_eq!(classify(&tonic::Status::internal("bug")), Failure::Final);
    }
}
