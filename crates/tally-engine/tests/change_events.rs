//! Change events (docs/spec.md §2): for random traffic on 1 to 4 shards, the events the
//! ledger reports equal what a model derives from the submitted events and their
//! results (count, order, kinds, timestamps, balances after each); expiries appear at
//! their exact instant; a journal that lost its tail is re-derived from the log.
#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use std::collections::HashMap;
use tally_engine::{
    Account, Batch, ChangeEvent, ChangeKind, Config, EventResult, Ledger, ResultCode,
    ShardExecution, Transfer,
};
use tally_testkit::SeededRng;
use tally_testkit::workload::{Accounts, Workload};
use tally_types::{NS_PER_S, TransferFlags, TransferKind};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Balances {
    debits_pending: u128,
    debits_posted: u128,
    credits_pending: u128,
    credits_posted: u128,
}

/// A post's or void's user data: as given, or the pending transfer's where given 0.
fn or_pending<T: Default + PartialEq>(given: T, pending: T) -> T {
    if given == T::default() {
        pending
    } else {
        given
    }
}

impl Balances {
    fn of(account: &Account) -> Balances {
        Balances {
            debits_pending: account.debits_pending,
            debits_posted: account.debits_posted,
            credits_pending: account.credits_pending,
            credits_posted: account.credits_posted,
        }
    }
}

/// A pending transfer the model knows of, and whether it still waits.
#[derive(Debug, Clone, Copy)]
struct Pending {
    transfer: Transfer,
    expires_at: Option<u64>,
    waiting: bool,
}

/// What the model expects, built from the inputs and their results alone.
#[derive(Debug, Default)]
struct Model {
    balances: HashMap<u128, Balances>,
    pending: HashMap<u128, Pending>,
    transfers: HashMap<u128, Transfer>,
}

impl Model {
    fn release(&mut self, p: &Transfer, posted: u128) {
        let dr = self.balances.get_mut(&p.debit_account_id).unwrap();
        dr.debits_pending -= p.amount;
        dr.debits_posted += posted;
        let cr = self.balances.get_mut(&p.credit_account_id).unwrap();
        cr.credits_pending -= p.amount;
        cr.credits_posted += posted;
    }

    fn movement(&mut self, debit: u128, credit: u128, amount: u128, pending: bool) {
        let dr = self.balances.get_mut(&debit).unwrap();
        if pending {
            dr.debits_pending += amount;
        } else {
            dr.debits_posted += amount;
        }
        let cr = self.balances.get_mut(&credit).unwrap();
        if pending {
            cr.credits_pending += amount;
        } else {
            cr.credits_posted += amount;
        }
    }

    /// The amount a single-phase or pending transfer moves: a balancing one at most
    /// what keeps its debit account's debits within its posted credits, and its credit
    /// account's credits within its posted debits (docs/spec.md §2).
    fn moved(&self, t: &Transfer) -> u128 {
        let mut amount = t.amount;
        if t.flags.contains(TransferFlags::BALANCING_DEBIT) {
            let dr = &self.balances[&t.debit_account_id];
            let debits = dr.debits_pending + dr.debits_posted;
            amount = amount.min(dr.credits_posted.saturating_sub(debits));
        }
        if t.flags.contains(TransferFlags::BALANCING_CREDIT) {
            let cr = &self.balances[&t.credit_account_id];
            let credits = cr.credits_pending + cr.credits_posted;
            amount = amount.min(cr.debits_posted.saturating_sub(credits));
        }
        amount
    }

    /// The event an `ok` transfer must produce: its kind, with the model moved on.
    fn transfer_ok(&mut self, t: &Transfer, timestamp: u64) -> (ChangeKind, u128, u128) {
        let kind = t.kind().unwrap();
        let stored = Transfer {
            amount: match kind {
                TransferKind::SinglePhase | TransferKind::Pending => self.moved(t),
                _ => t.amount,
            },
            timestamp,
            ..*t
        };
        match kind {
            TransferKind::SinglePhase => {
                self.movement(
                    t.debit_account_id,
                    t.credit_account_id,
                    stored.amount,
                    false,
                );
                self.transfers.insert(t.id, stored);
                (
                    ChangeKind::SinglePhase,
                    t.debit_account_id,
                    t.credit_account_id,
                )
            }
            TransferKind::Pending => {
                self.movement(t.debit_account_id, t.credit_account_id, stored.amount, true);
                let expires_at =
                    (t.timeout != 0).then(|| timestamp + u64::from(t.timeout) * NS_PER_S);
                let pending = Pending {
                    transfer: stored,
                    expires_at,
                    waiting: true,
                };
                self.pending.insert(t.id, pending);
                self.transfers.insert(t.id, stored);
                (
                    ChangeKind::TwoPhasePending,
                    t.debit_account_id,
                    t.credit_account_id,
                )
            }
            TransferKind::PostPending | TransferKind::VoidPending => {
                let p = self.pending.get_mut(&t.pending_id).unwrap();
                assert!(p.waiting, "an ok post or void settles a waiting transfer");
                p.waiting = false;
                let p = p.transfer;
                let post = kind == TransferKind::PostPending;
                let posted = match (post, t.amount) {
                    (false, _) => 0,
                    (true, 0) => p.amount,
                    (true, amount) => amount,
                };
                self.release(&p, posted);
                let stored = Transfer {
                    debit_account_id: p.debit_account_id,
                    credit_account_id: p.credit_account_id,
                    amount: posted,
                    user_data_128: or_pending(t.user_data_128, p.user_data_128),
                    user_data_64: or_pending(t.user_data_64, p.user_data_64),
                    user_data_32: or_pending(t.user_data_32, p.user_data_32),
                    ..stored
                };
                self.transfers.insert(t.id, stored);
                let kind = if post {
                    ChangeKind::TwoPhasePosted
                } else {
                    ChangeKind::TwoPhaseVoided
                };
                (kind, p.debit_account_id, p.credit_account_id)
            }
            TransferKind::Refund => {
                let o = self.transfers[&t.refund_of()];
                self.movement(o.credit_account_id, o.debit_account_id, t.amount, false);
                (ChangeKind::Refund, o.credit_account_id, o.debit_account_id)
            }
        }
    }

    /// Checks one reported event's accounts against the model's balances.
    fn check_accounts(&self, event: &ChangeEvent, debit: u128, credit: u128, at: usize) {
        assert_eq!(event.debit_account.id, debit, "event {at}: debit account");
        assert_eq!(
            event.credit_account.id, credit,
            "event {at}: credit account"
        );
        assert_eq!(
            Balances::of(&event.debit_account),
            self.balances[&debit],
            "event {at}: debit balances"
        );
        assert_eq!(
            Balances::of(&event.credit_account),
            self.balances[&credit],
            "event {at}: credit balances"
        );
    }
}

/// Walks the reported events against the submitted batches and their results, in
/// order: every `ok` event must come out once, in order, with the model's balances;
/// in between, only expiries of waiting pending transfers, at their exact instants.
fn check(answered: &[(Batch, Vec<EventResult>)], events: &[ChangeEvent]) -> Model {
    let mut model = Model::default();
    let oks: Vec<(Batch, usize, u64)> = answered
        .iter()
        .flat_map(|(batch, results)| {
            results
                .iter()
                .enumerate()
                .filter(|(_, r)| r.code == ResultCode::Ok)
                .map(|(i, r)| (batch.clone(), i, r.timestamp))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut next_ok = 0;
    for (at, event) in events.iter().enumerate() {
        if at > 0 {
            assert!(
                event.timestamp > events[at - 1].timestamp,
                "event {at}: timestamps increase"
            );
        }
        if event.kind == ChangeKind::TwoPhaseExpired {
            let p = model
                .pending
                .get_mut(&event.transfer.id)
                .expect("an expired transfer was pending");
            assert!(p.waiting, "event {at}: expires once, while waiting");
            assert_eq!(
                p.expires_at,
                Some(event.timestamp),
                "event {at}: stamped at its instant"
            );
            p.waiting = false;
            let p = p.transfer;
            assert_eq!(event.transfer, p);
            model.release(&p, 0);
            model.check_accounts(event, p.debit_account_id, p.credit_account_id, at);
            continue;
        }
        let (batch, index, timestamp) = oks
            .get(next_ok)
            .unwrap_or_else(|| panic!("event {at}: more events than ok results"));
        next_ok += 1;
        assert_eq!(
            event.timestamp, *timestamp,
            "event {at}: the result's timestamp"
        );
        match batch {
            Batch::CreateAccounts(accounts) => {
                let a = accounts[*index];
                assert_eq!(event.kind, ChangeKind::AccountCreated, "event {at}");
                assert_eq!(event.debit_account.id, a.id);
                assert_eq!(event.debit_account.timestamp, *timestamp);
                model.balances.insert(a.id, Balances::default());
            }
            Batch::CreateTransfers(transfers) => {
                let t = transfers[*index];
                assert_eq!(event.transfer.id, t.id, "event {at}: transfer id");
                let (kind, debit, credit) = model.transfer_ok(&t, *timestamp);
                assert_eq!(event.kind, kind, "event {at}: kind");
                model.check_accounts(event, debit, credit, at);
            }
        }
    }
    assert_eq!(next_ok, oks.len(), "every ok result has its event");
    let last = events.last().map_or(0, |e| e.timestamp);
    for p in model.pending.values().filter(|p| p.waiting) {
        assert!(
            p.expires_at.is_none_or(|at| at > last),
            "an expiry due before the last event was missed"
        );
    }
    model
}

fn read_all(ledger: &Ledger) -> Vec<ChangeEvent> {
    read_all_in_pages(ledger, 100)
}

fn read_all_in_pages(ledger: &Ledger, limit: usize) -> Vec<ChangeEvent> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = ledger.get_change_events(from, limit).unwrap();
        let Some(last) = page.last() else { break };
        from = last.timestamp + 1;
        all.extend(page);
    }
    all
}

fn run(seed: u64, shards: usize, execution: ShardExecution) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.manual_clock = true;
    config.shards = shards;
    config.shard_execution = execution;
    config.snapshot_events_interval = 500;
    let mut workload = Workload::new(seed, Accounts::Hot);
    let mut rng = SeededRng::new(seed ^ 0xe7e7);
    let mut now = 1_000 * NS_PER_S;
    let mut answered = Vec::new();
    let mut ledger = Ledger::open(config.clone()).unwrap();
    for round in 0..300 {
        let batch = workload.batch();
        let results = ledger.submit_at(batch.clone(), Some(now)).unwrap();
        answered.push((batch, results));
        now += if rng.chance(8) {
            NS_PER_S * rng.below(4)
        } else {
            1_000
        };
        if round % 100 == 99 {
            // Reopen: events are derived again from the log where the journal stops.
            ledger.shutdown().unwrap();
            ledger = Ledger::open(config.clone()).unwrap();
        }
    }
    let events = read_all(&ledger);
    let model = check(&answered, &events);
    for (id, balances) in &model.balances {
        let account = ledger.lookup_accounts(&[*id])[0];
        assert_eq!(Balances::of(&account), *balances, "account {id} at the end");
    }
    assert!(
        events.iter().any(|e| e.kind == ChangeKind::TwoPhaseExpired),
        "seed {seed}: expiries happen"
    );
    ledger.shutdown().unwrap();
}

#[test]
fn events_equal_the_model_of_results_on_any_shard_count() {
    for (seed, shards) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 1)] {
        run(seed, shards, ShardExecution::Always);
    }
    // The default: groups run serially on several parts where their plans would lose.
    run(6, 2, ShardExecution::WhenFaster);
}

/// The event journal's files in the ledger at `data_dir`, oldest first.
fn journal_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(tally_engine::events_dir(data_dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_lost_journal_tail_is_derived_again_identically() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.manual_clock = true;
    let mut workload = Workload::new(9, Accounts::Uniform);
    let ledger = Ledger::open(config.clone()).unwrap();
    let mut now = 1_000 * NS_PER_S;
    for _ in 0..200 {
        ledger.submit_at(workload.batch(), Some(now)).unwrap();
        now += NS_PER_S / 3;
    }
    let before = read_all(&ledger);
    ledger.shutdown().unwrap();
    // Cut the newest journal file, as a crash of the machine would its unsynced tail.
    let files = journal_files(dir.path());
    let newest = files.last().unwrap();
    let length = std::fs::metadata(newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap()
        .set_len(length / 3)
        .unwrap();
    config.shards = 2;
    config.shard_execution = ShardExecution::Always;
    let ledger = Ledger::open(config).unwrap();
    assert_eq!(read_all(&ledger), before);
    ledger.shutdown().unwrap();
}

/// Recovery replays the log in groups of about 65,536 events and captures changes only
/// for a group that ends past the journal's last event: with the journal cut back into
/// a late group, the groups before are replayed without capture and the lost events
/// (transfers and the expiries of earlier pending transfers) come back identically.
#[test]
fn a_journal_cut_back_several_replay_groups_in_is_derived_again_identically() {
    const BATCHES: u128 = 17;
    const EVENTS: u128 = tally_types::BATCH_EVENTS_MAX as u128;
    let read_all = |ledger: &Ledger| read_all_in_pages(ledger, EVENTS as usize);
    for shards in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.manual_clock = true;
        config.shards = shards;
        config.shard_execution = ShardExecution::Always;
        let ledger = Ledger::open(config.clone()).unwrap();
        let mut now = 1_000 * NS_PER_S;
        let accounts = (1..=64)
            .map(|id| {
                let flags = tally_types::AccountFlags::empty();
                tally_testkit::account(id, tally_testkit::TEST_LEDGER, flags)
            })
            .collect();
        ledger
            .submit_at(Batch::CreateAccounts(accounts), Some(now))
            .unwrap();
        for round in 0..BATCHES {
            now += 2 * NS_PER_S;
            let transfers = (0..EVENTS)
                .map(|i| {
                    let id = 1_000_000 + round * EVENTS + i;
                    let mut transfer = tally_testkit::transfer(id, i % 64 + 1, (i + 1) % 64 + 1, 1);
                    if i % 10 == 0 {
                        transfer.flags = TransferFlags::PENDING;
                        transfer.timeout = 1;
                    }
                    transfer
                })
                .collect();
            let results = ledger
                .submit_at(Batch::CreateTransfers(transfers), Some(now))
                .unwrap();
            assert!(results.iter().all(|result| result.code == ResultCode::Ok));
        }
        let before = read_all(&ledger);
        assert!(
            before
                .iter()
                .any(|event| event.kind == ChangeKind::TwoPhaseExpired)
        );
        ledger.shutdown().unwrap();
        // Cut the journal back to two fifths: the newest files go, the one at the cut
        // loses its tail.
        let files = journal_files(dir.path());
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .collect();
        let mut keep = sizes.iter().sum::<u64>() * 2 / 5;
        for (file, size) in files.iter().zip(sizes) {
            let cut = size.min(keep);
            keep -= cut;
            if cut == 0 && file != &files[0] {
                std::fs::remove_file(file).unwrap();
            } else {
                let handle = std::fs::OpenOptions::new().write(true).open(file).unwrap();
                handle.set_len(cut.max(1)).unwrap();
            }
        }
        let ledger = Ledger::open(config).unwrap();
        assert!(
            ledger.recovery().events > 2 * 65_536,
            "several replay groups"
        );
        assert_eq!(read_all(&ledger), before, "{shards} shards");
        ledger.shutdown().unwrap();
    }
}

/// Accounts 1 and 2, on the test ledger.
fn two_accounts() -> Batch {
    let account = |id| tally_testkit::account(id, tally_testkit::TEST_LEDGER, Default::default());
    Batch::CreateAccounts(vec![account(1), account(2)])
}

/// A log whose tail is gone (here torn after a crash, as a test or a failing disk
/// may leave it) while the journal already held that tail's events: the open cuts them
/// from the journal, keeps their bytes, and stamps new events after them, so the
/// journal matches the log again and no timestamp a reader saw is reused.
#[test]
fn journal_events_past_a_cut_log_are_cut_and_never_stamped_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.manual_clock = true;
    let ledger = Ledger::open(config.clone()).unwrap();
    let now = 1_000 * NS_PER_S;
    ledger.submit_at(two_accounts(), Some(now)).unwrap();
    for id in 10..15 {
        let transfer = tally_testkit::transfer(id, 1, 2, 1);
        let results = ledger
            .submit_at(Batch::CreateTransfers(vec![transfer]), Some(now))
            .unwrap();
        assert_eq!(results[0].code, ResultCode::Ok);
    }
    let before = read_all(&ledger);
    ledger.shutdown().unwrap();
    // A crash (no close marker), and the last frame torn.
    std::fs::remove_file(dir.path().join("wal-closed")).unwrap();
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let length = std::fs::metadata(&log).unwrap().len();
    let handle = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    handle.set_len(length - 5).unwrap();
    drop(handle);

    let ledger = Ledger::open(config.clone()).unwrap();
    let recovery = ledger.recovery();
    assert!(recovery.torn_tail_bytes_cut > 0, "{recovery:?}");
    let cut = recovery.change_events_cut.clone().expect("events cut");
    let lost = before.last().unwrap();
    assert_eq!((cut.events, cut.last_before), (1, lost.timestamp));
    assert!(std::fs::metadata(&cut.kept).unwrap().len() > 0);
    assert_eq!(read_all(&ledger), before[..before.len() - 1]);
    assert!(ledger.lookup_transfers(&[14]).is_empty());
    // Closed and opened again before any new batch: the journal no longer runs ahead,
    // and the file that keeps the cut frames still holds new stamps back.
    ledger.shutdown().unwrap();
    let ledger = Ledger::open(config).unwrap();
    assert_eq!(ledger.recovery().change_events_cut, None);
    // Asked for the same instant as the lost transfer, a new one comes after it.
    let transfer = tally_testkit::transfer(20, 1, 2, 1);
    let results = ledger
        .submit_at(Batch::CreateTransfers(vec![transfer]), Some(now))
        .unwrap();
    assert_eq!(results[0].code, ResultCode::Ok);
    assert!(results[0].timestamp > lost.timestamp);
    let after = read_all(&ledger);
    assert_eq!(after.len(), before.len());
    assert_eq!(after.last().unwrap().transfer.id, 20);
    ledger.shutdown().unwrap();

    let _lock = tally_log::DirLock::acquire(dir.path()).unwrap();
    let (_, _, compared) = tally_engine::inspect::read_only_comparing_events(dir.path()).unwrap();
    assert_eq!(
        (compared.differing, compared.past_log_end),
        (0, 0),
        "{compared:?}"
    );
    assert_eq!(compared.equal, after.len() as u64);
}

/// A journal ahead of a log that shows no torn tail: synced log frames went missing
/// without a trace (here the whole log). The journal still follows the log: its events
/// are cut and kept aside, and new events come after them.
#[test]
fn a_journal_ahead_of_a_log_without_a_torn_tail_is_cut_back_too() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    ledger.submit(two_accounts()).unwrap();
    let before = read_all(&ledger);
    ledger.shutdown().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("wal-") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    let cut = ledger
        .recovery()
        .change_events_cut
        .clone()
        .expect("events cut");
    assert_eq!(cut.events, 2);
    assert_eq!(cut.last_before, before.last().unwrap().timestamp);
    assert!(read_all(&ledger).is_empty());
    assert!(ledger.lookup_accounts(&[1, 2]).is_empty());
    ledger.shutdown().unwrap();
}

/// `verify`'s comparison: a journal event after the log's last event but not after
/// its last stamp (here an empty batch's) is one the log does not make; only one past
/// the last stamp is past the log's end.
#[test]
fn journal_events_up_to_the_logs_last_stamp_differ_and_past_it_are_past_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.manual_clock = true;
    let ledger = Ledger::open(config).unwrap();
    ledger.submit_at(two_accounts(), Some(1_000)).unwrap();
    ledger
        .submit_at(Batch::CreateTransfers(Vec::new()), Some(5_000))
        .unwrap();
    let made = read_all(&ledger);
    ledger.shutdown().unwrap();
    let mut journal = tally_log::events::EventJournal::open(
        &tally_engine::events_dir(dir.path()),
        tally_log::events::JournalOptions::default(),
    )
    .unwrap();
    let at = |timestamp| {
        let mut event = made[0];
        event.timestamp = timestamp;
        event.debit_account.timestamp = timestamp;
        event
    };
    journal.append(&[at(3_000), at(6_000)]).unwrap();
    journal.sync().unwrap();
    drop(journal);
    let _lock = tally_log::DirLock::acquire(dir.path()).unwrap();
    let (_, _, compared) = tally_engine::inspect::read_only_comparing_events(dir.path()).unwrap();
    assert_eq!(
        (compared.equal, compared.differing, compared.past_log_end),
        (2, 1, 1),
        "{compared:?}"
    );
}

#[test]
fn an_idle_ledger_expires_a_pending_transfer_at_its_instant() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    let account = |id| Account {
        id,
        ledger: 1,
        code: 1,
        ..Account::default()
    };
    ledger
        .create_accounts(vec![account(1), account(2)])
        .unwrap();
    let hold = Transfer {
        id: 10,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 50,
        ledger: 1,
        code: 1,
        timeout: 1,
        flags: TransferFlags::PENDING,
        ..Transfer::default()
    };
    let created = ledger.create_transfers(vec![hold]).unwrap()[0];
    assert_eq!(created.code, ResultCode::Ok);
    let instant = created.timestamp + NS_PER_S;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let expired = runtime.block_on(async {
        let stream = ledger.subscribe(created.timestamp).unwrap();
        let mut stream = std::pin::pin!(stream);
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await
    });
    let expired = expired
        .expect("the expiry came without any other traffic")
        .unwrap()
        .unwrap();
    assert_eq!(expired.kind, ChangeKind::TwoPhaseExpired);
    assert_eq!(expired.timestamp, instant);
    assert_eq!(expired.transfer.id, 10);
    assert_eq!(expired.debit_account.debits_pending, 0);
    assert_eq!(ledger.lookup_accounts(&[1])[0].debits_pending, 0);
    ledger.shutdown().unwrap();
}

#[test]
fn change_events_can_be_turned_off_and_limits_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.change_events = false;
    let ledger = Ledger::open(config).unwrap();
    assert!(ledger.get_change_events(0, 10).is_err());
    assert!(ledger.events_dir().is_none());
    ledger.shutdown().unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    assert!(ledger.get_change_events(0, 8_191).is_err());
    assert_eq!(ledger.get_change_events(0, 8_190).unwrap(), vec![]);
    let accounts: Vec<Account> = (1..=8_191)
        .map(|id| tally_testkit::account(id, 1, tally_types::AccountFlags::empty()))
        .collect();
    ledger.create_accounts(accounts[..8_190].to_vec()).unwrap();
    ledger.create_accounts(accounts[8_190..].to_vec()).unwrap();
    // A limit of 0 asks for the most, as a filter's does.
    let most = ledger.get_change_events(0, 8_190).unwrap();
    assert_eq!(most.len(), 8_190);
    assert_eq!(ledger.get_change_events(0, 0).unwrap(), most);
    ledger.shutdown().unwrap();
}

#[test]
fn events_outlive_the_log_that_snapshots_retire() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.manual_clock = true;
    config.segment_bytes_max = 64 * 1024;
    config.snapshot_events_interval = 200;
    config.preallocate_segments = false;
    let mut workload = Workload::new(11, Accounts::Uniform);
    let mut answered = Vec::new();
    let mut now = 1_000 * NS_PER_S;
    for reopen in 0..3 {
        let ledger = Ledger::open(config.clone()).unwrap();
        for _ in 0..150 {
            let batch = workload.batch();
            answered.push((batch.clone(), ledger.submit_at(batch, Some(now)).unwrap()));
            now += NS_PER_S / 4;
        }
        ledger.shutdown().unwrap();
        let first_segment = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
            .filter(|name| name.starts_with("wal-"))
            .min()
            .unwrap();
        assert!(
            reopen == 0 || !first_segment.ends_with("0001.log"),
            "{first_segment}"
        );
    }
    // The log's first segments are gone; every event since the first is still there.
    let ledger = Ledger::open(config).unwrap();
    let events = read_all(&ledger);
    check(&answered, &events);
    ledger.shutdown().unwrap();
}

/// A ledger in `dir` that snapshots every 10 events, with accounts 1 and 2, and its
/// config to reopen it.
fn snapshotting_ledger_with_two_accounts(dir: &std::path::Path) -> (Config, Ledger) {
    let mut config = Config::new(dir);
    config.snapshot_events_interval = 10;
    let ledger = Ledger::open(config.clone()).unwrap();
    let accounts = (1..=2)
        .map(|id| {
            let flags = tally_types::AccountFlags::empty();
            tally_testkit::account(id, tally_testkit::TEST_LEDGER, flags)
        })
        .collect();
    ledger.create_accounts(accounts).unwrap();
    (config, ledger)
}

/// A snapshot taken after batches that changed nothing (every event refused) is ahead
/// of the journal's last event: the ledger reopens all the same, and nothing is lost.
#[test]
fn a_snapshot_after_refused_batches_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (config, ledger) = snapshotting_ledger_with_two_accounts(dir.path());
    // Twenty refused events: two snapshots' worth, no change event.
    for id in 0..20u128 {
        let refused = tally_testkit::transfer(100 + id, 1, 1, 5);
        assert!(
            !ledger.create_transfers(vec![refused]).unwrap()[0]
                .code
                .is_ok()
        );
    }
    // After shutdown, which waits for the snapshot in flight: read before, a snapshot
    // still being written would not be counted yet.
    ledger.shutdown().unwrap();
    let metrics = ledger.metrics();
    assert!(metrics.snapshots_written > 0, "{metrics:?}");
    let ledger = Ledger::open(config).unwrap();
    assert_eq!(read_all(&ledger).len(), 2);
    ledger.shutdown().unwrap();
}

/// A journal cut back behind the snapshot's records (damage on disk) is refused at
/// open: the events it lost can no longer be derived from the retired log.
#[test]
fn a_journal_behind_the_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, ledger) = snapshotting_ledger_with_two_accounts(dir.path());
    for id in 0..40u128 {
        let paid = tally_testkit::transfer(100 + id, 1, 2, 5);
        assert!(ledger.create_transfers(vec![paid]).unwrap()[0].code.is_ok());
    }
    ledger.shutdown().unwrap();
    let events_dir = tally_engine::events_dir(dir.path());
    let mut segments: Vec<_> = std::fs::read_dir(&events_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    segments.sort();
    // The journal keeps its first frame alone (the two accounts' events), behind any
    // snapshot: the first is taken ten events in, however late its thread ran.
    assert_eq!(segments.len(), 1, "{segments:?}");
    let bytes = std::fs::read(&segments[0]).unwrap();
    let frames: Vec<usize> = (0..bytes.len() - 3)
        .filter(|&at| &bytes[at..at + 4] == b"TEVF")
        .collect();
    assert!(frames.len() > 2, "{} frames", frames.len());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[0])
        .unwrap();
    file.set_len(frames[1] as u64).unwrap();
    drop(file);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().any(|entry| entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("snapshot-")),
        "a snapshot was taken"
    );
    let error = Ledger::open(config).expect_err("a journal behind its snapshot");
    assert!(
        error.to_string().contains("events between are lost"),
        "{error}"
    );
}

#[test]
fn a_subscription_in_batches_gets_what_one_event_at_a_time_gets_then_follows_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    // Nothing may commit between the last submit and the final read: no idle expiries.
    config.expire_when_idle = false;
    let ledger = Ledger::open(config).unwrap();
    let workload = std::sync::Mutex::new(Workload::new(29, Accounts::Uniform));
    let submit_some = || {
        for _ in 0..400 {
            let batch = workload.lock().unwrap().batch();
            ledger.submit(batch).unwrap();
        }
    };
    submit_some();
    let first = read_all(&ledger).len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut batched = Box::pin(ledger.subscribe_batches(0).unwrap());
    let mut single = Box::pin(ledger.subscribe(0).unwrap());
    let mut batches: Vec<Vec<ChangeEvent>> = Vec::new();
    let mut singles = Vec::new();
    let wait = std::time::Duration::from_secs(10);
    let mut take = |through: usize| {
        runtime.block_on(async {
            while batches.iter().map(Vec::len).sum::<usize>() < through {
                let batch = tokio::time::timeout(wait, batched.next()).await;
                batches.push(batch.unwrap().unwrap().unwrap());
            }
            while singles.len() < through {
                let event = tokio::time::timeout(wait, single.next()).await;
                singles.push(event.unwrap().unwrap().unwrap());
            }
        })
    };
    take(first);
    // Then what is committed while both streams wait at the journal's end.
    let second = std::thread::scope(|scope| {
        let submitter = scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            submit_some();
            read_all(&ledger).len()
        });
        take(first + 1);
        submitter.join().unwrap()
    });
    take(second);
    let all = read_all(&ledger);
    assert!(all.len() > 2 * tally_engine::SUBSCRIPTION_BATCH_EVENTS_MAX);
    let most = tally_engine::SUBSCRIPTION_BATCH_EVENTS_MAX;
    assert!(
        batches.iter().all(|b| (1..=most).contains(&b.len())),
        "every batch holds 1 to the most events"
    );
    assert_eq!(batches.concat(), all, "every event once, in order");
    assert_eq!(singles, all);
    ledger.shutdown().unwrap();
}
