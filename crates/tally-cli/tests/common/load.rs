//! A load of transfers from concurrent client tasks. Every transfer answered `ok` or
//! `exists` is recorded as acknowledged, with its timestamp when `ok`; one refused for
//! its debit account's limit (`exceeds_credits`, or `id_already_failed` on a retry), or
//! failed with the linked chain it belongs to, as refused; a transfer whose call failed
//! as unknown (it may or may not have been applied). A third of the batches are one
//! linked chain; a tenth of the transfers are pending, and each task posts or voids
//! those of its own acknowledged. After the faults, [`check`] finds every acknowledged
//! transfer as written, no refused one, each chain whole or absent, and the posted
//! and pending balances equal to the sums of the transfers that exist. Half the
//! accounts may not go into debit, so what is refused depends on the order the leader
//! gave: the replicas must decide alike.

use super::Cluster;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_client::Client;
use tally_testkit::SeededRng;
use tally_types::{Account, AccountFlags, ResultCode, Transfer, TransferFlags};

/// The accounts transfers move money between; those up to [`LIMITED_ACCOUNTS`] may
/// not go into debit (`debits_must_not_exceed_credits`).
pub const ACCOUNTS: u128 = 8;
const LIMITED_ACCOUNTS: u128 = 4;
const LEDGER: u32 = 7;

/// What was sent, and what the answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub debit: u128,
    pub credit: u128,
    pub amount: u128,
    /// `pending`, `post_pending_transfer` or `void_pending_transfer`, or none.
    pub flags: TransferFlags,
    pub pending_id: u128,
    /// The timestamp of an `ok` answer (an `exists` answer carries none).
    pub timestamp: Option<u64>,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Record {
    pub acknowledged: BTreeMap<u128, Sent>,
    pub unknown: BTreeMap<u128, Sent>,
    /// Refused for a limit or with their chain: must not exist.
    pub refused: Vec<u128>,
    /// The ids of each linked chain sent: all of a chain exist, or none.
    pub chains: Vec<Vec<u128>>,
    /// Answers that are neither `ok`, `exists` nor a refusal for a limit or with a
    /// chain: always a failure.
    pub wrong: Vec<(u128, ResultCode)>,
}

/// Running client tasks; [`Load::stop`] ends them and answers what they saw.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Set while the tasks should wait instead of sending.
    pause: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    record: Arc<Mutex<Record>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A transfer of `amount` between two accounts picked by `rng`.
pub fn transfer(id: u128, rng: &mut SeededRng) -> (Transfer, Sent) {
    let debit = 1 + u128::from(rng.below(ACCOUNTS as u64));
    let credit = 1 + (debit + u128::from(rng.below(ACCOUNTS as u64 - 1))) % ACCOUNTS;
    let amount = 1 + u128::from(rng.below(1_000));
    let transfer = Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: LEDGER,
        code: 1,
        ..Transfer::default()
    };
    let sent = Sent {
        debit,
        credit,
        amount,
        flags: TransferFlags::empty(),
        pending_id: 0,
        timestamp: None,
    };
    (transfer, sent)
}

/// Pending transfer `id` of `amount` between two accounts picked by `rng` (no timeout).
fn pending(id: u128, rng: &mut SeededRng) -> (Transfer, Sent) {
    let (mut transfer, mut sent) = transfer(id, rng);
    transfer.flags = TransferFlags::PENDING;
    sent.flags = TransferFlags::PENDING;
    (transfer, sent)
}

/// Transfer `id` posting (or voiding) the whole of `pending`, every field given.
fn settle(id: u128, pending: &(Transfer, Sent), post: bool) -> (Transfer, Sent) {
    let flags = match post {
        true => TransferFlags::POST_PENDING_TRANSFER,
        false => TransferFlags::VOID_PENDING_TRANSFER,
    };
    let transfer = Transfer {
        id,
        pending_id: pending.0.id,
        flags,
        ..pending.0
    };
    let sent = Sent {
        flags,
        pending_id: pending.0.id,
        ..pending.1
    };
    (transfer, sent)
}

/// Makes `batch` one linked chain: every transfer but the last is `linked`.
fn link(batch: &mut [(Transfer, Sent)]) {
    let last = batch.len() - 1;
    for (transfer, _) in &mut batch[..last] {
        transfer.flags = transfer.flags.with(TransferFlags::LINKED);
    }
}

/// Creates the accounts (retried until acknowledged).
pub async fn create_accounts(client: &Client) {
    let accounts: Vec<Account> = (1..=ACCOUNTS)
        .map(|id| Account {
            id,
            ledger: LEDGER,
            code: 1,
            flags: match id <= LIMITED_ACCOUNTS {
                true => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                false => AccountFlags::empty(),
            },
            ..Account::default()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.create_accounts(&accounts).await {
            Ok(results) => {
                assert!(
                    results
                        .iter()
                        .all(|r| matches!(r.code, ResultCode::Ok | ResultCode::Exists)),
                    "{results:?}"
                );
                return;
            }
            Err(error) => assert!(Instant::now() < deadline, "creating accounts: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one batch and records what its answer says: true when it was answered.
pub async fn send(client: &Client, batch: Vec<(Transfer, Sent)>, record: &Mutex<Record>) -> bool {
    answer(client, batch, record).await.is_some()
}

/// Sends one batch, records what its answer says, and answers each transfer's result
/// as recorded (`exists` for the rest of a chain that is in), `None` if unanswered.
async fn answer(
    client: &Client,
    batch: Vec<(Transfer, Sent)>,
    record: &Mutex<Record>,
) -> Option<Vec<ResultCode>> {
    let transfers: Vec<Transfer> = batch.iter().map(|(t, _)| *t).collect();
    let answer = client.create_transfers(&transfers).await;
    let mut record = record.lock().unwrap();
    match answer {
        Ok(results) => {
            // A chain sent again after its first answer was lost fails on its first
            // transfer with `exists`, and the rest with it: all of it is in.
            let chain_exists = transfers[0].flags.contains(TransferFlags::LINKED)
                && results.iter().any(|r| r.code == ResultCode::Exists);
            let mut codes = Vec::with_capacity(results.len());
            for ((transfer, mut sent), result) in batch.into_iter().zip(results) {
                let code = match result.code {
                    ResultCode::LinkedEventFailed if chain_exists => ResultCode::Exists,
                    code => code,
                };
                codes.push(code);
                match code {
                    ResultCode::Ok => sent.timestamp = Some(result.timestamp),
                    ResultCode::Exists => {}
                    ResultCode::ExceedsCredits
                    | ResultCode::IdAlreadyFailed
                    | ResultCode::LinkedEventFailed => {
                        record.unknown.remove(&transfer.id);
                        record.refused.push(transfer.id);
                        continue;
                    }
                    code => {
                        record.wrong.push((transfer.id, code));
                        continue;
                    }
                }
                record.unknown.remove(&transfer.id);
                record.acknowledged.insert(transfer.id, sent);
            }
            Some(codes)
        }
        Err(_) => {
            for (transfer, sent) in batch {
                record.unknown.insert(transfer.id, sent);
            }
            None
        }
    }
}

impl Load {
    /// `tasks` client tasks, task `i` talking to the running replicas starting with
    /// the `i`-th, each sending batches of 1 to 4 transfers.
    pub async fn start(cluster: &Cluster, tasks: u64, seed: u64) -> Load {
        let ids = cluster.running();
        let client = cluster.client(&ids, Duration::from_secs(3)).await;
        create_accounts(&client).await;
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            pause: Arc::new(AtomicBool::new(false)),
            acks: Arc::new(AtomicU64::new(0)),
            record: Arc::new(Mutex::new(Record::default())),
            tasks: Vec::new(),
        };
        for task in 0..tasks {
            let mut order = ids.clone();
            order.rotate_left(task as usize % ids.len());
            let mut clients = Vec::new();
            // One client per starting replica: after a failure the task moves on to
            // the next one (a timed-out call does not make a client fail over).
            for turn in 0..order.len() {
                let mut turned = order.clone();
                turned.rotate_left(turn);
                clients.push(cluster.client(&turned, Duration::from_secs(3)).await);
            }
            load.tasks.push(tokio::spawn(run_task(
                clients,
                SeededRng::new(seed ^ (task << 40)),
                1_000_000 * u128::from(task + 1),
                Arc::clone(&load.stop),
                Arc::clone(&load.pause),
                Arc::clone(&load.acks),
                Arc::clone(&load.record),
            )));
        }
        load
    }

    /// Acknowledged transfers so far.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Waits until `more` more transfers are acknowledged, at most `limit`.
    pub async fn until_more_acks(&self, more: u64, limit: Duration) {
        let target = self.acks() + more;
        let deadline = Instant::now() + limit;
        while self.acks() < target {
            assert!(
                Instant::now() < deadline,
                "the load got {} of {more} acknowledgements in {limit:?}",
                more + self.acks() - target
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The record the tasks write to, for calls made beside them.
    pub fn record(&self) -> Arc<Mutex<Record>> {
        Arc::clone(&self.record)
    }

    pub fn pause(&self, paused: bool) {
        self.pause.store(paused, Ordering::Relaxed);
    }

    /// Stops the tasks (each finishes its call in flight) and answers the record.
    pub async fn stop(self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.record.lock().unwrap())
    }
}

async fn run_task(
    clients: Vec<Client>,
    mut rng: SeededRng,
    first_id: u128,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    record: Arc<Mutex<Record>>,
) {
    let mut next_id = first_id;
    let mut current = 0;
    // This task's pending transfers answered `ok` or `exists`, not yet settled.
    let mut open: Vec<(Transfer, Sent)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if pause.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let size = 1 + rng.below(4) as u128;
        let mut batch: Vec<(Transfer, Sent)> = Vec::new();
        for id in next_id..next_id + size {
            let settles = !open.is_empty() && rng.below(2) == 0;
            batch.push(match (settles, rng.below(10)) {
                (true, _) => settle(id, &open.remove(0), rng.below(2) == 0),
                (false, 0) => pending(id, &mut rng),
                (false, _) => transfer(id, &mut rng),
            });
        }
        next_id += size;
        if size > 1 && rng.below(3) == 0 {
            link(&mut batch);
            let ids = batch.iter().map(|(t, _)| t.id).collect();
            record.lock().unwrap().chains.push(ids);
        }
        let sent = batch.clone();
        match answer(&clients[current], batch, &record).await {
            Some(codes) => {
                acks.fetch_add(size as u64, Ordering::Relaxed);
                follow_up(sent, &codes, &mut open);
            }
            None => {
                // Whether its settlements are in is unknown: they are not sent again.
                current = (current + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// After an answered batch: its pending transfers that are in wait to be settled, and
/// the pending transfer of a settlement refused with its chain waits again.
fn follow_up(sent: Vec<(Transfer, Sent)>, codes: &[ResultCode], open: &mut Vec<(Transfer, Sent)>) {
    for ((transfer, sent), code) in sent.into_iter().zip(codes) {
        let is_in = matches!(code, ResultCode::Ok | ResultCode::Exists);
        if transfer.flags.contains(TransferFlags::PENDING) && is_in {
            open.push((transfer, sent));
        } else if transfer.pending_id != 0 && !is_in {
            let pending = Transfer {
                id: transfer.pending_id,
                pending_id: 0,
                flags: TransferFlags::PENDING,
                ..transfer
            };
            let sent = Sent {
                flags: TransferFlags::PENDING,
                pending_id: 0,
                timestamp: None,
                ..sent
            };
            open.push((pending, sent));
        }
    }
}

/// Checks, through the replicas `ids`: every acknowledged transfer exists as sent (and
/// with the timestamp its `ok` answer gave); no refused one exists; the unknown ones
/// that exist are as sent; each account's posted debits and credits are the sums of
/// the transfers that exist, and a limited account is not in debit. Answers how many
/// transfers exist.
pub async fn check(cluster: &Cluster, ids: &[u64], record: &Record) -> usize {
    assert!(record.wrong.is_empty(), "wrong answers: {:?}", record.wrong);
    assert!(!record.acknowledged.is_empty(), "nothing was acknowledged");
    let client = cluster.client(ids, Duration::from_secs(10)).await;
    let refused = lookup(&client, record.refused.clone()).await;
    assert!(
        refused.is_empty(),
        "refused transfers exist: {:?}",
        refused.keys()
    );
    eprintln!(
        "{} acknowledged, {} refused for a limit or with their chain, {} unknown, {} chains",
        record.acknowledged.len(),
        record.refused.len(),
        record.unknown.len(),
        record.chains.len()
    );
    let stored = lookup(&client, record.acknowledged.keys().copied().collect()).await;
    let mut lost = Vec::new();
    for (id, sent) in &record.acknowledged {
        match stored.get(id) {
            None => lost.push(*id),
            Some(found) => assert_as_sent(*id, sent, found, true),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged transfers lost: {:?}",
        lost.len(),
        record.acknowledged.len(),
        &lost[..lost.len().min(20)]
    );
    let unknown = lookup(&client, record.unknown.keys().copied().collect()).await;
    for (id, found) in &unknown {
        assert_as_sent(*id, &record.unknown[id], found, false);
    }
    for chain in &record.chains {
        let exist = chain
            .iter()
            .filter(|id| stored.contains_key(id) || unknown.contains_key(id))
            .count();
        assert!(
            exist == 0 || exist == chain.len(),
            "{exist} of the linked chain {chain:?} exist"
        );
    }
    let existing: BTreeMap<u128, Transfer> = stored.into_iter().chain(unknown).collect();
    let balances = balances_of(&existing);
    let settled = existing.values().filter(|t| t.pending_id != 0).count();
    let pending = existing
        .values()
        .filter(|t| t.flags.contains(TransferFlags::PENDING))
        .count();
    eprintln!("{pending} pending transfers exist, {settled} posted or voided");
    let accounts = client
        .lookup_accounts((1..=ACCOUNTS).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(accounts.len(), ACCOUNTS as usize);
    for account in accounts {
        if account.id <= LIMITED_ACCOUNTS {
            assert!(
                account.debits_pending + account.debits_posted <= account.credits_posted,
                "{account:?}"
            );
        }
        let found = [
            account.debits_pending,
            account.debits_posted,
            account.credits_pending,
            account.credits_posted,
        ];
        let expected = balances.get(&account.id).copied().unwrap_or_default();
        assert_eq!(
            found, expected,
            "account {}: debits and credits, pending and posted",
            account.id
        );
    }
    existing.len()
}

/// Each account's debits pending and posted, credits pending and posted, as the
/// `existing` transfers make them. A settlement's pending transfer must exist.
fn balances_of(existing: &BTreeMap<u128, Transfer>) -> BTreeMap<u128, [u128; 4]> {
    let mut sums: BTreeMap<u128, [i128; 4]> = BTreeMap::new();
    let post = TransferFlags::POST_PENDING_TRANSFER;
    let void = TransferFlags::VOID_PENDING_TRANSFER;
    for t in existing.values() {
        let amount = i128::try_from(t.amount).expect("a small amount");
        // (pending, posted) change of both accounts.
        let change = if t.flags.contains(post) || t.flags.contains(void) {
            assert!(
                existing.contains_key(&t.pending_id),
                "transfer {} settles {}, which does not exist",
                t.id,
                t.pending_id
            );
            // The whole pending amount leaves the pending balances.
            (-amount, if t.flags.contains(post) { amount } else { 0 })
        } else if t.flags.contains(TransferFlags::PENDING) {
            (amount, 0)
        } else {
            (0, amount)
        };
        let debit = sums.entry(t.debit_account_id).or_default();
        debit[0] += change.0;
        debit[1] += change.1;
        let credit = sums.entry(t.credit_account_id).or_default();
        credit[2] += change.0;
        credit[3] += change.1;
    }
    sums.into_iter()
        .map(|(id, sum)| (id, sum.map(|s| u128::try_from(s).expect("no negative sum"))))
        .collect()
}

fn assert_as_sent(id: u128, sent: &Sent, found: &Transfer, acknowledged: bool) {
    assert_eq!(
        (
            found.debit_account_id,
            found.credit_account_id,
            found.amount,
            found.flags.without(TransferFlags::LINKED),
            found.pending_id
        ),
        (
            sent.debit,
            sent.credit,
            sent.amount,
            sent.flags,
            sent.pending_id
        ),
        "transfer {id} changed (acknowledged: {acknowledged})"
    );
    assert_eq!((found.ledger, found.code), (LEDGER, 1), "transfer {id}");
    if let Some(timestamp) = sent.timestamp {
        assert_eq!(
            found.timestamp, timestamp,
            "transfer {id}: its timestamp changed"
        );
    }
}

/// The transfers with these ids that exist, looked up in chunks.
async fn lookup(client: &Client, ids: Vec<u128>) -> BTreeMap<u128, Transfer> {
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(4_000) {
        let transfers = client.lookup_transfers(chunk).await.unwrap();
        found.extend(transfers.into_iter().map(|t| (t.id, t)));
    }
    found
}
