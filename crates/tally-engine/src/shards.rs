//! Shard threads: apply one durable group on N threads at once, each owning one part of
//! the state, with results equal to the serial reference (SPEC §3.1).
//!
//! The apply thread plans the group ([`tally_state::plan`]): units in log order, each
//! with the mask of parts it touches. It then moves each part, by pointer, to its shard
//! thread through that thread's bounded queue, with the shared plan. Every shard runs the
//! units of its mask in log order:
//!
//! * a unit on its part alone runs at once, with no coordination;
//! * a unit spanning parts runs on the thread of its lowest part (the *owner*). Every
//!   other shard of the unit, on reaching it, **lends** its part to the owner through
//!   the owner's queue and waits for it to come back. The owner runs the unit once it
//!   holds every part, then returns them.
//!
//! No locks: a part is only ever reachable from the one thread that holds its `Box`, and
//! a box changes threads only through a channel (which orders the memory accesses).
//!
//! No deadlock: take the earliest unit not yet run. Each of its shards has finished
//! every earlier unit of its own, so each reaches it, lends (or, the owner, collects),
//! and it runs. By induction every unit runs.
//!
//! Bounded: a shard's queue holds at most the group start, one lent part from each other
//! shard (a lender blocks until its part comes back), and one returned part, so a queue
//! of `shards + 2` never fills (the stop message comes only between groups).

use crossbeam_channel::{Receiver, Sender, bounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use tally_log::LogRecord;
use tally_state::{Held, Part, Plan, StateMachine, Unit, Work, run_unit};
use tally_types::ResultCode;

/// What a shard thread receives.
enum Message {
    /// Apply a group: its records and plan, and this shard's part.
    Group(Arc<Group>, Box<Part>),
    /// Another shard's part, lent for unit `unit` (owned by this shard).
    Lend { unit: u32, part: Box<Part> },
    /// This shard's own part, back from the owner of a spanning unit.
    Return(Box<Part>),
    /// Exit (sent between groups, when the pool is dropped). Needed because every
    /// shard holds senders to every queue, its own included, so queues never close.
    Stop,
}

/// A group on its way through the shards.
struct Group {
    records: Vec<LogRecord>,
    plan: Plan,
}

/// One event's result: (batch in the group, event in the batch, code).
type ResultSlot = (u32, u32, ResultCode);

/// What a shard thread sends back at the end of a group.
struct Finished {
    part: Box<Part>,
    /// (batch, event, code) for each event this shard ran.
    results: Vec<ResultSlot>,
}

/// Counts a service can read: how much of the work spanned shards.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    /// Units run by plan (events, chains, expiries).
    pub units: AtomicU64,
    /// Of those, units that spanned two or more shards.
    pub units_spanning: AtomicU64,
    /// Of those, units whose owner had to wait for a lent part (it was not there yet).
    pub units_waited: AtomicU64,
    /// Groups that ran on the apply thread alone (see [`tally_state::Serial`]).
    pub groups_serial: AtomicU64,
}

/// The shard threads of one ledger.
pub(crate) struct ShardPool {
    inboxes: Vec<Sender<Message>>,
    finished: Receiver<Finished>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<ShardCounters>,
}

impl ShardPool {
    /// Starts `shards` threads (2 to [`tally_state::PARTS_MAX`]).
    pub fn start(shards: usize, counters: Arc<ShardCounters>) -> std::io::Result<ShardPool> {
        assert!((2..=tally_state::PARTS_MAX).contains(&shards));
        let (finished_tx, finished) = bounded(shards);
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| bounded(shards + 2)).unzip();
        let mut threads = Vec::with_capacity(shards);
        for (index, inbox) in receivers.into_iter().enumerate() {
            let worker = Shard {
                index,
                inbox,
                peers: inboxes.clone(),
                finished: finished_tx.clone(),
                counters: Arc::clone(&counters),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("tally-shard-{index}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(ShardPool {
            inboxes,
            finished,
            threads,
            counters,
        })
    }

    /// Applies a durable group to `state` (split into as many parts as there are
    /// shards): by plan on the shard threads, or serially when the plan says so.
    /// Returns one result list per record.
    pub fn apply(&self, state: &mut StateMachine, records: Vec<LogRecord>) -> Vec<Vec<ResultCode>> {
        assert_eq!(state.part_count(), self.inboxes.len(), "one part per shard");
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
        if let Some(first) = records.first() {
            assert!(
                first.timestamp > state.last_timestamp(),
                "time moves forward"
            );
        }
        let last_timestamp = plan.last_timestamp;
        let mut results: Vec<Vec<Option<ResultCode>>> =
            records.iter().map(|r| vec![None; r.batch.len()]).collect();
        let group = Arc::new(Group { records, plan });
        let shards = self.inboxes.len();
        for (inbox, part) in self.inboxes.iter().zip(state.take_parts()) {
            inbox
                .send(Message::Group(Arc::clone(&group), part))
                .expect("shard threads live as long as the pool");
        }
        let mut parts = Vec::with_capacity(shards);
        for _ in 0..shards {
            let finished = self
                .finished
                .recv()
                .expect("a shard thread died while applying a group");
            for (batch, event, code) in finished.results {
                let slot = &mut results[batch as usize][event as usize];
                assert!(slot.is_none(), "each event runs once");
                *slot = Some(code);
            }
            parts.push(finished.part);
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
    finished: Sender<Finished>,
    counters: Arc<ShardCounters>,
}

impl Shard {
    fn run(self) {
        while let Ok(message) = self.inbox.recv() {
            let (group, part) = match message {
                Message::Group(group, part) => (group, part),
                Message::Stop => return,
                Message::Lend { .. } | Message::Return(_) => {
                    panic!("shard {}: a part arrived outside a group", self.index)
                }
            };
            let (part, results) = self.apply_group(&group, part);
            if self.finished.send(Finished { part, results }).is_err() {
                return;
            }
        }
    }

    fn apply_group(&self, group: &Group, own: Box<Part>) -> (Box<Part>, Vec<ResultSlot>) {
        let me = 1u64 << self.index;
        let mut held = Held::new(self.peers.len());
        held.insert(own);
        // Parts lent for units this shard owns but has not reached yet.
        let mut early: Vec<(u32, Box<Part>)> = Vec::new();
        let mut results = Vec::new();
        let mut scratch = Vec::new();
        let (mut units, mut spanning, mut waited) = (0, 0, 0);
        for (u, unit) in group.plan.units.iter().enumerate() {
            if unit.mask & me == 0 {
                continue;
            }
            let u = u as u32;
            let owner = unit.owner();
            if owner == self.index {
                units += 1;
                if unit.spans_parts() {
                    spanning += 1;
                    if self.collect_lends(u, unit, &mut held, &mut early) {
                        waited += 1;
                    }
                }
                self.run_unit(group, unit, &mut held, &mut results, &mut scratch);
                for part in 0..self.peers.len() {
                    if part != self.index && unit.mask & (1 << part) != 0 {
                        self.peers[part]
                            .send(Message::Return(held.take(part)))
                            .expect("lender waits for its part");
                    }
                }
            } else {
                let part = held.take(self.index);
                self.peers[owner]
                    .send(Message::Lend { unit: u, part })
                    .expect("owner shard is alive");
                loop {
                    match self.inbox.recv().expect("the pool outlives a group") {
                        Message::Return(part) => {
                            held.insert(part);
                            break;
                        }
                        Message::Lend { unit, part } => early.push((unit, part)),
                        Message::Group(..) | Message::Stop => {
                            panic!("a group started or stopped inside a group")
                        }
                    }
                }
            }
        }
        assert!(early.is_empty(), "every lent part was used");
        self.counters.units.fetch_add(units, Ordering::Relaxed);
        self.counters
            .units_spanning
            .fetch_add(spanning, Ordering::Relaxed);
        self.counters
            .units_waited
            .fetch_add(waited, Ordering::Relaxed);
        (held.take(self.index), results)
    }

    /// Gathers the parts of unit `u` lent by the other shards of its mask. Returns true
    /// when at least one was not there yet (the owner had to wait).
    fn collect_lends(
        &self,
        u: u32,
        unit: &Unit,
        held: &mut Held,
        early: &mut Vec<(u32, Box<Part>)>,
    ) -> bool {
        let mut missing = (unit.mask & !(1 << self.index)).count_ones();
        let mut index = 0;
        while index < early.len() {
            if early[index].0 == u {
                let (_, part) = early.swap_remove(index);
                held.insert(part);
                missing -= 1;
            } else {
                index += 1;
            }
        }
        let waited = missing > 0;
        while missing > 0 {
            match self.inbox.recv().expect("the pool outlives a group") {
                Message::Lend { unit, part } if unit == u => {
                    held.insert(part);
                    missing -= 1;
                }
                Message::Lend { unit, part } => early.push((unit, part)),
                Message::Return(_) => panic!("a part returned to a shard that lent none"),
                Message::Group(..) | Message::Stop => {
                    panic!("a group started or stopped inside a group")
                }
            }
        }
        waited
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
