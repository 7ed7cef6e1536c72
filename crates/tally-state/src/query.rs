//! `query_accounts` and `query_transfers` (docs/spec.md §2, "Queries"), answered a
//! bounded step at a time so that a caller holding the state's read lock for one step
//! never holds up commits for longer than that step.
//!
//! Each part is walked on its own, in one of three ways:
//! * a user-data field is given: its chain in the part's [`crate::value_index`], newest
//!   first, the other fields checked on each record;
//! * else `ledger` or `code` is given: the part's chain of the records with that value
//!   ([`crate::ledger_code_index`]), entered near the time range through its marks
//!   (found by binary search), newest first, or oldest first a stretch between marks
//!   at a time; with both, the chain with fewer marks in the range, the other field
//!   checked on each record;
//! * only a time range: the part's store in timestamp order from the first record in
//!   range (found by binary search), every record an answer.
//!
//! A part is done once it has `limit` matches in the order asked (no later record of
//! that part can come before them), or it is out of records in range. The answer merges
//! the parts' matches by timestamp. `timestamp_max` is fixed at the state's last
//! timestamp when the query starts: records committed between steps are not answered,
//! so the answer is the state as it stood at the start (records are never changed or
//! removed once committed; account balances are read at the last step).

use crate::ledger_code_index::{Field, FieldChains, LedgerCodeIndex};
use crate::part::Part;
use crate::state::StateMachine;
use crate::value_index::{UserDataIndexes, account_user_data};
use std::collections::VecDeque;
use tally_types::{Account, QueryFilter, Transfer};

/// Records a step looks at (all parts together): about 0.2 ms of decoding. A step may
/// go over by one stretch of a ledger's or a code's chain (64 links, unread).
pub const QUERY_STEP_RECORDS: usize = 4_096;

/// Which records a query lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryTarget {
    /// `query_accounts`.
    Accounts,
    /// `query_transfers`.
    Transfers,
}

/// Where one part's walk stands.
#[derive(Debug, Clone)]
enum Walk {
    /// Along the chain of user-data field `field`; `next` is the next record to look at.
    Chain { field: usize, next: Option<u32> },
    /// The store in timestamp order: positions `next..end`.
    Forward { next: u32, end: u32 },
    /// The store newest first: positions `start..next`, `next - 1` first.
    Backward { start: u32, next: u32 },
    /// Down the chain of a ledger or a code, newest first, `next` first: store
    /// positions from `end` on are passed over, and the walk ends below `start`.
    Down {
        field: Field,
        next: Option<u32>,
        start: u32,
        end: u32,
    },
    /// Up the chain of `value`, oldest first, one stretch between two of its marks at
    /// a time: `pending` holds the stretch being answered, oldest last; `stretch` is the
    /// next, the one up to the mark of that index (past the last mark, up to the head).
    Up {
        field: Field,
        value: u32,
        stretch: usize,
        pending: Vec<u32>,
        start: u32,
        end: u32,
    },
    /// Nothing more to look at.
    Done,
}

/// A query in progress: [`Query::step`] until it returns true, then [`Query::accounts`]
/// or [`Query::transfers`].
#[derive(Debug, Clone)]
pub struct Query {
    target: QueryTarget,
    filter: QueryFilter,
    limit: usize,
    walks: Vec<Walk>,
    /// Per part: (timestamp, position) of the matches, in the walk's order.
    found: Vec<VecDeque<(u64, u32)>>,
    /// Records whose fields were checked so far, all parts.
    examined: u64,
    /// Records reached along a chain and passed over unread (past the range), so far.
    passed_over: u64,
}

impl Query {
    /// Starts a query over `state` as it stands now.
    pub fn new(state: &StateMachine, target: QueryTarget, filter: &QueryFilter) -> Query {
        let mut filter = *filter;
        let last = state.last_timestamp();
        if filter.timestamp_max == 0 || filter.timestamp_max > last {
            filter.timestamp_max = last;
        }
        let mut query = Query {
            target,
            filter,
            limit: filter.limit_effective(),
            walks: Vec::new(),
            found: Vec::new(),
            examined: 0,
            passed_over: 0,
        };
        let empty = last == 0 || filter.timestamp_min > filter.timestamp_max;
        for part in state.parts() {
            let walk = if empty { Walk::Done } else { query.start(part) };
            query.walks.push(walk);
            query.found.push(VecDeque::new());
        }
        query
    }

    fn start(&self, part: &Part) -> Walk {
        let given = [
            self.filter.user_data_128,
            u128::from(self.filter.user_data_64),
            u128::from(self.filter.user_data_32),
        ];
        if let Some(field) = given.iter().position(|&value| value != 0) {
            let value = given[field];
            let next = match self.target {
                QueryTarget::Accounts => indexes(part, self.target).by_field[field]
                    .newest(value, |p| {
                        account_user_data(&part.accounts[p as usize])[field]
                    }),
                QueryTarget::Transfers => indexes(part, self.target).by_field[field]
                    .newest(value, |p| part.transfers.user_data(p as usize)[field]),
            };
            return Walk::Chain { field, next };
        }
        let start = first_at_or_after(part, self.target, self.filter.timestamp_min);
        let end = first_at_or_after(part, self.target, self.filter.timestamp_max + 1);
        if self.filter.ledger != 0 || self.filter.code != 0 {
            return self.start_chained(ledger_codes(part, self.target), start, end);
        }
        if self.filter.reversed {
            Walk::Backward { start, next: end }
        } else {
            Walk::Forward { next: start, end }
        }
    }

    /// The walk along the chain of the ledger or the code (those given) with fewer
    /// marks in store positions `start..end`, entered near them.
    fn start_chained(&self, index: &LedgerCodeIndex, start: u32, end: u32) -> Walk {
        // The code first: a tie goes to it, usually the rarer of the two.
        let given = [
            (Field::Code, u32::from(self.filter.code)),
            (Field::Ledger, self.filter.ledger),
        ];
        let mut fewest: Option<(usize, Field, u32)> = None;
        for (field, value) in given.into_iter().filter(|&(_, value)| value != 0) {
            let chains = index.field(field);
            // No record has the value: nothing matches.
            if chains.newest(value).is_none() {
                return Walk::Done;
            }
            let marks = chains.marks(value);
            let in_range = marks
                .partition_point(|&m| m < end)
                .saturating_sub(marks.partition_point(|&m| m < start));
            if fewest.is_none_or(|(fewest, ..)| in_range < fewest) {
                fewest = Some((in_range, field, value));
            }
        }
        let Some((_, field, value)) = fewest else {
            return Walk::Done;
        };
        let chains = index.field(field);
        let marks = chains.marks(value);
        if self.filter.reversed {
            // From the first mark at or past the range's end, else from the head.
            let past = marks.get(marks.partition_point(|&m| m < end)).copied();
            let next = past.or(chains.newest(value));
            Walk::Down {
                field,
                next,
                start,
                end,
            }
        } else {
            let stretch = marks.partition_point(|&m| m < start);
            let pending = Vec::new();
            Walk::Up {
                field,
                value,
                stretch,
                pending,
                start,
                end,
            }
        }
    }

    /// Records whose fields were checked so far: what the indexes saved is the
    /// records not looked at.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// Records reached along a ledger's or a code's chain and passed over unread, out
    /// of the range, so far: what the chain's marks bound.
    pub fn passed_over(&self) -> u64 {
        self.passed_over
    }

    /// Looks at about [`QUERY_STEP_RECORDS`] records; true once the answer is whole.
    pub fn step(&mut self, state: &StateMachine) -> bool {
        let parts = state.parts();
        assert_eq!(parts.len(), self.walks.len(), "a query keeps to its state");
        let mut budget = QUERY_STEP_RECORDS;
        for (index, part) in parts.iter().enumerate() {
            while budget > 0 && !matches!(self.walks[index], Walk::Done) {
                budget = budget.saturating_sub(self.advance(index, part));
            }
        }
        self.walks.iter().all(|walk| matches!(walk, Walk::Done))
    }

    /// One record of part `index`'s walk; what it cost, in records looked at (a
    /// stretch of a chain walked up counts each of its links).
    fn advance(&mut self, index: usize, part: &Part) -> usize {
        let cost = 1;
        let (position, chained) = match &mut self.walks[index] {
            Walk::Done => return cost,
            Walk::Chain { next: None, .. } => {
                self.walks[index] = Walk::Done;
                return cost;
            }
            Walk::Chain {
                field,
                next: Some(position),
            } => {
                let at = *position;
                let field = *field;
                let older = indexes(part, self.target).by_field[field].older(at);
                self.walks[index] = Walk::Chain { field, next: older };
                (at, true)
            }
            Walk::Forward { next, end } => {
                if next >= end {
                    self.walks[index] = Walk::Done;
                    return cost;
                }
                *next += 1;
                (*next - 1, false)
            }
            Walk::Backward { start, next } => {
                if next <= start {
                    self.walks[index] = Walk::Done;
                    return cost;
                }
                *next -= 1;
                (*next, false)
            }
            Walk::Down { .. } | Walk::Up { .. } => match self.along_chain(index, part) {
                Along::Record(position) => (position, false),
                Along::PassedOver(cost) => return cost,
            },
        };
        self.examined += 1;
        let timestamp = self.matching(part, position);
        let found = &mut self.found[index];
        match timestamp {
            Some(timestamp) => {
                found.push_back((timestamp, position));
                if chained && !self.filter.reversed {
                    // A chain runs newest first: keep its oldest `limit`.
                    if found.len() > self.limit {
                        found.pop_front();
                    }
                } else if found.len() == self.limit {
                    self.walks[index] = Walk::Done;
                }
            }
            None => {
                // A chain runs newest first: past the range's start, nothing older counts.
                if chained && self.timestamp_of(part, position) < self.filter.timestamp_min {
                    self.walks[index] = Walk::Done;
                }
            }
        }
        cost
    }

    /// The next record of part `index`'s walk along a ledger's or a code's chain.
    fn along_chain(&mut self, index: usize, part: &Part) -> Along {
        let chained = ledger_codes(part, self.target);
        match &mut self.walks[index] {
            Walk::Down {
                field,
                next,
                start,
                end,
            } => {
                let Some(position) = next.filter(|&position| position >= *start) else {
                    self.walks[index] = Walk::Done;
                    return Along::PassedOver(1);
                };
                *next = chained.field(*field).older(position);
                if position >= *end {
                    self.passed_over += 1;
                    return Along::PassedOver(1);
                }
                Along::Record(position)
            }
            Walk::Up {
                field,
                value,
                stretch,
                pending,
                start,
                end,
            } => {
                let mut cost = 1;
                if pending.is_empty() {
                    let chains = chained.field(*field);
                    let Some(walked) = walk_stretch(chains, *value, *stretch, *start, pending)
                    else {
                        self.walks[index] = Walk::Done;
                        return Along::PassedOver(cost);
                    };
                    *stretch += 1;
                    cost += walked;
                }
                // An empty stretch (the head's, when the head is a mark or below the
                // range): the next call finds no more.
                let Some(position) = pending.pop() else {
                    return Along::PassedOver(cost);
                };
                if position >= *end {
                    self.passed_over += 1 + pending.len() as u64;
                    self.walks[index] = Walk::Done;
                    return Along::PassedOver(cost);
                }
                Along::Record(position)
            }
            _ => unreachable!("a walk along a ledger's or a code's chain"),
        }
    }

    /// The record's timestamp when it passes the filter.
    fn matching(&self, part: &Part, position: u32) -> Option<u64> {
        match self.target {
            QueryTarget::Accounts => {
                let account = &part.accounts[position as usize];
                self.filter
                    .matches_account(account)
                    .then_some(account.timestamp)
            }
            QueryTarget::Transfers => {
                let transfer = part.transfers.get(position as usize);
                self.filter
                    .matches_transfer(&transfer)
                    .then_some(transfer.timestamp)
            }
        }
    }

    fn timestamp_of(&self, part: &Part, position: u32) -> u64 {
        record_timestamp(part, self.target, position)
    }

    /// The matches of every part, merged by timestamp in the order asked, at most the
    /// limit: (part, position).
    fn merged(&self) -> Vec<(usize, u32)> {
        let mut all: Vec<(u64, usize, u32)> = self
            .found
            .iter()
            .enumerate()
            .flat_map(|(part, found)| found.iter().map(move |&(t, p)| (t, part, p)))
            .collect();
        all.sort_unstable_by_key(|&(timestamp, _, _)| timestamp);
        if self.filter.reversed {
            all.reverse();
        }
        all.truncate(self.limit);
        all.into_iter().map(|(_, part, p)| (part, p)).collect()
    }

    /// The accounts found, as they stand in `state` now (a finished accounts query).
    pub fn accounts(&self, state: &StateMachine) -> Vec<Account> {
        assert_eq!(self.target, QueryTarget::Accounts);
        let parts = state.parts();
        self.merged()
            .into_iter()
            .map(|(part, position)| parts[part].accounts[position as usize])
            .collect()
    }

    /// The transfers found (a finished transfers query).
    pub fn transfers(&self, state: &StateMachine) -> Vec<Transfer> {
        assert_eq!(self.target, QueryTarget::Transfers);
        let parts = state.parts();
        self.merged()
            .into_iter()
            .map(|(part, position)| parts[part].transfers.get(position as usize))
            .collect()
    }
}

fn indexes(part: &Part, target: QueryTarget) -> &UserDataIndexes {
    match target {
        QueryTarget::Accounts => &part.account_values,
        QueryTarget::Transfers => &part.transfer_values,
    }
}

fn ledger_codes(part: &Part, target: QueryTarget) -> &LedgerCodeIndex {
    match target {
        QueryTarget::Accounts => &part.account_ledger_codes,
        QueryTarget::Transfers => &part.transfer_ledger_codes,
    }
}

/// What one call of [`Query::along_chain`] came to.
enum Along {
    /// A record to check against the filter (its cost is 1).
    Record(u32),
    /// No record to check: what the call cost, in records looked at.
    PassedOver(usize),
}

/// Collects into `pending` (empty) the records of `value` in stretch `stretch` of its
/// chain (after the mark before it, up to its mark or the head: at most
/// [`crate::ledger_code_index::MARK_EVERY`]) from store position `start` on, newest
/// first; the links walked, or `None` past the last stretch.
fn walk_stretch(
    chains: &FieldChains,
    value: u32,
    stretch: usize,
    start: u32,
    pending: &mut Vec<u32>,
) -> Option<usize> {
    let marks = chains.marks(value);
    let top = match stretch.cmp(&marks.len()) {
        std::cmp::Ordering::Less => Some(marks[stretch]),
        std::cmp::Ordering::Equal => chains.newest(value),
        std::cmp::Ordering::Greater => return None,
    };
    let floor = stretch.checked_sub(1).map(|before| marks[before]);
    debug_assert!(pending.is_empty());
    let mut next = top;
    let mut walked = 0;
    while let Some(position) = next {
        walked += 1;
        if position < start || floor.is_some_and(|floor| position <= floor) {
            break;
        }
        pending.push(position);
        next = chains.older(position);
    }
    Some(walked)
}

fn record_timestamp(part: &Part, target: QueryTarget, position: u32) -> u64 {
    match target {
        QueryTarget::Accounts => part.accounts[position as usize].timestamp,
        QueryTarget::Transfers => part.transfers.get(position as usize).timestamp,
    }
}

/// The first position of a part's records stamped at or after `timestamp`.
fn first_at_or_after(part: &Part, target: QueryTarget, timestamp: u64) -> u32 {
    let at = match target {
        QueryTarget::Accounts => part.first_account_at_or_after(timestamp),
        QueryTarget::Transfers => part.first_transfer_at_or_after(timestamp),
    };
    u32::try_from(at).expect("fewer than 2^32 records in a part")
}

impl StateMachine {
    /// Bytes held by the query indexes (user data, ledger and code) of accounts and
    /// transfers, all parts.
    pub fn query_index_bytes(&self) -> usize {
        self.parts()
            .iter()
            .map(|part| {
                part.account_values.bytes()
                    + part.transfer_values.bytes()
                    + part.account_ledger_codes.bytes()
                    + part.transfer_ledger_codes.bytes()
            })
            .sum()
    }

    /// Bytes held by the balance histories of accounts with `history`, all parts.
    pub fn balance_history_bytes(&self) -> usize {
        self.parts()
            .iter()
            .map(|part| part.balance_history.bytes())
            .sum()
    }

    /// `query_accounts`, all steps at once (the reference; an engine steps a [`Query`]).
    pub fn query_accounts(&self, filter: &QueryFilter) -> Vec<Account> {
        let mut query = Query::new(self, QueryTarget::Accounts, filter);
        while !query.step(self) {}
        query.accounts(self)
    }

    /// `query_transfers`, all steps at once (the reference; an engine steps a [`Query`]).
    pub fn query_transfers(&self, filter: &QueryFilter) -> Vec<Transfer> {
        let mut query = Query::new(self, QueryTarget::Transfers, filter);
        while !query.step(self) {}
        query.transfers(self)
    }
}
