//! Plans for applying a group of batches on several parts at once, with results equal
//! to applying them one after another (docs/spec.md §3.1, sequential equivalence).
//!
//! A plan lists the group's **units** in log order: before each batch, one unit per
//! pending transfer that expires at that batch's stamp; then each event that is not
//! linked, and each whole linked chain. Each unit carries the mask of the parts it may
//! touch (a superset is fine, a subset is a bug that [`crate::Held`] turns into a
//! panic). Executors may run units in any order that keeps, for every part, the units
//! touching it in log order. An event's outcome depends only on the state of what it
//! touches and on its stamp, which its log position fixes; so every such order gives the
//! serial result.
//!
//! The parts a unit touches follow from its ids: the transfer's own, its accounts', and
//! for a post, void or refund the referenced transfer's and *its* accounts. Those are
//! read from the committed state, or from the earlier events of the group that create
//! that id (transfers never change once created, so either answer is exact).

use crate::apply::{Held, apply_unit, create_account, create_transfer, expire_one, unit_ranges};
use crate::part::part_of;
use crate::state::StateMachine;
use std::collections::{HashMap, HashSet};

type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use tally_types::{Batch, NS_PER_S, ResultCode, TransferKind};

/// What a unit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Expire pending transfer `id` (due at `at`), unless settled earlier in the group.
    Expire {
        /// When it is due, in nanoseconds.
        at: u64,
        /// The pending transfer.
        id: u128,
    },
    /// Apply events `start..end` of the batch: one unlinked event or one whole chain.
    Events {
        /// The first event.
        start: u32,
        /// One past the last event.
        end: u32,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Which batch of the group (index into the planned batches).
    pub batch: u32,
    /// What the unit does.
    pub work: Work,
    /// Bit `p` set: the unit may touch part `p`.
    pub mask: u64,
}

impl Unit {
    /// The part whose thread runs the unit: the lowest one it touches.
    pub fn owner(&self) -> usize {
        self.mask.trailing_zeros() as usize
    }

    /// True when the unit touches more than one part.
    pub fn spans_parts(&self) -> bool {
        self.mask.count_ones() > 1
    }
}

/// The units of one group, in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The units, in log order.
    pub units: Vec<Unit>,
    /// The stamp of the group's last event: the state's `last_timestamp` afterwards.
    pub last_timestamp: u64,
}

/// What a plan costs on an ideal machine with one core per part, where a unit costs one
/// step per event and starts once every part it touches has finished its units before
/// it (no hand-off or planning cost). `work / critical_path` is the most a plan can gain
/// from its parts: the parallelism profile of docs/sharding.md.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanCost {
    /// Steps of all units: the time on one core.
    pub work: u64,
    /// The longest chain of units that must run one after another.
    pub critical_path: u64,
}

impl Plan {
    /// The plan's [`PlanCost`].
    pub fn cost(&self) -> PlanCost {
        let mut free_at = [0u64; 64];
        let mut cost = PlanCost::default();
        for unit in &self.units {
            let steps = match unit.work {
                Work::Expire { .. } => 1,
                Work::Events { start, end } => u64::from(end - start),
            };
            let parts = || (0..64).filter(|part| unit.mask & (1 << part) != 0);
            let start = parts().map(|part| free_at[part]).max().unwrap_or(0);
            let end = start + steps;
            parts().for_each(|part| free_at[part] = end);
            cost.work += steps;
            cost.critical_path = cost.critical_path.max(end);
        }
        cost
    }
}

/// Why a group runs serially instead of by plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serial {
    /// The state has one part.
    OnePart,
    /// A pending transfer created in the group could expire before a later batch of the
    /// same group; whether it exists is only known by applying. Only a manual clock
    /// makes groups span seconds, so this is rare and the serial path is exact.
    ExpiryInsideGroup,
    /// A batch of the group is imported: its checks compare its timestamps with every
    /// part's records.
    Imported,
}

/// Plans `batches` (each with its stamp, in log order) against the committed `state`.
pub fn plan(state: &StateMachine, batches: &[(u64, &Batch)]) -> Result<Plan, Serial> {
    let count = state.part_count();
    if count == 1 {
        return Err(Serial::OnePart);
    }
    let Some(&(last_stamp, last_batch)) = batches.last() else {
        return Ok(Plan {
            units: Vec::new(),
            last_timestamp: state.last_timestamp(),
        });
    };
    let last_timestamp = last_stamp + last_batch.len().saturating_sub(1) as u64;
    if expires_inside(batches, last_timestamp) {
        return Err(Serial::ExpiryInsideGroup);
    }
    if batches.iter().any(|(_, batch)| batch.is_imported()) {
        return Err(Serial::Imported);
    }
    let bit = |id: u128| 1u64 << part_of(id, count);
    // Expiries are released before a batch, up to its first stamp (as `apply` does): an
    // instant inside the last batch's span waits for the next group, as it would serially.
    let mut due = due_expiries(state, last_stamp).into_iter().peekable();
    // Ids created in this group that a later event of it may reference: the parts of
    // their accounts. Only referenced ids are recorded (most groups reference few).
    let referenced = referenced_ids(batches);
    let mut created: IdMap<u128, u64> = IdMap::default();
    let accounts_of = |id: u128, created: &IdMap<u128, u64>| match state.lookup_transfer(id) {
        Some(t) => bit(t.debit_account_id) | bit(t.credit_account_id),
        None => created.get(&id).copied().unwrap_or(0),
    };
    let mut units = Vec::new();
    for (batch_index, &(stamp, batch)) in batches.iter().enumerate() {
        let batch_index = u32::try_from(batch_index).expect("fewer than 2^32 batches");
        while let Some(&(at, id)) = due.peek().filter(|(at, _)| *at <= stamp) {
            due.next();
            let pending = state.lookup_transfer(id).expect("a listed expiry exists");
            units.push(Unit {
                batch: batch_index,
                work: Work::Expire { at, id },
                mask: bit(id) | bit(pending.debit_account_id) | bit(pending.credit_account_id),
            });
        }
        let mut push = |start: usize, end: usize, mask: u64| {
            units.push(Unit {
                batch: batch_index,
                work: Work::Events {
                    start: start as u32,
                    end: end as u32,
                },
                mask,
            });
        };
        match batch {
            Batch::CreateAccounts(events) => {
                for (start, end) in unit_ranges(events, 0) {
                    let mask = events[start..end].iter().fold(0, |m, a| m | bit(a.id));
                    push(start, end, mask);
                }
            }
            Batch::CreateTransfers(events) => {
                for (start, end) in unit_ranges(events, 0) {
                    let mut mask = 0;
                    for t in &events[start..end] {
                        let accounts = match t.kind() {
                            None => 0,
                            Some(TransferKind::SinglePhase | TransferKind::Pending) => {
                                bit(t.debit_account_id) | bit(t.credit_account_id)
                            }
                            Some(TransferKind::PostPending | TransferKind::VoidPending) => {
                                bit(t.pending_id) | accounts_of(t.pending_id, &created)
                            }
                            Some(TransferKind::Refund) => {
                                bit(t.refund_of()) | accounts_of(t.refund_of(), &created)
                            }
                        };
                        mask |= bit(t.id) | accounts;
                        if referenced.contains(&t.id) {
                            // For a post, void or refund this includes the referenced id's
                            // part too: a superset, which is allowed.
                            *created.entry(t.id).or_default() |= accounts;
                        }
                    }
                    push(start, end, mask);
                }
            }
        }
    }
    assert!(due.next().is_none(), "every due expiry planned");
    Ok(Plan {
        units,
        last_timestamp,
    })
}

/// Ids that a post, void or refund of the group references.
fn referenced_ids(batches: &[(u64, &Batch)]) -> HashSet<u128, foldhash::fast::RandomState> {
    let mut referenced = HashSet::default();
    for (_, batch) in batches {
        if let Batch::CreateTransfers(events) = batch {
            referenced.extend(events.iter().filter_map(|t| match t.kind() {
                Some(TransferKind::PostPending | TransferKind::VoidPending) => Some(t.pending_id),
                Some(TransferKind::Refund) => Some(t.refund_of()),
                _ => None,
            }));
        }
    }
    referenced
}

/// True when a pending transfer with a timeout, created in the group, would come due at
/// or before the group's last stamp.
fn expires_inside(batches: &[(u64, &Batch)], last_timestamp: u64) -> bool {
    batches.iter().any(|(stamp, batch)| match batch {
        Batch::CreateAccounts(_) => false,
        Batch::CreateTransfers(events) => events.iter().enumerate().any(|(i, t)| {
            t.kind() == Some(TransferKind::Pending)
                && t.timeout != 0
                && (stamp + i as u64)
                    .checked_add(u64::from(t.timeout) * NS_PER_S)
                    .is_some_and(|at| at <= last_timestamp)
        }),
    })
}

/// Every committed expiry due at or before `until`, in (instant, id) order.
fn due_expiries(state: &StateMachine, until: u64) -> Vec<(u64, u128)> {
    let mut due: Vec<(u64, u128)> = state
        .parts
        .iter()
        .flat_map(|part| part.expiries.range(..=(until, u128::MAX)).copied())
        .collect();
    due.sort_unstable();
    due
}

/// Runs one unit on the parts `held` (every part in its mask), writing the results of
/// an events unit to `results` (one per event of the unit).
pub fn run_unit(
    held: &mut Held,
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
        mut pick: impl FnMut(usize) -> usize,
    ) -> Vec<Vec<ResultCode>> {
        if let Some(&(first, _)) = batches.first() {
            assert!(first > self.last_timestamp, "time must move forward");
        }
        let count = self.part_count();
        let mut results: Vec<Vec<ResultCode>> = batches
            .iter()
            .map(|(_, b)| vec![ResultCode::Ok; b.len()])
            .collect();
        // Per part, its units in log order, and how many of them are done.
        let mut queues: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (u, unit) in plan.units.iter().enumerate() {
            for (part, queue) in queues.iter_mut().enumerate() {
                if unit.mask & (1 << part) != 0 {
                    queue.push(u);
                }
            }
        }
        let mut done = vec![0usize; count];
        // Every part waits here; a unit holds only the parts of its mask, as on a shard
        // thread, so a plan that misses a part panics here too.
        let mut idle = Held::new(count);
        for part in self.take_parts() {
            idle.insert(part);
        }
        loop {
            let ready: Vec<usize> = (0..count)
                .filter_map(|part| queues[part].get(done[part]).copied())
                .filter(|&u| {
                    (0..count).all(|p| {
                        plan.units[u].mask & (1 << p) == 0 || queues[p].get(done[p]) == Some(&u)
                    })
                })
                .collect();
            if ready.is_empty() {
                break;
            }
            let u = ready[pick(ready.len()) % ready.len()];
            let unit = &plan.units[u];
            let (stamp, batch) = batches[unit.batch as usize];
            let slice = match unit.work {
                Work::Events { start, end } => {
                    &mut results[unit.batch as usize][start as usize..end as usize]
                }
                Work::Expire { .. } => &mut [][..],
            };
            let mut held = Held::new(count);
            for part in (0..count).filter(|p| unit.mask & (1 << p) != 0) {
                held.insert(idle.take(part));
            }
            run_unit(&mut held, unit, stamp, batch, slice);
            for part in (0..count).filter(|p| unit.mask & (1 << p) != 0) {
                idle.insert(held.take(part));
            }
            for (part, done) in done.iter_mut().enumerate() {
                if unit.mask & (1 << part) != 0 {
                    *done += 1;
                }
            }
        }
        assert!(
            (0..count).all(|part| done[part] == queues[part].len()),
            "every unit ran"
        );
        let parts = (0..count).map(|part| idle.take(part)).collect();
        self.restore_parts(parts, plan.last_timestamp);
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_types::Transfer;

    #[test]
    fn parts_spread_ids_evenly() {
        for count in [2, 3, 4, 8] {
            let mut hits = vec![0u32; count];
            for id in 1..=80_000u128 {
                hits[part_of(id, count)] += 1;
            }
            let even = 80_000 / count as u32;
            assert!(
                hits.iter()
                    .all(|&h| h > even * 9 / 10 && h < even * 11 / 10),
                "{count} parts: {hits:?}"
            );
        }
        assert_eq!(part_of(12345, 1), 0);
    }

    #[test]
    fn one_part_runs_serially() {
        let state = StateMachine::new();
        let batch = Batch::CreateTransfers(Vec::new());
        assert_eq!(plan(&state, &[(1, &batch)]), Err(Serial::OnePart));
    }

    #[test]
    fn a_pending_that_can_expire_inside_the_group_runs_serially() {
        let state = StateMachine::with_parts(2);
        let pending = Transfer {
            id: 1,
            timeout: 1,
            flags: tally_types::TransferFlags::PENDING,
            ..Transfer::default()
        };
        let first = Batch::CreateTransfers(vec![pending]);
        let later = Batch::CreateTransfers(Vec::new());
        let groups = [(10, &first), (10 + NS_PER_S, &later)];
        assert_eq!(plan(&state, &groups), Err(Serial::ExpiryInsideGroup));
        let groups = [(10, &first), (9 + NS_PER_S, &later)];
        assert!(plan(&state, &groups).is_ok());
    }
}
