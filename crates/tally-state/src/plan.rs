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
use tally_types::{
    AccountFlags, Batch, NS_PER_S, ResultCode, Transfer, TransferFlags, TransferKind,
};

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
    /// The parts of `mask` the unit touches only to apply balance changes that cannot
    /// fail for that account's own state (see [`Plan::cost_with_deltas`]): an executor
    /// with escrow could decide the unit without them. Executors today hold all of `mask`.
    pub deltas: u64,
    /// The parts of `mask` whose accounts' balances the unit's outcome may depend on.
    pub reads: u64,
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
/// from its parts: the parallelism profile of docs/sharding.md. Figures are in steps of
/// [`STEPS_PER_EVENT`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanCost {
    /// Steps of all units: the time on one core.
    pub work: u64,
    /// The longest chain of units that must run one after another.
    pub critical_path: u64,
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
        let mut cost = PlanCost::default();
        for unit in &self.units {
            let steps = unit.events() * STEPS_PER_EVENT;
            let parts = || (0..64).filter(|part| unit.mask & (1 << part) != 0);
            let start = parts().map(|part| free_at[part]).max().unwrap_or(0);
            let end = start + steps;
            parts().for_each(|part| free_at[part] = end);
            cost.work += steps;
            cost.critical_path = cost.critical_path.max(end);
        }
        cost
    }

    /// The plan's [`PlanCost`] with escrow. A unit holds only the parts it needs to
    /// decide (`mask` without `deltas`), and also waits for every delta sent before it to
    /// a part it `reads`; each part of `deltas` then applies the unit's changes to its
    /// accounts, [`STEPS_PER_DELTA`] per event, once the unit is decided. A delta takes
    /// its part's time but holds up none of its other units: deltas to one account
    /// commute and cannot fail, so only a read of that account must wait for them. The
    /// work is the same, moved from the decision to the deltas; so are the results.
    pub fn cost_with_deltas(&self) -> PlanCost {
        let mut free_at = [0u64; 64];
        // When every delta sent to the part so far has been applied.
        let mut deltas_done_at = [0u64; 64];
        let mut cost = PlanCost::default();
        let bits = |mask: u64| (0..64).filter(move |part| mask & (1 << part) != 0);
        for unit in &self.units {
            let events = unit.events();
            let decide = unit.mask & !unit.deltas;
            let delta_steps = events * STEPS_PER_DELTA;
            let decide_steps =
                events * STEPS_PER_EVENT - u64::from(unit.deltas.count_ones()) * delta_steps;
            let start = bits(decide)
                .map(|part| free_at[part])
                .chain(bits(unit.reads).map(|part| deltas_done_at[part]))
                .max()
                .unwrap_or(0);
            let decided = start + decide_steps;
            bits(decide).for_each(|part| free_at[part] = decided);
            for part in bits(unit.deltas) {
                free_at[part] += delta_steps;
                deltas_done_at[part] = deltas_done_at[part].max(decided) + delta_steps;
            }
            cost.work += events * STEPS_PER_EVENT;
        }
        cost.critical_path = free_at.into_iter().chain(deltas_done_at).max().unwrap_or(0);
        cost
    }
}

impl Unit {
    /// Events the unit decides (an expiry counts as one).
    fn events(&self) -> u64 {
        match self.work {
            Work::Expire { .. } => 1,
            Work::Events { start, end } => u64::from(end - start),
        }
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
    let due = due_expiries(state, last_stamp);
    let escrow = Escrow::new(state, batches, &due);
    let mut due = due.into_iter().peekable();
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
            let mask = bit(id) | bit(pending.debit_account_id) | bit(pending.credit_account_id);
            let reads = escrow.reads(&pending, Movement::Release, bit);
            units.push(Unit {
                batch: batch_index,
                work: Work::Expire { at, id },
                mask,
                deltas: mask & !(bit(id) | reads),
                reads,
            });
        }
        let mut push = |start: usize, end: usize, mask: u64, needed: u64, reads: u64| {
            units.push(Unit {
                batch: batch_index,
                work: Work::Events {
                    start: start as u32,
                    end: end as u32,
                },
                mask,
                deltas: mask & !needed,
                reads,
            });
        };
        match batch {
            Batch::CreateAccounts(events) => {
                for (start, end) in unit_ranges(events, 0) {
                    let mask = events[start..end].iter().fold(0, |m, a| m | bit(a.id));
                    push(start, end, mask, mask, 0);
                }
            }
            Batch::CreateTransfers(events) => {
                for (start, end) in unit_ranges(events, 0) {
                    // `needed`: the parts the unit's outcome depends on; `reads`: those
                    // of accounts it reads.
                    let (mut mask, mut needed, mut reads) = (0, 0, 0);
                    for t in &events[start..end] {
                        let accounts = match t.kind() {
                            None => 0,
                            Some(TransferKind::SinglePhase | TransferKind::Pending) => {
                                reads |= escrow.reads(t, Movement::Transfer, bit);
                                bit(t.debit_account_id) | bit(t.credit_account_id)
                            }
                            Some(kind) => {
                                // The referenced transfer's own part decides (its status,
                                // its refunded total); its accounts move as the kind says.
                                let referenced = t.pending_id;
                                let accounts = bit(referenced) | accounts_of(referenced, &created);
                                reads |= match state.lookup_transfer(referenced) {
                                    None => accounts,
                                    Some(o) if kind == TransferKind::Refund => {
                                        let back = Transfer {
                                            debit_account_id: o.credit_account_id,
                                            credit_account_id: o.debit_account_id,
                                            flags: TransferFlags::empty(),
                                            ..o
                                        };
                                        escrow.reads(&back, Movement::Transfer, bit)
                                    }
                                    Some(p) if kind == TransferKind::PostPending => {
                                        escrow.reads(&p, Movement::Post, bit)
                                    }
                                    Some(p) => escrow.reads(&p, Movement::Release, bit),
                                };
                                needed |= bit(referenced);
                                accounts
                            }
                        };
                        mask |= bit(t.id) | accounts;
                        needed |= bit(t.id) | reads;
                        if referenced.contains(&t.id) {
                            // For a post, void or refund this includes the referenced id's
                            // part too: a superset, which is allowed.
                            *created.entry(t.id).or_default() |= accounts;
                        }
                    }
                    push(start, end, mask, needed, reads);
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

/// Which sides of a group's transfers cannot fail for their account's own state, so that
/// an executor with escrow could apply them as deltas (O'Neil's escrow method). A side
/// qualifies when its account exists before the group (its ledger is then fixed), is
/// open and no closing transfer of the group, or one it settles or expires, touches it
/// (its `closed` flag is then fixed), has no balance limit on that side, and cannot
/// overflow that side even if every amount of the group went to it.
struct Escrow<'a> {
    state: &'a StateMachine,
    /// Every amount of the group, added (saturating).
    amounts: u128,
    /// The accounts a closing transfer of the group may close or reopen.
    closing: HashSet<u128, foldhash::fast::RandomState>,
}

impl<'a> Escrow<'a> {
    fn new(state: &'a StateMachine, batches: &[(u64, &Batch)], due: &[(u64, u128)]) -> Self {
        let mut amounts = 0u128;
        let mut closing = HashSet::default();
        let mut closes = |t: &Transfer| {
            if t.flags.contains(TransferFlags::CLOSING_DEBIT) {
                closing.insert(t.debit_account_id);
            }
            if t.flags.contains(TransferFlags::CLOSING_CREDIT) {
                closing.insert(t.credit_account_id);
            }
        };
        for (_, batch) in batches {
            let Batch::CreateTransfers(events) = batch else {
                continue;
            };
            for t in events {
                let referenced = match t.pending_id {
                    0 => None,
                    id => state.lookup_transfer(id),
                };
                // A post moves at most what its pending transfer reserved; a void, nothing.
                let moved = match (t.kind(), referenced) {
                    (Some(TransferKind::VoidPending), _) => 0,
                    (Some(TransferKind::PostPending), Some(p)) => t.amount.min(p.amount),
                    _ => t.amount,
                };
                amounts = amounts.saturating_add(moved);
                closes(t);
                if let Some(referenced) = referenced {
                    closes(&referenced);
                }
            }
        }
        for &(_, id) in due {
            if let Some(pending) = state.lookup_transfer(id) {
                closes(&pending);
            }
        }
        Escrow {
            state,
            amounts,
            closing,
        }
    }

    /// The parts of `t`'s accounts whose side of `movement` can fail, or change what it
    /// does, for that account's state. For a refund `t` is the original turned around;
    /// for a post, void or expiry, the pending transfer.
    fn reads(&self, t: &Transfer, movement: Movement, bit: impl Fn(u128) -> u64) -> u64 {
        let both = bit(t.debit_account_id) | bit(t.credit_account_id);
        if movement == Movement::Transfer && (t.flags.is_balancing() || t.flags.is_closing()) {
            return both;
        }
        let sides = [
            (
                t.debit_account_id,
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            ),
            (
                t.credit_account_id,
                AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
            ),
        ];
        let mut reads = 0;
        for (side, (id, limit)) in sides.into_iter().enumerate() {
            if self.closing.contains(&id) {
                // Settling or expiring a closing transfer may reopen its account.
                reads |= bit(id);
                continue;
            }
            if movement == Movement::Release {
                // Releasing a reservation checks nothing of the accounts.
                continue;
            }
            let fixed = self.state.lookup_account(id).is_some_and(|account| {
                let total = if side == 0 {
                    account.debits_posted.checked_add(account.debits_pending)
                } else {
                    account.credits_posted.checked_add(account.credits_pending)
                };
                // A post checks no limit: the pending transfer reserved the amount.
                let limited = movement == Movement::Transfer && account.flags.contains(limit);
                !account.flags.contains(AccountFlags::CLOSED)
                    && !limited
                    && total
                        .and_then(|total| total.checked_add(self.amounts))
                        .is_some()
            });
            if !fixed {
                reads |= bit(id);
            }
        }
        reads
    }
}

/// How a unit moves an account's balances, for [`Escrow::reads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Movement {
    /// A single-phase or pending transfer, or a refund: checks closing, overflow, limits.
    Transfer,
    /// Posting a pending transfer: checks closing and overflow.
    Post,
    /// Voiding or expiring a pending transfer: checks nothing of the accounts.
    Release,
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
        if let Some(&(first, _)) = batches.first() {
            assert!(first > self.last_timestamp, "time must move forward");
        }
        let count = self.part_count();
        let mut results: Vec<Vec<ResultCode>> = batches
            .iter()
            .map(|(_, b)| vec![ResultCode::Ok; b.len()])
            .collect();
        // Per part, its units in log order.
        let mut queues: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (u, unit) in plan.units.iter().enumerate() {
            for (part, queue) in queues.iter_mut().enumerate() {
                if unit.mask & (1 << part) != 0 {
                    queue.push(u);
                }
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
        let mut idle = Held::new(count);
        for part in self.take_parts() {
            idle.insert(part);
        }
        loop {
            let next: Vec<Vec<usize>> = (0..count).map(|p| ready_on(p, &done, &first)).collect();
            let mut ready: Vec<usize> = next
                .iter()
                .flatten()
                .copied()
                .filter(|&u| {
                    (0..count).all(|p| plan.units[u].mask & (1 << p) == 0 || next[p].contains(&u))
                })
                .collect();
            ready.sort_unstable();
            ready.dedup();
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
            ran[u] = true;
            for part in (0..count).filter(|p| unit.mask & (1 << p) != 0) {
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
        let parts = (0..count).map(|part| idle.take(part)).collect();
        self.restore_parts(parts, plan.last_timestamp);
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// An id on `part` of `parts`, the `n`th found from 1.
    fn id_on(part: usize, parts: usize, n: usize) -> u128 {
        (1..)
            .filter(|&id| part_of(id, parts) == part)
            .nth(n)
            .unwrap_or(0)
    }

    #[test]
    fn only_sides_that_cannot_fail_for_their_account_become_deltas() {
        use tally_types::{Account, AccountFlags as A, TransferFlags as T};
        const PARTS: usize = 8;
        let [
            free,
            credit_limit,
            no_overdraft,
            closing,
            full,
            source,
            fresh,
        ] = [1, 2, 3, 4, 5, 6, 7].map(|part| id_on(part, PARTS, 0));
        let account = |id, flags| Account {
            id,
            ledger: 1,
            code: 1,
            flags,
            ..Account::default()
        };
        let mut state = StateMachine::with_parts(PARTS);
        let accounts = [
            account(free, A::empty()),
            account(credit_limit, A::CREDITS_MUST_NOT_EXCEED_DEBITS),
            account(no_overdraft, A::DEBITS_MUST_NOT_EXCEED_CREDITS),
            account(closing, A::empty()),
            account(full, A::empty()),
            account(source, A::empty()),
        ];
        let setup = Batch::CreateAccounts(accounts.to_vec());
        assert!(state.apply(1, &setup).iter().all(|r| *r == ResultCode::Ok));
        let n = std::cell::Cell::new(0);
        let transfer = |debit, credit, amount, flags| {
            n.set(n.get() + 1);
            Transfer {
                id: id_on(0, PARTS, n.get()),
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                ledger: 1,
                code: 1,
                flags,
                ..Transfer::default()
            }
        };
        let fill = transfer(source, full, u128::MAX - 10, T::empty());
        let reserved = transfer(free, source, 5, T::PENDING);
        let reserved_to_closing = transfer(free, closing, 5, T::PENDING);
        let paid = transfer(free, no_overdraft, 5, T::empty());
        let committed = vec![fill, reserved, reserved_to_closing, paid];
        let committed = Batch::CreateTransfers(committed);
        assert!(
            state
                .apply(10, &committed)
                .iter()
                .all(|r| *r == ResultCode::Ok)
        );
        let settle = |flags, of: &Transfer| Transfer {
            pending_id: of.id,
            amount: 5,
            ..transfer(0, 0, 0, flags)
        };
        let create_fresh = Batch::CreateAccounts(vec![account(fresh, A::empty())]);
        let payments = Batch::CreateTransfers(vec![
            transfer(no_overdraft, free, 5, T::empty()),
            transfer(free, credit_limit, 5, T::empty()),
            transfer(free, closing, 5, T::empty()),
            transfer(source, closing, 0, T::PENDING.with(T::CLOSING_CREDIT)),
            transfer(free, full, 100, T::empty()),
            transfer(free, fresh, 5, T::empty()),
            transfer(free, no_overdraft, 5, T::BALANCING_DEBIT),
            transfer(free, source, 5, T::PENDING),
            settle(T::POST_PENDING_TRANSFER, &reserved),
            settle(T::VOID_PENDING_TRANSFER, &reserved_to_closing),
            settle(T::REFUND, &paid),
        ]);
        let planned = plan(&state, &[(100, &create_fresh), (200, &payments)]).expect("planned");
        let bit = |id| 1u64 << part_of(id, PARTS);
        let sides: Vec<(u64, u64)> = planned.units[1..]
            .iter()
            .map(|unit| (unit.deltas, unit.reads))
            .collect();
        let expected = vec![
            (bit(free), bit(no_overdraft)),
            (bit(free), bit(credit_limit)),
            (bit(free), bit(closing)),
            (0, bit(source) | bit(closing)),
            // `full` could overflow its credits.
            (bit(free), bit(full)),
            (bit(free), bit(fresh)),
            (0, bit(free) | bit(no_overdraft)),
            (bit(free) | bit(source), 0),
            // A post checks no limit; a void of a transfer to an account being closed
            // waits for it; a refund's payer is the original's payee, whose limit counts.
            (bit(free) | bit(source), 0),
            (bit(free), bit(closing)),
            (bit(free), bit(no_overdraft)),
        ];
        assert_eq!(sides, expected);
        for unit in &planned.units {
            let transfer_part = 1;
            assert_eq!(unit.deltas & !unit.mask, 0);
            assert_eq!(unit.deltas & (unit.reads | transfer_part), 0);
        }
    }

    #[test]
    fn escrow_lets_payments_to_one_hot_part_be_decided_side_by_side() {
        let unit = |mask, deltas, reads| Unit {
            batch: 0,
            work: Work::Events { start: 0, end: 1 },
            mask,
            deltas,
            reads,
        };
        // Two payments to an account on part 1, recorded on parts 0 and 2, then a unit
        // that reads the account.
        let plan = Plan {
            units: vec![
                unit(0b011, 0b010, 0),
                unit(0b110, 0b010, 0),
                unit(0b010, 0, 0b010),
            ],
            last_timestamp: 0,
        };
        let event = STEPS_PER_EVENT;
        let decided = event - STEPS_PER_DELTA;
        let handed_off = PlanCost {
            work: 3 * event,
            critical_path: 3 * event,
        };
        assert_eq!(plan.cost(), handed_off);
        // Both decided at once; the read waits for both deltas, applied one by one.
        let with_deltas = PlanCost {
            work: 3 * event,
            critical_path: decided + 2 * STEPS_PER_DELTA + event,
        };
        assert_eq!(plan.cost_with_deltas(), with_deltas);
    }
}
