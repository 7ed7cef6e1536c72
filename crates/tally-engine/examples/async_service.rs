//! An async payment service that embeds the ledger (tokio).
//!
//! Many customers pay one merchant at once, each from a task of its own, through
//! `Ledger::submit_async`. The queue is kept small and answers `busy` at once when full,
//! so some payments are handed back: they are retried with the very batch handed back.
//! A payment whose answer was lost (a timeout, a dropped connection) is retried with the
//! same transfer id: the ledger answers `exists` and never applies it twice. At the end
//! the balances are exactly what was paid, once.
//!
//! `cargo run -p tally-engine --example async_service [-- DATA_DIR]` (a temporary
//! directory when none is given).

use std::error::Error;
use std::path::Path;
use tally_engine::prelude::*;

const EUR: u32 = 978;
const CODE: u16 = 1;
const BANK: u128 = 1;
const MERCHANT: u128 = 2;
/// Customers 1000.., each paying from its own task.
const CUSTOMERS: u128 = 200;
const FIRST_CUSTOMER: u128 = 1_000;
const PRICE: u128 = 399;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    match std::env::args().nth(1) {
        Some(dir) => run(Path::new(&dir)).await,
        None => run(tempfile::tempdir()?.path()).await,
    }
}

async fn run(dir: &Path) -> Result<(), Box<dyn Error>> {
    let mut config = Config::new(dir);
    // A small queue that refuses at once when full, to show `busy` being handled.
    config.queue_batches_max = 8;
    config.backpressure = Backpressure::Busy;
    let ledger = Ledger::open(config)?;
    open_accounts(&ledger).await?;

    // Every customer pays the merchant concurrently.
    let tasks: Vec<_> = (0..CUSTOMERS)
        .map(|n| {
            let ledger = ledger.clone();
            let customer = FIRST_CUSTOMER + n;
            tokio::spawn(async move {
                let pay = transfer(10_000 + n, customer, MERCHANT, PRICE);
                submit_until_admitted(&ledger, Batch::CreateTransfers(vec![pay])).await
            })
        })
        .collect();
    let mut busy_retries = 0;
    for task in tasks {
        let (results, retries) = task.await??;
        assert_eq!(results[0].code, ResultCode::Ok);
        busy_retries += retries;
    }
    println!(
        "{CUSTOMERS} payments durable; {busy_retries} busy answers retried with the batch handed back"
    );

    // The answer to payment 10_000 was "lost": the service retries it with the same id.
    let retry = transfer(10_000, FIRST_CUSTOMER, MERCHANT, PRICE);
    let (results, _) = submit_until_admitted(&ledger, Batch::CreateTransfers(vec![retry])).await?;
    println!("retry of payment 10000: {}", results[0].code);
    assert_eq!(
        results[0].code,
        ResultCode::Exists,
        "applied once, never twice"
    );

    let merchant = &ledger.lookup_accounts(&[MERCHANT])[0];
    println!(
        "merchant received {} in {CUSTOMERS} payments",
        merchant.credits_posted
    );
    assert_eq!(merchant.credits_posted, CUSTOMERS * PRICE);
    for customer in ledger.lookup_accounts(&[FIRST_CUSTOMER, FIRST_CUSTOMER + CUSTOMERS - 1]) {
        assert_eq!(
            customer.credits_posted - customer.debits_posted,
            1_000 - PRICE
        );
    }
    ledger.shutdown()?;
    Ok(())
}

/// Submits `batch`, and while the queue is full submits the batch handed back, letting
/// other tasks run in between. Returns the results and how many `busy` answers came.
async fn submit_until_admitted(
    ledger: &Ledger,
    mut batch: Batch,
) -> Result<(Vec<EventResult>, u64), SubmitError> {
    let mut busy = 0;
    loop {
        match ledger.submit_async(batch).await {
            Ok(results) => return Ok((results, busy)),
            Err(SubmitError::Busy(back)) => {
                busy += 1;
                batch = back;
                tokio::task::yield_now().await;
            }
            Err(other) => return Err(other),
        }
    }
}

/// The bank, the merchant, and customers with 10.00 each.
async fn open_accounts(ledger: &Ledger) -> Result<(), SubmitError> {
    let account = |id, flags| Account {
        id,
        ledger: EUR,
        code: CODE,
        flags,
        ..Account::default()
    };
    let mut accounts = vec![
        account(BANK, AccountFlags::empty()),
        account(MERCHANT, AccountFlags::empty()),
    ];
    let customers = FIRST_CUSTOMER..FIRST_CUSTOMER + CUSTOMERS;
    accounts.extend(
        customers
            .clone()
            .map(|id| account(id, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)),
    );
    let (results, _) = submit_until_admitted(ledger, Batch::CreateAccounts(accounts)).await?;
    assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    let top_ups = customers.map(|id| transfer(id, BANK, id, 1_000)).collect();
    let (results, _) = submit_until_admitted(ledger, Batch::CreateTransfers(top_ups)).await?;
    assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    Ok(())
}

fn transfer(id: u128, from: u128, to: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        ledger: EUR,
        code: CODE,
        ..Transfer::default()
    }
}

#[cfg(test)]
mod tests {
    /// The example runs to the end, every assertion in it holding.
    #[test]
    fn the_async_service_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(super::run(dir.path()))
            .expect("the story runs");
    }
}
