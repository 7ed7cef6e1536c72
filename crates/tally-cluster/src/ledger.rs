//! One handle for the ledger a payment service embeds, a single node or one replica of
//! a cluster: [`Ledger::open`] takes either a single node's [`Config`] or a
//! [`ClusterConfig`], and the same calls reach both. A replica passes writes on to its
//! leader and reads at the leader's read index (docs/spec.md §7); a single node answers
//! from its own engine.
//!
//! Each call comes blocking (`submit`, `lookup_accounts`, ...) for threads, and as
//! `*_async` for tokio tasks. A replica opened with [`Ledger::open`] runs on a runtime
//! of its own, so its blocking calls work from any thread; dropping its last handle
//! shuts it down (bounded) before its directory is let go. One opened with
//! [`Ledger::open_async`] runs on the caller's runtime: a blocking call from that
//! runtime is refused ([`LedgerError::BlockingOnItsRuntime`]: it would wait for work
//! its own thread has to run), and [`Ledger::shutdown_async`] stops it.

use crate::{ClusterConfig, ClusterError, Replica};
use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use tally_engine::{
    ChangeEventReader, Config, EngineError, EventResult, SubmitError, TransferResult,
};
use tally_state::{AccountBalancesRead, AccountTransfersRead, Query, QueryTarget, StateMachine};
use tally_types::{
    Account, AccountBalance, AccountFilter, Batch, ChangeEvent, QueryFilter, Transfer,
};

/// Worker threads of the runtime [`Ledger::open`] starts for a replica: its Raft core,
/// peer service and calls are light; the heavy work runs on the engine's own threads.
const REPLICA_RUNTIME_THREADS: usize = 2;

/// How long dropping the last handle of a replica on its own runtime waits for the
/// replica to stop before the runtime is let go.
const DROP_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long that drop then waits for calls that just answered to let go of the replica
/// (a handle kept from [`HostedReplica::replica`] holds it longer).
const DROP_HOLDERS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`Ledger::open`] opens: a single node, or one replica of a cluster.
#[derive(Debug, Clone)]
pub enum LedgerConfig {
    /// A single-node ledger: its own log on its own disk.
    Node(Config),
    /// One replica of a cluster.
    Replica(ClusterConfig),
}

impl From<Config> for LedgerConfig {
    fn from(config: Config) -> LedgerConfig {
        LedgerConfig::Node(config)
    }
}

impl From<ClusterConfig> for LedgerConfig {
    fn from(config: ClusterConfig) -> LedgerConfig {
        LedgerConfig::Replica(config)
    }
}

/// A ledger embedded in this process: a single node, or one replica of a cluster.
/// Cheap to clone; every clone is the same ledger.
#[derive(Debug, Clone)]
pub enum Ledger {
    /// A single-node ledger.
    Node(tally_engine::Ledger),
    /// One replica of a cluster, with the runtime it runs on.
    Replica(HostedReplica),
}

/// A replica and the tokio runtime it runs on. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HostedReplica {
    hosted: Arc<Hosted>,
}

#[derive(Debug)]
struct Hosted {
    replica: Arc<Replica>,
    runtime: tokio::runtime::Handle,
    /// The runtime [`Ledger::open`] started for the replica; `None` when it runs on the
    /// caller's.
    owned: Option<tokio::runtime::Runtime>,
}

impl Drop for Hosted {
    /// On its own runtime, the replica is shut down first (bounded): its Raft tasks and
    /// log writer end before the directory lock goes with the last `Arc<Replica>`.
    fn drop(&mut self) {
        let Some(runtime) = self.owned.take() else {
            return;
        };
        let replica = Arc::clone(&self.replica);
        let (stopped, waited) = sync_channel(1);
        runtime.spawn(async move {
            replica.shutdown().await;
            // Let go of this handle before saying so, or it may outlive the wait below.
            drop(replica);
            let _ = stopped.send(());
        });
        let _ = waited.recv_timeout(DROP_SHUTDOWN_WAIT);
        // Not a blocking shutdown: the last handle may be dropped inside async code.
        runtime.shutdown_background();
        // A call that just answered may still hold the replica on a worker thread, which
        // `shutdown_background` does not wait for: the lock goes with the last holder.
        let deadline = std::time::Instant::now() + DROP_HOLDERS_WAIT;
        while Arc::strong_count(&self.replica) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Why a call on a [`Ledger`] got no answer.
#[derive(Debug)]
pub enum LedgerError {
    /// The single node refused the batch (it changed nothing) or failed it.
    Submit(SubmitError),
    /// The single node could not be opened, read its change events, or shut down.
    Engine(EngineError),
    /// The replica refused the call or could not answer ([`ClusterError`] says whether
    /// a write may have been applied).
    Cluster(ClusterError),
    /// The replica could not be opened.
    Open(String),
    /// A blocking call on a replica, made from the tokio runtime the replica runs on
    /// ([`Ledger::open_async`]): it would wait for work its own thread has to run.
    /// Nothing was done; call the `*_async` form.
    BlockingOnItsRuntime,
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerError::Submit(error) => write!(f, "{error}"),
            LedgerError::Engine(error) => write!(f, "{error}"),
            LedgerError::Cluster(error) => write!(f, "{error}"),
            LedgerError::Open(why) => write!(f, "opening the ledger: {why}"),
            LedgerError::BlockingOnItsRuntime => f.write_str(
                "a blocking call on a replica from the runtime it runs on would never \
                 return; nothing was done: call the *_async form",
            ),
        }
    }
}

impl std::error::Error for LedgerError {}

impl HostedReplica {
    /// A replica that runs on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Open`] when called outside a tokio runtime.
    pub fn on_current_runtime(replica: Arc<Replica>) -> Result<HostedReplica, LedgerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|error| {
            LedgerError::Open(format!("a replica runs inside a tokio runtime: {error}"))
        })?;
        let hosted = Hosted {
            replica,
            runtime,
            owned: None,
        };
        Ok(HostedReplica {
            hosted: Arc::new(hosted),
        })
    }

    /// The replica: status, membership changes, reads at its own state.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.hosted.replica
    }

    /// Runs `call` on the replica's runtime; waits for it from this thread.
    fn wait<T, F>(&self, call: impl FnOnce(Arc<Replica>) -> F) -> Result<T, LedgerError>
    where
        F: Future<Output = Result<T, ClusterError>> + Send + 'static,
        T: Send + 'static,
    {
        let hosted = &self.hosted;
        let current = tokio::runtime::Handle::try_current().ok();
        if hosted.owned.is_none() && current.is_some_and(|h| h.id() == hosted.runtime.id()) {
            return Err(LedgerError::BlockingOnItsRuntime);
        }
        let (answer, answered) = sync_channel(1);
        let call = call(Arc::clone(&hosted.replica));
        hosted.runtime.spawn(async move {
            let _ = answer.send(call.await);
        });
        // No answer: the runtime stopped and dropped the call.
        let answer = answered.recv().unwrap_or(Err(ClusterError::Stopped));
        answer.map_err(LedgerError::Cluster)
    }

    /// Runs `call` from a tokio task: here when the replica runs on the caller's
    /// runtime, on its own runtime otherwise (its timers and tasks live there).
    async fn run<T, F>(&self, call: impl FnOnce(Arc<Replica>) -> F) -> Result<T, LedgerError>
    where
        F: Future<Output = Result<T, ClusterError>> + Send + 'static,
        T: Send + 'static,
    {
        let hosted = &self.hosted;
        let call = call(Arc::clone(&hosted.replica));
        if hosted.owned.is_none() {
            return call.await.map_err(LedgerError::Cluster);
        }
        let task = hosted.runtime.spawn(call);
        // A task that did not finish: the runtime stopped.
        let answer = task.await.unwrap_or(Err(ClusterError::Stopped));
        answer.map_err(LedgerError::Cluster)
    }
}

/// Reads that a single node answers from its state and a replica at the leader's read
/// index, each in a blocking and an async form. `replica` names the [`Ledger`] read the
/// replica takes and its argument(s), which may use the call's own argument (owned):
/// [`Ledger::read`] in one go, or [`Ledger::read_in_steps`] for a long read.
macro_rules! reads {
    ($(
        $(#[$doc:meta])*
        $name:ident, $name_async:ident ($arg:ident: &$arg_type:ty) -> $answer:ty
            = node $node_read:ident, replica $read:ident, $read_async:ident ($($reader:expr),+);
    )*) => {$(
        $(#[$doc])*
        ///
        /// # Errors
        ///
        /// A replica: [`LedgerError::Cluster`] when no leader confirms a read index in
        /// time. A single node always answers.
        pub fn $name(&self, $arg: &$arg_type) -> Result<$answer, LedgerError> {
            match self {
                Ledger::Node(node) => Ok(node.$node_read($arg)),
                Ledger::Replica(_) => {
                    let $arg = $arg.to_owned();
                    self.$read($($reader),+)
                }
            }
        }

        #[doc = concat!("[`Ledger::", stringify!($name), "`] from a tokio task (a single node \
            reads on a blocking thread).")]
        ///
        /// # Errors
        ///
        #[doc = concat!("As [`Ledger::", stringify!($name), "`].")]
        pub async fn $name_async(&self, $arg: &$arg_type) -> Result<$answer, LedgerError> {
            match self {
                Ledger::Node(node) => {
                    let (node, $arg) = (node.clone(), $arg.to_owned());
                    off_the_runtime(move || node.$node_read(&$arg)).await
                }
                Ledger::Replica(_) => {
                    let $arg = $arg.to_owned();
                    self.$read_async($($reader),+).await
                }
            }
        }
    )*};
}

impl Ledger {
    /// True when writes sent here go on to another process: a replica that does not
    /// lead. A server tells its clients so (`tally-forwarded`), and they move to the
    /// next replica they know, until they reach the leader.
    pub fn forwards_writes(&self) -> bool {
        match self {
            Ledger::Node(_) => false,
            Ledger::Replica(hosted) => !hosted.replica().leads(),
        }
    }

    /// Opens a single node (`Config`) or one replica of a cluster (`ClusterConfig`).
    /// A replica gets a tokio runtime of its own (two threads), which ends with the last
    /// clone of the handle; inside async code, [`Ledger::open_async`] runs it on the
    /// caller's runtime instead.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Engine`] when the single node cannot open (recovery, the lock,
    /// the directory); [`LedgerError::Open`] when the replica cannot.
    pub fn open(config: impl Into<LedgerConfig>) -> Result<Ledger, LedgerError> {
        let config = match config.into() {
            LedgerConfig::Node(config) => {
                let node = tally_engine::Ledger::open(config).map_err(LedgerError::Engine)?;
                return Ok(Ledger::Node(node));
            }
            LedgerConfig::Replica(config) => config,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(REPLICA_RUNTIME_THREADS)
            .thread_name("tally-replica")
            .enable_all()
            .build()
            .map_err(|error| LedgerError::Open(format!("starting its runtime: {error}")))?;
        let (answer, answered) = sync_channel(1);
        runtime.spawn(async move {
            let _ = answer.send(Replica::open(config).await);
        });
        let opened = answered
            .recv()
            .map_err(|_| LedgerError::Open("its runtime stopped while it opened".into()));
        let replica = match opened.and_then(|opened| opened.map_err(LedgerError::Open)) {
            Ok(replica) => replica,
            Err(error) => {
                runtime.shutdown_background();
                return Err(error);
            }
        };
        let hosted = Hosted {
            replica: Arc::new(replica),
            runtime: runtime.handle().clone(),
            owned: Some(runtime),
        };
        Ok(Ledger::Replica(HostedReplica {
            hosted: Arc::new(hosted),
        }))
    }

    /// [`Ledger::open`] from a tokio task: a replica runs on the current runtime; a
    /// single node opens (and recovers) on a blocking thread.
    ///
    /// # Errors
    ///
    /// As [`Ledger::open`].
    pub async fn open_async(config: impl Into<LedgerConfig>) -> Result<Ledger, LedgerError> {
        match config.into() {
            LedgerConfig::Node(config) => {
                let open = move || tally_engine::Ledger::open(config);
                on_a_blocking_thread("tally-open", open)
                    .await
                    .map(Ledger::Node)
            }
            LedgerConfig::Replica(config) => {
                let replica = Replica::open(config).await.map_err(LedgerError::Open)?;
                HostedReplica::on_current_runtime(Arc::new(replica)).map(Ledger::Replica)
            }
        }
    }

    /// The single node, for what only it has (metrics, `with_state`, its config).
    pub fn as_node(&self) -> Option<&tally_engine::Ledger> {
        match self {
            Ledger::Node(node) => Some(node),
            Ledger::Replica(_) => None,
        }
    }

    /// The replica, for what only it has (status, membership changes, local reads).
    pub fn as_replica(&self) -> Option<&Replica> {
        match self {
            Ledger::Node(_) => None,
            Ledger::Replica(hosted) => Some(hosted.replica()),
        }
    }

    /// Submits one batch and waits until it is durable (a single node: synced to its
    /// log; a replica: committed on a majority and applied), then answers one result
    /// per event. Retrying a batch is safe: ids are idempotency keys.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Submit`] (single node) or [`LedgerError::Cluster`] (replica): the
    /// batch was refused whole (busy, too large, invalid), or the replica could not
    /// learn its outcome (`ClusterError::Unavailable`: send it again).
    pub fn submit(&self, batch: Batch) -> Result<Vec<EventResult>, LedgerError> {
        match self {
            Ledger::Node(node) => node.submit(batch).map_err(LedgerError::Submit),
            Ledger::Replica(hosted) => {
                hosted.wait(move |replica| async move { replica.submit(batch).await })
            }
        }
    }

    /// [`Ledger::submit`] from a tokio task.
    ///
    /// # Errors
    ///
    /// As [`Ledger::submit`].
    pub async fn submit_async(&self, batch: Batch) -> Result<Vec<EventResult>, LedgerError> {
        match self {
            Ledger::Node(node) => node.submit_async(batch).await.map_err(LedgerError::Submit),
            Ledger::Replica(hosted) => {
                hosted
                    .run(move |replica| async move { replica.submit(batch).await })
                    .await
            }
        }
    }

    /// [`Ledger::create_accounts`] from a tokio task.
    ///
    /// # Errors
    ///
    /// As [`Ledger::submit`].
    pub async fn create_accounts_async(
        &self,
        accounts: Vec<Account>,
    ) -> Result<Vec<EventResult>, LedgerError> {
        self.submit_async(Batch::CreateAccounts(accounts)).await
    }

    /// [`Ledger::create_transfers`] from a tokio task.
    ///
    /// # Errors
    ///
    /// As [`Ledger::submit`].
    pub async fn create_transfers_async(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<EventResult>, LedgerError> {
        self.submit_async(Batch::CreateTransfers(transfers)).await
    }

    /// `create_accounts`: [`Ledger::submit`] of one batch of accounts.
    ///
    /// # Errors
    ///
    /// As [`Ledger::submit`].
    pub fn create_accounts(&self, accounts: Vec<Account>) -> Result<Vec<EventResult>, LedgerError> {
        self.submit(Batch::CreateAccounts(accounts))
    }

    /// `create_transfers`: [`Ledger::submit`] of one batch of transfers.
    ///
    /// # Errors
    ///
    /// As [`Ledger::submit`].
    pub fn create_transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<EventResult>, LedgerError> {
        self.submit(Batch::CreateTransfers(transfers))
    }

    /// Transfers answered with both accounts' balances right after each applied one
    /// (docs/spec.md §2, "Balances with results").
    ///
    /// # Errors
    ///
    /// As [`Ledger::submit`].
    pub fn create_transfers_with_balances(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, LedgerError> {
        match self {
            Ledger::Node(node) => node
                .create_transfers_with_balances(transfers, None)
                .map_err(LedgerError::Submit),
            Ledger::Replica(hosted) => hosted
                .wait(move |replica| async move { replica.submit_with_balances(transfers).await }),
        }
    }

    /// [`Ledger::create_transfers_with_balances`] from a tokio task.
    ///
    /// # Errors
    ///
    /// As [`Ledger::submit`].
    pub async fn create_transfers_with_balances_async(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, LedgerError> {
        match self {
            Ledger::Node(node) => node
                .create_transfers_with_balances_async(transfers)
                .await
                .map_err(LedgerError::Submit),
            Ledger::Replica(hosted) => {
                hosted
                    .run(
                        move |replica| async move { replica.submit_with_balances(transfers).await },
                    )
                    .await
            }
        }
    }

    reads! {
        /// `lookup_accounts`: the accounts that exist, in request order.
        lookup_accounts, lookup_accounts_async(ids: &[u128]) -> Vec<Account>
            = node lookup_accounts, replica read, read_async(
                move |state: &StateMachine| state.lookup_accounts(&ids)
            );
        /// `lookup_transfers`: the transfers that exist, in request order.
        lookup_transfers, lookup_transfers_async(ids: &[u128]) -> Vec<Transfer>
            = node lookup_transfers, replica read, read_async(
                move |state: &StateMachine| state.lookup_transfers(&ids)
            );
        /// `get_account_balances`: an account's balances after each change (accounts
        /// with the `history` flag), filtered as `get_account_transfers`.
        get_account_balances, get_account_balances_async(filter: &AccountFilter)
            -> Vec<AccountBalance> = node get_account_balances,
            replica read_in_steps, read_in_steps_async(
                move |state: &StateMachine| AccountBalancesRead::new(state, &filter),
                |read: &mut AccountBalancesRead, state: &StateMachine| {
                    read.step(state).then(|| read.balances())
                }
            );
        /// `get_account_transfers`: an account's transfers, filtered and bounded.
        get_account_transfers, get_account_transfers_async(filter: &AccountFilter)
            -> Vec<Transfer> = node get_account_transfers,
            replica read_in_steps, read_in_steps_async(
                move |state: &StateMachine| AccountTransfersRead::new(state, &filter),
                |read: &mut AccountTransfersRead, state: &StateMachine| {
                    read.step(state).then(|| read.transfers())
                }
            );
        /// `query_accounts`: the accounts matching every field the filter gives.
        query_accounts, query_accounts_async(filter: &QueryFilter) -> Vec<Account>
            = node query_accounts, replica read_in_steps, read_in_steps_async(
                move |state: &StateMachine| Query::new(state, QueryTarget::Accounts, &filter),
                |query: &mut Query, state: &StateMachine| {
                    query.step(state).then(|| query.accounts(state))
                }
            );
        /// `query_transfers`: the transfers matching every field the filter gives.
        query_transfers, query_transfers_async(filter: &QueryFilter) -> Vec<Transfer>
            = node query_transfers, replica read_in_steps, read_in_steps_async(
                move |state: &StateMachine| Query::new(state, QueryTarget::Transfers, &filter),
                |query: &mut Query, state: &StateMachine| {
                    query.step(state).then(|| query.transfers(state))
                }
            );
    }

    /// Runs `read` on the state once every write acknowledged before the call is
    /// applied here (a replica: at the leader's read index).
    ///
    /// # Errors
    ///
    /// As [`Ledger::lookup_accounts`].
    pub fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&StateMachine) -> T + Send + 'static,
    ) -> Result<T, LedgerError> {
        match self {
            Ledger::Node(node) => Ok(node.with_state(read)),
            Ledger::Replica(hosted) => {
                hosted.wait(move |replica| async move { replica.read(read).await })
            }
        }
    }

    /// [`Ledger::read`] from a tokio task (a single node reads on a blocking thread).
    ///
    /// # Errors
    ///
    /// As [`Ledger::lookup_accounts`].
    pub async fn read_async<T: Send + 'static>(
        &self,
        read: impl FnOnce(&StateMachine) -> T + Send + 'static,
    ) -> Result<T, LedgerError> {
        match self {
            Ledger::Node(node) => {
                let node = node.clone();
                off_the_runtime(move || node.with_state(read)).await
            }
            Ledger::Replica(hosted) => {
                hosted
                    .run(move |replica| async move { replica.read(read).await })
                    .await
            }
        }
    }

    /// A read taken in bounded steps (a query, an account's history) once every write
    /// acknowledged before the call is applied here: `start` begins it over the state
    /// as it stands, and `step` takes one step, giving the answer once the read is
    /// over. The state's read lock is taken per step, so commits (a replica: applying)
    /// go on between them.
    ///
    /// # Errors
    ///
    /// As [`Ledger::lookup_accounts`].
    pub fn read_in_steps<R: Send + 'static, T: Send + 'static>(
        &self,
        start: impl FnOnce(&StateMachine) -> R + Send + 'static,
        mut step: impl FnMut(&mut R, &StateMachine) -> Option<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        match self {
            Ledger::Node(node) => {
                let mut read = node.with_state(start);
                loop {
                    if let Some(answer) = node.with_state(|state| step(&mut read, state)) {
                        return Ok(answer);
                    }
                }
            }
            Ledger::Replica(hosted) => {
                hosted.wait(move |replica| async move { replica.read_in_steps(start, step).await })
            }
        }
    }

    /// [`Ledger::read_in_steps`] from a tokio task (a single node reads on a blocking
    /// thread).
    ///
    /// # Errors
    ///
    /// As [`Ledger::lookup_accounts`].
    pub async fn read_in_steps_async<R: Send + 'static, T: Send + 'static>(
        &self,
        start: impl FnOnce(&StateMachine) -> R + Send + 'static,
        step: impl FnMut(&mut R, &StateMachine) -> Option<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        match self {
            Ledger::Node(_) => {
                let ledger = self.clone();
                off_the_runtime(move || ledger.read_in_steps(start, step)).await?
            }
            Ledger::Replica(hosted) => {
                hosted
                    .run(move |replica| async move { replica.read_in_steps(start, step).await })
                    .await
            }
        }
    }

    /// `get_change_events`: up to `limit` (at most 8,190; 0 asks for the most) change
    /// events with timestamp at or after `timestamp_min`, in commit order; every change
    /// acknowledged before the call is there (docs/spec.md §2, "Change events").
    ///
    /// # Errors
    ///
    /// [`LedgerError::Engine`] or [`LedgerError::Cluster`]: change events are off, the
    /// limit is out of range, the events asked for are not kept, or (a replica) no read
    /// index in time.
    pub fn get_change_events(
        &self,
        timestamp_min: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>, LedgerError> {
        match self {
            Ledger::Node(node) => node
                .get_change_events(timestamp_min, limit)
                .map_err(LedgerError::Engine),
            Ledger::Replica(hosted) => hosted.wait(move |replica| async move {
                replica.get_change_events(timestamp_min, limit).await
            }),
        }
    }

    /// [`Ledger::get_change_events`] from a tokio task (a single node reads its journal
    /// on a blocking thread).
    ///
    /// # Errors
    ///
    /// As [`Ledger::get_change_events`].
    pub async fn get_change_events_async(
        &self,
        timestamp_min: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>, LedgerError> {
        if let Ledger::Replica(hosted) = self {
            return hosted
                .run(move |replica| async move {
                    replica.get_change_events(timestamp_min, limit).await
                })
                .await;
        }
        let (reader, committed) = self.change_events_at_commit_async().await?;
        let read = move || reader.get(timestamp_min, limit, committed);
        on_a_blocking_thread("tally-change-events", read).await
    }

    /// The reading side of the change-event journal and the last timestamp committed
    /// before the call (a replica: at the leader's read index): a read that waits for
    /// the journal to hold it (`ChangeEventReader::get`) sees every change
    /// acknowledged before the call.
    ///
    /// # Errors
    ///
    /// Change events are off, or (a replica) no read index in time.
    pub async fn change_events_at_commit_async(
        &self,
    ) -> Result<(ChangeEventReader, u64), LedgerError> {
        match self {
            Ledger::Node(node) => {
                let reader = node.change_event_reader().map_err(LedgerError::Engine)?;
                Ok((reader, node.with_state(StateMachine::last_timestamp)))
            }
            Ledger::Replica(hosted) => {
                hosted
                    .run(|replica| async move { replica.change_events_at_read_index().await })
                    .await
            }
        }
    }

    /// The reading side of the change-event journal: pages at a commit point, and
    /// followers (`ChangeEventReader::subscribe`) of every event after a timestamp.
    ///
    /// # Errors
    ///
    /// Change events are off.
    pub fn change_event_reader(&self) -> Result<ChangeEventReader, LedgerError> {
        match self {
            Ledger::Node(node) => node.change_event_reader().map_err(LedgerError::Engine),
            Ledger::Replica(hosted) => hosted
                .replica()
                .change_event_reader()
                .map_err(LedgerError::Cluster),
        }
    }

    /// Every change event after timestamp `after`, then each new one as it is
    /// committed, as an async stream (see `tally_engine::Ledger::subscribe`): a consumer
    /// that stores the timestamp of the last event it handled and subscribes after it
    /// again receives every later event exactly once. A replica's stream follows what
    /// it applies.
    ///
    /// # Errors
    ///
    /// Change events are off; an item is an error when reading fails (then the stream
    /// ends).
    pub fn subscribe(
        &self,
        after: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<ChangeEvent, LedgerError>> + Send + 'static + use<>,
        LedgerError,
    > {
        use futures_util::StreamExt;
        let events = self
            .change_event_reader()?
            .subscribe(after)
            .map_err(LedgerError::Engine)?;
        Ok(events.map(|item| item.map_err(LedgerError::Engine)))
    }

    /// [`Ledger::subscribe`], the events a batch at a time (1 to
    /// [`tally_engine::SUBSCRIPTION_BATCH_EVENTS_MAX`] an item, in commit order).
    ///
    /// # Errors
    ///
    /// As [`Ledger::subscribe`].
    pub fn subscribe_batches(
        &self,
        after: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Vec<ChangeEvent>, LedgerError>> + Send + 'static + use<>,
        LedgerError,
    > {
        use futures_util::StreamExt;
        let batches = self
            .change_event_reader()?
            .subscribe_batches(after)
            .map_err(LedgerError::Engine)?;
        Ok(batches.map(|item| item.map_err(LedgerError::Engine)))
    }

    /// Shuts down: a single node drains its queue, syncs and releases its directory; a
    /// replica stops its peer service and Raft (pending calls answer `Stopped`) and
    /// writes out its change events. Writes through any clone answer errors afterwards.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Engine`] when the single node's last sync or a thread failed.
    pub fn shutdown(&self) -> Result<(), LedgerError> {
        match self {
            Ledger::Node(node) => node.shutdown().map_err(LedgerError::Engine),
            Ledger::Replica(hosted) => hosted.wait(|replica| async move {
                replica.shutdown().await;
                Ok(())
            }),
        }
    }

    /// [`Ledger::shutdown`] from a tokio task (a single node on a blocking thread).
    ///
    /// # Errors
    ///
    /// As [`Ledger::shutdown`].
    pub async fn shutdown_async(&self) -> Result<(), LedgerError> {
        match self {
            Ledger::Node(node) => {
                let node = node.clone();
                on_a_blocking_thread("tally-shutdown", move || node.shutdown()).await
            }
            Ledger::Replica(hosted) => {
                hosted
                    .run(|replica| async move {
                        replica.shutdown().await;
                        Ok(())
                    })
                    .await
            }
        }
    }
}

/// Runs a single node's blocking `work` off the async threads.
/// Runs a single node's read on a blocking thread: a long one (a query walking a long
/// chain) would otherwise hold a runtime thread, and the calls of every other
/// connection waiting for one. A replica's reads yield between steps instead.
async fn off_the_runtime<T: Send + 'static>(
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|_| LedgerError::Engine(EngineError::ThreadPanicked { name: "tally-read" }))
}

async fn on_a_blocking_thread<T: Send + 'static>(
    name: &'static str,
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| LedgerError::Engine(EngineError::ThreadPanicked { name }))?
        .map_err(LedgerError::Engine)
}
