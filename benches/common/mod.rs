//! Fixtures shared by the benches: a ledger of plain accounts and valid transfers
//! between them.

use std::path::Path;
use tally::types::{Account, BATCH_EVENTS_MAX, Batch, Transfer};

pub const LEDGER: u32 = 156;
/// One full batch of accounts.
pub const ACCOUNTS: u64 = BATCH_EVENTS_MAX as u64;

/// Removes a bench directory; a missing one is fine.
pub fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => panic!("cannot remove {}: {error}", dir.display()),
    }
}

/// [`ACCOUNTS`] plain accounts on [`LEDGER`], ids from 1.
pub fn accounts() -> Batch {
    Batch::CreateAccounts(
        (1..=u128::from(ACCOUNTS))
            .map(|id| Account {
                id,
                ledger: LEDGER,
                code: 1,
                ..Account::default()
            })
            .collect(),
    )
}

/// `len` valid transfers between the accounts of [`accounts`], ids from `first_id`.
pub fn transfers(first_id: u128, len: usize) -> Batch {
    Batch::CreateTransfers(
        (0..len as u128)
            .map(|i| {
                let debit = 1 + (first_id + i) % u128::from(ACCOUNTS);
                Transfer {
                    id: first_id + i,
                    debit_account_id: debit,
                    credit_account_id: 1 + debit % u128::from(ACCOUNTS),
                    amount: 1 + i % 1_000,
                    ledger: LEDGER,
                    code: 1,
                    ..Transfer::default()
                }
            })
            .collect(),
    )
}
