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

use crate::sync::channel::{Receiver, Sender, bounded};
use crate::sync::{AtomicU64, JoinHandle, Ordering, ThreadBuilder};
use std::sync::Arc;
use tally_log::LogRecord;
use tally_state::{Held, Part, Plan, StateMachine, Unit, Work, run_unit};
use tally_types::ResultCode;

/// What a shard thread receives.
enum Message {
    /// Apply a group: its records, plan and part forwarding.
    Group(Arc<Group>),
    /// A part, for the next unit of it that this shard executes.
    Part(Box<Part>),
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
            let mut slot = offsets[u] as usize;
            for (part, next) in next.iter_mut().enumerate() {
                if unit.mask & (1 << part) != 0 {
                    forward[slot] = *next;
                    *next = u as u32;
                    slot += 1;
                }
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
    /// Groups that ran on the apply thread alone (see [`tally_state::Serial`]).
    pub groups_serial: AtomicU64,
}

impl ShardCounters {
    /// Back to zero (after recovery, so that the counts describe live traffic only).
    pub fn reset(&self) {
        for counter in [
            &self.units,
            &self.units_spanning,
            &self.units_waited,
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
    pub counters: Arc<ShardCounters>,
}

impl ShardPool {
    /// Starts `shards` threads (2 to [`tally_state::PARTS_MAX`]).
    pub fn start(shards: usize, counters: Arc<ShardCounters>) -> std::io::Result<ShardPool> {
        assert!((2..=tally_state::PARTS_MAX).contains(&shards));
        // Per group: every part once and one `Done` per shard.
        let (back_tx, back) = bounded(2 * shards);
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| bounded(shards + 2)).unzip();
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
            counters,
        })
    }

    /// Applies a durable group to `state` (split into as many parts as there are
    /// shards): by plan on the shard threads, or serially when the plan says so.
    /// Returns one result list per record.
    pub fn apply(&self, state: &mut StateMachine, records: Vec<LogRecord>) -> Vec<Vec<ResultCode>> {
        let shards = self.inboxes.len();
        assert_eq!(state.part_count(), shards, "one part per shard");
        let stamped: Vec<_> = records.iter().map(|r| (r.timestamp, &r.batch)).collect();
        let plan = match tally_state::plan(state, &stamped) {
            Ok(plan) => plan,
            Err(_) => {
                self.counters.groups_serial.fetch_add(1, Ordering::Relaxed);
                return records
                    .iter()
                    .map(|r| state.apply(r.timestamp, &r.batch))
                    .collect();
            }
        };
        self.run_plan(state, records, plan)
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
                u => self.inboxes[group.plan.units[u as usize].owner()]
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
            }
        }
    }

    /// Runs this shard's units of the group. False when the apply thread is gone.
    fn apply_group(&self, group: &Group) -> bool {
        let mut held = Held::new(group.plan.layout);
        let mut results = Vec::new();
        let mut scratch = Vec::new();
        let (mut units, mut spanning, mut waited) = (0, 0, 0);
        for (u, unit) in group.plan.units.iter().enumerate() {
            if unit.owner() != self.index {
                continue;
            }
            units += 1;
            spanning += u64::from(unit.spans_parts());
            let mut had_to_wait = false;
            while let Some(missing) = (0..self.peers.len())
                .find(|&part| unit.mask & (1 << part) != 0 && !held.holds(part))
            {
                had_to_wait = true;
                match self.inbox.recv().expect("the pool outlives a group") {
                    Message::Part(part) => held.insert(part),
                    Message::Group(..) | Message::Stop => {
                        panic!(
                            "shard {}: waiting for part {missing}, got a new group or stop",
                            self.index
                        )
                    }
                }
            }
            waited += u64::from(had_to_wait);
            self.run_unit(group, unit, &mut held, &mut results, &mut scratch);
            self.forward(group, u, unit, &mut held);
        }
        assert!(
            (0..self.peers.len()).all(|part| !held.holds(part)),
            "every part moved on after its last unit here"
        );
        self.back
            .send(Back::Done {
                results,
                units,
                spanning,
                waited,
            })
            .is_ok()
    }

    /// Sends each part of unit `u` to the executor of that part's next unit, keeps it
    /// when that is this shard, or returns it after its last unit.
    fn forward(&self, group: &Group, u: usize, unit: &Unit, held: &mut Held) {
        let mut slot = group.offsets[u] as usize;
        for part in 0..self.peers.len() {
            if unit.mask & (1 << part) == 0 {
                continue;
            }
            let next = group.forward[slot];
            slot += 1;
            if next == NONE {
                let _ = self.back.send(Back::Part(held.take(part)));
                continue;
            }
            let executor = group.plan.units[next as usize].owner();
            if executor != self.index {
                self.peers[executor]
                    .send(Message::Part(held.take(part)))
                    .expect("shard threads live as long as the pool");
            }
        }
        debug_assert_eq!(slot, group.offsets[u + 1] as usize);
    }

    fn run_unit(
        &self,
        group: &Group,
        unit: &Unit,
        held: &mut Held,
        results: &mut Vec<ResultSlot>,
        scratch: &mut Vec<ResultCode>,
    ) {
        let record = &group.records[unit.batch as usize];
        match unit.work {
            Work::Expire { .. } => run_unit(held, unit, record.timestamp, &record.batch, &mut []),
            Work::Events { start, end } => {
                scratch.clear();
                scratch.resize((end - start) as usize, ResultCode::Ok);
                run_unit(held, unit, record.timestamp, &record.batch, scratch);
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
        let pool = ShardPool::start(parts, Arc::new(ShardCounters::default())).expect("start");
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
/// queue operations applies a small group that crosses parts, with the serial results,
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

    fn check(parts: usize) {
        loom::model(move || {
            let (mut reference, mut state, records) = scenario(parts);
            let expected: Vec<Vec<ResultCode>> = records
                .iter()
                .map(|r| reference.apply(r.timestamp, &r.batch))
                .collect();
            let pool = ShardPool::start(parts, Arc::new(ShardCounters::default()))
                .expect("start shard threads");
            let got = pool.apply(&mut state, records);
            drop(pool);
            assert_eq!(got, expected);
            assert_eq!(state.image(), reference.image());
        });
    }

    #[test]
    fn loom_two_shards_hand_parts_over_without_deadlock() {
        check(2);
    }

    #[test]
    fn loom_three_shards_hand_parts_over_without_deadlock() {
        check(3);
    }
}
