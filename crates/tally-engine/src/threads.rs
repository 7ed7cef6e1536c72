//! The two commit threads, pipelined:
//!
//! * the **log thread** takes every waiting batch, stamps it and appends the group to
//!   the log with one sync ([`Logger::log`]);
//! * the **apply thread** applies each synced group under the state write lock and
//!   answers ([`Applier::apply`]).
//!
//! While group n is applied, group n+1 is being synced. The hand-off is a bounded
//! channel of [`GROUPS_IN_FLIGHT_MAX`] groups, so a slow applier pushes back on the log
//! thread, which pushes back on submitters through the bounded queue. A small group
//! that finds the apply thread idle is applied by the log thread itself, right after
//! its sync ([`LogThread::apply_here`]): the work of applying a group ([`ApplyStage`])
//! is held by one thread at a time, and the applier's sequence keeps the log order.

use crate::clock::wall_clock_ns;
use crate::commit::{Applier, Clock, LoggedGroup, Logger, Submission};
use crate::events::Journal;
use crate::pacing::CommitPacer;
use crate::request::{Answered, EventResult, Reply, Request, transfer_balances};
use crate::shared::Shared;
use crate::snapshot_source::FrozenSource;
use crate::tables::TableMaker;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tally_log::SyncMode;
use tally_state::FrozenState;
use tally_types::ChangeEvent;

/// Synced groups waiting for the apply thread.
pub(crate) const GROUPS_IN_FLIGHT_MAX: usize = 2;

/// A synced group on its way to the apply thread, with the replies of its batches.
pub(crate) struct SyncedGroup {
    group: LoggedGroup,
    /// Per logged batch: its reply, and whether it asked for balances.
    replies: Vec<(Reply, bool)>,
    started: Instant,
}

/// A frozen copy of the state the apply thread took, for the log thread to have written.
/// Freezing shares the stored transfers instead of copying them; the image is built on
/// the snapshot thread.
pub(crate) type SnapshotImage = (u64, FrozenState);

impl SyncedGroup {
    /// Events in the group, over all its batches.
    fn events(&self) -> usize {
        self.group.records.iter().map(|r| r.batch.len()).sum()
    }
}

/// The largest group the log thread applies itself when the apply thread is idle: its
/// apply (tens of microseconds) costs the next sync less than the hand-off would cost
/// the group. A larger one is worth overlapping with the next sync: with a limit of 128
/// events, 256 closed-loop callers (groups of about 130) committed less than with none
/// (docs/performance.md, "Group commit pacing").
const APPLY_HERE_EVENTS_MAX: usize = 32;

/// How long an idle log thread sleeps before re-checking the queue. Submitters unpark
/// it, so this bounds only a missed wake-up, never normal latency.
const IDLE_PARK: Duration = Duration::from_millis(5);

/// A spare step is fitted into a pacing pause only if at least this much of it is left:
/// below it, the step's fixed cost (one `fdatasync`) would overrun the pause.
const SPARE_STEP_PAUSE_MIN: Duration = Duration::from_micros(300);
/// The smallest spare step worth a sync, and the first estimate of how many zeros a
/// step writes per microsecond (it is then measured).
const SPARE_STEP_BYTES_MIN: u64 = 16 * 1024;
pub(crate) const SPARE_STEP_BYTES_PER_US_INITIAL: f64 = 100.0;

/// The log thread: stamps, logs and syncs groups (phase 1).
pub(crate) struct LogThread {
    pub shared: Arc<Shared>,
    pub logger: Logger,
    /// Closed at shutdown ([`LogThread::snapshot_at_shutdown`]).
    pub to_apply: Option<SyncSender<SyncedGroup>>,
    /// The apply stage, which this thread takes for a small group when it is free
    /// ([`LogThread::apply_here`]).
    pub stage: Arc<Mutex<ApplyStage>>,
    pub snapshots: Receiver<SnapshotImage>,
    /// What the apply thread leaves as it exits: the final state frozen, when a
    /// snapshot is due at shutdown ([`ApplyStage::image_at_shutdown`]).
    pub apply_exited: Receiver<Option<SnapshotImage>>,
    /// The snapshot being written on its own thread, if any: at most one at a time.
    pub snapshot_in_flight: Option<JoinHandle<Result<u64, tally_log::LogError>>>,
    /// Old segments and snapshots being removed after a snapshot (on their own thread:
    /// deleting gigabytes stalled the log thread's syncs for up to 1.9 s).
    pub retirement_in_flight: Option<JoinHandle<Result<usize, tally_log::LogError>>>,
    /// Zeros a spare step wrote per microsecond, measured (moving average): sizes the
    /// next step to the pause it must fit in.
    pub spare_step_bytes_per_us: f64,
    /// The group commit pacing interval, following what the commits show of the host.
    pub pacer: CommitPacer,
}

impl LogThread {
    pub fn run(mut self) {
        let mut requests: Vec<Request> = Vec::new();
        // When the last commit started, and whether it carried more than one submission.
        let mut last_commit: Option<(Instant, bool)> = None;
        let mut idle_since: Option<Instant> = None;
        loop {
            self.tend_snapshots(false);
            self.pace(last_commit);
            self.take_group(&mut requests);
            if requests.is_empty() {
                if self.shared.draining.load(Ordering::SeqCst) && self.shared.queue.is_empty() {
                    self.finish_snapshots();
                    self.snapshot_at_shutdown();
                    if let Some(retirement) = self.retirement_in_flight.take() {
                        let _ = retirement.join();
                    }
                    // Every admitted batch is logged and synced. If the marker cannot be
                    // written, recovery just stays as after a crash (a damaged newest
                    // frame cut as torn): nothing acknowledged depends on it.
                    let _ = self.logger.close();
                    return;
                }
                if self.expiry_due() {
                    requests.push(pulse());
                    let _ = self.log_group(&mut requests);
                    continue;
                }
                // After a quiet spell, an idle log thread writes the spare in full steps.
                let idle_for = idle_since.get_or_insert_with(Instant::now).elapsed();
                if idle_for >= IDLE_PARK && self.spare_wanted() {
                    self.write_spare_step(tally_log::SPARE_STEP_BYTES_MAX);
                } else {
                    std::thread::park_timeout(IDLE_PARK);
                }
                continue;
            }
            idle_since = None;
            last_commit = Some((Instant::now(), requests.len() > 1));
            if self.log_group(&mut requests).is_err() {
                // The apply thread is gone (it panicked). Log nothing more: every later
                // submitter gets `Failed` at once instead of waiting for an answer.
                self.logger.stop("the apply thread stopped");
                self.publish_failure();
            }
            if self.spare_wanted() && self.logger.spare_urgent() {
                // The segment is three quarters full: a step after every commit, pause
                // or not, so the spare is ready before the segment is.
                self.write_spare_step(tally_log::SPARE_STEP_BYTES_MAX);
            }
        }
    }

    /// At shutdown: waits for the snapshot in flight, then writes one from the newest
    /// image still waiting and waits for it too, so that no snapshot thread writes into
    /// the directory after the ledger has let it go (and a reopen finds the newest).
    /// The loop ends: nothing more is logged, so the apply thread has at most
    /// [`GROUPS_IN_FLIGHT_MAX`] groups left to apply.
    fn finish_snapshots(&mut self) {
        self.tend_snapshots(true);
        while self.snapshot_in_flight.is_some() {
            self.tend_snapshots(true);
        }
    }

    /// At shutdown, after [`LogThread::finish_snapshots`]: closes the apply channel, so
    /// that the apply thread applies the groups left in it and exits, and writes the
    /// image it leaves (the final state, when one is due at shutdown) or else the
    /// newest one its last groups sent, and waits for it. Nothing is logged after
    /// that image, so the next open replays nothing. The apply thread's exit comes
    /// whatever happens to it: a panic drops its end of the channel.
    fn snapshot_at_shutdown(&mut self) {
        drop(self.to_apply.take());
        let last = self.apply_exited.recv().ok().flatten();
        let waiting = self.snapshots.try_iter().last();
        if let Some((sequence, frozen)) = last.or(waiting) {
            self.start_snapshot(sequence, frozen);
            self.finish_snapshots();
        }
    }

    /// Snapshots are written on a thread of their own, so a multi-gigabyte image never
    /// stops appends: start one for the newest image waiting, and record it once
    /// written. Images that arrive while one is in flight are dropped (the next
    /// interval brings a newer one). `finish` waits for the one in flight (shutdown).
    fn tend_snapshots(&mut self, finish: bool) {
        let done = self
            .snapshot_in_flight
            .take_if(|job| finish || job.is_finished());
        // A failed snapshot loses nothing: the log still has every batch. It is
        // counted, never silent: replay at start-up grows until one succeeds.
        if let Some(job) = done {
            let metrics = &self.shared.metrics;
            match job.join() {
                Ok(Ok(sequence)) => {
                    if let Ok(Some(retirement)) = self.logger.snapshot_written(sequence) {
                        // One at a time: a retirement still running when the next
                        // snapshot is done (gigabytes behind) is waited for here.
                        if let Some(previous) = self.retirement_in_flight.take() {
                            let _ = previous.join();
                        }
                        // A retirement that fails, or whose thread cannot start, loses
                        // nothing: the files it leaves are ones recovery skips, listed
                        // again at the next open and removed by a later retirement.
                        self.retirement_in_flight = std::thread::Builder::new()
                            .name("tally-retire".into())
                            .spawn(move || retirement.run())
                            .ok();
                    }
                    self.publish_failure();
                    metrics.snapshots_written.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(_)) | Err(_) => {
                    metrics.snapshots_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let newest = self.snapshots.try_iter().last();
        if let Some((sequence, frozen)) = newest.filter(|_| self.snapshot_in_flight.is_none()) {
            self.start_snapshot(sequence, frozen);
        }
    }

    /// Starts writing `frozen`, the state as of `sequence`, on a snapshot thread (none
    /// may be in flight).
    fn start_snapshot(&mut self, sequence: u64, frozen: FrozenState) {
        debug_assert!(self.snapshot_in_flight.is_none());
        if let Some(job) = self.logger.snapshot_job(sequence) {
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("tally-snapshot".into())
                .spawn(move || {
                    let writing = Instant::now();
                    let written = job.write(&FrozenSource::new(&frozen));
                    let write_ms = u64::try_from(writing.elapsed().as_millis()).unwrap_or(u64::MAX);
                    shared
                        .metrics
                        .snapshot_write_ms_max
                        .fetch_max(write_ms, Ordering::Relaxed);
                    written
                });
            self.snapshot_in_flight = spawned.ok();
        }
    }

    /// Group commit pacing: after a commit that several submissions shared, waits until
    /// the pacer's interval has passed since it started (zero unless the machine has
    /// been standing still: `crate::pacing`), so that syncs come at most once per
    /// interval while submitters are concurrent and the batches arriving meanwhile share
    /// the next one. After a commit that carried one submission alone (a lone caller
    /// waiting for each answer before the next request: nothing would share its sync)
    /// or after a quiet spell, the next commit starts at once.
    fn pace(&mut self, last_commit: Option<(Instant, bool)>) {
        if self.shared.config.sync == SyncMode::UnsafeNoSync {
            return;
        }
        let Some((at, true)) = last_commit else {
            return;
        };
        let now = Instant::now();
        let interval = self.pacer.interval(now);
        let metrics = &self.shared.metrics;
        let interval_us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        metrics
            .commit_interval_us
            .store(interval_us, Ordering::Relaxed);
        let next = at + interval;
        if next > now {
            self.spare_step_within(next - now);
            let left = next.saturating_duration_since(Instant::now());
            std::thread::sleep(left);
            let woke = Instant::now();
            self.pacer.paused_until(next, woke);
            let metrics = &self.shared.metrics;
            metrics.commit_pauses.fetch_add(1, Ordering::Relaxed);
            let waited_us = u64::try_from((woke - now).as_micros()).unwrap_or(u64::MAX);
            metrics
                .commit_pause_us
                .fetch_add(waited_us, Ordering::Relaxed);
        }
    }

    /// True when, on the wall clock, a pending transfer's expiry instant has passed and
    /// no batch has come to release it: an idle ledger logs an empty batch (a pulse)
    /// then, so expiries happen, and their change events appear, at their instant.
    fn expiry_due(&self) -> bool {
        let config = &self.shared.config;
        config.expire_when_idle
            && !config.manual_clock
            && self.logger.failure().is_none()
            && self
                .logger
                .next_expiry()
                .is_some_and(|at| at <= wall_clock_ns())
    }

    /// True when the log wants a spare segment written and the ledger is configured to.
    fn spare_wanted(&self) -> bool {
        self.shared.config.preallocate_segments && self.logger.spare_wanted()
    }

    /// Writes a step of the spare sized to take half of `pause`, if one fits: spare I/O
    /// then happens while the log thread would sleep anyway (half, because a sync's
    /// time varies), not while a commit waits, and never in the disk queue next to a
    /// commit's `fdatasync`.
    fn spare_step_within(&mut self, pause: Duration) {
        if pause < SPARE_STEP_PAUSE_MIN || !self.spare_wanted() {
            return;
        }
        let fits = pause.as_micros() as f64 / 2.0 * self.spare_step_bytes_per_us;
        let bytes = (fits as u64).min(tally_log::SPARE_STEP_BYTES_MAX);
        if bytes >= SPARE_STEP_BYTES_MIN {
            self.write_spare_step(bytes);
        }
    }

    fn write_spare_step(&mut self, bytes_max: u64) {
        let started = Instant::now();
        let bytes = self.logger.write_spare_step(bytes_max);
        let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let rate = bytes as f64 / took_us.max(1) as f64;
        self.spare_step_bytes_per_us = 0.8 * self.spare_step_bytes_per_us + 0.2 * rate;
        let metrics = &self.shared.metrics;
        metrics.spare_steps.fetch_add(1, Ordering::Relaxed);
        metrics.spare_step_bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics.spare_step_us.fetch_add(took_us, Ordering::Relaxed);
    }

    /// Takes waiting requests until the queue is empty or the group is full.
    fn take_group(&mut self, requests: &mut Vec<Request>) {
        let events_max = self.shared.config.group_events_max;
        let mut events = 0;
        while events < events_max {
            let Some(request) = self.shared.queue.pop() else {
                break;
            };
            let queued = self
                .shared
                .queued_events
                .fetch_sub(request.batch.len(), Ordering::AcqRel);
            debug_assert!(queued >= request.batch.len(), "every queued event counted");
            events += request.batch.len();
            requests.push(request);
        }
        if !requests.is_empty() {
            self.shared.room.freed();
        }
    }

    fn log_group(&mut self, requests: &mut Vec<Request>) -> Result<(), ()> {
        let started = requests
            .iter()
            .map(|r| r.enqueued)
            .min()
            .unwrap_or_else(Instant::now);
        let clock = if self.shared.config.manual_clock {
            Clock::Manual
        } else {
            Clock::Wall(wall_clock_ns())
        };
        let mut replies = Vec::with_capacity(requests.len());
        let submissions = requests
            .drain(..)
            .map(|request| {
                replies.push((request.reply, request.balances));
                Submission {
                    batch: request.batch,
                    now: request.now,
                }
            })
            .collect();
        let logging = Instant::now();
        // Asked only when a batch would collide with an expiry instant: rare but for
        // a manual clock, so the read lock is rarely taken.
        let state = &self.shared.state;
        let settled = |at, added| {
            let state = state.read();
            state.last_timestamp() >= added && !state.expires_at(at)
        };
        let (group, outcomes) = self.logger.log(submissions, clock, &settled);
        if !group.records.is_empty() {
            let logged = Instant::now();
            self.pacer.commit_took(logged - logging, logged);
            let stalls = self.pacer.stalls();
            self.shared
                .metrics
                .commit_stalls
                .store(stalls, Ordering::Relaxed);
        }
        self.publish_failure();
        let mut logged_replies = Vec::with_capacity(group.records.len());
        for ((reply, balances), outcome) in replies.into_iter().zip(outcomes) {
            match outcome {
                None => logged_replies.push((reply, balances)),
                Some(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        if group.records.is_empty() {
            return Ok(());
        }
        let synced = SyncedGroup {
            group,
            replies: logged_replies,
            started,
        };
        match self.apply_here(synced) {
            Ok(()) => Ok(()),
            Err(synced) => match &self.to_apply {
                Some(to_apply) => to_apply.send(synced).map_err(|_| ()),
                None => Err(()),
            },
        }
    }

    /// Applies a small group on this thread when the apply thread is idle with every
    /// earlier group applied; otherwise gives it back to be sent. The log thread has
    /// just come back from the sync and holds a core, while waking the apply thread
    /// would wait for one: on a busy machine that hand-off was a large part of a
    /// payment's latency. A large group goes to the apply thread, so that its apply
    /// overlaps the next sync. If the apply panics (a broken invariant), nothing more is
    /// logged, as when the apply thread dies.
    fn apply_here(&mut self, synced: SyncedGroup) -> Result<(), SyncedGroup> {
        let events = synced.events();
        if events > APPLY_HERE_EVENTS_MAX {
            return Err(synced);
        }
        let Some(mut stage) = self.stage.try_lock() else {
            return Err(synced);
        };
        let first = synced.group.records.first().map(|r| r.sequence);
        if !first.is_some_and(|sequence| stage.may_apply_here(sequence, events)) {
            return Err(synced);
        }
        // Counted before the apply answers, so that a submitter holding its answer
        // reads a count that includes its group.
        self.shared
            .metrics
            .groups_applied_by_log_thread
            .fetch_add(1, Ordering::Relaxed);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stage.apply_group(synced, events);
        }));
        drop(stage);
        if applied.is_err() {
            self.logger.stop("the apply stage panicked");
            self.publish_failure();
        }
        Ok(())
    }

    fn publish_failure(&self) {
        if let Some(message) = self.logger.failure() {
            let mut failure = self.shared.failure.lock();
            if failure.is_none() {
                *failure = Some(message.to_string());
            }
        }
    }
}

/// An empty batch that only moves time forward; nobody waits for its answer.
fn pulse() -> Request {
    let (reply, _) = tokio::sync::oneshot::channel();
    Request {
        batch: tally_types::Batch::CreateTransfers(Vec::new()),
        now: None,
        reply,
        balances: false,
        enqueued: Instant::now(),
    }
}

/// What applying a group needs: the applier, where its change events and snapshots
/// go, and the table maker. Held by one thread at a time, behind a mutex: the apply
/// thread's, or the log thread's for a small group that it applies itself
/// ([`LogThread::apply_here`]). The log order is kept by the applier's sequence: a
/// group is applied only right after the one before it.
pub(crate) struct ApplyStage {
    pub shared: Arc<Shared>,
    pub applier: Applier,
    pub snapshots: std::sync::mpsc::Sender<SnapshotImage>,
    /// The journal thread, when change events are on.
    pub journal: Option<Journal>,
    /// Prepares the tables user-data indexes grow into.
    pub tables: TableMaker,
    /// True while a group is being applied; left true by a panic, so that the log
    /// thread never applies another group over a state a broken invariant left half
    /// changed (the group goes to the channel, which the dead apply thread closed).
    pub unfinished: bool,
}

/// The apply thread: applies synced groups and answers (phase 2).
pub(crate) struct ApplyThread {
    pub stage: Arc<Mutex<ApplyStage>>,
    pub from_log: Receiver<SyncedGroup>,
    /// Where the apply thread leaves, as it exits, the final state frozen when a
    /// snapshot is due at shutdown ([`LogThread::snapshot_at_shutdown`]).
    pub exit: SyncSender<Option<SnapshotImage>>,
}

impl ApplyThread {
    pub fn run(self) {
        while let Ok(group) = self.from_log.recv() {
            let events = group.events();
            self.stage.lock().apply_group(group, events);
        }
        // The log thread closed the channel: every logged group is applied.
        let image = self.stage.lock().image_at_shutdown();
        let _ = self.exit.send(image);
    }
}

impl ApplyStage {
    /// Whether the log thread may apply a group of `events` whose first record is
    /// `sequence`: it comes next in the log, and no snapshot falls due with it (the
    /// freeze and the journal's sync stay off the log thread).
    fn may_apply_here(&self, sequence: u64, events: usize) -> bool {
        let interval = self.shared.config.snapshot_events_interval;
        !self.unfinished
            && self
                .applier
                .takes_next_without_snapshot(sequence, events, interval)
    }

    /// Applies one synced group of `events` events under the state write lock, answers
    /// its submitters, hands its change events to the journal and, when one is due, a
    /// frozen state to the log thread for a snapshot.
    fn apply_group(&mut self, synced: SyncedGroup, events: usize) {
        debug_assert_eq!(events, synced.events());
        self.unfinished = true;
        let SyncedGroup {
            group,
            replies,
            started,
        } = synced;
        let batches = group.records.len();
        let wants_balances = replies.iter().any(|(_, balances)| *balances);
        // Balances come from the change events: captured for this group alone when
        // the ledger keeps no journal.
        let capture_for_balances = wants_balances && self.journal.is_none();
        let (answers, changes, captured) = {
            let mut state = self.shared.state.write();
            if capture_for_balances {
                state.set_change_capture(true);
            }
            let answers = self.applier.apply(&mut state, group);
            self.tables.tend(&mut state);
            let changes = self.journal.as_ref().map(|journal| {
                let events = state.take_changes_into(journal.spare());
                (events, state.last_timestamp())
            });
            let captured = capture_for_balances.then(|| {
                let events = state.take_changes();
                state.set_change_capture(false);
                events
            });
            (answers, changes, captured)
        };
        self.record_metrics(batches, events, &answers, started);
        assert_eq!(answers.len(), replies.len(), "one answer per logged batch");
        let group_events: &[ChangeEvent] = match (&captured, &changes) {
            (Some(events), _) | (None, Some((events, _))) => events,
            (None, None) => &[],
        };
        for ((reply, balances), results) in replies.into_iter().zip(answers) {
            let balances = if balances {
                results
                    .iter()
                    .map(|result| transfer_balances(group_events, result))
                    .collect()
            } else {
                Vec::new()
            };
            // A submitter that gave up waiting dropped its receiver; its batch is in.
            let _ = reply.send(Ok(Answered { results, balances }));
        }
        if let (Some(journal), Some((events, through))) = (&self.journal, changes) {
            journal.send(events, through);
        }
        if self
            .applier
            .snapshot_due(self.shared.config.snapshot_events_interval)
        {
            self.freeze_for_snapshot();
        }
        self.unfinished = false;
    }

    /// Freezes the state and sends it to the log thread, which has it written.
    fn freeze_for_snapshot(&mut self) {
        if let Some(image) = self.freeze() {
            let _ = self.snapshots.send(image);
        }
    }

    /// The final state frozen, once every logged group is applied, when at least
    /// `Config::snapshot_at_shutdown_events` events were applied since the last
    /// snapshot; `None` after a group left unfinished (a panic).
    fn image_at_shutdown(&mut self) -> Option<SnapshotImage> {
        let due_after = self.shared.config.snapshot_at_shutdown_events;
        if self.unfinished || due_after == 0 || self.applier.events_since_snapshot < due_after {
            return None;
        }
        self.applier.events_since_snapshot = 0;
        self.freeze()
    }

    /// The state frozen as of the last group applied; `None` if the journal cannot
    /// hold its events on disk first (the log up to a snapshot may be retired once it
    /// is written).
    fn freeze(&mut self) -> Option<SnapshotImage> {
        let state = self.shared.state.read();
        // Timed once the lock is held: the freeze alone, not a reader's turn.
        let freezing = Instant::now();
        let frozen = state.freeze();
        drop(state);
        let freeze_us = u64::try_from(freezing.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared
            .metrics
            .snapshot_freeze_us_max
            .fetch_max(freeze_us, Ordering::Relaxed);
        self.journal
            .as_ref()
            .is_none_or(|journal| journal.sync().is_ok())
            .then_some((self.applier.sequence_applied, frozen))
    }

    fn record_metrics(
        &self,
        batches: usize,
        events: usize,
        answers: &[Vec<EventResult>],
        started: Instant,
    ) {
        let metrics = &self.shared.metrics;
        for answer in answers {
            metrics.count_results(answer.iter().map(|r| r.code));
        }
        metrics
            .batches_committed
            .fetch_add(batches as u64, Ordering::Relaxed);
        metrics
            .events_committed
            .fetch_add(events as u64, Ordering::Relaxed);
        metrics.groups_committed.fetch_add(1, Ordering::Relaxed);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = metrics.commit_latency_us.lock().record(latency_us.max(1));
        let _ = metrics.group_events.lock().record((events as u64).max(1));
    }
}
