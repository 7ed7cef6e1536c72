//! The final report: text on stdout, JSON (`--report`), SVG chart (`--chart`).

use crate::model::Verification;
use crate::runner::{RunResult, SetupReport};
use crate::stats::{RESULT_BUSY, RESULT_SUBMIT_FAILED, Stats};
use crate::target::{ClusterStats, ShardStats};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;
use tally_types::ResultCode;

/// One half of the chart.
type ChartArea<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A line of the chart: name, colour, value per second.
type Line = (&'static str, RGBColor, fn(&Second) -> u64);

#[derive(Debug, Clone, Default, Serialize)]
/// Latency percentiles of a histogram, in the histogram's unit (microseconds).
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest value recorded.
    pub max: u64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            p9999: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
/// The machine the run ran on.
pub struct Machine {
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Total memory (`MemTotal`).
    pub memory_total_bytes: u64,
    /// The CPU's model name.
    pub cpu_model: String,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    /// From /proc where available; zeros elsewhere.
    pub fn probe() -> Machine {
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_total_bytes = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map_or(String::new(), |model| model.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or(String::new(), |k| k.trim().to_string());
        Machine {
            cores,
            memory_total_bytes,
            cpu_model,
            kernel,
        }
    }
}

/// One second of the run, for the chart and the JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Index of the second, from the start of the run.
    pub second: usize,
    /// Transfers offered (scheduled) in this second.
    pub offered_tps: u64,
    /// Transfers acknowledged in this second.
    pub achieved_tps: u64,
    /// Median latency of the requests scheduled in this second.
    pub p50_us: u64,
    /// 99th percentile latency of the requests scheduled in this second.
    pub p99_us: u64,
    /// 99.99th percentile latency of the requests scheduled in this second.
    pub p9999_us: u64,
    /// Largest latency of the requests scheduled in this second.
    pub max_us: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
/// Everything a run reports: what ran, what it measured and what the verification found.
pub struct Report {
    /// `festival` or `max`.
    pub mode: String,
    /// How the load was submitted (open loop per payment, or closed loop batches).
    pub submission: String,
    /// What the transfers are: the festival's mix, or the transfers workload and how it
    /// picks accounts.
    pub workload: String,
    /// What was driven, with its durability settings.
    pub target: String,
    /// Engine shards in use (0 for the in-memory target).
    pub shards: usize,
    /// The engine's own counters; `None` for the in-memory target.
    pub engine: Option<ShardStats>,
    /// What the cluster went through; `None` for other targets.
    pub cluster: Option<ClusterStats>,
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// Transfers submitted per second, over the run.
    pub offered_tps: f64,
    /// Transfers acknowledged per second, over the run.
    pub achieved_tps: f64,
    /// Most transfers offered in one second.
    pub peak_offered_tps: u64,
    /// Most transfers acknowledged in one second.
    pub peak_achieved_tps: u64,
    /// Submissions (payments in festival mode, batches in max mode).
    pub requests_submitted: u64,
    /// Transfers in those submissions.
    pub transfers_submitted: u64,
    /// Transfers that got a durable result.
    pub transfers_acknowledged: u64,
    /// Transfers whose result was `ok`.
    pub transfers_ok: u64,
    /// Transfers whose result was anything but `ok`: an error code, `busy` or
    /// `submit_failed`.
    pub transfers_failed: u64,
    /// Transfers whose result was `ok`, per second, over the run.
    pub successful_tps: f64,
    /// Transfers whose result was anything but `ok`, per second, over the run.
    pub failed_tps: f64,
    /// Requests still without a result when the run ended.
    pub unfinished_requests: u64,
    /// Worst lateness of the scheduler against a request's scheduled instant.
    pub scheduler_late_us_max: u64,
    /// Microseconds, from the scheduled instant (festival) or from submit (max).
    pub latency_us: Latency,
    /// Count per result name (result codes, `busy`, `submit_failed`).
    pub results: BTreeMap<String, u64>,
    /// What setup did before the run.
    pub setup: SetupReport,
    /// Every ledger conserves money.
    pub conservation_ok: bool,
    /// The ledger matches the model and every request got a result.
    pub verified_ok: bool,
    /// The verification's details.
    pub verification: Verification,
    /// The change-event stream followed live and checked (`None`: the target keeps none).
    pub events: Option<crate::events_check::EventsCheck>,
    /// Lookups by order id during the run (`None`: none asked for).
    pub order_lookups: Option<crate::order_lookups::OrderLookupStats>,
    /// The end of the festival's day: closures, settlement sweeps, histories (`None`:
    /// the transfers workload has none).
    pub end_of_day: Option<crate::end_of_day::EndOfDay>,
    /// How expiring authorisations were judged.
    pub expiry_policy: String,
    /// The machine the run ran on.
    pub machine: Machine,
    /// Per second of the run.
    pub seconds: Vec<Second>,
    /// The command line.
    pub command: String,
}

impl Report {
    /// Fills the measured part from the run.
    pub fn measure(&mut self, run: &RunResult) {
        let stats = &run.stats;
        let (overall, per_second) = stats.merged();
        self.duration_s = run.elapsed_s;
        self.requests_submitted = Stats::load(&stats.submitted_requests);
        self.transfers_submitted = Stats::load(&stats.submitted_transfers);
        self.transfers_acknowledged = Stats::load(&stats.acknowledged_transfers);
        self.transfers_ok = Stats::load(&stats.results[ResultCode::Ok as usize]);
        self.transfers_failed = Stats::load(&stats.errors);
        self.unfinished_requests = run.unfinished;
        self.scheduler_late_us_max = run.scheduler_late_us_max;
        let elapsed = run.elapsed_s.max(1e-9);
        self.offered_tps = self.transfers_submitted as f64 / elapsed;
        self.achieved_tps = self.transfers_acknowledged as f64 / elapsed;
        self.successful_tps = self.transfers_ok as f64 / elapsed;
        self.failed_tps = self.transfers_failed as f64 / elapsed;
        self.latency_us = Latency::of(&overall);
        for (slot, counter) in stats.results.iter().enumerate() {
            let count = Stats::load(counter);
            if count == 0 {
                continue;
            }
            let name = match slot {
                RESULT_BUSY => "busy".to_string(),
                RESULT_SUBMIT_FAILED => "submit_failed".to_string(),
                _ => ResultCode::ALL
                    .get(slot)
                    .map_or("unknown".into(), |c| c.name().to_string()),
            };
            self.results.insert(name, count);
        }
        let last = stats
            .offered_per_second
            .iter()
            .zip(&stats.acknowledged_per_second)
            .rposition(|(o, a)| Stats::load(o) + Stats::load(a) > 0)
            .map_or(0, |p| p + 1);
        self.seconds = (0..last)
            .map(|second| {
                let latency = per_second.get(second).map(Latency::of).unwrap_or_default();
                Second {
                    second,
                    offered_tps: Stats::load(&stats.offered_per_second[second]),
                    achieved_tps: Stats::load(&stats.acknowledged_per_second[second]),
                    p50_us: latency.p50,
                    p99_us: latency.p99,
                    p9999_us: latency.p9999,
                    max_us: latency.max,
                }
            })
            .collect();
        self.peak_offered_tps = self
            .seconds
            .iter()
            .map(|s| s.offered_tps)
            .max()
            .unwrap_or(0);
        self.peak_achieved_tps = self
            .seconds
            .iter()
            .map(|s| s.achieved_tps)
            .max()
            .unwrap_or(0);
    }

    /// The report as the text printed on stdout.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a `String` cannot fail.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> fmt::Result {
        self.write_run(out)?;
        self.write_throughput(out)?;
        if let Some(engine) = &self.engine {
            write_engine(out, engine)?;
        }
        if let Some(cluster) = &self.cluster {
            write_cluster(out, cluster)?;
        }
        if self.unfinished_requests > 0 {
            writeln!(
                out,
                "  UNFINISHED        {} requests had no result at the end",
                self.unfinished_requests
            )?;
        }
        writeln!(
            out,
            "  scheduler lag     max {}",
            ms(self.scheduler_late_us_max)
        )?;
        self.write_results(out)?;
        self.write_verification(out)
    }

    /// What ran where: mode, target, submission, machine, setup, duration.
    fn write_run(&self, out: &mut String) -> fmt::Result {
        writeln!(
            out,
            "tally loadgen: {} mode against {} ({} shards)",
            self.mode, self.target, self.shards
        )?;
        writeln!(out, "  submission        {}", self.submission)?;
        writeln!(out, "  workload          {}", self.workload)?;
        writeln!(
            out,
            "  machine           {} cores, {:.1} GiB, {} (kernel {})",
            self.machine.cores,
            self.machine.memory_total_bytes as f64 / (1u64 << 30) as f64,
            self.machine.cpu_model,
            self.machine.kernel
        )?;
        writeln!(
            out,
            "  setup             {} accounts, {} funding transfers in {:.2} s",
            self.setup.accounts, self.setup.funding_transfers, self.setup.seconds
        )?;
        writeln!(out, "  duration          {:.2} s", self.duration_s)
    }

    /// Offered and achieved rates, and the latency percentiles.
    fn write_throughput(&self, out: &mut String) -> fmt::Result {
        writeln!(
            out,
            "  offered           {:.0} transfers/s mean, {} peak second ({} requests, {} transfers)",
            self.offered_tps,
            self.peak_offered_tps,
            self.requests_submitted,
            self.transfers_submitted
        )?;
        writeln!(
            out,
            "  achieved          {:.0} transfers/s mean, {} peak second ({} acknowledged, {} ok)",
            self.achieved_tps,
            self.peak_achieved_tps,
            self.transfers_acknowledged,
            self.transfers_ok
        )?;
        writeln!(
            out,
            "  outcome           successful {:.0} transfers/s, failed {:.0} transfers/s",
            self.successful_tps, self.failed_tps
        )?;
        let l = &self.latency_us;
        writeln!(
            out,
            "  latency           p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.p9999),
            ms(l.max)
        )
    }

    /// Result counts, the most frequent first.
    fn write_results(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "  results:")?;
        let mut results: Vec<_> = self.results.iter().collect();
        results.sort_by(|a, b| b.1.cmp(a.1));
        for (name, count) in results {
            writeln!(out, "    {name:<40} {count}")?;
        }
        Ok(())
    }

    /// Conservation, the balance and presence checks, expiry, and any anomalies.
    fn write_verification(&self, out: &mut String) -> fmt::Result {
        let v = &self.verification;
        let ledgers: Vec<String> = v
            .conservation
            .iter()
            .map(|(ledger, ok)| format!("{ledger}:{}", if *ok { "ok" } else { "BROKEN" }))
            .collect();
        writeln!(
            out,
            "  conservation      {} ({})",
            if self.conservation_ok { "ok" } else { "FAILED" },
            ledgers.join(" ")
        )?;
        writeln!(
            out,
            "  verification      {}: {} accounts ({} missing, {} differ), {} transfers ({} missing, {} differ)",
            if self.verified_ok { "ok" } else { "FAILED" },
            v.accounts_checked,
            v.accounts_missing,
            v.accounts_mismatched,
            v.transfers_checked,
            v.transfers_missing,
            v.transfers_mismatched
        )?;
        writeln!(
            out,
            "  expiry            {} expired, {} still pending; {}",
            v.expired, v.pending_left, self.expiry_policy
        )?;
        if let Some(day) = &self.end_of_day {
            let histories = match day.histories_checked {
                Some(count) => format!("{count} balance histories checked"),
                None => "balance histories not readable through this target".into(),
            };
            writeln!(
                out,
                "  end of day        {}: {} merchants closed, refused and reopened; {} settled by balancing_debit ({} below the cap, CNY {}.{:02} moved); {}",
                if day.mispredicted == 0 {
                    "ok"
                } else {
                    "FAILED"
                },
                day.merchants_closed,
                day.merchants_settled,
                day.settlements_clamped,
                day.settled_fen / 100,
                day.settled_fen % 100,
                histories
            )?;
        }
        if let Some(lookups) = &self.order_lookups {
            writeln!(
                out,
                "  order lookups     {}: {} queries by user_data_128 over up to {} transfers, {} found; latency p50 {} us p99 {} us max {} us ({} picked without an order id; the prober's own wake-up lateness p99 {} us max {} us)",
                if lookups.ok() { "ok" } else { "FAILED" },
                lookups.queries,
                lookups.transfers,
                lookups.found,
                lookups.p50_us,
                lookups.p99_us,
                lookups.max_us,
                lookups.without_order_id,
                lookups.wake_late_p99_us,
                lookups.wake_late_max_us
            )?;
        }
        if let Some(events) = &self.events {
            let kinds: Vec<String> = events
                .by_kind
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            let followed = match events.lag_ms {
                Some([p50, p99, max]) => format!(
                    "{} followed live (lag p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms); all",
                    events.followed_live
                ),
                None => "all".to_string(),
            };
            writeln!(
                out,
                "  change events     {}: {} events, {followed} read back in {:.1} s; in order, one per change ({}); balances of {} accounts ({} differ)",
                if events.ok { "ok" } else { "FAILED" },
                events.events,
                events.seconds,
                kinds.join(", "),
                events.accounts_checked,
                events.accounts_mismatched
            )?;
            if let Some(problem) = &events.problem {
                writeln!(out, "    ! change events: {problem}")?;
            }
        }
        for anomaly in &v.anomalies {
            writeln!(out, "    ! {anomaly}")?;
        }
        Ok(())
    }

    /// Writes the report as pretty-printed JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let json = serde_json::to_string_pretty(self).map_err(|e| format!("report JSON: {e}"))?;
        std::fs::write(path, json + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Writes an SVG chart to `path`: offered vs achieved rate (top) and latency
    /// percentiles (bottom), per second.
    pub fn write_chart(&self, path: &Path) -> Result<(), String> {
        let fail = |e: String| format!("chart {}: {e}", path.display());
        let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let (upper, lower) = root.split_vertically(400);
        self.draw_rates(&upper).map_err(fail)?;
        self.draw_latency(&lower).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// The chart's x range: one unit per second of the run.
    fn chart_seconds(&self) -> f64 {
        self.seconds.len().max(1) as f64
    }

    /// Offered and achieved transfers/s per second.
    fn draw_rates(&self, area: &ChartArea<'_>) -> Result<(), String> {
        let rate_max = self
            .seconds
            .iter()
            .map(|s| s.offered_tps.max(s.achieved_tps))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let mut rates = ChartBuilder::on(area)
            .caption(
                format!("Tally {} mode: transfers/s", self.mode),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..self.chart_seconds(), 0f64..rate_max)
            .map_err(|e| e.to_string())?;
        rates
            .configure_mesh()
            .x_desc("second")
            .y_desc("transfers/s")
            .draw()
            .map_err(|e| e.to_string())?;
        let lines: [Line; 2] = [
            ("offered", BLUE, |s| s.offered_tps),
            ("achieved", RED, |s| s.achieved_tps),
        ];
        for (name, color, value) in lines {
            let points = self
                .seconds
                .iter()
                .map(|s| (s.second as f64 + 0.5, value(s) as f64));
            rates
                .draw_series(LineSeries::new(points, &color))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        rates
            .configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    }

    /// p50, p99, p99.99 and max latency per scheduled second, on a log scale.
    fn draw_latency(&self, area: &ChartArea<'_>) -> Result<(), String> {
        let latency_max = self
            .seconds
            .iter()
            .map(|s| s.max_us)
            .max()
            .unwrap_or(1)
            .max(10) as f64;
        let mut latency = ChartBuilder::on(area)
            .caption(
                "latency per scheduled second (ms, log scale)",
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(
                0f64..self.chart_seconds(),
                (0.001f64..latency_max / 1e3 * 2.0).log_scale(),
            )
            .map_err(|e| e.to_string())?;
        latency
            .configure_mesh()
            .x_desc("second")
            .y_desc("ms")
            .draw()
            .map_err(|e| e.to_string())?;
        let lines: [Line; 4] = [
            ("p50", GREEN, |s| s.p50_us),
            ("p99", BLUE, |s| s.p99_us),
            ("p99.99", MAGENTA, |s| s.p9999_us),
            ("max", RED, |s| s.max_us),
        ];
        for (name, color, value) in lines {
            let points = self
                .seconds
                .iter()
                .filter(|s| value(s) > 0)
                .map(|s| (s.second as f64 + 0.5, value(s) as f64 / 1e3));
            latency
                .draw_series(LineSeries::new(points, &color))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        latency
            .configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    }
}

/// Microseconds as milliseconds with three decimals: `1.500 ms`.
fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1e3)
}

/// The cluster: chaos, failovers, the longest acknowledgement gap, convergence.
fn write_cluster(out: &mut String, c: &ClusterStats) -> fmt::Result {
    let failovers = c.failovers.map_or("not watched".into(), |n| n.to_string());
    writeln!(
        out,
        "  cluster           {} replicas; chaos {}; {} leader kills; failovers {failovers}; longest gap between acknowledgements {}",
        c.replicas,
        c.chaos,
        c.leader_kills,
        ms(c.ack_gap_us_max)
    )?;
    writeln!(
        out,
        "  lost answers      {} submissions sent again; {} events found applied by a lost attempt",
        c.resubmissions, c.events_recovered
    )?;
    for error in &c.chaos_errors {
        writeln!(out, "    ! chaos: {error}")?;
    }
    let ends: Vec<String> = c
        .replicas_end
        .iter()
        .map(|end| match (end.applied_index, end.digest) {
            (Some(index), Some(digest)) => {
                format!("{}: applied {index} digest {digest:016x}", end.replica_id)
            }
            _ => format!("{}: no answer", end.replica_id),
        })
        .collect();
    let converged = match c.converged {
        Some(true) => "equal",
        Some(false) => "DIFFERENT",
        None => "not checked (no peer addresses)",
    };
    writeln!(out, "  replicas          {converged}; {}", ends.join("; "))
}

/// The engine's group commits, pacing, spare segments, shard units and snapshots.
fn write_engine(out: &mut String, e: &ShardStats) -> fmt::Result {
    let share = |n: u64| 100.0 * n as f64 / e.units.max(1) as f64;
    writeln!(
        out,
        "  engine            {} group commits ({} applied by the log thread), mean {:.0} events, group latency p50 {} p99 {} max {}; {} pacing pauses (mean {:.0} us, {} stalls seen); {} spare-segment steps (mean {:.0} us, {} MB); shard units {}, {:.1}% spanned shards, {:.1}% waited for a part; {} groups serial",
        e.groups,
        e.groups_applied_by_log_thread,
        e.group_events_mean,
        ms(e.group_latency_us_p50),
        ms(e.group_latency_us_p99),
        ms(e.group_latency_us_max),
        e.commit_pauses,
        e.commit_pause_us_mean,
        e.commit_stalls,
        e.spare_steps,
        e.spare_step_us_mean,
        e.spare_bytes / 1_000_000,
        e.units,
        share(e.units_spanning),
        share(e.units_waited),
        e.groups_serial
    )?;
    writeln!(
        out,
        "  snapshots         {} written, {} failed; longest freeze {} (apply thread), longest write {:.1} s",
        e.snapshots_written,
        e.snapshots_failed,
        ms(e.snapshot_freeze_us_max),
        e.snapshot_write_ms_max as f64 / 1_000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ReplicaEnd;

    /// A small report that reaches every line `text` can write.
    fn sample() -> Report {
        let mut results = BTreeMap::new();
        results.insert("ok".to_string(), 900);
        results.insert("busy".to_string(), 70);
        results.insert("exceeds_credits".to_string(), 30);
        Report {
            mode: "festival".into(),
            submission: "open loop".into(),
            workload: "festival".into(),
            target: "memory".into(),
            shards: 2,
            engine: Some(ShardStats {
                units: 1_000,
                units_spanning: 250,
                units_waited: 10,
                groups_serial: 3,
                groups: 40,
                groups_applied_by_log_thread: 31,
                group_events_mean: 24.5,
                group_latency_us_p50: 1_200,
                group_latency_us_p99: 4_500,
                group_latency_us_max: 9_001,
                commit_pauses: 7,
                commit_pause_us_mean: 812.4,
                commit_stalls: 2,
                spare_steps: 5,
                spare_step_us_mean: 95.6,
                spare_bytes: 67_108_864,
                snapshots_written: 2,
                snapshots_failed: 1,
                snapshot_freeze_us_max: 15_000,
                snapshot_write_ms_max: 2_345,
            }),
            cluster: Some(ClusterStats {
                replicas: 3,
                chaos: "kill-leader".into(),
                leader_kills: 2,
                chaos_errors: vec!["no leader".into()],
                failovers: Some(2),
                ack_gap_us_max: 1_750_000,
                resubmissions: 12,
                events_recovered: 3,
                replicas_end: vec![
                    ReplicaEnd {
                        replica_id: 1,
                        applied_index: Some(70),
                        digest: Some(0xabc),
                    },
                    ReplicaEnd {
                        replica_id: 2,
                        applied_index: None,
                        digest: None,
                    },
                ],
                converged: Some(false),
            }),
            duration_s: 12.345,
            offered_tps: 1_000.4,
            achieved_tps: 999.6,
            peak_offered_tps: 1_500,
            peak_achieved_tps: 1_490,
            requests_submitted: 800,
            transfers_submitted: 1_000,
            transfers_acknowledged: 930,
            transfers_ok: 900,
            transfers_failed: 100,
            successful_tps: 72.9,
            failed_tps: 8.1,
            unfinished_requests: 4,
            scheduler_late_us_max: 61,
            latency_us: Latency {
                p50: 800,
                p90: 1_500,
                p99: 3_000,
                p999: 7_000,
                p9999: 12_000,
                max: 20_000,
            },
            results,
            setup: SetupReport {
                accounts: 2_100,
                funding_transfers: 2_000,
                seconds: 0.5,
            },
            conservation_ok: true,
            verified_ok: false,
            events: None,
            order_lookups: None,
            end_of_day: None,
            verification: Verification {
                accounts_checked: 2_100,
                accounts_missing: 1,
                accounts_mismatched: 2,
                transfers_checked: 2_900,
                transfers_missing: 3,
                transfers_mismatched: 4,
                conservation: vec![(156, true), (840, false)],
                conservation_ok: false,
                results_predicted: 0,
                results_mispredicted: 0,
                pending_left: 6,
                expired: 5,
                anomalies: vec!["post before pending".into()],
                verified_ok: false,
            },
            expiry_policy: "swept".into(),
            machine: Machine {
                cores: 2,
                memory_total_bytes: 8 << 30,
                cpu_model: "Test CPU".into(),
                kernel: "6.1".into(),
            },
            seconds: Vec::new(),
            command: "loadgen".into(),
        }
    }

    /// Every line of [`sample`]'s text, in order.
    const SAMPLE_TEXT: [&str; 26] = [
        "tally loadgen: festival mode against memory (2 shards)\n",
        "  submission        open loop\n",
        "  workload          festival\n",
        "  machine           2 cores, 8.0 GiB, Test CPU (kernel 6.1)\n",
        "  setup             2100 accounts, 2000 funding transfers in 0.50 s\n",
        "  duration          12.35 s\n",
        "  offered           1000 transfers/s mean, 1500 peak second (800 requests, 1000 transfers)\n",
        "  achieved          1000 transfers/s mean, 1490 peak second (930 acknowledged, 900 ok)\n",
        "  outcome           successful 73 transfers/s, failed 8 transfers/s\n",
        "  latency           p50 0.800 ms  p90 1.500 ms  p99 3.000 ms  p99.9 7.000 ms  p99.99 12.000 ms  max 20.000 ms\n",
        "  engine            40 group commits (31 applied by the log thread), mean 24 events, group latency p50 1.200 ms p99 4.500 ms max 9.001 ms; 7 pacing pauses (mean 812 us, 2 stalls seen); 5 spare-segment steps (mean 96 us, 67 MB); shard units 1000, 25.0% spanned shards, 1.0% waited for a part; 3 groups serial\n",
        "  snapshots         2 written, 1 failed; longest freeze 15.000 ms (apply thread), longest write 2.3 s\n",
        "  cluster           3 replicas; chaos kill-leader; 2 leader kills; failovers 2; longest gap between acknowledgements 1750.000 ms\n",
        "  lost answers      12 submissions sent again; 3 events found applied by a lost attempt\n",
        "    ! chaos: no leader\n",
        "  replicas          DIFFERENT; 1: applied 70 digest 0000000000000abc; 2: no answer\n",
        "  UNFINISHED        4 requests had no result at the end\n",
        "  scheduler lag     max 0.061 ms\n",
        "  results:\n",
        "    ok                                       900\n",
        "    busy                                     70\n",
        "    exceeds_credits                          30\n",
        "  conservation      ok (156:ok 840:BROKEN)\n",
        "  verification      FAILED: 2100 accounts (1 missing, 2 differ), 2900 transfers (3 missing, 4 differ)\n",
        "  expiry            5 expired, 6 still pending; swept\n",
        "    ! post before pending\n",
    ];

    #[test]
    fn the_text_report_is_pinned() {
        assert_eq!(sample().text(), SAMPLE_TEXT.concat());
    }

    #[test]
    fn the_text_report_leaves_out_the_engine_cluster_and_unfinished_lines_when_absent() {
        let report = Report {
            engine: None,
            cluster: None,
            unfinished_requests: 0,
            ..sample()
        };
        const ABSENT: [&str; 7] = [
            "  engine ",
            "  lost answers ",
            "  snapshots ",
            "  cluster ",
            "    ! chaos",
            "  replicas ",
            "  UNFINISHED ",
        ];
        let expected: String = SAMPLE_TEXT
            .iter()
            .filter(|line| !ABSENT.iter().any(|prefix| line.starts_with(prefix)))
            .copied()
            .collect();
        assert_eq!(report.text(), expected);
    }
}
