//! Indexes that start small or grow into tables prepared elsewhere (user-data indexes
//! at their first record, large id and user-data indexes before they fill) answer
//! exactly as indexes that took their room at once, whenever the table arrives: at
//! once, late (after the index grew by itself past it), or never.
#![allow(clippy::unwrap_used)]

use tally_state::{IndexTable, StateMachine};
use tally_testkit::{TEST_LEDGER, account, transfer};
use tally_types::{Account, AccountFlags, Batch, QueryFilter, Transfer};

const ACCOUNTS: u128 = 100;
const BATCH: u128 = 1_000;

fn accounts() -> Batch {
    Batch::CreateAccounts(
        (1..=ACCOUNTS)
            .map(|id| Account {
                user_data_64: (id % 5) as u64,
                ..account(id, TEST_LEDGER, AccountFlags::empty())
            })
            .collect(),
    )
}

/// Batch `n` of transfers, each with a user_data_128 of its own (the index's worst
/// case: one chain per record) and a few shared user_data_32 values.
fn transfers(n: u128) -> Batch {
    Batch::CreateTransfers(
        (0..BATCH)
            .map(|i| {
                let id = 1 + n * BATCH + i;
                let (debit, credit) = (1 + id % ACCOUNTS, 1 + (id + 1 + id % 7) % ACCOUNTS);
                Transfer {
                    user_data_128: id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                    user_data_32: (id % 3) as u32,
                    ..transfer(id, debit, credit, 1)
                }
            })
            .collect(),
    )
}

/// Applies `batches` batches to a state that takes its room at once and to one that
/// prepares it elsewhere, adopting each table asked for after `adopt_after` more
/// batches (`None`: never). Returns how many tables were adopted, and how many were
/// dropped as outgrown.
fn run(capacity: usize, batches: u128, adopt_after: Option<u128>) -> (usize, usize) {
    let mut reference = StateMachine::with_capacity(ACCOUNTS as usize, capacity);
    let mut prepared = StateMachine::with_capacity(ACCOUNTS as usize, capacity);
    prepared.prepare_tables_elsewhere(true);
    let mut stamp = 1_000;
    for state in [&mut reference, &mut prepared] {
        state.apply(stamp, &accounts());
    }
    let mut asked = Vec::new();
    let (mut adopted, mut dropped) = (0, 0);
    for n in 0..batches {
        stamp += 10_000;
        let batch = transfers(n);
        assert_eq!(
            reference.apply(stamp, &batch),
            prepared.apply(stamp, &batch)
        );
        assert!(
            reference.tables_wanted().is_empty(),
            "the reference asks for none"
        );
        asked.extend(prepared.tables_wanted().into_iter().map(|r| (n, r)));
        asked.retain(|&(at, request)| {
            let due = adopt_after.is_some_and(|after| n >= at + after);
            if due {
                let table = IndexTable::prefaulted(request.slots);
                if prepared.adopt_table(request, table) {
                    adopted += 1;
                } else {
                    dropped += 1;
                }
            }
            !due
        });
    }
    assert_eq!(prepared.image(), reference.image());
    // Loading the image indexes its transfers in table order, into tables prepared on
    // another thread when the room reserved is large: the same answers.
    let loaded = StateMachine::from_image(reference.image()).unwrap();
    assert_eq!(loaded.image(), reference.image());
    for state in [&prepared, &loaded] {
        answers_as(state, &reference, batches);
    }
    (adopted, dropped)
}

/// Checks that `state` answers queries by user data as `reference` does.
fn answers_as(state: &StateMachine, reference: &StateMachine, batches: u128) {
    for id in (1..=batches * BATCH).step_by(997) {
        let filter = QueryFilter {
            user_data_128: id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            ..QueryFilter::default()
        };
        let found = state.query_transfers(&filter);
        assert_eq!(found, reference.query_transfers(&filter));
        assert_eq!(found.len(), 1, "transfer {id}");
    }
    for value in 0..3 {
        let filter = QueryFilter {
            user_data_32: value,
            limit: 50,
            reversed: true,
            ..QueryFilter::default()
        };
        assert_eq!(
            state.query_transfers(&filter),
            reference.query_transfers(&filter)
        );
    }
    for id in (1..=batches * BATCH).step_by(1_009) {
        assert_eq!(state.lookup_transfer(id), reference.lookup_transfer(id));
    }
}

// Two tables are asked for: the transfers' user_data_128 (a value per record) and
// user_data_32 (two values); the accounts' room is below the first table's and taken
// at once.

#[test]
fn a_table_adopted_at_once_is_used() {
    assert_eq!(run(400_000, 150, Some(0)), (2, 0));
}

#[test]
fn a_table_that_arrives_after_the_index_outgrew_it_is_dropped() {
    // Room for 100,000: user_data_128's first table (65,536 records) grows by itself at
    // 98,304 to the size asked for, so its late table is not larger and is dropped.
    assert_eq!(run(100_000, 110, Some(105)), (1, 1));
}

#[test]
fn an_index_whose_table_never_comes_grows_by_itself() {
    assert_eq!(run(400_000, 150, None), (0, 0));
}

#[test]
fn large_indexes_grow_into_tables_prepared_elsewhere() {
    // Room for 700,000: the transfers' id index and user_data_128 index start at 2^20
    // slots and ask for 2^21 once 5/8 full (655,360 records), before they must grow
    // (786,432). With the two first-use tables, four are adopted.
    assert_eq!(run(700_000, 700, Some(0)), (4, 0));
}
