//! Lookups by order id while the load runs (`--order-lookups RATE`): what support and
//! reconciliation do on a busy day, timed against the ledger as it commits.
//!
//! One thread, at a steady rate: it picks a transfer committed since the run began (a
//! time-range query for the first transfer at or after a random instant, one record),
//! then asks `query_transfers` for its `user_data_128`, the timed query, and checks the
//! answer holds that transfer. The festival's payments and authorisations (and the
//! posts that take an authorisation's) carry an order id, the transfers workload's
//! transfers all do; a transfer without one (a refund, a fund subscription) is skipped
//! and counted.

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tally_engine::{Ledger, QueryFilter};

/// Slowest query recorded, in microseconds (slower ones are clamped to it).
const LATENCY_US_MAX: u64 = 60_000_000;

/// What the prober measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OrderLookupStats {
    /// Queries by order id made.
    pub queries: u64,
    /// Those whose answer held the transfer picked.
    pub found: u64,
    /// Transfers picked that carry no order id (not queried).
    pub without_order_id: u64,
    /// Latency of the query by order id, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Transfers stored when the run ended, what each query searched.
    pub transfers: u64,
    /// How late the prober's thread woke from each sleep, microseconds, 99th
    /// percentile: what the host's scheduler adds to any thread, queries included.
    pub wake_late_p99_us: u64,
    /// The latest it woke.
    pub wake_late_max_us: u64,
}

impl OrderLookupStats {
    /// True when every query found its transfer.
    pub fn ok(&self) -> bool {
        self.found == self.queries
    }
}

/// The running prober: [`OrderLookups::finish`] stops it and gives its figures.
#[derive(Debug)]
pub struct OrderLookups {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Probed>,
    ledger: Ledger,
}

impl OrderLookups {
    /// Starts `rate` lookups a second against `ledger`, over transfers committed after
    /// `after` (the setup's last timestamp).
    pub fn start(ledger: Ledger, rate: u32, after: u64) -> Result<OrderLookups, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let prober = Prober {
            ledger: ledger.clone(),
            interval: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
            after,
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("loadgen-lookups".into())
            .spawn(move || prober.run())
            .map_err(|error| format!("starting the order-lookup thread: {error}"))?;
        Ok(OrderLookups {
            stop,
            thread,
            ledger,
        })
    }

    /// Stops the prober and reports.
    pub fn finish(self) -> Result<OrderLookupStats, String> {
        self.stop.store(true, Ordering::Relaxed);
        let Probed {
            latency,
            late,
            found,
            without,
        } = self
            .thread
            .join()
            .map_err(|_| "the order-lookup thread panicked".to_string())?;
        let transfers = self
            .ledger
            .with_state(|state| state.transfer_count() as u64);
        Ok(OrderLookupStats {
            queries: latency.len(),
            found,
            without_order_id: without,
            p50_us: latency.value_at_quantile(0.50),
            p99_us: latency.value_at_quantile(0.99),
            max_us: latency.max(),
            transfers,
            wake_late_p99_us: late.value_at_quantile(0.99),
            wake_late_max_us: late.max(),
        })
    }
}

/// What the prober's thread measured: query latency, its own lateness waking, queries
/// that found their transfer, transfers picked without an order id.
struct Probed {
    latency: Histogram<u64>,
    late: Histogram<u64>,
    found: u64,
    without: u64,
}

struct Prober {
    ledger: Ledger,
    interval: Duration,
    after: u64,
    stop: Arc<AtomicBool>,
}

impl Prober {
    fn run(self) -> Probed {
        let histogram = || match Histogram::new_with_bounds(1, LATENCY_US_MAX, 3) {
            Ok(histogram) => histogram,
            Err(error) => unreachable!("fixed histogram bounds are valid: {error}"),
        };
        let (mut latency, mut late) = (histogram(), histogram());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.after);
        let (mut found, mut without) = (0, 0);
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            next += self.interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
                let late_us = u64::try_from(next.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = late.record(late_us.clamp(1, LATENCY_US_MAX));
            }
            let Some(picked) = self.pick(&mut rng) else {
                continue;
            };
            if picked.user_data_128 == 0 {
                without += 1;
                continue;
            }
            let by_order = QueryFilter {
                user_data_128: picked.user_data_128,
                ..QueryFilter::default()
            };
            let started = Instant::now();
            let answer = self.ledger.query_transfers(&by_order);
            let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = latency.record(took_us.clamp(1, LATENCY_US_MAX));
            if answer.iter().any(|transfer| transfer.id == picked.id) {
                found += 1;
            }
        }
        Probed {
            latency,
            late,
            found,
            without,
        }
    }

    /// The first transfer at or after a random instant since the run began.
    fn pick(&self, rng: &mut Xoshiro256PlusPlus) -> Option<tally_engine::Transfer> {
        let last = self.ledger.with_state(|state| state.last_timestamp());
        if last <= self.after {
            return None;
        }
        let from = rng.random_range(self.after + 1..=last);
        let first = QueryFilter {
            timestamp_min: from,
            limit: 1,
            ..QueryFilter::default()
        };
        self.ledger.query_transfers(&first).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_engine::{Account, Config, Transfer};

    #[test]
    fn lookups_by_order_id_find_what_commits_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(Config::new(dir.path())).expect("open");
        let account = |id| Account {
            id,
            ledger: 700,
            code: 1,
            ..Account::default()
        };
        ledger
            .create_accounts(vec![account(1), account(2)])
            .expect("accounts");
        let after = ledger.with_state(|state| state.last_timestamp());
        let lookups = OrderLookups::start(ledger.clone(), 2_000, after).expect("start");
        for n in 0..300u128 {
            let transfers = (0..20)
                .map(|k| Transfer {
                    id: 1 + n * 20 + k,
                    debit_account_id: 1,
                    credit_account_id: 2,
                    amount: 1,
                    ledger: 700,
                    code: 1,
                    // An order id per transfer, some shared by two.
                    user_data_128: (n * 20 + k) / 2 + (1 << 90),
                    ..Transfer::default()
                })
                .collect();
            ledger.create_transfers(transfers).expect("durable");
            std::thread::sleep(Duration::from_millis(1));
        }
        let stats = lookups.finish().expect("finish");
        assert!(stats.queries > 20, "{stats:?}");
        assert!(stats.ok(), "{stats:?}");
        assert_eq!(stats.transfers, 6_000);
        ledger.shutdown().expect("shutdown");
    }
}
