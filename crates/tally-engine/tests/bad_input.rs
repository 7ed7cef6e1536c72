//! Bad input at the API edge (docs/spec.md §3.5): every field out of range, u128 edges, too many
//! decimals, overflow near u128::MAX, empty and maximum-size batches, duplicate ids in a
//! batch, chains of maximum length. Each case asserts the exact result code (or error)
//! and that nothing changed.
#![allow(clippy::unwrap_used)]

use tally_engine::simulation::{Clock, Committer, Submission};
use tally_engine::{Config, Ledger};
use tally_engine::{EventResult, SubmitError};
use tally_json::{NoLedgers, Request, parse_line};
use tally_log::LogOptions;
use tally_log::faulty::FaultyStorage;
use tally_testkit::{account, transfer};
use tally_types::currency::{AmountError, parse_amount};
use tally_types::{
    Account, AccountFlags, BATCH_EVENTS_MAX, Batch, ResultCode, StateImage, Transfer, TransferFlags,
};

use ResultCode as R;

const WALLET: u128 = 1; // debits_must_not_exceed_credits, CNY
const BANK: u128 = 2; // no limit, CNY
const MERCHANT: u128 = 3; // credits_must_not_exceed_debits, CNY
const USD: u128 = 4; // no limit, USD
const SPARE: u128 = 5; // no limit, CNY
const FRESH: u128 = 6; // no limit, CNY
const MISSING: u128 = 99;

/// A ledger on simulated storage with a manual clock and five accounts, one funded
/// wallet (100.00), one pending transfer (10) and one single-phase transfer (11).
struct Fixture {
    committer: Committer,
    now: u64,
}

fn pending(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        flags: TransferFlags::PENDING,
        ..transfer(id, debit, credit, amount)
    }
}

fn second_phase(id: u128, flags: TransferFlags, pending_id: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        flags,
        ..Transfer::default()
    }
}

/// The parts of the state a rejected event must not touch (the clock moves and a
/// transient failure burns its id, by design).
fn contents(image: &StateImage) -> StateImage {
    StateImage {
        last_timestamp: 0,
        failed_ids: Vec::new(),
        ..image.clone()
    }
}

impl Fixture {
    fn new() -> Fixture {
        let committer =
            Committer::open(Box::new(FaultyStorage::new()), LogOptions::default(), 0).unwrap();
        let mut fixture = Fixture {
            committer,
            now: 1_000_000,
        };
        let accounts = vec![
            account(WALLET, 156, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
            account(BANK, 156, AccountFlags::empty()),
            account(MERCHANT, 156, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
            account(USD, 840, AccountFlags::empty()),
            account(SPARE, 156, AccountFlags::empty()),
            account(FRESH, 156, AccountFlags::empty()),
        ];
        fixture.ok(Batch::CreateAccounts(accounts));
        fixture.ok(Batch::CreateTransfers(vec![
            transfer(11, BANK, WALLET, 10_000),
            pending(10, BANK, SPARE, 500),
        ]));
        fixture
    }

    fn commit(&mut self, batch: Batch) -> Result<Vec<EventResult>, SubmitError> {
        self.now += 1_000;
        let submission = Submission {
            batch,
            now: Some(self.now),
        };
        let mut results = self.committer.commit(vec![submission], Clock::Manual);
        assert_eq!(results.len(), 1);
        results.pop().unwrap()
    }

    fn codes(&mut self, batch: Batch) -> Vec<ResultCode> {
        self.commit(batch)
            .unwrap()
            .into_iter()
            .map(|r| r.code)
            .collect()
    }

    fn ok(&mut self, batch: Batch) {
        let codes = self.codes(batch);
        assert!(codes.iter().all(|c| c.is_ok()), "setup failed: {codes:?}");
    }

    fn image(&self) -> StateImage {
        self.committer.state().image()
    }

    /// One data-driven check: `batch` gets exactly `expected`, and if no event is `ok`
    /// nothing but the clock (and burned ids for transient failures) changed.
    fn check(&mut self, what: &str, batch: Batch, expected: &[ResultCode]) {
        let before = self.image();
        let codes = self.codes(batch);
        assert_eq!(codes, expected, "{what}");
        if codes.iter().all(|c| !c.is_ok()) {
            let after = self.image();
            assert_eq!(contents(&after), contents(&before), "{what}: state changed");
            let burned = after.failed_ids.len() - before.failed_ids.len();
            let transient = codes.iter().filter(|c| c.is_transient()).count();
            assert!(burned <= transient, "{what}: {burned} ids burned");
        }
        let violations = self.committer.state().check_invariants();
        assert!(violations.is_empty(), "{what}: {violations:?}");
    }

    fn check_one(&mut self, what: &str, t: Transfer, expected: ResultCode) {
        self.check(what, Batch::CreateTransfers(vec![t]), &[expected]);
    }
}

/// Ids, kind flags and accounts of a single-phase transfer.
#[test]
fn every_transfer_id_flag_and_account_field_out_of_range_gets_its_own_code() {
    let mut f = Fixture::new();
    let t = |id| transfer(id, BANK, SPARE, 1);
    check_each(
        &mut f,
        vec![
            ("id 0", t(0), R::IdMustNotBeZero),
            ("id u128::MAX", t(u128::MAX), R::IdMustNotBeIntMax),
            (
                "two kind flags",
                Transfer {
                    flags: TransferFlags::PENDING.with(TransferFlags::REFUND),
                    ..t(20)
                },
                R::FlagsAreMutuallyExclusive,
            ),
            (
                "debit 0",
                transfer(21, 0, SPARE, 1),
                R::DebitAccountIdMustNotBeZero,
            ),
            (
                "debit MAX",
                transfer(21, u128::MAX, SPARE, 1),
                R::DebitAccountIdMustNotBeIntMax,
            ),
            (
                "credit 0",
                transfer(21, BANK, 0, 1),
                R::CreditAccountIdMustNotBeZero,
            ),
            (
                "credit MAX",
                transfer(21, BANK, u128::MAX, 1),
                R::CreditAccountIdMustNotBeIntMax,
            ),
            (
                "same accounts",
                transfer(21, BANK, BANK, 1),
                R::AccountsMustBeDifferent,
            ),
        ],
    );
}

/// Second-phase fields, ledger, code and amount of a single-phase transfer.
#[test]
fn every_transfer_phase_ledger_and_amount_field_out_of_range_gets_its_own_code() {
    let mut f = Fixture::new();
    let t = |id| transfer(id, BANK, SPARE, 1);
    check_each(
        &mut f,
        vec![
            (
                "pending_id on single-phase",
                Transfer {
                    pending_id: 10,
                    ..t(21)
                },
                R::PendingIdMustBeZero,
            ),
            (
                "timeout on single-phase",
                Transfer {
                    timeout: 1,
                    ..t(21)
                },
                R::TimeoutReservedForPendingTransfer,
            ),
            (
                "ledger 0",
                Transfer { ledger: 0, ..t(21) },
                R::LedgerMustNotBeZero,
            ),
            (
                "code 0",
                Transfer { code: 0, ..t(21) },
                R::CodeMustNotBeZero,
            ),
            ("amount 0", t(21).with_amount(0), R::AmountMustNotBeZero),
            (
                "accounts of two ledgers",
                transfer(21, USD, BANK, 1),
                R::AccountsMustHaveTheSameLedger,
            ),
            (
                "transfer ledger differs from accounts",
                Transfer {
                    ledger: 840,
                    ..t(21)
                },
                R::TransferMustHaveTheSameLedgerAsAccounts,
            ),
        ],
    );
}

/// Missing accounts and balance limits: transient, each burns its id.
#[test]
fn transient_transfer_failures_get_their_own_code_and_burn_the_id() {
    let mut f = Fixture::new();
    let t = |id| transfer(id, BANK, SPARE, 1);
    check_each(
        &mut f,
        vec![
            // Transient failures: they burn the id, so each uses a fresh one.
            (
                "debit missing",
                transfer(22, MISSING, SPARE, 1),
                R::DebitAccountNotFound,
            ),
            (
                "credit missing",
                transfer(23, BANK, MISSING, 1),
                R::CreditAccountNotFound,
            ),
            (
                "wallet overdrawn",
                transfer(24, WALLET, SPARE, 10_001),
                R::ExceedsCredits,
            ),
            (
                "merchant over-credited",
                transfer(25, BANK, MERCHANT, 1),
                R::ExceedsDebits,
            ),
            ("burned id reused", t(22), R::IdAlreadyFailed),
        ],
    );
}

/// Runs each case in turn on `f`, in order (later cases may rely on ids burned earlier).
fn check_each(f: &mut Fixture, cases: Vec<(&str, Transfer, ResultCode)>) {
    for (what, transfer, code) in cases {
        f.check_one(what, transfer, code);
    }
}

trait WithAmount {
    fn with_amount(self, amount: u128) -> Self;
}

impl WithAmount for Transfer {
    fn with_amount(self, amount: u128) -> Self {
        Transfer { amount, ..self }
    }
}

fn post(id: u128, pending_id: u128) -> Transfer {
    second_phase(id, TransferFlags::POST_PENDING_TRANSFER, pending_id)
}

fn void(id: u128, pending_id: u128) -> Transfer {
    second_phase(id, TransferFlags::VOID_PENDING_TRANSFER, pending_id)
}

fn refund(id: u128, of: u128, amount: u128) -> Transfer {
    Transfer {
        amount,
        ..second_phase(id, TransferFlags::REFUND, of)
    }
}

/// Post and void fields against the pending transfer 10.
#[test]
fn every_post_and_void_field_out_of_range_gets_its_own_code() {
    let mut f = Fixture::new();
    check_each(
        &mut f,
        vec![
            ("post pending_id 0", post(30, 0), R::PendingIdMustNotBeZero),
            (
                "post pending_id MAX",
                post(30, u128::MAX),
                R::PendingIdMustNotBeIntMax,
            ),
            ("post itself", post(30, 30), R::PendingIdMustBeDifferent),
            (
                "timeout on post",
                Transfer {
                    timeout: 5,
                    ..post(30, 10)
                },
                R::TimeoutReservedForPendingTransfer,
            ),
            (
                "post of a single-phase",
                post(30, 11),
                R::PendingTransferNotPending,
            ),
            (
                "post with another debit account",
                Transfer {
                    debit_account_id: WALLET,
                    ..post(30, 10)
                },
                R::PendingTransferHasDifferentDebitAccountId,
            ),
            (
                "post with another credit account",
                Transfer {
                    credit_account_id: WALLET,
                    ..post(30, 10)
                },
                R::PendingTransferHasDifferentCreditAccountId,
            ),
            (
                "post with another ledger",
                Transfer {
                    ledger: 840,
                    ..post(30, 10)
                },
                R::PendingTransferHasDifferentLedger,
            ),
            (
                "post with another code",
                Transfer {
                    code: 9,
                    ..post(30, 10)
                },
                R::PendingTransferHasDifferentCode,
            ),
            (
                "post of more than reserved",
                post(30, 10).with_amount(501),
                R::ExceedsPendingTransferAmount,
            ),
            (
                "post of u128::MAX",
                post(30, 10).with_amount(u128::MAX),
                R::ExceedsPendingTransferAmount,
            ),
            (
                "void of another amount",
                void(30, 10).with_amount(499),
                R::PendingTransferHasDifferentAmount,
            ),
        ],
    );
}

/// Refund fields against the single-phase transfer 11.
#[test]
fn every_refund_field_out_of_range_gets_its_own_code() {
    let mut f = Fixture::new();
    check_each(
        &mut f,
        vec![
            ("refund_of 0", refund(30, 0, 1), R::RefundOfMustNotBeZero),
            (
                "refund_of MAX",
                refund(30, u128::MAX, 1),
                R::RefundOfMustNotBeIntMax,
            ),
            (
                "refund of a pending transfer",
                refund(30, 10, 1),
                R::OriginalTransferNotRefundable,
            ),
            (
                "refund with another debit account",
                Transfer {
                    debit_account_id: SPARE,
                    ..refund(30, 11, 1)
                },
                R::RefundHasDifferentDebitAccountId,
            ),
            (
                "refund with another credit account",
                Transfer {
                    credit_account_id: SPARE,
                    ..refund(30, 11, 1)
                },
                R::RefundHasDifferentCreditAccountId,
            ),
            (
                "refund with another ledger",
                Transfer {
                    ledger: 840,
                    ..refund(30, 11, 1)
                },
                R::RefundHasDifferentLedger,
            ),
            ("refund of 0", refund(30, 11, 0), R::AmountMustNotBeZero),
            (
                "refund beyond the original",
                refund(30, 11, 10_001),
                R::ExceedsRefundableAmount,
            ),
            (
                "refund of u128::MAX",
                refund(30, 11, u128::MAX),
                R::ExceedsRefundableAmount,
            ),
        ],
    );
}

/// Missing pending or original transfers (transient); then a post, after which every second
/// phase is refused.
#[test]
fn second_phases_of_missing_transfers_burn_their_ids_and_a_post_is_final() {
    let mut f = Fixture::new();
    check_each(
        &mut f,
        vec![
            // Transient failures burn their ids.
            (
                "post of a missing pending",
                post(31, MISSING),
                R::PendingTransferNotFound,
            ),
            (
                "refund of a missing original",
                refund(32, MISSING, 1),
                R::OriginalTransferNotFound,
            ),
        ],
    );
    // Finally post it, then every later second phase is refused.
    f.check_one("post", post(33, 10), R::Ok);
    f.check_one("post again", post(34, 10), R::PendingTransferAlreadyPosted);
    f.check_one(
        "void after post",
        void(35, 10),
        R::PendingTransferAlreadyPosted,
    );
}

#[test]
fn every_account_field_out_of_range_gets_its_own_code() {
    let mut f = Fixture::new();
    let a = |id| account(id, 156, AccountFlags::empty());
    let cases: Vec<(&str, Account, ResultCode)> = vec![
        ("id 0", a(0), R::IdMustNotBeZero),
        ("id MAX", a(u128::MAX), R::IdMustNotBeIntMax),
        (
            "both balance limits",
            account(
                40,
                156,
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                    .with(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
            ),
            R::FlagsAreMutuallyExclusive,
        ),
        (
            "ledger 0",
            account(40, 0, AccountFlags::empty()),
            R::LedgerMustNotBeZero,
        ),
        ("code 0", Account { code: 0, ..a(40) }, R::CodeMustNotBeZero),
        (
            "exists with other flags",
            account(WALLET, 156, AccountFlags::empty()),
            R::ExistsWithDifferentFlags,
        ),
        (
            "exists with other ledger",
            account(BANK, 840, AccountFlags::empty()),
            R::ExistsWithDifferentLedger,
        ),
        (
            "exists with other code",
            Account { code: 2, ..a(BANK) },
            R::ExistsWithDifferentCode,
        ),
        (
            "exists with other user_data_128",
            Account {
                user_data_128: u128::MAX,
                ..a(BANK)
            },
            R::ExistsWithDifferentUserData128,
        ),
        (
            "exists with other user_data_64",
            Account {
                user_data_64: u64::MAX,
                ..a(BANK)
            },
            R::ExistsWithDifferentUserData64,
        ),
        (
            "exists with other user_data_32",
            Account {
                user_data_32: u32::MAX,
                ..a(BANK)
            },
            R::ExistsWithDifferentUserData32,
        ),
        (
            "exists (linked is not compared)",
            account(BANK, 156, AccountFlags::LINKED),
            R::LinkedEventChainOpen,
        ),
        ("exists", a(BANK), R::Exists),
    ];
    for (what, account, code) in cases {
        f.check(what, Batch::CreateAccounts(vec![account]), &[code]);
    }
}

#[test]
fn u128_edge_values_are_stored_exactly() {
    let mut f = Fixture::new();
    let edge = Account {
        user_data_128: u128::MAX,
        user_data_64: u64::MAX,
        user_data_32: u32::MAX,
        ledger: u32::MAX,
        code: u16::MAX,
        ..account(u128::MAX - 1, 156, AccountFlags::empty())
    };
    f.check("edge account", Batch::CreateAccounts(vec![edge]), &[R::Ok]);
    let stored = *f.committer.state().lookup_account(u128::MAX - 1).unwrap();
    assert_eq!(
        (stored.user_data_128, stored.ledger, stored.code),
        (u128::MAX, u32::MAX, u16::MAX)
    );
    let t = Transfer {
        user_data_128: u128::MAX,
        user_data_64: u64::MAX,
        user_data_32: u32::MAX,
        code: u16::MAX,
        ..transfer(u128::MAX - 1, BANK, SPARE, 1)
    };
    f.check("edge transfer", Batch::CreateTransfers(vec![t]), &[R::Ok]);
    let stored = f.committer.state().lookup_transfer(u128::MAX - 1).unwrap();
    assert_eq!((stored.user_data_128, stored.code), (u128::MAX, u16::MAX));
}

#[test]
fn overflow_near_u128_max_is_refused_and_changes_nothing() {
    let mut f = Fixture::new();
    let (sink, from, to) = (90, 91, 92);
    let plain = |id| account(id, 156, AccountFlags::empty());
    f.ok(Batch::CreateAccounts(vec![
        plain(sink),
        plain(from),
        plain(to),
    ]));
    // FRESH's debits_posted and the sink's credits_posted reach u128::MAX - 1.
    f.check_one(
        "nearly everything",
        transfer(50, FRESH, sink, u128::MAX - 1),
        R::Ok,
    );
    f.check_one(
        "debits_posted overflows",
        transfer(51, FRESH, BANK, 2),
        R::OverflowsDebitsPosted,
    );
    f.check_one(
        "credits_posted overflows",
        transfer(52, BANK, sink, 2),
        R::OverflowsCreditsPosted,
    );
    // A pending transfer must fit the posted balances too: its post would add it there.
    f.check_one(
        "a pending transfer past debits_posted",
        pending(53, FRESH, BANK, 2),
        R::OverflowsDebitsPosted,
    );
    f.check_one(
        "a pending transfer past credits_posted",
        pending(54, BANK, sink, 2),
        R::OverflowsCreditsPosted,
    );
    f.check_one(
        "exactly u128::MAX is fine",
        transfer(55, FRESH, BANK, 1),
        R::Ok,
    );
    f.check_one(
        "reserve nearly everything",
        pending(56, from, to, u128::MAX - 5),
        R::Ok,
    );
    f.check_one(
        "debits_pending overflows",
        pending(57, from, SPARE, 10),
        R::OverflowsDebitsPending,
    );
    f.check_one(
        "credits_pending overflows",
        pending(58, SPARE, to, 10),
        R::OverflowsCreditsPending,
    );
    f.check_one(
        "a post of the whole reservation still fits",
        second_phase(59, TransferFlags::POST_PENDING_TRANSFER, 56),
        R::Ok,
    );
}

#[test]
fn a_now_past_the_latest_time_is_refused_and_an_expiry_past_it_overflows() {
    // Instants are TigerBeetle's u63 nanoseconds: a `now` past NOW_NS_MAX (i64::MAX) is
    // refused, and a pending transfer whose expiry would pass it overflows.
    let mut f = Fixture::new();
    f.now = tally_types::NOW_NS_MAX;
    let refused = f.commit(Batch::CreateTransfers(vec![pending(61, BANK, SPARE, 1)]));
    assert!(
        matches!(refused, Err(SubmitError::TimeOutOfRange { .. })),
        "{refused:?}"
    );
    let with_timeout = |id, timeout| Transfer {
        timeout,
        ..pending(id, BANK, SPARE, 1)
    };
    // Each commit asks for 1,000 ns after the one before: this one for 10 s before the
    // latest instant, so a timeout of 10 s expires exactly at it.
    f.now = tally_types::NOW_NS_MAX - 10 * tally_types::NS_PER_S - 1_000;
    let at_the_latest = with_timeout(60, 10);
    assert_eq!(
        f.codes(Batch::CreateTransfers(vec![at_the_latest])),
        vec![R::Ok]
    );
    let past_it = with_timeout(62, 10);
    assert_eq!(
        f.codes(Batch::CreateTransfers(vec![past_it])),
        vec![R::OverflowsTimeout]
    );
}

#[test]
fn empty_and_maximum_size_batches() {
    let mut f = Fixture::new();
    let before = contents(&f.image());
    assert_eq!(
        f.commit(Batch::CreateTransfers(Vec::new())).unwrap(),
        vec![]
    );
    assert_eq!(f.commit(Batch::CreateAccounts(Vec::new())).unwrap(), vec![]);
    assert_eq!(
        contents(&f.image()),
        before,
        "empty batches changed the state"
    );

    let accounts: Vec<Account> = (0..BATCH_EVENTS_MAX as u128)
        .map(|i| account(1_000 + i, 156, AccountFlags::empty()))
        .collect();
    let codes = f.codes(Batch::CreateAccounts(accounts));
    assert_eq!(codes, vec![R::Ok; BATCH_EVENTS_MAX]);
    let transfers: Vec<Transfer> = (0..BATCH_EVENTS_MAX as u128)
        .map(|i| transfer(100_000 + i, BANK, 1_000 + i, 1))
        .collect();
    let codes = f.codes(Batch::CreateTransfers(transfers));
    assert_eq!(codes, vec![R::Ok; BATCH_EVENTS_MAX]);
    assert!(f.committer.state().check_invariants().is_empty());
}

#[test]
fn a_batch_past_the_limit_is_rejected_whole_by_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    let too_many: Vec<Account> = (0..=BATCH_EVENTS_MAX as u128)
        .map(|i| account(1 + i, 156, AccountFlags::empty()))
        .collect();
    assert_eq!(
        ledger.create_accounts(too_many),
        Err(SubmitError::BatchTooLarge {
            events: BATCH_EVENTS_MAX + 1,
            max: BATCH_EVENTS_MAX
        })
    );
    let with_balance = Account {
        credits_posted: 1,
        ..account(1, 156, AccountFlags::empty())
    };
    assert!(matches!(
        ledger.create_accounts(vec![account(2, 156, AccountFlags::empty()), with_balance]),
        Err(SubmitError::InvalidEvent { index: 1, .. })
    ));
    // A timestamp on an event that is not imported is that event's result, not the
    // batch's refusal.
    let stamped = Transfer {
        timestamp: 5,
        ..transfer(1, 2, 3, 1)
    };
    assert_eq!(
        ledger.create_transfers(vec![stamped]).unwrap()[0].code,
        ResultCode::TimestampMustBeZero
    );
    assert_eq!(
        ledger.submit_at(Batch::CreateTransfers(Vec::new()), Some(7)),
        Err(SubmitError::ManualClockDisabled)
    );
    assert!(
        ledger.lookup_accounts(&[1, 2]).is_empty(),
        "nothing applied"
    );
    ledger.shutdown().unwrap();
}

#[test]
fn duplicate_ids_inside_one_batch() {
    let mut f = Fixture::new();
    f.check(
        "same transfer twice",
        Batch::CreateTransfers(vec![
            transfer(70, BANK, SPARE, 5),
            transfer(70, BANK, SPARE, 5),
        ]),
        &[R::Ok, R::Exists],
    );
    f.check(
        "same id, other amount",
        Batch::CreateTransfers(vec![
            transfer(71, BANK, SPARE, 5),
            transfer(71, BANK, SPARE, 6),
        ]),
        &[R::Ok, R::ExistsWithDifferentAmount],
    );
    f.check(
        "failed then retried in the same batch",
        Batch::CreateTransfers(vec![
            transfer(72, MISSING, SPARE, 5),
            transfer(72, BANK, SPARE, 5),
        ]),
        &[R::DebitAccountNotFound, R::IdAlreadyFailed],
    );
    f.check(
        "same account twice",
        Batch::CreateAccounts(vec![
            account(80, 156, AccountFlags::empty()),
            account(80, 156, AccountFlags::empty()),
        ]),
        &[R::Ok, R::Exists],
    );
    let accounts = f.committer.state().account_count();
    let transfers = f.committer.state().transfer_count();
    assert_eq!((accounts, transfers), (7, 4), "each id applied once");
}

fn chain(len: usize, first_id: u128) -> Vec<Transfer> {
    (0..len)
        .map(|i| Transfer {
            flags: if i + 1 < len {
                TransferFlags::LINKED
            } else {
                TransferFlags::empty()
            },
            ..transfer(first_id + i as u128, BANK, SPARE, 1)
        })
        .collect()
}

#[test]
fn chains_of_maximum_length() {
    let mut f = Fixture::new();
    let max = BATCH_EVENTS_MAX;

    // Open to the end of the batch: nothing applies.
    let mut open = chain(max, 1_000_000);
    open[max - 1].flags = TransferFlags::LINKED;
    let mut expected = vec![R::LinkedEventFailed; max];
    expected[max - 1] = R::LinkedEventChainOpen;
    f.check("open chain", Batch::CreateTransfers(open), &expected);

    // One failure in the middle fails all 8,190.
    let mut broken = chain(max, 2_000_000);
    broken[4_000].debit_account_id = WALLET;
    broken[4_000].amount = 1_000_000;
    let mut expected = vec![R::LinkedEventFailed; max];
    expected[4_000] = R::ExceedsCredits;
    f.check("broken chain", Batch::CreateTransfers(broken), &expected);

    // The whole batch as one chain commits as one.
    f.check(
        "full chain",
        Batch::CreateTransfers(chain(max, 3_000_000)),
        &vec![R::Ok; max],
    );
    let spare = f.committer.state().lookup_account(SPARE).unwrap();
    assert_eq!(spare.credits_posted, max as u128);
}

#[test]
fn amounts_with_too_many_decimals_or_past_u128_are_errors_never_roundings() {
    let cases: &[(&str, u32, Result<u128, ()>)] = &[
        ("12.50", 2, Ok(1_250)),
        ("12.500", 2, Ok(1_250)),
        ("1.005", 2, Err(())),
        ("1.5", 0, Err(())),
        ("0.001", 3, Ok(1)),
        ("-1", 2, Err(())),
        ("1e3", 0, Err(())),
        ("", 0, Err(())),
        (".5", 2, Err(())),
        ("340282366920938463463374607431768211455", 0, Ok(u128::MAX)),
        ("340282366920938463463374607431768211456", 0, Err(())),
        ("3402823669209384634633746074317682114.55", 2, Ok(u128::MAX)),
        ("3402823669209384634633746074317682114.56", 2, Err(())),
        ("3402823669209384634633746074317682115", 2, Err(())),
    ];
    for (text, scale, expected) in cases {
        let parsed = parse_amount(text, *scale);
        assert_eq!(
            parsed.clone().map_err(|_| ()),
            *expected,
            "{text} at scale {scale}"
        );
        if text == &"1.005" {
            assert!(matches!(parsed, Err(AmountError::TooManyDecimals { .. })));
        }
    }
}

#[test]
fn bad_json_rejects_the_whole_line_naming_the_field() {
    let currencies = tally_types::currency::CurrencyTable::default();
    let cases: &[(&str, &str)] = &[
        (
            r#"{"create_transfers": [{"id": "1", "debit_account_id": "2", "credit_account_id": "3", "amount": "1.00", "ledger": 156, "code": 1}, {"id": "2", "amount": "1.005", "ledger": 156}]}"#,
            "create_transfers[1].amount",
        ),
        (
            r#"{"create_transfers": [{"id": "340282366920938463463374607431768211456"}]}"#,
            "create_transfers[0].id",
        ),
        (
            r#"{"create_accounts": [{"id": "1", "ledger": 4294967296, "code": 1}]}"#,
            "create_accounts[0].ledger",
        ),
        (
            r#"{"create_accounts": [{"id": "1", "ledger": 156, "code": 65536}]}"#,
            "create_accounts[0].code",
        ),
        (
            r#"{"create_transfers": [{"id": "1", "timeout": -1}]}"#,
            "create_transfers[0].timeout",
        ),
        (
            r#"{"create_accounts": [{"id": "1", "credits_posted": "5"}]}"#,
            "credits_posted",
        ),
        (
            r#"{"create_transfers": [{"id": "1", "flags": ["pending", "bogus"]}]}"#,
            "bogus",
        ),
        (
            r#"{"create_transfers": [{"id": "1", "amount": "-5"}]}"#,
            "create_transfers[0].amount",
        ),
        (
            r#"{"lookup_accounts": ["1"], "now": "18446744073709551616"}"#,
            "now",
        ),
    ];
    for (line, names) in cases {
        let error = parse_line(line, &NoLedgers, &currencies).unwrap_err();
        assert!(
            error.0.contains(names),
            "{line}: error {:?} does not name {names}",
            error.0
        );
    }
    let line = format!(
        r#"{{"create_accounts": [{}]}}"#,
        vec![r#"{"id": "1", "ledger": 156, "code": 1}"#; BATCH_EVENTS_MAX + 1].join(",")
    );
    assert!(parse_line(&line, &NoLedgers, &currencies).is_err());
    let line = format!(
        r#"{{"create_accounts": [{}]}}"#,
        vec![r#"{"id": "1", "ledger": 156, "code": 1}"#; BATCH_EVENTS_MAX].join(",")
    );
    let parsed = parse_line(&line, &NoLedgers, &currencies).unwrap();
    assert!(matches!(parsed.request, Request::CreateAccounts(a) if a.len() == BATCH_EVENTS_MAX));
}
