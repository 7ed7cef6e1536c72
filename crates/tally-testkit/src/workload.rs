//! Random ledger traffic for differential tests: every kind of event, hot accounts,
//! chains that cross parts, failing events inside chains, duplicates and bad input.

use crate::{SeededRng, TEST_LEDGER, account, transfer};
use tally_types::{AccountFlags, Batch, Transfer, TransferFlags};

/// How account choice is skewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounts {
    /// Every account equally likely.
    Uniform,
    /// A few merchant accounts take most of the credits (festival traffic).
    Hot,
}

/// A seeded source of batches. The same seed gives the same batches.
#[derive(Debug, Clone)]
pub struct Workload {
    rng: SeededRng,
    skew: Accounts,
    accounts_created: u128,
    next_transfer: u128,
    /// Ids of transfers submitted so far (some failed): targets for posts, voids,
    /// refunds and duplicates.
    pendings: Vec<u128>,
    transfers: Vec<u128>,
}

/// Accounts 1..=HOT are the hot merchants.
const HOT: u128 = 3;

impl Workload {
    /// A workload whose batches are fixed by `seed`, choosing accounts by `skew`.
    pub fn new(seed: u64, skew: Accounts) -> Workload {
        Workload {
            rng: SeededRng::new(seed),
            skew,
            accounts_created: 0,
            next_transfer: 1_000,
            pendings: Vec::new(),
            transfers: Vec::new(),
        }
    }

    /// The next batch: accounts now and then (always first), transfers otherwise.
    pub fn batch(&mut self) -> Batch {
        if self.accounts_created < 8 || self.rng.chance(8) {
            return self.accounts_batch();
        }
        let len = 1 + self.rng.below(24) as usize;
        let mut events = Vec::with_capacity(len);
        while events.len() < len {
            if self.rng.chance(15) {
                let chain = 2 + self.rng.below(3) as usize;
                for _ in 0..chain {
                    let mut t = self.transfer();
                    t.flags = t.flags.with(TransferFlags::LINKED);
                    events.push(t);
                }
                // Usually closed; sometimes left open at the end of the batch.
                if !self.rng.chance(10)
                    && let Some(last) = events.last_mut()
                {
                    last.flags = last.flags.without(TransferFlags::LINKED);
                }
            } else {
                events.push(self.transfer());
            }
        }
        // Now and then an import: every event with a timestamp of its own, most of them
        // too early for the ledger (refused in order), a few mixed in without the flag.
        if self.rng.chance(2) {
            for t in &mut events {
                if !self.rng.chance(10) {
                    t.flags = t.flags.with(TransferFlags::IMPORTED);
                }
                t.timestamp = 1 + self.rng.below(1 << 61);
            }
        }
        Batch::CreateTransfers(events)
    }

    fn accounts_batch(&mut self) -> Batch {
        let len = 1 + self.rng.below(6);
        let mut events = Vec::new();
        for _ in 0..len {
            let reuse = self.accounts_created > 0 && self.rng.chance(10);
            let id = if reuse {
                1 + u128::from(self.rng.below(self.accounts_created as u64))
            } else {
                self.accounts_created += 1;
                self.accounts_created
            };
            let flags = match self.rng.below(10) {
                0..=2 if id > HOT => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                3 if id > HOT => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                _ => AccountFlags::empty(),
            };
            let ledger = if self.rng.chance(5) { 840 } else { TEST_LEDGER };
            let mut a = account(id, ledger, flags);
            if self.rng.chance(10) {
                a.flags = a.flags.with(AccountFlags::LINKED);
            }
            // Some accounts keep a balance history; some carry a customer reference.
            if self.rng.chance(20) {
                a.flags = a.flags.with(AccountFlags::HISTORY);
            }
            a.user_data_32 = self.rng.below(4) as u32;
            events.push(a);
        }
        if let Some(last) = events.last_mut() {
            last.flags = last.flags.without(AccountFlags::LINKED);
        }
        Batch::CreateAccounts(events)
    }

    fn any_account(&mut self) -> u128 {
        // Now and then an account that does not exist yet.
        1 + u128::from(self.rng.below(self.accounts_created as u64 + 2))
    }

    fn credit_account(&mut self) -> u128 {
        if self.skew == Accounts::Hot && self.rng.chance(60) {
            1 + u128::from(self.rng.below(HOT as u64))
        } else {
            self.any_account()
        }
    }

    fn pick(&mut self, ids: &[u128]) -> u128 {
        if ids.is_empty() {
            return 999_999;
        }
        let recent = ids.len().min(64) as u64;
        ids[ids.len() - 1 - self.rng.below(recent) as usize]
    }

    /// Now and then a balancing bound (a sweep), else no flag.
    fn balancing(&mut self) -> TransferFlags {
        match self.rng.below(20) {
            0 => TransferFlags::BALANCING_DEBIT,
            1 => TransferFlags::BALANCING_CREDIT,
            2 => TransferFlags::BALANCING_MASK,
            _ => TransferFlags::empty(),
        }
    }

    fn transfer(&mut self) -> Transfer {
        self.next_transfer += 1;
        let id = self.next_transfer;
        let amount = match self.rng.below(50) {
            0 => u128::MAX / 2,
            1 => 0,
            _ => 1 + u128::from(self.rng.below(500)),
        };
        let mut t = match self.rng.below(100) {
            0..=44 => {
                let (dr, cr) = (self.any_account(), self.credit_account());
                Transfer {
                    flags: self.balancing(),
                    ..transfer(id, dr, cr, amount)
                }
            }
            45..=59 => {
                let (dr, cr) = (self.any_account(), self.credit_account());
                self.pendings.push(id);
                Transfer {
                    flags: TransferFlags::PENDING.with(self.balancing()),
                    timeout: [0, 0, 1, 2][self.rng.below(4) as usize],
                    ..transfer(id, dr, cr, amount)
                }
            }
            60..=74 => {
                let void = self.rng.chance(30);
                let pending_id = self.pick(&self.pendings.clone());
                Transfer {
                    id,
                    pending_id,
                    amount: if void || self.rng.chance(50) {
                        0
                    } else {
                        amount.min(300)
                    },
                    flags: if void {
                        TransferFlags::VOID_PENDING_TRANSFER
                    } else {
                        TransferFlags::POST_PENDING_TRANSFER
                    },
                    ..Transfer::default()
                }
            }
            75..=84 => {
                let refund_of = self.pick(&self.transfers.clone());
                Transfer {
                    id,
                    pending_id: refund_of,
                    amount: 1 + u128::from(self.rng.below(100)),
                    flags: TransferFlags::REFUND,
                    ..Transfer::default()
                }
            }
            85..=92 => {
                // A duplicate of an earlier id, same or different fields.
                let earlier = self.pick(&self.transfers.clone());
                let (dr, cr) = (self.any_account(), self.credit_account());
                return transfer(earlier, dr, cr, amount);
            }
            93..=95 => transfer(0, 1, 2, amount),
            _ => {
                let dr = self.any_account();
                Transfer {
                    ledger: 840,
                    ..transfer(id, dr, self.credit_account(), amount)
                }
            }
        };
        // An order id shared by a few transfers now and then, for queries.
        if self.rng.chance(30) {
            t.user_data_128 = 1 + u128::from(self.rng.below(50));
        }
        self.transfers.push(id);
        t
    }
}
