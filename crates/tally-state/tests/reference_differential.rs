//! The state machine against an independent model written from docs/spec.md §2
//! (`tally_testkit::reference`): random batches over a few accounts, mostly fresh
//! transfer ids with resubmissions of earlier ones, so that chains, duplicates, burned
//! ids, posts and voids of the same pending transfer, refunds, balance limits,
//! balancing and closing transfers, closed accounts, overflows, expiries (at their
//! very instants too) and imported batches (in range and not) all meet. Every result,
//! account, transfer, burned id, pending state and refund total, every account's
//! transfers and balance rows, and a random filter of each must match: batch for batch
//! on one part and on three, and group for group (one to four batches) on four parts
//! by plan, the ready units in a random order.
//!
//! `TALLY_REFERENCE_SEEDS=N` runs N seeds (default 300).
#![allow(clippy::unwrap_used)]

use tally_state::{StateMachine, plan};
use tally_testkit::SeededRng;
use tally_testkit::reference::{PendingState, Reference};
use tally_types::{
    Account, AccountFilter, AccountFlags as AF, Batch, NS_PER_S, PendingStatus, ResultCode,
    Transfer, TransferFlags as TF,
};

/// Account ids 1..=ACCOUNTS are created first (some again later); the next two only by
/// later batches (imported ones among them); the one after never.
const ACCOUNTS: u64 = 12;
/// Every account id the traffic names.
const ACCOUNT_IDS: u64 = ACCOUNTS + 3;
/// Batches in one seed's run.
const BATCHES: usize = 120;

/// A seeded source of adversarial batches.
struct Traffic {
    rng: SeededRng,
    /// The last transfer id handed out: ids run 1..=last_id.
    last_id: u128,
    /// Ids of pending transfers submitted, for posts and voids to name.
    pendings: Vec<u128>,
    /// Ids of single-phase transfers and posts submitted, for refunds to name.
    refundable: Vec<u128>,
    /// Transfers submitted, for resubmissions.
    submitted: Vec<Transfer>,
}

impl Traffic {
    fn new(seed: u64) -> Traffic {
        Traffic {
            rng: SeededRng::new(seed),
            last_id: 0,
            pendings: Vec::new(),
            refundable: Vec::new(),
            submitted: Vec::new(),
        }
    }

    /// The next batch's stamp: mostly soon after the last event, now and then past a
    /// pending transfer's timeout, or at its expiry instant or just before it (then the
    /// instant falls inside the batch: released before the next batch, not this one).
    fn next_stamp(&mut self, model: &Reference) -> u64 {
        let earliest = model.last_timestamp() + 1;
        if let Some(instant) = model.next_expiry()
            && instant > earliest
            && self.rng.chance(15)
        {
            return instant - self.rng.below(2);
        }
        earliest
            + match self.rng.below(10) {
                0 => NS_PER_S + self.rng.below(2 * NS_PER_S),
                _ => self.rng.below(1_000),
            }
    }

    /// A random filter of an account's transfers: one direction, both or neither, a
    /// time range around the ledger's life so far, a small page, now and then a field
    /// to match.
    fn filter(&mut self, model: &Reference) -> AccountFilter {
        // Neither direction: nothing, in the Rust API.
        let (debits, credits) = [(true, true), (true, false), (false, true), (false, false)]
            [self.rng.below(4) as usize];
        let stamp = |traffic: &mut Traffic| {
            if traffic.rng.chance(40) {
                0
            } else {
                model.last_timestamp()
                    - traffic
                        .rng
                        .below(20 * NS_PER_S)
                        .min(model.last_timestamp() - 1)
            }
        };
        AccountFilter {
            account_id: 1 + u128::from(self.rng.below(ACCOUNT_IDS)),
            timestamp_min: stamp(self),
            timestamp_max: stamp(self),
            limit: [0, 1, 2, 5, 1_000_000][self.rng.below(5) as usize],
            debits,
            credits,
            reversed: self.rng.chance(50),
            user_data_128: u128::from(self.small(80, 2)),
            user_data_64: self.small(90, 2),
            user_data_32: self.small(90, 2) as u32,
            ledger: [0, 0, 0, 156, 840][self.rng.below(5) as usize],
            code: self.small(80, 2) as u16,
        }
    }

    /// The first batch: every account, most of them valid, some with balance limits
    /// (one created closed now and then).
    fn setup(&mut self) -> Batch {
        let accounts = (1..=u128::from(ACCOUNTS))
            .map(|id| Account {
                id,
                ..self.account()
            })
            .collect();
        self.last_id = 1;
        Batch::CreateAccounts(accounts)
    }

    /// The next batch, to be stamped `now` on a ledger the model holds.
    fn batch(&mut self, now: u64, model: &Reference) -> Batch {
        if self.last_id == 0 {
            return self.setup();
        }
        // Now and then an empty batch: it moves time on and nothing else.
        let len = if self.rng.chance(1) {
            0
        } else {
            1 + self.rng.below(8) as usize
        };
        if self.rng.chance(6) {
            let mut accounts: Vec<Account> = (0..len).map(|_| self.account()).collect();
            self.link(&mut accounts, |a, on| {
                a.flags = if on {
                    a.flags.with(AF::LINKED)
                } else {
                    a.flags.without(AF::LINKED)
                }
            });
            self.stamp(&mut accounts, now, model, |a, imported, timestamp| {
                a.flags = if imported {
                    a.flags.with(AF::IMPORTED)
                } else {
                    a.flags.without(AF::IMPORTED)
                };
                a.timestamp = timestamp;
            });
            return Batch::CreateAccounts(accounts);
        }
        let mut transfers: Vec<Transfer> = (0..len).map(|_| self.transfer()).collect();
        self.link(&mut transfers, |t, on| {
            t.flags = if on {
                t.flags.with(TF::LINKED)
            } else {
                t.flags.without(TF::LINKED)
            }
        });
        self.stamp(&mut transfers, now, model, |t, imported, timestamp| {
            t.flags = if imported {
                t.flags.with(TF::IMPORTED)
            } else {
                t.flags.without(TF::IMPORTED)
            };
            t.timestamp = timestamp;
        });
        self.before_newest_account(&mut transfers, model);
        Batch::CreateTransfers(transfers)
    }

    /// Now and then an imported batch right after accounts were created pays from the
    /// newest one at a stamp after every transfer's but not after that account's.
    fn before_newest_account(&mut self, transfers: &mut [Transfer], model: &Reference) {
        let transfers_last = model.transfers().map(|t| t.timestamp).max().unwrap_or(0);
        let Some(newest) = model.accounts().max_by_key(|a| a.timestamp) else {
            return;
        };
        let imported = transfers
            .first()
            .is_some_and(|t| t.flags.contains(TF::IMPORTED));
        if !imported || newest.timestamp <= transfers_last + 1 || !self.rng.chance(30) {
            return;
        }
        for t in transfers.iter_mut() {
            if self.rng.chance(50) {
                t.debit_account_id = newest.id;
                t.timestamp =
                    transfers_last + 1 + self.rng.below(newest.timestamp - transfers_last);
            }
        }
    }

    /// Now and then an imported batch: its events stamped one after another from just
    /// after the ledger's last stamp (so some run into the batch's own `now`), a few
    /// stamped too early, at 0 or at 2^63, a few not flagged. In other batches, now and
    /// then an event carrying a timestamp it may not give.
    fn stamp<E>(
        &mut self,
        events: &mut [E],
        now: u64,
        model: &Reference,
        set: fn(&mut E, bool, u64),
    ) {
        if !self.rng.chance(8) {
            for event in events.iter_mut() {
                if self.rng.chance(1) {
                    set(event, self.rng.chance(50), 1 + self.rng.below(now));
                }
            }
            return;
        }
        let mut next = model.last_timestamp() + 1;
        // Exactly the newest account's or transfer's stamp: equal to a record's.
        let newest = [
            model.accounts().map(|a| a.timestamp).max(),
            model.transfers().map(|t| t.timestamp).max(),
        ];
        for event in events.iter_mut() {
            let timestamp = match self.rng.below(40) {
                0 => 0,
                1 => 1 << 63,
                2 => now,
                3 => next.saturating_sub(1 + self.rng.below(NS_PER_S)),
                6 | 7 => newest[self.rng.below(2) as usize].unwrap_or(next),
                // Just before the newest records: after the transfers, before an
                // account imported by the batch before.
                4 | 5 => next.saturating_sub(self.rng.below(2_000)),
                _ => {
                    next += 1 + self.rng.below(3);
                    next
                }
            };
            set(event, !self.rng.chance(5), timestamp);
        }
    }

    /// Chains now and then, usually closed by the batch's last event.
    fn link<E>(&mut self, events: &mut [E], set_linked: fn(&mut E, bool)) {
        for event in events.iter_mut() {
            set_linked(event, self.rng.chance(15));
        }
        if let Some(last) = events.last_mut()
            && !self.rng.chance(10)
        {
            set_linked(last, false);
        }
    }

    /// 0 with `zero_percent` chance, else 1..=top.
    fn small(&mut self, zero_percent: u64, top: u64) -> u64 {
        if self.rng.chance(zero_percent) {
            0
        } else {
            1 + self.rng.below(top)
        }
    }

    fn account_id(&mut self) -> u128 {
        match self.rng.below(60) {
            0 => 0,
            1 => u128::MAX,
            _ => 1 + u128::from(self.rng.below(ACCOUNT_IDS)),
        }
    }

    fn account(&mut self) -> Account {
        let mut flags = AF::empty();
        for (flag, percent) in [
            (AF::DEBITS_MUST_NOT_EXCEED_CREDITS, 30),
            (AF::CREDITS_MUST_NOT_EXCEED_DEBITS, 12),
            (AF::HISTORY, 10),
            (AF::CLOSED, 2),
        ] {
            if self.rng.chance(percent) {
                flags = flags.with(flag);
            }
        }
        Account {
            id: match self.rng.below(30) {
                0 => 0,
                1 => u128::MAX,
                _ => 1 + u128::from(self.rng.below(ACCOUNT_IDS - 1)),
            },
            ledger: if self.rng.chance(3) {
                0
            } else if self.rng.chance(8) {
                840
            } else {
                156
            },
            code: self.small(3, 2) as u16,
            flags,
            user_data_128: u128::from(self.small(70, 2)),
            user_data_64: self.small(85, 2),
            user_data_32: self.small(85, 2) as u32,
            ..Account::default()
        }
    }

    /// Mostly a fresh id; now and then one handed out before, or an invalid one.
    fn transfer_id(&mut self) -> u128 {
        match self.rng.below(100) {
            0 => 0,
            1 => u128::MAX,
            2..=13 => self.earlier_id(),
            _ => {
                self.last_id += 1;
                self.last_id
            }
        }
    }

    /// One of the latest ids handed out (any id, now and then).
    fn earlier_id(&mut self) -> u128 {
        let back = self
            .last_id
            .min(if self.rng.chance(10) { 1 << 20 } else { 24 });
        self.last_id - u128::from(self.rng.below(back as u64))
    }

    fn amount(&mut self) -> u128 {
        match self.rng.below(40) {
            0 => 0,
            1 => u128::MAX - u128::from(self.rng.below(50)),
            2 => u128::MAX / 2,
            _ => 1 + u128::from(self.rng.below(120)),
        }
    }

    fn kind(&mut self) -> TF {
        match self.rng.below(100) {
            0..=44 => TF::empty(),
            45..=64 => TF::PENDING,
            65..=76 => TF::POST_PENDING_TRANSFER,
            77..=82 => TF::VOID_PENDING_TRANSFER,
            83..=95 => TF::REFUND,
            // Two kinds at once.
            _ => TF::PENDING.with(TF::REFUND),
        }
    }

    /// Mostly a new transfer; now and then one submitted before, as it was or with one
    /// field changed (or given as 0, for the engine to fill in).
    fn transfer(&mut self) -> Transfer {
        if !self.submitted.is_empty() && self.rng.chance(12) {
            let recent = self.submitted.len().min(32);
            let mut t =
                self.submitted[self.submitted.len() - 1 - self.rng.below(recent as u64) as usize];
            let change = self.rng.below(15);
            let value = if self.rng.chance(50) {
                0
            } else {
                1 + self.rng.below(3)
            };
            match change {
                0 => t.flags = t.flags.with(TF::LINKED),
                1 => t.debit_account_id = value.into(),
                2 => t.credit_account_id = value.into(),
                3 => t.amount = value.into(),
                4 => t.amount = t.amount.saturating_add(1),
                5 => t.pending_id = value.into(),
                6 => t.ledger = value as u32,
                7 => t.code = value as u16,
                8 => t.timeout = value as u32,
                9 => t.user_data_128 = value.into(),
                10 => t.user_data_64 = value,
                11 => t.user_data_32 = value as u32,
                12 => t.flags = TF::from_bits(t.flags.bits() ^ (1 << self.rng.below(9))).unwrap(),
                _ => {}
            }
            return t;
        }
        let t = self.new_transfer();
        self.submitted.push(t);
        t
    }

    fn new_transfer(&mut self) -> Transfer {
        let kind = self.kind();
        let second = kind != TF::empty() && kind != TF::PENDING;
        let mut flags = kind;
        // Balancing and closing mostly where they are allowed.
        let (balancing, closing) = if second { (1, 1) } else { (6, 3) };
        for (flag, percent) in [
            (TF::BALANCING_DEBIT, balancing),
            (TF::BALANCING_CREDIT, balancing),
            (TF::CLOSING_DEBIT, closing),
            (TF::CLOSING_CREDIT, closing),
        ] {
            if self.rng.chance(percent) {
                flags = flags.with(flag);
            }
        }
        let id = self.transfer_id();
        match kind {
            TF::PENDING => self.pendings.push(id),
            TF::REFUND | TF::VOID_PENDING_TRANSFER => {}
            _ => self.refundable.push(id),
        }
        // A post, void or refund mostly leaves accounts, ledger and code to the engine.
        let blank = if second { 85 } else { 0 };
        let account = |traffic: &mut Traffic| {
            if traffic.rng.chance(blank) {
                0
            } else {
                traffic.account_id()
            }
        };
        let target = match kind {
            TF::POST_PENDING_TRANSFER | TF::VOID_PENDING_TRANSFER
                if !self.pendings.is_empty() && !self.rng.chance(10) =>
            {
                let recent = self.pendings.len().min(16);
                self.pendings[self.pendings.len() - 1 - self.rng.below(recent as u64) as usize]
            }
            TF::REFUND if !self.refundable.is_empty() && !self.rng.chance(10) => {
                let recent = self.refundable.len().min(32);
                self.refundable[self.refundable.len() - 1 - self.rng.below(recent as u64) as usize]
            }
            _ if second && self.rng.chance(2) => u128::MAX,
            _ if second => self.earlier_id(),
            _ if self.rng.chance(2) => self.earlier_id(),
            _ => 0,
        };
        Transfer {
            id,
            debit_account_id: account(self),
            credit_account_id: account(self),
            amount: if second && self.rng.chance(40) {
                0
            } else {
                self.amount()
            },
            pending_id: target,
            user_data_128: u128::from(self.small(70, 2)),
            user_data_64: self.small(85, 2),
            user_data_32: self.small(85, 2) as u32,
            timeout: match (kind == TF::PENDING, self.rng.below(40)) {
                (true, 0..=19) => 1 + self.rng.below(3) as u32,
                (true, 20) => u32::MAX,
                (false, 0) => 1,
                _ => 0,
            },
            ledger: if self.rng.chance(if second { 85 } else { 3 }) {
                0
            } else if self.rng.chance(4) {
                840
            } else {
                156
            },
            code: if self.rng.chance(if second { 80 } else { 2 }) {
                0
            } else {
                1 + self.rng.below(2) as u16
            },
            flags,
            timestamp: 0,
        }
    }
}

fn pending_state(status: Option<PendingStatus>) -> Option<PendingState> {
    status.map(|status| match status {
        PendingStatus::Pending => PendingState::Waiting,
        PendingStatus::Posted => PendingState::Posted,
        PendingStatus::Voided => PendingState::Voided,
        PendingStatus::Expired => PendingState::Expired,
    })
}

/// Every record and every id's standing must be the model's.
fn assert_same_state(
    seed: u64,
    batch: usize,
    last_id: u128,
    state: &StateMachine,
    model: &Reference,
) {
    let at = format!("seed {seed}, after batch {batch}");
    for id in 0..=u128::from(ACCOUNT_IDS) {
        assert_eq!(
            state.lookup_account(id),
            model.account(id),
            "account {id}, {at}"
        );
    }
    assert_eq!(state.account_count(), model.accounts().count(), "{at}");
    for id in 0..=last_id {
        assert_eq!(
            state.lookup_transfer(id).as_ref(),
            model.transfer(id),
            "transfer {id}, {at}"
        );
        assert_eq!(state.id_failed(id), model.burned(id), "burned {id}, {at}");
        assert_eq!(
            pending_state(state.pending_status(id)),
            model.pending_state(id),
            "pending {id}, {at}"
        );
        assert_eq!(
            state.refunded_amount(id),
            model.refunded(id),
            "refunded {id}, {at}"
        );
    }
    assert_eq!(state.transfer_count(), model.transfers().count(), "{at}");
    for id in 1..=u128::from(ACCOUNT_IDS) {
        assert_same_reads(state, model, &AccountFilter::new(id), &at);
    }
    assert_eq!(state.last_timestamp(), model.last_timestamp(), "{at}");
}

/// An account's transfers and balance rows through `filter` must be the model's.
fn assert_same_reads(state: &StateMachine, model: &Reference, filter: &AccountFilter, at: &str) {
    assert_eq!(
        state.account_transfers(filter),
        model.account_transfers(filter),
        "transfers, {at}: {filter:?}"
    );
    assert_eq!(
        state.account_balances(filter),
        model.account_balances(filter),
        "balances, {at}: {filter:?}"
    );
}

fn run(seed: u64) {
    let mut traffic = Traffic::new(seed);
    let mut states = [StateMachine::new(), StateMachine::with_parts(3)];
    // Takes each group of batches by plan on four parts, ready units in a random order.
    let mut planned = StateMachine::with_parts(4);
    let mut order = SeededRng::new(seed ^ 0x91a2);
    let mut model = Reference::new();
    let mut now = first_stamp(seed);
    let mut first = 0;
    while first < BATCHES {
        let mut group: Vec<(u64, Batch)> = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..1 + traffic.rng.below(4) {
            let batch = traffic.batch(now, &model);
            expected.push(model.apply(now, &batch));
            group.push((now, batch));
            now = traffic.next_stamp(&model);
        }
        for (offset, ((stamp, batch), expected)) in group.iter().zip(&expected).enumerate() {
            for state in &mut states {
                assert_eq!(
                    &state.apply(*stamp, batch),
                    expected,
                    "seed {seed}, batch {} on {} parts: {batch:?}",
                    first + offset,
                    state.part_count()
                );
            }
        }
        let stamped: Vec<(u64, &Batch)> =
            group.iter().map(|(stamp, batch)| (*stamp, batch)).collect();
        let got = match plan(&planned, &stamped) {
            Ok(plan) => {
                planned.apply_planned(&stamped, &plan, |ready| order.below(ready as u64) as usize)
            }
            Err(_) => stamped
                .iter()
                .map(|(stamp, batch)| planned.apply(*stamp, batch))
                .collect(),
        };
        assert_eq!(
            got, expected,
            "seed {seed}, batches from {first} by plan: {group:?}"
        );
        first += group.len();
        for state in states.iter().chain([&planned]) {
            assert_same_state(seed, first - 1, traffic.last_id, state, &model);
            let at = format!("seed {seed}, after batch {}", first - 1);
            assert_same_reads(state, &model, &traffic.filter(&model), &at);
        }
    }
}

/// Where a seed's stamps start: one seed in four so late that the longest timeouts
/// overflow the clock (TigerBeetle's u63 nanoseconds).
fn first_stamp(seed: u64) -> u64 {
    if seed % 4 == 3 {
        tally_types::NOW_NS_MAX - u64::from(u32::MAX) * NS_PER_S + NS_PER_S
    } else {
        1_000 * NS_PER_S
    }
}

fn seeds() -> u64 {
    std::env::var("TALLY_REFERENCE_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(300)
}

#[test]
fn the_state_machine_answers_as_the_model_of_the_specification() {
    for seed in 0..seeds() {
        run(seed);
    }
}

/// The traffic reaches the rules it is meant to: a model that never saw these would
/// make the comparison above empty.
#[test]
fn the_traffic_meets_every_kind_of_outcome() {
    let mut seen = std::collections::BTreeMap::new();
    for seed in 0..40 {
        let mut model = Reference::new();
        let mut traffic = Traffic::new(seed);
        let mut now = first_stamp(seed);
        for _ in 0..BATCHES {
            let batch = traffic.batch(now, &model);
            for result in model.apply(now, &batch) {
                *seen.entry(result).or_insert(0u32) += 1;
            }
            now = traffic.next_stamp(&model);
        }
    }
    for code in [
        ResultCode::Ok,
        ResultCode::Exists,
        ResultCode::IdAlreadyFailed,
        ResultCode::LinkedEventFailed,
        ResultCode::LinkedEventChainOpen,
        ResultCode::ExceedsCredits,
        ResultCode::ExceedsDebits,
        ResultCode::ExceedsRefundableAmount,
        ResultCode::PendingTransferAlreadyPosted,
        ResultCode::PendingTransferAlreadyVoided,
        ResultCode::PendingTransferExpired,
        ResultCode::DebitAccountAlreadyClosed,
        ResultCode::CreditAccountAlreadyClosed,
        ResultCode::OverflowsDebitsPosted,
        ResultCode::OverflowsTimeout,
        ResultCode::ExistsWithDifferentAmount,
        ResultCode::ExistsWithDifferentUserData128,
        ResultCode::OriginalTransferNotRefundable,
        ResultCode::FlagsAreMutuallyExclusive,
        ResultCode::PendingIdMustNotBeIntMax,
        ResultCode::RefundOfMustNotBeIntMax,
        ResultCode::TimestampMustBeZero,
        ResultCode::ImportedEventExpected,
        ResultCode::ImportedEventNotExpected,
        ResultCode::ImportedEventTimestampOutOfRange,
        ResultCode::ImportedEventTimestampMustNotAdvance,
        ResultCode::ImportedEventTimestampMustNotRegress,
        ResultCode::ImportedEventTimestampMustPostdateDebitAccount,
        ResultCode::ImportedEventTimeoutMustBeZero,
    ] {
        assert!(seen.contains_key(&code), "{code:?} never came up");
    }
}
