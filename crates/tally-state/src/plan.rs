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

use crate::apply::{Slot, unit_ranges};
use crate::decide::DeltaAccounts;
use crate::escrow::{Escrow, Movement};
use crate::layout::Layout;
use crate::state::StateMachine;
use std::collections::{HashMap, HashSet};

type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use tally_types::{Batch, NS_PER_S, Transfer, TransferFlags, TransferKind};

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
    /// with escrow could decide the unit without them. Executors today hold all of `mask`;
    /// only [`plan_with_escrow`] sets it.
    pub deltas: u64,
    /// The parts of `mask` whose accounts' balances the unit's outcome may depend on.
    pub reads: u64,
    /// The unit's entries in [`Plan::touches`] (a range).
    pub touches: (u32, u32),
}

/// An account a unit moves, once per event that moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    /// The account.
    pub account: u128,
    /// True when its part is in the unit's [`Unit::deltas`]: the unit only adds to it.
    pub delta: bool,
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

    /// The parts of [`Unit::mask`], lowest first.
    pub fn parts(&self) -> impl Iterator<Item = usize> + use<> {
        crate::cost::bits(self.mask)
    }
}

/// The units of one group, in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The units, in log order.
    pub units: Vec<Unit>,
    /// The accounts each unit moves ([`Unit::touches`]).
    pub touches: Vec<Touch>,
    /// The stamp of the group's last event: the state's `last_timestamp` afterwards.
    pub last_timestamp: u64,
    /// The layout the plan routes by: the state's.
    pub layout: Layout,
    /// The accounts that units only add to ([`Touch::delta`]), as the committed state
    /// holds them: what [`crate::decide_unit`] reads instead of their parts.
    pub delta_accounts: DeltaAccounts,
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

/// Plans `batches` (each with its stamp, in log order) against the committed `state`,
/// as the executor runs them: every unit holds every part it touches (no
/// [`Unit::deltas`], no [`Plan::touches`]).
pub fn plan(state: &StateMachine, batches: &[(u64, &Batch)]) -> Result<Plan, Serial> {
    plan_in(state, batches, false)
}

/// [`plan`] with the escrow analysis: which parts each unit only adds to
/// ([`Unit::deltas`]), which accounts it reads, and the accounts each unit moves
/// ([`Plan::touches`]). For the parallelism profile and the tests of the design.
pub fn plan_with_escrow(state: &StateMachine, batches: &[(u64, &Batch)]) -> Result<Plan, Serial> {
    plan_in(state, batches, true)
}

fn plan_in(state: &StateMachine, batches: &[(u64, &Batch)], escrow: bool) -> Result<Plan, Serial> {
    let layout = state.layout();
    if layout.count() == 1 {
        return Err(Serial::OnePart);
    }
    let Some(&(last_stamp, last_batch)) = batches.last() else {
        return Ok(Plan {
            last_timestamp: state.last_timestamp(),
            layout,
            ..Plan::default()
        });
    };
    let last_timestamp = last_stamp + last_batch.len().saturating_sub(1) as u64;
    if expires_inside(batches, last_timestamp) {
        return Err(Serial::ExpiryInsideGroup);
    }
    if batches.iter().any(|(_, batch)| batch.is_imported()) {
        return Err(Serial::Imported);
    }
    // Expiries are released before a batch, up to its first stamp (as `apply` does): an
    // instant inside the last batch's span waits for the next group, as it would serially.
    let due = due_expiries(state, last_stamp);
    let mut planner = Planner {
        state,
        layout,
        escrow: if escrow {
            Escrow::new(state, batches, &due)
        } else {
            Escrow::off(state)
        },
        referenced: referenced_ids(batches),
        created: IdMap::default(),
        plan: Plan {
            last_timestamp,
            layout,
            ..Plan::default()
        },
    };
    let mut due = due.into_iter().peekable();
    for (batch_index, &(stamp, batch)) in batches.iter().enumerate() {
        let batch_index = u32::try_from(batch_index).expect("fewer than 2^32 batches");
        while let Some(&(at, id)) = due.peek().filter(|(at, _)| *at <= stamp) {
            due.next();
            planner.plan_expiry(batch_index, at, id);
        }
        match batch {
            Batch::CreateAccounts(events) => {
                for (start, end) in unit_ranges(events, 0) {
                    let mask = events[start..end]
                        .iter()
                        .fold(0, |m, a| m | planner.bit(a.id));
                    let work = Work::Events {
                        start: start as u32,
                        end: end as u32,
                    };
                    planner.push_unit(batch_index, work, (mask, mask, 0), &[]);
                }
            }
            Batch::CreateTransfers(events) => {
                for (start, end) in unit_ranges(events, 0) {
                    planner.plan_transfers(batch_index, events, (start, end));
                }
            }
        }
    }
    assert!(due.next().is_none(), "every due expiry planned");
    Ok(planner.plan)
}

/// The accounts a transfer moves: debit, then credit.
type Moved = [u128; 2];

/// Builds one group's plan, unit by unit.
struct Planner<'a> {
    state: &'a StateMachine,
    layout: Layout,
    escrow: Escrow<'a>,
    /// Ids that a later event of the group references.
    referenced: HashSet<u128, foldhash::fast::RandomState>,
    /// Referenced ids created in this group: the parts of their accounts (and of the
    /// transfer each one references), and the accounts they move.
    created: IdMap<u128, (u64, Moved)>,
    plan: Plan,
}

impl Planner<'_> {
    fn bit(&self, id: u128) -> u64 {
        1u64 << self.layout.part_of(id)
    }

    /// The parts of transfer `id`'s accounts, and the accounts: from `stored`, its
    /// record in the committed state, or from the group's earlier events (transfers
    /// never change once created).
    fn accounts_of(&self, id: u128, stored: Option<&Transfer>) -> (u64, Moved) {
        match stored {
            Some(t) => (
                self.bit(t.debit_account_id) | self.bit(t.credit_account_id),
                [t.debit_account_id, t.credit_account_id],
            ),
            None => self.created.get(&id).copied().unwrap_or_default(),
        }
    }

    fn plan_expiry(&mut self, batch: u32, at: u64, id: u128) {
        let pending = self
            .state
            .lookup_transfer(id)
            .expect("a listed expiry exists");
        let moved = [pending.debit_account_id, pending.credit_account_id];
        let mask = self.bit(id) | self.bit(moved[0]) | self.bit(moved[1]);
        let reads = self
            .escrow
            .reads(&pending, Movement::Release, |id| self.bit(id));
        let needed = self.bit(id) | reads;
        self.push_unit(
            batch,
            Work::Expire { at, id },
            (mask, needed, reads),
            &moved,
        );
    }

    /// Plans one unlinked transfer or one whole chain, `events[start..end]`.
    fn plan_transfers(&mut self, batch: u32, events: &[Transfer], (start, end): (usize, usize)) {
        // `needed`: the parts the unit's outcome depends on; `reads`: those of accounts
        // whose balances it reads.
        let (mut mask, mut needed, mut reads) = (0, 0, 0);
        let mut moved = Vec::with_capacity(2 * (end - start));
        for t in &events[start..end] {
            let bit = |id| self.bit(id);
            let (accounts, accounts_moved) = match t.kind() {
                None => (0, [0, 0]),
                Some(TransferKind::SinglePhase | TransferKind::Pending) => {
                    reads |= self.escrow.reads(t, Movement::Transfer, bit);
                    let ids = [t.debit_account_id, t.credit_account_id];
                    (bit(ids[0]) | bit(ids[1]), ids)
                }
                Some(kind) => {
                    // The referenced transfer's own part decides (its status, its
                    // refunded total); its accounts move as the kind says.
                    let referenced = t.pending_id;
                    let original = self.state.lookup_transfer(referenced);
                    let (parts, [debit, credit]) = self.accounts_of(referenced, original.as_ref());
                    let parts = bit(referenced) | parts;
                    reads |= match (original, kind) {
                        (None, _) => parts,
                        (Some(o), TransferKind::Refund) => {
                            let back = Transfer {
                                debit_account_id: o.credit_account_id,
                                credit_account_id: o.debit_account_id,
                                flags: TransferFlags::empty(),
                                ..o
                            };
                            self.escrow.reads(&back, Movement::Transfer, bit)
                        }
                        (Some(p), TransferKind::PostPending) => {
                            self.escrow.reads(&p, Movement::Post, bit)
                        }
                        (Some(p), _) => self.escrow.reads(&p, Movement::Release, bit),
                    };
                    needed |= bit(referenced);
                    let ids = match kind {
                        TransferKind::Refund => [credit, debit],
                        _ => [debit, credit],
                    };
                    (parts, ids)
                }
            };
            mask |= self.bit(t.id) | accounts;
            needed |= self.bit(t.id) | reads;
            moved.extend(accounts_moved.into_iter().filter(|&id| id != 0));
            if self.referenced.contains(&t.id) {
                // For a post, void or refund this includes the referenced id's part
                // too: a superset, which is allowed.
                let entry = self.created.entry(t.id).or_default();
                *entry = (entry.0 | accounts, accounts_moved);
            }
        }
        let work = Work::Events {
            start: start as u32,
            end: end as u32,
        };
        self.push_unit(batch, work, (mask, needed, reads), &moved);
    }

    /// Keeps the committed record of `account` (of `part`), which a unit only adds to:
    /// escrow marks only accounts that exist before the group.
    fn keep_delta_account(&mut self, part: usize, account: u128) {
        if self.plan.delta_accounts.contains(account) {
            return;
        }
        let home = &self.state.parts[part];
        let index = home
            .account_position(account)
            .expect("an account that takes deltas exists before the group");
        let slot = Slot { part, index };
        self.plan
            .delta_accounts
            .insert(slot, home.accounts[index as usize]);
    }

    /// Adds a unit with its `(mask, needed, reads)` parts and the accounts it moves.
    fn push_unit(&mut self, batch: u32, work: Work, masks: (u64, u64, u64), moved: &[u128]) {
        let (mask, needed, reads) = masks;
        let deltas = mask & !needed;
        let first = self.plan.touches.len();
        let escrow = self.escrow.is_on();
        for &account in moved.iter().filter(|_| escrow) {
            let part = self.layout.part_of(account);
            let delta = deltas & (1 << part) != 0;
            self.plan.touches.push(Touch { account, delta });
            if delta {
                self.keep_delta_account(part, account);
            }
        }
        let touches = first as u32..self.plan.touches.len() as u32;
        self.plan.units.push(Unit {
            batch,
            work,
            mask,
            deltas,
            reads,
            touches: (touches.start, touches.end),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::part_of;
    use tally_types::ResultCode;

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
        let funded = id_on(3, PARTS, 1);
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
            account(funded, A::DEBITS_MUST_NOT_EXCEED_CREDITS),
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
        let funding = transfer(free, funded, 1_000, T::empty());
        let committed = vec![fill, reserved, reserved_to_closing, paid, funding];
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
            transfer(funded, free, 600, T::empty()),
            transfer(funded, free, 400, T::empty()),
        ]);
        let planned =
            plan_with_escrow(&state, &[(100, &create_fresh), (200, &payments)]).expect("planned");
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
            // Whatever their order and outcomes, `funded`'s debits stay within its credits.
            (bit(free) | bit(funded), 0),
            (bit(free) | bit(funded), 0),
        ];
        assert_eq!(sides, expected);
        for unit in &planned.units {
            let transfer_part = 1;
            assert_eq!(unit.deltas & !unit.mask, 0);
            assert_eq!(unit.deltas & (unit.reads | transfer_part), 0);
        }
    }
}
