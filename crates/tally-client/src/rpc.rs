//! One gRPC call with its metadata, deadline and retries; the wire results decoded.

use crate::config::RetryPolicy;
use crate::error::{ClientError, Failure, classify, from_status};
use crate::{CreateResult, TransferResult};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tally_proto::{LedgerClient, v1};
use tally_types::{Account, Transfer, TransferBalances};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

/// Counters of a client, shared by its clones and its coalescers. Relaxed: each is a
/// statistic read on its own, never used to order other memory.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) create_requests: AtomicU64,
    pub(crate) create_events: AtomicU64,
    pub(crate) single_calls: AtomicU64,
    pub(crate) coalesced_batches: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) forwarded: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// Sends calls to a server (or one of a cluster's replicas): the generated clients, the
/// token, the policy.
#[derive(Debug, Clone)]
pub(crate) struct Rpc {
    /// One client per endpoint; calls go to `ledgers[current]`.
    pub(crate) ledgers: Arc<[LedgerClient<Channel>]>,
    /// The endpoint in use; moved on when it is unreachable or unavailable.
    pub(crate) current: Arc<AtomicUsize>,
    pub(crate) authorization: Option<MetadataValue<Ascii>>,
    pub(crate) retry: RetryPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) counters: Arc<Counters>,
}

impl Rpc {
    fn request<M>(&self, message: M) -> Request<M> {
        let mut request = self.request_without_deadline(message);
        request.set_timeout(self.request_timeout);
        request
    }

    /// A request with the token but no deadline: for a stream that lasts.
    fn request_without_deadline<M>(&self, message: M) -> Request<M> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// Moves the calls to the endpoint after `index` (once, whoever sees it first).
    pub(crate) fn move_on_from(&self, index: usize) {
        let next = (index + 1) % self.ledgers.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Runs `call` until it answers, fails for good, or runs out of attempts. Every
    /// attempt sends the very same message: for a create call, the same events with the
    /// same ids, so an event the lost attempt applied answers `exists`, never twice.
    async fn call<M, R, C, F>(&self, message: &M, call: C) -> Result<R, ClientError>
    where
        M: Clone,
        C: Fn(LedgerClient<Channel>, Request<M>) -> F,
        F: Future<Output = Result<Response<R>, Status>>,
    {
        let mut attempt: u32 = 1;
        loop {
            let request = self.request(message.clone());
            let index = self.current.load(Ordering::Relaxed) % self.ledgers.len();
            let ledger = self.ledgers[index].clone();
            let answer = tokio::time::timeout(self.request_timeout, call(ledger, request));
            let status = match answer.await {
                Ok(Ok(response)) => {
                    // A replica that passed a write on to the leader: later calls try
                    // the next replica, until one leads (and answers without the mark).
                    if response
                        .metadata()
                        .contains_key(tally_proto::FORWARDED_HEADER)
                    {
                        Counters::add(&self.counters.forwarded, 1);
                        self.move_on_from(index);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_elapsed) => {
                    // The replica may be cut off from the others: the next call tries
                    // another. This one's outcome is unknown, so it is the caller's.
                    self.move_on_from(index);
                    return Err(ClientError::Timeout {
                        request_timeout: self.request_timeout,
                    });
                }
            };
            let retry_after = match classify(&status) {
                Failure::Final => return Err(from_status(status, self.request_timeout)),
                Failure::Unavailable => {
                    self.move_on_from(index);
                    None
                }
                Failure::Busy { retry_after } => retry_after,
            };
            if attempt >= self.retry.attempts_max {
                return Err(gave_up(attempt, status));
            }
            let wait = self.retry.backoff(attempt, retry_after);
            tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, code = ?status.code(),
                message = status.message(), "retrying a call");
            Counters::add(&self.counters.retries, 1);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Creates accounts, one batch sent as records, retried; one result per account.
    pub(crate) async fn create_accounts(
        &self,
        accounts: Vec<Account>,
    ) -> Result<Vec<CreateResult>, ClientError> {
        let events = accounts.len();
        let message = tally_proto::accounts_to_records(&accounts);
        let answer = self
            .call(&message, |mut ledger, request| async move {
                ledger.create_accounts(request).await
            })
            .await;
        self.count_create(events);
        decode_results(events, &answer?)
    }

    /// Creates transfers, one batch sent as records (a tenth of the cost of messages to
    /// encode and decode), retried; one result per transfer.
    pub(crate) async fn create_transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<CreateResult>, ClientError> {
        let events = transfers.len();
        let answer = self.send_transfers(&transfers, false).await?;
        decode_results(events, &answer)
    }

    /// Applies a batch of transfers, answering each applied one with both accounts'
    /// balances right after it.
    pub(crate) async fn create_transfers_with_balances(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, ClientError> {
        let events = transfers.len();
        let answer = self.send_transfers(&transfers, true).await?;
        let results = decode_results(events, &answer)?;
        results
            .into_iter()
            .zip(&answer.results)
            .enumerate()
            .map(|(index, (result, wire))| {
                let balances = match (
                    result.code.is_ok(),
                    &wire.debit_account,
                    &wire.credit_account,
                ) {
                    (false, _, _) => None,
                    (true, Some(debit), Some(credit)) => Some(TransferBalances {
                        debit_account: tally_proto::balances_from_proto(Some(debit)),
                        credit_account: tally_proto::balances_from_proto(Some(credit)),
                    }),
                    (true, _, _) => {
                        return Err(ClientError::Protocol(format!(
                            "event {index}: applied, but answered without its balances"
                        )));
                    }
                };
                Ok(TransferResult {
                    code: result.code,
                    timestamp: result.timestamp,
                    balances,
                })
            })
            .collect()
    }

    async fn send_transfers(
        &self,
        transfers: &[Transfer],
        balances: bool,
    ) -> Result<v1::CreateResults, ClientError> {
        let message = tally_proto::transfers_to_records(transfers, balances);
        let answer = self
            .call(&message, |mut ledger, request| async move {
                ledger.create_transfers(request).await
            })
            .await;
        self.count_create(transfers.len());
        answer
    }

    fn count_create(&self, events: usize) {
        Counters::add(&self.counters.create_requests, 1);
        Counters::add(&self.counters.create_events, events as u64);
    }

    /// Looks accounts up by id.
    pub(crate) async fn lookup_accounts(
        &self,
        request: v1::LookupRequest,
    ) -> Result<v1::Accounts, ClientError> {
        self.call(&request, |mut ledger, request| async move {
            ledger.lookup_accounts(request).await
        })
        .await
    }

    /// Looks transfers up by id.
    pub(crate) async fn lookup_transfers(
        &self,
        request: v1::LookupRequest,
    ) -> Result<v1::Transfers, ClientError> {
        self.call(&request, |mut ledger, request| async move {
            ledger.lookup_transfers(request).await
        })
        .await
    }

    /// One account's transfers.
    pub(crate) async fn get_account_transfers(
        &self,
        filter: v1::AccountFilter,
    ) -> Result<v1::Transfers, ClientError> {
        self.call(&filter, |mut ledger, request| async move {
            ledger.get_account_transfers(request).await
        })
        .await
    }

    /// One account's balances after each of its transfers.
    pub(crate) async fn get_account_balances(
        &self,
        filter: v1::AccountFilter,
    ) -> Result<v1::AccountBalances, ClientError> {
        self.call(&filter, |mut ledger, request| async move {
            ledger.get_account_balances(request).await
        })
        .await
    }

    /// Accounts matching a query filter.
    pub(crate) async fn query_accounts(
        &self,
        filter: v1::QueryFilter,
    ) -> Result<v1::Accounts, ClientError> {
        self.call(&filter, |mut ledger, request| async move {
            ledger.query_accounts(request).await
        })
        .await
    }

    /// Transfers matching a query filter.
    pub(crate) async fn query_transfers(
        &self,
        filter: v1::QueryFilter,
    ) -> Result<v1::Transfers, ClientError> {
        self.call(&filter, |mut ledger, request| async move {
            ledger.query_transfers(request).await
        })
        .await
    }
}

impl Rpc {
    /// A page of change events.
    pub(crate) async fn get_change_events(
        &self,
        filter: v1::ChangeEventsFilter,
    ) -> Result<v1::ChangeEvents, ClientError> {
        self.call(&filter, |mut ledger, request| async move {
            ledger.get_change_events(request).await
        })
        .await
    }

    /// Opens one change-event subscription (one attempt, not retried: the caller
    /// resumes). The answer's headers must come within the request timeout; the
    /// stream itself has no deadline.
    pub(crate) async fn subscribe_change_events(
        &self,
        after: u64,
    ) -> Result<Streaming<v1::ChangeEvent>, Status> {
        let request = self.request_without_deadline(v1::SubscribeChangeEventsRequest { after });
        let index = self.current.load(Ordering::Relaxed) % self.ledgers.len();
        let mut ledger = self.ledgers[index].clone();
        let opened = ledger.subscribe_change_events(request);
        let status = match tokio::time::timeout(self.request_timeout, opened).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_elapsed) => Status::unavailable(format!(
                "no answer within {} ms",
                self.request_timeout.as_millis()
            )),
        };
        if classify(&status) == Failure::Unavailable {
            self.move_on_from(index);
        }
        Err(status)
    }
}

/// The error after the last attempt of a retried failure.
pub(crate) fn gave_up(attempts: u32, status: Status) -> ClientError {
    match status.code() {
        Code::ResourceExhausted => ClientError::Busy { attempts },
        _ => ClientError::Unavailable { attempts, status },
    }
}

/// The results of a create call, checked: one per event, every code known.
fn decode_results(
    events: usize,
    results: &v1::CreateResults,
) -> Result<Vec<CreateResult>, ClientError> {
    if results.results.len() != events {
        return Err(ClientError::Protocol(format!(
            "{} results for a batch of {events} events",
            results.results.len()
        )));
    }
    results
        .results
        .iter()
        .enumerate()
        .map(|(index, result)| {
            let code = tally_proto::result_code_from_proto(result.code).ok_or_else(|| {
                ClientError::Protocol(format!(
                    "event {index}: unknown result code {}",
                    result.code
                ))
            })?;
            Ok(CreateResult {
                code,
                timestamp: result.timestamp,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_types::ResultCode;

    fn wire(code: i32, timestamp: u64) -> v1::CreateResult {
        v1::CreateResult {
            code,
            timestamp,
            ..v1::CreateResult::default()
        }
    }

    #[test]
    fn results_are_checked_before_they_are_trusted() {
        let results = v1::CreateResults {
            results: vec![wire(0, 5), wire(ResultCode::Exists as i32, 0)],
        };
        let decoded = decode_results(2, &results).expect("two known codes");
        assert_eq!(decoded[0].code, ResultCode::Ok);
        assert_eq!(decoded[0].timestamp, 5);
        assert_eq!(decoded[1].code, ResultCode::Exists);
        let short = decode_results(3, &results);
        assert!(matches!(short, Err(ClientError::Protocol(_))), "{short:?}");
        let unknown = v1::CreateResults {
            results: vec![wire(250, 0)],
        };
        let error = decode_results(1, &unknown).expect_err("code 250 is unknown");
        assert!(
            error.to_string().contains("unknown result code 250"),
            "{error}"
        );
    }

    #[test]
    fn giving_up_names_busy_or_unavailable() {
        let busy = gave_up(5, Status::resource_exhausted("busy"));
        assert!(matches!(busy, ClientError::Busy { attempts: 5 }), "{busy}");
        let down = gave_up(2, Status::unavailable("refused"));
        assert!(
            matches!(down, ClientError::Unavailable { attempts: 2, .. }),
            "{down}"
        );
    }
}
