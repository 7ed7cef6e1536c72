//! Escrow (O'Neil): which sides of a group's events cannot fail, or change what they do,
//! for their account's state, so that a unit can be decided without that account's part
//! and its changes applied there as deltas (docs/sharding.md, "Escrow").

use crate::state::StateMachine;
use std::collections::HashSet;
use tally_types::{Account, AccountFlags, Batch, Transfer, TransferFlags, TransferKind};

type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Which sides of a group's transfers cannot fail for their account's own state, so that
/// an executor with escrow could apply them as deltas (O'Neil's escrow method). A side
/// qualifies when its account exists before the group (its ledger is then fixed), is
/// open and no closing transfer of the group, or one it settles or expires, touches it
/// (its `closed` flag is then fixed), has no balance limit on that side, and cannot
/// overflow that side even if every amount of the group went to it.
pub(crate) struct Escrow<'a> {
    state: &'a StateMachine,
    /// Every amount of the group, added (saturating).
    amounts: u128,
    /// Per account, the most the group can add to its debits (pending and posted
    /// together), then to its credits; and what it may add to accounts not known when
    /// planning (refunds of transfers created in the group), to any account.
    adds: [IdMap<u128, u128>; 2],
    unattributed: u128,
    /// The accounts a closing transfer of the group may close or reopen.
    closing: HashSet<u128, foldhash::fast::RandomState>,
    /// False: every side counts as read (the analysis is off).
    on: bool,
}

impl<'a> Escrow<'a> {
    pub(crate) fn new(
        state: &'a StateMachine,
        batches: &[(u64, &Batch)],
        due: &[(u64, u128)],
    ) -> Self {
        let mut amounts = 0u128;
        let mut adds: [IdMap<u128, u128>; 2] = Default::default();
        let mut unattributed = 0u128;
        let mut add = |side: usize, id: u128, amount: u128| {
            let total = adds[side].entry(id).or_default();
            *total = total.saturating_add(amount);
        };
        let mut closing = HashSet::default();
        let mut closes = |t: &Transfer| {
            if t.flags.contains(TransferFlags::CLOSING_DEBIT) {
                closing.insert(t.debit_account_id);
            }
            if t.flags.contains(TransferFlags::CLOSING_CREDIT) {
                closing.insert(t.credit_account_id);
            }
        };
        for (_, batch) in batches {
            let Batch::CreateTransfers(events) = batch else {
                continue;
            };
            for t in events {
                let referenced = match t.pending_id {
                    0 => None,
                    id => state.lookup_transfer(id),
                };
                // A post moves at most what its pending transfer reserved; a void, nothing.
                let moved = match (t.kind(), referenced) {
                    (Some(TransferKind::VoidPending), _) => 0,
                    (Some(TransferKind::PostPending), Some(p)) => t.amount.min(p.amount),
                    _ => t.amount,
                };
                amounts = amounts.saturating_add(moved);
                // A post moves a reservation to posted, a void releases it: neither adds
                // to an account's debits or credits in all.
                match (t.kind(), referenced) {
                    (Some(TransferKind::SinglePhase | TransferKind::Pending), _) => {
                        add(0, t.debit_account_id, t.amount);
                        add(1, t.credit_account_id, t.amount);
                    }
                    (Some(TransferKind::Refund), Some(o)) => {
                        add(0, o.credit_account_id, t.amount);
                        add(1, o.debit_account_id, t.amount);
                    }
                    (Some(TransferKind::Refund), None) => {
                        unattributed = unattributed.saturating_add(t.amount);
                    }
                    _ => {}
                }
                closes(t);
                if let Some(referenced) = referenced {
                    closes(&referenced);
                }
            }
        }
        for &(_, id) in due {
            if let Some(pending) = state.lookup_transfer(id) {
                closes(&pending);
            }
        }
        Escrow {
            state,
            amounts,
            adds,
            unattributed,
            closing,
            on: true,
        }
    }

    /// No analysis: every side of every event counts as read.
    pub(crate) fn off(state: &'a StateMachine) -> Self {
        Escrow {
            state,
            amounts: 0,
            adds: Default::default(),
            unattributed: 0,
            closing: HashSet::default(),
            on: false,
        }
    }

    /// True when the analysis is on.
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// The parts of `t`'s accounts whose side of `movement` can fail, or change what it
    /// does, for that account's state. For a refund `t` is the original turned around;
    /// for a post, void or expiry, the pending transfer.
    pub(crate) fn reads(&self, t: &Transfer, movement: Movement, bit: impl Fn(u128) -> u64) -> u64 {
        let both = bit(t.debit_account_id) | bit(t.credit_account_id);
        if !self.on
            || movement == Movement::Transfer && (t.flags.is_balancing() || t.flags.is_closing())
        {
            return both;
        }
        let sides = [
            (
                t.debit_account_id,
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            ),
            (
                t.credit_account_id,
                AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
            ),
        ];
        let mut reads = 0;
        for (side, (id, limit)) in sides.into_iter().enumerate() {
            if self.closing.contains(&id) {
                // Settling or expiring a closing transfer may reopen its account.
                reads |= bit(id);
                continue;
            }
            if movement == Movement::Release {
                // Releasing a reservation checks nothing of the accounts.
                continue;
            }
            let fixed = self.state.lookup_account(id).is_some_and(|account| {
                let total = if side == 0 {
                    account.debits_posted.checked_add(account.debits_pending)
                } else {
                    account.credits_posted.checked_add(account.credits_pending)
                };
                // A post checks no limit: the pending transfer reserved the amount.
                let limited = movement == Movement::Transfer
                    && account.flags.contains(limit)
                    && !self.limit_holds(account, side);
                !account.flags.contains(AccountFlags::CLOSED)
                    && !limited
                    && total
                        .and_then(|total| total.checked_add(self.amounts))
                        .is_some()
            });
            if !fixed {
                reads |= bit(id);
            }
        }
        reads
    }
}

impl Escrow<'_> {
    /// True when `account`'s limit on `side` (0: debits, 1: credits) holds for every
    /// event of the group, whatever their order and outcomes: its side's total plus
    /// everything the group may add to it stays within the other side's posted total,
    /// which the group can only raise.
    fn limit_holds(&self, account: &Account, side: usize) -> bool {
        let (total, limit) = if side == 0 {
            (
                account.debits_posted.checked_add(account.debits_pending),
                account.credits_posted,
            )
        } else {
            (
                account.credits_posted.checked_add(account.credits_pending),
                account.debits_posted,
            )
        };
        let adds = self.adds[side].get(&account.id).copied().unwrap_or(0);
        total
            .and_then(|total| total.checked_add(adds))
            .and_then(|total| total.checked_add(self.unattributed))
            .is_some_and(|total| total <= limit)
    }
}

/// How a unit moves an account's balances, for [`Escrow::reads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Movement {
    /// A single-phase or pending transfer, or a refund: checks closing, overflow, limits.
    Transfer,
    /// Posting a pending transfer: checks closing and overflow.
    Post,
    /// Voiding or expiring a pending transfer: checks nothing of the accounts.
    Release,
}
