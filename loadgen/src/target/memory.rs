//! Fake targets for tests and for trying the load generator without the engine:
//! [`MemoryTarget`], the reference state machine ([`tally_state::StateMachine`]) behind
//! one mutex with a wall clock, and [`StallingTarget`], which freezes another target for
//! a window of time.
//!
//! `MemoryTarget` has no rules of its own, so it cannot drift from the ledger's: every
//! check, chain and expiry is the state machine's. It is not durable and has no queue,
//! so it never answers `busy`.

use super::{Outcome, SubmitFailure, Target};
use crate::stats::wall_ns;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_state::StateMachine;
use tally_types::{Account, AccountBalance, AccountFilter, BATCH_EVENTS_MAX, Batch, Transfer};

/// The reference state machine behind one mutex, stamped by the wall clock.
#[derive(Debug, Default)]
pub struct MemoryTarget {
    state: Mutex<StateMachine>,
}

impl MemoryTarget {
    /// An empty ledger.
    pub fn new() -> MemoryTarget {
        MemoryTarget::default()
    }

    fn apply(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        // The state machine panics on an oversized batch; the engine rejects it first, so
        // do the same here.
        if batch.len() > BATCH_EVENTS_MAX {
            return Err(SubmitFailure::Other("batch too large".into()));
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| SubmitFailure::Other("poisoned".into()))?;
        // The wall clock may step back or repeat; the state machine requires time to move
        // forward, so force it.
        let first = wall_ns().max(state.last_timestamp() + 1);
        let codes = state.apply(first, &batch);
        assert_eq!(codes.len(), batch.len(), "one result per event");
        Ok(codes
            .into_iter()
            .zip(first..)
            .map(|(code, stamp)| Outcome {
                code,
                // As the engine: an event's timestamp is reported only when it applied.
                timestamp: if code.is_ok() { stamp } else { 0 },
            })
            .collect())
    }
}

impl Target for MemoryTarget {
    async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.apply(batch)
    }

    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.apply(batch)
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state.lookup_accounts(ids)
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state.lookup_transfers(ids)
    }

    fn account_balances(&self, filter: &AccountFilter) -> Option<Vec<AccountBalance>> {
        let state = self.state.lock().ok()?;
        Some(state.account_balances(filter))
    }

    fn shutdown(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Wraps a target and freezes it: every async submission arriving in
/// `[from, from + length)` (measured from the first async submission, so setup does not
/// count) waits until the window ends, as a stalled engine would (a long fsync, a pause).
#[derive(Debug)]
pub struct StallingTarget<T> {
    inner: T,
    from: Duration,
    length: Duration,
    first: std::sync::OnceLock<Instant>,
}

impl<T: Target> StallingTarget<T> {
    /// Freezes `inner` for `length`, starting `from` after the first async submission.
    pub fn new(inner: T, from: Duration, length: Duration) -> StallingTarget<T> {
        StallingTarget {
            inner,
            from,
            length,
            first: std::sync::OnceLock::new(),
        }
    }
}

impl<T: Target> Target for StallingTarget<T> {
    async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        let now = Instant::now();
        let first = *self.first.get_or_init(|| now);
        let (stall_from, stall_until) = (first + self.from, first + self.from + self.length);
        if now >= stall_from && now < stall_until {
            tokio::time::sleep_until(stall_until.into()).await;
        }
        self.inner.submit(batch).await
    }

    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.inner.submit_blocking(batch)
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        self.inner.lookup_accounts(ids)
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        self.inner.lookup_transfers(ids)
    }

    fn account_balances(&self, filter: &AccountFilter) -> Option<Vec<AccountBalance>> {
        self.inner.account_balances(filter)
    }

    fn shutdown(&self) -> Result<(), String> {
        self.inner.shutdown()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_testkit::{account, transfer};
    use tally_types::{AccountFlags, ResultCode, TransferFlags};

    #[test]
    fn chains_are_all_or_nothing_and_limits_hold() {
        let target = MemoryTarget::new();
        let limited = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        let accounts = vec![
            account(1, 156, AccountFlags::empty()),
            account(2, 156, limited),
            account(3, 156, AccountFlags::empty()),
        ];
        let codes = |o: Vec<Outcome>| o.into_iter().map(|o| o.code).collect::<Vec<_>>();
        let created = target
            .submit_blocking(Batch::CreateAccounts(accounts))
            .expect("accounts");
        assert!(created.iter().all(|o| o.code.is_ok()));
        let fund = transfer(10, 1, 2, 100);
        assert_eq!(
            codes(
                target
                    .submit_blocking(Batch::CreateTransfers(vec![fund]))
                    .expect("fund")
            ),
            vec![ResultCode::Ok]
        );
        let mut first = transfer(11, 2, 3, 60);
        first.flags = TransferFlags::LINKED;
        let second = transfer(12, 2, 3, 60);
        let after = transfer(13, 2, 3, 10);
        let results = target
            .submit_blocking(Batch::CreateTransfers(vec![first, second, after]))
            .expect("chain");
        assert_eq!(
            codes(results),
            vec![
                ResultCode::LinkedEventFailed,
                ResultCode::ExceedsCredits,
                ResultCode::Ok
            ]
        );
        let user = target.lookup_accounts(&[2])[0];
        assert_eq!((user.debits_posted, user.credits_posted), (10, 100));
        assert!(target.lookup_transfers(&[11, 12]).is_empty());
    }
}
