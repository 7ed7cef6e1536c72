//! The client: batch calls straight through, single create calls through the coalescers.

use crate::coalesce::{self, COALESCED_CALL_EVENTS_MAX, CoalescedEvent, Pending};
use crate::config::{ClientConfig, prepare};
use crate::error::ClientError;
use crate::rpc::{Counters, Rpc};
use crate::subscribe::Subscription;
use futures_util::Stream;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tally_proto::{LedgerClient, v1};
use tally_types::{
    Account, AccountBalance, AccountFilter, AccountFlags, CHANGE_EVENTS_LIMIT_MAX, ChangeEvent,
    QueryFilter, ResultCode, Transfer, TransferBalances, TransferFlags, change_events_limit,
};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

/// The result of one created event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateResult {
    /// `Ok`, or why the event was refused (docs/spec.md §2).
    pub code: ResultCode,
    /// The event's timestamp (ns since the Unix epoch) when `code` is `Ok`, else 0.
    pub timestamp: u64,
}

/// The result of one transfer of [`Client::create_transfers_with_balances`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferResult {
    /// `Ok`, or why the transfer was refused (docs/spec.md §2).
    pub code: ResultCode,
    /// The transfer's timestamp when `code` is `Ok`, else 0.
    pub timestamp: u64,
    /// Both accounts' balances right after the transfer: `Some` exactly when `code` is
    /// `Ok`.
    pub balances: Option<TransferBalances>,
}

/// A page of change events: [`Client::get_change_events`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEventsPage {
    /// The events, in commit order.
    pub events: Vec<ChangeEvent>,
    /// The timestamp of the last event the server read for this page, the events left
    /// out for the token's ledgers included (0 when it read none): the next page starts
    /// at `timestamp_last + 1`. Without a ledger limit, the last event's timestamp.
    pub timestamp_last: u64,
}

/// Counters of one client (and its clones) since [`Client::connect`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Create calls (batches) sent to the server, coalesced ones included; a retried
    /// call counts once.
    pub create_requests: u64,
    /// Events in those create calls.
    pub create_events: u64,
    /// Single create calls ([`Client::create_account`], [`Client::create_transfer`])
    /// queued for coalescing.
    pub single_calls: u64,
    /// Batches the coalescers made of those single calls.
    pub coalesced_batches: u64,
    /// Attempts retried after `UNAVAILABLE`, a broken connection or `RESOURCE_EXHAUSTED`.
    pub retries: u64,
    /// Create calls answered by a cluster replica that passed them on to its leader;
    /// after each, the client's calls move on to the next replica it knows.
    pub forwarded: u64,
}

/// An async client of Tally's gRPC server: one HTTP/2 connection, reconnected as needed.
///
/// Cheap to clone: clones share the connection, the coalescers and the counters. The
/// coalescers end when the last clone is dropped, after answering every queued call.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: String,
    batch_events_max: usize,
    rpc: Rpc,
    accounts: mpsc::Sender<Pending<Account>>,
    transfers: mpsc::Sender<Pending<Transfer>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .field("batch_events_max", &self.inner.batch_events_max)
            .finish_non_exhaustive()
    }
}

/// The largest answer a client decodes: a server may be set to send pages of change
/// events larger than tonic's default 4 MiB (`tally serve --message-bytes-max`).
const ANSWER_BYTES_MAX: usize = 64 << 20;

fn ledger_client(channel: Channel) -> LedgerClient<Channel> {
    LedgerClient::new(channel).max_decoding_message_size(ANSWER_BYTES_MAX)
}

/// Connects to the first endpoint that answers (the others connect when first used);
/// returns a client per endpoint and the index of the connected one.
async fn connect_first(
    endpoints: Vec<Endpoint>,
) -> Result<(Vec<LedgerClient<Channel>>, usize), ClientError> {
    let mut connected = None;
    let mut last_error = None;
    let mut ledgers = Vec::with_capacity(endpoints.len());
    for (index, endpoint) in endpoints.into_iter().enumerate() {
        if connected.is_some() {
            ledgers.push(ledger_client(endpoint.connect_lazy()));
            continue;
        }
        match endpoint.connect().await {
            Ok(channel) => {
                connected = Some(index);
                ledgers.push(ledger_client(channel));
            }
            Err(error) => {
                last_error = Some(error);
                ledgers.push(ledger_client(endpoint.connect_lazy()));
            }
        }
    }
    match (connected, last_error) {
        (Some(index), _) => Ok((ledgers, index)),
        (None, Some(error)) => Err(ClientError::Connect(error)),
        (None, None) => Err(ClientError::Config("no endpoint".into())),
    }
}

impl Client {
    /// Checks `config`, connects to the server (the first of its endpoints that
    /// answers) and starts the two coalescers (tasks on
    /// the current tokio runtime).
    ///
    /// A connection lost later is made again by the next call; calls that fail meanwhile
    /// are retried by the [`RetryPolicy`](crate::RetryPolicy).
    ///
    /// # Errors
    /// [`ClientError::Config`] for settings that cannot work, [`ClientError::Connect`] for
    /// a bad URL, bad PEM, or a server that cannot be reached within the connect timeout.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let prepared = prepare(&config)?;
        let (ledgers, current) = connect_first(prepared.endpoints).await?;
        let rpc = Rpc {
            ledgers: ledgers.into(),
            current: Arc::new(AtomicUsize::new(current)),
            authorization: prepared.authorization,
            retry: config.retry,
            request_timeout: config.request_timeout,
            counters: Arc::new(Counters::default()),
        };
        let batch_events_max = config.batch_events_max;
        let limits = coalesce::Limits {
            batch_events_max,
            batches_in_flight: config.batches_in_flight,
        };
        let (accounts, accounts_queue) = mpsc::channel(batch_events_max);
        let (transfers, transfers_queue) = mpsc::channel(batch_events_max);
        let sender = rpc.clone();
        tokio::spawn(coalesce::run(accounts_queue, limits, move |events| {
            let rpc = sender.clone();
            Counters::add(&rpc.counters.coalesced_batches, 1);
            async move { rpc.create_accounts(events).await }
        }));
        let sender = rpc.clone();
        tokio::spawn(coalesce::run(transfers_queue, limits, move |events| {
            let rpc = sender.clone();
            Counters::add(&rpc.counters.coalesced_batches, 1);
            async move { rpc.create_transfers(events).await }
        }));
        let inner = Inner {
            endpoint: config.endpoint,
            batch_events_max,
            rpc,
            accounts,
            transfers,
        };
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// Creates accounts, in order, as one batch: one result per account. Linked chains
    /// (docs/spec.md §2) go through this call. Small closed batches are coalesced with
    /// other calls, as for [`Client::create_transfers`].
    ///
    /// A retried call (after `UNAVAILABLE`, a broken connection or `RESOURCE_EXHAUSTED`)
    /// sends the very same accounts again, so an account created by an attempt whose
    /// answer was lost answers `exists` on the retry.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for more than `batch_events_max` accounts; the
    /// call's failure otherwise (see [`ClientError`]).
    ///
    /// # Cancel safety
    /// Not cancel safe: once sent, the batch may be applied although its answer is
    /// dropped; send it again with the same ids to learn its results.
    pub async fn create_accounts(
        &self,
        accounts: impl AsRef<[Account]>,
    ) -> Result<Vec<CreateResult>, ClientError> {
        let accounts = accounts.as_ref();
        self.check_batch(accounts.len())?;
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let wire = accounts.to_vec();
        let closed = accounts
            .last()
            .is_some_and(|last| !last.flags.contains(AccountFlags::LINKED));
        if closed && accounts.len() <= COALESCED_CALL_EVENTS_MAX {
            return self.coalesced(&self.inner.accounts, wire).await;
        }
        self.inner.rpc.create_accounts(wire).await
    }

    /// Applies transfers, in order, as one batch: one result per transfer. Linked chains
    /// (docs/spec.md §2) go through this call.
    ///
    /// A small batch (at most 64 transfers) whose last transfer closes its chain is
    /// coalesced with other tasks' calls into one request, its transfers kept together
    /// and in order; since no chain crosses from one call into the next, the results
    /// are the ones the batch would get alone. A larger batch, or one that leaves a chain
    /// open (answered `linked_event_chain_open`), is sent as its own request.
    ///
    /// A retried call (after `UNAVAILABLE`, a broken connection or `RESOURCE_EXHAUSTED`)
    /// sends the very same transfers again: the id is the idempotency key, so a transfer
    /// applied by an attempt whose answer was lost answers `exists` on the retry, and is
    /// never applied twice.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for more than `batch_events_max` transfers; the
    /// call's failure otherwise (see [`ClientError`]).
    ///
    /// # Cancel safety
    /// Not cancel safe: once sent, the batch may be applied although its answer is
    /// dropped; send it again with the same ids to learn its results.
    pub async fn create_transfers(
        &self,
        transfers: impl AsRef<[Transfer]>,
    ) -> Result<Vec<CreateResult>, ClientError> {
        let transfers = transfers.as_ref();
        self.check_batch(transfers.len())?;
        if transfers.is_empty() {
            return Ok(Vec::new());
        }
        let wire = transfers.to_vec();
        let closed = transfers
            .last()
            .is_some_and(|last| !last.flags.contains(TransferFlags::LINKED));
        if closed && transfers.len() <= COALESCED_CALL_EVENTS_MAX {
            return self.coalesced(&self.inner.transfers, wire).await;
        }
        self.inner.rpc.create_transfers(wire).await
    }

    /// [`Client::create_transfers`] asking for balances with the results: each applied
    /// transfer's result carries its debit and credit accounts' four balances right
    /// after it, in the same round trip (docs/spec.md §2, "Balances with results"). The
    /// batch goes as one request, never coalesced with other calls; retried as
    /// [`Client::create_transfers`] (a transfer a lost attempt applied answers `exists`,
    /// without balances).
    ///
    /// # Errors
    /// As [`Client::create_transfers`]; [`ClientError::Protocol`] when an applied
    /// transfer comes back without its balances.
    ///
    /// # Cancel safety
    /// Not cancel safe, as [`Client::create_transfers`].
    pub async fn create_transfers_with_balances(
        &self,
        transfers: impl AsRef<[Transfer]>,
    ) -> Result<Vec<TransferResult>, ClientError> {
        let transfers = transfers.as_ref();
        self.check_batch(transfers.len())?;
        if transfers.is_empty() {
            return Ok(Vec::new());
        }
        let wire = transfers.to_vec();
        self.inner.rpc.create_transfers_with_balances(wire).await
    }

    /// Creates one account, coalesced with the single calls of other tasks into one
    /// batch: up to `batches_in_flight` such batches are out while the next one fills, and
    /// a call that finds a flight free leaves at once; calls made concurrently may
    /// commit in any order. Retried like [`Client::create_accounts`], so a retried
    /// account may answer `exists`.
    ///
    /// # Errors
    /// [`ClientError::LinkedSingle`] when the account has the `linked` flag: a chain
    /// must not run into other callers' events, so it goes through
    /// [`Client::create_accounts`]. The batch's failure otherwise.
    ///
    /// # Cancel safety
    /// Not cancel safe: once queued, the account is sent and may be created although
    /// its answer is dropped.
    pub async fn create_account(&self, account: Account) -> Result<CreateResult, ClientError> {
        if account.flags.contains(AccountFlags::LINKED) {
            return Err(ClientError::LinkedSingle);
        }
        self.single(&self.inner.accounts, account).await
    }

    /// Applies one transfer, coalesced with the single calls of other tasks into one
    /// batch: up to `batches_in_flight` such batches are out while the next one fills, and
    /// a call that finds a flight free leaves at once; calls made concurrently may
    /// commit in any order. Retried like [`Client::create_transfers`], so a retried
    /// transfer may answer `exists`; it is never applied twice.
    ///
    /// # Errors
    /// [`ClientError::LinkedSingle`] when the transfer has the `linked` flag: a chain
    /// must not run into other callers' events, so it goes through
    /// [`Client::create_transfers`]. The batch's failure otherwise.
    ///
    /// # Cancel safety
    /// Not cancel safe: once queued, the transfer is sent and may be applied although
    /// its answer is dropped.
    pub async fn create_transfer(&self, transfer: Transfer) -> Result<CreateResult, ClientError> {
        if transfer.flags.contains(TransferFlags::LINKED) {
            return Err(ClientError::LinkedSingle);
        }
        self.single(&self.inner.transfers, transfer).await
    }

    /// The accounts with these ids that exist, in the order asked; missing ids are
    /// skipped.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for more than `batch_events_max` ids; the call's
    /// failure otherwise.
    ///
    /// # Cancel safety
    /// Cancel safe: a lookup changes nothing.
    pub async fn lookup_accounts(
        &self,
        ids: impl AsRef<[u128]>,
    ) -> Result<Vec<Account>, ClientError> {
        let request = self.lookup_request(ids.as_ref())?;
        let answer = self.inner.rpc.lookup_accounts(request).await?;
        accounts_from_proto(answer)
    }

    /// The transfers with these ids that exist, in the order asked; missing ids are
    /// skipped.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for more than `batch_events_max` ids; the call's
    /// failure otherwise.
    ///
    /// # Cancel safety
    /// Cancel safe: a lookup changes nothing.
    pub async fn lookup_transfers(
        &self,
        ids: impl AsRef<[u128]>,
    ) -> Result<Vec<Transfer>, ClientError> {
        let request = self.lookup_request(ids.as_ref())?;
        let answer = self.inner.rpc.lookup_transfers(request).await?;
        transfers_from_proto(answer)
    }

    /// One account's transfers, in timestamp order (newest first when `reversed`),
    /// filtered and paged by `filter`.
    ///
    /// # Errors
    /// The call's failure (see [`ClientError`]).
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn get_account_transfers(
        &self,
        filter: AccountFilter,
    ) -> Result<Vec<Transfer>, ClientError> {
        let request = tally_proto::filter_to_proto(&filter);
        let answer = self.inner.rpc.get_account_transfers(request).await?;
        transfers_from_proto(answer)
    }

    /// One account's balances after each of its transfers (`history` accounts only), in
    /// timestamp order (newest first when `reversed`), filtered and paged by `filter`.
    ///
    /// # Errors
    /// The call's failure (see [`ClientError`]).
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn get_account_balances(
        &self,
        filter: AccountFilter,
    ) -> Result<Vec<AccountBalance>, ClientError> {
        let request = tally_proto::filter_to_proto(&filter);
        let answer = self.inner.rpc.get_account_balances(request).await?;
        Ok(answer
            .balances
            .iter()
            .map(tally_proto::account_balance_from_proto)
            .collect())
    }

    /// The accounts whose fields match every non-zero field of `filter`, in timestamp
    /// order (newest first when `reversed`), at most its limit.
    ///
    /// # Errors
    /// The call's failure (see [`ClientError`]).
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn query_accounts(&self, filter: QueryFilter) -> Result<Vec<Account>, ClientError> {
        let request = tally_proto::query_filter_to_proto(&filter);
        let answer = self.inner.rpc.query_accounts(request).await?;
        accounts_from_proto(answer)
    }

    /// The transfers whose fields match every non-zero field of `filter`, in timestamp
    /// order (newest first when `reversed`), at most its limit.
    ///
    /// # Errors
    /// The call's failure (see [`ClientError`]).
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn query_transfers(&self, filter: QueryFilter) -> Result<Vec<Transfer>, ClientError> {
        let request = tally_proto::query_filter_to_proto(&filter);
        let answer = self.inner.rpc.query_transfers(request).await?;
        transfers_from_proto(answer)
    }

    /// Up to `limit` (at most 8,190; 0 asks for 8,190) change events with a timestamp at
    /// or after `timestamp_min`, in commit order (docs/spec.md §2, "Change events"): every change
    /// committed before the call is there. Events of ledgers outside the token's rights
    /// are left out; page on from [`ChangeEventsPage::timestamp_last`] + 1.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a `limit` out of range; the call's failure
    /// otherwise (`PERMISSION_DENIED` without the `get_change_events` right; a cluster
    /// replica answers [`ClientError::Other`] with `UNIMPLEMENTED`).
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn get_change_events(
        &self,
        timestamp_min: u64,
        limit: usize,
    ) -> Result<ChangeEventsPage, ClientError> {
        if change_events_limit(limit).is_none() {
            return Err(ClientError::InvalidArgument(format!(
                "limit {limit} is more than the maximum {CHANGE_EVENTS_LIMIT_MAX} (0 asks for it)"
            )));
        }
        let filter = v1::ChangeEventsFilter {
            timestamp_min,
            limit: limit as u32,
        };
        let answer = self.inner.rpc.get_change_events(filter).await?;
        let events = answer
            .events
            .iter()
            .enumerate()
            .map(|(index, event)| tally_proto::change_event_from_proto(index, event))
            .collect::<Result<_, _>>()
            .map_err(|error| ClientError::Protocol(format!("change {error}")))?;
        Ok(ChangeEventsPage {
            events,
            timestamp_last: answer.timestamp_last,
        })
    }

    /// Follows the change events: every event with a timestamp after `after` (0 = from
    /// the first; an error once retention deleted events it would yield), in commit
    /// order, then each new one as it is committed. Events of ledgers outside the
    /// token's rights are left out.
    ///
    /// The stream outlives its connection: when the server stops or the connection
    /// breaks, it subscribes again (per the [`RetryPolicy`](crate::RetryPolicy), the
    /// attempts counted from the last event or stream) after the last event it yielded,
    /// so across a server restart every event comes exactly once. Nothing is sent
    /// until it is first polled. It ends after yielding an error: a final one
    /// (`PERMISSION_DENIED`, ...) or the attempts spent; subscribe again after the last
    /// event handled to go on.
    ///
    /// # Cancel safety
    /// Dropping the stream ends the subscription; an event not yet yielded is not
    /// lost, since the next subscription starts after the last one yielded.
    pub fn subscribe_change_events(
        &self,
        after: u64,
    ) -> impl Stream<Item = Result<ChangeEvent, ClientError>> + Send + 'static {
        let subscription = Subscription::new(self.inner.rpc.clone(), after);
        futures_util::stream::unfold(subscription, |mut subscription| async move {
            let item = subscription.next().await?;
            Some((item, subscription))
        })
    }

    /// The client's counters, summed over its clones.
    pub fn stats(&self) -> ClientStats {
        let counters = &self.inner.rpc.counters;
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        ClientStats {
            create_requests: read(&counters.create_requests),
            create_events: read(&counters.create_events),
            single_calls: read(&counters.single_calls),
            coalesced_batches: read(&counters.coalesced_batches),
            retries: read(&counters.retries),
            forwarded: read(&counters.forwarded),
        }
    }

    /// Most events of one batch, and most ids of one lookup, this client sends.
    pub fn batch_events_max(&self) -> usize {
        self.inner.batch_events_max
    }

    fn check_batch(&self, events: usize) -> Result<(), ClientError> {
        if events > self.inner.batch_events_max {
            return Err(ClientError::InvalidArgument(format!(
                "{events} events in one batch; at most {}",
                self.inner.batch_events_max
            )));
        }
        Ok(())
    }

    fn lookup_request(&self, ids: &[u128]) -> Result<v1::LookupRequest, ClientError> {
        self.check_batch(ids.len())?;
        let ids = ids
            .iter()
            .map(|&id| tally_proto::u128_to_proto(id).unwrap_or_default())
            .collect();
        Ok(v1::LookupRequest { ids })
    }

    /// Queues one event for its coalescer and waits for its own result.
    async fn single<E: CoalescedEvent>(
        &self,
        queue: &mpsc::Sender<Pending<E>>,
        event: E,
    ) -> Result<CreateResult, ClientError> {
        Counters::add(&self.inner.rpc.counters.single_calls, 1);
        let results = self.coalesced(queue, vec![event]).await?;
        match results.as_slice() {
            [result] => Ok(*result),
            _ => Err(ClientError::Protocol(format!(
                "{} results for one event",
                results.len()
            ))),
        }
    }

    /// Queues a call's events, kept together, for its coalescer; waits for their results.
    async fn coalesced<E: CoalescedEvent>(
        &self,
        queue: &mpsc::Sender<Pending<E>>,
        events: Vec<E>,
    ) -> Result<Vec<CreateResult>, ClientError> {
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending::new(events, reply))
            .await
            .map_err(|_| coalescer_stopped())?;
        answer.await.map_err(|_| coalescer_stopped())?
    }
}

/// The coalescer's task is gone: its runtime is shutting down.
fn coalescer_stopped() -> ClientError {
    ClientError::Other(tonic::Status::cancelled(
        "the client's coalescer has stopped",
    ))
}

fn accounts_from_proto(answer: v1::Accounts) -> Result<Vec<Account>, ClientError> {
    answer
        .accounts
        .iter()
        .enumerate()
        .map(|(index, account)| tally_proto::account_from_proto(index, account))
        .collect::<Result<_, _>>()
        .map_err(|error| ClientError::Protocol(format!("account {error}")))
}

fn transfers_from_proto(answer: v1::Transfers) -> Result<Vec<Transfer>, ClientError> {
    answer
        .transfers
        .iter()
        .enumerate()
        .map(|(index, transfer)| tally_proto::transfer_from_proto(index, transfer))
        .collect::<Result<_, _>>()
        .map_err(|error| ClientError::Protocol(format!("transfer {error}")))
}
