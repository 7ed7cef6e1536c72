//! Shard threads: apply one durable group on N threads at once, each owning one part of
//! the state, with results equal to the serial reference (docs/spec.md §3.1).
//!
//! The apply thread plans the group ([`tally_state::plan`]): units in log order, each
//! with the mask of parts it touches and an *executor*, the shard of its lowest part.
//! Each shard runs the units it executes in log order. A part is a token: it is always
//! held by exactly one thread, and moves, by pointer, through the receiver's bounded
//! queue. After a unit runs, each of its parts goes straight to the executor of that
//! part's next unit (or stays, if that is the same shard, or goes back to the apply
//! thread after its last unit). A unit runs once its executor holds all its parts.
//!
//! * A unit on one part whose neighbours in that part's list run on the same shard
//!   costs no coordination at all.
//! * A run of units spanning the same parts keeps the parts on one shard: they move
//!   only when the next unit of a part runs elsewhere.
//!
//! No locks: a part is reachable only from the thread that holds its `Box`, and a box
//! changes threads only through a channel (which orders the memory accesses).
//!
//! No deadlock: take the earliest unit not yet run. Every earlier unit of each of its
//! parts has run, so each part was sent to its executor; the executor has run all its
//! earlier units; so it runs. By induction every unit runs.
//!
//! Bounded: a shard's queue holds at most the group start, the N parts (each part is in
//! one place), and the stop message, so a queue of `shards + 2` never fills.

use crate::config::ShardExecution;
use crate::sync::channel::{Receiver, Sender, bounded};
use crate::sync::{AtomicU64, JoinHandle, Ordering, ThreadBuilder};
use std::collections::{HashMap, VecDeque};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use tally_log::LogRecord;
use tally_state::{Deltas, Held, Part, Plan, StateMachine, Unit, Work, decide_unit, run_unit};
use tally_types::{Batch, ResultCode};

/// What a shard thread receives.
enum Message {
    /// Apply a group: its records, plan and part forwarding.
    Group(Arc<Group>),
    /// A part, for the next unit of it that this shard executes.
    Part(Box<Part>),
    /// What unit `.0` of the current group decided for this shard's part, which only
    /// takes its deltas.
    Deltas(u32, Arc<Deltas>),
    /// Exit (sent between groups, when the pool is dropped). Needed because every
    /// shard holds senders to every queue, its own included, so queues never close.
    Stop,
}

/// What goes back to the apply thread.
enum Back {
    /// A shard thread panicked (a broken invariant): the group can never finish, and
    /// the apply thread must fail instead of waiting for it.
    Died(usize),
    /// A part whose units in this group have all run.
    Part(Box<Part>),
    /// A shard has run all its units: the results of its events.
    Done {
        results: Vec<ResultSlot>,
        units: u64,
        spanning: u64,
        waited: u64,
        with_deltas: u64,
    },
}

/// No next unit.
const NONE: u32 = u32::MAX;

/// A group on its way through the shards.
struct Group {
    records: Vec<LogRecord>,
    plan: Plan,
    /// For unit `u`, `forward[offsets[u]..offsets[u + 1]]`: for each part of its mask
    /// (lowest first), the next unit of that part, or [`NONE`].
    forward: Vec<u32>,
    offsets: Vec<u32>,
    /// Each part's first unit, or [`NONE`].
    first: Vec<u32>,
}

impl Group {
    /// The shard that runs unit `v`'s step on `part`: the part's own shard when the unit
    /// only adds to it there (it applies the unit's deltas), otherwise the shard of the
    /// unit's lowest deciding part.
    fn executor(&self, v: u32, part: usize) -> usize {
        executor(&self.plan.units[v as usize], part)
    }

    fn new(records: Vec<LogRecord>, plan: Plan, parts: usize) -> Group {
        let units = &plan.units;
        let mut offsets = Vec::with_capacity(units.len() + 1);
        offsets.push(0u32);
        for unit in units {
            let last = offsets.last().copied().unwrap_or(0);
            offsets.push(last + unit.mask.count_ones());
        }
        let mut forward = vec![NONE; offsets.last().copied().unwrap_or(0) as usize];
        let mut next = vec![NONE; parts];
        for (u, unit) in units.iter().enumerate().rev() {
            for (slot, part) in (offsets[u] as usize..).zip(unit.parts()) {
                forward[slot] = next[part];
                next[part] = u as u32;
            }
        }
        Group {
            records,
            plan,
            forward,
            offsets,
            first: next,
        }
    }
}

/// The shard that runs `unit`'s step on `part` (see [`Group::executor`]).
fn executor(unit: &Unit, part: usize) -> usize {
    if unit.deltas & (1 << part) != 0 {
        part
    } else {
        (unit.mask & !unit.deltas).trailing_zeros() as usize
    }
}

/// Steps of the plans' cost model ([`tally_state::STEPS_PER_EVENT`] an event) that one
/// hand-off of a part costs the unit waiting for it: a queue push and, as often as not,
/// a futex wake-up of a parked thread. On 2 cores the engine alone ran payments that
/// nearly all span shards at about 8 µs each by plan (125,087 a second), against under
/// 1 µs serially (docs/performance.md, "Shards"): a few µs a hand-off, which 64 steps
/// (eight events' worth) puts on the safe side of serial.
const HANDOFF_STEPS: u64 = 64;

/// Steps one message of deltas costs: its push, its receipt and its bookkeeping, about
/// an event's. It holds up no unit of its sender.
const DELTA_MESSAGE_STEPS: u64 = 8;

/// What a plan is estimated to take on the shard threads, and serially, in steps of
/// the cost model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Estimate {
    by_plan: u64,
    serial: u64,
}

impl Estimate {
    /// The plan's critical path (or its busiest part, if longer) plus every hand-off of
    /// a part between threads and every message of deltas; against the plan's work.
    fn of(plan: &Plan, shards: usize) -> Estimate {
        let escrow = plan.units.iter().any(|unit| unit.deltas != 0);
        let cost = match escrow {
            true => plan.cost_with_deltas(),
            false => plan.cost(),
        };
        // Where each part is: the apply thread (`shards`) or a shard.
        let mut at = vec![shards; shards];
        let mut handoffs = 0u64;
        let mut delta_messages = 0u64;
        for unit in &plan.units {
            delta_messages += u64::from(unit.deltas.count_ones());
            // A part the unit only adds to is needed at its own shard (its deltas).
            for part in unit.parts() {
                let runs_on = executor(unit, part);
                handoffs += u64::from(at[part] != runs_on);
                at[part] = runs_on;
            }
        }
        // Each part that left goes back to the apply thread.
        handoffs += at.iter().filter(|&&at| at != shards).count() as u64;
        Estimate {
            by_plan: cost.critical_path.max(cost.busiest_part)
                + handoffs * HANDOFF_STEPS
                + delta_messages * DELTA_MESSAGE_STEPS,
            serial: cost.work,
        }
    }

    /// True when the plan is worth its threads: estimated at most three quarters of
    /// the serial time (the margin covers what the model leaves out: the threads'
    /// competition for cores with the log thread and the callers).
    fn by_plan_wins(&self) -> bool {
        self.by_plan.saturating_mul(4) <= self.serial.saturating_mul(3)
    }
}

/// After a plan estimated slower than applying its group serially, how many groups
/// run serially without being planned before the next is planned again: planning costs
/// about a fifth of applying, and traffic that spans shards in one group mostly does
/// in the next.
const SERIAL_GROUPS_UNPLANNED: u64 = 15;

/// The most units of one group that may send deltas to one shard: each is one message
/// in that shard's queue, which is sized for them. A group with more runs with every
/// unit holding all of its parts.
const DELTAS_PER_GROUP_MAX: usize = 65_536;

/// `plan`, or, when some shard would receive more than [`DELTAS_PER_GROUP_MAX`] delta
/// messages, the same plan with every unit holding all of its parts.
fn within_delta_bound(mut plan: Plan, shards: usize) -> Plan {
    let mut messages = vec![0usize; shards];
    for unit in &plan.units {
        for (part, count) in messages.iter_mut().enumerate() {
            *count += usize::from(unit.deltas & (1 << part) != 0);
        }
    }
    if messages.iter().any(|&count| count > DELTAS_PER_GROUP_MAX) {
        for unit in &mut plan.units {
            unit.deltas = 0;
        }
    }
    plan
}

/// The deltas this shard's own part must apply, in log order, that it has not applied
/// yet. A part applies its deltas in log order, but decides its own units without
/// waiting for them unless a unit moves an account a delta still due adds to: deltas
/// add amounts that cannot fail, so only each account's order matters (its balances
/// as later units read them, its transfer list, its balance rows).
#[derive(Default)]
struct Backlog {
    /// Deltas received, by unit, until applied.
    arrived: FastMap<u32, Arc<Deltas>>,
    /// The units whose deltas are due here, in log order.
    due: VecDeque<u32>,
    /// Per account of this part, how many of `due` add to it.
    accounts: FastMap<u128, u32>,
}

/// One event's result: (batch in the group, event in the batch, code).
type ResultSlot = (u32, u32, ResultCode);

/// Counts a service can read: how much of the work spanned shards.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    /// Units run by plan (events, chains, expiries).
    pub units: AtomicU64,
    /// Of those, units that spanned two or more shards.
    pub units_spanning: AtomicU64,
    /// Units whose executor had to block until a part arrived (spanning or not: a
    /// part may be away at the shard that ran its previous unit).
    pub units_waited: AtomicU64,
    /// Units decided without a part they only add to: their deltas went to that part's
    /// shard instead of the part coming to them.
    pub units_with_deltas: AtomicU64,
    /// Groups that ran on the apply thread alone: refused by the planner (see
    /// [`tally_state::Serial`]), estimated slower by plan, or following such a group
    /// unplanned ([`ShardExecution`]).
    pub groups_serial: AtomicU64,
}

impl ShardCounters {
    /// Back to zero (after recovery, so that the counts describe live traffic only).
    pub fn reset(&self) {
        for counter in [
            &self.units,
            &self.units_spanning,
            &self.units_waited,
            &self.units_with_deltas,
            &self.groups_serial,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// The shard threads of one ledger.
pub(crate) struct ShardPool {
    inboxes: Vec<Sender<Message>>,
    back: Receiver<Back>,
    threads: Vec<JoinHandle<()>>,
    /// The fewest events of a group planned with escrow ([`crate::Config::shard_deltas_from`]).
    deltas_from: usize,
    /// [`crate::Config::shard_execution`].
    execution: ShardExecution,
    /// Groups still to run serially without a plan (see [`SERIAL_GROUPS_UNPLANNED`]).
    unplanned: AtomicU64,
    pub counters: Arc<ShardCounters>,
}

impl ShardPool {
    /// Starts `shards` threads (2 to [`tally_state::PARTS_MAX`]).
    pub fn start(
        shards: usize,
        deltas_from: usize,
        execution: ShardExecution,
        counters: Arc<ShardCounters>,
    ) -> std::io::Result<ShardPool> {
        assert!((2..=tally_state::PARTS_MAX).contains(&shards));
        // Per group: every part once and one `Done` per shard.
        let (back_tx, back) = bounded(2 * shards);
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| bounded(shards + 2 + DELTAS_PER_GROUP_MAX))
            .unzip();
        let mut threads = Vec::with_capacity(shards);
        for (index, inbox) in receivers.into_iter().enumerate() {
            let worker = Shard {
                index,
                inbox,
                peers: inboxes.clone(),
                back: back_tx.clone(),
            };
            threads.push(
                ThreadBuilder::new()
                    .name(format!("tally-shard-{index}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(ShardPool {
            inboxes,
            back,
            threads,
            deltas_from,
            execution,
            unplanned: AtomicU64::new(0),
            counters,
        })
    }

    /// Applies a durable group to `state` (split into as many parts as there are
    /// shards): by plan on the shard threads, or serially on this thread when the plan
    /// says so or, with [`ShardExecution::WhenFaster`], when it would be slower.
    /// Returns one result list per record.
    pub fn apply(&self, state: &mut StateMachine, records: Vec<LogRecord>) -> Vec<Vec<ResultCode>> {
        let shards = self.inboxes.len();
        assert_eq!(state.part_count(), shards, "one part per shard");
        let stamped: Vec<_> = records.iter().map(|r| (r.timestamp, &r.batch)).collect();
        let when_faster = self.execution == ShardExecution::WhenFaster;
        let skip = |left: u64| left.checked_sub(1);
        let unplanned = self
            .unplanned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, skip);
        if when_faster && unplanned.is_ok() {
            return self.apply_serially(state, &stamped);
        }
        let events: usize = records.iter().map(|r| r.batch.len()).sum();
        let planned = if events >= self.deltas_from {
            tally_state::plan_with_escrow(state, &stamped)
                .map(|plan| within_delta_bound(plan, shards))
        } else {
            tally_state::plan(state, &stamped)
        };
        let plan = match planned {
            Ok(plan) => plan,
            Err(_) => return self.apply_serially(state, &stamped),
        };
        if when_faster && !Estimate::of(&plan, shards).by_plan_wins() {
            self.unplanned
                .store(SERIAL_GROUPS_UNPLANNED, Ordering::Relaxed);
            return self.apply_serially(state, &stamped);
        }
        drop(stamped);
        self.run_plan(state, records, plan)
    }

    /// Applies a group on this thread alone, prefetching across its records.
    fn apply_serially(
        &self,
        state: &mut StateMachine,
        stamped: &[(u64, &Batch)],
    ) -> Vec<Vec<ResultCode>> {
        self.counters.groups_serial.fetch_add(1, Ordering::Relaxed);
        state.apply_run(stamped)
    }

    /// Runs `plan` (made for `records` against `state`) on the shard threads.
    fn run_plan(
        &self,
        state: &mut StateMachine,
        records: Vec<LogRecord>,
        plan: Plan,
    ) -> Vec<Vec<ResultCode>> {
        let shards = self.inboxes.len();
        if let Some(first) = records.first() {
            assert!(
                first.timestamp > state.last_timestamp(),
                "time moves forward"
            );
        }
        let last_timestamp = plan.last_timestamp;
        let mut results: Vec<Vec<Option<ResultCode>>> =
            records.iter().map(|r| vec![None; r.batch.len()]).collect();
        let group = Arc::new(Group::new(records, plan, shards));
        for inbox in &self.inboxes {
            inbox
                .send(Message::Group(Arc::clone(&group)))
                .expect("shard threads live as long as the pool");
        }
        let mut parts = Vec::with_capacity(shards);
        for part in state.take_parts() {
            match group.first[part.index()] {
                NONE => parts.push(part),
                u => self.inboxes[group.executor(u, part.index())]
                    .send(Message::Part(part))
                    .expect("shard threads live as long as the pool"),
            }
        }
        let mut done = 0;
        while done < shards || parts.len() < shards {
            match self
                .back
                .recv()
                .expect("a shard thread died while applying a group")
            {
                Back::Part(part) => parts.push(part),
                Back::Died(shard) => panic!("shard thread {shard} panicked while applying a group"),
                Back::Done {
                    results: slots,
                    units,
                    spanning,
                    waited,
                    with_deltas,
                } => {
                    done += 1;
                    for (batch, event, code) in slots {
                        let slot = &mut results[batch as usize][event as usize];
                        assert!(slot.is_none(), "each event runs once");
                        *slot = Some(code);
                    }
                    self.counters.units.fetch_add(units, Ordering::Relaxed);
                    self.counters
                        .units_spanning
                        .fetch_add(spanning, Ordering::Relaxed);
                    self.counters
                        .units_waited
                        .fetch_add(waited, Ordering::Relaxed);
                    self.counters
                        .units_with_deltas
                        .fetch_add(with_deltas, Ordering::Relaxed);
                }
            }
        }
        state.restore_parts(parts, last_timestamp);
        results
            .into_iter()
            .map(|codes| {
                codes
                    .into_iter()
                    .map(|code| code.expect("every event of the group ran"))
                    .collect()
            })
            .collect()
    }
}

impl Drop for ShardPool {
    fn drop(&mut self) {
        for inbox in &self.inboxes {
            let _ = inbox.send(Message::Stop);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Shard {
    index: usize,
    inbox: Receiver<Message>,
    /// Every shard's queue, this one's included (indexed by shard).
    peers: Vec<Sender<Message>>,
    back: Sender<Back>,
}

/// Tells the apply thread when its shard thread unwinds from a panic.
struct DeathNotice {
    index: usize,
    back: Sender<Back>,
}

impl Drop for DeathNotice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.back.send(Back::Died(self.index));
        }
    }
}

impl Shard {
    fn run(self) {
        let _notice = DeathNotice {
            index: self.index,
            back: self.back.clone(),
        };
        while let Ok(message) = self.inbox.recv() {
            match message {
                Message::Group(group) => {
                    if !self.apply_group(&group) {
                        return;
                    }
                }
                Message::Stop => return,
                Message::Part(part) => {
                    panic!(
                        "shard {}: part {} arrived outside a group",
                        self.index,
                        part.index()
                    )
                }
                Message::Deltas(u, _) => {
                    panic!(
                        "shard {}: deltas of unit {u} arrived outside a group",
                        self.index
                    )
                }
            }
        }
    }

    /// Runs this shard's steps of the group in log order: it decides each unit whose
    /// lowest deciding part (of its mask less its deltas) is this shard's, once it holds
    /// all of them, and applies to its own part, in log order, the deltas of each unit
    /// that only adds to it (see [`Backlog`]). False when the apply thread is gone.
    fn apply_group(&self, group: &Group) -> bool {
        let mut held = Held::new(group.plan.layout);
        let mut backlog = Backlog::default();
        let mut results = Vec::new();
        let mut scratch = Vec::new();
        let (mut units, mut spanning, mut waited, mut with_deltas) = (0, 0, 0, 0);
        let own = 1u64 << self.index;
        for (u, unit) in group.plan.units.iter().enumerate() {
            let deciding = unit.mask & !unit.deltas;
            if deciding.trailing_zeros() as usize == self.index {
                units += 1;
                spanning += u64::from(deciding.count_ones() > 1);
                with_deltas += u64::from(unit.deltas != 0);
                self.settle_before(group, unit, &mut held, &mut backlog);
                waited += u64::from(self.wait_for_parts(deciding, &mut held, &mut backlog));
                self.decide(group, u, unit, &mut held, &mut results, &mut scratch);
                self.forward(group, u, deciding, &mut held, &mut backlog);
            } else if unit.deltas & own != 0 {
                self.wait_for_parts(own, &mut held, &mut backlog);
                backlog.due.push_back(u as u32);
                for account in self.delta_accounts(group, unit) {
                    *backlog.accounts.entry(account).or_default() += 1;
                }
                self.receive_ready(&mut held, &mut backlog);
                self.apply_ready(group, &mut held, &mut backlog);
                self.forward(group, u, own, &mut held, &mut backlog);
            }
        }
        assert!(
            (0..self.peers.len()).all(|part| !held.holds(part)),
            "every part moved on after its last unit here"
        );
        assert!(
            backlog.due.is_empty() && backlog.arrived.is_empty(),
            "every delta applied"
        );
        self.back
            .send(Back::Done {
                results,
                units,
                spanning,
                waited,
                with_deltas,
            })
            .is_ok()
    }

    /// The accounts of this shard's part that `unit` only adds to.
    fn delta_accounts<'g>(&self, group: &'g Group, unit: &Unit) -> impl Iterator<Item = u128> + 'g {
        let (layout, index) = (group.plan.layout, self.index);
        group.plan.touches[unit.touches.0 as usize..unit.touches.1 as usize]
            .iter()
            .filter(move |t| t.delta && layout.part_of(t.account) == index)
            .map(|t| t.account)
    }

    /// Before this shard decides `unit`: applies every due delta to an account of its
    /// part that the unit moves (and those before it), waiting for them as needed. A
    /// unit that names no accounts (accounts created, a reference not found) waits for
    /// all of them.
    fn settle_before(&self, group: &Group, unit: &Unit, held: &mut Held, backlog: &mut Backlog) {
        if backlog.due.is_empty() {
            return;
        }
        self.receive_ready(held, backlog);
        let layout = group.plan.layout;
        let touches = &group.plan.touches[unit.touches.0 as usize..unit.touches.1 as usize];
        let settled = |backlog: &Backlog| {
            backlog.due.is_empty()
                || !touches.is_empty()
                    && touches.iter().all(|t| {
                        layout.part_of(t.account) != self.index
                            || !backlog.accounts.contains_key(&t.account)
                    })
        };
        self.apply_until(group, held, backlog, settled);
    }

    /// Applies due deltas as they arrive, receiving, until `done`.
    fn apply_until(
        &self,
        group: &Group,
        held: &mut Held,
        backlog: &mut Backlog,
        done: impl Fn(&Backlog) -> bool,
    ) {
        self.apply_ready(group, held, backlog);
        while !done(backlog) {
            self.receive(held, backlog);
            self.apply_ready(group, held, backlog);
        }
    }

    /// Applies every due delta that has arrived, in log order, while this shard holds
    /// its part.
    fn apply_ready(&self, group: &Group, held: &mut Held, backlog: &mut Backlog) {
        if !held.holds(self.index) {
            return;
        }
        while let Some(&u) = backlog.due.front() {
            let Some(deltas) = backlog.arrived.remove(&u) else {
                return;
            };
            let mut part = held.take(self.index);
            deltas.apply_to(&mut part);
            held.insert(part);
            backlog.due.pop_front();
            for account in self.delta_accounts(group, &group.plan.units[u as usize]) {
                let left = backlog
                    .accounts
                    .get_mut(&account)
                    .expect("counted when due");
                *left -= 1;
                if *left == 0 {
                    backlog.accounts.remove(&account);
                }
            }
        }
    }

    /// Receives until this shard holds every part of `parts`. True when it had to wait.
    fn wait_for_parts(&self, parts: u64, held: &mut Held, backlog: &mut Backlog) -> bool {
        let mut had_to_wait = false;
        while (0..self.peers.len()).any(|p| parts & (1 << p) != 0 && !held.holds(p)) {
            had_to_wait = true;
            self.receive(held, backlog);
        }
        had_to_wait
    }

    /// Takes in every message already queued, without waiting.
    fn receive_ready(&self, held: &mut Held, backlog: &mut Backlog) {
        while let Ok(message) = self.inbox.try_recv() {
            self.take_in(message, held, backlog);
        }
    }

    /// Waits for one message and takes it in.
    fn receive(&self, held: &mut Held, backlog: &mut Backlog) {
        let message = self.inbox.recv().expect("the pool outlives a group");
        self.take_in(message, held, backlog);
    }

    fn take_in(&self, message: Message, held: &mut Held, backlog: &mut Backlog) {
        match message {
            Message::Part(part) => held.insert(part),
            Message::Deltas(u, arrived) => {
                let before = backlog.arrived.insert(u, arrived);
                assert!(before.is_none(), "one delta message per unit and part");
            }
            Message::Group(..) | Message::Stop => panic!(
                "shard {}: a new group or stop arrived inside a group",
                self.index
            ),
        }
    }

    /// Sends each part of `parts` (of unit `u`'s mask) to the executor of that part's
    /// next step, keeps it when that is this shard, or returns it after its last step.
    /// This shard's own part leaves only once its due deltas are applied.
    fn forward(&self, group: &Group, u: usize, parts: u64, held: &mut Held, backlog: &mut Backlog) {
        let unit = &group.plan.units[u];
        let mut slot = group.offsets[u] as usize;
        for part in unit.parts() {
            let next = group.forward[slot];
            slot += 1;
            if parts & (1 << part) == 0 {
                continue;
            }
            let executor = match next {
                NONE => None,
                next => Some(group.executor(next, part)),
            };
            if executor == Some(self.index) {
                continue;
            }
            if part == self.index {
                self.apply_until(group, held, backlog, |backlog| backlog.due.is_empty());
            }
            match executor {
                None => {
                    let _ = self.back.send(Back::Part(held.take(part)));
                }
                Some(executor) => self.peers[executor]
                    .send(Message::Part(held.take(part)))
                    .expect("shard threads live as long as the pool"),
            }
        }
        debug_assert_eq!(slot, group.offsets[u + 1] as usize);
    }

    /// Runs unit `u` on the parts it decides with, and sends what it decided for each
    /// part it only adds to, to that part's shard.
    fn decide(
        &self,
        group: &Group,
        u: usize,
        unit: &Unit,
        held: &mut Held,
        results: &mut Vec<ResultSlot>,
        scratch: &mut Vec<ResultCode>,
    ) {
        if unit.deltas == 0 {
            return self.run_unit(group, unit, held, results, scratch, None);
        }
        let mut deltas = Deltas::default();
        self.run_unit(group, unit, held, results, scratch, Some(&mut deltas));
        let deltas = Arc::new(deltas);
        for part in (0..self.peers.len()).filter(|p| unit.deltas & (1 << p) != 0) {
            self.peers[part]
                .send(Message::Deltas(u as u32, Arc::clone(&deltas)))
                .expect("shard threads live as long as the pool");
        }
    }

    /// Runs `unit` on `held`: the whole of it, or with `deltas` deciding it without the
    /// parts it only adds to.
    fn run_unit(
        &self,
        group: &Group,
        unit: &Unit,
        held: &mut Held,
        results: &mut Vec<ResultSlot>,
        scratch: &mut Vec<ResultCode>,
        deltas: Option<&mut Deltas>,
    ) {
        let record = &group.records[unit.batch as usize];
        let (timestamp, batch) = (record.timestamp, &record.batch);
        let run = |held: &mut Held, codes: &mut [ResultCode]| match deltas {
            None => run_unit(held, unit, timestamp, batch, codes),
            Some(deltas) => decide_unit(held, &group.plan, unit, timestamp, batch, codes, deltas),
        };
        match unit.work {
            Work::Expire { .. } => run(held, &mut []),
            Work::Events { start, end } => {
                scratch.clear();
                scratch.resize((end - start) as usize, ResultCode::Ok);
                run(held, scratch);
                results.extend(
                    scratch
                        .iter()
                        .enumerate()
                        .map(|(i, code)| (unit.batch, start + i as u32, *code)),
                );
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use tally_types::{Account, Batch, Transfer};

    /// A plan of `units` (mask, events) on two parts, every unit holding its parts.
    fn plan_of(units: &[(u64, u32)]) -> Plan {
        let units = units
            .iter()
            .map(|&(mask, events)| Unit {
                batch: 0,
                work: Work::Events {
                    start: 0,
                    end: events,
                },
                mask,
                deltas: 0,
                reads: mask,
                touches: (0, 0),
            })
            .collect();
        Plan {
            units,
            ..Plan::default()
        }
    }

    #[test]
    fn a_plan_runs_on_the_shards_only_where_it_beats_the_serial_apply() {
        // Every unit spans both parts: a chain as long as the work, plus hand-offs.
        let spanning = Estimate::of(&plan_of(&[(0b11, 1); 100]), 2);
        assert_eq!(spanning.serial, 100 * tally_state::STEPS_PER_EVENT);
        assert!(spanning.by_plan > spanning.serial, "{spanning:?}");
        assert!(!spanning.by_plan_wins());
        // Long units on one part each, alternating: half the time, four hand-offs.
        let alternating: Vec<_> = (0..10).map(|i| (1 << (i % 2), 100)).collect();
        let halves = Estimate::of(&plan_of(&alternating), 2);
        let half = halves.serial / 2;
        assert_eq!(halves.by_plan, half + 4 * HANDOFF_STEPS, "{halves:?}");
        assert!(halves.by_plan_wins());
        // Short units where part 1 goes back and forth between the shards: it moves
        // before nearly every unit, each move dearer than the unit.
        let ping_pong: Vec<_> = (0..20).map(|i| ([0b11, 0b10][i % 2], 1)).collect();
        let moved = Estimate::of(&plan_of(&ping_pong), 2);
        assert!(!moved.by_plan_wins(), "{moved:?}");
    }

    /// A plan that misses a part the unit touches makes a shard thread panic; the apply
    /// thread must then fail too (the engine fails closed), not wait forever.
    #[test]
    fn a_shard_that_panics_fails_the_group_instead_of_hanging_it() {
        let parts = 2;
        let in_part = |part: usize| {
            (1u128..)
                .find(|id| tally_state::part_of(*id, parts) == part)
                .expect("an id in every part")
        };
        let (a, b) = (in_part(0), in_part(1));
        let mut state = StateMachine::with_parts(parts);
        let accounts = [a, b].map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Account::default()
        });
        state.apply(1, &Batch::CreateAccounts(accounts.to_vec()));
        let pay = Transfer {
            id: a,
            debit_account_id: a,
            credit_account_id: b,
            amount: 1,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        let records = vec![LogRecord {
            sequence: 2,
            timestamp: 10,
            batch: Batch::CreateTransfers(vec![pay]),
        }];
        let stamped: Vec<_> = records.iter().map(|r| (r.timestamp, &r.batch)).collect();
        let mut plan = tally_state::plan(&state, &stamped).expect("a plan");
        assert_eq!(plan.units[0].mask, 0b11, "the payment spans both parts");
        plan.units[0].mask = 0b01; // broken: part 1 (the credit account) left out
        let pool = ShardPool::start(
            parts,
            0,
            ShardExecution::Always,
            Arc::new(ShardCounters::default()),
        )
        .expect("start");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run_plan(&mut state, records, plan)
        }));
        let message = outcome.expect_err("the group must fail");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains("shard thread 0 panicked"), "{text}");
    }
}

/// Model-checks the hand-off protocol with loom: every interleaving of the shard threads'
/// queue operations (on three shards, those with at most three preemptions) applies a
/// small group that crosses parts, passing parts and deltas, with the serial results,
/// and never deadlocks (loom fails a model in which every thread blocks). Run:
/// `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom`
/// `cargo test -p tally-engine --lib --release loom_`
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use tally_state::part_of;
    use tally_types::{Account, Batch, Transfer};

    /// The first `n` ids from 1 up whose part among `parts` is `part`.
    fn ids_in(part: usize, parts: usize, n: usize) -> Vec<u128> {
        (1u128..)
            .filter(|id| part_of(*id, parts) == part)
            .take(n)
            .collect()
    }

    fn transfer(id: u128, debit: u128, credit: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: 1,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        }
    }

    /// Accounts in each part, then one batch whose units alternate between one part
    /// and several, with a linked chain across parts.
    fn scenario(parts: usize) -> (StateMachine, StateMachine, Vec<LogRecord>) {
        let accounts: Vec<Vec<u128>> = (0..parts).map(|p| ids_in(p, parts, 2)).collect();
        let ids: Vec<Vec<u128>> = (0..parts)
            .map(|p| {
                ids_in(p, parts, 8)
                    .into_iter()
                    .map(|id| id + 1_000_000)
                    .collect()
            })
            .collect();
        let batch = Batch::CreateAccounts(
            accounts
                .iter()
                .flatten()
                .map(|&id| Account {
                    id,
                    ledger: 1,
                    code: 1,
                    ..Account::default()
                })
                .collect(),
        );
        let mut reference = StateMachine::new();
        let mut state = StateMachine::with_parts(parts);
        assert!(reference.apply(1, &batch).iter().all(|r| r.is_ok()));
        assert!(state.apply(1, &batch).iter().all(|r| r.is_ok()));
        let last = parts - 1;
        let chained = |mut t: Transfer| {
            t.flags = tally_types::TransferFlags::LINKED;
            t
        };
        let transfers = vec![
            transfer(ids[0][0], accounts[0][0], accounts[0][1]),
            transfer(ids[last][0], accounts[0][0], accounts[last][0]),
            transfer(ids[last][1], accounts[last][0], accounts[last][1]),
            chained(transfer(ids[0][1], accounts[last][1], accounts[0][1])),
            transfer(ids[0][1], accounts[0][1], accounts[last][0]), // duplicate id: fails the chain
            transfer(ids[0][2], accounts[0][1], accounts[0][0]),
        ];
        let records = vec![LogRecord {
            sequence: 2,
            timestamp: 100,
            batch: Batch::CreateTransfers(transfers),
        }];
        (reference, state, records)
    }

    /// Checks the scenario on `parts` shards, every interleaving or those with at most
    /// `preemptions` forced switches between threads.
    fn check(parts: usize, preemptions: Option<usize>) {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = preemptions;
        model.check(move || {
            let (mut reference, mut state, records) = scenario(parts);
            let stamped: Vec<_> = records.iter().map(|r| (r.timestamp, &r.batch)).collect();
            let plan = tally_state::plan_with_escrow(&state, &stamped).expect("a plan");
            assert!(plan.units.iter().any(|u| u.deltas != 0), "deltas are sent");
            let expected: Vec<Vec<ResultCode>> = records
                .iter()
                .map(|r| reference.apply(r.timestamp, &r.batch))
                .collect();
            let pool = ShardPool::start(
                parts,
                0,
                ShardExecution::Always,
                Arc::new(ShardCounters::default()),
            )
            .expect("start shard threads");
            let got = pool.apply(&mut state, records);
            drop(pool);
            assert_eq!(got, expected);
            assert_eq!(state.image(), reference.image());
        });
    }

    #[test]
    fn loom_two_shards_hand_parts_over_without_deadlock() {
        check(2, None);
    }

    #[test]
    fn loom_three_shards_hand_parts_over_without_deadlock() {
        // Every interleaving of three shards passing parts and deltas runs for hours;
        // three preemptions a run take seconds.
        check(3, Some(3));
    }
}
