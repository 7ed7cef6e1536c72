//! Recovery: rebuilds the state from the newest valid snapshot and the log after it,
//! reading the log on one thread and replaying it on another as it is read. Used when a
//! ledger opens, by the read-only inspection (`crate::inspect`) and by the simulation
//! committer.

use crate::commit::{Applier, Logger};
use crate::error::{EngineError, RecoveryError};
use crate::shards::ShardPool;
use tally_log::events::EventJournal;
use tally_log::{
    LogOptions, LogRecord, RecoverySink, SnapshotStream, Storage, VerifyReport, Wal, read_log_into,
};
use tally_state::{ImageError, ImageSource, ImageStart, Layout, Placement, StateMachine};
use tally_types::packed::UnpackedRun;
use tally_types::{Account, ChangeEvent, LoadedImage, StateImage, Transfer};

/// Opens the change-event journal, checking its newest segment (recovery brings the
/// journal up to date with the log).
pub(crate) type OpenJournal = Box<dyn FnOnce() -> Result<EventJournal, EngineError> + Send>;

/// What [`recover`] rebuilt: the log to append to and the applier after it, the state,
/// what it took, and the journal when there is one.
pub(crate) type Recovered = (
    Logger,
    Applier,
    StateMachine,
    Recovery,
    Option<EventJournal>,
);

/// Opens the log over `storage` and rebuilds the state: the newest valid snapshot, then
/// every logged batch after it, in order. The log is read on a second thread and
/// replayed on the calling one as it is read ([`read_and_replay`]), so reading and
/// checksumming overlap with the replay, and the log is never whole in memory. The
/// journal, if any, opens on a thread of its own while the snapshot loads
/// ([`load_beside_journal`]); the log's replay waits for it.
pub(crate) fn recover(
    storage: Box<dyn Storage>,
    options: LogOptions,
    capacity: Capacity,
    shards: Option<&ShardPool>,
    open_journal: Option<OpenJournal>,
) -> Result<Recovered, EngineError> {
    let started = std::time::Instant::now();
    let mut journal = None;
    let (opened, replayed) = read_and_replay(
        |sink| Wal::open_with_sink(storage, options, sink),
        |handed| {
            let (opened, snapshot_sequence, state) =
                load_beside_journal(&handed, capacity, open_journal)?;
            journal = opened;
            let changes = journal.as_mut().map_or(Changes::Dropped, Changes::Journal);
            replay_log(handed, snapshot_sequence, state, shards, changes)
        },
    )?;
    // An error reading the log comes first: what was replayed before it is dropped.
    let (wal, repairs) = opened?;
    let (state, mut recovery) = replayed?;
    let (journal, timestamp_floor) = match journal {
        Some(journal) => {
            let (journal, floor) = cut_journal_to_log(journal, &state, &mut recovery)?;
            (Some(journal), floor)
        }
        None => (None, state.last_timestamp()),
    };
    let sequence_last = recovery.sequence_last;
    recovery.torn_tail_bytes_cut = repairs.torn_tail_bytes_cut;
    recovery.torn_segment_removed = repairs.torn_segment_removed;
    recovery.torn_tail_kept = repairs.torn_tail_kept;
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
    let logger = Logger::new(wal, sequence_last, timestamp_floor, state.expiry_instants());
    let mut applier = Applier::new(sequence_last);
    // The events replayed count toward the next snapshot: the next restart would
    // replay them again.
    applier.events_since_snapshot = recovery.events;
    Ok((logger, applier, state, recovery, journal))
}

/// Cuts from the journal the events past the replayed log's end, which only log frames
/// now gone made (a torn tail cut at open, frames lost from the disk, or unsynced ones
/// a power loss took under `SyncMode::UnsafeNoSync`): the journal follows the log.
/// Returns the journal and the timestamp the next batch must come after: the state's
/// last, or the last event ever cut from this ledger's journal, which readers may have
/// seen (recorded in the name of the file that keeps the cut frames, so that it holds
/// across a reopen before any new batch).
fn cut_journal_to_log(
    journal: EventJournal,
    state: &StateMachine,
    recovery: &mut Recovery,
) -> Result<(EventJournal, u64), EngineError> {
    let keep_dir = journal
        .dir()
        .parent()
        .unwrap_or_else(|| journal.dir())
        .to_path_buf();
    let (journal, cut) = journal
        .cut_after(state.last_timestamp(), &keep_dir)
        .map_err(EngineError::Log)?;
    let floor = tally_log::events::torn_events_floor(&keep_dir).map_err(EngineError::Log)?;
    recovery.change_events_cut = cut;
    Ok((journal, floor.max(state.last_timestamp())))
}

/// What the replay built: the state and what it replayed, or why it stopped.
type ReplayOutcome = Result<(StateMachine, Recovery), EngineError>;

/// Where the replay's change events go.
pub(crate) enum Changes<'a> {
    /// Nowhere: none are captured.
    Dropped,
    /// Into the journal: those past its last event (a crash lost its unsynced tail).
    Journal(&'a mut EventJournal),
    /// Every one, group by group, in order (`tally verify` compares them with the
    /// journal: [`crate::inspect::read_only_comparing_events`]).
    Each(&'a mut dyn FnMut(Vec<ChangeEvent>)),
}

/// Runs `read`, which reads a log and hands what it reads to a sink, on a second
/// thread, and `replay` ([`replay`] of what it hands over, as it comes: groups of about
/// [`REPLAY_GROUP_EVENTS`] events, at most [`REPLAY_GROUPS_IN_FLIGHT`] waiting) on the
/// calling thread. The replay stays on the calling thread because it may drive the
/// shard pool, which is not shared between threads. Returns what `read` returned and
/// what the replay built; when `read` failed, the caller must drop the latter.
fn read_and_replay<T: Send, E: Send>(
    read: impl FnOnce(&mut dyn RecoverySink) -> Result<T, E> + Send,
    replay: impl FnOnce(Handed) -> ReplayOutcome,
) -> Result<(Result<T, E>, ReplayOutcome), EngineError> {
    let (sender, receiver) = crossbeam_channel::bounded(REPLAY_GROUPS_IN_FLIGHT);
    // Room for every run there is, so handing one back never waits.
    let (spent_sender, spent) = crossbeam_channel::bounded(SNAPSHOT_RUNS_MADE_MAX);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("tally-read-log".into())
            .spawn_scoped(scope, move || {
                let mut sink = GroupSender {
                    sender: Some(sender),
                    spent,
                    runs_made: 0,
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
            .map_err(|source| EngineError::Thread {
                name: "tally-read-log",
                source,
            })?;
        // Returning drops the receiver: a reader still sending then stops handing
        // groups over and only finishes its checks.
        let replayed = replay(Handed {
            receiver,
            spent: spent_sender,
        });
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((read, replayed))
    })
}

/// Reads the ledger in `dir` without changing it (`tally_log::read_log_into`) and
/// replays it, reading and replaying on two threads, its change events to `changes`;
/// see `crate::inspect::read_only`.
pub(crate) fn replay_read_only(
    dir: &std::path::Path,
    changes: Changes<'_>,
) -> Result<(VerifyReport, StateMachine), EngineError> {
    let (read, replayed) = read_and_replay(
        |sink| read_log_into(dir, sink),
        |handed| replay(handed, Capacity::default(), None, changes),
    )?;
    let report = read?;
    let (state, _) = replayed?;
    Ok((report, state))
}

/// What opening a ledger recovered, and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The snapshot loaded (the last sequence it includes), if any.
    pub snapshot_sequence: Option<u64>,
    /// Logged batches replayed after it.
    pub batches: u64,
    /// Events in those batches.
    pub events: u64,
    /// The last sequence in the log (0 for an empty log).
    pub sequence_last: u64,
    /// Bytes of a torn write cut from the log's end (see `tally_log::Repairs`).
    pub torn_tail_bytes_cut: u64,
    /// Whether the last segment was removed because its header never reached the disk.
    pub torn_segment_removed: bool,
    /// The file the cut bytes were kept in (see `tally_log::Repairs::torn_tail_kept`):
    /// a write cut short by a crash was never acknowledged, but damage to the last
    /// frame looks the same.
    pub torn_tail_kept: Option<std::path::PathBuf>,
    /// Change events cut from the journal because the log no longer makes them (see
    /// `tally_log::events::EventJournal::cut_after`): the journal held events of log
    /// frames that are gone, which were synced. New events are stamped after the last
    /// of them.
    pub change_events_cut: Option<tally_log::events::JournalCut>,
    /// From the start of recovery to the state rebuilt: reading and checking the log,
    /// opening the change-event journal, loading the snapshot and replaying, all but the
    /// first overlapping it.
    pub elapsed: std::time::Duration,
}

/// Room to reserve in the state at start-up (see `StateMachine::with_capacity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub accounts: usize,
    pub transfers: usize,
    /// Parts to split the state into, one per shard (0 counts as 1).
    pub parts: usize,
    /// Which bits of an id place it on a part.
    pub placement: Placement,
}

impl Capacity {
    /// How the state is cut.
    fn layout(&self) -> Layout {
        Layout::new(self.parts.max(1), self.placement)
    }
}

/// Events replayed per group: large enough that the prefetching across batches and (on
/// shard threads) planning and hand-offs are amortised, small enough to bound memory.
const REPLAY_GROUP_EVENTS: usize = 65_536;

/// Groups read ahead of the replay, at most: enough to keep it busy while the reader
/// checks the next, and a bound on the memory a fast reader can fill.
const REPLAY_GROUPS_IN_FLIGHT: usize = 2;

/// Unpacked runs of a streamed snapshot that exist at once, at most: the groups in
/// flight, the one loading and one being read, so that their room is reused instead of
/// allocated and freed run by run (8 MiB each).
const SNAPSHOT_RUNS_MADE_MAX: usize = REPLAY_GROUPS_IN_FLIGHT + 2;

/// What the reader thread hands the replaying thread: first the snapshot, whole
/// (`Start`) or as it is read (a head, runs, then its end, or abandoned and the next
/// try: see [`SnapshotStream`]), then the records.
enum Replayed {
    /// The snapshot to start from, once, unless one was streamed whole.
    Start(Option<(u64, LoadedImage)>),
    /// A snapshot streamed: its sequence, last timestamp and accounts.
    SnapshotBegin {
        sequence: u64,
        last_timestamp: u64,
        accounts: u64,
    },
    /// Its next accounts.
    SnapshotAccounts(Vec<Account>),
    /// After its accounts: its transfers unpacked (older formats), and how many it
    /// stores.
    SnapshotHead {
        transfers: Vec<Transfer>,
        stored: u64,
    },
    /// Its next run of transfers.
    SnapshotRun(UnpackedRun),
    /// Its rest: it is whole.
    SnapshotEnd(StateImage),
    /// It is damaged: an older one, or `Start(None)`, follows.
    SnapshotAbandoned,
    /// The next records, consecutive.
    Records(Vec<LogRecord>),
}

/// The replaying thread's ends of the channels: what is handed over, and the spent
/// runs handed back so that their room serves the next ones.
struct Handed {
    receiver: crossbeam_channel::Receiver<Replayed>,
    spent: crossbeam_channel::Sender<UnpackedRun>,
}

/// Cuts the records recovery reads into groups for the replaying thread, and streams
/// the snapshot to it.
struct GroupSender {
    /// `None` once the replay has stopped (on an error it reports itself).
    sender: Option<crossbeam_channel::Sender<Replayed>>,
    /// Runs the replay is done with.
    spent: crossbeam_channel::Receiver<UnpackedRun>,
    /// Runs made for the snapshot being streamed: at most
    /// [`SNAPSHOT_RUNS_MADE_MAX`], then the next one waits for a spent one.
    runs_made: usize,
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

    fn snapshot_stream(&mut self) -> Option<&mut dyn SnapshotStream> {
        Some(self)
    }
}

impl SnapshotStream for GroupSender {
    fn begin(&mut self, sequence: u64, last_timestamp: u64, accounts: u64) {
        self.send(Replayed::SnapshotBegin {
            sequence,
            last_timestamp,
            accounts,
        });
    }

    fn accounts(&mut self, accounts: Vec<Account>) {
        self.send(Replayed::SnapshotAccounts(accounts));
    }

    fn head(&mut self, transfers: Vec<Transfer>, stored: u64) {
        self.send(Replayed::SnapshotHead { transfers, stored });
    }

    fn run(&mut self, run: UnpackedRun) {
        self.send(Replayed::SnapshotRun(run));
    }

    fn spare_run(&mut self) -> UnpackedRun {
        if let Ok(run) = self.spent.try_recv() {
            return run;
        }
        if self.runs_made < SNAPSHOT_RUNS_MADE_MAX {
            self.runs_made += 1;
            return UnpackedRun::default();
        }
        // Every run made is in flight: the replay hands one back once it has loaded
        // it (or has stopped, closing the channel).
        self.spent.recv().unwrap_or_default()
    }

    fn end(&mut self, rest: StateImage) {
        self.send(Replayed::SnapshotEnd(rest));
    }

    fn abandoned(&mut self) {
        // The replay drops the runs it holds of this snapshot.
        self.runs_made = 0;
        self.send(Replayed::SnapshotAbandoned);
    }
}

/// The replay: builds the state from the snapshot, then replays the log after it
/// ([`replay_log`]).
fn replay(
    handed: Handed,
    capacity: Capacity,
    shards: Option<&ShardPool>,
    changes: Changes<'_>,
) -> Result<(StateMachine, Recovery), EngineError> {
    let (snapshot_sequence, state) = load_snapshot(&handed, capacity)?;
    replay_log(handed, snapshot_sequence, state, shards, changes)
}

/// What opening the journal gave (`None` without one), then what [`load_snapshot`]
/// returned.
type LoadedBesideJournal = (Option<EventJournal>, Option<u64>, StateMachine);

/// [`load_snapshot`] while `open_journal` runs on a `tally-journal` thread: opening
/// checks the journal's newest segment, reading it whole, about a tenth of a restart
/// from a snapshot, and the load does not need the journal. The journal's error comes
/// first, as when it opened before the load; where its thread cannot start, nothing
/// loads.
fn load_beside_journal(
    handed: &Handed,
    capacity: Capacity,
    open_journal: Option<OpenJournal>,
) -> Result<LoadedBesideJournal, EngineError> {
    let Some(open) = open_journal else {
        let (snapshot_sequence, state) = load_snapshot(handed, capacity)?;
        return Ok((None, snapshot_sequence, state));
    };
    std::thread::scope(|scope| {
        let opening = std::thread::Builder::new()
            .name("tally-journal".into())
            .spawn_scoped(scope, open)
            .map_err(|source| EngineError::Thread {
                name: "tally-journal",
                source,
            })?;
        let loaded = load_snapshot(handed, capacity);
        let opened = opening
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let journal = opened?;
        let (snapshot_sequence, state) = loaded?;
        Ok((Some(journal), snapshot_sequence, state))
    })
}

/// Applies each group of the log after the snapshot as it arrives, as the engine
/// applied them live: on the shard threads when there are some (results do not
/// depend on how the log is cut into groups).
fn replay_log(
    handed: Handed,
    snapshot_sequence: Option<u64>,
    mut state: StateMachine,
    shards: Option<&ShardPool>,
    mut changes: Changes<'_>,
) -> Result<(StateMachine, Recovery), EngineError> {
    let mut sequence_last = snapshot_sequence.unwrap_or(0);
    let receiver = handed.receiver;
    let mut recovery = Recovery {
        snapshot_sequence,
        ..Recovery::default()
    };
    let mut timestamp_last = state.last_timestamp();
    if let Changes::Journal(journal) = &changes {
        // The journal is synced before a snapshot retires the log it came from, so it
        // holds the event of every record in the snapshot: anything less was damaged on
        // disk. (Refused batches and expiries leave the snapshot's own stamp ahead.)
        let record_last = state.last_record_timestamp();
        if let Some(journal_last) = journal.last_timestamp()
            && journal_last < record_last
        {
            return Err(RecoveryError::ChangeEventsBehind {
                journal_last,
                snapshot_last: record_last,
            }
            .into());
        }
    }
    let mut capturing = false;
    for message in receiver {
        let Replayed::Records(group) = message else {
            unreachable!("the snapshot comes once, first");
        };
        for record in &group {
            if record.sequence != sequence_last + 1 || record.timestamp <= timestamp_last {
                return Err(RecoveryError::RecordOutOfOrder {
                    sequence: record.sequence,
                    sequence_before: sequence_last,
                    timestamp: record.timestamp,
                    timestamp_before: timestamp_last,
                }
                .into());
            }
            sequence_last = record.sequence;
            timestamp_last = record
                .timestamp
                .saturating_add(record.batch.len().saturating_sub(1) as u64);
            recovery.batches += 1;
            recovery.events += record.batch.len() as u64;
        }
        // Every change of the group is stamped at or before its last event: a group the
        // journal already holds to its end is replayed without capturing changes (which
        // would cost about a third of the replay only to be dropped).
        let capture = match &changes {
            Changes::Dropped => false,
            Changes::Journal(journal) => journal.last_timestamp() < Some(timestamp_last),
            Changes::Each(_) => true,
        };
        if capture != capturing {
            state.set_change_capture(capture);
            capturing = capture;
        }
        replay_group(&mut state, group, shards);
        match &mut changes {
            Changes::Journal(journal) if capturing => {
                journal_missing_changes(journal, state.take_changes())?;
            }
            Changes::Each(each) => each(state.take_changes()),
            Changes::Dropped | Changes::Journal(_) => {}
        }
    }
    if matches!(changes, Changes::Journal(_)) && !capturing {
        // The state leaves recovery capturing: the apply thread journals every change
        // from here on.
        state.set_change_capture(true);
    }
    assert_eq!(
        state.last_timestamp(),
        timestamp_last,
        "replay reached the log's end"
    );
    recovery.sequence_last = sequence_last;
    Ok((state, recovery))
}

/// Builds the state recovery starts from: the snapshot handed over whole, or the one
/// streamed whole (each streamed one abandoned as damaged is dropped and the next try
/// awaited), or an empty state. Returns the snapshot's sequence, if any, and the state.
fn load_snapshot(
    handed: &Handed,
    capacity: Capacity,
) -> Result<(Option<u64>, StateMachine), EngineError> {
    loop {
        let begun = match handed.receiver.recv() {
            Ok(Replayed::Start(None)) => {
                let state = StateMachine::with_capacity_in_parts(
                    capacity.accounts,
                    capacity.transfers,
                    capacity.layout(),
                );
                return Ok((None, state));
            }
            Ok(Replayed::Start(Some((sequence, image)))) => {
                let state = StateMachine::from_loaded_image_with_room(
                    image,
                    capacity.layout(),
                    capacity.accounts,
                    capacity.transfers,
                )
                .map_err(|source| RecoveryError::Snapshot { sequence, source })?;
                return Ok((Some(sequence), state));
            }
            Ok(Replayed::SnapshotBegin {
                sequence,
                last_timestamp,
                accounts,
            }) => (sequence, last_timestamp, accounts),
            // The log could not be read; its error is the one reported.
            _ => return Err(RecoveryError::LogNotRead.into()),
        };
        let (sequence, last_timestamp, accounts) = begun;
        let mut source = StreamedImage {
            handed,
            head: None,
            rest: None,
            ended: None,
        };
        let start = ImageStart {
            last_timestamp,
            // Bounded by the file's size; a count past this machine's word matches no
            // accounts that come.
            accounts: usize::try_from(accounts).unwrap_or(0),
        };
        let room = (capacity.accounts, capacity.transfers);
        let loaded = StateMachine::from_image_source(start, &mut source, capacity.layout(), room);
        match (loaded, source.finish()) {
            (Ok(state), _) => return Ok((Some(sequence), state)),
            (Err(_), StreamEnd::Abandoned) => continue,
            (Err(_), StreamEnd::Cut) => return Err(RecoveryError::LogNotRead.into()),
            (Err(source), StreamEnd::Whole) => {
                return Err(RecoveryError::Snapshot { sequence, source }.into());
            }
        }
    }
}

/// How a streamed snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// Read and checked to its footer.
    Whole,
    /// Found damaged (or unreadable) part way: an older one or none follows.
    Abandoned,
    /// The reader stopped: the log's error is the one reported.
    Cut,
}

/// A snapshot as the reader thread streams it, for [`StateMachine::from_image_source`].
struct StreamedImage<'a> {
    handed: &'a Handed,
    /// Its head, once it has come after the accounts.
    head: Option<(Vec<Transfer>, u64)>,
    /// Its rest, once its end has come.
    rest: Option<StateImage>,
    /// How it ended, once it has.
    ended: Option<StreamEnd>,
}

/// What a streamed snapshot hands over next.
enum Piece {
    Accounts(Vec<Account>),
    Head(Vec<Transfer>, u64),
    Run(UnpackedRun),
    /// Its end: it is whole, its rest kept.
    End,
}

impl StreamedImage<'_> {
    /// Reads on to the snapshot's end (after a load stopped early by its own check,
    /// the file may still turn out damaged, which moves on to an older one as a
    /// snapshot read whole would) and tells how it ended.
    fn finish(&mut self) -> StreamEnd {
        while self.ended.is_none() {
            // Each handed back: the reader may be waiting for room to read into.
            if let Ok(Piece::Run(run)) = self.next_piece() {
                self.spent(run);
            }
        }
        self.ended.unwrap_or(StreamEnd::Cut)
    }

    /// The next piece; `Err` when the snapshot was abandoned or the reader stopped.
    fn next_piece(&mut self) -> Result<Piece, ImageError> {
        if self.ended == Some(StreamEnd::Whole) {
            return Ok(Piece::End);
        }
        if self.ended.is_none() {
            match self.handed.receiver.recv() {
                Ok(Replayed::SnapshotAccounts(accounts)) => return Ok(Piece::Accounts(accounts)),
                Ok(Replayed::SnapshotHead { transfers, stored }) => {
                    return Ok(Piece::Head(transfers, stored));
                }
                Ok(Replayed::SnapshotRun(run)) => return Ok(Piece::Run(run)),
                Ok(Replayed::SnapshotEnd(rest)) => {
                    self.rest = Some(rest);
                    self.ended = Some(StreamEnd::Whole);
                    return Ok(Piece::End);
                }
                Ok(Replayed::SnapshotAbandoned) => self.ended = Some(StreamEnd::Abandoned),
                Ok(_) | Err(_) => self.ended = Some(StreamEnd::Cut),
            }
        }
        Err(ImageError("the snapshot was not read whole".into()))
    }
}

/// A piece the reader never hands over at that point.
fn out_of_order() -> ImageError {
    ImageError("the snapshot's parts came out of order".into())
}

impl ImageSource for StreamedImage<'_> {
    fn next_accounts(&mut self) -> Result<Option<Vec<Account>>, ImageError> {
        if self.head.is_some() {
            return Ok(None);
        }
        match self.next_piece()? {
            Piece::Accounts(accounts) => Ok(Some(accounts)),
            Piece::Head(transfers, stored) => {
                self.head = Some((transfers, stored));
                Ok(None)
            }
            Piece::Run(_) | Piece::End => Err(out_of_order()),
        }
    }

    fn transfers_head(&mut self) -> Result<(Vec<Transfer>, usize), ImageError> {
        let (transfers, stored) = self.head.take().ok_or_else(out_of_order)?;
        let stored = usize::try_from(stored).unwrap_or(0);
        Ok((transfers, stored))
    }

    fn next_run(&mut self) -> Result<Option<UnpackedRun>, ImageError> {
        match self.next_piece()? {
            Piece::Run(run) => Ok(Some(run)),
            Piece::End => Ok(None),
            Piece::Accounts(_) | Piece::Head(..) => Err(out_of_order()),
        }
    }

    fn spent(&mut self, mut run: UnpackedRun) {
        // The packed bytes are read fresh for each run: only the unpacked room is kept.
        run.bytes = Vec::new();
        // Never waits (room for every run); fails only once the reader has finished.
        let _ = self.handed.spent.send(run);
    }

    fn rest(&mut self) -> Result<StateImage, ImageError> {
        while self.ended.is_none() {
            if self.next_run()?.is_some() {
                return Err(ImageError("transfers after the last run".into()));
            }
        }
        self.rest
            .take()
            .ok_or_else(|| ImageError("the snapshot was not read whole".into()))
    }
}

/// Appends to the journal the replayed changes it does not have yet (those after its
/// last event: a crash lost them from its unsynced tail, or they were never written).
fn journal_missing_changes(
    journal: &mut EventJournal,
    changes: Vec<ChangeEvent>,
) -> Result<(), EngineError> {
    let after = journal.last_timestamp().unwrap_or(0);
    let missing: Vec<ChangeEvent> = changes
        .into_iter()
        .filter(|event| event.timestamp > after)
        .collect();
    let missing = crate::events::strictly_increasing(missing);
    journal.append(&missing).map_err(EngineError::Log)
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
