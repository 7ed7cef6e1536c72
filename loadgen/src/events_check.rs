//! The run checks its own change-event stream (docs/spec.md §2, "Change events"): after
//! the run, every event in the ledger's event journal is read back from disk, as a
//! consumer would, and checked: timestamps strictly increase; there is one
//! `account_created` per account and one transfer event per stored transfer; and the
//! balances each account last had in the stream are the ones the ledger holds.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;
use tally_engine::{Account, ChangeEvent, ChangeKind};
use tally_log::events::EventReader;

/// Events read from disk per step.
const READ_EVENTS: usize = 8_190;
/// Accounts looked up per call.
const LOOKUP_IDS: usize = 8_190;

/// What the stream check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventsCheck {
    /// Events read.
    pub events: u64,
    /// Events per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Seconds the read and the checks took.
    pub seconds: f64,
    /// Every timestamp above the one before.
    pub order_ok: bool,
    /// `account_created` events equal the ledger's accounts, transfer events (other
    /// than expiries) its stored transfers.
    pub counts_ok: bool,
    /// Accounts whose balances were compared with the stream's last for them.
    pub accounts_checked: u64,
    /// Accounts whose balances in the ledger differ from the stream's last.
    pub accounts_mismatched: u64,
    /// Everything above holds.
    pub ok: bool,
    /// What went wrong first, if anything.
    pub problem: Option<String>,
}

type Balances = [u128; 4];

fn balances(account: &Account) -> Balances {
    [
        account.debits_pending,
        account.debits_posted,
        account.credits_pending,
        account.credits_posted,
    ]
}

/// Reads the journal in `events_dir` and checks it against the ledger: `counts` are its
/// (accounts, transfers), `lookup` its accounts by id.
pub fn check(
    events_dir: &Path,
    counts: (u64, u64),
    lookup: impl Fn(&[u128]) -> Vec<Account>,
) -> EventsCheck {
    let started = Instant::now();
    let mut check = EventsCheck {
        order_ok: true,
        ..EventsCheck::default()
    };
    let mut last_balances: HashMap<u128, Balances> = HashMap::new();
    if let Err(problem) = read_all(events_dir, &mut check, &mut last_balances) {
        check.problem = Some(problem);
    }
    let accounts = check.by_kind.get("account_created").copied().unwrap_or(0);
    let expired = check.by_kind.get("two_phase_expired").copied().unwrap_or(0);
    let transfers = check.events - accounts - expired;
    check.counts_ok = (accounts, transfers) == counts;
    if !check.counts_ok && check.problem.is_none() {
        check.problem = Some(format!(
            "the stream has {accounts} accounts and {transfers} transfers, the ledger {} and {}",
            counts.0, counts.1
        ));
    }
    let ids: Vec<u128> = last_balances.keys().copied().collect();
    for chunk in ids.chunks(LOOKUP_IDS) {
        let found = lookup(chunk);
        check.accounts_checked += chunk.len() as u64;
        let matching = found
            .iter()
            .filter(|account| last_balances.get(&account.id) == Some(&balances(account)))
            .count();
        check.accounts_mismatched += (chunk.len() - matching) as u64;
    }
    if check.accounts_mismatched > 0 && check.problem.is_none() {
        check.problem = Some(format!(
            "{} accounts hold other balances than the stream's last",
            check.accounts_mismatched
        ));
    }
    check.ok = check.order_ok && check.counts_ok && check.accounts_mismatched == 0;
    check.ok &= check.problem.is_none();
    check.seconds = started.elapsed().as_secs_f64();
    check
}

fn read_all(
    events_dir: &Path,
    check: &mut EventsCheck,
    last_balances: &mut HashMap<u128, Balances>,
) -> Result<(), String> {
    let mut reader = EventReader::open(events_dir).map_err(|e| e.to_string())?;
    let mut next_min = 0;
    let mut last_timestamp = None;
    loop {
        let events = reader
            .read(next_min, READ_EVENTS)
            .map_err(|e| e.to_string())?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        next_min = last.timestamp + 1;
        for event in &events {
            if last_timestamp.is_some_and(|before| event.timestamp <= before) {
                check.order_ok = false;
                return Err(format!(
                    "timestamp {} does not move forward",
                    event.timestamp
                ));
            }
            last_timestamp = Some(event.timestamp);
            note(event, check, last_balances);
        }
    }
}

fn note(event: &ChangeEvent, check: &mut EventsCheck, last_balances: &mut HashMap<u128, Balances>) {
    check.events += 1;
    *check
        .by_kind
        .entry(event.kind.name().to_string())
        .or_default() += 1;
    last_balances.insert(event.debit_account.id, balances(&event.debit_account));
    if event.kind != ChangeKind::AccountCreated {
        last_balances.insert(event.credit_account.id, balances(&event.credit_account));
    }
}
