//! What the server has answered and refused, per operation and gRPC status code.

use crate::auth::Operation;
use std::sync::atomic::{AtomicU64, Ordering};

/// gRPC status codes run from 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// Counters shared by every connection.
#[derive(Debug, Default)]
pub struct ServerStats {
    calls: [[AtomicU64; CODES]; Operation::ALL.len()],
    events: [AtomicU64; Operation::ALL.len()],
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_timed_out: AtomicU64,
}

impl ServerStats {
    pub(crate) fn answered(&self, operation: Operation, events: usize) {
        self.calls[operation as usize][0].fetch_add(1, Ordering::Relaxed);
        self.events[operation as usize].fetch_add(events as u64, Ordering::Relaxed);
    }

    /// Events sent on a stream already counted as answered.
    pub(crate) fn streamed(&self, operation: Operation, events: usize) {
        self.events[operation as usize].fetch_add(events as u64, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, operation: Operation, code: tonic::Code) {
        let code = (code as usize).min(CODES - 1);
        self.calls[operation as usize][code].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls of `operation` answered with `code`.
    pub fn calls(&self, operation: Operation, code: tonic::Code) -> u64 {
        let code = (code as usize).min(CODES - 1);
        self.calls[operation as usize][code].load(Ordering::Relaxed)
    }

    /// Events (or ids) in the calls of `operation` answered OK.
    pub fn events(&self, operation: Operation) -> u64 {
        self.events[operation as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        let before = self.connections_open.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "more connections closed than opened");
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_timed_out(&self) {
        self.connections_timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Connections admitted since start.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once because a connection limit was reached.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// Connections closed because the peer was silent past the header or idle timeout.
    pub fn connections_timed_out(&self) -> u64 {
        self.connections_timed_out.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of these counters (names prefixed `tally_server_`).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::from("# TYPE tally_server_calls_total counter\n");
        for (operation, code, count) in self.nonzero() {
            out.push_str(&format!(
                "tally_server_calls_total{{operation=\"{operation}\",code=\"{}\"}} {count}\n",
                code_name(code)
            ));
        }
        out.push_str("# TYPE tally_server_events_total counter\n");
        for operation in Operation::ALL {
            out.push_str(&format!(
                "tally_server_events_total{{operation=\"{operation}\"}} {}\n",
                self.events(operation)
            ));
        }
        let connections = [
            ("connections_open", "gauge", self.connections_open()),
            (
                "connections_accepted_total",
                "counter",
                self.connections_accepted(),
            ),
            (
                "connections_refused_total",
                "counter",
                self.connections_refused(),
            ),
            (
                "connections_timed_out_total",
                "counter",
                self.connections_timed_out(),
            ),
        ];
        for (name, kind, value) in connections {
            out.push_str(&format!(
                "# TYPE tally_server_{name} {kind}\ntally_server_{name} {value}\n"
            ));
        }
        out
    }

    /// Every non-zero counter: (operation, code, calls).
    pub fn nonzero(&self) -> Vec<(Operation, tonic::Code, u64)> {
        let mut rows = Vec::new();
        for operation in Operation::ALL {
            for code in 0..CODES {
                let count = self.calls[operation as usize][code].load(Ordering::Relaxed);
                if count > 0 {
                    rows.push((operation, tonic::Code::from(code as i32), count));
                }
            }
        }
        rows
    }
}

/// The gRPC name of a status code, as in the protocol's documentation.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
