//! A payment service that embeds the ledger (blocking API).
//!
//! It opens a ledger, creates a bank account (where top-ups come from), a merchant and
//! two customer wallets that may never go below zero, then tops up, pays, shows a
//! refused payment, authorises a payment and captures it later (two phases), refunds,
//! looks up what happened, and shuts down. Every step prints what the ledger answered.
//!
//! `cargo run -p tally-engine --example payment_service [-- DATA_DIR]` (a temporary
//! directory when none is given).

use std::error::Error;
use std::path::Path;
use tally_engine::prelude::*;

/// The ledger (currency) every account here is in: 978 is the euro's ISO 4217 number.
const EUR: u32 = 978;
/// Account and transfer codes are the service's own categories.
const CODE_WALLET: u16 = 1;
const CODE_PAYMENT: u16 = 10;

const BANK: u128 = 1;
const MERCHANT: u128 = 2;
const ALICE: u128 = 100;
const BOB: u128 = 101;

fn main() -> Result<(), Box<dyn Error>> {
    match std::env::args().nth(1) {
        Some(dir) => run(Path::new(&dir)),
        None => run(tempfile::tempdir()?.path()),
    }
}

/// The whole story, on a ledger in `dir`.
fn run(dir: &Path) -> Result<(), Box<dyn Error>> {
    // One ledger per data directory; the handle is cheap to clone and share.
    let ledger = Ledger::open(Config::new(dir))?;

    // Wallets may not spend more than was paid in; the bank and the merchant may.
    let wallet = |id| Account {
        id,
        ledger: EUR,
        code: CODE_WALLET,
        flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        ..Account::default()
    };
    let plain = |id| Account {
        id,
        ledger: EUR,
        code: CODE_WALLET,
        ..Account::default()
    };
    let results = ledger.create_accounts(vec![
        plain(BANK),
        plain(MERCHANT),
        wallet(ALICE),
        wallet(BOB),
    ])?;
    expect_ok("create the bank, the merchant and two wallets", &results);

    // Amounts are integers in minor units: 5000 is 50.00 EUR.
    let results = ledger.create_transfers(vec![
        payment(1, BANK, ALICE, 5_000),
        payment(2, BANK, BOB, 1_000),
    ])?;
    expect_ok("top up Alice with 50.00 and Bob with 10.00", &results);

    let results = ledger.create_transfers(vec![payment(3, ALICE, MERCHANT, 1_250)])?;
    expect_ok("Alice pays the merchant 12.50", &results);

    // A refusal is a result code, not an error: nothing of it is applied.
    let results = ledger.create_transfers(vec![payment(4, BOB, MERCHANT, 2_000)])?;
    println!(
        "Bob tries to pay 20.00 with 10.00: {}",
        results[0].code.name()
    );
    assert_eq!(results[0].code, ResultCode::ExceedsCredits);

    authorise_and_capture(&ledger)?;

    // A refund names the payment it gives back; accounts and ledger come from it.
    let refund = Transfer {
        id: 7,
        pending_id: 3,
        amount: 250,
        code: CODE_PAYMENT,
        flags: TransferFlags::REFUND,
        ..Transfer::default()
    };
    expect_ok(
        "the merchant refunds 2.50 of Alice's payment",
        &ledger.create_transfers(vec![refund])?,
    );

    show_balances(&ledger);
    let history = ledger.get_account_transfers(&AccountFilter::new(ALICE));
    println!("Alice's history: {} transfers", history.len());
    assert_eq!(
        history.len(),
        5,
        "top-up, payment, authorisation, capture, refund"
    );
    assert!(
        ledger.check_invariants().is_empty(),
        "every balance adds up"
    );

    // Shutdown answers every batch already admitted, then releases the directory.
    ledger.shutdown()?;
    println!("shut down cleanly");
    Ok(())
}

/// Two phases: reserve 30.00 of Alice's wallet (a card authorisation), then capture
/// 20.00 of it; the rest of the reservation is released.
fn authorise_and_capture(ledger: &Ledger) -> Result<(), SubmitError> {
    let hold = Transfer {
        flags: TransferFlags::PENDING,
        ..payment(5, ALICE, MERCHANT, 3_000)
    };
    expect_ok(
        "authorise 30.00 from Alice",
        &ledger.create_transfers(vec![hold])?,
    );
    let reserved = ledger.lookup_accounts(&[ALICE])[0].debits_pending;
    println!("  Alice has {reserved} reserved");
    let capture = Transfer {
        id: 6,
        pending_id: 5,
        amount: 2_000,
        code: CODE_PAYMENT,
        flags: TransferFlags::POST_PENDING_TRANSFER,
        ..Transfer::default()
    };
    expect_ok(
        "capture 20.00 of it",
        &ledger.create_transfers(vec![capture])?,
    );
    assert_eq!(ledger.lookup_accounts(&[ALICE])[0].debits_pending, 0);
    Ok(())
}

/// A single-phase payment of `amount` minor units.
fn payment(id: u128, from: u128, to: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        ledger: EUR,
        code: CODE_PAYMENT,
        ..Transfer::default()
    }
}

fn expect_ok(step: &str, results: &[EventResult]) {
    let codes: Vec<&str> = results.iter().map(|r| r.code.name()).collect();
    println!("{step}: {}", codes.join(", "));
    assert!(results.iter().all(|r| r.code == ResultCode::Ok), "{step}");
}

fn show_balances(ledger: &Ledger) {
    for account in ledger.lookup_accounts(&[ALICE, BOB, MERCHANT]) {
        let balance = account.credits_posted as i128 - account.debits_posted as i128;
        println!("  account {}: balance {balance}", account.id);
    }
    let alice = &ledger.lookup_accounts(&[ALICE])[0];
    // 50.00 in, 12.50 and 20.00 out, 2.50 back.
    assert_eq!(alice.credits_posted - alice.debits_posted, 2_000);
}

#[cfg(test)]
mod tests {
    /// The example runs to the end, every assertion in it holding.
    #[test]
    fn the_payment_service_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        super::run(dir.path()).expect("the story runs");
    }
}
