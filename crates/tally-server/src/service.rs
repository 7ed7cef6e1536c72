//! The gRPC ledger service: each call (already authenticated, see `authenticate`)
//! checked against its token's rights, converted, and submitted to the backend (the
//! embedded engine, or a cluster replica) exactly as a library caller would; a create
//! answers only once its batch is durable (on a majority of replicas in a cluster).

use crate::auth::{Operation, Rights};
use crate::backend::{Backend, BackendError};
use crate::events;
use crate::stats::ServerStats;
use std::collections::HashMap;
use std::sync::Arc;
use tally_cluster::ClusterError;
use tally_engine::{EventResult, SubmitError, TransferResult};
use tally_proto::v1;
use tally_types::{Account, BATCH_EVENTS_MAX, Batch, Transfer, TransferFlags};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

/// The service behind every connection; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct LedgerService {
    pub(crate) backend: Backend,
    pub(crate) stats: Arc<ServerStats>,
    /// The hint sent with `RESOURCE_EXHAUSTED` (metadata `retry-after-ms`).
    pub(crate) busy_retry_after_ms: u64,
    /// The largest message the server sends: a page of change events ends before it.
    pub(crate) message_bytes_max: usize,
    /// Turns `true` when the server stops: subscriptions end then, so that the drain
    /// does not wait for streams that never end by themselves.
    pub(crate) stopping: watch::Receiver<bool>,
}

impl LedgerService {
    /// The rights the token check put in the call, checked for the operation; counts
    /// a refusal.
    fn admit<'a, T>(
        &self,
        request: &'a Request<T>,
        operation: Operation,
    ) -> Result<&'a Rights, Status> {
        let admitted = request
            .extensions()
            .get::<Arc<Rights>>()
            .map(|rights| rights.as_ref())
            .ok_or_else(|| Status::internal("the call was not authenticated"))
            .and_then(|rights| rights.check_operation(operation).map(|()| rights));
        if let Err(status) = &admitted {
            self.stats.refused(operation, status.code());
            tracing::info!(%operation, code = ?status.code(), reason = status.message(), "refused");
        }
        admitted
    }

    async fn submit(
        &self,
        operation: Operation,
        batch: Batch,
    ) -> Result<v1::CreateResults, Status> {
        let events = batch.len();
        match self.backend.submit_async(batch).await {
            Ok(results) => {
                self.stats.answered(operation, events);
                Ok(create_results(&results))
            }
            Err(error) => {
                let status = self.submit_status(&error);
                self.stats.refused(operation, status.code());
                Err(status)
            }
        }
    }

    /// A create_transfers call that asked for balances.
    async fn submit_with_balances(
        &self,
        operation: Operation,
        transfers: Vec<Transfer>,
    ) -> Result<Response<v1::CreateResults>, Status> {
        let events = transfers.len();
        match self
            .backend
            .create_transfers_with_balances_async(transfers)
            .await
        {
            Ok(results) => {
                self.stats.answered(operation, events);
                Ok(self.answered_create(create_results_with_balances(&results)))
            }
            Err(error) => {
                let status = self.submit_status(&error);
                self.stats.refused(operation, status.code());
                Err(status)
            }
        }
    }

    /// A create call's answer; from a replica that does not lead, marked
    /// `tally-forwarded: 1`, so that the client moves its writes on towards the leader
    /// and saves the hop.
    fn answered_create<T>(&self, results: T) -> Response<T> {
        let mut response = Response::new(results);
        if self.backend.forwards_writes() {
            response.metadata_mut().insert(
                tally_proto::FORWARDED_HEADER,
                MetadataValue::from_static("1"),
            );
        }
        response
    }

    /// The answer of a read of accounts, refused (`PERMISSION_DENIED`) when it found one
    /// in a ledger outside the token's ledgers; `items` is what the call counts as
    /// answered.
    fn accounts_answer(
        &self,
        operation: Operation,
        rights: &Rights,
        found: Result<Vec<Account>, BackendError>,
        items: usize,
    ) -> Result<Response<v1::Accounts>, Status> {
        let found = found.map_err(|e| self.refuse(operation, self.submit_status(&e)))?;
        let ledgers = found.iter().map(|account| (account.id, account.ledger));
        rights
            .check_read("account", ledgers)
            .map_err(|status| self.refuse(operation, status))?;
        let accounts = found.iter().map(tally_proto::account_to_proto).collect();
        self.stats.answered(operation, items);
        Ok(Response::new(v1::Accounts { accounts }))
    }

    /// [`LedgerService::accounts_answer`] for transfers.
    fn transfers_answer(
        &self,
        operation: Operation,
        rights: &Rights,
        found: Result<Vec<Transfer>, BackendError>,
        items: usize,
    ) -> Result<Response<v1::Transfers>, Status> {
        let found = found.map_err(|e| self.refuse(operation, self.submit_status(&e)))?;
        let ledgers = found.iter().map(|transfer| (transfer.id, transfer.ledger));
        rights
            .check_read("transfer", ledgers)
            .map_err(|status| self.refuse(operation, status))?;
        let transfers = found.iter().map(tally_proto::transfer_to_proto).collect();
        self.stats.answered(operation, items);
        Ok(Response::new(v1::Transfers { transfers }))
    }

    /// `PERMISSION_DENIED` when the account a history or balance read names is stored
    /// in a ledger outside the token's ledgers; an account not stored reads as empty.
    async fn check_account_read(
        &self,
        operation: Operation,
        rights: &Rights,
        account_id: u128,
    ) -> Result<(), Status> {
        if rights.ledgers_all() {
            return Ok(());
        }
        let found = self
            .backend
            .lookup_accounts_async(&[account_id])
            .await
            .map_err(|e| self.refuse(operation, self.submit_status(&e)))?;
        let ledgers = found.iter().map(|account| (account.id, account.ledger));
        rights
            .check_read("account", ledgers)
            .map_err(|status| self.refuse(operation, status))
    }

    fn submit_status(&self, error: &BackendError) -> Status {
        match error {
            BackendError::Submit(error) => self.engine_status(error),
            BackendError::Cluster(ClusterError::Invalid(error)) => self.engine_status(error),
            BackendError::Cluster(ClusterError::Busy) => self.busy_status(error.to_string()),
            BackendError::Cluster(ClusterError::TimeOutOfRange { .. }) => {
                Status::invalid_argument(error.to_string())
            }
            BackendError::Cluster(
                error @ (ClusterError::Unavailable(_) | ClusterError::Stopped),
            ) => Status::unavailable(error.to_string()),
            // Off, not kept, or the journal failed: asking again does not help.
            BackendError::Cluster(ClusterError::ChangeEvents(_)) => {
                Status::failed_precondition(error.to_string())
            }
            BackendError::Engine(error) => events::events_status(error),
            // Only opening answers this; a served backend is open.
            BackendError::Open(_) => Status::unavailable(error.to_string()),
            // The service makes only async calls.
            BackendError::BlockingOnItsRuntime => Status::internal(error.to_string()),
        }
    }

    /// `RESOURCE_EXHAUSTED` with a retry hint: nothing of the call was applied.
    fn busy_status(&self, message: String) -> Status {
        let mut status = Status::resource_exhausted(format!(
            "{message}; retry after {} ms",
            self.busy_retry_after_ms
        ));
        status.metadata_mut().insert(
            "retry-after-ms",
            MetadataValue::from(self.busy_retry_after_ms),
        );
        status
    }

    fn engine_status(&self, error: &SubmitError) -> Status {
        match error {
            SubmitError::Busy(_) => self.busy_status(error.to_string()),
            SubmitError::Stopped | SubmitError::Failed(_) => Status::unavailable(error.to_string()),
            _ => Status::invalid_argument(error.to_string()),
        }
    }

    fn refuse(&self, operation: Operation, status: Status) -> Status {
        self.stats.refused(operation, status.code());
        status
    }
}

fn create_results(results: &[EventResult]) -> v1::CreateResults {
    v1::CreateResults {
        results: results
            .iter()
            .map(|result| v1::CreateResult {
                code: tally_proto::result_code_to_proto(result.code) as i32,
                timestamp: result.timestamp,
                debit_account: None,
                credit_account: None,
            })
            .collect(),
    }
}

fn create_results_with_balances(results: &[TransferResult]) -> v1::CreateResults {
    v1::CreateResults {
        results: results
            .iter()
            .map(|result| v1::CreateResult {
                code: tally_proto::result_code_to_proto(result.code) as i32,
                timestamp: result.timestamp,
                debit_account: result
                    .balances
                    .map(|b| tally_proto::balances_to_proto(&b.debit_account)),
                credit_account: result
                    .balances
                    .map(|b| tally_proto::balances_to_proto(&b.credit_account)),
            })
            .collect(),
    }
}

fn too_many(count: usize) -> Status {
    Status::invalid_argument(format!(
        "{count} events or ids is more than the maximum {BATCH_EVENTS_MAX}"
    ))
}

fn invalid(error: tally_proto::ConvertError) -> Status {
    Status::invalid_argument(error.to_string())
}

impl LedgerService {
    /// The ledger each transfer will take, for a token limited to some ledgers: its
    /// own; for a post, void or refund that gives ledger 0, that of the transfer it
    /// names as stored now (a stored transfer's ledger never changes), `Some(0)` where
    /// none is stored; `None` for any other event giving 0, which fails by itself and
    /// touches no ledger. A transfer named that is not stored yet (one earlier in the
    /// same batch) is not taken on trust: another caller could store that id first in
    /// another ledger, so the event must give its ledger, which the engine checks.
    async fn ledgers_taken(
        &self,
        rights: &Rights,
        transfers: &[Transfer],
    ) -> Result<Vec<Option<u32>>, Status> {
        let takes_ledger = |transfer: &Transfer| {
            transfer.ledger == 0
                && transfer.pending_id != 0
                && [
                    TransferFlags::POST_PENDING_TRANSFER,
                    TransferFlags::VOID_PENDING_TRANSFER,
                    TransferFlags::REFUND,
                ]
                .into_iter()
                .any(|flag| transfer.flags.contains(flag))
        };
        let own = |transfer: &Transfer| (transfer.ledger != 0).then_some(transfer.ledger);
        if rights.ledgers_all() || !transfers.iter().any(takes_ledger) {
            return Ok(transfers.iter().map(own).collect());
        }
        let named: Vec<u128> = transfers
            .iter()
            .filter(|transfer| takes_ledger(transfer))
            .map(|transfer| transfer.pending_id)
            .collect();
        let stored = self
            .backend
            .lookup_transfers_async(&named)
            .await
            .map_err(|error| self.submit_status(&error))?;
        let stored: HashMap<u128, u32> = stored
            .iter()
            .map(|transfer| (transfer.id, transfer.ledger))
            .collect();
        let ledger = |transfer: &Transfer| match takes_ledger(transfer) {
            true => Some(stored.get(&transfer.pending_id).copied().unwrap_or(0)),
            false => own(transfer),
        };
        Ok(transfers.iter().map(ledger).collect())
    }
}

#[tonic::async_trait]
impl tally_proto::LedgerService for LedgerService {
    type SubscribeChangeEventsStream = ReceiverStream<Result<v1::ChangeEvent, Status>>;

    async fn create_accounts(
        &self,
        request: Request<v1::CreateAccountsRequest>,
    ) -> Result<Response<v1::CreateResults>, Status> {
        let operation = Operation::CreateAccounts;
        let rights = self.admit(&request, operation)?;
        let wire = &request.get_ref().accounts;
        if wire.len() > BATCH_EVENTS_MAX {
            return Err(self.refuse(operation, too_many(wire.len())));
        }
        let accounts = tally_proto::accounts_from_request(request.get_ref())
            .map_err(|error| self.refuse(operation, invalid(error)))?;
        rights
            .check_ledgers(
                accounts
                    .iter()
                    .map(|account| (account.ledger != 0).then_some(account.ledger)),
            )
            .map_err(|status| self.refuse(operation, status))?;
        let results = self
            .submit(operation, Batch::CreateAccounts(accounts))
            .await?;
        Ok(self.answered_create(results))
    }

    async fn create_transfers(
        &self,
        request: Request<v1::CreateTransfersRequest>,
    ) -> Result<Response<v1::CreateResults>, Status> {
        let operation = Operation::CreateTransfers;
        let rights = self.admit(&request, operation)?;
        let wire = &request.get_ref().transfers;
        if wire.len() > BATCH_EVENTS_MAX {
            return Err(self.refuse(operation, too_many(wire.len())));
        }
        let transfers = tally_proto::transfers_from_request(request.get_ref())
            .map_err(|error| self.refuse(operation, invalid(error)))?;
        let ledgers = self
            .ledgers_taken(rights, &transfers)
            .await
            .map_err(|status| self.refuse(operation, status))?;
        rights
            .check_ledgers(ledgers)
            .map_err(|status| self.refuse(operation, status))?;
        if request.get_ref().balances {
            return self.submit_with_balances(operation, transfers).await;
        }
        let results = self
            .submit(operation, Batch::CreateTransfers(transfers))
            .await?;
        Ok(self.answered_create(results))
    }

    async fn get_account_balances(
        &self,
        request: Request<v1::AccountFilter>,
    ) -> Result<Response<v1::AccountBalances>, Status> {
        let operation = Operation::GetAccountBalances;
        let rights = self.admit(&request, operation)?;
        let filter = tally_proto::filter_from_proto(request.get_ref())
            .map_err(|message| self.refuse(operation, Status::invalid_argument(message)))?;
        self.check_account_read(operation, rights, filter.account_id)
            .await?;
        let rows = self
            .backend
            .get_account_balances_async(&filter)
            .await
            .map_err(|e| self.refuse(operation, self.submit_status(&e)))?;
        self.stats.answered(operation, 1);
        let balances = rows
            .iter()
            .map(tally_proto::account_balance_to_proto)
            .collect();
        Ok(Response::new(v1::AccountBalances { balances }))
    }

    async fn query_accounts(
        &self,
        request: Request<v1::QueryFilter>,
    ) -> Result<Response<v1::Accounts>, Status> {
        let operation = Operation::QueryAccounts;
        let rights = self.admit(&request, operation)?;
        let mut filter = tally_proto::query_filter_from_proto(request.get_ref())
            .map_err(|message| self.refuse(operation, Status::invalid_argument(message)))?;
        rights
            .scope_query(&mut filter)
            .map_err(|status| self.refuse(operation, status))?;
        let found = self.backend.query_accounts_async(&filter).await;
        self.accounts_answer(operation, rights, found, 1)
    }

    async fn query_transfers(
        &self,
        request: Request<v1::QueryFilter>,
    ) -> Result<Response<v1::Transfers>, Status> {
        let operation = Operation::QueryTransfers;
        let rights = self.admit(&request, operation)?;
        let mut filter = tally_proto::query_filter_from_proto(request.get_ref())
            .map_err(|message| self.refuse(operation, Status::invalid_argument(message)))?;
        rights
            .scope_query(&mut filter)
            .map_err(|status| self.refuse(operation, status))?;
        let found = self.backend.query_transfers_async(&filter).await;
        self.transfers_answer(operation, rights, found, 1)
    }

    async fn lookup_accounts(
        &self,
        request: Request<v1::LookupRequest>,
    ) -> Result<Response<v1::Accounts>, Status> {
        let operation = Operation::LookupAccounts;
        let rights = self.admit(&request, operation)?;
        let ids = lookup_ids(&request.get_ref().ids).map_err(|s| self.refuse(operation, s))?;
        let found = self.backend.lookup_accounts_async(&ids).await;
        self.accounts_answer(operation, rights, found, ids.len())
    }

    async fn lookup_transfers(
        &self,
        request: Request<v1::LookupRequest>,
    ) -> Result<Response<v1::Transfers>, Status> {
        let operation = Operation::LookupTransfers;
        let rights = self.admit(&request, operation)?;
        let ids = lookup_ids(&request.get_ref().ids).map_err(|s| self.refuse(operation, s))?;
        let found = self.backend.lookup_transfers_async(&ids).await;
        self.transfers_answer(operation, rights, found, ids.len())
    }

    async fn get_account_transfers(
        &self,
        request: Request<v1::AccountFilter>,
    ) -> Result<Response<v1::Transfers>, Status> {
        let operation = Operation::GetAccountTransfers;
        let rights = self.admit(&request, operation)?;
        let filter = tally_proto::filter_from_proto(request.get_ref())
            .map_err(|message| self.refuse(operation, Status::invalid_argument(message)))?;
        self.check_account_read(operation, rights, filter.account_id)
            .await?;
        let found = self.backend.get_account_transfers_async(&filter).await;
        self.transfers_answer(operation, rights, found, 1)
    }

    async fn get_change_events(
        &self,
        request: Request<v1::ChangeEventsFilter>,
    ) -> Result<Response<v1::ChangeEvents>, Status> {
        let operation = Operation::GetChangeEvents;
        let rights = Arc::new(self.admit(&request, operation)?.clone());
        let filter = request.get_ref();
        let limit = events::events_limit(filter.limit).map_err(|s| self.refuse(operation, s))?;
        let timestamp_min = filter.timestamp_min;
        let bytes_max = self.message_bytes_max;
        let (reader, committed) = self
            .backend
            .change_events_at_commit_async()
            .await
            .map_err(|e| self.refuse(operation, self.submit_status(&e)))?;
        // Reading waits for the journal to catch up and reads files: off the runtime.
        let read = tokio::task::spawn_blocking(move || {
            events::read_page(&reader, committed, &rights, timestamp_min, limit, bytes_max)
        })
        .await
        .map_err(|_| Status::internal("the change-event reader panicked"))
        .and_then(|read| read.map_err(|error| events::events_status(&error)));
        let answer = read.map_err(|status| self.refuse(operation, status))?;
        self.stats.answered(operation, answer.events.len());
        Ok(Response::new(answer))
    }

    async fn subscribe_change_events(
        &self,
        request: Request<v1::SubscribeChangeEventsRequest>,
    ) -> Result<Response<Self::SubscribeChangeEventsStream>, Status> {
        let operation = Operation::GetChangeEvents;
        let rights = Arc::new(self.admit(&request, operation)?.clone());
        let reader = self
            .backend
            .change_event_reader()
            .map_err(|e| self.refuse(operation, self.submit_status(&e)))?;
        let followed = reader
            .subscribe_batches(request.get_ref().after)
            .map_err(|error| self.refuse(operation, events::events_status(&error)))?;
        let (sender, receiver) = mpsc::channel(events::SUBSCRIPTION_EVENTS_BUFFERED_MAX);
        tokio::spawn(events::forward(
            followed,
            rights,
            sender,
            self.stopping.clone(),
            Arc::clone(&self.stats),
        ));
        // Counted when the stream starts: it is one call, however long it lasts.
        self.stats.answered(operation, 0);
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

fn lookup_ids(wire: &[v1::U128]) -> Result<Vec<u128>, Status> {
    if wire.len() > BATCH_EVENTS_MAX {
        return Err(too_many(wire.len()));
    }
    Ok(wire
        .iter()
        .map(|id| tally_proto::u128_from_proto(Some(*id)))
        .collect())
}
