//! Counters a service can read or scrape. Hot counters are relaxed atomics written by
//! the thread that applies a group; histograms are updated once per group under a
//! cold-path lock.

use crate::shards::ShardCounters;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tally_types::ResultCode;

#[derive(Debug)]
pub(crate) struct Metrics {
    pub batches_committed: AtomicU64,
    pub events_committed: AtomicU64,
    pub groups_committed: AtomicU64,
    /// Of those, groups the log thread applied itself (`crate::threads`).
    pub groups_applied_by_log_thread: AtomicU64,
    pub busy_rejections: AtomicU64,
    /// Pauses the log thread made to pace syncs (each after a commit that several
    /// submissions shared; `crate::pacing`), and the microseconds they
    /// lasted in all. Written by the log thread.
    pub commit_pauses: AtomicU64,
    pub commit_pause_us: AtomicU64,
    /// The pacing interval in force (µs), and the stops of the machine the log thread
    /// has seen (commits or pauses that overran by milliseconds; `crate::pacing`).
    pub commit_interval_us: AtomicU64,
    pub commit_stalls: AtomicU64,
    /// Steps the log thread took to write spare segments (zeros, for frames to be
    /// written in place; `Config::preallocate_segments`), their bytes and microseconds.
    pub spare_steps: AtomicU64,
    pub spare_step_bytes: AtomicU64,
    pub spare_step_us: AtomicU64,
    /// Snapshots written, and snapshots that failed (an I/O error, or a panic of the
    /// snapshot thread). A failure loses nothing (the log keeps every batch since the
    /// last snapshot) but lets replay at start-up grow. Written by the log thread.
    pub snapshots_written: AtomicU64,
    pub snapshots_failed: AtomicU64,
    /// The longest freeze of the state for a snapshot (the apply thread waits for it),
    /// and the longest snapshot write (on its own thread), written or failed.
    pub snapshot_freeze_us_max: AtomicU64,
    pub snapshot_write_ms_max: AtomicU64,
    pub result_counts: Vec<AtomicU64>,
    /// Microseconds from the first batch of a group taken to the group synced.
    pub commit_latency_us: Mutex<Histogram<u64>>,
    /// Events per group commit.
    pub group_events: Mutex<Histogram<u64>>,
    /// Written by the shard threads.
    pub shards: Arc<ShardCounters>,
}

impl Metrics {
    pub fn new(shards: Arc<ShardCounters>) -> Self {
        Metrics {
            shards,
            batches_committed: AtomicU64::new(0),
            events_committed: AtomicU64::new(0),
            groups_committed: AtomicU64::new(0),
            groups_applied_by_log_thread: AtomicU64::new(0),
            busy_rejections: AtomicU64::new(0),
            commit_pauses: AtomicU64::new(0),
            commit_pause_us: AtomicU64::new(0),
            commit_interval_us: AtomicU64::new(0),
            commit_stalls: AtomicU64::new(0),
            spare_steps: AtomicU64::new(0),
            spare_step_bytes: AtomicU64::new(0),
            spare_step_us: AtomicU64::new(0),
            snapshots_written: AtomicU64::new(0),
            snapshots_failed: AtomicU64::new(0),
            snapshot_freeze_us_max: AtomicU64::new(0),
            snapshot_write_ms_max: AtomicU64::new(0),
            result_counts: ResultCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            commit_latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds"),
            ),
            group_events: Mutex::new(
                Histogram::new_with_bounds(1, 10_000_000, 3).expect("static histogram bounds"),
            ),
        }
    }

    pub fn count_results(&self, results: impl Iterator<Item = ResultCode>) {
        for code in results {
            self.result_counts[code as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A point-in-time copy of the ledger's metrics.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    /// Batches waiting in the submission queue.
    pub queue_depth: usize,
    /// The most batches the queue holds ([`crate::Config::queue_batches_max`]).
    pub queue_capacity: usize,
    /// Batches logged, applied and answered since open.
    pub batches_committed: u64,
    /// Events in those batches.
    pub events_committed: u64,
    /// Group commits (one sync each) since open.
    pub groups_committed: u64,
    /// Of those, small groups the log thread applied itself, right after their sync,
    /// because the apply thread was idle; the others went to the apply thread.
    pub groups_applied_by_log_thread: u64,
    /// Submissions refused with [`crate::SubmitError::Busy`].
    pub busy_rejections: u64,
    /// Pauses the log thread made to pace syncs.
    pub commit_pauses: u64,
    /// Their total microseconds.
    pub commit_pause_us: u64,
    /// The group commit pacing interval in force (µs): zero unless the machine has been
    /// standing still ([`crate::Config::commit_interval_min`]).
    pub commit_interval_us: u64,
    /// Stops of the machine the log thread has seen since open: commits or pauses that
    /// overran by milliseconds; each doubles the pacing interval.
    pub commit_stalls: u64,
    /// Steps written of spare segments.
    pub spare_steps: u64,
    /// Their bytes.
    pub spare_step_bytes: u64,
    /// Their total microseconds.
    pub spare_step_us: u64,
    /// Snapshots written.
    pub snapshots_written: u64,
    /// Snapshots that failed (nothing is lost: the log keeps every batch).
    pub snapshots_failed: u64,
    /// The longest freeze for a snapshot on the apply thread (µs).
    pub snapshot_freeze_us_max: u64,
    /// The longest snapshot write (ms).
    pub snapshot_write_ms_max: u64,
    /// Count per result code (only codes seen at least once).
    pub result_counts: Vec<(ResultCode, u64)>,
    /// Median time from enqueue to answer of a group's oldest batch (µs).
    pub commit_latency_us_p50: u64,
    /// Its 99th percentile (µs).
    pub commit_latency_us_p99: u64,
    /// Its maximum (µs).
    pub commit_latency_us_max: u64,
    /// Mean events per group commit.
    pub group_events_mean: f64,
    /// Units (events, chains, expiries) the shard threads ran by plan.
    pub shard_units: u64,
    /// Of those, units that spanned two or more shards (a part was lent).
    pub shard_units_spanning: u64,
    /// Of those, units whose owning shard had to wait for a lent part.
    pub shard_units_waited: u64,
    /// Of those, units decided without a part they only add to, whose shard applied
    /// their deltas (escrow).
    pub shard_units_with_deltas: u64,
    /// Groups applied on the apply thread alone although shards exist: one the planner
    /// refuses (see `tally_state::Serial`), one whose plan was estimated slower than
    /// the group serially, or one of the groups after it, not planned
    /// (`Config::shard_execution`).
    pub groups_serial: u64,
}

impl MetricsSnapshot {
    /// Prometheus text exposition of these figures.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let figures: [(&str, u64); 22] = [
            ("queue_depth", self.queue_depth as u64),
            ("batches_committed_total", self.batches_committed),
            ("events_committed_total", self.events_committed),
            ("groups_committed_total", self.groups_committed),
            (
                "groups_applied_by_log_thread_total",
                self.groups_applied_by_log_thread,
            ),
            ("busy_rejections_total", self.busy_rejections),
            ("commit_pauses_total", self.commit_pauses),
            ("commit_pause_us_total", self.commit_pause_us),
            ("commit_interval_us", self.commit_interval_us),
            ("commit_stalls_total", self.commit_stalls),
            ("spare_steps_total", self.spare_steps),
            ("spare_step_bytes_total", self.spare_step_bytes),
            ("spare_step_us_total", self.spare_step_us),
            ("snapshots_written_total", self.snapshots_written),
            ("snapshots_failed_total", self.snapshots_failed),
            ("snapshot_freeze_us_max", self.snapshot_freeze_us_max),
            ("snapshot_write_ms_max", self.snapshot_write_ms_max),
            ("commit_latency_us_p99", self.commit_latency_us_p99),
            ("shard_units_total", self.shard_units),
            ("shard_units_spanning_total", self.shard_units_spanning),
            ("shard_units_waited_total", self.shard_units_waited),
            (
                "shard_units_with_deltas_total",
                self.shard_units_with_deltas,
            ),
        ];
        for (name, value) in figures {
            // Prometheus's naming: a `_total` only grows, the rest go up and down.
            let kind = match name.ends_with("_total") {
                true => "counter",
                false => "gauge",
            };
            out.push_str(&format!(
                "# TYPE tally_{name} {kind}\ntally_{name} {value}\n"
            ));
        }
        if !self.result_counts.is_empty() {
            out.push_str("# TYPE tally_results_total counter\n");
        }
        for (code, count) in &self.result_counts {
            out.push_str(&format!(
                "tally_results_total{{result=\"{}\"}} {count}\n",
                code.name()
            ));
        }
        out
    }
}

impl Metrics {
    pub fn snapshot(&self, queue_depth: usize, queue_capacity: usize) -> MetricsSnapshot {
        let latency = self.commit_latency_us.lock();
        let groups = self.group_events.lock();
        MetricsSnapshot {
            queue_depth,
            queue_capacity,
            batches_committed: self.batches_committed.load(Ordering::Relaxed),
            events_committed: self.events_committed.load(Ordering::Relaxed),
            groups_committed: self.groups_committed.load(Ordering::Relaxed),
            groups_applied_by_log_thread: self.groups_applied_by_log_thread.load(Ordering::Relaxed),
            busy_rejections: self.busy_rejections.load(Ordering::Relaxed),
            commit_pauses: self.commit_pauses.load(Ordering::Relaxed),
            commit_pause_us: self.commit_pause_us.load(Ordering::Relaxed),
            commit_interval_us: self.commit_interval_us.load(Ordering::Relaxed),
            commit_stalls: self.commit_stalls.load(Ordering::Relaxed),
            spare_steps: self.spare_steps.load(Ordering::Relaxed),
            spare_step_bytes: self.spare_step_bytes.load(Ordering::Relaxed),
            spare_step_us: self.spare_step_us.load(Ordering::Relaxed),
            snapshots_written: self.snapshots_written.load(Ordering::Relaxed),
            snapshots_failed: self.snapshots_failed.load(Ordering::Relaxed),
            snapshot_freeze_us_max: self.snapshot_freeze_us_max.load(Ordering::Relaxed),
            snapshot_write_ms_max: self.snapshot_write_ms_max.load(Ordering::Relaxed),
            result_counts: ResultCode::ALL
                .iter()
                .map(|code| {
                    (
                        *code,
                        self.result_counts[*code as usize].load(Ordering::Relaxed),
                    )
                })
                .filter(|(_, count)| *count > 0)
                .collect(),
            commit_latency_us_p50: latency.value_at_quantile(0.5),
            commit_latency_us_p99: latency.value_at_quantile(0.99),
            commit_latency_us_max: latency.max(),
            group_events_mean: groups.mean(),
            shard_units: self.shards.units.load(Ordering::Relaxed),
            shard_units_spanning: self.shards.units_spanning.load(Ordering::Relaxed),
            shard_units_waited: self.shards.units_waited.load(Ordering::Relaxed),
            shard_units_with_deltas: self.shards.units_with_deltas.load(Ordering::Relaxed),
            groups_serial: self.shards.groups_serial.load(Ordering::Relaxed),
        }
    }
}
