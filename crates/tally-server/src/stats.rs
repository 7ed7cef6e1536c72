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
}

impl ServerStats {
    pub(crate) fn answered(&self, operation: Operation, events: usize) {
        self.calls[operation as usize][0].fetch_add(1, Ordering::Relaxed);
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
