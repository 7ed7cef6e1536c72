//! Read-only inspection of a ledger's directory: what the `tally` reading commands
//! (`accounts`, `transfers`, `verify`) show.

use crate::error::EngineError;
use crate::recovery::Changes;
use std::collections::VecDeque;
use std::path::Path;
use tally_log::events::EventReader;
use tally_log::{LogError, VerifyReport};
use tally_state::StateMachine;
use tally_types::{CHANGE_EVENTS_LIMIT_MAX, ChangeEvent};

/// Differences [`EventsComparison`] describes one by one; past them it only counts.
const DIFFERENCES_DESCRIBED_MAX: usize = 20;

/// Reads the ledger in `dir` without changing it and rebuilds its state as
/// [`Ledger::open`] would.
///
/// Every checksum is checked (`tally_log::read_log`), nothing is repaired and no file is
/// made: a torn tail is reported, not cut. The log is read on one thread and replayed
/// on the calling one as it is read, never whole in memory. The caller holds the
/// directory's lock (`tally_log::DirLock`), so that no ledger writes while it reads.
///
/// # Errors
///
/// [`EngineError::Log`] when a file does not read or check, and
/// [`EngineError::Recovery`] when the state it holds does not load.
///
/// # Examples
///
/// ```
/// use tally_engine::{Account, Config, Ledger};
///
/// let dir = tempfile::tempdir().expect("temp dir");
/// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
/// let account = Account { id: 7, ledger: 1, code: 1, ..Account::default() };
/// ledger.create_accounts(vec![account]).expect("durable");
/// ledger.shutdown().expect("clean shutdown");
///
/// let lock = tally_log::DirLock::acquire(dir.path()).expect("lock");
/// let (report, state) = tally_engine::inspect::read_only(dir.path()).expect("read");
/// assert_eq!(state.lookup_accounts(&[7]).len(), 1);
/// drop((report, lock));
/// ```
///
/// [`Ledger::open`]: crate::Ledger::open
pub fn read_only(dir: &Path) -> Result<(VerifyReport, StateMachine), EngineError> {
    crate::recovery::replay_read_only(dir, Changes::Dropped)
}

/// [`read_only`], comparing the change-event journal with the events the log makes:
/// replayed again with every change captured, the log must give, event for event, what
/// the journal holds from the first replayed event on (earlier ones are the snapshot's,
/// or retention deleted them). The journal may end before the log (a crash lost its
/// unsynced tail, which the next open writes again), never after it: a group reaches
/// the journal only once its log write is synced.
///
/// # Errors
///
/// As [`read_only`]. A journal that does not read stops the comparison
/// ([`EventsComparison::unread`]), not the replay.
pub fn read_only_comparing_events(
    dir: &Path,
) -> Result<(VerifyReport, StateMachine, EventsComparison), EngineError> {
    let reader = EventReader::open(&crate::events_dir(dir))?;
    let journal_first = match reader.first_timestamp() {
        Ok(Some(first)) => first,
        // No journal (change events off): nothing to compare, nor to capture.
        Ok(None) => {
            let (report, state) = read_only(dir)?;
            return Ok((report, state, EventsComparison::default()));
        }
        // The journal's own checks report why it does not read.
        Err(error) => {
            let (report, state) = read_only(dir)?;
            let unread = Some(error.to_string());
            return Ok((
                report,
                state,
                EventsComparison {
                    unread,
                    ..EventsComparison::default()
                },
            ));
        }
    };
    let mut comparison = JournalComparer::new(reader, journal_first);
    let mut each = |events: Vec<ChangeEvent>| comparison.compare(events);
    let (report, state) = crate::recovery::replay_read_only(dir, Changes::Each(&mut each))?;
    let comparison = comparison.finish(report.snapshot_sequence.is_some(), state.last_timestamp());
    Ok((report, state, comparison))
}

/// A page of the journal's events from `from` on; where retention deleted the start,
/// from the oldest event kept.
fn read_kept(reader: &mut EventReader, mut from: u64) -> Result<Vec<ChangeEvent>, LogError> {
    loop {
        match reader.read(from, CHANGE_EVENTS_LIMIT_MAX) {
            Err(LogError::EventsRetired {
                next_timestamp_kept,
                ..
            }) if next_timestamp_kept > from => from = next_timestamp_kept,
            answer => return answer,
        }
    }
}

/// What comparing the change-event journal with the log's events found
/// ([`read_only_comparing_events`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsComparison {
    /// Events the log makes that the journal holds, equal.
    pub equal: u64,
    /// Events the log makes before the journal's oldest: retention deleted them, or
    /// the journal began later (change events were off).
    pub before_journal: u64,
    /// Events the log makes past the journal's last: a crash lost them from its tail.
    pub past_journal_end: u64,
    /// Events the journal holds past the log's last stamp: only log frames that are
    /// gone made them (a torn tail, or frames lost from the disk); the next open cuts
    /// them from the journal.
    pub past_log_end: u64,
    /// Events that differ, that the journal lacks within its span, or that the log
    /// does not make before its end.
    pub differing: u64,
    /// The first 20 of those, described.
    pub differences: Vec<String>,
    /// Why the journal stopped being read, if it did (its checks report the damage).
    pub unread: Option<String>,
}

/// Walks the journal beside the replayed events, both in timestamp order.
struct JournalComparer {
    reader: EventReader,
    /// Journal events read and not yet matched.
    pending: VecDeque<ChangeEvent>,
    /// Where the next journal read starts; `None` before the first.
    next_read: Option<u64>,
    /// No journal event is left past `pending`.
    journal_done: bool,
    /// The oldest event the journal holds.
    journal_first: u64,
    /// The first replayed event's timestamp.
    replayed_first: Option<u64>,
    /// The last replayed event's timestamp: a repeated one is dropped, as recovery
    /// drops it (only a log from before change events can hold one).
    replayed_last: Option<u64>,
    found: EventsComparison,
}

impl JournalComparer {
    fn new(reader: EventReader, journal_first: u64) -> JournalComparer {
        JournalComparer {
            reader,
            pending: VecDeque::new(),
            next_read: None,
            journal_done: false,
            journal_first,
            replayed_first: None,
            replayed_last: None,
            found: EventsComparison::default(),
        }
    }

    fn differs(&mut self, difference: String) {
        self.found.differing += 1;
        if self.found.differences.len() < DIFFERENCES_DESCRIBED_MAX {
            self.found.differences.push(difference);
        }
    }

    /// The next journal event, read a page at a time; `None` past the end.
    fn journal_front(&mut self, from: u64) -> Option<&ChangeEvent> {
        while self.pending.is_empty() && !self.journal_done {
            let timestamp_min = *self.next_read.get_or_insert(from);
            match read_kept(&mut self.reader, timestamp_min) {
                Ok(page) if page.is_empty() => self.journal_done = true,
                Ok(page) => {
                    self.next_read = page.last().map(|event| event.timestamp + 1);
                    self.pending.extend(page);
                }
                Err(error) => {
                    self.found.unread = Some(error.to_string());
                    self.journal_done = true;
                }
            }
        }
        self.pending.front()
    }

    fn compare(&mut self, replayed: Vec<ChangeEvent>) {
        let mut replayed = replayed.into_iter().peekable();
        while let Some(event) = replayed.next() {
            // Events sharing its timestamp: recovery keeps one, in the order the shard
            // threads gave them, which a serial replay need not give.
            let mut alike = Vec::new();
            while let Some(next) = replayed.next_if(|next| next.timestamp == event.timestamp) {
                alike.push(next);
            }
            if self
                .replayed_last
                .is_some_and(|last| event.timestamp <= last)
            {
                continue;
            }
            self.replayed_last = Some(event.timestamp);
            self.replayed_first.get_or_insert(event.timestamp);
            alike.push(event);
            self.compare_one(&alike);
        }
    }

    /// Compares the journal's event at the timestamp of `alike` (the replayed events
    /// of that timestamp: one, but for a log from before change events) with them.
    fn compare_one(&mut self, alike: &[ChangeEvent]) {
        let at = alike[0].timestamp;
        // The first read starts at the first replayed event: the journal's earlier
        // events are the snapshot's (or retention deleted them). Those from there on
        // before this one are events no replayed one matched.
        while let Some(front) = self.journal_front(at).map(|front| front.timestamp) {
            if front >= at {
                break;
            }
            self.pending.pop_front();
            self.differs(format!(
                "the journal holds an event at {front} the log does not make"
            ));
        }
        let front = self
            .journal_front(at)
            .map(|front| (front.timestamp, alike.contains(front)));
        match front {
            Some((front, equal)) if front == at => {
                self.pending.pop_front();
                match equal {
                    true => self.found.equal += 1,
                    false => self.differs(format!(
                        "the journal's event at {at} differs from the log's"
                    )),
                }
            }
            Some(_) if at < self.journal_first => {
                self.found.before_journal += 1;
            }
            Some(_) => self.differs(format!("the journal lacks the log's event at {at}")),
            None if self.found.unread.is_some() => {}
            None => self.found.past_journal_end += 1,
        }
    }

    /// Counts the journal's events that no log event matched and the comparison did
    /// not reach: those past the last replayed one (or, with none replayed, past the
    /// snapshot's last stamp or 0), those past `state_last` (the log's last stamp)
    /// apart, and without a `snapshot` those before the first replayed one (the log then
    /// holds every record from the first).
    fn finish(mut self, snapshot: bool, state_last: u64) -> EventsComparison {
        if !snapshot {
            let end = self.replayed_first.unwrap_or(state_last + 1);
            self.count_unmatched_before(end);
        }
        let last = self.replayed_last.unwrap_or(state_last);
        while let Some(front) = self.journal_front(last + 1).map(|front| front.timestamp) {
            self.pending.pop_front();
            // Up to the state's last stamp (a last batch refused or empty), the log
            // reaches: the event is one it does not make.
            if front <= state_last {
                self.differs(format!(
                    "the journal holds an event at {front} the log does not make"
                ));
            } else {
                self.found.past_log_end += 1;
            }
        }
        self.found
    }

    /// Counts the journal's events stamped before `end` as made by no log event.
    fn count_unmatched_before(&mut self, end: u64) {
        let mut from = 0;
        while from < end {
            let page = match read_kept(&mut self.reader, from) {
                Ok(page) => page,
                Err(error) => {
                    self.found.unread = Some(error.to_string());
                    return;
                }
            };
            let Some(last) = page.last().map(|event| event.timestamp) else {
                return;
            };
            for event in page.iter().take_while(|event| event.timestamp < end) {
                let at = event.timestamp;
                self.differs(format!(
                    "the journal holds an event at {at}, before the log's first"
                ));
            }
            from = last + 1;
        }
    }
}
