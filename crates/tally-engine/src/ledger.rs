//! The embedding API: open, submit (blocking or async), read, shut down.

use crate::config::{Backpressure, COMMIT_INTERVAL_MAX, Config};
use crate::core::Recovery;
use crate::error::{EngineError, SubmitError};
use crate::gate::Gate;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pipeline::{ApplyThread, GROUPS_IN_FLIGHT_MAX, LogThread, Request};
use crate::shards::{ShardCounters, ShardPool};
use crate::sync::{AtomicBool, Ordering};
use crossbeam_queue::ArrayQueue;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use tally_log::{DirLock, FsStorage, LogOptions, Storage};
use tally_state::{InvariantViolation, LedgerTotals, StateMachine};
use tally_types::{Account, AccountFilter, BATCH_EVENTS_MAX, Batch, ResultCode, Transfer};
use tokio::sync::oneshot;

/// The result of one event: its code, and its timestamp when it was applied (`Ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventResult {
    pub code: ResultCode,
    /// The event's engine timestamp; 0 unless `code` is `Ok`.
    pub timestamp: u64,
}

/// What the submitters, the readers and the two commit threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub queue: ArrayQueue<Request>,
    pub state: RwLock<StateMachine>,
    pub metrics: Metrics,
    /// Set once the log failed: every later write is refused with this message.
    pub failure: Mutex<Option<String>>,
    /// The log thread may exit once the queue is empty.
    pub draining: AtomicBool,
    /// Admission: closed at shutdown, which then waits for submitters mid-push.
    pub gate: Gate,
    /// What open recovered.
    pub recovery: Recovery,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    log_thread: Thread,
    /// The log thread, then the apply thread.
    join: Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
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
        let Some((log_join, apply_join)) = self.join.lock().take() else {
            return Ok(());
        };
        // Close the gate and wait out submitters already inside: after this no push can
        // happen, so the drain below answers every admitted request.
        self.shared.gate.close();
        self.shared.draining.store(true, Ordering::SeqCst);
        self.log_thread.unpark();
        // The log thread drains the queue and exits; the apply thread then finishes
        // the groups in flight and exits when its channel closes.
        let joined = log_join.join().and(apply_join.join());
        // The log thread dropped the log; now let another process in.
        self.lock.lock().take();
        joined.map_err(|_| EngineError::Thread("a commit thread panicked".into()))?;
        match self.shared.failure.lock().clone() {
            Some(message) => Err(EngineError::Recovery(format!("log failed: {message}"))),
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
    /// apply threads.
    pub fn open(config: Config) -> Result<Ledger, EngineError> {
        validate_config(&config)?;
        let lock = DirLock::acquire(&config.data_dir)?;
        let storage = FsStorage::create_dir(&config.data_dir).map_err(|source| {
            EngineError::Config(format!(
                "cannot create {}: {source}",
                config.data_dir.display()
            ))
        })?;
        Self::start(config, Box::new(storage), Some(lock))
    }

    /// Opens a ledger over any storage (tests inject faults with
    /// `tally_log::faulty::FaultyStorage`). No directory lock is taken:
    /// the caller owns the storage exclusively. `config.data_dir` is not used.
    pub fn open_with_storage(
        config: Config,
        storage: Box<dyn Storage>,
    ) -> Result<Ledger, EngineError> {
        validate_config(&config)?;
        Self::start(config, storage, None)
    }

    fn start(
        config: Config,
        storage: Box<dyn Storage>,
        lock: Option<DirLock>,
    ) -> Result<Ledger, EngineError> {
        let options = LogOptions {
            segment_bytes_max: config.segment_bytes_max,
            sync: config.sync,
        };
        let shards = config.shards_effective();
        let capacity = crate::core::Capacity {
            accounts: config.accounts_capacity,
            transfers: config.transfers_capacity,
            parts: shards,
        };
        let shard_counters = Arc::new(ShardCounters::default());
        let pool = match shards {
            1 => None,
            _ => Some(
                ShardPool::start(shards, Arc::clone(&shard_counters))
                    .map_err(|error| EngineError::Thread(error.to_string()))?,
            ),
        };
        // Recovery replays on the shard threads too.
        let (logger, mut applier, state, recovery) =
            crate::core::recover(storage, options, capacity, pool.as_ref())?;
        applier.shards = pool;
        shard_counters.reset();
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(config.queue_batches_max),
            config,
            state: RwLock::new(state),
            metrics: Metrics::new(shard_counters),
            failure: Mutex::new(None),
            draining: AtomicBool::new(false),
            gate: Gate::new(),
            recovery,
        });
        let (to_apply, from_log) = std::sync::mpsc::sync_channel(GROUPS_IN_FLIGHT_MAX);
        let (snapshots_to_log, snapshots) = std::sync::mpsc::channel();
        let apply = ApplyThread {
            shared: Arc::clone(&shared),
            applier,
            from_log,
            snapshots: snapshots_to_log,
        };
        let log = LogThread {
            shared: Arc::clone(&shared),
            logger,
            to_apply,
            snapshots,
            snapshot_in_flight: None,
            retirement_in_flight: None,
            spare_step_bytes_per_us: crate::pipeline::SPARE_STEP_BYTES_PER_US_INITIAL,
        };
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|error| EngineError::Thread(error.to_string()))
        };
        let apply_join = spawn("tally-apply", Box::new(move || apply.run()))?;
        let log_join = spawn("tally-log", Box::new(move || log.run()))?;
        let log_thread = log_join.thread().clone();
        Ok(Ledger {
            handle: Arc::new(Handle {
                shared,
                log_thread,
                join: Mutex::new(Some((log_join, apply_join))),
                lock: Mutex::new(lock),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Submits a batch and blocks until it is durable; one result per event, in order.
    /// Must not be called from inside an async runtime: use [`Ledger::submit_async`].
    pub fn submit(&self, batch: Batch) -> Result<Vec<EventResult>, SubmitError> {
        self.submit_at(batch, None)
    }

    /// [`Ledger::submit`] with a requested stamp (manual clock only).
    pub fn submit_at(
        &self,
        batch: Batch,
        now: Option<u64>,
    ) -> Result<Vec<EventResult>, SubmitError> {
        let receiver = self.admit(batch, now)?;
        receiver
            .blocking_recv()
            .unwrap_or_else(|_| Err(SubmitError::Failed("the commit threads stopped".into())))
    }

    /// Submits a batch from async code; resolves once it is durable.
    pub async fn submit_async(&self, batch: Batch) -> Result<Vec<EventResult>, SubmitError> {
        let receiver = self.admit(batch, None)?;
        receiver
            .await
            .unwrap_or_else(|_| Err(SubmitError::Failed("the commit threads stopped".into())))
    }

    pub fn create_accounts(&self, accounts: Vec<Account>) -> Result<Vec<EventResult>, SubmitError> {
        self.submit(Batch::CreateAccounts(accounts))
    }

    pub fn create_transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<EventResult>, SubmitError> {
        self.submit(Batch::CreateTransfers(transfers))
    }

    /// Validates a batch and puts it on the queue, honouring the backpressure setting.
    fn admit(
        &self,
        batch: Batch,
        now: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<Vec<EventResult>, SubmitError>>, SubmitError> {
        validate(&batch)?;
        let shared = self.shared();
        if now.is_some() && !shared.config.manual_clock {
            return Err(SubmitError::ManualClockDisabled);
        }
        if let Some(message) = shared.failure.lock().clone() {
            return Err(SubmitError::Failed(message));
        }
        // Holding the pass keeps shutdown from draining until this push is done.
        let Some(pass) = shared.gate.enter() else {
            return Err(SubmitError::Stopped);
        };
        let busy = || {
            shared
                .metrics
                .busy_rejections
                .fetch_add(1, Ordering::Relaxed);
            SubmitError::Busy
        };
        // Under overload most submissions are turned away: do it before allocating
        // anything, so that rejecting costs the committed work as little as possible.
        if shared.config.backpressure == Backpressure::Busy && shared.queue.is_full() {
            return Err(busy());
        }
        let (reply, receiver) = oneshot::channel();
        let mut request = Request {
            batch,
            now,
            reply,
            enqueued: Instant::now(),
        };
        let deadline = match shared.config.backpressure {
            Backpressure::Busy => None,
            Backpressure::Wait(wait) => Some(Instant::now() + wait),
        };
        let pushed = loop {
            match shared.queue.push(request) {
                Ok(()) => break Ok(()),
                Err(back) => request = back,
            }
            if deadline.is_none_or(|d| Instant::now() >= d) {
                break Err(busy());
            }
            self.handle.log_thread.unpark();
            std::thread::sleep(Duration::from_micros(50));
        };
        drop(pass);
        pushed?;
        self.handle.log_thread.unpark();
        Ok(receiver)
    }

    /// `lookup_accounts`: the accounts that exist, in request order.
    pub fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        self.shared().state.read().lookup_accounts(ids)
    }

    /// `lookup_transfers`: the transfers that exist, in request order.
    pub fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        self.shared().state.read().lookup_transfers(ids)
    }

    /// `get_account_transfers`: an account's history, filtered and bounded.
    pub fn get_account_transfers(&self, filter: &AccountFilter) -> Vec<Transfer> {
        self.shared().state.read().account_transfers(filter)
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
        self.shared().recovery
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let shared = self.shared();
        shared
            .metrics
            .snapshot(shared.queue.len(), shared.queue.capacity())
    }

    /// Stops admitting, drains the queue (every admitted batch is logged, synced and
    /// answered), and stops the log and apply threads. Later submissions get `Stopped`.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.handle.stop()
    }
}

/// Rejects batches the log must never see: too large, or carrying engine-owned fields.
fn validate(batch: &Batch) -> Result<(), SubmitError> {
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
                if a.timestamp != 0 {
                    return Err(invalid(index, "timestamp is assigned by the engine"));
                }
            }
        }
        Batch::CreateTransfers(transfers) => {
            for (index, t) in transfers.iter().enumerate() {
                if t.timestamp != 0 {
                    return Err(invalid(index, "timestamp is assigned by the engine"));
                }
            }
        }
    }
    Ok(())
}

fn validate_config(config: &Config) -> Result<(), EngineError> {
    if config.queue_batches_max == 0 || config.group_events_max < BATCH_EVENTS_MAX {
        return Err(EngineError::Config(format!(
            "queue_batches_max must be > 0 and group_events_max >= {BATCH_EVENTS_MAX}"
        )));
    }
    if config.commit_interval_min > COMMIT_INTERVAL_MAX {
        return Err(EngineError::Config(format!(
            "commit_interval_min must be at most {COMMIT_INTERVAL_MAX:?}, not {:?}",
            config.commit_interval_min
        )));
    }
    let segment_bytes = tally_log::SEGMENT_BYTES_MIN..=tally_log::SEGMENT_FILE_BYTES_MAX;
    if !segment_bytes.contains(&config.segment_bytes_max) {
        // Past the maximum, recovery would refuse to read the segments it wrote.
        return Err(EngineError::Config(format!(
            "segment_bytes_max must be from {} to {}, not {}",
            segment_bytes.start(),
            segment_bytes.end(),
            config.segment_bytes_max
        )));
    }
    if config.shards > tally_state::PARTS_MAX {
        return Err(EngineError::Config(format!(
            "shards must be at most {} (0 = fitted to the machine), not {}",
            tally_state::PARTS_MAX,
            config.shards
        )));
    }
    Ok(())
}
