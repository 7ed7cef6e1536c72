//! `tally profile`: the parallelism profile of a ledger's log (docs/sharding.md). For
//! each shard count, the log is replayed in groups, each group planned as the sharded
//! engine plans it, and the plans' total work is set against their critical paths on an
//! ideal machine with one core per shard: how much faster N shards could be, at most,
//! with this log, whatever the machine the profile is computed on.

use std::path::PathBuf;
use std::process::ExitCode;
use tally_log::{LogRecord, RecoverySink};
use tally_state::{
    Layout, PARTS_MAX, Placement, PlanCost, STEPS_PER_EVENT, Serial, StateMachine, plan_with_escrow,
};
use tally_types::{Batch, LoadedImage};

/// The arguments of `tally profile`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProfileArgs {
    /// The data directory (read only; its lock is taken while reading).
    #[arg(long)]
    data: PathBuf,
    /// Shard counts to profile, comma-separated (1 to 64 each).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 16, 32, 64])]
    shards: Vec<usize>,
    /// Events per planned group, as the engine's group commit would take them.
    #[arg(long, default_value_t = 8_190)]
    group_events: usize,
    /// Place ids by their lowest N bits (1 to 128; 128, the default, is the whole id):
    /// ids that share them share a shard (docs/sharding.md, "Placement").
    #[arg(long, default_value_t = Placement::WHOLE_ID)]
    placement_bits: Placement,
    /// Replay the log's first N events without profiling them (a run's set-up, say).
    #[arg(long, default_value_t = 0)]
    skip_events: u64,
}

/// One shard count's profile.
#[derive(Debug, Default)]
struct Profile {
    cost: PlanCost,
    /// The cost with escrow ([`tally_state::Plan::cost_with_deltas`]).
    cost_with_deltas: PlanCost,
    groups: u64,
    groups_serial: u64,
    units: u64,
    units_spanning: u64,
    /// Units that span shards but, with escrow, are decided on one.
    units_spanning_decided_on_one: u64,
}

/// Replays a log in groups cut as `layout` says, planning each group first.
struct Profiler {
    layout: Layout,
    group_events: usize,
    /// Events to replay before profiling, and events replayed so far.
    skip_events: u64,
    replayed: u64,
    state: Option<StateMachine>,
    group: Vec<LogRecord>,
    events: usize,
    profile: Profile,
    failure: Option<String>,
}

impl Profiler {
    fn flush(&mut self) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        if self.group.is_empty() {
            return;
        }
        let batches: Vec<_> = self
            .group
            .iter()
            .map(|record| (record.timestamp, &record.batch))
            .collect();
        let events = self.events as u64;
        self.replayed += events;
        if self.replayed > self.skip_events {
            profile_group(&mut self.profile, self.layout, state, &batches, events);
        }
        state.replay(&batches);
        self.group.clear();
        self.events = 0;
    }
}

/// Adds one group's plan (or, when it runs serially, its whole work) to `profile`.
fn profile_group(
    profile: &mut Profile,
    layout: Layout,
    state: &StateMachine,
    batches: &[(u64, &Batch)],
    events: u64,
) {
    profile.groups += 1;
    match plan_with_escrow(state, batches) {
        Ok(plan) => {
            profile.cost += plan.cost();
            profile.cost_with_deltas += plan.cost_with_deltas();
            profile.units += plan.units.len() as u64;
            let spanning = plan.units.iter().filter(|u| u.spans_parts());
            let (all, decided_on_one) = spanning.fold((0, 0), |(all, one), u| {
                (
                    all + 1,
                    one + u64::from((u.mask & !u.deltas).count_ones() == 1),
                )
            });
            profile.units_spanning += all;
            profile.units_spanning_decided_on_one += decided_on_one;
        }
        Err(Serial::OnePart | Serial::ExpiryInsideGroup | Serial::Imported) => {
            if layout.count() > 1 {
                profile.groups_serial += 1;
            }
            // Run on one thread: its whole work is its critical path and one part's load.
            let steps = events * STEPS_PER_EVENT;
            let serial = PlanCost {
                work: steps,
                critical_path: steps,
                busiest_part: steps,
            };
            profile.cost += serial;
            profile.cost_with_deltas += serial;
        }
    }
}

impl RecoverySink for Profiler {
    fn start(&mut self, snapshot: Option<(u64, LoadedImage)>) {
        self.state = match snapshot {
            None => Some(StateMachine::with_parts(self.layout)),
            Some((sequence, image)) => {
                match StateMachine::from_loaded_image_in_parts(image, self.layout) {
                    Ok(state) => Some(state),
                    Err(error) => {
                        self.failure = Some(format!("snapshot {sequence} does not load: {error}"));
                        None
                    }
                }
            }
        };
    }

    fn record(&mut self, record: LogRecord) {
        self.events += record.batch.len().max(1);
        self.group.push(record);
        if self.events >= self.group_events {
            self.flush();
        }
    }
}

pub(crate) fn profile(args: ProfileArgs) -> Result<ExitCode, String> {
    if let Some(&bad) = args.shards.iter().find(|&&n| n == 0 || n > PARTS_MAX) {
        return Err(format!(
            "--shards {bad}: give numbers from 1 to {PARTS_MAX}"
        ));
    }
    if args.group_events == 0 {
        return Err("--group-events: give a number above 0".to_string());
    }
    println!(
        "parallelism profile of {} (groups of {} events, ids placed by their low {} bits; \
         an ideal machine, one core per shard)",
        args.data.display(),
        args.group_events,
        args.placement_bits
    );
    println!(
        "shards  groups  work (events)  critical path  parallelism  with escrow  busiest shard  units spanning shards (decided on one with escrow)"
    );
    for &parts in &args.shards {
        let mut profiler = Profiler {
            layout: Layout::new(parts, args.placement_bits),
            group_events: args.group_events,
            skip_events: args.skip_events,
            replayed: 0,
            state: None,
            group: Vec::new(),
            events: 0,
            profile: Profile::default(),
            failure: None,
        };
        let _lock = tally_log::DirLock::acquire(&args.data).map_err(|e| e.to_string())?;
        tally_log::read_log_into(&args.data, &mut profiler).map_err(|e| e.to_string())?;
        profiler.flush();
        if let Some(failure) = profiler.failure {
            return Err(failure);
        }
        let p = &profiler.profile;
        let parallelism = |cost: PlanCost| cost.work as f64 / cost.critical_path.max(1) as f64;
        let spanning = 100.0 * p.units_spanning as f64 / p.units.max(1) as f64;
        // With escrow: the busiest shard's load over the mean shard's.
        let mean = p.cost_with_deltas.work as f64 / parts as f64;
        let busiest = p.cost_with_deltas.busiest_part as f64 / mean.max(1.0);
        let decided_on_one =
            100.0 * p.units_spanning_decided_on_one as f64 / p.units_spanning.max(1) as f64;
        println!(
            "{parts:>6}  {:>6}  {:>13}  {:>13}  {:>11.2}  {:>11.2}  {busiest:>11.2} x  {spanning:>5.1} % ({decided_on_one:.1} %){}",
            p.groups,
            p.cost.work / STEPS_PER_EVENT,
            p.cost.critical_path / STEPS_PER_EVENT,
            parallelism(p.cost),
            parallelism(p.cost_with_deltas),
            match p.groups_serial {
                0 => String::new(),
                serial => format!(" ({serial} groups serial)"),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
