//! The run checks its own change-event stream (docs/spec.md §2, "Change events"). One
//! follower consumes the stream live during the run, as a payment service's consumer
//! would, and measures its lag (from an event's commit timestamp to its arrival); after
//! the run, whatever it had not yet received is read from the journal on disk, and the
//! whole stream is checked: timestamps strictly increase; there is one
//! `account_created` per account and one transfer event per stored transfer; and the
//! balances each account last had in the stream are the ones the ledger holds.

use futures_util::{Stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    /// Of them, events the live follower received as they were committed during the
    /// run (the setup's before it, and any it had not reached at the end, were read
    /// from disk afterwards).
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

/// The stream as consumed so far, in order.
#[derive(Debug)]
pub struct Followed {
    check: EventsCheck,
    last_balances: LastBalances,
    last_timestamp: Option<u64>,
    lag_us: Option<Histogram<u64>>,
    /// The stream was followed after this timestamp; those up to it are read first.
    after: u64,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

impl Followed {
    fn new() -> Followed {
        Followed {
            check: EventsCheck {
                order_ok: true,
                ..EventsCheck::default()
            },
            last_balances: LastBalances::default(),
            last_timestamp: None,
            lag_us: Histogram::new_with_bounds(1, LAG_US_MAX, 3).ok(),
            after: 0,
        }
    }

    /// Takes the next event of the stream; an error when it does not move forward.
    fn take(&mut self, event: &ChangeEvent) -> Result<(), String> {
        if self
            .last_timestamp
            .is_some_and(|before| event.timestamp <= before)
        {
            self.check.order_ok = false;
            return Err(format!(
                "timestamp {} does not move forward",
                event.timestamp
            ));
        }
        self.last_timestamp = Some(event.timestamp);
        note(event, &mut self.check, &mut self.last_balances);
        Ok(())
    }

    fn take_live(&mut self, event: &ChangeEvent) -> Result<(), String> {
        if let Some(histogram) = &mut self.lag_us {
            // Timestamps run ahead of the clock by one nanosecond an event in a burst.
            let lag_us = unix_ns().saturating_sub(event.timestamp) / 1_000;
            histogram.saturating_record(lag_us.max(1));
        }
        self.check.followed_live += 1;
        self.take(event)
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
    /// committed before the run (the setup's are read from disk at the end), room made
    /// for the balances of `accounts` accounts.
    pub fn start<S, E>(stream: S, after: u64, accounts: usize) -> Result<LiveFollower, String>
    where
        S: Stream<Item = Result<ChangeEvent, E>> + Send + 'static,
        E: Display,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("loadgen-events".into())
            .spawn(move || follow(stream, after, accounts, &stop_seen))
            .map_err(|error| format!("starting the change-event follower: {error}"))?;
        Ok(LiveFollower { stop, thread })
    }

    /// Stops once the follower has caught up (no event for a moment) and returns what
    /// it consumed. Call it once every change of the run is in the journal.
    pub fn finish(self) -> Followed {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_else(|_| {
            let mut followed = Followed::new();
            followed.check.problem = Some("the change-event follower panicked".into());
            followed
        })
    }
}

fn follow<S, E>(stream: S, after: u64, accounts: usize, stop: &AtomicBool) -> Followed
where
    S: Stream<Item = Result<ChangeEvent, E>>,
    E: Display,
{
    let mut followed = Followed::new();
    followed.after = after;
    followed.last_balances.reserve(accounts);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            followed.check.problem = Some(format!("starting the follower's runtime: {error}"));
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
                    followed.check.problem = Some(format!("following the stream: {error}"));
                    return;
                }
                Ok(Some(Ok(event))) => {
                    if let Err(problem) = followed.take_live(&event) {
                        followed.check.problem = Some(problem);
                        return;
                    }
                }
            }
        }
    });
    followed
}

/// Reads the rest of the journal in `events_dir` after what `followed` consumed (all of
/// it for `None`) and checks the whole stream against the ledger: `counts` are its
/// (accounts, transfers), `lookup` its accounts by id.
pub fn check(
    events_dir: &Path,
    followed: Option<Followed>,
    counts: (u64, u64),
    lookup: impl Fn(&[u128]) -> Vec<Account>,
) -> EventsCheck {
    let started = Instant::now();
    let mut whole = Followed::new();
    let mut outcome = read(events_dir, &mut whole, followed.as_ref().map(|f| f.after));
    if let Some(followed) = followed
        && outcome.is_ok()
    {
        outcome = whole.append(followed);
    }
    if let Err(problem) = outcome.and_then(|()| read(events_dir, &mut whole, None)) {
        whole.check.problem.get_or_insert(problem);
    }
    let Followed {
        mut check,
        last_balances,
        lag_us,
        ..
    } = whole;
    if let Some(lag) = lag_us.filter(|lag| !lag.is_empty()) {
        let ms = |us: u64| us as f64 / 1_000.0;
        check.lag_ms = Some([
            ms(lag.value_at_quantile(0.5)),
            ms(lag.value_at_quantile(0.99)),
            ms(lag.max()),
        ]);
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

/// Reads the journal from after what `followed` holds, through timestamp `through`
/// (`None`: to its end).
fn read(events_dir: &Path, followed: &mut Followed, through: Option<u64>) -> Result<(), String> {
    let mut reader = EventReader::open(events_dir).map_err(|e| e.to_string())?;
    let mut next_min = followed.last_timestamp.map_or(0, |last| last + 1);
    let through = through.unwrap_or(u64::MAX);
    while next_min <= through {
        let events = reader
            .read(next_min, READ_EVENTS)
            .map_err(|e| e.to_string())?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        next_min = last.timestamp.saturating_add(1);
        for event in events.iter().take_while(|event| event.timestamp <= through) {
            followed.take(event)?;
        }
    }
    Ok(())
}

impl Followed {
    /// Appends what a follower consumed after the events this holds.
    fn append(&mut self, later: Followed) -> Result<(), String> {
        if let Some(problem) = later.check.problem {
            return Err(problem);
        }
        self.check.order_ok &= later.check.order_ok;
        self.check.events += later.check.events;
        self.check.followed_live = later.check.followed_live;
        for (kind, count) in later.check.by_kind {
            *self.check.by_kind.entry(kind).or_default() += count;
        }
        self.last_balances.extend(later.last_balances);
        self.last_timestamp = later.last_timestamp.or(self.last_timestamp);
        self.lag_us = later.lag_us;
        Ok(())
    }
}

fn note(event: &ChangeEvent, check: &mut EventsCheck, last_balances: &mut LastBalances) {
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
    fn the_live_follower_and_the_journal_together_give_the_whole_stream() {
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
        let follower = LiveFollower::start(ledger.subscribe(after).unwrap(), after, 2).unwrap();
        for id in 101..=300 {
            ledger.create_transfers(vec![transfer(id)]).unwrap();
        }
        ledger.get_change_events(u64::MAX, 1).unwrap();
        let followed = follower.finish();
        // Events after the follower stopped are read from the journal.
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
