//! The order of the checks of `create_accounts` and `create_transfers` (docs/spec.md
//! §2, and "Where these checks go in the orders above"): an event that fails two
//! checks answers the earlier one. Each case builds an event failing both, then shows
//! that the event with only the later fault answers the later code (so the first
//! really failed both). Pairs that no event can fail together are named in comments.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use tally_state::StateMachine;
use tally_testkit::{TEST_LEDGER, account, transfer};
use tally_types::{
    Account, AccountFlags as AF, Batch, NS_PER_S, ResultCode as R, Transfer, TransferFlags as TF,
};

const M: u128 = u128::MAX;
const OTHER_LEDGER: u32 = 840;

// The accounts of `Ledger::with_accounts`, all code 1.
const A: u128 = 1;
const B: u128 = 2;
const C: u128 = 3;
/// On `OTHER_LEDGER`.
const FOREIGN: u128 = 4;
/// `debits_must_not_exceed_credits`.
const NO_OVERDRAFT: u128 = 5;
/// `credits_must_not_exceed_debits`.
const NO_OVERCREDIT: u128 = 6;
/// Created `closed`.
const CLOSED: u128 = 7;
const CLOSED_TOO: u128 = 8;
/// Never created (nor any transfer with these ids).
const MISSING: u128 = 98;
const MISSING_TOO: u128 = 99;

/// A fresh id, unique across the whole test binary.
fn id() -> u128 {
    static NEXT: AtomicU64 = AtomicU64::new(1_000);
    u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

fn plain(id: u128) -> Account {
    account(id, TEST_LEDGER, AF::empty())
}

/// A single-phase transfer with a fresh id.
fn t(dr: u128, cr: u128, amount: u128) -> Transfer {
    transfer(id(), dr, cr, amount)
}

fn pending(dr: u128, cr: u128, amount: u128) -> Transfer {
    Transfer {
        flags: TF::PENDING,
        ..t(dr, cr, amount)
    }
}

/// A post, void or refund giving only `target` (pending_id / refund_of) and `amount`.
fn second(flags: TF, target: u128, amount: u128) -> Transfer {
    Transfer {
        id: id(),
        pending_id: target,
        amount,
        flags,
        ..Transfer::default()
    }
}

fn post(pending_id: u128, amount: u128) -> Transfer {
    second(TF::POST_PENDING_TRANSFER, pending_id, amount)
}

fn void(pending_id: u128, amount: u128) -> Transfer {
    second(TF::VOID_PENDING_TRANSFER, pending_id, amount)
}

fn refund(refund_of: u128, amount: u128) -> Transfer {
    second(TF::REFUND, refund_of, amount)
}

fn imported(t: Transfer, timestamp: u64) -> Transfer {
    Transfer {
        flags: t.flags.with(TF::IMPORTED),
        timestamp,
        ..t
    }
}

fn not_imported(t: &mut Transfer) {
    t.flags = t.flags.without(TF::IMPORTED);
    t.timestamp = 0;
}

trait Event: Copy + std::fmt::Debug {
    fn batch(events: &[Self]) -> Batch;
    fn linked(self) -> Self;
}

impl Event for Account {
    fn batch(events: &[Self]) -> Batch {
        Batch::CreateAccounts(events.to_vec())
    }
    fn linked(self) -> Self {
        Account {
            flags: self.flags.with(AF::LINKED),
            ..self
        }
    }
}

impl Event for Transfer {
    fn batch(events: &[Self]) -> Batch {
        Batch::CreateTransfers(events.to_vec())
    }
    fn linked(self) -> Self {
        Transfer {
            flags: self.flags.with(TF::LINKED),
            ..self
        }
    }
}

/// A state machine and its clock: each batch 1 ms after the last.
struct Ledger {
    state: StateMachine,
    now: u64,
}

impl Ledger {
    fn new() -> Self {
        Self::starting_at(1_000 * NS_PER_S)
    }

    fn starting_at(now: u64) -> Self {
        Ledger {
            state: StateMachine::new(),
            now,
        }
    }

    fn with_accounts() -> Self {
        let mut l = Self::new();
        l.create_accounts();
        l
    }

    fn create_accounts(&mut self) {
        self.ok(&[
            plain(A),
            plain(B),
            plain(C),
            account(FOREIGN, OTHER_LEDGER, AF::empty()),
            account(
                NO_OVERDRAFT,
                TEST_LEDGER,
                AF::DEBITS_MUST_NOT_EXCEED_CREDITS,
            ),
            account(
                NO_OVERCREDIT,
                TEST_LEDGER,
                AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
            ),
            account(CLOSED, TEST_LEDGER, AF::CLOSED),
            account(CLOSED_TOO, TEST_LEDGER, AF::CLOSED),
        ]);
    }

    fn advance(&mut self, ns: u64) {
        self.now += ns;
    }

    fn apply<E: Event>(&mut self, events: &[E]) -> Vec<R> {
        self.now += 1_000_000;
        self.state.apply(self.now, &E::batch(events))
    }

    fn one<E: Event>(&mut self, event: E) -> R {
        self.apply(&[event])[0]
    }

    fn ok<E: Event>(&mut self, events: &[E]) {
        let results = self.apply(events);
        assert!(results.iter().all(|r| r.is_ok()), "{events:?}: {results:?}");
    }

    /// `both` fails `earlier` and `later`; `only_later` fails only `later`.
    fn expect_first<E: Event>(&mut self, both: E, only_later: E, earlier: R, later: R) {
        assert_eq!(
            self.one(both),
            earlier,
            "{both:?} fails `{earlier}` and `{later}`: the earlier check answers"
        );
        assert_eq!(
            self.one(only_later),
            later,
            "{only_later:?} (without the first fault) must fail `{later}`"
        );
    }

    /// [`Ledger::expect_first`] with `only_later` = `both` after `fix`. `fix` must give
    /// a new id where `earlier` burned the id (a transient code).
    fn first<E: Event>(&mut self, both: E, fix: impl FnOnce(&mut E), earlier: R, later: R) {
        let mut only_later = both;
        fix(&mut only_later);
        self.expect_first(both, only_later, earlier, later);
    }
}

/// A fault put into an event, and the code it alone gives.
type Fault<E> = (fn(&mut E), R);

/// `changes`: faults of `base` in check order. For each adjacent pair, `base` with both
/// faults answers the earlier code.
fn in_order<E: Event>(l: &mut Ledger, base: E, changes: &[Fault<E>]) {
    for pair in changes.windows(2) {
        let [(earlier_fault, earlier), (later_fault, later)] = [pair[0], pair[1]];
        let mut both = base;
        earlier_fault(&mut both);
        later_fault(&mut both);
        let mut only_later = base;
        later_fault(&mut only_later);
        l.expect_first(both, only_later, earlier, later);
    }
}

/// `faults` of a resubmission of `stored`, in the order its fields are compared with
/// the stored event's: each adjacent pair answers the earlier, all of them together
/// the first, and none `exists`.
fn compared_in_order<E: Event>(l: &mut Ledger, stored: E, faults: &[Fault<E>]) {
    in_order(l, stored, faults);
    let mut all = stored;
    for (fault, _) in faults {
        fault(&mut all);
    }
    assert_eq!(l.one(all), faults[0].1);
    assert_eq!(l.one(stored), R::Exists);
}

#[test]
fn imported_batch_checks_come_before_every_other_check() {
    let mut l = Ledger::new();
    // In range, but after every batch stamp here.
    let future = (1 << 63) - 1;
    // Every event has id 0 (step 1).
    let a0 = plain(0);
    let a_imported = |timestamp| Account {
        flags: AF::IMPORTED,
        timestamp,
        ..a0
    };
    assert_eq!(
        l.one(Account { timestamp: 5, ..a0 }),
        R::TimestampMustBeZero
    );
    assert_eq!(l.one(a_imported(0)), R::ImportedEventTimestampOutOfRange);
    // Out of range before "must not advance" (it is both).
    assert_eq!(
        l.one(a_imported(u64::MAX)),
        R::ImportedEventTimestampOutOfRange
    );
    assert_eq!(
        l.one(a_imported(future)),
        R::ImportedEventTimestampMustNotAdvance
    );
    let first_imported = l.apply(&[a_imported(1), a0]);
    assert_eq!(
        first_imported,
        [R::IdMustNotBeZero, R::ImportedEventExpected]
    );
    let first_not = l.apply(&[a0, a_imported(1)]);
    assert_eq!(first_not, [R::IdMustNotBeZero, R::ImportedEventNotExpected]);

    let t0 = Transfer {
        id: 0,
        // Mutually exclusive flags too (step 2).
        flags: TF::PENDING.with(TF::REFUND),
        ..Transfer::default()
    };
    assert_eq!(
        l.one(Transfer { timestamp: 5, ..t0 }),
        R::TimestampMustBeZero
    );
    assert_eq!(l.one(imported(t0, 0)), R::ImportedEventTimestampOutOfRange);
    assert_eq!(
        l.one(imported(t0, u64::MAX)),
        R::ImportedEventTimestampOutOfRange
    );
    assert_eq!(
        l.one(imported(t0, future)),
        R::ImportedEventTimestampMustNotAdvance
    );
    let first_imported = l.apply(&[imported(t0, 1), t0]);
    assert_eq!(
        first_imported,
        [R::IdMustNotBeZero, R::ImportedEventExpected]
    );
    let first_not = l.apply(&[t0, imported(t0, 1)]);
    assert_eq!(first_not, [R::IdMustNotBeZero, R::ImportedEventNotExpected]);
}

#[test]
fn account_checks_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    let both_limits = AF::DEBITS_MUST_NOT_EXCEED_CREDITS.with(AF::CREDITS_MUST_NOT_EXCEED_DEBITS);
    let new = || plain(id());
    let fresh_id = |a: &mut Account| a.id = id();
    // 1 ↔ 2. (id zero and id int max cannot fail together.)
    let a = Account {
        id: 0,
        flags: both_limits,
        ..new()
    };
    l.first(
        a,
        fresh_id,
        R::IdMustNotBeZero,
        R::FlagsAreMutuallyExclusive,
    );
    let a = Account { id: M, ..a };
    l.first(
        a,
        fresh_id,
        R::IdMustNotBeIntMax,
        R::FlagsAreMutuallyExclusive,
    );
    // 2 ↔ 3.
    let a = Account {
        flags: both_limits,
        ledger: 0,
        ..new()
    };
    let fix = |a: &mut Account| a.flags = AF::empty();
    l.first(a, fix, R::FlagsAreMutuallyExclusive, R::LedgerMustNotBeZero);
    // Inside 3: ledger before code.
    let a = Account {
        ledger: 0,
        code: 0,
        ..new()
    };
    let fix = |a: &mut Account| a.ledger = TEST_LEDGER;
    l.first(a, fix, R::LedgerMustNotBeZero, R::CodeMustNotBeZero);
    // 2 and 3 before 4: a stored id is validated before it is compared.
    let stored = plain(A);
    let a = Account {
        flags: both_limits,
        ..stored
    };
    let fix = |a: &mut Account| a.flags = AF::HISTORY;
    l.first(
        a,
        fix,
        R::FlagsAreMutuallyExclusive,
        R::ExistsWithDifferentFlags,
    );
    let a = Account {
        ledger: 0,
        ..stored
    };
    let fix = |a: &mut Account| a.ledger = OTHER_LEDGER;
    l.first(a, fix, R::LedgerMustNotBeZero, R::ExistsWithDifferentLedger);
    let a = Account { code: 0, ..stored };
    let fix = |a: &mut Account| a.code = 2;
    l.first(a, fix, R::CodeMustNotBeZero, R::ExistsWithDifferentCode);
    // (Step 1 and step 4 cannot fail together: a reserved id is never stored.)
}

#[test]
fn account_exists_fields_are_compared_in_the_specified_order() {
    let mut l = Ledger::new();
    let stored = Account {
        user_data_128: 1,
        user_data_64: 1,
        user_data_32: 1,
        ..account(id(), TEST_LEDGER, AF::HISTORY)
    };
    l.ok(&[stored]);
    let faults: [Fault<Account>; 6] = [
        (|a| a.flags = AF::empty(), R::ExistsWithDifferentFlags),
        (|a| a.ledger = OTHER_LEDGER, R::ExistsWithDifferentLedger),
        (|a| a.code = 2, R::ExistsWithDifferentCode),
        (|a| a.user_data_128 = 2, R::ExistsWithDifferentUserData128),
        (|a| a.user_data_64 = 2, R::ExistsWithDifferentUserData64),
        (|a| a.user_data_32 = 2, R::ExistsWithDifferentUserData32),
    ];
    compared_in_order(&mut l, stored, &faults);
}

#[test]
fn transfer_common_checks_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    let exclusive = TF::PENDING.with(TF::POST_PENDING_TRANSFER);
    let fresh_id = |t: &mut Transfer| t.id = id();
    // 1 ↔ 2.
    let e = Transfer {
        id: 0,
        flags: exclusive,
        ..t(A, B, 1)
    };
    l.first(
        e,
        fresh_id,
        R::IdMustNotBeZero,
        R::FlagsAreMutuallyExclusive,
    );
    let e = Transfer { id: M, ..e };
    l.first(
        e,
        fresh_id,
        R::IdMustNotBeIntMax,
        R::FlagsAreMutuallyExclusive,
    );
    // 2 ↔ 3, with the combinations step 2 also covers (post/void with balancing or
    // closing, refund with pending, balancing or closing).
    let stored = t(A, B, 10);
    l.ok(&[stored]);
    for flags in [
        exclusive,
        TF::POST_PENDING_TRANSFER.with(TF::BALANCING_DEBIT),
        TF::VOID_PENDING_TRANSFER.with(TF::CLOSING_CREDIT),
        TF::REFUND.with(TF::PENDING),
        TF::REFUND.with(TF::BALANCING_CREDIT),
        TF::REFUND.with(TF::CLOSING_DEBIT),
    ] {
        let e = Transfer { flags, ..stored };
        let fix = |t: &mut Transfer| t.flags = TF::PENDING;
        l.first(
            e,
            fix,
            R::FlagsAreMutuallyExclusive,
            R::ExistsWithDifferentFlags,
        );
    }
    // 3 before the kind's own checks: a resubmission is compared, not re-validated.
    let e = Transfer {
        debit_account_id: 0,
        ..stored
    };
    let (earlier, later) = (
        R::ExistsWithDifferentDebitAccountId,
        R::DebitAccountIdMustNotBeZero,
    );
    l.first(e, fresh_id, earlier, later);
    let e = Transfer {
        amount: 0,
        ..stored
    };
    l.first(
        e,
        fresh_id,
        R::ExistsWithDifferentAmount,
        R::AmountMustNotBeZero,
    );
    // 2 ↔ 4 and 4 ↔ 5: an id burned by a transient failure.
    let burned = t(MISSING, B, 1);
    assert_eq!(l.one(burned), R::DebitAccountNotFound);
    let e = Transfer {
        flags: exclusive,
        ..burned
    };
    let fix = |t: &mut Transfer| t.flags = TF::empty();
    l.first(e, fix, R::FlagsAreMutuallyExclusive, R::IdAlreadyFailed);
    let e = Transfer {
        debit_account_id: 0,
        ..burned
    };
    l.first(
        e,
        fresh_id,
        R::IdAlreadyFailed,
        R::DebitAccountIdMustNotBeZero,
    );
    // A retry that would pass now still gets the first outcome's meaning.
    let retry = Transfer {
        debit_account_id: A,
        ..burned
    };
    assert_eq!(l.one(retry), R::IdAlreadyFailed);
    // (3 ↔ 4 cannot fail together: an id is stored or burned, never both.)
    assert!(l.state.lookup_transfer(burned.id).is_none());
    assert!(!l.state.id_failed(stored.id));
}

#[test]
fn transfer_exists_fields_are_compared_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    let stored = Transfer {
        timeout: 100,
        user_data_128: 1,
        user_data_64: 1,
        user_data_32: 1,
        ..pending(A, B, 10)
    };
    l.ok(&[stored]);
    let faults: [Fault<Transfer>; 11] = [
        (|t| t.flags = TF::empty(), R::ExistsWithDifferentFlags),
        (
            |t| t.debit_account_id = C,
            R::ExistsWithDifferentDebitAccountId,
        ),
        (
            |t| t.credit_account_id = C,
            R::ExistsWithDifferentCreditAccountId,
        ),
        (|t| t.amount = 11, R::ExistsWithDifferentAmount),
        (|t| t.pending_id = 5, R::ExistsWithDifferentPendingId),
        (|t| t.ledger = OTHER_LEDGER, R::ExistsWithDifferentLedger),
        (|t| t.code = 2, R::ExistsWithDifferentCode),
        (|t| t.timeout = 200, R::ExistsWithDifferentTimeout),
        (|t| t.user_data_128 = 2, R::ExistsWithDifferentUserData128),
        (|t| t.user_data_64 = 2, R::ExistsWithDifferentUserData64),
        (|t| t.user_data_32 = 2, R::ExistsWithDifferentUserData32),
    ];
    compared_in_order(&mut l, stored, &faults);

    // A refund: `refund_of` takes `pending_id`'s place; the accounts, ledger and code it
    // gave as 0 (filled in from the original) are not compared.
    let original = t(A, B, 10);
    let stored = refund(original.id, 5);
    l.ok(&[original, stored]);
    let faults: [Fault<Transfer>; 3] = [
        (|t| t.amount = 4, R::ExistsWithDifferentAmount),
        (|t| t.pending_id = MISSING, R::ExistsWithDifferentRefundOf),
        (|t| t.ledger = OTHER_LEDGER, R::ExistsWithDifferentLedger),
    ];
    in_order(&mut l, stored, &faults);
    assert_eq!(l.one(stored), R::Exists);
}

#[test]
fn linked_flag_is_not_compared_on_resubmission() {
    let mut l = Ledger::with_accounts();
    // Stored linked inside a closed chain, then resubmitted alone.
    let (x, y) = (plain(id()), plain(id()));
    l.ok(&[x.linked(), y]);
    assert_eq!(l.one(x), R::Exists);
    // Stored alone, then resubmitted linked inside a closed chain: `exists` (which fails
    // the chain), not `exists_with_different_flags`.
    let (z, w) = (plain(id()), plain(id()));
    l.ok(&[z]);
    assert_eq!(l.apply(&[z.linked(), w]), [R::Exists, R::LinkedEventFailed]);

    let (x, y) = (t(A, B, 1), t(A, B, 2));
    l.ok(&[x.linked(), y]);
    assert_eq!(l.one(x), R::Exists);
    let (z, w) = (t(A, B, 3), t(A, B, 4));
    l.ok(&[z]);
    assert_eq!(l.apply(&[z.linked(), w]), [R::Exists, R::LinkedEventFailed]);
}

#[test]
fn exists_fails_a_chain_like_any_other_failure() {
    let mut l = Ledger::with_accounts();
    let stored = plain(id());
    l.ok(&[stored]);
    let (new, newer) = (plain(id()), plain(id()));
    let results = l.apply(&[stored.linked(), new.linked(), newer]);
    assert_eq!(
        results,
        [R::Exists, R::LinkedEventFailed, R::LinkedEventFailed]
    );
    assert!(l.state.lookup_account(new.id).is_none());
    assert!(l.state.lookup_account(newer.id).is_none());

    let stored = t(A, B, 10);
    l.ok(&[stored]);
    let balances = *l.state.lookup_account(A).unwrap();
    // `exists` first, and in the middle of a chain.
    let (u, v) = (t(A, B, 1), t(B, A, 2));
    let results = l.apply(&[stored.linked(), u.linked(), v]);
    assert_eq!(
        results,
        [R::Exists, R::LinkedEventFailed, R::LinkedEventFailed]
    );
    let results = l.apply(&[u.linked(), stored.linked(), v]);
    assert_eq!(
        results,
        [R::LinkedEventFailed, R::Exists, R::LinkedEventFailed]
    );
    assert_eq!(*l.state.lookup_account(A).unwrap(), balances);
    for e in [u, v] {
        assert!(l.state.lookup_transfer(e.id).is_none());
        // `exists` and `linked_event_failed` are not transient: the ids are still free.
        assert!(!l.state.id_failed(e.id));
    }
    l.ok(&[u, v]);
}

#[test]
fn open_chain_keeps_the_first_failure_code() {
    let mut l = Ledger::with_accounts();
    let alone = t(A, B, 1);
    let (before, fails, after) = (t(A, B, 2), t(A, A, 3), t(B, A, 4));
    // The open chain's last event is not checked (id 0 would fail).
    let last = Transfer {
        id: 0,
        ..t(A, B, 5)
    };
    let results = l.apply(&[
        alone,
        before.linked(),
        fails.linked(),
        after.linked(),
        last.linked(),
    ]);
    let expected = [
        R::Ok,
        R::LinkedEventFailed,
        R::AccountsMustBeDifferent,
        R::LinkedEventFailed,
        R::LinkedEventChainOpen,
    ];
    assert_eq!(results, expected);
    assert!(l.state.lookup_transfer(alone.id).is_some());
    for e in [before, after] {
        assert!(l.state.lookup_transfer(e.id).is_none());
    }
    // Nothing fails before the end: only the end's own code.
    let (x, y) = (t(A, B, 6), t(A, B, 7));
    let results = l.apply(&[x.linked(), y.linked()]);
    assert_eq!(results, [R::LinkedEventFailed, R::LinkedEventChainOpen]);
    assert!(l.state.lookup_transfer(x.id).is_none());
    // A transient failure in an open chain keeps its code and burns its id.
    let (missing, y) = (t(MISSING, B, 1), t(A, B, 8));
    let results = l.apply(&[missing.linked(), y.linked()]);
    assert_eq!(results, [R::DebitAccountNotFound, R::LinkedEventChainOpen]);
    assert!(l.state.id_failed(missing.id));

    let (x, bad, y) = (
        plain(id()),
        Account {
            ledger: 0,
            ..plain(id())
        },
        plain(id()),
    );
    let results = l.apply(&[x.linked(), bad.linked(), y.linked()]);
    let expected = [
        R::LinkedEventFailed,
        R::LedgerMustNotBeZero,
        R::LinkedEventChainOpen,
    ];
    assert_eq!(results, expected);
    assert!(l.state.lookup_account(x.id).is_none());
}

#[test]
fn single_phase_and_pending_checks_5_to_10_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    for kind in [TF::empty(), TF::PENDING] {
        let new = |dr, cr| Transfer {
            flags: kind,
            ..t(dr, cr, 10)
        };
        let dr_a = |t: &mut Transfer| t.debit_account_id = A;
        // Inside 5: debit before credit.
        let (earlier, later) = (
            R::DebitAccountIdMustNotBeIntMax,
            R::CreditAccountIdMustNotBeZero,
        );
        l.first(new(M, 0), dr_a, earlier, later);
        let (earlier, later) = (
            R::DebitAccountIdMustNotBeZero,
            R::CreditAccountIdMustNotBeIntMax,
        );
        l.first(new(0, M), dr_a, earlier, later);
        // 5 ↔ 6.
        let same = |t: &mut Transfer| (t.debit_account_id, t.credit_account_id) = (A, A);
        l.first(
            new(0, 0),
            same,
            R::DebitAccountIdMustNotBeZero,
            R::AccountsMustBeDifferent,
        );
        l.first(
            new(M, M),
            same,
            R::DebitAccountIdMustNotBeIntMax,
            R::AccountsMustBeDifferent,
        );
        // 6 ↔ 7.
        let e = Transfer {
            pending_id: 7,
            ..new(A, A)
        };
        let fix = |t: &mut Transfer| t.credit_account_id = B;
        l.first(e, fix, R::AccountsMustBeDifferent, R::PendingIdMustBeZero);
        // 7 ↔ 9 (a pending transfer may have a timeout: 7 ↔ 8 is single-phase, below).
        let e = Transfer {
            pending_id: 7,
            ledger: 0,
            ..new(A, B)
        };
        let fix = |t: &mut Transfer| t.pending_id = 0;
        l.first(e, fix, R::PendingIdMustBeZero, R::LedgerMustNotBeZero);
        // Inside 9: ledger, code, amount.
        let faults: [Fault<Transfer>; 3] = [
            (|t| t.ledger = 0, R::LedgerMustNotBeZero),
            (|t| t.code = 0, R::CodeMustNotBeZero),
            (|t| t.amount = 0, R::AmountMustNotBeZero),
        ];
        in_order(&mut l, new(A, B), &faults);
        // 9 ↔ 10.
        let e = Transfer {
            amount: 0,
            ..new(MISSING, B)
        };
        let fix = |t: &mut Transfer| t.amount = 1;
        l.first(e, fix, R::AmountMustNotBeZero, R::DebitAccountNotFound);
    }
}

#[test]
fn single_phase_timeout_and_closing_checks_run_in_the_specified_order() {
    // 7 ↔ 8, 8 ↔ closing (which follows 8), closing ↔ 9, 8 ↔ 9: a timeout or a closing
    // flag is only refused without `pending`.
    let mut l = Ledger::with_accounts();
    let e = Transfer {
        pending_id: 7,
        timeout: 5,
        ..t(A, B, 10)
    };
    let fix = |t: &mut Transfer| t.pending_id = 0;
    l.first(
        e,
        fix,
        R::PendingIdMustBeZero,
        R::TimeoutReservedForPendingTransfer,
    );
    let e = Transfer {
        timeout: 5,
        flags: TF::CLOSING_DEBIT,
        ..t(A, B, 10)
    };
    let fix = |t: &mut Transfer| t.timeout = 0;
    l.first(
        e,
        fix,
        R::TimeoutReservedForPendingTransfer,
        R::ClosingTransferMustBePending,
    );
    let e = Transfer {
        flags: TF::CLOSING_CREDIT,
        ledger: 0,
        ..t(A, B, 10)
    };
    let fix = |t: &mut Transfer| t.flags = TF::empty();
    l.first(
        e,
        fix,
        R::ClosingTransferMustBePending,
        R::LedgerMustNotBeZero,
    );
    let e = Transfer {
        timeout: 5,
        ledger: 0,
        ..t(A, B, 10)
    };
    let fix = |t: &mut Transfer| t.timeout = 0;
    l.first(
        e,
        fix,
        R::TimeoutReservedForPendingTransfer,
        R::LedgerMustNotBeZero,
    );
}

#[test]
fn single_phase_checks_10_to_14_with_imported_and_closed_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    // Transient codes burn the id: the fixed copy takes a new one.
    let renew = |t: &mut Transfer, f: fn(&mut Transfer)| {
        t.id = id();
        f(t);
    };
    // Inside 10: debit before credit.
    let fix = |t: &mut Transfer| renew(t, |t| t.debit_account_id = A);
    l.first(
        t(MISSING, MISSING_TOO, 1),
        fix,
        R::DebitAccountNotFound,
        R::CreditAccountNotFound,
    );
    // 10 ↔ 11: a missing credit account before any ledger mismatch.
    let fix = |t: &mut Transfer| renew(t, |t| t.credit_account_id = A);
    let (earlier, later) = (R::CreditAccountNotFound, R::AccountsMustHaveTheSameLedger);
    l.first(t(FOREIGN, MISSING, 1), fix, earlier, later);
    // Inside 11: the accounts' ledgers before the transfer's.
    let e = Transfer {
        ledger: 392,
        ..t(FOREIGN, A, 1)
    };
    let fix = |t: &mut Transfer| t.debit_account_id = B;
    let later = R::TransferMustHaveTheSameLedgerAsAccounts;
    l.first(e, fix, R::AccountsMustHaveTheSameLedger, later);
    // 11 ↔ imported: timestamp 1 is before the debit account's.
    let e = Transfer {
        ledger: OTHER_LEDGER,
        ..t(A, B, 1)
    };
    let fix = |t: &mut Transfer| t.ledger = TEST_LEDGER;
    let imported_code = R::ImportedEventTimestampMustPostdateDebitAccount;
    l.first(imported(e, 1), fix, later, imported_code);
    // Imported ↔ closed.
    let e = imported(t(CLOSED, B, 1), 1);
    l.first(e, not_imported, imported_code, R::DebitAccountAlreadyClosed);
    // Inside closed: debit before credit.
    let fix = |t: &mut Transfer| renew(t, |t| t.debit_account_id = A);
    let (earlier, later) = (R::DebitAccountAlreadyClosed, R::CreditAccountAlreadyClosed);
    l.first(t(CLOSED, CLOSED_TOO, 1), fix, earlier, later);
    // Closed ↔ 13 (closed ↔ 12: see the overflow test).
    let fix = |t: &mut Transfer| renew(t, |t| t.credit_account_id = B);
    let (earlier, later) = (R::CreditAccountAlreadyClosed, R::ExceedsCredits);
    l.first(t(NO_OVERDRAFT, CLOSED, 1), fix, earlier, later);
    // 13 ↔ 14.
    let fix = |t: &mut Transfer| renew(t, |t| t.debit_account_id = A);
    let e = t(NO_OVERDRAFT, NO_OVERCREDIT, 1);
    l.first(e, fix, R::ExceedsCredits, R::ExceedsDebits);
    let e = Transfer {
        flags: TF::PENDING,
        ..t(NO_OVERDRAFT, NO_OVERCREDIT, 1)
    };
    l.first(e, fix, R::ExceedsCredits, R::ExceedsDebits);
}

#[test]
fn overflow_checks_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    // p_dr/p_cr: debits/credits pending at the maximum; s_dr/s_cr: posted; h_dr/h_cr:
    // half the maximum each, pending and posted.
    let (p_dr, p_cr, s_dr, s_cr) = (id(), id(), id(), id());
    let (h_dr, h_cr) = (id(), id());
    l.ok(&[plain(p_dr), plain(p_cr), plain(s_dr), plain(s_cr)]);
    l.ok(&[plain(h_dr), plain(h_cr)]);
    l.ok(&[pending(p_dr, p_cr, M), t(s_dr, s_cr, M)]);
    l.ok(&[pending(h_dr, h_cr, M / 2 + 1), t(h_dr, h_cr, M / 2)]);
    let dr_a = |t: &mut Transfer| t.debit_account_id = A;
    let cr_b = |t: &mut Transfer| t.credit_account_id = B;
    let (earlier, later) = (R::OverflowsDebitsPending, R::OverflowsCreditsPending);
    l.first(pending(p_dr, p_cr, 1), dr_a, earlier, later);
    // A pending transfer must fit the posted balances too: its post adds it there.
    l.first(
        pending(p_dr, s_cr, 1),
        dr_a,
        R::OverflowsDebitsPending,
        R::OverflowsCreditsPosted,
    );
    l.first(
        pending(s_dr, s_cr, 1),
        dr_a,
        R::OverflowsDebitsPosted,
        R::OverflowsCreditsPosted,
    );
    l.first(
        pending(s_dr, h_cr, 1),
        dr_a,
        R::OverflowsDebitsPosted,
        R::OverflowsCredits,
    );
    l.first(
        pending(h_dr, h_cr, 1),
        dr_a,
        R::OverflowsDebits,
        R::OverflowsCredits,
    );
    let (earlier, later) = (R::OverflowsDebitsPosted, R::OverflowsCreditsPosted);
    l.first(t(s_dr, s_cr, 1), dr_a, earlier, later);
    l.first(
        t(p_dr, s_cr, 1),
        cr_b,
        R::OverflowsCreditsPosted,
        R::OverflowsDebits,
    );
    l.first(
        t(p_dr, p_cr, 1),
        dr_a,
        R::OverflowsDebits,
        R::OverflowsCredits,
    );
    // 12 ↔ 13.
    let e = t(NO_OVERDRAFT, s_cr, 1);
    l.first(e, cr_b, R::OverflowsCreditsPosted, R::ExceedsCredits);
    // Closed ↔ 12.
    let fix = |t: &mut Transfer| {
        t.id = id();
        t.debit_account_id = A;
    };
    let e = t(CLOSED, s_cr, 1);
    l.first(
        e,
        fix,
        R::DebitAccountAlreadyClosed,
        R::OverflowsCreditsPosted,
    );
}

#[test]
fn overflows_timeout_is_the_last_overflow_check() {
    // Near the end of u63 time: the longest timeout no longer fits after now.
    let mut l = Ledger::starting_at(tally_types::NOW_NS_MAX - 3_000_000_000_000_000_000);
    l.create_accounts();
    // `full`: half the maximum credited pending, half posted; only their sum is full.
    let (dr, full) = (id(), id());
    l.ok(&[plain(dr), plain(full)]);
    l.ok(&[pending(dr, full, M / 2 + 1), t(dr, full, M / 2)]);
    let e = Transfer {
        timeout: u32::MAX,
        ..pending(A, full, 1)
    };
    let fix = |t: &mut Transfer| t.credit_account_id = B;
    l.first(e, fix, R::OverflowsCredits, R::OverflowsTimeout);
    // 12 ↔ 13.
    let e = Transfer {
        timeout: u32::MAX,
        ..pending(NO_OVERDRAFT, B, 1)
    };
    let fix = |t: &mut Transfer| t.timeout = 0;
    l.first(e, fix, R::OverflowsTimeout, R::ExceedsCredits);
}

#[test]
fn balancing_clamp_comes_after_the_closed_checks_and_before_steps_12_to_14() {
    let mut l = Ledger::with_accounts();
    let (src, big) = (id(), id());
    l.ok(&[plain(src), plain(big)]);
    // NO_OVERDRAFT may spend 5; `big` has room for 10 more credits; A's limit is 0.
    l.ok(&[t(A, NO_OVERDRAFT, 5), t(src, big, M - 10)]);
    let balancing = |dr, cr| Transfer {
        flags: TF::BALANCING_DEBIT,
        ..t(dr, cr, 100)
    };
    // Closed before the clamp (which would move 0 and succeed).
    let e = balancing(A, CLOSED);
    let fix = |t: &mut Transfer| {
        t.id = id();
        t.credit_account_id = B;
    };
    l.first(e, fix, R::CreditAccountAlreadyClosed, R::Ok);
    // 12 and 13 run on the clamped amount: 100 overflows `big` (and exceeds the
    // credits), 5 does neither.
    assert_eq!(l.one(t(NO_OVERDRAFT, big, 100)), R::OverflowsCreditsPosted);
    let clamped = balancing(NO_OVERDRAFT, big);
    assert_eq!(l.one(clamped), R::Ok);
    assert_eq!(l.state.lookup_transfer(clamped.id).unwrap().amount, 5);
}

#[test]
fn post_and_void_checks_5_to_9_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    let (p, single) = (pending(A, B, 10), t(A, B, 10));
    l.ok(&[p, single]);
    let to_p = |t: &mut Transfer| t.pending_id = p.id;
    for make in [post as fn(u128, u128) -> Transfer, void] {
        let e = |pending_id| make(pending_id, 0);
        // 5 ↔ 6 (the codes inside 5 cannot fail together).
        let timeout = R::TimeoutReservedForPendingTransfer;
        let with_timeout = |pending_id| Transfer {
            timeout: 5,
            ..e(pending_id)
        };
        l.first(with_timeout(0), to_p, R::PendingIdMustNotBeZero, timeout);
        l.first(with_timeout(M), to_p, R::PendingIdMustNotBeIntMax, timeout);
        let own = with_timeout(0);
        let own = Transfer {
            pending_id: own.id,
            ..own
        };
        l.first(own, to_p, R::PendingIdMustBeDifferent, timeout);
        // 6 ↔ 7.
        let fix = |t: &mut Transfer| t.timeout = 0;
        l.first(
            with_timeout(MISSING),
            fix,
            timeout,
            R::PendingTransferNotFound,
        );
        // 7 ↔ 8 (not found and not pending cannot fail together).
        let e_single = Transfer {
            debit_account_id: C,
            ..e(single.id)
        };
        let later = R::PendingTransferHasDifferentDebitAccountId;
        l.first(e_single, to_p, R::PendingTransferNotPending, later);
        // Inside 8: debit, credit, ledger, code.
        let faults: [Fault<Transfer>; 4] = [
            (|t| t.debit_account_id = C, later),
            (
                |t| t.credit_account_id = C,
                R::PendingTransferHasDifferentCreditAccountId,
            ),
            (
                |t| t.ledger = OTHER_LEDGER,
                R::PendingTransferHasDifferentLedger,
            ),
            (|t| t.code = 2, R::PendingTransferHasDifferentCode),
        ];
        in_order(&mut l, e(p.id), &faults);
    }
    // 8 ↔ 9 (inside 9, one code is for a post, the other for a void).
    let no_code = |t: &mut Transfer| t.code = 0;
    let e = Transfer {
        code: 2,
        ..post(p.id, 11)
    };
    let (earlier, later) = (
        R::PendingTransferHasDifferentCode,
        R::ExceedsPendingTransferAmount,
    );
    l.first(e, no_code, earlier, later);
    let e = Transfer {
        code: 2,
        ..void(p.id, 7)
    };
    l.first(e, no_code, earlier, R::PendingTransferHasDifferentAmount);
}

#[test]
fn post_and_void_checks_9_to_11_with_imported_and_closed_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    let (posted, voided, open) = (pending(A, B, 10), pending(A, B, 10), pending(A, B, 10));
    let expiring = Transfer {
        timeout: 1,
        ..pending(A, B, 10)
    };
    l.ok(&[posted, voided, open, expiring]);
    l.ok(&[post(posted.id, 0), void(voided.id, 0)]);
    // `expiring` expires before the next batch.
    l.advance(2 * NS_PER_S);
    let no_amount = |t: &mut Transfer| t.amount = 0;
    let no_credit = |t: &mut Transfer| t.credit_account_id = 0;
    for (p, settled) in [
        (posted, R::PendingTransferAlreadyPosted),
        (voided, R::PendingTransferAlreadyVoided),
        (expiring, R::PendingTransferExpired),
    ] {
        // 9 ↔ 10 (the codes inside 10 cannot fail together).
        l.first(
            post(p.id, 11),
            no_amount,
            R::ExceedsPendingTransferAmount,
            settled,
        );
        l.first(
            void(p.id, 7),
            no_amount,
            R::PendingTransferHasDifferentAmount,
            settled,
        );
        // 8 ↔ 10.
        let e = Transfer {
            credit_account_id: C,
            ..void(p.id, 0)
        };
        l.first(
            e,
            no_credit,
            R::PendingTransferHasDifferentCreditAccountId,
            settled,
        );
    }
    // 10 ↔ imported: timestamp 1 regresses.
    let to_open = |t: &mut Transfer| t.pending_id = open.id;
    let regress = R::ImportedEventTimestampMustNotRegress;
    let e = imported(post(posted.id, 0), 1);
    l.first(e, to_open, R::PendingTransferAlreadyPosted, regress);
    // Imported ↔ closed: close A with a pending closing transfer of 0.
    l.ok(&[Transfer {
        flags: TF::PENDING.with(TF::CLOSING_DEBIT),
        ..t(A, B, 0)
    }]);
    let e = imported(post(open.id, 0), 1);
    l.first(e, not_imported, regress, R::DebitAccountAlreadyClosed);
    // The closed checks are not for a void.
    assert_eq!(l.one(void(open.id, 0)), R::Ok);
    // (Closed ↔ 11 cannot fail together: a post moves what its pending transfer
    // already holds within the u128 balances, so step 11 cannot fail.)
}

#[test]
fn refund_checks_5_to_9_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    let (original, p) = (t(A, B, 10), pending(A, B, 10));
    l.ok(&[original, p]);
    let to_original = |t: &mut Transfer| t.pending_id = original.id;
    let timeout = R::TimeoutReservedForPendingTransfer;
    let with_timeout = |refund_of| Transfer {
        timeout: 5,
        ..refund(refund_of, 1)
    };
    // 5 ↔ 6 (the codes inside 5 cannot fail together).
    l.first(
        with_timeout(0),
        to_original,
        R::RefundOfMustNotBeZero,
        timeout,
    );
    l.first(
        with_timeout(M),
        to_original,
        R::RefundOfMustNotBeIntMax,
        timeout,
    );
    // 6 ↔ 7.
    let fix = |t: &mut Transfer| t.timeout = 0;
    l.first(
        with_timeout(MISSING),
        fix,
        timeout,
        R::OriginalTransferNotFound,
    );
    // 7 ↔ 8 (not found and not refundable cannot fail together).
    let e = Transfer {
        debit_account_id: C,
        ..refund(p.id, 1)
    };
    let later = R::RefundHasDifferentDebitAccountId;
    l.first(e, to_original, R::OriginalTransferNotRefundable, later);
    // Inside 8 (debit ≠ original's credit, credit ≠ original's debit, ledger), 8 ↔ 9.
    let faults: [Fault<Transfer>; 4] = [
        (|t| t.debit_account_id = C, later),
        (
            |t| t.credit_account_id = C,
            R::RefundHasDifferentCreditAccountId,
        ),
        (|t| t.ledger = OTHER_LEDGER, R::RefundHasDifferentLedger),
        (|t| t.amount = 0, R::AmountMustNotBeZero),
    ];
    in_order(&mut l, refund(original.id, 1), &faults);
    // (Inside 9: amount 0 never exceeds the refundable amount.)
}

#[test]
fn refund_checks_9_to_10_with_imported_and_closed_run_in_the_specified_order() {
    let mut l = Ledger::with_accounts();
    let regress = R::ImportedEventTimestampMustNotRegress;
    // 9 ↔ imported: timestamp 1 regresses.
    let original = t(A, B, 10);
    l.ok(&[original]);
    let e = imported(refund(original.id, 11), 1);
    let fix = |t: &mut Transfer| t.amount = 5;
    l.first(e, fix, R::ExceedsRefundableAmount, regress);
    // A refund of `o` debits NO_OVERDRAFT, which spent all it got, and credits
    // NO_OVERCREDIT, which got as much as it paid: 13 ↔ 14.
    let o = t(NO_OVERCREDIT, NO_OVERDRAFT, 10);
    l.ok(&[o, t(NO_OVERDRAFT, A, 10), t(B, NO_OVERCREDIT, 10)]);
    assert_eq!(l.one(refund(o.id, 5)), R::ExceedsCredits);
    l.ok(&[t(A, NO_OVERDRAFT, 5)]);
    assert_eq!(l.one(refund(o.id, 5)), R::ExceedsDebits);
    // Imported ↔ closed ↔ 10: close NO_OVERCREDIT.
    l.ok(&[Transfer {
        flags: TF::PENDING.with(TF::CLOSING_CREDIT),
        ..t(B, NO_OVERCREDIT, 0)
    }]);
    let e = imported(refund(o.id, 5), 1);
    l.first(e, not_imported, regress, R::CreditAccountAlreadyClosed);
}

#[test]
fn imported_transfer_checks_run_in_the_listed_order() {
    let mut l = Ledger::with_accounts();
    let last = t(A, B, 1);
    l.ok(&[last]);
    let last_stamp = l.state.lookup_transfer(last.id).unwrap().timestamp;
    // Two accounts created after every transfer, one after the other.
    let (late_dr, late_cr) = (id(), id());
    l.ok(&[plain(late_dr)]);
    l.ok(&[plain(late_cr)]);
    // After every transfer, before both late accounts, equal to no account's.
    let between = last_stamp + 1;
    let e = imported(t(late_dr, late_cr, 1), last_stamp);
    let fix = |t: &mut Transfer| t.timestamp = between;
    let regress = R::ImportedEventTimestampMustNotRegress;
    let postdate_dr = R::ImportedEventTimestampMustPostdateDebitAccount;
    let postdate_cr = R::ImportedEventTimestampMustPostdateCreditAccount;
    l.first(e, fix, regress, postdate_dr);
    let e = imported(t(late_dr, late_cr, 1), between);
    let fix = |t: &mut Transfer| t.debit_account_id = A;
    l.first(e, fix, postdate_dr, postdate_cr);
    let e = Transfer {
        timeout: 5,
        ..pending(A, late_cr, 1)
    };
    let fix = |t: &mut Transfer| t.credit_account_id = B;
    l.first(
        imported(e, between),
        fix,
        postdate_cr,
        R::ImportedEventTimeoutMustBeZero,
    );
    // Step 8 comes before them all.
    let e = Transfer {
        timeout: 5,
        ..t(A, B, 1)
    };
    let fix = |t: &mut Transfer| t.timeout = 0;
    let timeout = R::TimeoutReservedForPendingTransfer;
    l.first(imported(e, last_stamp), fix, timeout, regress);
}
