//! Change events (docs/spec.md §2): the apply thread captures each group's events and
//! hands them to the **journal thread**, which appends them to the event journal in
//! `DATA/events` (`tally_log::events`). Readers — [`crate::Ledger::get_change_events`],
//! [`crate::Ledger::subscribe`], `tally events` in another process — read the journal's
//! files, never memory, so a slow or stopped reader holds nothing up.
//!
//! The journal is not synced per group: the write-ahead log is the source of truth, and
//! recovery re-derives whatever the journal's tail lost (`crate::recovery`). It is
//! synced before a snapshot lets the log be retired ([`Journal::sync`]).

use crate::error::EngineError;
use parking_lot::{Condvar, Mutex};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;
use tally_log::events::{EventJournal, EventReader};
use tally_types::{CHANGE_EVENTS_LIMIT_MAX, ChangeEvent, change_events_limit};
use tokio::sync::watch;

/// Groups of events waiting for the journal thread, at most: past it the apply thread
/// waits (memory stays bounded; the journal writes far faster than commits arrive).
const JOURNAL_GROUPS_IN_FLIGHT_MAX: usize = 4;

/// Journal bytes appended past which the journal thread starts writing them out to the
/// disk, without waiting (`EventJournal::start_writeback`). Left to the kernel, the
/// events of a busy minute reach the disk in one burst once 30 s old, and every
/// commit's `fdatasync` queues behind it (syncs of 9–48 ms measured 30 s into the
/// festival).
const JOURNAL_WRITEBACK_BYTES: u64 = 1024 * 1024;

/// How long a read waits for the journal to catch up with the commits before it.
const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(5);

/// What the apply thread sends the journal thread.
pub(crate) enum ToJournal {
    /// A group's events, and the last timestamp of the group (the journal then holds
    /// every event up to it).
    Events {
        events: Vec<ChangeEvent>,
        through: u64,
    },
    /// Sync everything sent so far to disk, then answer.
    Sync(SyncSender<Result<(), String>>),
    /// The state jumped to `through` (its records to `records_through`) without its
    /// events: unless the journal holds them, they never come (`EventJournal::skip_to`).
    JumpedTo { records_through: u64, through: u64 },
}

/// Where the journal stands, shared by the journal thread and the readers.
#[derive(Debug)]
pub(crate) struct Progress {
    dir: PathBuf,
    /// The last timestamp whose events are all in the journal's files, or why writing
    /// stopped.
    through: Mutex<Result<u64, String>>,
    advanced: Condvar,
    /// The same timestamp, for async subscribers.
    through_watch: watch::Sender<u64>,
    /// Set once the journal thread has written its last event (shutdown).
    closed: std::sync::atomic::AtomicBool,
    /// The journal's newest segment (`EventJournal::newest_segment`; 0 before the
    /// journal thread reports one), set before each advance of `through` that may
    /// cover its events, so that readers here need not list the directory.
    newest_segment: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub(crate) fn new(dir: PathBuf, through: u64) -> Progress {
        Progress {
            dir,
            through: Mutex::new(Ok(through)),
            advanced: Condvar::new(),
            through_watch: watch::Sender::new(through),
            closed: std::sync::atomic::AtomicBool::new(false),
            newest_segment: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records the journal's newest segment; call it before advancing past events in
    /// that segment.
    fn set_newest_segment(&self, newest: Option<u64>) {
        // Timestamps are above 0, so 0 stands for none.
        let newest = newest.unwrap_or(0);
        self.newest_segment
            .store(newest, std::sync::atomic::Ordering::Release);
    }

    /// The journal's newest segment as last reported; `None` before a report.
    fn newest_segment(&self) -> Option<u64> {
        let newest = self
            .newest_segment
            .load(std::sync::atomic::Ordering::Acquire);
        (newest > 0).then_some(newest)
    }

    /// Marks the journal finished: followers end once they have read it all.
    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.through_watch.send_modify(|_| {});
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The journal's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn advance(&self, through: u64) {
        let mut state = self.through.lock();
        if let Ok(current) = state.as_mut() {
            *current = (*current).max(through);
        }
        drop(state);
        self.advanced.notify_all();
        self.through_watch.send_if_modified(|current| {
            let moved = through > *current;
            *current = (*current).max(through);
            moved
        });
    }

    fn fail(&self, message: String) {
        *self.through.lock() = Err(message);
        self.advanced.notify_all();
        // Wakes subscribers, which then find the failure.
        self.through_watch.send_modify(|_| {});
    }

    /// Why writing stopped, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.through.lock().as_ref().err().cloned()
    }

    /// Waits (bounded) until the journal holds every event up to `timestamp`.
    pub(crate) fn wait_through(&self, timestamp: u64) -> Result<(), EngineError> {
        let deadline = std::time::Instant::now() + CATCH_UP_WAIT_MAX;
        let mut state = self.through.lock();
        loop {
            match state.as_ref() {
                Err(message) => return Err(stopped(message)),
                Ok(&through) if through >= timestamp => return Ok(()),
                Ok(_) => {}
            }
            if self.advanced.wait_until(&mut state, deadline).timed_out() {
                return Err(EngineError::ChangeEventsLate {
                    timestamp,
                    waited: CATCH_UP_WAIT_MAX,
                });
            }
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.through_watch.subscribe()
    }
}

fn stopped(message: &str) -> EngineError {
    EngineError::ChangeEvents {
        message: format!("writing them stopped ({message}); reopen the ledger to resume"),
    }
}

/// The journal thread's side: appends what the apply thread sends, in order.
struct JournalThread {
    journal: EventJournal,
    from_apply: Receiver<ToJournal>,
    progress: Arc<Progress>,
    /// Written buffers, handed back to the apply thread for its next captures.
    spares: crossbeam_channel::Sender<Vec<ChangeEvent>>,
}

impl JournalThread {
    /// Lets readers read up to `through`, telling them the newest segment first: a
    /// reader woken by the advance then finds a segment the journal just started.
    fn advance(&self, through: u64) {
        self.progress
            .set_newest_segment(self.journal.newest_segment());
        self.progress.advance(through);
    }

    fn run(mut self) {
        let mut failed = false;
        self.progress
            .set_newest_segment(self.journal.newest_segment());
        for message in &self.from_apply {
            match message {
                ToJournal::Events { events, through } => {
                    if failed {
                        continue;
                    }
                    let events = strictly_increasing_after(events, self.journal.last_timestamp());
                    match self.journal.append(&events) {
                        Ok(()) => {
                            if self.journal.bytes_not_written_back() >= JOURNAL_WRITEBACK_BYTES {
                                self.journal.start_writeback();
                            }
                            self.advance(through);
                        }
                        Err(error) => {
                            // Commits go on (the log has everything); readers get this.
                            failed = true;
                            self.progress.fail(error.to_string());
                        }
                    }
                    // Full when the apply thread has spares enough: then it is dropped.
                    let _ = self.spares.try_send(events);
                }
                ToJournal::JumpedTo {
                    records_through,
                    through,
                } => {
                    if !failed {
                        skip_missing(&mut self.journal, records_through, through);
                        self.advance(through);
                    }
                }
                ToJournal::Sync(reply) => {
                    let synced = match failed {
                        true => Err("the event journal failed".to_string()),
                        false => self.journal.sync().map_err(|error| error.to_string()),
                    };
                    let _ = reply.send(synced);
                }
            }
        }
        if !failed {
            let _ = self.journal.sync();
        }
        self.progress.close();
    }
}

/// Starts the journal thread writing `journal`: the apply side's handle, and the
/// thread, which ends once every handle is dropped and what they sent is written.
pub(crate) fn start_journal_thread(
    journal: EventJournal,
    progress: Arc<Progress>,
) -> Result<(Journal, std::thread::JoinHandle<()>), EngineError> {
    let (to_journal, from_apply) = std::sync::mpsc::sync_channel(JOURNAL_GROUPS_IN_FLIGHT_MAX);
    let (spares_back, spares) = crossbeam_channel::bounded(SPARE_BUFFERS_MAX);
    let thread = JournalThread {
        journal,
        from_apply,
        progress,
        spares: spares_back,
    };
    let thread = std::thread::Builder::new()
        .name("tally-events".into())
        .spawn(move || thread.run())
        .map_err(|source| EngineError::Thread {
            name: "tally-events",
            source,
        })?;
    Ok((Journal { to_journal, spares }, thread))
}

/// The apply thread's side of the journal.
#[derive(Debug)]
pub(crate) struct Journal {
    pub to_journal: SyncSender<ToJournal>,
    /// Buffers the journal thread has written, to capture the next groups into.
    pub spares: crossbeam_channel::Receiver<Vec<ChangeEvent>>,
}

/// Written event buffers waiting for reuse, at most.
const SPARE_BUFFERS_MAX: usize = 2;

impl Journal {
    /// A buffer to capture the next group's events into: a written one if any is back.
    pub fn spare(&self) -> Vec<ChangeEvent> {
        self.spares.try_recv().unwrap_or_default()
    }

    /// Hands a group's events over (waits while the journal thread is far behind).
    pub fn send(&self, events: Vec<ChangeEvent>, through: u64) {
        let _ = self.to_journal.send(ToJournal::Events { events, through });
    }

    /// Syncs every event sent so far; an error means the journal cannot be trusted to
    /// hold them, so the log must not be retired past them.
    pub fn sync(&self) -> Result<(), String> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.to_journal
            .send(ToJournal::Sync(reply))
            .map_err(|_| "the journal thread is gone".to_string())?;
        answer
            .recv()
            .map_err(|_| "the journal thread is gone".to_string())?
    }
}

/// A change-event journal kept beside a ledger state that something other than a
/// [`crate::Ledger`] applies: a cluster replica's (`tally-cluster`). Its thread appends
/// each group's events as [`ChangeJournal::send`] hands them over, leaving out those at
/// or before the journal's last event, so a replay after a restart may hand them
/// again. Once it is dropped, its thread writes what was sent, syncs, and ends the
/// followers ([`ChangeEventReader::closed`] resolves then).
#[derive(Debug)]
pub struct ChangeJournal {
    journal: Journal,
    progress: Arc<Progress>,
}

impl ChangeJournal {
    /// Opens (or creates) the journal in `dir` for a ledger whose state stands at
    /// `state`, keeping `retention_bytes` of events (past it the oldest segments are
    /// deleted). When the journal lacks events of records the state holds (its files
    /// were lost, or the state came from another replica's snapshot), those events are
    /// never written: readers asking for them get an error saying so.
    ///
    /// # Errors
    ///
    /// The journal's files cannot be opened or a damaged one is not at its tail, or
    /// the journal thread cannot start.
    pub fn open(
        dir: &Path,
        state: &tally_state::StateMachine,
        retention_bytes: u64,
    ) -> Result<ChangeJournal, EngineError> {
        let options = tally_log::events::JournalOptions {
            retention_bytes,
            ..tally_log::events::JournalOptions::default()
        };
        let mut journal = EventJournal::open(dir, options)?;
        skip_missing(
            &mut journal,
            state.last_record_timestamp(),
            state.last_timestamp(),
        );
        let through = state
            .last_timestamp()
            .max(journal.last_timestamp().unwrap_or(0));
        let progress = Arc::new(Progress::new(dir.to_path_buf(), through));
        let (journal, thread) = start_journal_thread(journal, Arc::clone(&progress))?;
        // Detached: dropping the journal must not block the async thread it drops on.
        drop(thread);
        Ok(ChangeJournal { journal, progress })
    }

    /// A buffer to capture the next group's events into
    /// (`StateMachine::take_changes_into`).
    pub fn spare(&self) -> Vec<ChangeEvent> {
        self.journal.spare()
    }

    /// Hands over a group's events; `through` is the state's last timestamp after the
    /// group (readers waiting for it are then answered). Waits while the journal
    /// thread is far behind.
    pub fn send(&self, events: Vec<ChangeEvent>, through: u64) {
        self.journal.send(events, through);
    }

    /// Records that the state jumped ahead to `state` without its events (a snapshot
    /// installed from another replica): readers asking for the missing stretch get
    /// an error saying so.
    pub fn jumped_to(&self, state: &tally_state::StateMachine) {
        let jumped = ToJournal::JumpedTo {
            records_through: state.last_record_timestamp(),
            through: state.last_timestamp(),
        };
        let _ = self.journal.to_journal.send(jumped);
    }

    /// Syncs every event sent so far. Call it before saving a snapshot of the state,
    /// so that the journal holds on disk every event the snapshot's records made.
    ///
    /// # Errors
    ///
    /// Writing the journal failed: it cannot be trusted to hold them.
    pub fn sync(&self) -> Result<(), String> {
        self.journal.sync()
    }

    /// The reading side, for as many readers as wanted.
    pub fn reader(&self) -> ChangeEventReader {
        ChangeEventReader {
            progress: Arc::clone(&self.progress),
        }
    }
}

/// Marks the events of a state's records up to `records_through` that `journal` lacks
/// as never coming, up to the state's last timestamp `through`.
fn skip_missing(journal: &mut EventJournal, records_through: u64, through: u64) {
    if journal.last_timestamp().unwrap_or(0) < records_through {
        journal.skip_to(through);
    }
}

/// The reading side of a change-event journal: reads of a page, and followers. It
/// reads the journal's files, never the engine's memory.
#[derive(Debug, Clone)]
pub struct ChangeEventReader {
    progress: Arc<Progress>,
}

impl ChangeEventReader {
    pub(crate) fn new(progress: Arc<Progress>) -> ChangeEventReader {
        ChangeEventReader { progress }
    }

    /// Up to `limit` (at most 8,190; 0 asks for 8,190) events with timestamp at or after
    /// `timestamp_min`, in order, once the journal holds every event up to `committed`
    /// (waits up to 5 s).
    ///
    /// # Errors
    ///
    /// [`EngineError::ChangeEvents`]: `limit` out of range, the journal did not catch
    /// up, writing it failed, or the events asked for are not kept.
    pub fn get(
        &self,
        timestamp_min: u64,
        limit: usize,
        committed: u64,
    ) -> Result<Vec<ChangeEvent>, EngineError> {
        let limit = checked_limit(limit)?;
        self.progress.wait_through(committed)?;
        let newest_segment = self.progress.newest_segment();
        let mut reader = EventReader::open(self.progress.dir())?;
        read(&mut reader, timestamp_min, limit, newest_segment)
    }

    /// Every event after `after`, then each new one as it is written, until the
    /// journal's writer closes (see `Ledger::subscribe`).
    ///
    /// # Errors
    ///
    /// The journal's directory cannot be read.
    pub fn subscribe(
        &self,
        after: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<ChangeEvent, EngineError>> + Send + 'static + use<>,
        EngineError,
    > {
        follow(Arc::clone(&self.progress), after)
    }

    /// [`ChangeEventReader::subscribe`], 1 to [`SUBSCRIPTION_BATCH_EVENTS_MAX`] events
    /// an item.
    ///
    /// # Errors
    ///
    /// As [`ChangeEventReader::subscribe`].
    pub fn subscribe_batches(
        &self,
        after: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Vec<ChangeEvent>, EngineError>> + Send + 'static + use<>,
        EngineError,
    > {
        follow_batches(Arc::clone(&self.progress), after)
    }

    /// The journal's directory, where other processes read it (`tally events`).
    pub fn dir(&self) -> &Path {
        self.progress.dir()
    }

    /// Resolves once the journal's writer has written its last event and synced
    /// (after its [`ChangeJournal`] or [`crate::Ledger`] is gone).
    pub async fn closed(&self) {
        let mut changed = self.progress.subscribe();
        while !self.progress.is_closed() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }
}

/// `events` without any whose timestamp does not move past the one before (or past
/// `after`). The engine's stamping keeps every timestamp unique; only a log written
/// before change events existed can hold an expiry that shares one.
pub(crate) fn strictly_increasing_after(
    events: Vec<ChangeEvent>,
    after: Option<u64>,
) -> Vec<ChangeEvent> {
    let mut last = after;
    let mut kept = events;
    kept.retain(|event| {
        let keep = last.is_none_or(|last| event.timestamp > last);
        if keep {
            last = Some(event.timestamp);
        }
        keep
    });
    kept
}

/// [`strictly_increasing_after`] with nothing before.
pub(crate) fn strictly_increasing(events: Vec<ChangeEvent>) -> Vec<ChangeEvent> {
    strictly_increasing_after(events, None)
}

/// A read's limit ([`change_events_limit`]); above the most is refused.
pub(crate) fn checked_limit(limit: usize) -> Result<usize, EngineError> {
    change_events_limit(limit).ok_or_else(|| EngineError::ChangeEvents {
        message: format!("limit must be at most {CHANGE_EVENTS_LIMIT_MAX}, not {limit}"),
    })
}

/// Reads up to `limit` events with timestamp ≥ `timestamp_min` from the journal files.
pub(crate) fn read(
    reader: &mut EventReader,
    timestamp_min: u64,
    limit: usize,
    newest_segment: Option<u64>,
) -> Result<Vec<ChangeEvent>, EngineError> {
    reader
        .read_beside_writer(timestamp_min, limit, newest_segment)
        .map_err(|error| EngineError::ChangeEvents {
            message: error.to_string(),
        })
}

/// Most events in one item of [`crate::Ledger::subscribe_batches`]: what a
/// subscription reads from the journal's files at a time, which bounds its memory.
pub const SUBSCRIPTION_BATCH_EVENTS_MAX: usize = 1_024;

/// A live follower of the journal: every event after `after`, in order, then each new
/// one as it is written. Reads the journal's files, so it holds no engine memory and
/// never slows commits, however far behind it falls.
pub(crate) fn follow(
    progress: Arc<Progress>,
    after: u64,
) -> Result<
    impl futures_util::Stream<Item = Result<ChangeEvent, EngineError>> + Send + 'static,
    EngineError,
> {
    use futures_util::StreamExt;
    // Each event moves once out of the batch read for it, not through a queue.
    let events = follow_batches(progress, after)?.flat_map(|batch| {
        let items: Box<dyn Iterator<Item = Result<ChangeEvent, EngineError>> + Send> = match batch {
            Ok(events) => Box::new(events.into_iter().map(Ok)),
            Err(error) => Box::new(std::iter::once(Err(error))),
        };
        futures_util::stream::iter(items)
    });
    Ok(events)
}

/// [`follow`], the events of each read of the journal together: 1 to
/// [`SUBSCRIPTION_BATCH_EVENTS_MAX`] a batch, in order.
pub(crate) fn follow_batches(
    progress: Arc<Progress>,
    after: u64,
) -> Result<
    impl futures_util::Stream<Item = Result<Vec<ChangeEvent>, EngineError>> + Send + 'static,
    EngineError,
> {
    let reader = EventReader::open(progress.dir()).map_err(|error| EngineError::ChangeEvents {
        message: error.to_string(),
    })?;
    let state = Follower {
        changed: progress.subscribe(),
        progress,
        reader,
        next_min: after.saturating_add(1),
        done: false,
    };
    Ok(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let item = state.next_batch().await?;
            Some((item, state))
        },
    ))
}

struct Follower {
    progress: Arc<Progress>,
    changed: watch::Receiver<u64>,
    reader: EventReader,
    next_min: u64,
    done: bool,
}

impl Follower {
    /// The next events, never an empty batch: waits for them to be written.
    async fn next_batch(&mut self) -> Option<Result<Vec<ChangeEvent>, EngineError>> {
        loop {
            if self.done {
                return None;
            }
            // Mark the current progress seen before reading, so a write that lands
            // after the read still wakes the wait below.
            self.changed.borrow_and_update();
            let closed = self.progress.is_closed();
            let newest_segment = self.progress.newest_segment();
            match read(
                &mut self.reader,
                self.next_min,
                SUBSCRIPTION_BATCH_EVENTS_MAX,
                newest_segment,
            ) {
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
                Ok(events) if !events.is_empty() => {
                    if let Some(last) = events.last() {
                        self.next_min = last.timestamp.saturating_add(1);
                    }
                    return Some(Ok(events));
                }
                Ok(_) => {}
            }
            if let Some(message) = self.progress.failure() {
                self.done = true;
                return Some(Err(stopped(&message)));
            }
            if closed {
                // The ledger shut down and every event it wrote was read.
                return None;
            }
            let _ = self.changed.changed().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tally_log::events::JournalOptions;
    use tally_testkit::account_created_event as created;

    /// A follower beside the journal thread, over segments of 1 KiB, gets each group
    /// before the next is sent: a segment the journal starts is found at once, never
    /// left unread until a later append wakes the follower again.
    #[tokio::test]
    async fn a_follower_finds_each_new_segment_at_the_append_that_starts_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            segment_bytes_max: 1024,
            ..JournalOptions::default()
        };
        let journal = EventJournal::open(dir.path(), options).unwrap();
        let progress = Arc::new(Progress::new(dir.path().to_path_buf(), 0));
        let (journal, _thread) = start_journal_thread(journal, Arc::clone(&progress)).unwrap();
        let mut follower = std::pin::pin!(follow_batches(Arc::clone(&progress), 0).unwrap());
        for group in 0..200u64 {
            let events: Vec<ChangeEvent> = (1..=5).map(|i| created(group * 10 + i)).collect();
            let through = events[4].timestamp;
            journal.send(events.clone(), through);
            let mut got = Vec::new();
            while got.len() < events.len() {
                let batch = tokio::time::timeout(Duration::from_secs(5), follower.next())
                    .await
                    .unwrap_or_else(|_| panic!("group {group} never reached the follower"));
                got.extend(batch.unwrap().unwrap());
            }
            assert_eq!(got, events, "group {group}");
        }
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segments > 10, "{segments} segments");
    }
}
