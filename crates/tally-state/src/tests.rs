#![allow(clippy::unwrap_used)]

use crate::test_support::{account, transfer};
use crate::{AccountBalancesRead, AccountTransfersRead, Query, QueryTarget};
use crate::{ImageSource, StateMachine};
use proptest::prelude::*;
use std::collections::HashSet;
use tally_types::{
    Account, AccountBalance, AccountFilter, AccountFlags as AF, Batch, LoadedImage, PendingStatus,
    ResultCode as R, StateImage, Transfer, TransferFlags as TF,
};

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_000 * SECOND;

fn pending(id: u128, debit: u128, credit: u128, amount: u128, timeout: u32) -> Transfer {
    Transfer {
        flags: TF::PENDING,
        timeout,
        ..transfer(id, debit, credit, amount)
    }
}

fn second_phase(id: u128, pending_id: u128, amount: u128, flag: TF) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount,
        flags: flag,
        ..Transfer::default()
    }
}

fn refund(id: u128, refund_of: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        pending_id: refund_of,
        amount,
        flags: TF::REFUND,
        ..Transfer::default()
    }
}

/// Applies `events` as one transfer batch at `at` and returns the results.
fn transfers(sm: &mut StateMachine, at: u64, events: Vec<Transfer>) -> Vec<R> {
    sm.apply(at, &Batch::CreateTransfers(events))
}

/// A ledger with a funded wallet, some pending transfers in every state, a refund and
/// accounts near u128::MAX, all on ledger 156 unless noted.
///  1: plain source    2: wallet (no overdraft), funded 1000 by #100
///  3: credits_must_not_exceed_debits    4: ledger 840    5: plain sink
///  6→7: u128::MAX posted    8→9: u128::MAX pending
/// #101 pending 50 (open) #102 pending 60 posted by #103 #104 pending 70 voided by #105
/// #106 pending 80 timeout 1 s (expired)  #107 refund 10 of #100
fn fixture() -> (StateMachine, u64) {
    let mut sm = StateMachine::new();
    let accounts = vec![
        account(1, 156, AF::empty()),
        account(2, 156, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(3, 156, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
        account(4, 840, AF::empty()),
        account(5, 156, AF::empty()),
        account(6, 156, AF::empty()),
        account(7, 156, AF::empty()),
        account(8, 156, AF::empty()),
        account(9, 156, AF::empty()),
    ];
    assert!(
        sm.apply(T0, &Batch::CreateAccounts(accounts))
            .iter()
            .all(|r| r.is_ok())
    );
    let setup = vec![
        transfer(100, 1, 2, 1000),
        pending(101, 1, 5, 50, 0),
        pending(102, 1, 5, 60, 0),
        second_phase(103, 102, 0, TF::POST_PENDING_TRANSFER),
        pending(104, 1, 5, 70, 0),
        second_phase(105, 104, 0, TF::VOID_PENDING_TRANSFER),
        pending(106, 1, 5, 80, 1),
        refund(107, 100, 10),
        transfer(108, 6, 7, u128::MAX),
        pending(109, 8, 9, u128::MAX, 0),
    ];
    let results = transfers(&mut sm, T0 + SECOND, setup);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    // An empty batch two seconds later lets #106 expire.
    transfers(&mut sm, T0 + 3 * SECOND, vec![]);
    assert_eq!(sm.pending_status(106), Some(PendingStatus::Expired));
    (sm, T0 + 10 * SECOND)
}

/// Applies one event to a fresh fixture, checks its result, and checks that a failure
/// left the state untouched (burned ids aside).
fn check(event: Transfer, expected: R) {
    check_at(event, expected, None);
}

fn check_at(event: Transfer, expected: R, at: Option<u64>) {
    let (mut sm, now) = fixture();
    let before = sm.image();
    let results = transfers(&mut sm, at.unwrap_or(now), vec![event]);
    assert_eq!(results, vec![expected], "event {event:?}");
    if !expected.is_ok() {
        let mut after = sm.image();
        assert_eq!(
            after.failed_ids.contains(&event.id),
            expected.is_transient()
        );
        after.failed_ids.retain(|id| *id != event.id);
        after.last_timestamp = before.last_timestamp;
        assert_eq!(after, before, "a failed event changed the state");
    }
}

fn check_account(event: Account, expected: R) {
    let (mut sm, now) = fixture();
    let results = sm.apply(now, &Batch::CreateAccounts(vec![event]));
    assert_eq!(results, vec![expected], "event {event:?}");
}

#[test]
fn every_account_result_code() {
    let a = |id| account(id, 156, AF::empty());
    check_account(a(10), R::Ok);
    check_account(a(0), R::IdMustNotBeZero);
    check_account(a(u128::MAX), R::IdMustNotBeIntMax);
    let both = AF::DEBITS_MUST_NOT_EXCEED_CREDITS.with(AF::CREDITS_MUST_NOT_EXCEED_DEBITS);
    check_account(account(10, 156, both), R::FlagsAreMutuallyExclusive);
    check_account(account(10, 0, AF::empty()), R::LedgerMustNotBeZero);
    check_account(Account { code: 0, ..a(10) }, R::CodeMustNotBeZero);
    check_account(a(2), R::ExistsWithDifferentFlags);
    check_account(account(1, 840, AF::empty()), R::ExistsWithDifferentLedger);
    check_account(Account { code: 2, ..a(1) }, R::ExistsWithDifferentCode);
    check_account(
        Account {
            user_data_128: 1,
            ..a(1)
        },
        R::ExistsWithDifferentUserData128,
    );
    check_account(
        Account {
            user_data_64: 1,
            ..a(1)
        },
        R::ExistsWithDifferentUserData64,
    );
    check_account(
        Account {
            user_data_32: 1,
            ..a(1)
        },
        R::ExistsWithDifferentUserData32,
    );
    check_account(a(1), R::Exists);
    check_account(account(1, 156, AF::LINKED), R::LinkedEventChainOpen);
}

#[test]
fn every_common_and_single_phase_transfer_result_code() {
    single_phase_id_and_flags_codes();
    single_phase_exists_codes();
    single_phase_field_codes();
    single_phase_account_and_balance_codes();
}

/// The event's own id and kind flags: ok, id_must_not_be_*, flags_are_mutually_exclusive.
fn single_phase_id_and_flags_codes() {
    check(transfer(200, 1, 5, 1), R::Ok);
    check(transfer(0, 1, 5, 1), R::IdMustNotBeZero);
    check(transfer(u128::MAX, 1, 5, 1), R::IdMustNotBeIntMax);
    let two_kinds = TF::PENDING.with(TF::REFUND);
    check(
        Transfer {
            flags: two_kinds,
            ..transfer(200, 1, 5, 1)
        },
        R::FlagsAreMutuallyExclusive,
    );
}

/// A resubmitted id: exists, or exists_with_different_* naming the first differing field.
fn single_phase_exists_codes() {
    let t100 = transfer(100, 1, 2, 1000);
    check(
        Transfer {
            flags: TF::PENDING,
            ..t100
        },
        R::ExistsWithDifferentFlags,
    );
    check(
        Transfer {
            debit_account_id: 5,
            ..t100
        },
        R::ExistsWithDifferentDebitAccountId,
    );
    check(
        Transfer {
            credit_account_id: 5,
            ..t100
        },
        R::ExistsWithDifferentCreditAccountId,
    );
    check(Transfer { amount: 1, ..t100 }, R::ExistsWithDifferentAmount);
    check(
        Transfer {
            ledger: 840,
            ..t100
        },
        R::ExistsWithDifferentLedger,
    );
    check(Transfer { code: 2, ..t100 }, R::ExistsWithDifferentCode);
    check(
        Transfer {
            user_data_128: 1,
            ..t100
        },
        R::ExistsWithDifferentUserData128,
    );
    check(
        Transfer {
            user_data_64: 1,
            ..t100
        },
        R::ExistsWithDifferentUserData64,
    );
    check(
        Transfer {
            user_data_32: 1,
            ..t100
        },
        R::ExistsWithDifferentUserData32,
    );
    check(
        Transfer {
            flags: TF::LINKED,
            ..t100
        },
        R::LinkedEventChainOpen,
    );
    check(t100, R::Exists);
    check(pending(101, 1, 5, 50, 7), R::ExistsWithDifferentTimeout);
    check(
        second_phase(103, 101, 0, TF::POST_PENDING_TRANSFER),
        R::ExistsWithDifferentPendingId,
    );
    check(refund(107, 103, 10), R::ExistsWithDifferentRefundOf);
}

/// Fields checked before any account is read: account ids, pending_id, timeout, ledger, code,
/// amount.
fn single_phase_field_codes() {
    check(transfer(200, 0, 5, 1), R::DebitAccountIdMustNotBeZero);
    check(
        transfer(200, u128::MAX, 5, 1),
        R::DebitAccountIdMustNotBeIntMax,
    );
    check(transfer(200, 1, 0, 1), R::CreditAccountIdMustNotBeZero);
    check(
        transfer(200, 1, u128::MAX, 1),
        R::CreditAccountIdMustNotBeIntMax,
    );
    check(transfer(200, 1, 1, 1), R::AccountsMustBeDifferent);
    check(
        Transfer {
            pending_id: 101,
            ..transfer(200, 1, 5, 1)
        },
        R::PendingIdMustBeZero,
    );
    check(
        Transfer {
            timeout: 1,
            ..transfer(200, 1, 5, 1)
        },
        R::TimeoutReservedForPendingTransfer,
    );
    check(
        Transfer {
            ledger: 0,
            ..transfer(200, 1, 5, 1)
        },
        R::LedgerMustNotBeZero,
    );
    check(
        Transfer {
            code: 0,
            ..transfer(200, 1, 5, 1)
        },
        R::CodeMustNotBeZero,
    );
    check(transfer(200, 1, 5, 0), R::AmountMustNotBeZero);
}

/// The accounts and their balances: not found, ledgers, overflows, limits.
fn single_phase_account_and_balance_codes() {
    check(transfer(200, 99, 5, 1), R::DebitAccountNotFound);
    check(transfer(200, 1, 99, 1), R::CreditAccountNotFound);
    check(transfer(200, 1, 4, 1), R::AccountsMustHaveTheSameLedger);
    check(
        Transfer {
            ledger: 840,
            ..transfer(200, 1, 5, 1)
        },
        R::TransferMustHaveTheSameLedgerAsAccounts,
    );
    check(pending(200, 8, 5, 1, 0), R::OverflowsDebitsPending);
    check(pending(200, 5, 9, 1, 0), R::OverflowsCreditsPending);
    check(transfer(200, 6, 5, 1), R::OverflowsDebitsPosted);
    check(transfer(200, 5, 7, 1), R::OverflowsCreditsPosted);
    // A pending transfer must fit the posted balances its post would add it to.
    check(pending(200, 6, 5, 1, 0), R::OverflowsDebitsPosted);
    check(pending(200, 5, 7, 1, 0), R::OverflowsCreditsPosted);
    check(transfer(200, 8, 5, 1), R::OverflowsDebits);
    check(transfer(200, 5, 9, 1), R::OverflowsCredits);
    check_at(
        pending(200, 1, 5, 1, u32::MAX),
        R::OverflowsTimeout,
        Some(u64::MAX - 10 * SECOND),
    );
    // Past i64::MAX (TigerBeetle's u63 instants), not only past u64::MAX.
    let latest = tally_types::NOW_NS_MAX;
    check_at(
        pending(200, 1, 5, 1, 11),
        R::OverflowsTimeout,
        Some(latest - 10 * SECOND),
    );
    check_at(pending(200, 1, 5, 1, 10), R::Ok, Some(latest - 10 * SECOND));
    check(transfer(200, 2, 5, 991), R::ExceedsCredits);
    check(transfer(200, 2, 5, 990), R::Ok);
    check(transfer(200, 5, 3, 1), R::ExceedsDebits);
}

#[test]
fn every_post_void_and_refund_result_code() {
    let post = |id, p, amount| second_phase(id, p, amount, TF::POST_PENDING_TRANSFER);
    let void = |id, p, amount| second_phase(id, p, amount, TF::VOID_PENDING_TRANSFER);
    check(post(200, 101, 0), R::Ok);
    check(void(200, 101, 50), R::Ok);
    check(post(200, 0, 0), R::PendingIdMustNotBeZero);
    check(post(200, u128::MAX, 0), R::PendingIdMustNotBeIntMax);
    check(post(200, 200, 0), R::PendingIdMustBeDifferent);
    check(
        Transfer {
            timeout: 1,
            ..post(200, 101, 0)
        },
        R::TimeoutReservedForPendingTransfer,
    );
    check(post(200, 999, 0), R::PendingTransferNotFound);
    check(post(200, 100, 0), R::PendingTransferNotPending);
    let given = post(200, 101, 0);
    check(
        Transfer {
            debit_account_id: 2,
            ..given
        },
        R::PendingTransferHasDifferentDebitAccountId,
    );
    check(
        Transfer {
            credit_account_id: 2,
            ..given
        },
        R::PendingTransferHasDifferentCreditAccountId,
    );
    check(
        Transfer {
            ledger: 840,
            ..given
        },
        R::PendingTransferHasDifferentLedger,
    );
    check(
        Transfer { code: 9, ..given },
        R::PendingTransferHasDifferentCode,
    );
    check(post(200, 101, 51), R::ExceedsPendingTransferAmount);
    check(void(200, 101, 49), R::PendingTransferHasDifferentAmount);
    check(post(200, 102, 0), R::PendingTransferAlreadyPosted);
    check(post(200, 104, 0), R::PendingTransferAlreadyVoided);
    check(void(200, 106, 0), R::PendingTransferExpired);
    check(refund(200, 100, 5), R::Ok);
    check(refund(200, 103, 60), R::Ok);
    check(refund(200, 0, 5), R::RefundOfMustNotBeZero);
    check(refund(200, u128::MAX, 5), R::RefundOfMustNotBeIntMax);
    check(
        Transfer {
            timeout: 1,
            ..refund(200, 100, 5)
        },
        R::TimeoutReservedForPendingTransfer,
    );
    check(refund(200, 999, 5), R::OriginalTransferNotFound);
    for not_refundable in [101, 105, 106, 107] {
        check(
            refund(200, not_refundable, 5),
            R::OriginalTransferNotRefundable,
        );
    }
    let given = refund(200, 100, 5);
    check(
        Transfer {
            debit_account_id: 1,
            ..given
        },
        R::RefundHasDifferentDebitAccountId,
    );
    check(
        Transfer {
            credit_account_id: 2,
            ..given
        },
        R::RefundHasDifferentCreditAccountId,
    );
    check(
        Transfer {
            ledger: 840,
            ..given
        },
        R::RefundHasDifferentLedger,
    );
    check(refund(200, 100, 0), R::AmountMustNotBeZero);
    check(refund(200, 100, 991), R::ExceedsRefundableAmount);
    check(refund(200, 100, 990), R::Ok);
    check(refund(200, 108, 1), R::Ok);
}

fn balancing(id: u128, debit: u128, credit: u128, amount: u128, flags: TF) -> Transfer {
    Transfer {
        flags,
        ..transfer(id, debit, credit, amount)
    }
}

/// Applies one event to a fresh fixture; returns its result, the stored transfer and
/// the two accounts' balances after it.
fn apply_one(event: Transfer) -> (R, Option<Transfer>, Account, Account) {
    let (mut sm, now) = fixture();
    let result = transfers(&mut sm, now, vec![event])[0];
    let stored = sm.lookup_transfer(event.id);
    let dr = *sm.lookup_account(event.debit_account_id).unwrap();
    let cr = *sm.lookup_account(event.credit_account_id).unwrap();
    (result, stored, dr, cr)
}

#[test]
fn balancing_moves_at_most_the_amount_and_records_what_it_moved() {
    // Account 2 (no overdraft): credits posted 1000, debits posted 10: 990 available.
    let (result, stored, dr, _) = apply_one(balancing(20, 2, 5, 5_000, TF::BALANCING_DEBIT));
    assert_eq!(result, R::Ok);
    assert_eq!(stored.unwrap().amount, 990);
    assert_eq!(dr.debits_posted, dr.credits_posted);
    // Under the bound, the whole amount moves.
    let (result, stored, ..) = apply_one(balancing(20, 2, 5, 300, TF::BALANCING_DEBIT));
    assert_eq!((result, stored.unwrap().amount), (R::Ok, 300));
    // Account 1 has no limit flag and is overdrawn: the clamp still applies, to 0, and
    // a transfer of 0 succeeds.
    let (result, stored, dr, _) = apply_one(balancing(20, 1, 5, 7, TF::BALANCING_DEBIT));
    assert_eq!((result, stored.unwrap().amount), (R::Ok, 0));
    assert_eq!(dr.debits_posted, 1_060);
    // balancing_credit: account 5 has debits posted 0, so nothing may be credited.
    let (result, stored, ..) = apply_one(balancing(20, 2, 5, 7, TF::BALANCING_CREDIT));
    assert_eq!((result, stored.unwrap().amount), (R::Ok, 0));
    // Account 1 as the credit side: debits posted 1060, credits 10: room for 1050.
    let (result, stored, ..) = apply_one(balancing(20, 5, 1, 5_000, TF::BALANCING_CREDIT));
    assert_eq!((result, stored.unwrap().amount), (R::Ok, 1_050));
    // Both flags: the smaller room (990 on the wallet, 1050 on account 1).
    let both = TF::BALANCING_MASK;
    let (result, stored, ..) = apply_one(balancing(20, 2, 1, 5_000, both));
    assert_eq!((result, stored.unwrap().amount), (R::Ok, 990));
    // balancing_credit alone leaves the wallet's own limit in force.
    let (result, stored, ..) = apply_one(balancing(20, 2, 1, 5_000, TF::BALANCING_CREDIT));
    assert_eq!((result, stored), (R::ExceedsCredits, None));
}

#[test]
fn balancing_pending_reserves_the_clamped_amount_and_posts_it() {
    let (mut sm, now) = fixture();
    let mut hold = balancing(20, 2, 5, 5_000, TF::BALANCING_DEBIT.with(TF::PENDING));
    hold.timeout = 0;
    let post = second_phase(21, 20, 0, TF::POST_PENDING_TRANSFER);
    assert_eq!(
        transfers(&mut sm, now, vec![hold, post]),
        vec![R::Ok, R::Ok]
    );
    assert_eq!(sm.lookup_transfer(20).unwrap().amount, 990);
    assert_eq!(sm.lookup_transfer(21).unwrap().amount, 990);
    let wallet = sm.lookup_account(2).unwrap();
    assert_eq!(
        (
            wallet.debits_pending,
            wallet.debits_posted,
            wallet.credits_posted
        ),
        (0, 1_000, 1_000)
    );
}

#[test]
fn balancing_checks_keep_their_places_in_the_order() {
    let b = |amount, flags| balancing(20, 2, 5, amount, flags);
    // A bound of 0 is refused at step 9, before any account is read.
    check(b(0, TF::BALANCING_DEBIT), R::AmountMustNotBeZero);
    check(
        balancing(20, 2, 77, 0, TF::BALANCING_DEBIT),
        R::AmountMustNotBeZero,
    );
    check(
        balancing(20, 2, 77, 5, TF::BALANCING_DEBIT),
        R::CreditAccountNotFound,
    );
    check(
        balancing(20, 2, 4, 5, TF::BALANCING_DEBIT),
        R::AccountsMustHaveTheSameLedger,
    );
    // With the post, void and refund flags: mutually exclusive (step 2).
    for other in [
        TF::POST_PENDING_TRANSFER,
        TF::VOID_PENDING_TRANSFER,
        TF::REFUND,
    ] {
        check(
            b(5, TF::BALANCING_CREDIT.with(other)),
            R::FlagsAreMutuallyExclusive,
        );
    }
    // The clamp comes before steps 12-14: balancing_debit alone leaves the credit
    // account's limit in force (account 3 has credits_must_not_exceed_debits and no
    // debits), and the clamped amount is what the limit sees.
    check(
        balancing(20, 2, 3, 5, TF::BALANCING_DEBIT),
        R::ExceedsDebits,
    );
    check(balancing(20, 2, 3, 5, TF::BALANCING_MASK), R::Ok);
    check(balancing(20, 1, 3, 5, TF::BALANCING_DEBIT), R::Ok);
    // The overflow checks see the clamped amount: u128::MAX posted on 7 would overflow,
    // but a clamp to 0 (account 1 is overdrawn) moves nothing.
    check(balancing(20, 1, 7, u128::MAX, TF::BALANCING_DEBIT), R::Ok);
    check(
        balancing(20, 2, 7, 5, TF::BALANCING_DEBIT),
        R::OverflowsCreditsPosted,
    );
}

#[test]
fn a_balancing_resubmission_exists_when_its_bound_covers_what_moved() {
    let (mut sm, now) = fixture();
    let first = balancing(20, 2, 5, 5_000, TF::BALANCING_DEBIT);
    assert_eq!(transfers(&mut sm, now, vec![first]), vec![R::Ok]);
    let again = |amount| balancing(20, 2, 5, amount, TF::BALANCING_DEBIT);
    let results = transfers(
        &mut sm,
        now + SECOND,
        vec![again(5_000), again(990), again(1_000_000), again(989)],
    );
    assert_eq!(
        results,
        vec![
            R::Exists,
            R::Exists,
            R::Exists,
            R::ExistsWithDifferentAmount
        ]
    );
    // Without the flag, the stored amount must match exactly.
    let plain = transfer(20, 2, 5, 5_000);
    assert_eq!(
        transfers(&mut sm, now + 2 * SECOND, vec![plain]),
        vec![R::ExistsWithDifferentFlags]
    );
}

/// A pending transfer of `amount` from `debit` to `credit` that closes the accounts
/// `closing` names.
fn closing(id: u128, debit: u128, credit: u128, amount: u128, closing: TF) -> Transfer {
    Transfer {
        flags: TF::PENDING.with(closing),
        ..transfer(id, debit, credit, amount)
    }
}

fn closed(sm: &StateMachine, id: u128) -> bool {
    sm.lookup_account(id).unwrap().flags.contains(AF::CLOSED)
}

#[test]
fn a_closing_transfer_closes_and_its_void_reopens() {
    let (mut sm, now) = fixture();
    // TigerBeetle's recipe: a pending transfer of 0 that closes both accounts.
    let close = closing(20, 1, 5, 0, TF::CLOSING_MASK);
    assert_eq!(transfers(&mut sm, now, vec![close]), vec![R::Ok]);
    assert!(closed(&sm, 1) && closed(&sm, 5));
    // Every transfer touching a closed account is refused, and the refusal burns its id.
    let results = transfers(
        &mut sm,
        now + SECOND,
        vec![
            transfer(21, 1, 2, 5),
            transfer(22, 2, 5, 5),
            pending(23, 2, 1, 5, 0),
            refund(24, 100, 1),
            second_phase(25, 101, 0, TF::POST_PENDING_TRANSFER),
            second_phase(26, 20, 0, TF::POST_PENDING_TRANSFER),
        ],
    );
    assert_eq!(
        results,
        vec![
            R::DebitAccountAlreadyClosed,
            R::CreditAccountAlreadyClosed,
            R::CreditAccountAlreadyClosed,
            R::CreditAccountAlreadyClosed,
            R::DebitAccountAlreadyClosed,
            R::DebitAccountAlreadyClosed,
        ]
    );
    for id in 21..=26 {
        assert!(sm.id_failed(id), "transfer {id} burned");
    }
    // A void of another pending transfer is still allowed on a closed account.
    let void_other = second_phase(27, 101, 0, TF::VOID_PENDING_TRANSFER);
    assert_eq!(
        transfers(&mut sm, now + 2 * SECOND, vec![void_other]),
        vec![R::Ok]
    );
    assert!(closed(&sm, 1), "voiding another transfer reopens nothing");
    // The void of the closing transfer reopens both accounts.
    let void_close = second_phase(28, 20, 0, TF::VOID_PENDING_TRANSFER);
    assert_eq!(
        transfers(&mut sm, now + 3 * SECOND, vec![void_close]),
        vec![R::Ok]
    );
    assert!(!closed(&sm, 1) && !closed(&sm, 5));
    assert_eq!(
        transfers(&mut sm, now + 4 * SECOND, vec![transfer(29, 1, 5, 5)]),
        vec![R::Ok]
    );
}

#[test]
fn an_expired_closing_transfer_reopens_and_a_chain_rolls_a_close_back() {
    let (mut sm, now) = fixture();
    let mut close = closing(20, 5, 1, 0, TF::CLOSING_DEBIT);
    close.timeout = 1;
    assert_eq!(transfers(&mut sm, now, vec![close]), vec![R::Ok]);
    assert!(closed(&sm, 5) && !closed(&sm, 1));
    transfers(&mut sm, now + 2 * SECOND, vec![]);
    assert_eq!(sm.pending_status(20), Some(PendingStatus::Expired));
    assert!(!closed(&sm, 5), "the expiry reopened the account");
    // A close inside a chain that fails leaves the account open.
    let chain = vec![
        Transfer {
            flags: TF::PENDING.with(TF::CLOSING_CREDIT).with(TF::LINKED),
            ..transfer(30, 1, 5, 0)
        },
        transfer(31, 2, 3, 5), // exceeds_debits: account 3 has no debits
    ];
    assert_eq!(
        transfers(&mut sm, now + 3 * SECOND, chain),
        vec![R::LinkedEventFailed, R::ExceedsDebits]
    );
    assert!(!closed(&sm, 5));
}

#[test]
fn closing_checks_keep_their_places_in_the_order() {
    // closing_* without pending follows step 8 and comes before step 9.
    let mut not_pending = transfer(20, 1, 5, 0);
    not_pending.flags = TF::CLOSING_DEBIT;
    check(not_pending, R::ClosingTransferMustBePending);
    not_pending.timeout = 5;
    check(not_pending, R::TimeoutReservedForPendingTransfer);
    not_pending.timeout = 0;
    not_pending.ledger = 0;
    check(not_pending, R::ClosingTransferMustBePending);
    // Amount 0 is refused but on a closing transfer.
    check(pending(20, 1, 5, 0, 0), R::AmountMustNotBeZero);
    check(closing(20, 1, 5, 0, TF::CLOSING_CREDIT), R::Ok);
    // With a post, a void or a refund: mutually exclusive.
    check(
        second_phase(
            20,
            101,
            0,
            TF::POST_PENDING_TRANSFER.with(TF::CLOSING_DEBIT),
        ),
        R::FlagsAreMutuallyExclusive,
    );
    check(
        Transfer {
            flags: TF::REFUND.with(TF::CLOSING_CREDIT),
            ..refund(20, 100, 1)
        },
        R::FlagsAreMutuallyExclusive,
    );
    // The closed checks come after step 11 and before the overflow checks (12).
    let (mut sm, now) = fixture();
    let close = closing(20, 9, 1, 0, TF::CLOSING_DEBIT);
    assert_eq!(transfers(&mut sm, now, vec![close]), vec![R::Ok]);
    let results = transfers(
        &mut sm,
        now + SECOND,
        vec![
            pending(21, 9, 4, 5, 0),         // different ledgers: step 11 first
            pending(22, 9, 8, u128::MAX, 0), // would overflow: closed first
            transfer(23, 8, 9, 5),
        ],
    );
    assert_eq!(
        results,
        vec![
            R::AccountsMustHaveTheSameLedger,
            R::DebitAccountAlreadyClosed,
            R::CreditAccountAlreadyClosed,
        ]
    );
    // An account may be created closed.
    let created = sm.apply(
        now + 2 * SECOND,
        &Batch::CreateAccounts(vec![account(40, 156, AF::CLOSED)]),
    );
    assert_eq!(created, vec![R::Ok]);
    let into_closed = transfers(&mut sm, now + 3 * SECOND, vec![transfer(41, 1, 40, 5)]);
    assert_eq!(into_closed, vec![R::CreditAccountAlreadyClosed]);
}

#[test]
fn a_post_or_void_takes_the_pending_transfers_user_data_where_it_gives_0() {
    let (mut sm, now) = fixture();
    let order = Transfer {
        user_data_128: 0xabc,
        user_data_64: 64,
        user_data_32: 32,
        ..pending(20, 1, 5, 40, 0)
    };
    let capture = second_phase(21, 20, 0, TF::POST_PENDING_TRANSFER);
    let other = Transfer {
        user_data_64: 7,
        ..pending(22, 1, 5, 40, 0)
    };
    let release = Transfer {
        user_data_32: 9,
        ..second_phase(23, 22, 0, TF::VOID_PENDING_TRANSFER)
    };
    let results = transfers(&mut sm, now, vec![order, capture, other, release]);
    assert_eq!(results, vec![R::Ok; 4]);
    let stored = sm.lookup_transfer(21).unwrap();
    assert_eq!(
        (
            stored.user_data_128,
            stored.user_data_64,
            stored.user_data_32
        ),
        (0xabc, 64, 32)
    );
    let stored = sm.lookup_transfer(23).unwrap();
    assert_eq!(
        (
            stored.user_data_128,
            stored.user_data_64,
            stored.user_data_32
        ),
        (0, 7, 9),
        "given fields are kept"
    );
    // A resubmission giving 0 matches when the stored value is the pending transfer's
    // (it was filled in); a value given is compared as it is.
    let again = vec![
        capture,
        Transfer {
            user_data_128: 0xabc,
            ..capture
        },
        Transfer {
            user_data_64: 65,
            ..capture
        },
        release,
        Transfer {
            user_data_32: 0,
            ..release
        },
    ];
    assert_eq!(
        transfers(&mut sm, now + SECOND, again),
        vec![
            R::Exists,
            R::Exists,
            R::ExistsWithDifferentUserData64,
            R::Exists,
            R::ExistsWithDifferentUserData32
        ]
    );
}

#[test]
fn transient_failure_burns_the_id_and_a_retry_gets_id_already_failed() {
    let (mut sm, now) = fixture();
    assert_eq!(
        transfers(&mut sm, now, vec![transfer(200, 2, 5, 5000)]),
        vec![R::ExceedsCredits]
    );
    // Funding the wallet would now let the same payment pass: the id must stay burned.
    assert_eq!(
        transfers(&mut sm, now + 1, vec![transfer(201, 1, 2, 9000)]),
        vec![R::Ok]
    );
    let retry = transfers(&mut sm, now + 2, vec![transfer(200, 2, 5, 5000)]);
    assert_eq!(retry, vec![R::IdAlreadyFailed]);
    // A validation failure does not burn: the id can be used once fixed.
    assert_eq!(
        transfers(&mut sm, now + 3, vec![transfer(202, 2, 5, 0)]),
        vec![R::AmountMustNotBeZero]
    );
    assert_eq!(
        transfers(&mut sm, now + 4, vec![transfer(202, 2, 5, 1)]),
        vec![R::Ok]
    );
}

#[test]
fn post_amounts_fill_in_and_release_the_whole_reservation() {
    let (mut sm, now) = fixture();
    let partial = second_phase(200, 101, 20, TF::POST_PENDING_TRANSFER);
    assert_eq!(transfers(&mut sm, now, vec![partial]), vec![R::Ok]);
    let stored = sm.lookup_transfer(200).unwrap();
    assert_eq!(
        (
            stored.debit_account_id,
            stored.credit_account_id,
            stored.amount
        ),
        (1, 5, 20)
    );
    assert_eq!((stored.ledger, stored.code), (156, 1));
    let sink = sm.lookup_account(5).unwrap();
    assert_eq!(
        sink.credits_pending, 0,
        "the rest of the reservation is released"
    );
    assert_eq!(sink.credits_posted, 60 + 20);
    // Resubmitting with the filled-in fields given as 0 is `exists`.
    assert_eq!(transfers(&mut sm, now + 1, vec![partial]), vec![R::Exists]);
    assert!(sm.check_invariants().is_empty());
}

#[test]
fn expiry_happens_before_the_first_batch_at_or_after_its_instant_never_earlier() {
    let (mut sm, now) = fixture();
    assert_eq!(
        transfers(&mut sm, now, vec![pending(200, 1, 5, 30, 5)]),
        vec![R::Ok]
    );
    transfers(&mut sm, now + 5 * SECOND - 1, vec![]);
    assert_eq!(sm.pending_status(200), Some(PendingStatus::Pending));
    assert_eq!(sm.lookup_account(5).unwrap().credits_pending, 50 + 30);
    let late_post = second_phase(201, 200, 0, TF::POST_PENDING_TRANSFER);
    assert_eq!(
        transfers(&mut sm, now + 5 * SECOND, vec![late_post]),
        vec![R::PendingTransferExpired]
    );
    assert_eq!(sm.pending_status(200), Some(PendingStatus::Expired));
    assert_eq!(sm.lookup_account(5).unwrap().credits_pending, 50);
    assert!(sm.check_invariants().is_empty());
}

#[test]
fn a_failing_event_rolls_back_its_whole_chain() {
    let (mut sm, now) = fixture();
    let before = sm.image();
    let linked = |t: Transfer| Transfer {
        flags: t.flags.with(TF::LINKED),
        ..t
    };
    let chain = vec![
        linked(transfer(200, 1, 2, 100)),
        linked(pending(201, 2, 5, 50, 0)),
        linked(second_phase(202, 201, 0, TF::POST_PENDING_TRANSFER)),
        linked(transfer(203, 2, 5, 10_000)), // exceeds_credits: fails the chain
        transfer(204, 1, 5, 1),
        transfer(205, 1, 5, 1), // after the chain: applied
    ];
    let results = transfers(&mut sm, now, chain);
    assert_eq!(
        results,
        vec![
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::ExceedsCredits,
            R::LinkedEventFailed,
            R::Ok
        ]
    );
    for id in 200..=204 {
        assert!(
            sm.lookup_transfer(id).is_none(),
            "transfer {id} was rolled back"
        );
    }
    assert!(
        sm.id_failed(203),
        "the transient failure burns its id even in a chain"
    );
    assert!(!sm.id_failed(200));
    let after = sm.image();
    assert_eq!(
        after.accounts.iter().find(|a| a.id == 2),
        before.accounts.iter().find(|a| a.id == 2)
    );
    assert!(sm.check_invariants().is_empty());
}

#[test]
fn later_chain_members_see_earlier_ones_and_a_whole_chain_commits() {
    let (mut sm, now) = fixture();
    let linked = |t: Transfer| Transfer {
        flags: t.flags.with(TF::LINKED),
        ..t
    };
    let chain = vec![
        linked(pending(200, 1, 5, 40, 0)),
        linked(second_phase(201, 200, 30, TF::POST_PENDING_TRANSFER)),
        refund(202, 201, 30),
    ];
    assert_eq!(transfers(&mut sm, now, chain), vec![R::Ok, R::Ok, R::Ok]);
    assert_eq!(sm.pending_status(200), Some(PendingStatus::Posted));
    assert_eq!(sm.refunded_amount(201), 30);
}

#[test]
fn an_open_chain_at_the_end_of_a_batch_fails() {
    let (mut sm, now) = fixture();
    let linked = |t: Transfer| Transfer {
        flags: TF::LINKED,
        ..t
    };
    let results = transfers(
        &mut sm,
        now,
        vec![
            transfer(200, 1, 5, 1),
            linked(transfer(201, 1, 5, 1)),
            linked(transfer(202, 1, 5, 1)),
        ],
    );
    assert_eq!(
        results,
        vec![R::Ok, R::LinkedEventFailed, R::LinkedEventChainOpen]
    );
    assert!(sm.lookup_transfer(200).is_some());
    assert!(sm.lookup_transfer(201).is_none());
    assert!(sm.lookup_transfer(202).is_none());
    let accounts = vec![
        Account {
            flags: AF::LINKED,
            ..account(20, 156, AF::empty())
        },
        Account {
            flags: AF::LINKED,
            ..account(21, 156, AF::empty())
        },
    ];
    let results = sm.apply(now + 10, &Batch::CreateAccounts(accounts));
    assert_eq!(results, vec![R::LinkedEventFailed, R::LinkedEventChainOpen]);
    assert!(sm.lookup_account(20).is_none());
}

#[test]
fn account_history_is_filtered_ordered_and_bounded() {
    let (sm, _) = fixture();
    let mut filter = AccountFilter::new(5);
    let all: Vec<u128> = sm.account_transfers(&filter).iter().map(|t| t.id).collect();
    assert_eq!(all, vec![101, 102, 103, 104, 105, 106]);
    filter.reversed = true;
    filter.limit = 2;
    let newest: Vec<u128> = sm.account_transfers(&filter).iter().map(|t| t.id).collect();
    assert_eq!(newest, vec![106, 105]);
    let mut credits_of_2 = AccountFilter::new(2);
    credits_of_2.debits = false;
    let ids: Vec<u128> = sm
        .account_transfers(&credits_of_2)
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, vec![100]);
    let mut window = AccountFilter::new(5);
    let t103 = sm.lookup_transfer(103).unwrap().timestamp;
    window.timestamp_min = t103;
    window.timestamp_max = t103 + 1;
    let ids: Vec<u128> = sm.account_transfers(&window).iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![103, 104]);
    assert!(sm.account_transfers(&AccountFilter::new(999)).is_empty());
}

#[test]
fn timestamps_are_unique_increasing_and_lookups_skip_unknown_ids() {
    let (mut sm, now) = fixture();
    let results = transfers(
        &mut sm,
        now,
        vec![transfer(200, 1, 5, 1), transfer(201, 1, 5, 1)],
    );
    assert_eq!(results, vec![R::Ok, R::Ok]);
    assert_eq!(sm.lookup_transfer(200).unwrap().timestamp, now);
    assert_eq!(sm.lookup_transfer(201).unwrap().timestamp, now + 1);
    assert_eq!(sm.last_timestamp(), now + 1);
    let found: Vec<u128> = sm
        .lookup_transfers(&[201, 999, 200])
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(found, vec![201, 200]);
    assert_eq!(sm.lookup_accounts(&[999, 2]).len(), 1);
}

/// An image that no ledger could have produced (a snapshot whose checksums pass but
/// whose content does not hang together) is refused with an error naming what is
/// wrong, on one part and on several.
#[test]
fn an_inconsistent_image_is_refused_with_a_reason() {
    let (sm, _) = fixture();
    let good = sm.image();
    let pending_index = good
        .transfers
        .iter()
        .position(|t| t.flags.contains(TF::PENDING))
        .expect("the fixture has a pending transfer");
    let single_index = good
        .transfers
        .iter()
        .position(|t| t.flags.is_empty())
        .expect("the fixture has a single-phase transfer");
    type Damage = Box<dyn Fn(&mut StateImage)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("out of order", Box::new(|image| image.transfers.swap(0, 1))),
        (
            "unknown account",
            Box::new(move |image| image.transfers[single_index].debit_account_id = 999),
        ),
        (
            "appears twice",
            Box::new(move |image| {
                let mut copy = image.transfers[single_index];
                copy.timestamp = image.last_timestamp;
                image.transfers.retain(|t| t.timestamp != copy.timestamp);
                image.transfers.push(copy);
            }),
        ),
        (
            "has no status",
            Box::new(move |image| {
                let id = image.transfers[pending_index].id;
                image
                    .pending_statuses
                    .retain(|(status_id, _)| *status_id != id);
            }),
        ),
        (
            "not a pending transfer",
            Box::new(move |image| {
                let id = image.transfers[single_index].id;
                image.pending_statuses.push((id, PendingStatus::Posted));
                image.pending_statuses.sort_unstable_by_key(|(id, _)| *id);
            }),
        ),
        (
            "refund total for unknown transfer",
            Box::new(|image| image.refunded.push((777_777, 1))),
        ),
        (
            "is a stored transfer's",
            Box::new(move |image| {
                let id = image.transfers[single_index].id;
                image.failed_ids.push(id);
            }),
        ),
        (
            "appears twice",
            Box::new(|image| image.failed_ids.extend([424_242, 424_242])),
        ),
    ];
    for parts in [1, 3] {
        assert!(StateMachine::from_image_in_parts(good.clone(), parts).is_ok());
        for (reason, break_it) in &cases {
            let mut image = good.clone();
            break_it(&mut image);
            // Unpacked, and packed in runs of two as a snapshot's reader hands them over:
            // the same refusal either way, even where the damage straddles two runs.
            for loaded in [LoadedImage::from(image.clone()), packed_in_runs(image, 2)] {
                let error = StateMachine::from_loaded_image_in_parts(loaded, parts)
                    .err()
                    .unwrap_or_else(|| panic!("{reason}: accepted on {parts} part(s)"));
                assert!(
                    error.0.contains(reason),
                    "{reason} on {parts} part(s): got {:?}",
                    error.0
                );
            }
        }
    }
}

/// A snapshot read whole, its accounts handed over `chunk` at a time, as a streaming
/// reader hands over a file's chunks of accounts.
struct ChunkedAccounts {
    whole: crate::image_source::LoadedSource,
    chunks: std::vec::IntoIter<Vec<Account>>,
}

impl ChunkedAccounts {
    fn of(loaded: LoadedImage, chunk: usize) -> (crate::ImageStart, ChunkedAccounts) {
        let (start, mut whole) = crate::image_source::LoadedSource::split(loaded);
        let accounts = whole.next_accounts().unwrap().unwrap_or_default();
        let chunks: Vec<Vec<Account>> = accounts.chunks(chunk).map(<[_]>::to_vec).collect();
        let source = ChunkedAccounts {
            whole,
            chunks: chunks.into_iter(),
        };
        (start, source)
    }
}

impl ImageSource for ChunkedAccounts {
    fn next_accounts(&mut self) -> Result<Option<Vec<Account>>, crate::ImageError> {
        Ok(self.chunks.next())
    }

    fn transfers_head(&mut self) -> Result<(Vec<Transfer>, usize), crate::ImageError> {
        self.whole.transfers_head()
    }

    fn next_run(&mut self) -> Result<Option<tally_types::packed::UnpackedRun>, crate::ImageError> {
        self.whole.next_run()
    }

    fn spent(&mut self, run: tally_types::packed::UnpackedRun) {
        self.whole.spent(run);
    }

    fn rest(&mut self) -> Result<StateImage, crate::ImageError> {
        self.whole.rest()
    }
}

/// Accounts handed over a chunk at a time load as they do whole, and the checks on
/// them hold across chunks: an account out of order, or twice, in a later chunk than
/// the one it clashes with is refused; so is a count that does not match the start's.
#[test]
fn accounts_in_chunks_load_and_are_checked_across_chunks() {
    let (sm, _) = fixture();
    let good = sm.image();
    assert!(good.accounts.len() >= 3);
    let load = |image: &StateImage, chunk: usize, parts: usize, start_adds: usize| {
        let (mut start, mut source) = ChunkedAccounts::of(packed_in_runs(image.clone(), 2), chunk);
        start.accounts += start_adds;
        StateMachine::from_image_source(start, &mut source, parts, (0, 0))
    };
    let swapped = {
        let mut image = good.clone();
        image.accounts.swap(0, 2);
        image
    };
    let twice = {
        let mut image = good.clone();
        image.accounts[2].id = image.accounts[0].id;
        image
    };
    for parts in [1, 3] {
        for chunk in [1, 2] {
            let loaded = load(&good, chunk, parts, 0).unwrap();
            assert_eq!(loaded.image(), good, "chunks of {chunk} on {parts} part(s)");
            for (image, adds, reason) in [
                (&swapped, 0, "out of order"),
                (&twice, 0, "appears twice"),
                (&good, 1, "accounts came where the snapshot holds"),
            ] {
                let error = load(image, chunk, parts, adds).err().unwrap();
                assert!(error.0.contains(reason), "{reason}: got {:?}", error.0);
            }
        }
    }
}

/// `image` as a snapshot's reader gives it: transfers packed, `run` records a run.
fn packed_in_runs(mut image: StateImage, run: usize) -> LoadedImage {
    let transfers = std::mem::take(&mut image.transfers);
    let packed_transfers = transfers
        .chunks(run)
        .map(|records| {
            let mut bytes = Vec::new();
            for transfer in records {
                tally_types::packed::encode_transfer(transfer, &mut bytes);
            }
            tally_types::packed::PackedRun::new(records.len(), bytes).unwrap()
        })
        .collect();
    LoadedImage {
        image,
        packed_transfers,
    }
}

/// Loading packed transfers, whatever the runs' size and the number of parts, builds
/// the state that loading them unpacked does, and it behaves the same afterwards.
#[test]
fn a_packed_image_loads_as_its_unpacked_self() {
    let (sm, now) = fixture();
    let image = sm.image();
    assert!(image.transfers.len() > 4);
    for parts in [1, 3] {
        let unpacked = StateMachine::from_image_in_parts(image.clone(), parts).unwrap();
        for run in [1, 3, image.transfers.len()] {
            let loaded = packed_in_runs(image.clone(), run);
            assert_eq!(loaded.transfers_len(), image.transfers.len());
            assert_eq!(loaded.clone().unpack(), image);
            let mut packed = StateMachine::from_loaded_image_in_parts(loaded, parts).unwrap();
            assert_eq!(packed.image(), image, "runs of {run} on {parts} part(s)");
            // Histories, built beside the load, hold what the original's hold.
            for account in &image.accounts {
                for reversed in [false, true] {
                    let filter = AccountFilter {
                        limit: 1_000,
                        reversed,
                        ..AccountFilter::new(account.id)
                    };
                    assert_eq!(
                        packed.account_transfers(&filter),
                        sm.account_transfers(&filter),
                        "account {} on {parts} part(s), runs of {run}",
                        account.id
                    );
                }
            }
            goes_on_as(&mut packed, &unpacked, now);
        }
    }
}

/// Full runs of a snapshot's transfers become the store's chunks as they are (one
/// part, at a chunk boundary): the state loads as it does on several parts, where
/// each record is stored anew, reads the same, and goes on the same, whether the
/// last run is full or not. The user-data indexes, filled beside the load a chunk's
/// worth at a time in tests (or by the loading thread itself, as where no thread can
/// start), answer queries as a scan does.
#[test]
fn full_runs_load_as_store_chunks() {
    for fill_here in [false, true] {
        crate::load_values::FILL_HERE.with(|here| here.set(fill_here));
        full_runs_load_as_store_chunks_filling(fill_here);
    }
    crate::load_values::FILL_HERE.with(|here| here.set(false));
}

fn full_runs_load_as_store_chunks_filling(fill_here: bool) {
    const RUN: usize = tally_types::packed::PACKED_RUN_RECORDS;
    fn numbered(id: u128) -> Transfer {
        Transfer {
            user_data_128: id % 7,
            // Set from the second run on: a field first seen after a batch went.
            user_data_64: u64::from(id > RUN as u128) * (id % 3) as u64,
            ..transfer(id, 1, 2, 1 + id % 5)
        }
    }
    let mut sm = StateMachine::new();
    let accounts = vec![account(1, 156, AF::empty()), account(2, 156, AF::HISTORY)];
    assert!(
        sm.apply(1, &Batch::CreateAccounts(accounts))
            .iter()
            .all(|&r| r == R::Ok)
    );
    let mut now = 10;
    let mut next_id = 1u128;
    let mut add = |sm: &mut StateMachine, count: usize| {
        let mut left = count;
        while left > 0 {
            let size = left.min(8_190);
            left -= size;
            let batch: Vec<Transfer> = (next_id..next_id + size as u128).map(numbered).collect();
            next_id += size as u128;
            now += 10_000;
            assert!(transfers(sm, now, batch).iter().all(|&r| r == R::Ok));
        }
    };
    add(&mut sm, 2 * RUN);
    let exactly_full = sm.image();
    assert_eq!(exactly_full.transfers.len(), 2 * RUN);
    add(&mut sm, 5);
    let with_a_tail = sm.image();
    assert_eq!(with_a_tail.transfers.len(), 2 * RUN + 5);
    for image in [exactly_full, with_a_tail] {
        let on_parts = StateMachine::from_image_in_parts(image.clone(), 2).unwrap();
        let mut adopted =
            StateMachine::from_loaded_image_in_parts(packed_in_runs(image.clone(), RUN), 1)
                .unwrap();
        assert_eq!(adopted.image(), image);
        assert!(adopted.check_invariants().is_empty());
        for stored in &image.transfers {
            assert_eq!(adopted.lookup_transfer(stored.id), Some(*stored));
        }
        for ((user_data_128, user_data_64), reversed) in [(3, 0), (0, 2), (6, 1)]
            .into_iter()
            .zip([false, true, true])
        {
            let filter = tally_types::QueryFilter {
                user_data_128,
                user_data_64,
                limit: 8_190,
                reversed,
                ..Default::default()
            };
            let expected = scanned(image.transfers.clone(), &filter, |t| {
                filter.matches_transfer(t)
            });
            assert!(expected.len() > 3_000);
            assert_eq!(
                adopted.query_transfers(&filter),
                expected,
                "filled here: {fill_here}"
            );
            assert_eq!(on_parts.query_transfers(&filter), expected);
        }
        for reversed in [false, true] {
            let filter = AccountFilter {
                limit: 8_190,
                reversed,
                ..AccountFilter::new(2)
            };
            let read = adopted.account_transfers(&filter);
            assert_eq!(read, on_parts.account_transfers(&filter));
            assert_eq!(read.len(), 8_190);
            let balances = adopted.account_balances(&filter);
            assert_eq!(balances, on_parts.account_balances(&filter));
        }
        // Ids at each run's edges exist; then new ones go in after them.
        let last = image.transfers.len() as u128;
        let mut next: Vec<Transfer> = [1, RUN as u128, RUN as u128 + 1, last]
            .into_iter()
            .map(numbered)
            .collect();
        next.extend((1..=3).map(|i| transfer(last + i, 2, 1, i)));
        let mut reference = on_parts.clone();
        let results = transfers(&mut adopted, now + 1_000, next.clone());
        assert_eq!(results, transfers(&mut reference, now + 1_000, next));
        assert_eq!(results[..4], [R::Exists; 4]);
        assert_eq!(adopted.image(), reference.image());
    }
}

/// A snapshot loaded with room asked for (a ledger's configured capacity) holds the
/// same state, in indexes sized for that room up front; without, sized for itself.
#[test]
fn a_snapshot_loads_into_the_room_asked_for() {
    let (sm, now) = fixture();
    let image = sm.image();
    let plain =
        StateMachine::from_loaded_image_in_parts(packed_in_runs(image.clone(), 3), 1).unwrap();
    let mut roomy = StateMachine::from_loaded_image_with_room(
        packed_in_runs(image.clone(), 3),
        1,
        5_000,
        50_000,
    )
    .unwrap();
    assert_eq!(roomy.image(), image);
    assert!(roomy.account_room() >= 5_000 && roomy.transfer_room() >= 50_000);
    assert!(plain.account_room() < 5_000 && plain.transfer_room() < 50_000);
    goes_on_as(&mut roomy, &plain, now);
}

/// `loaded`, a state loaded from an image of the fixture (taken at `now`), answers the
/// next transfers as `reference` does and ends in the same state.
fn goes_on_as(loaded: &mut StateMachine, reference: &StateMachine, now: u64) {
    let mut reference = reference.clone();
    let next = vec![transfer(900, 2, 5, 5000), transfer(901, 1, 5, 1)];
    assert_eq!(
        transfers(loaded, now + 1_000, next.clone()),
        transfers(&mut reference, now + 1_000, next)
    );
    assert_eq!(loaded.image(), reference.image());
}

#[test]
fn image_round_trip_reproduces_the_state_and_its_behaviour() {
    let (mut sm, now) = fixture();
    let mut restored = StateMachine::from_image(sm.image()).unwrap();
    assert_eq!(restored.image(), sm.image());
    let next = vec![
        transfer(300, 2, 5, 5000),
        pending(301, 1, 5, 1, 1),
        refund(302, 100, 990),
    ];
    let later = vec![
        second_phase(303, 301, 0, TF::POST_PENDING_TRANSFER),
        transfer(300, 2, 5, 5000),
    ];
    for sm in [&mut sm, &mut restored] {
        assert_eq!(
            transfers(sm, now, next.clone()),
            vec![R::ExceedsCredits, R::Ok, R::Ok]
        );
        let results = transfers(sm, now + 2 * SECOND, later.clone());
        assert_eq!(results, vec![R::PendingTransferExpired, R::IdAlreadyFailed]);
    }
    assert_eq!(restored.image(), sm.image());
}

// ---- property tests ----

/// A random event over a small id space, so that collisions, chains, second phases and
/// refunds happen often.
fn any_transfer() -> impl Strategy<Value = Transfer> {
    (
        1u128..40,
        0u128..7,
        0u128..7,
        prop_oneof![Just(0u128), 1u128..200, Just(u128::MAX - 5)],
        0u8..8,
        1u128..40,
        prop_oneof![Just(0u32), Just(1u32), Just(3u32)],
        any::<bool>(),
        prop_oneof![Just(156u32), Just(840), Just(0)],
        0u8..12,
    )
        .prop_map(
            |(id, debit, credit, amount, kind, target, timeout, linked, ledger, bound)| {
                let mut t = transfer(id, debit, credit, amount);
                t.ledger = ledger;
                match kind {
                    0..=2 => {}
                    3 => {
                        t.flags = TF::PENDING;
                        t.timeout = timeout;
                    }
                    4 => t = second_phase(id, target, amount % 3, TF::POST_PENDING_TRANSFER),
                    5 => t = second_phase(id, target, 0, TF::VOID_PENDING_TRANSFER),
                    _ => t = refund(id, target, amount),
                }
                // A balancing bound or a closing flag, on any kind (on a post, void or
                // refund it is refused as mutually exclusive).
                let extra = [
                    TF::BALANCING_DEBIT,
                    TF::BALANCING_CREDIT,
                    TF::BALANCING_MASK,
                    TF::CLOSING_DEBIT,
                    TF::CLOSING_CREDIT,
                    TF::CLOSING_MASK.with(TF::BALANCING_DEBIT),
                ];
                if let Some(flags) = extra.get(usize::from(bound)) {
                    t.flags = t.flags.with(*flags);
                }
                if linked {
                    t.flags = t.flags.with(TF::LINKED);
                }
                t
            },
        )
}

fn property_ledger() -> StateMachine {
    property_ledger_in_parts(1)
}

/// Six accounts over two ledgers, with each balance-limit flag, split into `parts`.
fn property_ledger_in_parts(parts: usize) -> StateMachine {
    let mut sm = StateMachine::with_capacity_in_parts(0, 0, parts);
    let accounts = vec![
        account(1, 156, AF::empty()),
        account(2, 156, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(3, 156, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
        account(4, 840, AF::empty()),
        account(5, 156, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(6, 156, AF::empty()),
    ];
    sm.apply(T0, &Batch::CreateAccounts(accounts));
    sm
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Conservation, balance limits, idempotency and "a failure changes nothing" hold
    /// after every batch of random events.
    #[test]
    fn random_batches_keep_every_invariant(
        batches in proptest::collection::vec((proptest::collection::vec(any_transfer(), 0..12), 0u64..3), 1..8)
    ) {
        let mut sm = property_ledger();
        let mut now = T0 + SECOND;
        let mut applied_ids: HashSet<u128> = HashSet::new();
        for (events, gap_s) in batches {
            now += gap_s * SECOND + 100;
            let before = sm.clone();
            let results = transfers(&mut sm, now, events.clone());
            prop_assert_eq!(results.len(), events.len());
            for (event, result) in events.iter().zip(&results) {
                if result.is_ok() {
                    prop_assert!(applied_ids.insert(event.id), "transfer {} applied twice", event.id);
                    prop_assert!(before.lookup_transfer(event.id).is_none());
                }
            }
            // Replaying the same batch on the prior state is deterministic.
            let mut again = before.clone();
            prop_assert_eq!(transfers(&mut again, now, events.clone()), results.clone());
            if results.iter().all(|r| !r.is_ok()) {
                // Nothing applied: only expiries and burned ids may differ.
                let mut expected = before.clone();
                transfers(&mut expected, now, vec![]);
                prop_assert_eq!(sm.accounts().collect::<Vec<_>>(), expected.accounts().collect::<Vec<_>>());
                prop_assert_eq!(sm.transfers().collect::<Vec<_>>(), expected.transfers().collect::<Vec<_>>());
            }
            let violations = sm.check_invariants();
            prop_assert!(violations.is_empty(), "{:?}", violations);
        }
        for transfer in sm.transfers() {
            prop_assert!(applied_ids.contains(&transfer.id));
        }
    }

    /// A balancing transfer that succeeds moves at most its bound, and leaves an account
    /// it balances within its limit when the account was within it before.
    #[test]
    fn a_balancing_transfer_never_moves_past_its_bounds(batch in proptest::collection::vec(any_transfer(), 1..12)) {
        let mut sm = property_ledger();
        for (offset, t) in batch.into_iter().enumerate() {
            let at = T0 + SECOND * (1 + offset as u64);
            let dr_before = sm.lookup_account(t.debit_account_id).copied();
            let cr_before = sm.lookup_account(t.credit_account_id).copied();
            let t = Transfer { flags: t.flags.without(TF::LINKED), ..t };
            if transfers(&mut sm, at, vec![t]) != vec![R::Ok] || !t.flags.is_balancing() {
                continue;
            }
            let stored = sm.lookup_transfer(t.id).unwrap();
            prop_assert!(stored.amount <= t.amount);
            let (dr, cr) = (dr_before.unwrap(), cr_before.unwrap());
            let dr_after = sm.lookup_account(t.debit_account_id).unwrap();
            let cr_after = sm.lookup_account(t.credit_account_id).unwrap();
            if t.flags.contains(TF::BALANCING_DEBIT) && dr.debits_pending + dr.debits_posted <= dr.credits_posted {
                prop_assert!(dr_after.debits_pending + dr_after.debits_posted <= dr_after.credits_posted);
            }
            if t.flags.contains(TF::BALANCING_CREDIT) && cr.credits_pending + cr.credits_posted <= cr.debits_posted {
                prop_assert!(cr_after.credits_pending + cr_after.credits_posted <= cr_after.debits_posted);
            }
        }
    }

    /// A batch with a failing chain leaves exactly the state of the same batch with the
    /// chain removed (burned ids aside).
    #[test]
    fn a_failed_chain_leaves_no_trace(prefix in proptest::collection::vec(any_transfer(), 0..6)) {
        // Small amounts, so the chain itself cannot overflow the accounts, and no
        // closing, so that its accounts stay open.
        let mut prefix: Vec<Transfer> = prefix.into_iter().map(|t| Transfer { flags: t.flags.without(TF::LINKED).without(TF::CLOSING_MASK), amount: t.amount % 1_000, ..t }).collect();
        for (offset, t) in prefix.iter_mut().enumerate() { t.id = 1_000 + offset as u128; }
        let chain = vec![
            Transfer { flags: TF::LINKED, ..transfer(500, 1, 6, 7) },
            Transfer { flags: TF::LINKED, ..transfer(501, 6, 1, 3) },
            transfer(0, 1, 6, 1), // id_must_not_be_zero
        ];
        let mut with_chain = property_ledger();
        let mut without_chain = property_ledger();
        let mut events = prefix.clone();
        events.extend(chain);
        let results = transfers(&mut with_chain, T0 + SECOND, events);
        transfers(&mut without_chain, T0 + SECOND, prefix.clone());
        prop_assert_eq!(&results[prefix.len()..], &[R::LinkedEventFailed, R::LinkedEventFailed, R::IdMustNotBeZero]);
        prop_assert_eq!(with_chain.accounts().collect::<Vec<_>>(), without_chain.accounts().collect::<Vec<_>>());
        prop_assert_eq!(with_chain.transfers().collect::<Vec<_>>(), without_chain.transfers().collect::<Vec<_>>());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `replay` and `apply_run` of a run of batches (accounts, transfers and empty ones,
    /// with expiries between them) leave exactly the state that `apply` on each in turn
    /// leaves, with the same history and reads, and `apply_run` gives each batch the
    /// results `apply` gave it: prefetching across batches changes nothing.
    #[test]
    fn replay_of_a_run_equals_applying_each_batch(
        batches in proptest::collection::vec((proptest::collection::vec(any_transfer(), 0..12), 0u64..3, 0u8..6), 1..10),
        step in 1usize..8,
    ) {
        let mut applied = property_ledger();
        let mut replayed = property_ledger();
        let mut run_applied = property_ledger();
        let mut stepped = property_ledger();
        let mut results = Vec::new();
        let mut now = T0 + SECOND;
        let mut run = Vec::new();
        for (index, (events, gap_s, kind)) in batches.into_iter().enumerate() {
            now += gap_s * SECOND + 100;
            let batch = if kind == 0 {
                // New accounts (ids 7..) and repeats of existing ones.
                Batch::CreateAccounts((0..3).map(|n| account(5 + index as u128 + n, 156, AF::empty())).collect())
            } else {
                Batch::CreateTransfers(events)
            };
            results.push(applied.apply(now, &batch));
            let len = batch.len() as u64;
            run.push((now, batch));
            now += len;
        }
        let borrowed: Vec<(u64, &Batch)> = run.iter().map(|(at, batch)| (*at, batch)).collect();
        replayed.replay(&borrowed);
        prop_assert_eq!(replayed.image(), applied.image());
        // The same run applied with its results: each batch's, as `apply` gave them.
        prop_assert_eq!(&run_applied.apply_run(&borrowed), &results);
        prop_assert_eq!(run_applied.image(), applied.image());
        prop_assert_eq!(run_applied.last_timestamp(), applied.last_timestamp());
        prop_assert_eq!(replayed.last_timestamp(), applied.last_timestamp());
        // In steps of a few events, every invariant holding between two steps.
        let mut in_steps = stepped.start_run(&borrowed, true);
        while !stepped.run_step(&mut in_steps, step) {
            prop_assert!(stepped.check_invariants().is_empty());
            prop_assert!(stepped.last_timestamp() <= applied.last_timestamp());
        }
        prop_assert_eq!(in_steps.into_results(), results);
        prop_assert_eq!(stepped.image(), applied.image());
        prop_assert_eq!(stepped.last_timestamp(), applied.last_timestamp());
        for id in 1u128..20 {
            let filter = AccountFilter { limit: 1_000, ..AccountFilter::new(id) };
            prop_assert_eq!(replayed.account_transfers(&filter), applied.account_transfers(&filter));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// `replay` on one part or three, with the run cut anywhere into two calls, chains
    /// left open at a batch's end, empty batches of both kinds and account batches
    /// between transfers, equals `apply` batch by batch, and both go on identically.
    #[test]
    fn replay_split_anywhere_on_parts_equals_apply(
        batches in proptest::collection::vec(
            (proptest::collection::vec(any_transfer(), 0..14), 0u64..4, 0u8..8, any::<bool>()),
            1..14),
        parts in prop_oneof![Just(1usize), Just(3usize)],
        split in 0usize..14,
    ) {
        let mut applied = property_ledger_in_parts(parts);
        let mut replayed = property_ledger_in_parts(parts);
        let mut now = T0 + 6;
        let mut run = Vec::new();
        for (index, (mut events, gap_s, kind, open_chain)) in batches.into_iter().enumerate() {
            now += gap_s * SECOND + 1;
            let batch = match kind {
                0 => Batch::CreateAccounts((0..3).map(|n| account(5 + index as u128 + n, 156, AF::empty())).collect()),
                1 => Batch::CreateTransfers(Vec::new()),
                2 => Batch::CreateAccounts(Vec::new()),
                _ => {
                    if open_chain && let Some(last) = events.last_mut() {
                        last.flags = last.flags.with(TF::LINKED);
                    }
                    Batch::CreateTransfers(events)
                }
            };
            applied.apply(now, &batch);
            let len = batch.len() as u64;
            run.push((now, batch));
            now += len.saturating_sub(1);
        }
        let borrowed: Vec<(u64, &Batch)> = run.iter().map(|(at, batch)| (*at, batch)).collect();
        let split = split.min(borrowed.len());
        replayed.replay(&borrowed[..split]);
        replayed.replay(&borrowed[split..]);
        prop_assert_eq!(replayed.image(), applied.image());
        prop_assert_eq!(replayed.last_timestamp(), applied.last_timestamp());
        for id in 1u128..30 {
            let filter = AccountFilter { limit: 1_000, ..AccountFilter::new(id) };
            prop_assert_eq!(replayed.account_transfers(&filter), applied.account_transfers(&filter));
        }
        let next = Batch::CreateTransfers(vec![transfer(7_777, 1, 6, 5)]);
        prop_assert_eq!(applied.apply(now + 10 * SECOND, &next), replayed.apply(now + 10 * SECOND, &next));
        prop_assert_eq!(replayed.image(), applied.image());
    }
}

/// Second phases and refunds aimed at the payments (ids 1001..=1010) and pending
/// transfers (2001..=2010) that `a_freeze_keeps_its_moment` stores first, so that the
/// status and refund tables change on both sides of the freeze; some in chains.
fn any_follow_up() -> impl Strategy<Value = Transfer> {
    (
        0u8..3,
        1u128..=10,
        0u128..60,
        3_000u128..3_400,
        any::<bool>(),
    )
        .prop_map(|(kind, target, amount, id, linked)| {
            let mut t = match kind {
                0 => refund(id, 1_000 + target, amount),
                1 => second_phase(id, 2_000 + target, amount % 25, TF::POST_PENDING_TRANSFER),
                _ => second_phase(id, 2_000 + target, 0, TF::VOID_PENDING_TRANSFER),
            };
            if linked {
                t.flags = t.flags.with(TF::LINKED);
            }
            t
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// A frozen copy keeps the state of its moment whatever is applied after it:
    /// balances, stored transfers, pending statuses (posted, voided, expired), refund
    /// totals and burned ids, on one part and on three, with chains that roll back.
    #[test]
    fn a_freeze_keeps_its_moment(
        before in proptest::collection::vec((proptest::collection::vec(prop_oneof![any_transfer(), any_follow_up()], 0..12), 0u64..3), 1..6),
        after in proptest::collection::vec((proptest::collection::vec(prop_oneof![any_transfer(), any_follow_up()], 0..12), 0u64..3), 1..6),
        parts in 1usize..=3,
    ) {
        let mut sm = property_ledger_in_parts(parts);
        let mut now = T0 + SECOND;
        // Payments and authorisations (half of them expiring after a second) for the
        // follow-ups to act on.
        let mut seed = Vec::new();
        for n in 1..=10u128 {
            seed.push(transfer(1_000 + n, 1, 6, 50));
            let mut pending = transfer(2_000 + n, 1, 6, 20);
            pending.flags = TF::PENDING;
            pending.timeout = u32::from(n % 2 == 0);
            seed.push(pending);
        }
        prop_assert!(sm.apply(now, &Batch::CreateTransfers(seed)).iter().all(|r| *r == R::Ok));
        now += 100;
        let mut apply = |sm: &mut StateMachine, batches: Vec<(Vec<Transfer>, u64)>| {
            for (events, gap_s) in batches {
                now += gap_s * SECOND + 100;
                let len = events.len() as u64;
                sm.apply(now, &Batch::CreateTransfers(events));
                now += len;
            }
        };
        apply(&mut sm, before);
        // Read through the live tables, not through a freeze.
        let side_then = |sm: &StateMachine| -> Vec<(Option<PendingStatus>, u128)> {
            (1..=10u128)
                .map(|n| (sm.pending_status(2_000 + n), sm.refunded_amount(1_000 + n)))
                .collect()
        };
        let read_then = side_then(&sm);
        let image_then = sm.image();
        let frozen = sm.freeze();
        apply(&mut sm, after);
        prop_assert_eq!(frozen.image(), image_then.clone());
        // What the frozen copy holds rebuilds a machine equal to that moment's.
        let rebuilt = StateMachine::from_image_in_parts(frozen.image(), parts).unwrap();
        prop_assert_eq!(side_then(&rebuilt), read_then);
        prop_assert_eq!(rebuilt.image(), image_then);
    }
}

// ---- queries ----

/// A user-data value from a small space (0 = none), some wide enough to need 128 bits.
fn any_user_data() -> impl Strategy<Value = (u128, u64, u32)> {
    (0u128..4, 0u64..3, 0u32..3).prop_map(|(a, b, c)| (if a == 3 { 3 << 70 } else { a }, b, c))
}

fn any_query() -> impl Strategy<Value = tally_types::QueryFilter> {
    (
        any_user_data(),
        0u32..3,
        0u16..3,
        0u64..6,
        0u64..6,
        0u32..5,
        any::<bool>(),
    )
        .prop_map(
            |((ud128, ud64, ud32), ledger_pick, code, from, span, limit, reversed)| {
                tally_types::QueryFilter {
                    user_data_128: ud128,
                    user_data_64: ud64,
                    user_data_32: ud32,
                    ledger: [0, 156, 840][ledger_pick as usize],
                    code,
                    // Times in seconds past T0; 0 = unbounded.
                    timestamp_min: if from == 0 { 0 } else { T0 + from * SECOND },
                    timestamp_max: if span == 0 {
                        0
                    } else {
                        T0 + (from + span) * SECOND
                    },
                    limit,
                    reversed,
                }
            },
        )
}

/// What a query answers, by brute force over every record.
fn scanned<T: Clone>(
    mut all: Vec<T>,
    filter: &tally_types::QueryFilter,
    keep: impl Fn(&T) -> bool,
) -> Vec<T> {
    all.retain(|record| keep(record));
    if filter.reversed {
        all.reverse();
    }
    all.truncate(filter.limit_effective());
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `query_accounts` and `query_transfers` on 1 to 4 parts answer what a scan of
    /// every record answers, through chains that roll back (their records leave the
    /// indexes) and records with every mix of user data.
    #[test]
    fn queries_answer_what_a_scan_answers(
        batches in proptest::collection::vec(
            (proptest::collection::vec((any_user_data(), 0u16..3, 0u8..4, any::<bool>()), 1..10), any::<bool>()),
            1..10),
        parts in 1usize..5,
        filters in proptest::collection::vec(any_query(), 8),
    ) {
        let mut sm = property_ledger_in_parts(parts);
        sm.apply(T0 + SECOND / 2, &Batch::CreateAccounts(vec![account(7, 840, AF::empty())]));
        let mut next_id = 100u128;
        for (index, (events, accounts)) in batches.into_iter().enumerate() {
            let now = T0 + (index as u64 + 1) * SECOND;
            let batch = if accounts {
                Batch::CreateAccounts(events.iter().map(|&((a, b, c), code, pick, linked)| {
                    next_id += 1;
                    // pick 0 repeats an id: its chain fails and rolls back.
                    let id = if pick == 0 { 1 } else { next_id };
                    let mut account = account(id, [156, 840][usize::from(pick % 2)], AF::empty());
                    (account.user_data_128, account.user_data_64, account.user_data_32) = (a, b, c);
                    account.code = code.max(1);
                    if linked { account.flags = AF::LINKED; }
                    account
                }).collect())
            } else {
                Batch::CreateTransfers(events.iter().map(|&((a, b, c), code, pick, linked)| {
                    next_id += 1;
                    // pick 0 is refused (same accounts): a linked chain around it rolls back.
                    let (debit, credit, ledger) = match pick {
                        0 => (1, 1, 156),
                        1 => (4, 7, 840),
                        _ => (1, 6, 156),
                    };
                    let mut t = transfer(next_id, debit, credit, 1);
                    t.ledger = ledger;
                    (t.user_data_128, t.user_data_64, t.user_data_32) = (a, b, c);
                    t.code = code.max(1);
                    if linked { t.flags = TF::LINKED; }
                    t
                }).collect())
            };
            sm.apply(now, &batch);
        }
        for filter in &filters {
            let accounts = scanned(sm.accounts().copied().collect(), filter, |a| filter.matches_account(a));
            prop_assert_eq!(sm.query_accounts(filter), accounts, "{:?}", filter);
            let transfers = scanned(sm.transfers().collect(), filter, |t| filter.matches_transfer(t));
            prop_assert_eq!(sm.query_transfers(filter), transfers, "{:?}", filter);
        }
        // And after an image round trip, which rebuilds the indexes.
        let loaded = StateMachine::from_image_in_parts(sm.image(), parts).unwrap();
        for filter in &filters {
            prop_assert_eq!(loaded.query_accounts(filter), sm.query_accounts(filter));
            prop_assert_eq!(loaded.query_transfers(filter), sm.query_transfers(filter));
        }
    }
}

/// A query by ledger or code looks only at the records with that value in the time
/// range (the shorter list when both are given), not at the store: 2,000 transfers of
/// code 1 and 20 of code 2, on two ledgers, in one part and in three.
#[test]
fn queries_by_ledger_or_code_look_only_at_their_records() {
    for parts in [1, 3] {
        let mut sm = property_ledger_in_parts(parts);
        sm.apply(
            T0 + SECOND / 2,
            &Batch::CreateAccounts(vec![account(7, 840, AF::empty())]),
        );
        for n in 0..101u64 {
            let transfers = (0..20u128)
                .map(|i| {
                    let id = 1_000 + u128::from(n) * 20 + i;
                    let mut t = match id % 2 {
                        0 => transfer(id, 1, 6, 1),
                        _ => Transfer {
                            ledger: 840,
                            ..transfer(id, 4, 7, 1)
                        },
                    };
                    t.code = if n % 50 == 49 { 2 } else { 1 };
                    t
                })
                .collect();
            sm.apply(T0 + (n + 1) * SECOND, &Batch::CreateTransfers(transfers));
        }
        let examined = |filter: &tally_types::QueryFilter| {
            let mut query = Query::new(&sm, QueryTarget::Transfers, filter);
            while !query.step(&sm) {}
            let found = query.transfers(&sm);
            let all = scanned(sm.transfers().collect(), filter, |t| {
                filter.matches_transfer(t)
            });
            assert_eq!(found, all, "{filter:?}");
            (found.len(), query.examined())
        };
        let by = |ledger, code| tally_types::QueryFilter {
            ledger,
            code,
            ..Default::default()
        };
        assert_eq!(examined(&by(0, 2)), (40, 40), "{parts} parts");
        assert_eq!(
            examined(&by(840, 2)),
            (20, 40),
            "the code's list is shorter"
        );
        assert_eq!(examined(&by(840, 0)), (1_010, 1_010));
        assert_eq!(examined(&by(978, 0)), (0, 0), "no record has the ledger");
        // A time range holding one batch, early on: the marks lead the walk there, both
        // ways, past about one stretch of newer records a part, not the 900 newer ones.
        for reversed in [false, true] {
            let range = tally_types::QueryFilter {
                timestamp_min: T0 + 10 * SECOND + SECOND / 2,
                timestamp_max: T0 + 11 * SECOND + SECOND / 2,
                reversed,
                ..by(156, 1)
            };
            let mut query = Query::new(&sm, QueryTarget::Transfers, &range);
            while !query.step(&sm) {}
            assert_eq!(query.transfers(&sm).len(), 10);
            assert!(query.examined() <= 20, "{}", query.examined());
            assert!(query.passed_over() <= 200, "{}", query.passed_over());
        }
        // With a limit, a walk stops once it has enough.
        assert_eq!(
            examined(&tally_types::QueryFilter {
                limit: 5,
                ..by(0, 1)
            })
            .0,
            5
        );
        let limited = tally_types::QueryFilter {
            limit: 5,
            ..by(0, 1)
        };
        assert!(examined(&limited).1 <= 5 * parts as u64);
    }
}

/// Batches of 1,000 transfers between accounts 1 and 6 (three in four from 1 to 6), a
/// second apart, with codes 1 to 3 and `user_data_64` 0 to 4 in turn.
struct Commits {
    next_id: u128,
    now: u64,
}

impl Commits {
    fn new() -> Commits {
        Commits {
            next_id: 1_000,
            now: T0,
        }
    }

    /// Commits the next batch; with `linked_failure` it opens with a chain of three
    /// whose last is refused, so the first two roll back.
    fn commit(&mut self, sm: &mut StateMachine, linked_failure: bool) {
        self.now += SECOND;
        let mut transfers: Vec<Transfer> = (0..1_000u128)
            .map(|i| {
                self.next_id += 1;
                let (debit, credit) = if i % 4 == 0 { (6, 1) } else { (1, 6) };
                let mut t = transfer(self.next_id, debit, credit, 1);
                t.code = 1 + (i % 3) as u16;
                t.user_data_64 = (i % 5) as u64;
                t
            })
            .collect();
        if linked_failure {
            transfers[0].flags = TF::LINKED;
            transfers[1].flags = TF::LINKED;
            transfers[2].debit_account_id = transfers[2].credit_account_id;
        }
        sm.apply(self.now, &Batch::CreateTransfers(transfers));
    }
}

/// Records committed (and chains rolled back) between a query's steps are not in its
/// answer, and do not disturb its walk along a ledger's or a code's chain: forward,
/// reversed, by code, by ledger and code, with and without a time range.
#[test]
fn chained_queries_answer_the_state_they_began_on() {
    let mut sm = property_ledger_in_parts(2);
    let mut commits = Commits::new();
    for _ in 0..30 {
        commits.commit(&mut sm, false);
    }
    let middle = T0 + 10 * SECOND;
    let filters = [
        tally_types::QueryFilter {
            code: 2,
            ..Default::default()
        },
        tally_types::QueryFilter {
            code: 2,
            reversed: true,
            ..Default::default()
        },
        tally_types::QueryFilter {
            ledger: 156,
            code: 3,
            ..Default::default()
        },
        tally_types::QueryFilter {
            code: 1,
            timestamp_min: middle,
            ..Default::default()
        },
        tally_types::QueryFilter {
            code: 1,
            timestamp_max: middle + 18 * SECOND,
            reversed: true,
            ..Default::default()
        },
    ];
    for (n, filter) in filters.iter().enumerate() {
        let expected = scanned(sm.transfers().collect(), filter, |t| {
            filter.matches_transfer(t)
        });
        let mut query = Query::new(&sm, QueryTarget::Transfers, filter);
        let mut steps = 0;
        while !query.step(&sm) {
            steps += 1;
            commits.commit(&mut sm, n % 2 == 0);
        }
        assert!(steps > 0, "{filter:?} took one step");
        assert_eq!(query.transfers(&sm), expected, "{filter:?}");
    }
}

/// `get_account_transfers` read step by step, with batches (and chains that roll back)
/// committed between its steps, answers the account's history as it stood when the
/// read began, for every direction, time range, field and limit, on 1 and 3 parts.
#[test]
fn stepped_account_reads_answer_the_history_they_began_on() {
    for parts in [1, 3] {
        let mut sm = property_ledger_in_parts(parts);
        let mut commits = Commits::new();
        for _ in 0..12 {
            commits.commit(&mut sm, false);
        }
        let filters = stepped_read_filters();
        for (n, filter) in filters.iter().enumerate() {
            let mut expected: Vec<Transfer> =
                sm.transfers().filter(|t| filter.matches(t)).collect();
            if filter.reversed {
                expected.reverse();
            }
            expected.truncate(filter.limit_effective());
            let mut read = AccountTransfersRead::new(&sm, filter);
            let mut steps = 0;
            while !read.step(&sm) {
                steps += 1;
                commits.commit(&mut sm, n % 2 == 0);
            }
            assert!(steps > 0 || filter.account_id == 999 || filter.limit == 10);
            assert_eq!(read.transfers(), expected, "{parts} parts, {filter:?}");
        }
    }
}

/// `get_account_balances` read step by step, with batches (and chains that roll back)
/// committed between its steps, answers the rows as they stood when the read began,
/// as one pass over them does, for every direction, time range, field and limit, on 1
/// and 3 parts.
#[test]
fn stepped_balance_reads_answer_the_rows_they_began_on() {
    for parts in [1, 3] {
        let mut sm = StateMachine::with_capacity_in_parts(0, 0, parts);
        let accounts = vec![account(1, 156, AF::HISTORY), account(6, 156, AF::empty())];
        sm.apply(T0, &Batch::CreateAccounts(accounts));
        let mut commits = Commits::new();
        for _ in 0..12 {
            commits.commit(&mut sm, false);
        }
        let filters = stepped_read_filters();
        let mut stepped = 0;
        for (n, filter) in filters.iter().enumerate() {
            let expected = balances_in_one_pass(&sm, filter);
            let mut read = AccountBalancesRead::new(&sm, filter);
            let mut steps = 0;
            while !read.step(&sm) {
                steps += 1;
                commits.commit(&mut sm, n % 2 == 0);
            }
            stepped += usize::from(steps > 0);
            assert_eq!(read.balances(), expected, "{parts} parts, {filter:?}");
            assert_eq!(expected.is_empty(), filter.account_id != 1, "{filter:?}");
        }
        assert!(stepped >= 5, "{stepped} reads took more than one step");
    }
}

/// A transfer imported while a balances read is under way, stamped in the past but
/// after the account's newest row, is not answered: the read ends at the row that was
/// newest when it began, not at the state's last timestamp.
#[test]
fn a_stepped_balance_read_leaves_out_an_import_recorded_meanwhile() {
    let mut sm = StateMachine::with_capacity_in_parts(0, 0, 2);
    let accounts = vec![account(1, 156, AF::HISTORY), account(6, 156, AF::empty())];
    sm.apply(T0, &Batch::CreateAccounts(accounts));
    let mut commits = Commits::new();
    for _ in 0..6 {
        commits.commit(&mut sm, false);
    }
    // An account created after the transfers moves time past them.
    let created = commits.now + SECOND;
    sm.apply(
        created,
        &Batch::CreateAccounts(vec![account(7, 156, AF::empty())]),
    );
    let filter = AccountFilter::new(1);
    let expected = balances_in_one_pass(&sm, &filter);
    let mut read = AccountBalancesRead::new(&sm, &filter);
    assert!(!read.step(&sm), "6,000 rows take two steps");
    let import = imported_transfer(99_999, 1, 6, created - 1);
    assert_eq!(
        transfers(&mut sm, created + SECOND, vec![import]),
        vec![R::Ok]
    );
    while !read.step(&sm) {}
    assert_eq!(read.balances(), expected);
    assert_eq!(balances_in_one_pass(&sm, &filter).len(), expected.len() + 1);
}

/// Change events come out in commit order, the same on any part count, when groups
/// (with chains that roll back, and accounts created between them) apply serially:
/// one list keeps them, with no sort to put them in order.
#[test]
fn serial_groups_give_the_same_change_events_on_any_part_count() {
    let run = |parts: usize| {
        let mut sm = property_ledger_in_parts(parts);
        sm.set_change_capture(true);
        let mut commits = Commits::new();
        let mut events = Vec::new();
        for n in 0..6u128 {
            commits.commit(&mut sm, n % 2 == 0);
            commits.now += SECOND;
            let created = vec![account(100 + n, 156, AF::empty())];
            sm.apply(commits.now, &Batch::CreateAccounts(created));
            events.extend(sm.take_changes());
        }
        events
    };
    let one = run(1);
    assert!(
        one.windows(2)
            .all(|pair| pair[0].timestamp < pair[1].timestamp)
    );
    assert_eq!(one.len(), 6 * (1_000 - 3) + 3 * 3 + 6);
    for parts in [2, 3] {
        assert!(run(parts) == one, "{parts} parts");
    }
}

/// Filters of account 1 (whose history runs over several steps) for the stepped-read
/// tests: every direction, time range, field and limit; then account 6 (in every
/// transfer of [`Commits`], without balance history) and an unknown account.
fn stepped_read_filters() -> Vec<AccountFilter> {
    let middle = T0 + 5 * SECOND;
    let base = AccountFilter::new(1);
    vec![
        base,
        AccountFilter {
            reversed: true,
            ..base
        },
        AccountFilter {
            credits: false,
            limit: 5_000,
            ..base
        },
        AccountFilter {
            debits: false,
            reversed: true,
            ..base
        },
        AccountFilter {
            code: 2,
            user_data_64: 3,
            ..base
        },
        // Fewer than a page: read to the end, past what is committed meanwhile.
        AccountFilter { code: 3, ..base },
        AccountFilter {
            timestamp_min: middle,
            timestamp_max: middle + 2 * SECOND,
            ..base
        },
        AccountFilter {
            timestamp_max: middle,
            reversed: true,
            limit: 10,
            ..base
        },
        AccountFilter {
            timestamp_min: middle + 4 * SECOND,
            reversed: true,
            ..base
        },
        AccountFilter::new(6),
        AccountFilter::new(999),
    ]
}

/// The rows `get_account_balances` answers, read in one pass with nothing committed
/// meanwhile: what a stepped read must match.
fn balances_in_one_pass(sm: &StateMachine, filter: &AccountFilter) -> Vec<AccountBalance> {
    let part = sm.part(filter.account_id);
    let Some(account) = part.account_position(filter.account_id) else {
        return Vec::new();
    };
    let max = match filter.timestamp_max {
        0 => u64::MAX,
        max => max,
    };
    part.balance_history
        .rows_between(account, filter.timestamp_min, max, filter.reversed)
        .filter(|row| filter.matches_at(&sm.transfer_by_ref(row.transfer_ref), row.timestamp))
        .take(filter.limit_effective())
        .map(|row| AccountBalance {
            timestamp: row.timestamp,
            balances: row.balances.public(),
        })
        .collect()
}

// ---- balance history ----

/// (timestamp, debits_pending, debits_posted, credits_pending, credits_posted) rows.
fn balance_rows(sm: &StateMachine, filter: &AccountFilter) -> Vec<(u64, u128, u128, u128, u128)> {
    sm.account_balances(filter)
        .iter()
        .map(|row| {
            let b = row.balances;
            (
                row.timestamp,
                b.debits_pending,
                b.debits_posted,
                b.credits_pending,
                b.credits_posted,
            )
        })
        .collect()
}

#[test]
fn history_keeps_a_row_per_change_expiries_included_and_filters_them() {
    let mut sm = StateMachine::new();
    let with_history = |id| account(id, 156, AF::HISTORY);
    sm.apply(
        T0,
        &Batch::CreateAccounts(vec![
            with_history(1),
            with_history(2),
            account(3, 156, AF::empty()),
        ]),
    );
    let t1 = T0 + SECOND;
    let mut payment = transfer(10, 1, 2, 100);
    payment.user_data_128 = 77;
    let results = transfers(
        &mut sm,
        t1,
        vec![
            payment,
            pending(11, 1, 2, 40, 1),
            pending(12, 2, 1, 30, 0),
            second_phase(13, 12, 10, TF::POST_PENDING_TRANSFER),
            // A failing chain leaves no row.
            Transfer {
                flags: TF::LINKED,
                ..transfer(14, 1, 3, 5)
            },
            transfer(15, 1, 1, 5),
            transfer(16, 3, 2, 7),
        ],
    );
    assert_eq!(
        results,
        vec![
            R::Ok,
            R::Ok,
            R::Ok,
            R::Ok,
            R::LinkedEventFailed,
            R::AccountsMustBeDifferent,
            R::Ok
        ]
    );
    // #11 expires at t1 + 1 + 1 s, before the batch at t2.
    let t2 = t1 + 3 * SECOND;
    transfers(&mut sm, t2, vec![transfer(20, 2, 3, 1)]);
    let all = AccountFilter::new(1);
    let expiry = t1 + 1 + SECOND;
    assert_eq!(
        balance_rows(&sm, &all),
        vec![
            (t1, 0, 100, 0, 0),
            (t1 + 1, 40, 100, 0, 0),
            (t1 + 2, 40, 100, 30, 0),
            (t1 + 3, 40, 100, 0, 10),
            (expiry, 0, 100, 0, 10),
        ]
    );
    let last = *balance_rows(&sm, &all).last().unwrap();
    let account = sm.lookup_account(1).unwrap();
    assert_eq!(
        last.1..last.4,
        account.debits_pending..account.credits_posted
    );
    // Account 2: the payment, the pending pair, the post, #16, the expiry, #20.
    assert_eq!(balance_rows(&sm, &AccountFilter::new(2)).len(), 7);
    // Filters: direction, reversed, limit, time, user data.
    let debits = AccountFilter {
        credits: false,
        ..all
    };
    assert_eq!(
        balance_rows(&sm, &debits)
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        vec![t1, t1 + 1, expiry]
    );
    let newest = AccountFilter {
        reversed: true,
        limit: 2,
        ..all
    };
    assert_eq!(
        balance_rows(&sm, &newest)
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        vec![expiry, t1 + 3]
    );
    let late = AccountFilter {
        timestamp_min: t1 + 3,
        ..all
    };
    assert_eq!(balance_rows(&sm, &late).len(), 2);
    let order = AccountFilter {
        user_data_128: 77,
        ..all
    };
    assert_eq!(balance_rows(&sm, &order), vec![(t1, 0, 100, 0, 0)]);
    // The account's own ledger keeps every row and transfer; another keeps none.
    let own = AccountFilter { ledger: 156, ..all };
    assert_eq!(balance_rows(&sm, &own), balance_rows(&sm, &all));
    assert_eq!(sm.account_transfers(&own), sm.account_transfers(&all));
    let other = AccountFilter { ledger: 840, ..all };
    assert!(sm.account_balances(&other).is_empty());
    assert!(sm.account_transfers(&other).is_empty());
    assert!(!sm.account_transfers(&all).is_empty());
    // No history flag, no rows; an unknown account, none.
    assert!(sm.account_balances(&AccountFilter::new(3)).is_empty());
    assert!(sm.account_balances(&AccountFilter::new(99)).is_empty());
    // A snapshot image derives the same rows.
    let loaded = StateMachine::from_image(sm.image()).unwrap();
    for id in 1..=3 {
        let filter = AccountFilter::new(id);
        assert_eq!(
            loaded.account_balances(&filter),
            sm.account_balances(&filter)
        );
    }
}

/// A state machine holding accounts 1 and 2, both with `history`, created at `T0`.
fn two_history_accounts() -> StateMachine {
    let mut sm = StateMachine::new();
    let with_history = |id| account(id, 156, AF::HISTORY);
    sm.apply(
        T0,
        &Batch::CreateAccounts(vec![with_history(1), with_history(2)]),
    );
    sm
}

#[test]
fn expiries_at_one_instant_load_in_the_order_apply_made_their_rows() {
    let mut sm = two_history_accounts();
    // #30 first with 2 s, #20 a second later with 1 s: both expire at t1 + 2 s,
    // and apply releases them by id, #20 first.
    let t1 = T0 + SECOND;
    assert_eq!(
        transfers(&mut sm, t1, vec![pending(30, 1, 2, 40, 2)]),
        vec![R::Ok]
    );
    assert_eq!(
        transfers(&mut sm, t1 + SECOND, vec![pending(20, 1, 2, 7, 1)]),
        vec![R::Ok]
    );
    sm.apply(
        t1 + 3 * SECOND,
        &Batch::CreateAccounts(vec![account(3, 156, AF::empty())]),
    );
    assert_eq!(sm.pending_status(20), Some(PendingStatus::Expired));
    assert_eq!(sm.pending_status(30), Some(PendingStatus::Expired));
    let (at_30, at_20) = (
        sm.lookup_transfer(30).unwrap().timestamp,
        sm.lookup_transfer(20).unwrap().timestamp,
    );
    let expiry = at_30 + 2 * SECOND;
    assert_eq!(at_20 + SECOND, expiry, "both expire at one instant");
    let rows = vec![
        (at_30, 40, 0, 0, 0),
        (at_20, 47, 0, 0, 0),
        (expiry, 40, 0, 0, 0),
        (expiry, 0, 0, 0, 0),
    ];
    assert_eq!(balance_rows(&sm, &AccountFilter::new(1)), rows);
    for parts in 1..=3 {
        let loaded = StateMachine::from_image_in_parts(sm.image(), parts).unwrap();
        assert_eq!(balance_rows(&loaded, &AccountFilter::new(1)), rows);
        let filter = AccountFilter::new(2);
        assert_eq!(
            loaded.account_balances(&filter),
            sm.account_balances(&filter)
        );
    }
}

#[test]
fn an_imported_row_before_a_recorded_expiry_holds_the_balances_at_its_instant() {
    let mut sm = two_history_accounts();
    let t1 = T0 + SECOND;
    assert_eq!(
        transfers(&mut sm, t1, vec![pending(11, 1, 2, 40, 1)]),
        vec![R::Ok]
    );
    // Only an account after the expiry instant: the expiry is recorded while no
    // transfer is newer than #11, so an import may be stamped before the expiry.
    let t2 = t1 + 3 * SECOND;
    sm.apply(
        t2,
        &Batch::CreateAccounts(vec![account(3, 156, AF::empty())]),
    );
    assert_eq!(sm.pending_status(11), Some(PendingStatus::Expired));
    let expiry = sm.lookup_transfer(11).unwrap().timestamp + SECOND;
    let imported_at = t1 + SECOND / 2;
    assert!(imported_at < expiry);
    assert_eq!(
        transfers(
            &mut sm,
            t2 + SECOND,
            vec![imported_transfer(20, 1, 2, imported_at)]
        ),
        vec![R::Ok]
    );
    // Each row is the balance at its instant: the import while #11 still held 40,
    // the expiry after the import.
    let rows_1 = vec![
        (t1, 40, 0, 0, 0),
        (imported_at, 40, 5, 0, 0),
        (expiry, 0, 5, 0, 0),
    ];
    let rows_2 = vec![
        (t1, 0, 0, 40, 0),
        (imported_at, 0, 0, 40, 5),
        (expiry, 0, 0, 0, 5),
    ];
    assert_eq!(balance_rows(&sm, &AccountFilter::new(1)), rows_1);
    assert_eq!(balance_rows(&sm, &AccountFilter::new(2)), rows_2);
    // A chain failing after another such import takes its change back out.
    let chain = vec![
        Transfer {
            flags: TF::IMPORTED.with(TF::LINKED),
            ..imported_transfer(21, 2, 1, imported_at + 1)
        },
        imported_transfer(22, 1, 1, imported_at + 2),
    ];
    assert_eq!(
        transfers(&mut sm, t2 + 2 * SECOND, chain),
        vec![R::LinkedEventFailed, R::AccountsMustBeDifferent]
    );
    assert_eq!(balance_rows(&sm, &AccountFilter::new(1)), rows_1);
    assert_eq!(balance_rows(&sm, &AccountFilter::new(2)), rows_2);
    // What a snapshot's load derives, in timestamp order, is the same.
    let loaded = StateMachine::from_image(sm.image()).unwrap();
    assert_eq!(balance_rows(&loaded, &AccountFilter::new(1)), rows_1);
    assert_eq!(balance_rows(&loaded, &AccountFilter::new(2)), rows_2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Under random traffic on 1 to 3 parts, a history account has one row per stored
    /// transfer touching it and per expiry of its pending transfers, its last row is its
    /// balance, and an image round trip derives exactly the rows apply recorded.
    #[test]
    fn history_rows_follow_every_change_and_survive_an_image(
        batches in proptest::collection::vec((proptest::collection::vec(any_transfer(), 0..12), 0u64..3), 1..8),
        parts in 1usize..4,
    ) {
        let mut sm = StateMachine::with_capacity_in_parts(0, 0, parts);
        let accounts = vec![
            account(1, 156, AF::HISTORY),
            account(2, 156, AF::DEBITS_MUST_NOT_EXCEED_CREDITS.with(AF::HISTORY)),
            account(3, 156, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
            account(4, 840, AF::HISTORY),
            account(5, 156, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
            account(6, 156, AF::HISTORY),
        ];
        sm.apply(T0, &Batch::CreateAccounts(accounts));
        let mut now = T0 + SECOND;
        for (events, gap_s) in batches {
            now += gap_s * SECOND + 100;
            transfers(&mut sm, now, events);
        }
        for id in 1u128..=6 {
            let filter = AccountFilter::new(id);
            let rows = sm.account_balances(&filter);
            let account = *sm.lookup_account(id).unwrap();
            if !account.flags.contains(AF::HISTORY) {
                prop_assert!(rows.is_empty());
                continue;
            }
            let touching = sm.account_transfers(&filter);
            let expired = touching.iter().filter(|t| sm.pending_status(t.id) == Some(PendingStatus::Expired)).count();
            prop_assert_eq!(rows.len(), touching.len() + expired);
            if let Some(last) = rows.last() {
                prop_assert_eq!(last.balances, tally_types::AccountBalances::of(&account));
            }
            prop_assert!(rows.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        }
        let loaded = StateMachine::from_image_in_parts(sm.image(), parts).unwrap();
        for id in 1u128..=6 {
            let filter = AccountFilter::new(id);
            prop_assert_eq!(loaded.account_balances(&filter), sm.account_balances(&filter));
        }
    }
}

// ---- imported events ----

fn imported_account(id: u128, timestamp: u64) -> Account {
    Account {
        timestamp,
        ..account(id, 156, AF::IMPORTED)
    }
}

fn imported_transfer(id: u128, debit: u128, credit: u128, timestamp: u64) -> Transfer {
    Transfer {
        timestamp,
        flags: TF::IMPORTED,
        ..transfer(id, debit, credit, 5)
    }
}

#[test]
fn imported_batch_checks_come_first_and_the_first_event_decides() {
    let mut sm = StateMachine::new();
    let now = T0;
    let accounts = |sm: &mut StateMachine, at, events| sm.apply(at, &Batch::CreateAccounts(events));
    // The first event is imported: every event must be; each checks its own stamp.
    let results = accounts(
        &mut sm,
        now,
        vec![
            imported_account(1, 100),
            account(2, 156, AF::empty()),
            Account {
                id: 0,
                ..imported_account(0, 0)
            },
            imported_account(3, 1 << 63),
            imported_account(4, now),
            imported_account(5, 200),
        ],
    );
    assert_eq!(
        results,
        vec![
            R::Ok,
            R::ImportedEventExpected,
            R::ImportedEventTimestampOutOfRange,
            R::ImportedEventTimestampOutOfRange,
            R::ImportedEventTimestampMustNotAdvance,
            R::Ok,
        ]
    );
    assert_eq!(sm.lookup_account(1).unwrap().timestamp, 100);
    assert_eq!(sm.lookup_account(5).unwrap().timestamp, 200);
    // The first is not imported: an imported one is not expected, a timestamp not allowed.
    let results = accounts(
        &mut sm,
        now + SECOND,
        vec![
            account(6, 156, AF::empty()),
            imported_account(7, 300),
            Account {
                timestamp: 9,
                ..account(0, 156, AF::empty())
            },
        ],
    );
    assert_eq!(
        results,
        vec![R::Ok, R::ImportedEventNotExpected, R::TimestampMustBeZero]
    );
    assert_eq!(sm.lookup_account(6).unwrap().timestamp, now + SECOND);
}

#[test]
fn imported_accounts_and_transfers_keep_time_in_order() {
    let mut sm = StateMachine::new();
    let accounts = vec![
        imported_account(1, 100),
        imported_account(2, 200),
        imported_account(3, 300),
    ];
    assert_eq!(
        sm.apply(T0, &Batch::CreateAccounts(accounts)),
        vec![R::Ok; 3]
    );
    // Exists is answered before the time checks, so a retried import learns it is in.
    assert_eq!(
        sm.apply(
            T0 + SECOND,
            &Batch::CreateAccounts(vec![imported_account(1, 100)])
        ),
        vec![R::Exists]
    );
    assert_eq!(
        sm.apply(
            T0 + 2 * SECOND,
            &Batch::CreateAccounts(vec![imported_account(4, 250)])
        ),
        vec![R::ImportedEventTimestampMustNotRegress]
    );
    let t = |sm: &mut StateMachine, at, events| transfers(sm, at, events);
    assert_eq!(
        t(
            &mut sm,
            T0 + 3 * SECOND,
            vec![
                imported_transfer(10, 1, 2, 400),
                // Not after the last transfer; then equal to an account's stamp.
                imported_transfer(11, 1, 2, 400),
                imported_transfer(12, 1, 2, 300),
                // Not after its accounts'.
                imported_transfer(13, 3, 1, 300),
            ]
        ),
        vec![
            R::Ok,
            R::ImportedEventTimestampMustNotRegress,
            R::ImportedEventTimestampMustNotRegress,
            R::ImportedEventTimestampMustNotRegress
        ]
    );
    // A transfer's own stamp must not equal an account's either: account 5 at 500.
    assert_eq!(
        sm.apply(
            T0 + 4 * SECOND,
            &Batch::CreateAccounts(vec![imported_account(5, 500)])
        ),
        vec![R::Ok]
    );
    assert_eq!(
        t(
            &mut sm,
            T0 + 5 * SECOND,
            vec![
                imported_transfer(14, 1, 2, 500),
                imported_transfer(15, 5, 1, 450),
                imported_transfer(16, 1, 5, 450),
                Transfer {
                    flags: TF::IMPORTED.with(TF::PENDING),
                    timeout: 1,
                    ..imported_transfer(17, 1, 2, 600)
                },
                // Step 11 comes before the import checks: the ledger first.
                Transfer {
                    ledger: 840,
                    ..imported_transfer(18, 1, 2, 100)
                },
                imported_transfer(19, 1, 2, 600),
            ]
        ),
        vec![
            R::ImportedEventTimestampMustNotRegress,
            R::ImportedEventTimestampMustPostdateDebitAccount,
            R::ImportedEventTimestampMustPostdateCreditAccount,
            R::ImportedEventTimeoutMustBeZero,
            R::TransferMustHaveTheSameLedgerAsAccounts,
            R::Ok,
        ]
    );
    assert_eq!(sm.lookup_transfer(19).unwrap().timestamp, 600);
    // An imported account may not take a stamp a transfer holds.
    assert_eq!(
        sm.apply(
            T0 + 6 * SECOND,
            &Batch::CreateAccounts(vec![imported_account(6, 600)])
        ),
        vec![R::ImportedEventTimestampMustNotRegress]
    );
    // Imported two-phase: the pending, then its post checked after step 10.
    let held = Transfer {
        flags: TF::IMPORTED.with(TF::PENDING),
        ..imported_transfer(20, 1, 2, 700)
    };
    let post = |id, at| Transfer {
        timestamp: at,
        ..second_phase(id, 20, 0, TF::POST_PENDING_TRANSFER.with(TF::IMPORTED))
    };
    assert_eq!(
        t(
            &mut sm,
            T0 + 7 * SECOND,
            vec![held, post(21, 650), post(22, 800)]
        ),
        vec![R::Ok, R::ImportedEventTimestampMustNotRegress, R::Ok]
    );
    assert_eq!(
        t(&mut sm, T0 + 8 * SECOND, vec![post(23, 900)]),
        vec![R::PendingTransferAlreadyPosted]
    );
    assert!(sm.check_invariants().is_empty());
    // Balances moved as usual; the account history and an image keep the own stamps.
    assert_eq!(sm.lookup_account(2).unwrap().credits_posted, 15);
    let loaded = StateMachine::from_image(sm.image()).unwrap();
    assert_eq!(loaded.lookup_transfer(22).unwrap().timestamp, 800);
    assert_eq!(loaded.image(), sm.image());
}

#[test]
fn an_imported_change_is_stamped_when_it_committed() {
    let mut sm = StateMachine::new();
    sm.set_change_capture(true);
    sm.apply(
        T0,
        &Batch::CreateAccounts(vec![imported_account(1, 100), imported_account(2, 200)]),
    );
    transfers(&mut sm, T0 + SECOND, vec![imported_transfer(10, 1, 2, 300)]);
    let events = sm.take_changes();
    let stamps: Vec<(u64, u64)> = events
        .iter()
        .map(|e| {
            (
                e.timestamp,
                e.transfer.timestamp.max(e.debit_account.timestamp),
            )
        })
        .collect();
    // Events in commit order; the records keep their own stamps.
    assert_eq!(stamps, vec![(T0, 100), (T0 + 1, 200), (T0 + SECOND, 300)]);
}

// ---- runs in steps ----

/// The number of transfers stored after each step of one event over `batches`.
fn transfers_after_each_step(sm: &mut StateMachine, batches: &[(u64, &Batch)]) -> Vec<usize> {
    let mut run = sm.start_run(batches, true);
    let mut counts = Vec::new();
    while !sm.run_step(&mut run, 1) {
        counts.push(sm.transfer_count());
    }
    counts.push(sm.transfer_count());
    assert!(
        run.into_results()
            .iter()
            .flatten()
            .all(|&code| code == R::Ok)
    );
    counts
}

#[test]
fn a_step_stops_between_units_only() {
    let mut sm = property_ledger();
    let linked = |id| Transfer {
        flags: TF::LINKED,
        ..transfer(id, 1, 6, 1)
    };
    // A chain of three longer than the step runs whole; so does a failing one.
    let batch = Batch::CreateTransfers(vec![
        transfer(10, 1, 6, 1),
        linked(11),
        linked(12),
        transfer(13, 1, 6, 1),
        transfer(14, 1, 6, 1),
    ]);
    let empty = Batch::CreateTransfers(Vec::new());
    let batches = [(T0 + SECOND, &batch), (T0 + 2 * SECOND, &empty)];
    assert_eq!(transfers_after_each_step(&mut sm, &batches), [1, 4, 5, 5]);
    assert_eq!(sm.last_timestamp(), T0 + 2 * SECOND);
    // An imported batch runs in one step: its events keep their own, older stamps.
    let imported = Batch::CreateTransfers(vec![
        imported_transfer(20, 1, 6, T0 + 100),
        imported_transfer(21, 1, 6, T0 + 101),
        imported_transfer(22, 1, 6, T0 + 102),
    ]);
    let batches = [(T0 + 3 * SECOND, &imported), (T0 + 4 * SECOND, &batch)];
    let mut sm = property_ledger();
    assert_eq!(transfers_after_each_step(&mut sm, &batches), [3, 4, 7, 8]);
}
