//! The commit path without threads, in two phases that the engine pipelines:
//!
//! 1. [`Logger::log`]: stamp each batch, append the group to the log, one sync.
//! 2. [`Applier::apply`]: apply the logged group to the state machine, produce results.
//!
//! The engine runs phase 1 of group n+1 while phase 2 of group n runs on another thread.
//! [`Committer`] runs both in turn on the caller's thread: deterministic, for the
//! simulation tests and for tools.
//!
//! Invariant: a group reaches the applier only after its sync succeeded, so the state
//! (and every read of it) holds only durable batches.

use crate::clock::batch_stamp;
use crate::error::{EngineError, SubmitError};
use crate::ledger::EventResult;
use crate::shards::ShardPool;
use tally_log::{LogOptions, LogRecord, RecoverySink, Storage, VerifyReport, Wal, read_log_into};
use tally_state::StateMachine;
use tally_types::{Batch, LoadedImage, ResultCode, StateImage};

/// One batch to commit, with its requested stamp (manual clock only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub batch: Batch,
    pub now: Option<u64>,
}

/// How batches are stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Every batch of the group is stamped from this wall-clock reading (ns).
    Wall(u64),
    /// Each batch is stamped from its own `now` (missing = just after the last event).
    Manual,
}

/// A group that is durable in the log and not yet applied.
#[derive(Debug)]
pub(crate) struct LoggedGroup {
    pub records: Vec<LogRecord>,
}

/// Phase 1: owns the log, the sequence and the clock.
#[derive(Debug)]
pub(crate) struct Logger {
    wal: Wal,
    sequence_last: u64,
    timestamp_last: u64,
    failure: Option<String>,
}

impl Logger {
    /// Closes the log cleanly at shutdown ([`Wal::close`]), unless it failed.
    pub fn close(&mut self) -> Result<(), tally_log::LogError> {
        if self.failure.is_some() {
            return Ok(());
        }
        self.failure = Some("the log is closed".to_string());
        self.wal.close()
    }

    /// Stamps every submission and appends the group with one sync. Returns the logged
    /// group and, per submission, `None` if it was logged or the error it got.
    pub fn log(
        &mut self,
        submissions: Vec<Submission>,
        clock: Clock,
    ) -> (LoggedGroup, Vec<Option<SubmitError>>) {
        let mut outcomes = Vec::with_capacity(submissions.len());
        let mut records = Vec::with_capacity(submissions.len());
        if let Some(message) = &self.failure {
            let failed = submissions
                .iter()
                .map(|_| Some(SubmitError::Failed(message.clone())));
            return (LoggedGroup { records }, failed.collect());
        }
        let (sequence_before, timestamp_before) = (self.sequence_last, self.timestamp_last);
        for Submission { batch, now } in submissions {
            let requested = match clock {
                Clock::Wall(now_ns) => now_ns,
                Clock::Manual => now.unwrap_or(0),
            };
            let stamp = match requested {
                requested if requested > tally_types::NOW_NS_MAX => None,
                requested => batch_stamp(requested, self.timestamp_last, batch.len()),
            };
            let Some(stamp) = stamp else {
                outcomes.push(Some(SubmitError::TimeOutOfRange { now: requested }));
                continue;
            };
            self.sequence_last += 1;
            self.timestamp_last = stamp + batch.len().saturating_sub(1) as u64;
            records.push(LogRecord {
                sequence: self.sequence_last,
                timestamp: stamp,
                batch,
            });
            outcomes.push(None);
        }
        if records.is_empty() {
            return (LoggedGroup { records }, outcomes);
        }
        if let Err(error) = self.wal.append(&records) {
            // The page cache may have dropped the data: never retry, never answer ok.
            let message = error.to_string();
            self.failure = Some(message.clone());
            self.sequence_last = sequence_before;
            self.timestamp_last = timestamp_before;
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = Some(SubmitError::Failed(message.clone()));
            }
            records.clear();
        }
        (LoggedGroup { records }, outcomes)
    }

    /// Refuses every later write with `message` (the engine can no longer apply).
    pub fn stop(&mut self, message: &str) {
        if self.failure.is_none() {
            self.failure = Some(message.to_string());
        }
    }

    /// The message of the log failure that stopped writes, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// True when the log wants a spare segment written (see
    /// [`tally_log::Wal::spare_wanted`]); never once the log has failed.
    pub fn spare_wanted(&self) -> bool {
        self.failure.is_none() && self.wal.spare_wanted()
    }

    /// True when the spare is wanted soon enough to be worth delaying commits for.
    pub fn spare_urgent(&self) -> bool {
        self.failure.is_none() && self.wal.spare_urgent()
    }

    /// Writes one step of the spare segment; returns the zeros written. A failed step
    /// only gives up on the spare.
    pub fn write_spare_step(&mut self, bytes_max: u64) -> u64 {
        match self.failure {
            None => self.wal.write_spare_step(bytes_max).unwrap_or(0),
            Some(_) => 0,
        }
    }

    /// Starts a snapshot at `sequence` to be written off this thread (see
    /// [`tally_log::SnapshotJob`]); `None` once the log has failed.
    pub fn snapshot_job(&mut self, sequence: u64) -> Option<tally_log::SnapshotJob> {
        if self.failure.is_some() {
            return None;
        }
        self.wal.snapshot_job(sequence).ok()
    }

    /// Records a snapshot a job wrote; returns the removal of the files it makes
    /// unnecessary, to run off the log thread ([`tally_log::Retirement`]).
    pub fn snapshot_written(
        &mut self,
        sequence: u64,
    ) -> Result<Option<tally_log::Retirement>, EngineError> {
        let retired = self.wal.snapshot_written(sequence);
        if self.wal.is_poisoned() && self.failure.is_none() {
            self.failure = Some("the log failed while retiring segments".to_string());
        }
        retired.map_err(EngineError::Log)
    }

    /// Writes a snapshot of the state as of `sequence` (already applied by the caller).
    /// A failed snapshot loses nothing (the log still holds every batch); only a
    /// poisoned log stops the ledger.
    pub fn write_snapshot(&mut self, sequence: u64, image: &StateImage) -> Result<(), EngineError> {
        let written = self.wal.write_snapshot(sequence, image);
        if self.wal.is_poisoned() && self.failure.is_none() {
            self.failure = Some("the log failed while writing a snapshot".to_string());
        }
        written.map_err(EngineError::Log)
    }
}

/// Phase 2: owns the shard threads (none with one shard) and the knowledge of where the
/// state stands; the state itself is passed in (the engine keeps it under its
/// read/write lock).
#[derive(Default)]
pub(crate) struct Applier {
    pub sequence_applied: u64,
    pub events_since_snapshot: u64,
    /// The shard threads, when the state has more than one part.
    pub shards: Option<ShardPool>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("sequence_applied", &self.sequence_applied)
            .field("shards", &self.shards.is_some())
            .finish()
    }
}

impl Applier {
    /// Applies a logged group, with results as if in log order; one result list per
    /// record.
    pub fn apply(&mut self, state: &mut StateMachine, group: LoggedGroup) -> Vec<Vec<EventResult>> {
        for record in &group.records {
            assert_eq!(
                record.sequence,
                self.sequence_applied + 1,
                "groups apply in log order"
            );
            self.sequence_applied = record.sequence;
            self.events_since_snapshot += record.batch.len() as u64;
        }
        let stamps: Vec<u64> = group.records.iter().map(|r| r.timestamp).collect();
        let codes: Vec<Vec<ResultCode>> = match &self.shards {
            Some(pool) => pool.apply(state, group.records),
            None => {
                // One run for the whole group: its prefetching spans the records, which
                // matters when each is a single payment.
                let batches: Vec<_> = group
                    .records
                    .iter()
                    .map(|record| (record.timestamp, &record.batch))
                    .collect();
                state.apply_run(&batches)
            }
        };
        stamps
            .into_iter()
            .zip(codes)
            .map(|(timestamp, codes)| event_results(timestamp, codes))
            .collect()
    }

    /// True when a snapshot is due after `interval` events (0 = never); resets the count.
    pub fn snapshot_due(&mut self, interval: u64) -> bool {
        if interval == 0 || self.events_since_snapshot < interval {
            return false;
        }
        self.events_since_snapshot = 0;
        true
    }
}

fn event_results(timestamp: u64, codes: Vec<ResultCode>) -> Vec<EventResult> {
    codes
        .into_iter()
        .enumerate()
        .map(|(index, code)| EventResult {
            code,
            timestamp: if code.is_ok() {
                timestamp + index as u64
            } else {
                0
            },
        })
        .collect()
}

/// Opens the log over `storage` and rebuilds the state: the newest valid snapshot, then
/// every logged batch after it, in order. The log is read on a second thread and
/// replayed on the calling one as it is read ([`read_and_replay`]), so reading and
/// checksumming overlap with the replay, and the log is never whole in memory.
pub(crate) fn recover(
    storage: Box<dyn Storage>,
    options: LogOptions,
    capacity: Capacity,
    shards: Option<&ShardPool>,
) -> Result<(Logger, Applier, StateMachine, Recovery), EngineError> {
    let started = std::time::Instant::now();
    let (opened, replayed) = read_and_replay(
        |sink| Wal::open_with_sink(storage, options, sink),
        capacity,
        shards,
    )?;
    // An error reading the log comes first: what was replayed before it is dropped.
    let (wal, repairs) = opened?;
    let (state, mut recovery) = replayed?;
    let sequence_last = recovery.sequence_last;
    recovery.torn_tail_bytes_cut = repairs.torn_tail_bytes_cut;
    recovery.torn_segment_removed = repairs.torn_segment_removed;
    assert_eq!(
        repairs.records, recovery.batches,
        "every record read was replayed"
    );
    recovery.elapsed = started.elapsed();
    assert_eq!(
        wal.next_sequence(),
        sequence_last + 1,
        "log and replay agree"
    );
    let logger = Logger {
        wal,
        sequence_last,
        timestamp_last: state.last_timestamp(),
        failure: None,
    };
    let applier = Applier {
        sequence_applied: sequence_last,
        events_since_snapshot: 0,
        shards: None,
    };
    Ok((logger, applier, state, recovery))
}

/// What the replay built: the state and what it replayed, or why it stopped.
type ReplayOutcome = Result<(StateMachine, Recovery), EngineError>;

/// Runs `read`, which reads a log and hands what it reads to a sink, on a second
/// thread, and replays what it hands over on the calling thread as it comes (groups of
/// about [`REPLAY_GROUP_EVENTS`] events, at most [`REPLAY_GROUPS_IN_FLIGHT`] waiting).
/// The replay stays on the calling thread because it may drive the shard pool, which
/// is not shared between threads. Returns what `read` returned and what the replay
/// built; when `read` failed, the caller must drop the latter.
fn read_and_replay<T: Send, E: Send>(
    read: impl FnOnce(&mut dyn RecoverySink) -> Result<T, E> + Send,
    capacity: Capacity,
    shards: Option<&ShardPool>,
) -> Result<(Result<T, E>, ReplayOutcome), EngineError> {
    let (sender, receiver) = crossbeam_channel::bounded(REPLAY_GROUPS_IN_FLIGHT);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("tally-read-log".into())
            .spawn_scoped(scope, move || {
                let mut sink = GroupSender {
                    sender: Some(sender),
                    group: Vec::new(),
                    group_events: 0,
                };
                let read = read(&mut sink);
                if read.is_ok() {
                    sink.flush();
                }
                // Dropping the sink closes the channel: the replay ends once it has
                // applied every group sent.
                read
            })
            .map_err(|error| EngineError::Thread(error.to_string()))?;
        // Returning drops the receiver: a reader still sending then stops handing
        // groups over and only finishes its checks.
        let replayed = replay(receiver, capacity, shards);
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((read, replayed))
    })
}

/// Reads the ledger in `dir` without changing it (`tally_log::read_log`: every
/// checksum checked, nothing repaired, no file made) and replays it as [`Ledger::open`]
/// would, reading and replaying on two threads: what the `tally` reading commands show.
/// The caller holds the directory's lock.
///
/// [`Ledger::open`]: crate::Ledger::open
pub fn read_only(dir: &std::path::Path) -> Result<(VerifyReport, StateMachine), EngineError> {
    let (read, replayed) =
        read_and_replay(|sink| read_log_into(dir, sink), Capacity::default(), None)?;
    let report = read?;
    let (state, _) = replayed?;
    Ok((report, state))
}

/// What opening a ledger recovered, and how long it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The snapshot loaded (the last sequence it includes), if any.
    pub snapshot_sequence: Option<u64>,
    /// Logged batches replayed after it, and their events.
    pub batches: u64,
    pub events: u64,
    /// The last sequence in the log (0 for an empty log).
    pub sequence_last: u64,
    /// Bytes of a torn write cut from the log's end (see `tally_log::Repairs`).
    pub torn_tail_bytes_cut: u64,
    /// Whether the last segment was removed because its header never reached the disk.
    pub torn_segment_removed: bool,
    /// From the start of open to the state rebuilt: reading, checking, loading the
    /// snapshot and replaying, the last two overlapping the first.
    pub elapsed: std::time::Duration,
}

/// Room to reserve in the state at start-up (see `StateMachine::with_capacity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub accounts: usize,
    pub transfers: usize,
    /// Parts to split the state into, one per shard (0 counts as 1).
    pub parts: usize,
}

/// Events replayed per group: large enough that the prefetching across batches and (on
/// shard threads) planning and hand-offs are amortised, small enough to bound memory.
const REPLAY_GROUP_EVENTS: usize = 65_536;

/// Groups read ahead of the replay, at most: enough to keep it busy while the reader
/// checks the next, and a bound on the memory a fast reader can fill.
const REPLAY_GROUPS_IN_FLIGHT: usize = 2;

/// What the reader thread hands the replaying thread.
enum Replayed {
    /// The snapshot to start from, first and once.
    Start(Option<(u64, LoadedImage)>),
    /// The next records, consecutive.
    Records(Vec<LogRecord>),
}

/// Cuts the records recovery reads into groups for the replaying thread.
struct GroupSender {
    /// `None` once the replay has stopped (on an error it reports itself).
    sender: Option<crossbeam_channel::Sender<Replayed>>,
    group: Vec<LogRecord>,
    group_events: usize,
}

impl GroupSender {
    fn send(&mut self, message: Replayed) {
        if let Some(sender) = &self.sender
            && sender.send(message).is_err()
        {
            self.sender = None;
        }
    }

    fn flush(&mut self) {
        if !self.group.is_empty() {
            let group = std::mem::take(&mut self.group);
            self.group_events = 0;
            self.send(Replayed::Records(group));
        }
    }
}

impl RecoverySink for GroupSender {
    fn start(&mut self, snapshot: Option<(u64, LoadedImage)>) {
        self.send(Replayed::Start(snapshot));
    }

    fn record(&mut self, record: LogRecord) {
        // An empty batch counts as one, so that a run of them still makes groups.
        self.group_events += record.batch.len().max(1);
        self.group.push(record);
        if self.group_events >= REPLAY_GROUP_EVENTS {
            self.flush();
        }
    }
}

/// The replay: builds the state from the snapshot, then applies each group as it
/// arrives, as the engine applied them live: on the shard threads when there are some
/// (results do not depend on how the log is cut into groups).
fn replay(
    receiver: crossbeam_channel::Receiver<Replayed>,
    capacity: Capacity,
    shards: Option<&ShardPool>,
) -> Result<(StateMachine, Recovery), EngineError> {
    let Ok(Replayed::Start(snapshot)) = receiver.recv() else {
        // The log could not be read; its error is the one reported.
        return Err(EngineError::Recovery("the log was not read".into()));
    };
    let snapshot_sequence = snapshot.as_ref().map(|(sequence, _)| *sequence);
    let (mut state, mut sequence_last) = match snapshot {
        Some((sequence, image)) => {
            let state = StateMachine::from_loaded_image_in_parts(image, capacity.parts.max(1))
                .map_err(|error| EngineError::Recovery(error.to_string()))?;
            (state, sequence)
        }
        None => (
            StateMachine::with_capacity_in_parts(
                capacity.accounts,
                capacity.transfers,
                capacity.parts.max(1),
            ),
            0,
        ),
    };
    let mut recovery = Recovery {
        snapshot_sequence,
        ..Recovery::default()
    };
    let mut timestamp_last = state.last_timestamp();
    for message in receiver {
        let Replayed::Records(group) = message else {
            unreachable!("the snapshot comes once, first");
        };
        for record in &group {
            if record.sequence != sequence_last + 1 || record.timestamp <= timestamp_last {
                return Err(EngineError::Recovery(format!(
                    "log record {} does not follow {} (timestamp {} after {})",
                    record.sequence, sequence_last, record.timestamp, timestamp_last
                )));
            }
            sequence_last = record.sequence;
            timestamp_last = record
                .timestamp
                .saturating_add(record.batch.len().saturating_sub(1) as u64);
            recovery.batches += 1;
            recovery.events += record.batch.len() as u64;
        }
        replay_group(&mut state, group, shards);
    }
    assert_eq!(
        state.last_timestamp(),
        timestamp_last,
        "replay reached the log's end"
    );
    recovery.sequence_last = sequence_last;
    Ok((state, recovery))
}

fn replay_group(state: &mut StateMachine, group: Vec<LogRecord>, shards: Option<&ShardPool>) {
    if group.is_empty() {
        return;
    }
    match shards {
        Some(pool) => {
            pool.apply(state, group);
        }
        None => {
            let batches: Vec<_> = group
                .iter()
                .map(|record| (record.timestamp, &record.batch))
                .collect();
            state.replay(&batches);
        }
    }
}

/// Both phases on the caller's thread: log a group, then apply it. Deterministic given
/// its inputs, so a simulation can drive it over a fault-injecting storage.
#[derive(Debug)]
pub struct Committer {
    logger: Logger,
    applier: Applier,
    state: StateMachine,
    snapshot_events_interval: u64,
}

impl Committer {
    /// Opens (recovers) a ledger over `storage`. No directory lock: the caller owns the
    /// storage exclusively.
    pub fn open(
        storage: Box<dyn Storage>,
        options: LogOptions,
        snapshot_events_interval: u64,
    ) -> Result<Committer, EngineError> {
        let (logger, applier, state, _) = recover(storage, options, Capacity::default(), None)?;
        Ok(Committer {
            logger,
            applier,
            state,
            snapshot_events_interval,
        })
    }

    /// Commits a group: one result per submission, in order. `Ok` results are durable.
    pub fn commit(
        &mut self,
        submissions: Vec<Submission>,
        clock: Clock,
    ) -> Vec<Result<Vec<EventResult>, SubmitError>> {
        let (group, outcomes) = self.logger.log(submissions, clock);
        let mut applied = self.applier.apply(&mut self.state, group).into_iter();
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Some(error) => Err(error),
                None => Ok(applied.next().expect("one result list per logged record")),
            })
            .collect();
        assert!(applied.next().is_none());
        if self.applier.snapshot_due(self.snapshot_events_interval) {
            let image = self.state.image();
            // A failed snapshot is not a lost batch; a poisoned log shows in `failure`.
            let _ = self
                .logger
                .write_snapshot(self.applier.sequence_applied, &image);
        }
        // The spare, when the log wants one, is written here at once: deterministic.
        while self.logger.spare_wanted() {
            self.logger
                .write_spare_step(tally_log::SPARE_STEP_BYTES_MAX);
        }
        results
    }

    /// The state, holding exactly the committed batches.
    pub fn state(&self) -> &StateMachine {
        &self.state
    }

    /// The log failure that stopped writes, if any.
    pub fn failure(&self) -> Option<&str> {
        self.logger.failure()
    }

    /// Closes the log cleanly (see `tally_log::Wal::close`); no commits after it.
    pub fn close(&mut self) -> Result<(), tally_log::LogError> {
        self.logger.close()
    }
}
