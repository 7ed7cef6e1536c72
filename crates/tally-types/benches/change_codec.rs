//! The change-event codec: nanoseconds per event to encode (the journal thread's work)
//! and to decode (every reader's), for payments between accounts whose ids carry a tag
//! in their high half, as the load generator's do.
//!
//! Run: `cargo bench -p tally-types --bench change_codec -- [events]`
//! (`-- --test`: a smoke run of 10,000 events)
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;
use tally_types::{
    Account, AccountFlags, ChangeEvent, ChangeKind, Transfer, decode_change, encode_change,
};

const TAG: u128 = 0x7a11_0000_0000_0001 << 64;
const ROUNDS: usize = 5;

fn account(id: u128, timestamp: u64, balance: u128) -> Account {
    Account {
        id,
        debits_posted: balance,
        credits_posted: balance * 3,
        ledger: 156,
        code: 1,
        flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        timestamp,
        ..Account::default()
    }
}

fn payment(n: u64) -> ChangeEvent {
    let timestamp = 1_796_000_000_000_000_000 + n * 1_000;
    let mix = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let (debit, credit) = (
        TAG | u128::from(mix % 1_000_000),
        TAG | u128::from(mix >> 44),
    );
    ChangeEvent {
        timestamp,
        kind: ChangeKind::SinglePhase,
        transfer: Transfer {
            id: TAG | u128::from(n) << 8,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: u128::from(mix % 500_000),
            user_data_64: mix,
            ledger: 156,
            code: 1,
            timestamp,
            ..Transfer::default()
        },
        debit_account: account(debit, 1_795_000_000_000_000_000 + n, u128::from(mix)),
        credit_account: account(credit, 1_795_000_000_000_000_007, u128::from(n) << 20),
    }
}

fn main() {
    let smoke = std::env::args().any(|arg| arg == "--test");
    let count = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse::<u64>().ok())
        .unwrap_or(if smoke { 10_000 } else { 1_000_000 });
    let events: Vec<ChangeEvent> = (0..count).map(payment).collect();
    let mut bytes = Vec::with_capacity(events.len() * 120);
    let (mut encode_ns, mut decode_ns) = (u128::MAX, u128::MAX);
    for _ in 0..ROUNDS {
        bytes.clear();
        let started = Instant::now();
        let mut previous = 0;
        for event in &events {
            encode_change(black_box(event), previous, &mut bytes);
            previous = event.timestamp;
        }
        encode_ns = encode_ns.min(started.elapsed().as_nanos());

        let started = Instant::now();
        let (mut at, mut previous, mut checksum) = (0, 0, 0u128);
        while at < bytes.len() {
            let (event, used) = decode_change(black_box(&bytes[at..]), previous).unwrap();
            checksum ^= event.debit_account.credits_posted;
            previous = event.timestamp;
            at += used;
        }
        black_box(checksum);
        decode_ns = decode_ns.min(started.elapsed().as_nanos());
    }
    let per_event = |ns: u128| ns as f64 / count as f64;
    println!(
        "change_codec: {count} payments, {:.1} bytes each; encode {:.1} ns, decode {:.1} ns an event (best of {ROUNDS})",
        bytes.len() as f64 / count as f64,
        per_event(encode_ns),
        per_event(decode_ns)
    );
}
