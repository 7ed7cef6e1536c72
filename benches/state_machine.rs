//! The state machine alone: `StateMachine::apply` per transfer, in full batches of 8,190.
//!
//! Three shapes: single-phase transfers, pending + post pairs (each pair in the same
//! batch), and linked chains of three. Throughput is transfers (events) per second.
//!
//! The ledger holds 100,000 accounts, not 1,000,000: setup stays around a tenth of a
//! second, and 100,000 accounts (12.8 MB of records plus the id index) are already far
//! beyond the L2 cache, so each transfer still pays its two account-lookup cache misses.
//! Transfers accumulate in the state; past [`TRANSFERS_RESET`] stored transfers the state
//! is reset to the funded accounts (outside the timed region) so memory stays bounded.
//!
//! Every batch's results are checked to be all `ok` after the clock stops: the bench
//! measures the success path, never a cheap rejection.
//!
//! Full run: `cargo bench --bench state_machine`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tally::state::StateMachine;
use tally::types::{Account, BATCH_EVENTS_MAX, Batch, ResultCode, Transfer, TransferFlags};
use tally_testkit::SeededRng as Rng;

const ACCOUNTS: u64 = 100_000;
const LEDGER: u32 = 156;
/// Bounds the state's memory: about 200 bytes per stored transfer, so ~400 MB at most.
const TRANSFERS_RESET: usize = 2_000_000;

/// Two different account ids in `1..=ACCOUNTS`.
fn account_pair(rng: &mut Rng) -> (u128, u128) {
    let debit = 1 + rng.below(ACCOUNTS);
    let credit = 1 + (debit + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
    assert_ne!(debit, credit);
    (u128::from(debit), u128::from(credit))
}

/// Plain accounts (no balance limits), created in batches of at most 8,190.
fn state_with_accounts() -> StateMachine {
    let mut state = StateMachine::new();
    let ids: Vec<u128> = (1..=u128::from(ACCOUNTS)).collect();
    for chunk in ids.chunks(BATCH_EVENTS_MAX) {
        let accounts = chunk
            .iter()
            .map(|&id| Account {
                id,
                ledger: LEDGER,
                code: 1,
                ..Account::default()
            })
            .collect();
        let results = state.apply(state.last_timestamp() + 1, &Batch::CreateAccounts(accounts));
        assert!(results.iter().all(|r| *r == ResultCode::Ok));
    }
    assert_eq!(state.account_count(), ACCOUNTS as usize);
    state
}

fn single_phase(id: u128, rng: &mut Rng) -> Transfer {
    let (debit_account_id, credit_account_id) = account_pair(rng);
    Transfer {
        id,
        debit_account_id,
        credit_account_id,
        amount: 1 + u128::from(rng.below(10_000)),
        ledger: LEDGER,
        code: 1,
        ..Transfer::default()
    }
}

/// 8,190 single-phase transfers with fresh ids from `next_id`.
fn batch_single_phase(next_id: &mut u128, rng: &mut Rng) -> Vec<Transfer> {
    (0..BATCH_EVENTS_MAX)
        .map(|_| {
            *next_id += 1;
            single_phase(*next_id, rng)
        })
        .collect()
}

/// 4,095 pairs: a pending transfer, then the post of its full amount.
fn batch_pending_post(next_id: &mut u128, rng: &mut Rng) -> Vec<Transfer> {
    let mut events = Vec::with_capacity(BATCH_EVENTS_MAX);
    for _ in 0..BATCH_EVENTS_MAX / 2 {
        let pending_id = *next_id + 1;
        *next_id += 2;
        events.push(Transfer {
            flags: TransferFlags::PENDING,
            ..single_phase(pending_id, rng)
        });
        events.push(Transfer {
            id: *next_id,
            pending_id,
            flags: TransferFlags::POST_PENDING_TRANSFER,
            ..Transfer::default()
        });
    }
    events
}

/// 2,730 linked chains of three single-phase transfers (the first two carry `linked`).
fn batch_chains_of_3(next_id: &mut u128, rng: &mut Rng) -> Vec<Transfer> {
    (0..BATCH_EVENTS_MAX)
        .map(|index| {
            *next_id += 1;
            let mut t = single_phase(*next_id, rng);
            if index % 3 != 2 {
                t.flags = TransferFlags::LINKED;
            }
            t
        })
        .collect()
}

type MakeBatch = fn(&mut u128, &mut Rng) -> Vec<Transfer>;

/// Times `apply` alone: batch building, the memory reset and the result check stay
/// outside the clock.
fn bench_shape(c: &mut Criterion, base: &StateMachine, name: &str, make: MakeBatch) {
    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(BATCH_EVENTS_MAX as u64));
    let mut state = base.clone();
    let mut rng = Rng::new(0x5eed);
    let mut next_id: u128 = 0;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                if state.transfer_count() >= TRANSFERS_RESET {
                    state = base.clone();
                }
                let batch = Batch::CreateTransfers(make(&mut next_id, &mut rng));
                let timestamp = state.last_timestamp() + 1;
                let start = Instant::now();
                let results = black_box(state.apply(timestamp, black_box(&batch)));
                elapsed += start.elapsed();
                assert!(results.iter().all(|r| *r == ResultCode::Ok));
            }
            elapsed
        });
    });
    group.finish();
}

fn state_machine(c: &mut Criterion) {
    let base = state_with_accounts();
    bench_shape(c, &base, "single_phase_8190", batch_single_phase);
    bench_shape(c, &base, "pending_post_pairs_8190", batch_pending_post);
    bench_shape(c, &base, "linked_chains_of_3_8190", batch_chains_of_3);
}

criterion_group!(benches, state_machine);
criterion_main!(benches);
