//! The submission queue's hop: crossbeam `ArrayQueue` between two threads, one pushing
//! and one popping, as between submitters and the commit thread.
//!
//! Each iteration moves [`EVENTS`] items (one `u64` event each) through a queue of
//! [`CAPACITY`] slots; a full queue makes the producer spin (backpressure), an empty one
//! makes the consumer spin. Throughput is events per second. The two threads are spawned
//! per iteration (scoped), which costs tens of microseconds against milliseconds of hops.
//!
//! On a 2-core machine both threads get a core only if nothing else runs; the figure is
//! noisy there.
//!
//! Full run: `cargo bench --bench queue`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use std::hint::black_box;

const EVENTS: u64 = 100_000;
const CAPACITY: usize = 1_024;

/// Spins a little, then yields: with two threads on two cores the other thread may be
/// descheduled, and spinning for its whole time slice would measure the scheduler.
fn wait(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        *spins = 0;
        std::thread::yield_now();
    }
}

/// Moves `EVENTS` values from this thread to a consumer; returns their sum (checked).
fn hop(queue: &ArrayQueue<u64>) -> u64 {
    std::thread::scope(|scope| {
        let consumer = scope.spawn(|| {
            let mut sum = 0u64;
            let mut received = 0;
            let mut spins = 0;
            while received < EVENTS {
                match queue.pop() {
                    Some(value) => {
                        sum += value;
                        received += 1;
                    }
                    None => wait(&mut spins),
                }
            }
            sum
        });
        for value in 0..EVENTS {
            let mut item = value;
            let mut spins = 0;
            while let Err(back) = queue.push(item) {
                item = back;
                wait(&mut spins);
            }
        }
        consumer.join().expect("consumer thread")
    })
}

fn queue(c: &mut Criterion) {
    let queue = ArrayQueue::new(CAPACITY);
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("array_queue_hop_2_threads", |b| {
        b.iter(|| {
            let sum = hop(black_box(&queue));
            assert_eq!(sum, EVENTS * (EVENTS - 1) / 2);
            sum
        });
    });
    group.finish();
    assert!(queue.is_empty());
}

criterion_group!(benches, queue);
criterion_main!(benches);
