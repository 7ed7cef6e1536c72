//! Running a plan: the units of a group, each on the parts it holds, in any order that
//! keeps every part's units in log order (docs/sharding.md). Shard threads do this with
//! [`run_unit`] or [`decide_unit`]; [`StateMachine::apply_planned`] and its variants do
//! it on one thread, in orders the tests choose at random.

use crate::apply::{Held, Parts, apply_unit, create_account, create_transfer, expire_one};
use crate::decide::{Deciding, Deltas};
use crate::plan::{Plan, Unit, Work};
use crate::state::StateMachine;
use std::collections::VecDeque;
use tally_types::{Batch, ResultCode};

/// Runs one unit on the parts `held` (every part in its mask), writing the results of
/// an events unit to `results` (one per event of the unit).
pub fn run_unit(
    held: &mut Held,
    unit: &Unit,
    timestamp: u64,
    batch: &Batch,
    results: &mut [ResultCode],
) {
    run_unit_on(held, unit, timestamp, batch, results);
}

/// Decides one unit holding only the parts of its mask that are not
/// [`Unit::deltas`]; for those it reads `plan`'s copies of their accounts
/// ([`Plan::delta_accounts`]) and leaves in `deltas` (cleared first) what each of those
/// parts must apply, in its log order ([`Deltas::apply_to`]). Results go to `results`,
/// as with [`run_unit`].
pub fn decide_unit(
    held: &mut Held,
    plan: &Plan,
    unit: &Unit,
    timestamp: u64,
    batch: &Batch,
    results: &mut [ResultCode],
    deltas: &mut Deltas,
) {
    let mut deciding = Deciding::new(held, &plan.delta_accounts, deltas);
    run_unit_on(&mut deciding, unit, timestamp, batch, results);
}

fn run_unit_on<P: Parts>(
    held: &mut P,
    unit: &Unit,
    timestamp: u64,
    batch: &Batch,
    results: &mut [ResultCode],
) {
    match unit.work {
        Work::Expire { at, id } => {
            expire_one(held, (at, id));
        }
        Work::Events { start, end } => {
            let (start, end) = (start as usize, end as usize);
            match batch {
                Batch::CreateAccounts(events) => {
                    apply_unit(held, timestamp, events, start, end, create_account, results)
                }
                Batch::CreateTransfers(events) => apply_unit(
                    held,
                    timestamp,
                    events,
                    start,
                    end,
                    create_transfer,
                    results,
                ),
            }
        }
    }
}

impl StateMachine {
    /// Applies a group by its plan on this thread, running the units in the order
    /// `pick` chooses among those ready (a unit is ready when it is the next one of
    /// every part it touches). This is what shard threads do, without threads: tests
    /// drive it with random picks to try many legal interleavings. Returns one result
    /// list per batch.
    pub fn apply_planned(
        &mut self,
        batches: &[(u64, &Batch)],
        plan: &Plan,
        pick: impl FnMut(usize) -> usize,
    ) -> Vec<Vec<ResultCode>> {
        self.apply_planned_in(batches, plan, false, pick)
    }

    /// As [`StateMachine::apply_planned`], but a unit may also overtake the units before
    /// it on a part where both only take deltas ([`Unit::deltas`]), as deltas would
    /// arrive with escrow. Results and balances must be those of the log order; the
    /// order of an account's transfer list and its change events' balances may differ.
    pub fn apply_planned_overtaking_deltas(
        &mut self,
        batches: &[(u64, &Batch)],
        plan: &Plan,
        pick: impl FnMut(usize) -> usize,
    ) -> Vec<Vec<ResultCode>> {
        self.apply_planned_in(batches, plan, true, pick)
    }

    fn apply_planned_in(
        &mut self,
        batches: &[(u64, &Batch)],
        plan: &Plan,
        overtake: bool,
        mut pick: impl FnMut(usize) -> usize,
    ) -> Vec<Vec<ResultCode>> {
        let count = self.part_count();
        let (mut results, mut idle) = self.start_planned(batches);
        // Per part, its units in log order.
        let mut queues: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (u, unit) in plan.units.iter().enumerate() {
            for part in unit.parts() {
                queues[part].push(u);
            }
        }
        // Per part, which of its queue's units have run, and the first that has not.
        let mut done: Vec<Vec<bool>> = queues.iter().map(|q| vec![false; q.len()]).collect();
        let mut first = vec![0usize; count];
        // The units that may run next on `part`: its first not run and, when overtaking
        // and that one only takes deltas there, the next ones that only take deltas too.
        let ready_on = |part: usize, done: &[Vec<bool>], first: &[usize]| {
            let delta_only = |u: usize| plan.units[u].deltas & (1 << part) != 0;
            let mut ready = Vec::new();
            for (&u, &ran) in queues[part].iter().zip(&done[part]).skip(first[part]) {
                if ran {
                    continue;
                }
                if ready.is_empty() || (overtake && delta_only(u)) {
                    ready.push(u);
                }
                if !(overtake && delta_only(u)) {
                    break;
                }
            }
            ready
        };
        // Every part waits here; a unit holds only the parts of its mask, as on a shard
        // thread, so a plan that misses a part panics here too.
        let mut ran = vec![false; plan.units.len()];
        loop {
            let next: Vec<Vec<usize>> = (0..count).map(|p| ready_on(p, &done, &first)).collect();
            let mut ready: Vec<usize> = next
                .iter()
                .flatten()
                .copied()
                .filter(|&u| plan.units[u].parts().all(|p| next[p].contains(&u)))
                .collect();
            ready.sort_unstable();
            ready.dedup();
            if ready.is_empty() {
                break;
            }
            let u = ready[pick(ready.len()) % ready.len()];
            let unit = &plan.units[u];
            let (stamp, batch) = batches[unit.batch as usize];
            let slice = unit_results(&mut results, unit);
            let mut held = lend(&mut idle, unit.mask);
            run_unit(&mut held, unit, stamp, batch, slice);
            take_back(&mut idle, held, unit.mask);
            ran[u] = true;
            for part in unit.parts() {
                let at = first[part]
                    + queues[part][first[part]..]
                        .iter()
                        .position(|&v| v == u)
                        .expect("a unit is queued on every part of its mask");
                done[part][at] = true;
                while done[part].get(first[part]) == Some(&true) {
                    first[part] += 1;
                }
            }
        }
        assert!(ran.iter().all(|&ran| ran), "every unit ran");
        self.finish_planned(idle, plan.last_timestamp);
        results
    }

    /// Applies a group by a plan made with the escrow analysis
    /// ([`crate::plan_with_escrow`]) as an executor with escrow would, on this thread: a
    /// unit is decided holding only the parts of its mask that are not deltas, once it
    /// is the next one of each ([`decide_unit`]); each part in its deltas applies what
    /// the unit decided there when the unit is that part's next one and decided
    /// ([`Deltas::apply_to`]). `pick` chooses among the steps ready. Returns one result
    /// list per batch.
    pub fn apply_planned_with_deltas(
        &mut self,
        batches: &[(u64, &Batch)],
        plan: &Plan,
        mut pick: impl FnMut(usize) -> usize,
    ) -> Vec<Vec<ResultCode>> {
        let count = self.part_count();
        let (mut results, mut idle) = self.start_planned(batches);
        // Per part, its units in log order, each with whether the unit is decided with
        // this part held (or only takes deltas here).
        let mut queues: Vec<VecDeque<(usize, bool)>> = vec![VecDeque::new(); count];
        for (u, unit) in plan.units.iter().enumerate() {
            assert_ne!(unit.mask & !unit.deltas, 0, "a unit decides somewhere");
            for part in unit.parts() {
                queues[part].push_back((u, unit.deltas & (1 << part) == 0));
            }
        }
        let mut decided: Vec<Option<Deltas>> = vec![None; plan.units.len()];
        loop {
            // (unit, None): decide it; (unit, Some(part)): apply its deltas to `part`.
            let mut ready: Vec<(usize, Option<usize>)> = Vec::new();
            for (part, queue) in queues.iter().enumerate() {
                let Some(&(u, decides)) = queue.front() else {
                    continue;
                };
                let unit = &plan.units[u];
                let deciding = unit.mask & !unit.deltas;
                if !decides {
                    if decided[u].is_some() {
                        ready.push((u, Some(part)));
                    }
                } else if part == deciding.trailing_zeros() as usize
                    && (0..count)
                        .all(|p| deciding & (1 << p) == 0 || queues[p].front() == Some(&(u, true)))
                {
                    ready.push((u, None));
                }
            }
            if ready.is_empty() {
                break;
            }
            let (u, delta_part) = ready[pick(ready.len()) % ready.len()];
            let unit = &plan.units[u];
            if let Some(part) = delta_part {
                let deltas = decided[u]
                    .as_ref()
                    .expect("decided before its deltas apply");
                deltas.apply_to(idle.get_mut(part));
                queues[part].pop_front();
                continue;
            }
            let (stamp, batch) = batches[unit.batch as usize];
            let slice = unit_results(&mut results, unit);
            let deciding = unit.mask & !unit.deltas;
            let mut held = lend(&mut idle, deciding);
            let mut deltas = Deltas::default();
            decide_unit(&mut held, plan, unit, stamp, batch, slice, &mut deltas);
            assert_eq!(deltas.parts() & !unit.deltas, 0, "deltas go to delta parts");
            take_back(&mut idle, held, deciding);
            for part in (0..count).filter(|p| deciding & (1 << p) != 0) {
                queues[part].pop_front();
            }
            decided[u] = Some(deltas);
        }
        assert!(queues.iter().all(VecDeque::is_empty), "every unit ran");
        self.finish_planned(idle, plan.last_timestamp);
        results
    }

    /// The start of a group applied by plan on this thread: time must move forward; one
    /// result per event, `Ok` until its unit runs; every part idle, to be lent.
    fn start_planned(&mut self, batches: &[(u64, &Batch)]) -> (Vec<Vec<ResultCode>>, Held) {
        if let Some(&(first, _)) = batches.first() {
            assert!(first > self.last_timestamp, "time must move forward");
        }
        let results = batches
            .iter()
            .map(|(_, b)| vec![ResultCode::Ok; b.len()])
            .collect();
        let mut idle = Held::new(self.layout);
        for part in self.take_parts() {
            idle.insert(part);
        }
        (results, idle)
    }

    /// The end of a group applied by plan: every part back in the state.
    fn finish_planned(&mut self, mut idle: Held, last_timestamp: u64) {
        let parts = (0..self.layout.count())
            .map(|part| idle.take(part))
            .collect();
        self.restore_parts(parts, last_timestamp);
    }
}

/// The results of `unit`'s events (none for an expiry).
fn unit_results<'r>(results: &'r mut [Vec<ResultCode>], unit: &Unit) -> &'r mut [ResultCode] {
    match unit.work {
        Work::Events { start, end } => {
            &mut results[unit.batch as usize][start as usize..end as usize]
        }
        Work::Expire { .. } => &mut [][..],
    }
}

/// The parts of `mask`, taken from `idle` for one unit.
fn lend(idle: &mut Held, mask: u64) -> Held {
    let mut held = Held::new(idle.layout());
    for part in crate::cost::bits(mask) {
        held.insert(idle.take(part));
    }
    held
}

/// The parts of `mask` back from `held` to `idle`.
fn take_back(idle: &mut Held, mut held: Held, mask: u64) {
    for part in crate::cost::bits(mask) {
        idle.insert(held.take(part));
    }
}
