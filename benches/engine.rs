//! The engine end to end: `Ledger::submit` of one batch from one thread, returning once
//! the batch is durable (`fdatasync`, the default `Config`). Two sizes: 1 transfer (the
//! latency of one queue hop, one write, one sync, one apply and one answer) and 8,190
//! transfers (a full batch), on one shard; and the full batch on 2 shards (the sharded
//! executor's plan and hand-offs). Throughput is transfers (events) per second.
//!
//! One submitter means no group commit beyond the single batch: this is the per-batch
//! floor, not the engine's throughput under many submitters (that is the load
//! generator's job). The data directory is under Cargo's `CARGO_TARGET_TMPDIR`
//! (`target/tmp`, on the disk, not a tmpfs). Past [`TRANSFERS_RESET`] transfers the
//! ledger is shut down and reopened on a fresh directory, outside the clock, so memory
//! and disk stay bounded.
//!
//! Full run: `cargo bench --bench engine`.

mod common;

use common::{accounts, remove_dir, transfers};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tally::Config;
use tally::engine::Ledger;
use tally::types::{BATCH_EVENTS_MAX, ResultCode};

const TRANSFERS_RESET: u64 = 1_000_000;

/// A fresh durable ledger on `shards` shards in `dir` holding [`common::ACCOUNTS`]
/// plain accounts.
fn open_fresh(dir: &Path, shards: usize) -> Ledger {
    remove_dir(dir);
    let mut config = Config::new(dir);
    config.shards = shards;
    assert_eq!(config.sync, tally::engine::SyncMode::Fdatasync);
    let ledger = Ledger::open(config).expect("open the bench ledger");
    let results = ledger.submit(accounts()).expect("accounts durable");
    assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    ledger
}

fn bench_submit(c: &mut Criterion, events: usize, shards: usize) {
    let name = match shards {
        1 => format!("submit_durable/{events}"),
        _ => format!("submit_durable_{shards}_shards/{events}"),
    };
    let dir: PathBuf =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-engine-{events}-{shards}"));
    let mut ledger = open_fresh(&dir, shards);
    let mut next_id: u128 = 1;
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events as u64));
    if events > 1 {
        group.sample_size(20);
    }
    group.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                if next_id > u128::from(TRANSFERS_RESET) {
                    ledger.shutdown().expect("clean shutdown");
                    ledger = open_fresh(&dir, shards);
                    next_id = 1;
                }
                let batch = transfers(next_id, events);
                next_id += events as u128;
                let start = Instant::now();
                let results = ledger.submit(black_box(batch)).expect("durable submit");
                elapsed += start.elapsed();
                assert!(results.iter().all(|r| r.code == ResultCode::Ok));
            }
            elapsed
        });
    });
    group.finish();
    ledger.shutdown().expect("clean shutdown");
    remove_dir(&dir);
}

fn engine(c: &mut Criterion) {
    bench_submit(c, 1, 1);
    bench_submit(c, BATCH_EVENTS_MAX, 1);
    bench_submit(c, BATCH_EVENTS_MAX, 2);
}

criterion_group!(benches, engine);
criterion_main!(benches);
