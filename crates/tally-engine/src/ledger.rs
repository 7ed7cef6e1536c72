//! The embedding API: open, submit (blocking or async), read, shut down.

use crate::admission::Room;
use crate::config::{Backpressure, COMMIT_INTERVAL_MAX, Config};
use crate::error::{EngineError, SubmitError};
use crate::events::{ChangeEventReader, Progress, start_journal_thread};
use crate::gate::Gate;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pacing::CommitPacer;
use crate::recovery::{Capacity, OpenJournal, Recovery, recover};
use crate::request::{Answered, EventResult, Request, TransferResult};
use crate::shards::{ShardCounters, ShardPool};
use crate::shared::Shared;
use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use crate::tables::TableMaker;
use crate::threads::{
    ApplyStage, ApplyThread, GROUPS_IN_FLIGHT_MAX, LogThread, SPARE_STEP_BYTES_PER_US_INITIAL,
};
use crossbeam_queue::ArrayQueue;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::Instant;
use tally_log::events::{EventJournal, JournalOptions};
use tally_log::{DirLock, FsStorage, LogOptions, Storage};
use tally_state::{
    AccountBalancesRead, AccountTransfersRead, InvariantViolation, LedgerTotals, Query,
    QueryTarget, StateMachine,
};
use tally_types::{
    Account, AccountBalance, AccountFilter, BATCH_EVENTS_MAX, Batch, ChangeEvent, QueryFilter,
    Transfer,
};
use tokio::sync::oneshot;

type CommitThreads = (JoinHandle<()>, JoinHandle<()>, Option<JoinHandle<()>>);

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    log_thread: Thread,
    /// The log thread, then the apply thread, then the journal thread (if any).
    join: Mutex<Option<CommitThreads>>,
    /// Released at shutdown, once the log thread (and its log) is gone.
    lock: Mutex<Option<DirLock>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Handle {
    fn stop(&self) -> Result<(), EngineError> {
        let Some((log_join, apply_join, journal_join)) = self.join.lock().take() else {
            return Ok(());
        };
        // Close the gate and wait out submitters already inside: after this no push can
        // happen, so the drain below answers every admitted request. Submitters waiting
        // for room hold no pass; woken, they find the gate closed. No async wait needs
        // its deadline any more.
        self.shared.gate.close();
        self.shared.room.wake_all();
        self.shared.room.stop_timer();
        self.shared.draining.store(true, Ordering::SeqCst);
        self.log_thread.unpark();
        // The log thread drains the queue and exits; the apply thread then finishes
        // the groups in flight and exits when its channel closes.
        let log_joined = log_join.join();
        let apply_joined = apply_join.join();
        // The apply thread dropped its sender: the journal thread writes what is left.
        let journal_joined = journal_join.map_or(Ok(()), JoinHandle::join);
        // The log thread dropped the log; now let another process in.
        self.lock.lock().take();
        if log_joined.is_err() {
            return Err(EngineError::ThreadPanicked { name: "tally-log" });
        }
        if apply_joined.is_err() {
            return Err(EngineError::ThreadPanicked {
                name: "tally-apply",
            });
        }
        if journal_joined.is_err() {
            return Err(EngineError::ThreadPanicked {
                name: "tally-events",
            });
        }
        match self.shared.failure.lock().clone() {
            Some(message) => Err(EngineError::LogFailed { message }),
            None => Ok(()),
        }
    }
}

/// An open ledger. Cheap to clone; every clone submits to the same engine. The data
/// directory stays locked until [`Ledger::shutdown`] or the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Ledger {
    handle: Arc<Handle>,
}

impl Ledger {
    /// Opens (or creates) the ledger in `config.data_dir`: takes the directory lock,
    /// loads the newest valid snapshot, replays the log after it, and starts the log and
    /// apply threads (and the shard threads, with more than one shard).
    ///
    /// # Errors
    ///
    /// [`EngineError::Config`] for a field out of range, [`EngineError::Log`] when the
    /// directory is locked by another process or a file does not read or check,
    /// [`EngineError::Recovery`] when the recovered state does not load, and
    /// [`EngineError::DataDir`] or [`EngineError::Thread`] for the operating system's
    /// refusals.
    pub fn open(config: Config) -> Result<Ledger, EngineError> {
        validate_config(&config)?;
        refuse_replica_dir(&config.data_dir)?;
        let lock = DirLock::acquire(&config.data_dir)?;
        let storage =
            FsStorage::create_dir(&config.data_dir).map_err(|source| EngineError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        let open_journal = config.change_events.then(|| {
            let options = JournalOptions {
                retention_bytes: config.events_retention_bytes,
                ..JournalOptions::default()
            };
            let dir = events_dir(&config.data_dir);
            let open: OpenJournal =
                Box::new(move || EventJournal::open(&dir, options).map_err(EngineError::Log));
            open
        });
        Self::start(config, Box::new(storage), Some(lock), open_journal)
    }

    /// Opens a ledger over any storage (tests inject faults with
    /// `tally_log::faulty::FaultyStorage`). No directory lock is taken:
    /// the caller owns the storage exclusively. `config.data_dir` is not used.
    pub fn open_with_storage(
        config: Config,
        storage: Box<dyn Storage>,
    ) -> Result<Ledger, EngineError> {
        validate_config(&config)?;
        Self::start(config, storage, None, None)
    }

    fn start(
        config: Config,
        storage: Box<dyn Storage>,
        lock: Option<DirLock>,
        open_journal: Option<OpenJournal>,
    ) -> Result<Ledger, EngineError> {
        let options = LogOptions {
            segment_bytes_max: config.segment_bytes_max,
            sync: config.sync,
        };
        let shards = config.shards_effective();
        let capacity = Capacity {
            accounts: config.accounts_capacity,
            transfers: config.transfers_capacity,
            parts: shards,
            placement: config.placement,
        };
        let shard_counters = Arc::new(ShardCounters::default());
        let pool = match shards {
            1 => None,
            _ => Some(
                ShardPool::start(
                    shards,
                    config.shard_deltas_from,
                    config.shard_execution,
                    Arc::clone(&shard_counters),
                )
                .map_err(|source| EngineError::Thread {
                    name: "tally-shard",
                    source,
                })?,
            ),
        };
        // Recovery replays on the shard threads too.
        let (logger, mut applier, mut state, recovery, journal) =
            recover(storage, options, capacity, pool.as_ref(), open_journal)?;
        // Live, a user-data index that starts mid-run grows into a table made on the
        // table maker's thread (a replay took its room at once: nobody waits on it).
        let tables = TableMaker::start().map_err(|source| EngineError::Thread {
            name: "tally-tables",
            source,
        })?;
        state.prepare_tables_elsewhere(true);
        let events = journal.as_ref().map(|_| {
            Arc::new(Progress::new(
                events_dir(&config.data_dir),
                state.last_timestamp(),
            ))
        });
        applier.shards = pool;
        shard_counters.reset();
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(config.queue_batches_max),
            queued_events: AtomicUsize::new(0),
            room: Room::default(),
            config,
            state: RwLock::new(state),
            metrics: Metrics::new(shard_counters),
            failure: Mutex::new(None),
            draining: AtomicBool::new(false),
            gate: Gate::new(),
            recovery,
            events: events.clone(),
        });
        let (journal, journal_join) = match (journal, events) {
            (Some(journal), Some(progress)) => {
                let (journal, thread) = start_journal_thread(journal, progress)?;
                (Some(journal), Some(thread))
            }
            _ => (None, None),
        };
        let (to_apply, from_log) = std::sync::mpsc::sync_channel(GROUPS_IN_FLIGHT_MAX);
        let (snapshots_to_log, snapshots) = std::sync::mpsc::channel();
        let (apply_exit, apply_exited) = std::sync::mpsc::sync_channel(1);
        let stage = Arc::new(Mutex::new(ApplyStage {
            shared: Arc::clone(&shared),
            applier,
            snapshots: snapshots_to_log,
            journal,
            tables,
            unfinished: false,
        }));
        let apply = ApplyThread {
            stage: Arc::clone(&stage),
            from_log,
            exit: apply_exit,
        };
        let log = LogThread {
            shared: Arc::clone(&shared),
            logger,
            to_apply: Some(to_apply),
            stage,
            snapshots,
            apply_exited,
            snapshot_in_flight: None,
            retirement_in_flight: None,
            spare_step_bytes_per_us: SPARE_STEP_BYTES_PER_US_INITIAL,
            pacer: CommitPacer::new(
                shared.config.commit_interval_min,
                shared.config.commit_interval_max,
                Instant::now(),
            ),
        };
        let spawn = |name: &'static str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|source| EngineError::Thread { name, source })
        };
        let apply_join = spawn("tally-apply", Box::new(move || apply.run()))?;
        let log_join = spawn("tally-log", Box::new(move || log.run()))?;
        let log_thread = log_join.thread().clone();
        Ok(Ledger {
            handle: Arc::new(Handle {
                shared,
                log_thread,
                join: Mutex::new(Some((log_join, apply_join, journal_join))),
                lock: Mutex::new(lock),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Submits a batch and blocks until it is durable; one result per event, in order.
    ///
    /// When the queue is full, [`Config::backpressure`] decides: fail at once with
    /// [`SubmitError::Busy`], or block (parked, not polling) until room appears or the
    /// configured wait has passed. `Busy` hands the batch back for a retry. Must not be
    /// called from inside an async runtime: use [`Ledger::submit_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Account, Batch, Config, Ledger, ResultCode};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    /// let account = Account { id: 1, ledger: 840, code: 1, ..Account::default() };
    /// let results = ledger.submit(Batch::CreateAccounts(vec![account])).expect("durable");
    /// assert_eq!(results[0].code, ResultCode::Ok);
    /// ```
    pub fn submit(&self, batch: Batch) -> Result<Vec<EventResult>, SubmitError> {
        self.submit_at(batch, None)
    }

    /// [`Ledger::submit`] with a requested stamp (a ledger opened with
    /// [`Config::manual_clock`] only; otherwise [`SubmitError::ManualClockDisabled`]).
    pub fn submit_at(
        &self,
        batch: Batch,
        now: Option<u64>,
    ) -> Result<Vec<EventResult>, SubmitError> {
        self.submit_blocking(batch, now, false)
            .map(|answered| answered.results)
    }

    /// Creates transfers and answers each applied one with both accounts' balances
    /// right after it (docs/spec.md §2, "Balances with results"): no second read to
    /// show a customer's new balance. `now` as in [`Ledger::submit_at`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Account, Config, Ledger, ResultCode, Transfer};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    /// let account = |id| Account { id, ledger: 978, code: 1, ..Account::default() };
    /// ledger.create_accounts(vec![account(1), account(2)]).expect("durable");
    /// let pay = Transfer {
    ///     id: 10,
    ///     debit_account_id: 1,
    ///     credit_account_id: 2,
    ///     amount: 500,
    ///     ledger: 978,
    ///     code: 1,
    ///     ..Transfer::default()
    /// };
    /// let results = ledger.create_transfers_with_balances(vec![pay], None).expect("durable");
    /// assert_eq!(results[0].code, ResultCode::Ok);
    /// let balances = results[0].balances.expect("an applied transfer has balances");
    /// assert_eq!(balances.debit_account.debits_posted, 500);
    /// assert_eq!(balances.credit_account.credits_posted, 500);
    /// ```
    pub fn create_transfers_with_balances(
        &self,
        transfers: Vec<Transfer>,
        now: Option<u64>,
    ) -> Result<Vec<TransferResult>, SubmitError> {
        self.submit_blocking(Batch::CreateTransfers(transfers), now, true)
            .map(with_balances)
    }

    /// [`Ledger::create_transfers_with_balances`] from async code, as
    /// [`Ledger::submit_async`].
    pub async fn create_transfers_with_balances_async(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, SubmitError> {
        self.submit_async_with(Batch::CreateTransfers(transfers), true)
            .await
            .map(with_balances)
    }

    fn submit_blocking(
        &self,
        batch: Batch,
        now: Option<u64>,
        balances: bool,
    ) -> Result<Answered, SubmitError> {
        let receiver = match self.enqueue(batch, now, balances)? {
            Enqueued::Queued(receiver) => receiver,
            Enqueued::Full(request, receiver, deadline) => {
                let mut request = Some(request);
                let room = &self.shared().room;
                let pushed = room.wait_blocking(deadline, || self.try_push(&mut request));
                self.waited(pushed, request)?;
                receiver
            }
        };
        receiver
            .blocking_recv()
            .unwrap_or_else(|_| Err(threads_stopped()))
    }

    /// Submits a batch from async code; resolves once it is durable.
    ///
    /// When the queue is full and [`Config::backpressure`] is
    /// [`Backpressure::Wait`], the task waits for room without blocking its thread, at
    /// most the configured wait, then gets [`SubmitError::Busy`] with the batch handed
    /// back. The future runs on any executor: it needs no runtime timer or I/O driver
    /// (the ledger keeps the deadline on a thread of its own).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the batch is admitted to the queue (while it waits
    /// for room) leaves nothing queued: the batch is dropped with the future and never
    /// logged. Once admitted, the batch is logged and applied whether or not the future
    /// is still polled; dropping it only loses the answer. To learn the outcome after a
    /// cancellation, submit the same events again: a transfer id that exists answers
    /// `exists` and is never applied twice.
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Account, Batch, Config, Ledger, ResultCode};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    /// let runtime = tokio::runtime::Builder::new_current_thread()
    ///     .build()
    ///     .expect("runtime");
    /// let account = Account { id: 1, ledger: 840, code: 1, ..Account::default() };
    /// let results = runtime
    ///     .block_on(ledger.submit_async(Batch::CreateAccounts(vec![account])))
    ///     .expect("durable");
    /// assert_eq!(results[0].code, ResultCode::Ok);
    /// ```
    pub async fn submit_async(&self, batch: Batch) -> Result<Vec<EventResult>, SubmitError> {
        self.submit_async_with(batch, false)
            .await
            .map(|answered| answered.results)
    }

    async fn submit_async_with(
        &self,
        batch: Batch,
        balances: bool,
    ) -> Result<Answered, SubmitError> {
        let receiver = match self.enqueue(batch, None, balances)? {
            Enqueued::Queued(receiver) => receiver,
            Enqueued::Full(request, receiver, deadline) => {
                let mut request = Some(request);
                let room = &self.shared().room;
                let pushed = room
                    .wait_async(deadline, || self.try_push(&mut request))
                    .await;
                self.waited(pushed, request)?;
                receiver
            }
        };
        receiver.await.unwrap_or_else(|_| Err(threads_stopped()))
    }

    /// Creates accounts: [`Ledger::submit`] of a [`Batch::CreateAccounts`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Account, AccountFlags, Config, Ledger, ResultCode};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    /// let wallet = Account {
    ///     id: 1,
    ///     ledger: 978,
    ///     code: 1,
    ///     flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
    ///     ..Account::default()
    /// };
    /// let results = ledger.create_accounts(vec![wallet]).expect("durable");
    /// assert_eq!(results[0].code, ResultCode::Ok);
    /// ```
    pub fn create_accounts(&self, accounts: Vec<Account>) -> Result<Vec<EventResult>, SubmitError> {
        self.submit(Batch::CreateAccounts(accounts))
    }

    /// Creates transfers: [`Ledger::submit`] of a [`Batch::CreateTransfers`]. A refused
    /// transfer is a result code (`exceeds_credits`, `exists`, ...), not an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Account, Config, Ledger, ResultCode, Transfer};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    /// let account = |id| Account { id, ledger: 978, code: 1, ..Account::default() };
    /// ledger.create_accounts(vec![account(1), account(2)]).expect("durable");
    /// let pay = Transfer {
    ///     id: 10,
    ///     debit_account_id: 1,
    ///     credit_account_id: 2,
    ///     amount: 500,
    ///     ledger: 978,
    ///     code: 1,
    ///     ..Transfer::default()
    /// };
    /// assert_eq!(ledger.create_transfers(vec![pay]).expect("durable")[0].code, ResultCode::Ok);
    /// // The same id again is not applied twice.
    /// let again = ledger.create_transfers(vec![pay]).expect("durable");
    /// assert_eq!(again[0].code, ResultCode::Exists);
    /// ```
    pub fn create_transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<EventResult>, SubmitError> {
        self.submit(Batch::CreateTransfers(transfers))
    }

    /// Validates a batch and tries once to put it on the queue. A full queue under
    /// [`Backpressure::Wait`] hands the request back with the deadline of its wait.
    fn enqueue(
        &self,
        batch: Batch,
        now: Option<u64>,
        balances: bool,
    ) -> Result<Enqueued, SubmitError> {
        validate(&batch)?;
        let shared = self.shared();
        if now.is_some() && !shared.config.manual_clock {
            return Err(SubmitError::ManualClockDisabled);
        }
        if let Some(message) = shared.failure.lock().clone() {
            return Err(SubmitError::Failed(message));
        }
        if shared.gate.is_closed() {
            return Err(SubmitError::Stopped);
        }
        // Under overload most submissions are turned away: do it before allocating
        // anything, so that rejecting costs the committed work as little as possible.
        if shared.config.backpressure == Backpressure::Busy && shared.queue.is_full() {
            return Err(self.busy(batch));
        }
        let (reply, receiver) = oneshot::channel();
        let mut request = Some(Request {
            batch,
            now,
            reply,
            balances,
            enqueued: Instant::now(),
        });
        match self.try_push(&mut request) {
            Some(pushed) => pushed.map(|()| Enqueued::Queued(receiver)),
            None => {
                let request = request.expect("a full queue hands the request back");
                match shared.config.backpressure {
                    Backpressure::Busy => Err(self.busy(request.batch)),
                    Backpressure::Wait(wait) => {
                        Ok(Enqueued::Full(request, receiver, Instant::now() + wait))
                    }
                }
            }
        }
    }

    /// One try to push `request`: `Some(Ok)` once pushed (`request` taken),
    /// `Some(Err(Stopped))` after shutdown, `None` while the queue is full (`request`
    /// kept). The admission pass is held for the push only, never across a wait.
    fn try_push(&self, request: &mut Option<Request>) -> Option<Result<(), SubmitError>> {
        let shared = self.shared();
        // Holding the pass keeps shutdown from draining until this push is done.
        let Some(pass) = shared.gate.enter() else {
            return Some(Err(SubmitError::Stopped));
        };
        let events = request.as_ref().map_or(0, |request| request.batch.len());
        let queued = shared.queued_events.fetch_add(events, Ordering::AcqRel);
        if queued + events > shared.config.queue_events_max {
            shared.queued_events.fetch_sub(events, Ordering::AcqRel);
            drop(pass);
            return None;
        }
        let pushed = shared
            .queue
            .push(request.take().expect("a request to push"));
        drop(pass);
        self.handle.log_thread.unpark();
        match pushed {
            Ok(()) => Some(Ok(())),
            Err(back) => {
                shared.queued_events.fetch_sub(events, Ordering::AcqRel);
                *request = Some(back);
                None
            }
        }
    }

    /// The end of a wait for room: the answer's receiver once pushed, or `Busy` with
    /// the batch back.
    fn waited(
        &self,
        pushed: Option<Result<(), SubmitError>>,
        request: Option<Request>,
    ) -> Result<(), SubmitError> {
        match (pushed, request) {
            (Some(pushed), _) => pushed,
            (None, Some(request)) => Err(self.busy(request.batch)),
            (None, None) => unreachable!("a full queue hands the request back"),
        }
    }

    fn busy(&self, batch: Batch) -> SubmitError {
        self.shared()
            .metrics
            .busy_rejections
            .fetch_add(1, Ordering::Relaxed);
        SubmitError::Busy(batch)
    }

    /// `lookup_accounts`: the accounts that exist, in request order.
    pub fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        self.shared().state.read().lookup_accounts(ids)
    }

    /// `lookup_transfers`: the transfers that exist, in request order.
    pub fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        self.shared().state.read().lookup_transfers(ids)
    }

    /// `get_account_transfers`: an account's history, filtered and bounded, as it stood
    /// when the call began. Read a bounded step at a time, as queries are: the read
    /// lock is taken per step, so a long history never holds up commits.
    pub fn get_account_transfers(&self, filter: &AccountFilter) -> Vec<Transfer> {
        self.read_in_steps(
            |state| AccountTransfersRead::new(state, filter),
            |read, state| read.step(state).then(|| read.transfers()),
        )
    }

    /// `get_account_balances`: the balances of an account created with the `history`
    /// flag after each transfer and expiry that changed it, filtered as
    /// [`Ledger::get_account_transfers`] filters (docs/spec.md §2, "History and
    /// point-in-time balances"). Empty for an account without `history`. Read a bounded
    /// step at a time, as [`Ledger::get_account_transfers`] is: the rows as they stood
    /// when the read began.
    pub fn get_account_balances(&self, filter: &AccountFilter) -> Vec<AccountBalance> {
        self.read_in_steps(
            |state| AccountBalancesRead::new(state, filter),
            |read, state| read.step(state).then(|| read.balances()),
        )
    }

    /// `query_accounts`: the accounts matching every field the filter gives, in
    /// timestamp order (newest first when reversed), at most the limit (docs/spec.md
    /// §2, "Queries"). Answered from the user-data indexes, the ledger and code indexes,
    /// or a walk in timestamp order when only a time range is given, a bounded step at
    /// a time: the read
    /// lock is taken per step, so a query never holds up commits for longer than one
    /// step. The answer is the state as it stood when the query began (accounts with
    /// their balances as of the last step, read under one lock).
    pub fn query_accounts(&self, filter: &QueryFilter) -> Vec<Account> {
        self.read_in_steps(
            |state| Query::new(state, QueryTarget::Accounts, filter),
            |query, state| query.step(state).then(|| query.accounts(state)),
        )
    }

    /// `query_transfers`: as [`Ledger::query_accounts`], for transfers.
    pub fn query_transfers(&self, filter: &QueryFilter) -> Vec<Transfer> {
        self.read_in_steps(
            |state| Query::new(state, QueryTarget::Transfers, filter),
            |query, state| query.step(state).then(|| query.transfers(state)),
        )
    }

    /// A read a bounded step at a time: `begin` starts it and its first step runs
    /// under the same read lock (one turn fewer); the lock is let go between steps, so
    /// a long read never holds up commits for longer than one step. `step` answers
    /// once the read is over, under the lock of its last step.
    fn read_in_steps<R, T>(
        &self,
        begin: impl FnOnce(&StateMachine) -> R,
        mut step: impl FnMut(&mut R, &StateMachine) -> Option<T>,
    ) -> T {
        let state_lock = &self.shared().state;
        let mut state = state_lock.read();
        let mut read = begin(&state);
        loop {
            if let Some(answer) = step(&mut read, &state) {
                return answer;
            }
            drop(state);
            state = state_lock.read();
        }
    }

    /// `get_change_events`: up to `limit` (at most 8,190; 0 asks for 8,190) change
    /// events with timestamp at or after `timestamp_min`, in commit order (docs/spec.md
    /// §2, "Change events"). Every change committed before the call is there. Read from
    /// the event journal's files, so reading never holds up commits. To resume after
    /// the last event handled, pass its timestamp + 1.
    ///
    /// # Errors
    ///
    /// [`EngineError::ChangeEvents`] when change events are off, writing them failed,
    /// `limit` is out of range, or the events asked for were deleted by retention
    /// ([`Config::events_retention_bytes`]); [`EngineError::ChangeEventsLate`] when the
    /// journal had not caught up with the last commit within 5 s (ask again).
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Account, ChangeKind, Config, Ledger};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    /// let account = Account { id: 1, ledger: 840, code: 1, ..Account::default() };
    /// ledger.create_accounts(vec![account]).expect("durable");
    /// let events = ledger.get_change_events(0, 100).expect("events");
    /// assert_eq!(events[0].kind, ChangeKind::AccountCreated);
    /// ```
    pub fn get_change_events(
        &self,
        timestamp_min: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>, EngineError> {
        let committed = self.shared().state.read().last_timestamp();
        self.change_event_reader()?
            .get(timestamp_min, limit, committed)
    }

    /// Follows the change events: every event with a timestamp after `after` (0 = from
    /// the first; an error once retention deleted events it would yield), in commit
    /// order, then each new one as it is committed, until the ledger shuts down. The
    /// stream reads the event journal's files: a slow consumer holds no memory of the
    /// engine's and never slows commits. A consumer
    /// that stores the timestamp of the last event it handled and subscribes after it
    /// again receives every later event exactly once, across restarts and crashes of
    /// either side.
    ///
    /// # Errors
    ///
    /// [`EngineError::ChangeEvents`] when change events are off; an item is an error
    /// when reading fails (then the stream ends).
    pub fn subscribe(
        &self,
        after: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<ChangeEvent, EngineError>> + Send + 'static,
        EngineError,
    > {
        self.change_event_reader()?.subscribe(after)
    }

    /// [`Ledger::subscribe`], the events a batch at a time: each item holds 1 to
    /// [`crate::SUBSCRIPTION_BATCH_EVENTS_MAX`] events, in commit order, as one read of the
    /// journal found them. The same events as `subscribe`, for a consumer that handles
    /// many a second: it saves moving each event through the stream on its own.
    ///
    /// # Errors
    ///
    /// As [`Ledger::subscribe`].
    pub fn subscribe_batches(
        &self,
        after: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Vec<ChangeEvent>, EngineError>> + Send + 'static,
        EngineError,
    > {
        self.change_event_reader()?.subscribe_batches(after)
    }

    /// The change-event journal's directory (`data_dir/events`), where other processes
    /// read it (`tally events`), or `None` when change events are off.
    pub fn events_dir(&self) -> Option<&std::path::Path> {
        self.shared().events.as_deref().map(Progress::dir)
    }

    /// The reading side of the change-event journal, for a reader that outlives this
    /// handle or reads as a cluster replica's readers do.
    ///
    /// # Errors
    ///
    /// [`EngineError::ChangeEvents`] when change events are off.
    pub fn change_event_reader(&self) -> Result<ChangeEventReader, EngineError> {
        self.shared()
            .events
            .as_ref()
            .map(|progress| ChangeEventReader::new(Arc::clone(progress)))
            .ok_or_else(|| EngineError::ChangeEvents {
                message: "change events are off for this ledger".to_string(),
            })
    }

    /// Per ledger, the sums of all balances, read consistently.
    pub fn ledger_totals(&self) -> BTreeMap<u32, LedgerTotals> {
        self.shared().state.read().ledger_totals()
    }

    /// Checks conservation and every balance limit over the whole state.
    pub fn check_invariants(&self) -> Vec<InvariantViolation> {
        self.shared().state.read().check_invariants()
    }

    /// Calls `visit` with the state under the read lock (dumps, verification).
    pub fn with_state<R>(&self, visit: impl FnOnce(&StateMachine) -> R) -> R {
        visit(&self.shared().state.read())
    }

    /// The shard count in force.
    pub fn shards(&self) -> usize {
        self.shared().config.shards_effective()
    }

    /// The configuration the ledger was opened with.
    pub fn config(&self) -> &Config {
        &self.shared().config
    }

    /// What opening this ledger recovered (snapshot, batches and events replayed, torn
    /// tail cut) and how long it took.
    pub fn recovery(&self) -> Recovery {
        self.shared().recovery.clone()
    }

    /// A point-in-time copy of the ledger's counters and latency figures
    /// ([`MetricsSnapshot::to_prometheus`] renders them for a scrape).
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_engine::{Account, Config, Ledger};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    /// ledger.create_accounts(vec![Account { id: 1, ledger: 1, code: 1, ..Account::default() }])
    ///     .expect("durable");
    /// let metrics = ledger.metrics();
    /// assert_eq!(metrics.events_committed, 1);
    /// assert!(metrics.to_prometheus().contains("tally_events_committed_total 1"));
    /// ```
    pub fn metrics(&self) -> MetricsSnapshot {
        let shared = self.shared();
        shared
            .metrics
            .snapshot(shared.queue.len(), shared.queue.capacity())
    }

    /// Stops admitting, drains the queue (every admitted batch is logged, synced and
    /// answered), and stops the log and apply threads. Later submissions get `Stopped`.
    /// A snapshot being written is waited for, and one is written from the newest image
    /// still waiting (a large state takes seconds): once this returns, no thread of the
    /// ledger writes into its directory.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.handle.stop()
    }
}

/// What one try to enqueue left: the answer's receiver, or (the queue full, under
/// `Backpressure::Wait`) the request, its receiver and the end of its wait.
enum Enqueued {
    Queued(oneshot::Receiver<Result<Answered, SubmitError>>),
    Full(
        Request,
        oneshot::Receiver<Result<Answered, SubmitError>>,
        Instant,
    ),
}

/// Results with the balances the apply thread sent beside them.
fn with_balances(answered: Answered) -> Vec<TransferResult> {
    let Answered { results, balances } = answered;
    assert_eq!(results.len(), balances.len(), "one balance entry per event");
    results
        .into_iter()
        .zip(balances)
        .map(|(result, balances)| TransferResult {
            code: result.code,
            timestamp: result.timestamp,
            balances,
        })
        .collect()
}

/// The answer of a submission whose commit threads stopped without answering.
fn threads_stopped() -> SubmitError {
    SubmitError::Failed("the commit threads stopped".into())
}

/// Rejects batches the log must never see: too large, or carrying engine-owned fields
/// (an account's balances). A cluster replica checks with it too.
pub fn validate(batch: &Batch) -> Result<(), SubmitError> {
    if batch.len() > BATCH_EVENTS_MAX {
        return Err(SubmitError::BatchTooLarge {
            events: batch.len(),
            max: BATCH_EVENTS_MAX,
        });
    }
    let invalid = |index, reason: &str| SubmitError::InvalidEvent {
        index,
        reason: reason.to_string(),
    };
    match batch {
        Batch::CreateAccounts(accounts) => {
            for (index, a) in accounts.iter().enumerate() {
                let balances = [
                    a.debits_pending,
                    a.debits_posted,
                    a.credits_pending,
                    a.credits_posted,
                ];
                if balances.iter().any(|b| *b != 0) {
                    return Err(invalid(
                        index,
                        "balances start at zero and are set only by transfers",
                    ));
                }
            }
        }
        // A timestamp is an imported event's own; on any other event the state machine
        // answers `timestamp_must_be_zero` for that event alone.
        Batch::CreateTransfers(_) => {}
    }
    Ok(())
}

/// Where a ledger in `data_dir` keeps its change-event journal.
pub fn events_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("events")
}

/// The files of a cluster replica's directory (`tally-cluster`): a single-node ledger
/// opened there would start empty beside them.
const REPLICA_FILES: [&str; 2] = ["replica.log", "replica.snapshot"];

/// Refuses a directory that holds a cluster replica, which `Ledger::open` must not
/// open (`tally verify` and the dumps read one through `tally_cluster::offline`).
pub fn refuse_replica_dir(dir: &std::path::Path) -> Result<(), EngineError> {
    match REPLICA_FILES.iter().find(|name| dir.join(name).exists()) {
        Some(name) => Err(EngineError::Config {
            field: "data_dir",
            reason: format!(
                "{} holds a cluster replica ({name}), not a single-node ledger: serve it \
                 with `tally serve --cluster`",
                dir.display()
            ),
        }),
        None => Ok(()),
    }
}

fn validate_config(config: &Config) -> Result<(), EngineError> {
    let invalid = |field, reason| Err(EngineError::Config { field, reason });
    if config.queue_batches_max == 0 {
        return invalid("queue_batches_max", "must be > 0".to_string());
    }
    if config.queue_events_max < BATCH_EVENTS_MAX {
        return invalid(
            "queue_events_max",
            format!(
                "must be at least {BATCH_EVENTS_MAX}, not {}",
                config.queue_events_max
            ),
        );
    }
    if config.group_events_max < BATCH_EVENTS_MAX {
        return invalid(
            "group_events_max",
            format!(
                "must be at least {BATCH_EVENTS_MAX}, not {}",
                config.group_events_max
            ),
        );
    }
    if config.commit_interval_max > COMMIT_INTERVAL_MAX {
        return invalid(
            "commit_interval_max",
            format!(
                "must be at most {COMMIT_INTERVAL_MAX:?}, not {:?}",
                config.commit_interval_max
            ),
        );
    }
    if config.commit_interval_min > config.commit_interval_max {
        return invalid(
            "commit_interval_min",
            format!(
                "must be at most commit_interval_max ({:?}), not {:?}",
                config.commit_interval_max, config.commit_interval_min
            ),
        );
    }
    let segment_bytes = tally_log::SEGMENT_BYTES_MIN..=tally_log::SEGMENT_FILE_BYTES_MAX;
    if !segment_bytes.contains(&config.segment_bytes_max) {
        // Past the maximum, recovery would refuse to read the segments it wrote.
        return invalid(
            "segment_bytes_max",
            format!(
                "must be from {} to {}, not {}",
                segment_bytes.start(),
                segment_bytes.end(),
                config.segment_bytes_max
            ),
        );
    }
    if config.shards > tally_state::PARTS_MAX {
        return invalid(
            "shards",
            format!(
                "must be at most {} (0 = fitted to the machine), not {}",
                tally_state::PARTS_MAX,
                config.shards
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod admission_tests;
