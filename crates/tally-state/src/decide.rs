//! Deciding a unit without the parts it only adds to (escrow, docs/sharding.md).
//!
//! A plan made with the escrow analysis marks, per unit, the parts whose accounts the
//! unit only adds to ([`crate::Unit::deltas`]): their sides cannot fail and cannot
//! change what the unit does. A unit is then decided holding only the rest of its
//! parts ([`Deciding`]). For the accounts of the parts it does not hold it reads the
//! copies the planner took from the committed state ([`DeltaAccounts`]: their ledger
//! and flags are fixed for the group, and no check can fail on their balances), and
//! what it would do to them is kept, step by step, as [`Deltas`]. Each such part
//! applies them in its own log order ([`Deltas::apply_to`]), so every account's
//! balances, transfer list, balance history and change events come out as serially.

use crate::apply::{Held, Parts, Slot, record_balances_in};
use crate::layout::Layout;
use crate::part::{Balances, ChangeFill, Part, TransferRef};
use std::collections::HashMap;
use tally_types::Account;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The accounts a plan's units only add to, as the committed state held them when
/// the group was planned: where each one is, and its record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaAccounts {
    slots: FastMap<u128, Slot>,
    records: FastMap<Slot, Account>,
}

impl DeltaAccounts {
    /// Keeps `account`, found at `slot` (once is enough).
    pub(crate) fn insert(&mut self, slot: Slot, account: Account) {
        if self.slots.insert(account.id, slot).is_none() {
            self.records.insert(slot, account);
        }
    }

    /// True when `id` is kept.
    pub(crate) fn contains(&self, id: u128) -> bool {
        self.slots.contains_key(&id)
    }

    /// The number of accounts kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no unit of the plan takes deltas.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// One thing a decided unit does to an account of a part it did not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Add these balances (field by field, wrapping: a release subtracts).
    Add(Balances),
    /// Append a stored transfer to the account's transfer list.
    History(TransferRef),
    /// Append the account's balances as they are now to its balance history.
    Balances {
        timestamp: u64,
        transfer_ref: TransferRef,
    },
    /// Name the account as it is now on one side of a change event recorded elsewhere.
    Complete { key: (u64, u128), credit: bool },
}

/// What a decided unit does to the accounts of the parts it did not hold, in the order
/// it did it. Each such part applies them ([`Deltas::apply_to`]) after every unit before
/// this one in its log order and before every unit after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deltas {
    steps: Vec<(Slot, Step)>,
}

impl Deltas {
    /// True when the unit changed nothing outside the parts it held.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The parts the steps go to, as a mask.
    pub fn parts(&self) -> u64 {
        self.steps
            .iter()
            .fold(0, |mask, (slot, _)| mask | 1 << slot.part)
    }

    /// Applies the steps that go to `part`'s accounts, in order.
    pub fn apply_to(&self, part: &mut Part) {
        let index = part.index();
        for &(slot, step) in self.steps.iter().filter(|(slot, _)| slot.part == index) {
            let account = slot.index;
            match step {
                Step::Add(delta) => {
                    let now = Balances::of(&part.accounts[account as usize]);
                    part.set_balances(account, now.wrapping_add(delta));
                }
                Step::History(transfer_ref) => part.append_history(account, transfer_ref),
                Step::Balances {
                    timestamp,
                    transfer_ref,
                } => record_balances_in(part, account, timestamp, transfer_ref),
                Step::Complete { key, credit } => {
                    if part.capturing {
                        let account = part.accounts[account as usize];
                        part.change_fills.push(ChangeFill {
                            key,
                            credit,
                            account,
                        });
                    }
                }
            }
        }
    }
}

/// The parts a unit is decided with: those it holds, and for the accounts of the others
/// the planner's copies, changed only by this unit.
pub(crate) struct Deciding<'a> {
    held: &'a mut Held,
    accounts: &'a DeltaAccounts,
    /// Accounts of parts not held, as this unit has left them so far.
    changed: Vec<(Slot, Account)>,
    deltas: &'a mut Deltas,
}

impl<'a> Deciding<'a> {
    /// Deciding with `held`, reading `accounts` for the parts not held, into `deltas`
    /// (cleared first).
    pub(crate) fn new(
        held: &'a mut Held,
        accounts: &'a DeltaAccounts,
        deltas: &'a mut Deltas,
    ) -> Self {
        deltas.steps.clear();
        Deciding {
            held,
            accounts,
            changed: Vec::new(),
            deltas,
        }
    }

    fn holds(&self, slot: Slot) -> bool {
        self.held.holds(slot.part)
    }
}

impl Parts for Deciding<'_> {
    fn layout(&self) -> Layout {
        self.held.layout()
    }

    fn get(&self, part: usize) -> &Part {
        self.held.get(part)
    }

    fn get_mut(&mut self, part: usize) -> &mut Part {
        self.held.get_mut(part)
    }

    fn each_held(&mut self, visit: impl FnMut(&mut Part)) {
        self.held.each_held(visit);
    }

    fn find_account(&self, id: u128) -> Option<Slot> {
        let part = self.layout().part_of(id);
        if self.held.holds(part) {
            return self.held.find_account(id);
        }
        match self.accounts.slots.get(&id) {
            Some(&slot) => Some(slot),
            None => {
                panic!("a unit reached account {id} of part {part}, which its plan did not give it")
            }
        }
    }

    fn account(&self, slot: Slot) -> Account {
        if self.holds(slot) {
            return self.held.account(slot);
        }
        match self.changed.iter().find(|(at, _)| *at == slot) {
            Some(&(_, account)) => account,
            None => self.accounts.records[&slot],
        }
    }

    fn set_balances(&mut self, slot: Slot, balances: Balances) {
        if self.holds(slot) {
            return self.held.set_balances(slot, balances);
        }
        let mut account = self.account(slot);
        let delta = balances.wrapping_sub(Balances::of(&account));
        balances.store(&mut account);
        match self.changed.iter_mut().find(|(at, _)| *at == slot) {
            Some((_, changed)) => *changed = account,
            None => self.changed.push((slot, account)),
        }
        self.deltas.steps.push((slot, Step::Add(delta)));
    }

    fn append_history(&mut self, slot: Slot, transfer_ref: TransferRef) {
        if self.holds(slot) {
            return self.held.append_history(slot, transfer_ref);
        }
        self.deltas.steps.push((slot, Step::History(transfer_ref)));
    }

    fn record_balances(&mut self, slot: Slot, timestamp: u64, transfer_ref: TransferRef) {
        if self.holds(slot) {
            return self.held.record_balances(slot, timestamp, transfer_ref);
        }
        let step = Step::Balances {
            timestamp,
            transfer_ref,
        };
        self.deltas.steps.push((slot, step));
    }

    fn complete_change(&mut self, slot: Slot, key: (u64, u128), credit: bool) {
        if !self.holds(slot) {
            self.deltas
                .steps
                .push((slot, Step::Complete { key, credit }));
        }
    }

    fn begin_chain(&mut self) {
        assert!(self.deltas.is_empty(), "a chain is a whole unit");
        self.held.begin_chain();
    }

    fn roll_back_chain(&mut self) {
        self.held.roll_back_chain();
        self.deltas.steps.clear();
        self.changed.clear();
    }

    fn end_chain(&mut self) {
        self.held.end_chain();
    }
}
