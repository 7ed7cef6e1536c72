//! Times `StateMachine::apply` on full batches of single-phase transfers, and reports
//! resident memory per account and per stored transfer (from /proc/self/statm).
//!
//! `cargo bench -p tally-state --bench apply_bench -- [ACCOUNTS] [TRANSFERS] [history|orders]`
//! (`-- --test`: a smoke run of a thousand accounts and ten thousand transfers).
//! With `history`, every 100th account keeps a balance history; with `orders`, also
//! every transfer carries an order id (`user_data_128`, indexed for queries), and the
//! bench then times 10,000 `query_transfers` by order id on the full state. One
//! transfer in 100 has code 7 and one in 1,000,000 code 9; the bench always times
//! queries by code (`time_code_queries`).

use std::time::Instant;
use tally_state::StateMachine;
use tally_types::{Account, AccountFlags, BATCH_EVENTS_MAX, Batch, QueryFilter, Transfer};

fn main() {
    let (arguments, smoke) = tally_testkit::bench_arguments();
    let (accounts_default, transfers_default) = match smoke {
        true => (1_000, 10_000),
        false => (1_000_000, 4_000_000),
    };
    let mut args = arguments.into_iter();
    let accounts: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(accounts_default);
    let transfers: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(transfers_default);
    let option = args.next();
    let orders = option.as_deref() == Some("orders") || smoke;
    let history = orders || option.as_deref() == Some("history");
    let resident_start = resident_bytes();
    let mut state = StateMachine::new();
    let mut now = 1u64;
    let ids: Vec<u128> = (1..=u128::from(accounts)).collect();
    for chunk in ids.chunks(BATCH_EVENTS_MAX) {
        let batch: Vec<Account> = chunk
            .iter()
            .map(|&id| Account {
                id,
                ledger: 1,
                code: 1,
                flags: if history && id % 100 == 0 {
                    AccountFlags::HISTORY
                } else {
                    AccountFlags::empty()
                },
                ..Account::default()
            })
            .collect();
        state.apply(now, &Batch::CreateAccounts(batch));
        now = state.last_timestamp() + 1;
    }
    let resident_accounts = resident_bytes();
    let mut rng = tally_testkit::SeededRng::new(0x5eed);
    let mut id = 0u128;
    // Each batch is built just before it is applied and only `apply` is timed, so the
    // input never has to fit in memory beside the ledger (100 M transfers would need
    // 13 GB of input) and the resident figures count the ledger alone.
    let mut next_batch = move |events: u64| {
        Batch::CreateTransfers(
            (0..events)
                .map(|_| {
                    id += 1;
                    let debit = 1 + rng.next_u64() % accounts;
                    let credit = 1 + (debit + rng.next_u64() % (accounts - 1)) % accounts;
                    Transfer {
                        id,
                        debit_account_id: u128::from(debit),
                        credit_account_id: u128::from(credit),
                        amount: 1,
                        ledger: 1,
                        code: code_of(id),
                        user_data_128: if orders { order_id(id) } else { 0 },
                        ..Transfer::default()
                    }
                })
                .collect(),
        )
    };
    let resident_before_transfers = resident_bytes();
    let mut elapsed = std::time::Duration::ZERO;
    let mut ok = 0u64;
    let mut left = transfers;
    while left > 0 {
        let events = left.min(BATCH_EVENTS_MAX as u64);
        left -= events;
        let batch = next_batch(events);
        let started = Instant::now();
        let results = state.apply(now, &batch);
        elapsed += started.elapsed();
        ok += results.iter().filter(|r| r.is_ok()).count() as u64;
        now = state.last_timestamp() + 1;
    }
    assert_eq!(ok, transfers, "every generated transfer is valid");
    let resident_end = resident_bytes();
    println!(
        "{ok} transfers over {accounts} accounts in {:.2} s: {:.0} ns/transfer, {:.0} transfers/s",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / ok as f64,
        ok as f64 / elapsed.as_secs_f64()
    );
    println!(
        "resident: {:.0} bytes/account, {:.0} bytes/stored transfer (input batches excluded)",
        resident_accounts.saturating_sub(resident_start) as f64 / accounts as f64,
        resident_end.saturating_sub(resident_before_transfers) as f64 / ok as f64
    );
    println!(
        "resident in all: {:.2} GiB for {accounts} accounts and {ok} stored transfers",
        resident_end as f64 / f64::from(1u32 << 30)
    );
    if history {
        println!(
            "query indexes {:.2} GiB, balance histories {:.2} GiB",
            state.query_index_bytes() as f64 / f64::from(1u32 << 30),
            state.balance_history_bytes() as f64 / f64::from(1u32 << 30)
        );
    }
    if orders {
        time_queries(&state, transfers);
    }
    time_code_queries(&state, transfers);
}

/// The code of transfer `id`: 7 for one in 100, 9 for one in 1,000,000, else 1.
fn code_of(id: u128) -> u16 {
    match id {
        _ if id.is_multiple_of(1_000_000) => 9,
        _ if id.is_multiple_of(100) => 7,
        _ => 1,
    }
}

/// Times 1,000 queries of each kind by code through the ledger and code indexes:
/// the newest 10 of the rarest code with no time range; the oldest 100 of code 7 (and
/// ledger 1) from a random instant on.
fn time_code_queries(state: &StateMachine, transfers: u64) {
    let first = state.lookup_transfer(1).map_or(0, |t| t.timestamp);
    let span = state.last_timestamp().saturating_sub(first).max(1);
    let mut rng = tally_testkit::SeededRng::new(0xc0de);
    let kinds: [(&str, u16, u32, bool, u32); 3] = [
        ("the newest 10 of code 9", 9, 0, true, 10),
        (
            "the oldest 100 of code 7 from a random instant",
            7,
            0,
            false,
            100,
        ),
        ("the same with ledger 1", 7, 1, false, 100),
    ];
    for (what, code, ledger, reversed, limit) in kinds {
        let mut took_ns: Vec<u64> = (0..1_000)
            .map(|_| {
                let timestamp_min = if reversed {
                    0
                } else {
                    first + rng.next_u64() % span
                };
                let filter = QueryFilter {
                    code,
                    ledger,
                    timestamp_min,
                    limit,
                    reversed,
                    ..QueryFilter::default()
                };
                let started = Instant::now();
                let found = state.query_transfers(&filter);
                let took = started.elapsed().as_nanos() as u64;
                assert!(found.iter().all(|t| t.code == code), "{what}");
                took
            })
            .collect();
        took_ns.sort_unstable();
        let at = |q: f64| took_ns[((took_ns.len() - 1) as f64 * q) as usize];
        println!(
            "query_transfers, {what}, over {transfers} transfers: p50 {} ns, p99 {} ns",
            at(0.5),
            at(0.99)
        );
    }
}

/// The order id of transfer `id`: spread over 128 bits, never 0.
fn order_id(id: u128) -> u128 {
    let x = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (u128::from(x) << 64) | id
}

/// Times 10,000 queries by the order id of a random transfer; each must find it.
fn time_queries(state: &StateMachine, transfers: u64) {
    let mut rng = tally_testkit::SeededRng::new(0x9e77);
    let mut took_ns: Vec<u64> = (0..10_000)
        .map(|_| {
            let id = 1 + u128::from(rng.next_u64() % transfers);
            let filter = QueryFilter {
                user_data_128: order_id(id),
                ..QueryFilter::default()
            };
            let started = Instant::now();
            let found = state.query_transfers(&filter);
            let took = started.elapsed().as_nanos() as u64;
            assert_eq!(found.len(), 1, "order {id} found once");
            took
        })
        .collect();
    took_ns.sort_unstable();
    let at = |q: f64| took_ns[((took_ns.len() - 1) as f64 * q) as usize];
    println!(
        "query_transfers by order id over {transfers} transfers: p50 {} ns, p99 {} ns, max {} ns",
        at(0.5),
        at(0.99),
        took_ns[took_ns.len() - 1]
    );
}

/// Resident set size of this process, in bytes (0 where /proc is unavailable).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
