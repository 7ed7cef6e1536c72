//! Times `StateMachine::freeze` (what the apply thread pays for each snapshot) on a
//! ledger whose side tables are full: burned ids, pending transfers and refund totals,
//! in the proportions of a max-mode run at 40 M events (9.5 M burned, 1.6 M pending,
//! 0.6 M refunded, scaled by `EVENTS`).
//!
//! `cargo bench -p tally-state --bench freeze_bench -- [EVENTS]`
//! (`-- --test`: a smoke run at 40 000 events)

use std::time::Instant;
use tally_state::StateMachine;
use tally_types::{Account, AccountFlags, BATCH_EVENTS_MAX, Batch, Transfer, TransferFlags};

fn main() {
    let (arguments, smoke) = tally_testkit::bench_arguments();
    let events: u64 = arguments
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(if smoke { 40_000 } else { 40_000_000 });
    let burned = events * 95 / 400;
    let pending = events * 16 / 400;
    let refunded = events * 6 / 400;
    let mut state = StateMachine::new();
    // Account 1 may not go below zero and has nothing: payments from it fail and burn
    // their ids. Account 2 is unbounded.
    let accounts = vec![
        Account {
            id: 1,
            ledger: 1,
            code: 1,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            ..Account::default()
        },
        Account {
            id: 2,
            ledger: 1,
            code: 1,
            ..Account::default()
        },
        Account {
            id: 3,
            ledger: 1,
            code: 1,
            ..Account::default()
        },
    ];
    state.apply(1, &Batch::CreateAccounts(accounts));
    let mut id = 0u128;
    let started = Instant::now();
    apply(&mut state, &mut id, burned, &|id| transfer(id, 1, 2));
    apply(&mut state, &mut id, pending, &|id| Transfer {
        flags: TransferFlags::PENDING,
        ..transfer(id, 2, 3)
    });
    let first_refundable = id + 1;
    apply(&mut state, &mut id, refunded, &|id| transfer(id, 2, 3));
    let first_refund = id + 1;
    apply(&mut state, &mut id, refunded, &|id| Transfer {
        flags: TransferFlags::REFUND,
        pending_id: first_refundable + (id - first_refund),
        ..transfer(id, 0, 0)
    });
    eprintln!(
        "built: {burned} burned, {pending} pending, {refunded} refunded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let frozen = state.freeze();
        times.push(started.elapsed().as_secs_f64() * 1e3);
        drop(frozen);
    }
    times.sort_by(f64::total_cmp);
    let tables = state.freeze().side_tables();
    eprintln!(
        "side tables: {} burned, {} pending statuses, {} refund totals",
        tables.failed_ids.len(),
        tables.pending_statuses.len(),
        tables.refunded.len()
    );
    println!(
        "freeze: median {:.1} ms, min {:.1} ms, max {:.1} ms (7 runs)",
        times[3], times[0], times[6]
    );
}

fn transfer(id: u128, debit: u128, credit: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: 1,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// Applies `count` transfers made by `make` from the ids after `id`, in full batches.
fn apply(state: &mut StateMachine, id: &mut u128, count: u64, make: &dyn Fn(u128) -> Transfer) {
    let mut left = count;
    while left > 0 {
        let events = left.min(BATCH_EVENTS_MAX as u64);
        let batch = (0..events)
            .map(|_| {
                *id += 1;
                make(*id)
            })
            .collect();
        let now = state.last_timestamp() + 1;
        state.apply(now, &Batch::CreateTransfers(batch));
        left -= events;
    }
}
