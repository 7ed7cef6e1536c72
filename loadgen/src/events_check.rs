//! The run checks its own change-event stream (docs/spec.md §2, "Change events"). One
//! follower consumes the stream live during the run, as a payment service's consumer
//! would: it checks the order, fingerprints each event and measures its lag (from the
//! event's commit timestamp to its arrival). After the run the whole journal is read
//! from disk and checked: timestamps strictly increase; there is one `account_created`
//! per account and one transfer event per stored transfer; the balances each account
//! last had in the stream are the ones the ledger holds; and over the timestamps the
//! follower covered, the journal holds exactly the events it received.

use crate::stats::wall_ns;
use futures_util::{Stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tally_engine::{Account, ChangeEvent, ChangeKind};
use tally_log::events::EventReader;

/// Events read from disk per step.
const READ_EVENTS: usize = 8_190;
/// Accounts looked up per call.
const LOOKUP_IDS: usize = 8_190;
/// How long the follower waits for an event before it looks whether it should stop.
const FOLLOW_POLL: Duration = Duration::from_millis(20);
/// The largest lag the histogram holds (µs): an hour.
const LAG_US_MAX: u64 = 3_600_000_000;

/// What the stream check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventsCheck {
    /// Events read.
    pub events: u64,
    /// Events the live follower received during the run (it starts after the setup).
    pub followed_live: u64,
    /// The live follower's lag, from an event's commit timestamp to its arrival:
    /// p50, p99 and max in milliseconds (`None` when nothing was followed live).
    pub lag_ms: Option<[f64; 3]>,
    /// Events per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Seconds the final read and the checks took.
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

impl EventsCheck {
    /// A check that could not run.
    pub fn failed(problem: String) -> EventsCheck {
        EventsCheck {
            problem: Some(problem),
            ..EventsCheck::default()
        }
    }
}

/// An account's four balances folded into 64 bits: the follower keeps only this much
/// per account, so its map stays small enough to keep up (other balances escape the
/// comparison with odds of 2^-64).
type Balances = u64;

/// Each account's last balances in the stream. Its ids come from the ledger, not from
/// an adversary: foldhash (fast, seeded per map) instead of SipHash.
type LastBalances = HashMap<u128, Balances, foldhash::fast::RandomState>;

fn balances(account: &Account) -> Balances {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x7a11_ba1a).hash_one([
        account.debits_pending,
        account.debits_posted,
        account.credits_pending,
        account.credits_posted,
    ])
}

/// What the live follower received: how many events after `after`, in order, a
/// fingerprint of them (to compare with the journal at the end), and their lag.
#[derive(Debug)]
pub struct Followed {
    after: u64,
    events: u64,
    last_timestamp: Option<u64>,
    fingerprint: u64,
    lag_us: Option<Histogram<u64>>,
    problem: Option<String>,
}

/// One event folded into 64 bits: its timestamp, kind, transfer (or account) id and
/// both accounts' balances. Summed over a range, it tells whether two readers saw the
/// same events, each once.
fn fingerprint(event: &ChangeEvent) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x0f01_10e5).hash_one((
        event.timestamp,
        event.kind.code(),
        event.transfer.id,
        event.debit_account.id,
        balances(&event.debit_account),
        balances(&event.credit_account),
    ))
}

impl Followed {
    fn new(after: u64) -> Followed {
        Followed {
            after,
            events: 0,
            last_timestamp: None,
            fingerprint: 0,
            lag_us: Histogram::new_with_bounds(1, LAG_US_MAX, 3).ok(),
            problem: None,
        }
    }

    /// Takes the next event of the stream; an error when it does not move forward.
    fn take(&mut self, event: &ChangeEvent) -> Result<(), String> {
        let before = self.last_timestamp.unwrap_or(self.after);
        if event.timestamp <= before {
            return Err(format!(
                "the live stream went back: timestamp {} after {before}",
                event.timestamp
            ));
        }
        self.last_timestamp = Some(event.timestamp);
        self.events += 1;
        self.fingerprint = self.fingerprint.wrapping_add(fingerprint(event));
        if let Some(histogram) = &mut self.lag_us {
            // Timestamps run ahead of the clock by one nanosecond an event in a burst.
            let lag_us = wall_ns().saturating_sub(event.timestamp) / 1_000;
            histogram.saturating_record(lag_us.max(1));
        }
        Ok(())
    }
}

/// One consumer following the stream live on a thread of its own.
#[derive(Debug)]
pub struct LiveFollower {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Followed>,
}

impl LiveFollower {
    /// Starts consuming `stream`: the ledger's events after timestamp `after`, the last
    /// committed before the run, in batches (`Ledger::subscribe_batches`).
    pub fn start<S, E>(stream: S, after: u64) -> Result<LiveFollower, String>
    where
        S: Stream<Item = Result<Vec<ChangeEvent>, E>> + Send + 'static,
        E: Display,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("loadgen-events".into())
            .spawn(move || follow(stream, after, &stop_seen))
            .map_err(|error| format!("starting the change-event follower: {error}"))?;
        Ok(LiveFollower { stop, thread })
    }

    /// Stops once the follower has caught up (no event for a moment) and returns what
    /// it consumed. Call it once every change of the run is in the journal.
    pub fn finish(self) -> Followed {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_else(|_| {
            let mut followed = Followed::new(0);
            followed.problem = Some("the change-event follower panicked".into());
            followed
        })
    }
}

fn follow<S, E>(stream: S, after: u64, stop: &AtomicBool) -> Followed
where
    S: Stream<Item = Result<Vec<ChangeEvent>, E>>,
    E: Display,
{
    let mut followed = Followed::new(after);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            followed.problem = Some(format!("starting the follower's runtime: {error}"));
            return followed;
        }
    };
    runtime.block_on(async {
        let mut stream = std::pin::pin!(stream);
        loop {
            match tokio::time::timeout(FOLLOW_POLL, stream.next()).await {
                Err(_quiet) if stop.load(Ordering::Acquire) => return,
                Err(_quiet) => {}
                Ok(None) => return,
                Ok(Some(Err(error))) => {
                    followed.problem = Some(format!("following the stream: {error}"));
                    return;
                }
                Ok(Some(Ok(events))) => {
                    for event in &events {
                        if let Err(problem) = followed.take(event) {
                            followed.problem = Some(problem);
                            return;
                        }
                    }
                }
            }
        }
    });
    followed
}

/// Reads the whole journal in `events_dir` and checks it against the ledger (`counts`
/// are its (accounts, transfers), `lookup` its accounts by id) and against what the
/// live follower received, if one ran: the same events, each once, in order.
pub fn check(
    events_dir: &Path,
    followed: Option<Followed>,
    counts: (u64, u64),
    lookup: impl Fn(&[u128]) -> Vec<Account>,
) -> EventsCheck {
    let started = Instant::now();
    let mut check = EventsCheck {
        order_ok: true,
        ..EventsCheck::default()
    };
    let mut last_balances = LastBalances::default();
    let live = followed
        .as_ref()
        .map(|f| (f.after, f.last_timestamp.unwrap_or(f.after)));
    let mut journal_live = (0, 0);
    let read = read_all(events_dir, &mut check, |event| {
        last_balances.insert(event.debit_account.id, balances(&event.debit_account));
        if event.kind != ChangeKind::AccountCreated {
            last_balances.insert(event.credit_account.id, balances(&event.credit_account));
        }
        if live.is_some_and(|(after, last)| after < event.timestamp && event.timestamp <= last) {
            journal_live.0 += 1;
            journal_live.1 = u64::wrapping_add(journal_live.1, fingerprint(event));
        }
    });
    if let Err(problem) = read {
        check.problem = Some(problem);
    }
    if let Some(followed) = followed {
        check_followed(&mut check, followed, journal_live);
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

/// The live follower's events must be the journal's over the same range: as many, and
/// the same (their fingerprints' sum).
fn check_followed(check: &mut EventsCheck, followed: Followed, journal: (u64, u64)) {
    check.followed_live = followed.events;
    if let Some(lag) = followed.lag_us.filter(|lag| !lag.is_empty()) {
        let ms = |us: u64| us as f64 / 1_000.0;
        check.lag_ms = Some([
            ms(lag.value_at_quantile(0.5)),
            ms(lag.value_at_quantile(0.99)),
            ms(lag.max()),
        ]);
    }
    let problem = followed.problem.or_else(|| {
        (journal != (followed.events, followed.fingerprint)).then(|| {
            format!(
                "the live follower received {} events (fingerprint {:x}), the journal holds {} \
                 (fingerprint {:x}) over the same timestamps",
                followed.events, followed.fingerprint, journal.0, journal.1
            )
        })
    });
    if let Some(problem) = problem {
        check.problem.get_or_insert(problem);
    }
}

/// Reads every event in the journal, checking their order, counting them by kind and
/// handing each to `visit`.
fn read_all(
    events_dir: &Path,
    check: &mut EventsCheck,
    mut visit: impl FnMut(&ChangeEvent),
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
            check.events += 1;
            *check
                .by_kind
                .entry(event.kind.name().to_string())
                .or_default() += 1;
            visit(event);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tally_engine::{Config, Ledger, Transfer};

    fn transfer(id: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: 1 + id % 2,
            credit_account_id: 2 - id % 2,
            amount: 7,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        }
    }

    #[test]
    fn the_live_follower_must_have_received_what_the_journal_holds() {
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
        ledger.create_transfers(vec![transfer(100)]).unwrap();
        let after = ledger.with_state(|state| state.last_timestamp());
        let follower =
            LiveFollower::start(ledger.subscribe_batches(after).unwrap(), after).unwrap();
        for id in 101..=300 {
            ledger.create_transfers(vec![transfer(id)]).unwrap();
        }
        ledger.get_change_events(u64::MAX, 1).unwrap();
        let followed = follower.finish();
        // A follower that missed one event, or saw one twice, is caught.
        let mut missed = Followed::new(after);
        let mut doubled = Followed::new(after);
        let live = ledger.get_change_events(after + 1, 200).unwrap();
        for (n, event) in live.iter().enumerate() {
            if n != 50 {
                missed.take(event).unwrap();
            }
            doubled.take(event).unwrap();
        }
        doubled.events += 1;
        doubled.fingerprint = doubled.fingerprint.wrapping_add(fingerprint(&live[7]));
        // Events after the follower stopped are in the journal only.
        ledger.create_transfers(vec![transfer(301)]).unwrap();
        ledger.get_change_events(u64::MAX, 1).unwrap();
        let dir = ledger.events_dir().unwrap().to_path_buf();
        let lookup = |ids: &[u128]| ledger.lookup_accounts(ids);

        let check = check(&dir, Some(followed), (2, 202), lookup);
        assert!(check.ok, "{check:?}");
        assert_eq!(check.events, 204);
        assert_eq!(check.followed_live, 200);
        assert_eq!(check.by_kind.get("single_phase"), Some(&202));
        assert_eq!(check.accounts_checked, 2);
        let [p50, p99, max] = check.lag_ms.unwrap();
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}");
        for wrong in [missed, doubled] {
            let check = super::check(&dir, Some(wrong), (2, 202), lookup);
            assert!(!check.ok, "{check:?}");
            assert!(check.problem.unwrap().contains("live follower"));
        }
        let mut backwards = Followed::new(after);
        assert!(backwards.take(&live[1]).is_ok() && backwards.take(&live[0]).is_err());

        // A ledger holding other counts, or other balances, than the stream fails it.
        let wrong = super::check(&dir, None, (2, 203), lookup);
        assert!(!wrong.ok && !wrong.counts_ok && wrong.lag_ms.is_none());
        let stale = |ids: &[u128]| {
            let mut accounts = ledger.lookup_accounts(ids);
            accounts[0].debits_posted += 1;
            accounts
        };
        let differ = super::check(&dir, None, (2, 202), stale);
        assert!(!differ.ok);
        assert_eq!(differ.accounts_mismatched, 1);
        ledger.shutdown().unwrap();
    }
}
