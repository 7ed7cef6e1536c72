//! The record codec: encode and decode of a full batch of 8,190 transfers to and from the
//! fixed 128-byte little-endian layout the log and snapshots use (`docs/log-format.md`).
//! Throughput is transfers (events) per second; 8,190 records are 1,048,320 bytes.
//!
//! Full run: `cargo bench --bench codec`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tally::types::codec::{RECORD_SIZE, decode_transfer, encode_transfer};
use tally::types::{BATCH_EVENTS_MAX, Transfer, TransferFlags};

/// Varied but valid transfers: every field non-trivial, so no encoding shortcut applies.
fn transfers() -> Vec<Transfer> {
    (0..BATCH_EVENTS_MAX as u64)
        .map(|i| Transfer {
            id: u128::from(i) + 1,
            debit_account_id: u128::from(i % 1_000) + 1,
            credit_account_id: u128::from(i % 997) + 1_001,
            amount: u128::from(i * 31 + 7),
            pending_id: 0,
            user_data_128: u128::from(i) << 64 | 0xABCD,
            user_data_64: i * 3,
            user_data_32: i as u32,
            timeout: 0,
            ledger: 156,
            code: 1,
            flags: if i % 2 == 0 {
                TransferFlags::empty()
            } else {
                TransferFlags::LINKED
            },
            timestamp: 1_795_878_597_343_136_219 + i,
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let transfers = transfers();
    let mut encoded = vec![[0u8; RECORD_SIZE]; transfers.len()];
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(transfers.len() as u64));
    group.bench_function("encode_transfer_8190", |b| {
        b.iter(|| {
            for (transfer, out) in black_box(&transfers).iter().zip(encoded.iter_mut()) {
                encode_transfer(transfer, out);
            }
            black_box(&mut encoded);
        });
    });
    // Paired check: what was encoded decodes back to the same transfers.
    for (transfer, bytes) in transfers.iter().zip(&encoded) {
        assert_eq!(decode_transfer(bytes).as_ref(), Ok(transfer));
    }
    let mut decoded = Vec::with_capacity(transfers.len());
    group.bench_function("decode_transfer_8190", |b| {
        b.iter(|| {
            decoded.clear();
            for bytes in black_box(&encoded) {
                decoded.push(decode_transfer(bytes).expect("valid record"));
            }
            black_box(&mut decoded);
        });
    });
    group.finish();
    assert_eq!(decoded, transfers);
}

criterion_group!(benches, codec);
criterion_main!(benches);
