//! The admission gate: lets submitters in until shutdown closes it, and lets shutdown
//! wait until every submitter that got in has finished its push.
//!
//! One atomic word: bit 63 is CLOSED, the low bits count submitters inside.
//! * [`Gate::enter`]: `fetch_add(1)`; if the value before had CLOSED, undo and refuse;
//!   else the caller holds a [`Pass`] until its push is done (drop = `fetch_sub(1)`).
//! * [`Gate::close`]: `fetch_or(CLOSED)`, then wait until the word is exactly CLOSED
//!   (nobody inside).
//!
//! All updates are read-modify-writes of one location, so they sit in one modification
//! order: an enter ordered before the close is counted and waited for; an enter ordered
//! after it sees CLOSED and turns back. (A two-variable Dekker handshake would need
//! SeqCst's global order, which loom cannot check; this needs only AcqRel.)
//! Public (and hidden) only for that model check: not part of the API.
//! `tests/loom_gate.rs` checks every interleaving with loom (`RUSTFLAGS="--cfg loom"`).

use crate::sync::{AtomicUsize, Ordering, yield_now};

const CLOSED: usize = 1 << (usize::BITS - 1);

/// The admission gate (see the module documentation).
#[derive(Debug, Default)]
pub struct Gate {
    word: AtomicUsize,
}

/// Proof of admission; leaves the gate when dropped.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let before = self.gate.word.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before & !CLOSED > 0, "a pass leaves a gate it entered");
    }
}

impl Gate {
    /// An open gate with nobody inside.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters, unless the gate is closed.
    pub fn enter(&self) -> Option<Pass<'_>> {
        let before = self.word.fetch_add(1, Ordering::AcqRel);
        assert!(
            before & !CLOSED < CLOSED - 1,
            "submitter count overflows the gate"
        );
        if before & CLOSED != 0 {
            self.word.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Pass { gate: self })
    }

    /// Closes the gate and waits until every holder of a [`Pass`] has left. Passes are
    /// held only for a bounded push, never across a backpressure wait, so this ends.
    pub fn close(&self) {
        self.word.fetch_or(CLOSED, Ordering::AcqRel);
        while self.word.load(Ordering::Acquire) != CLOSED {
            yield_now();
        }
    }

    /// True once [`Gate::close`] has begun.
    pub fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_refuses_and_an_open_one_counts() {
        let gate = Gate::new();
        let pass = gate.enter().expect("open gate admits");
        assert!(!gate.is_closed());
        drop(pass);
        gate.close();
        assert!(gate.is_closed());
        assert!(gate.enter().is_none());
    }
}
