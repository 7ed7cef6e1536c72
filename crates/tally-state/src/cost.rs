//! What a plan costs on an ideal machine with one core per part: the parallelism
//! profile of docs/sharding.md, for the executor as built and with escrow.

use crate::plan::{Plan, Unit, Work};
use std::collections::HashMap;

/// What a plan costs on an ideal machine with one core per part, where a unit costs one
/// step per event and starts once every part it touches has finished its units before
/// it (no hand-off or planning cost). `work / critical_path` is the most a plan can gain
/// from its parts: the parallelism profile of docs/sharding.md. Figures are in steps of
/// [`STEPS_PER_EVENT`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanCost {
    /// Steps of all units: the time on one core.
    pub work: u64,
    /// The longest chain of units that must run one after another.
    pub critical_path: u64,
    /// Steps run on the busiest part, waits left out: however the units are ordered,
    /// the plan takes at least this long, so `work / busiest_part` bounds the gain
    /// by load balance alone.
    pub busiest_part: u64,
}

/// Sums costs, as a profile adds up the plans of a log's groups.
impl std::ops::AddAssign for PlanCost {
    fn add_assign(&mut self, other: PlanCost) {
        self.work += other.work;
        self.critical_path += other.critical_path;
        self.busiest_part += other.busiest_part;
    }
}

/// Steps of the cost model per event (and per expiry) decided.
pub const STEPS_PER_EVENT: u64 = 8;

/// Steps of the cost model per delta applied to an account's part: a balance addition
/// and an append to the account's transfer list, about an eighth of deciding an event
/// (its checks, two account lookups, the transfer's store and index).
pub const STEPS_PER_DELTA: u64 = 1;

impl Plan {
    /// The plan's [`PlanCost`] as the executor runs it: every unit waits for every part
    /// of its mask.
    pub fn cost(&self) -> PlanCost {
        let mut free_at = [0u64; 64];
        let mut load = [0u64; 64];
        let mut cost = PlanCost::default();
        for unit in &self.units {
            let steps = unit.events() * STEPS_PER_EVENT;
            let start = unit.parts().map(|part| free_at[part]).max().unwrap_or(0);
            let end = start + steps;
            unit.parts().for_each(|part| {
                free_at[part] = end;
                load[part] += steps;
            });
            cost.work += steps;
            cost.critical_path = cost.critical_path.max(end);
        }
        cost.busiest_part = load.into_iter().max().unwrap_or(0);
        cost
    }

    /// The plan's [`PlanCost`] with escrow. A unit holds
    /// only the parts it needs to decide (`mask` without `deltas`), and waits for every
    /// delta sent before it to an account it reads or changes in place; each account
    /// it only adds to ([`crate::Touch::delta`]) then takes the change as a delta on
    /// its own part, [`STEPS_PER_DELTA`] per event, once the unit is decided. A delta
    /// takes its part's time but holds up none of the part's other units: deltas to
    /// one account commute and cannot fail, so only a unit that reads that account
    /// waits for them. The work is the same, moved from the decisions to the deltas.
    pub fn cost_with_deltas(&self) -> PlanCost {
        let mut free_at = [0u64; 64];
        let mut load = [0u64; 64];
        // Per account, when every delta sent to it so far has been applied.
        let mut account_at: HashMap<u128, u64, foldhash::fast::RandomState> = HashMap::default();
        let mut cost = PlanCost::default();
        for unit in &self.units {
            let touches = &self.touches[unit.touches.0 as usize..unit.touches.1 as usize];
            let decide = unit.mask & !unit.deltas;
            let deltas = touches.iter().filter(|touch| touch.delta).count() as u64;
            let decide_steps = unit.events() * STEPS_PER_EVENT - deltas * STEPS_PER_DELTA;
            let start = bits(decide)
                .map(|part| free_at[part])
                .chain(
                    touches
                        .iter()
                        .filter(|t| !t.delta)
                        .map(|t| account_at.get(&t.account).copied().unwrap_or(0)),
                )
                .max()
                .unwrap_or(0);
            let decided = start + decide_steps;
            bits(decide).for_each(|part| {
                free_at[part] = decided;
                load[part] += decide_steps;
            });
            for touch in touches {
                let at = account_at.entry(touch.account).or_default();
                *at = (*at).max(decided);
                if touch.delta {
                    *at += STEPS_PER_DELTA;
                    let part = self.layout.part_of(touch.account);
                    free_at[part] += STEPS_PER_DELTA;
                    load[part] += STEPS_PER_DELTA;
                }
            }
            cost.work += unit.events() * STEPS_PER_EVENT;
        }
        let applied = account_at.into_values().max().unwrap_or(0);
        cost.critical_path = free_at.into_iter().max().unwrap_or(0).max(applied);
        cost.busiest_part = load.into_iter().max().unwrap_or(0);
        cost
    }
}

/// The set bits of `mask`, lowest first: the parts of a unit's mask.
pub(crate) fn bits(mask: u64) -> impl Iterator<Item = usize> {
    let mut rest = mask;
    std::iter::from_fn(move || {
        let part = rest.trailing_zeros() as usize;
        rest &= rest.wrapping_sub(1);
        (part < 64).then_some(part)
    })
}

impl Unit {
    /// Events the unit decides (an expiry counts as one).
    pub(crate) fn events(&self) -> u64 {
        match self.work {
            Work::Expire { .. } => 1,
            Work::Events { start, end } => u64::from(end - start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Layout, part_of};
    use crate::plan::Touch;

    #[test]
    fn escrow_decides_payments_to_one_hot_account_side_by_side() {
        const PARTS: usize = 3;
        let on_part_1 = |n| {
            (1..)
                .filter(|&id| part_of(id, PARTS) == 1)
                .nth(n)
                .unwrap_or(0)
        };
        let (hot, other) = (on_part_1(0), on_part_1(1));
        let mut plan = Plan {
            layout: Layout::from(PARTS),
            ..Plan::default()
        };
        let mut unit = |mask, deltas, touch: Touch| {
            let at = plan.touches.len() as u32;
            plan.touches.push(touch);
            plan.units.push(Unit {
                batch: 0,
                work: Work::Events { start: 0, end: 1 },
                mask,
                deltas,
                reads: mask & !deltas,
                touches: (at, at + 1),
            });
        };
        let delta = |account| Touch {
            account,
            delta: true,
        };
        let read = |account| Touch {
            account,
            delta: false,
        };
        // Two payments to `hot`, recorded on parts 0 and 2; then a unit that reads
        // another account of `hot`'s part, and one that reads `hot`.
        unit(0b011, 0b010, delta(hot));
        unit(0b110, 0b010, delta(hot));
        unit(0b010, 0, read(other));
        unit(0b010, 0, read(hot));
        let event = STEPS_PER_EVENT;
        let handed_off = PlanCost {
            work: 4 * event,
            critical_path: 4 * event,
            busiest_part: 4 * event,
        };
        assert_eq!(plan.cost(), handed_off);
        // Both payments decided at once; `other` does not wait for `hot`'s deltas, the
        // read of `hot` waits for both (and for its part).
        let decided = event - STEPS_PER_DELTA;
        let hot_applied = decided + 2 * STEPS_PER_DELTA;
        let other_read = 2 * STEPS_PER_DELTA + event;
        assert!(hot_applied < other_read);
        let with_deltas = PlanCost {
            work: 4 * event,
            critical_path: other_read + event,
            // `hot`'s part: both deltas and the two units that read there.
            busiest_part: 2 * event + 2 * STEPS_PER_DELTA,
        };
        assert_eq!(plan.cost_with_deltas(), with_deltas);
    }
}
