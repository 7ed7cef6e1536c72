//! `get_account_transfers` (docs/spec.md §2, "Reads") and `get_account_balances`
//! ("History and point-in-time balances"), answered a bounded step at a time as
//! queries are ([`crate::Query`]): a caller holding the state's read lock for one step
//! never holds up commits for longer than that step.
//!
//! A transfers read walks the account's history (its transfers in timestamp order),
//! newest or oldest first, over the entries it held when the read began: transfers
//! committed between steps are not answered, so the answer is the account's history as
//! it stood at the start. A walk stops early once it is past the time range, since a
//! history is in timestamp order. A balances read walks the account's balance rows
//! the same way, up to the newest row the account had when it began: a later row,
//! even an imported transfer's stamped in the past, lies beyond it. (An imported
//! transfer stamped before an expiry row already recorded is the exception: its row
//! goes in before the expiry's and changes the rows after it, which a read not yet
//! past them answers as changed.)

use crate::history::HistoryWalk;
use crate::query::QUERY_STEP_RECORDS;
use crate::state::StateMachine;
use tally_types::{AccountBalance, AccountFilter, Transfer};

/// A `get_account_transfers` read in progress: [`AccountTransfersRead::step`] until it
/// returns true, then [`AccountTransfersRead::transfers`].
#[derive(Debug, Clone)]
pub struct AccountTransfersRead {
    filter: AccountFilter,
    limit: usize,
    /// The account's part and the walk of its history; `None` for an unknown account.
    walk: Option<(usize, HistoryWalk)>,
    found: Vec<Transfer>,
}

impl AccountTransfersRead {
    /// Starts the read over `state` as it stands now.
    pub fn new(state: &StateMachine, filter: &AccountFilter) -> AccountTransfersRead {
        let part_index = state.layout.part_of(filter.account_id);
        let part = &state.parts[part_index];
        let walk = part.account_position(filter.account_id).map(|account| {
            (
                part_index,
                part.account_history.walk(account, filter.reversed),
            )
        });
        AccountTransfersRead {
            filter: *filter,
            limit: filter.limit_effective(),
            walk,
            found: Vec::new(),
        }
    }

    /// Reads about [`QUERY_STEP_RECORDS`] entries of the history; true once the read
    /// is over (the limit reached, the time range passed, or the history read).
    pub fn step(&mut self, state: &StateMachine) -> bool {
        let Some((part, walk)) = &mut self.walk else {
            return true;
        };
        let (filter, limit, found) = (&self.filter, self.limit, &mut self.found);
        let histories = &state.parts[*part].account_history;
        let done = walk.step(histories, QUERY_STEP_RECORDS, |transfer_ref| {
            let transfer = state.transfer_by_ref(transfer_ref);
            let past = if filter.reversed {
                transfer.timestamp < filter.timestamp_min
            } else {
                filter.timestamp_max != 0 && transfer.timestamp > filter.timestamp_max
            };
            if past {
                return false;
            }
            if filter.matches(&transfer) {
                found.push(transfer);
            }
            found.len() < limit
        });
        if done {
            self.walk = None;
        }
        done
    }

    /// The transfers found, in the order asked (a finished read); taken out, so a
    /// second call answers none.
    pub fn transfers(&mut self) -> Vec<Transfer> {
        assert!(self.walk.is_none(), "the read is not finished");
        std::mem::take(&mut self.found)
    }
}

/// A `get_account_balances` read in progress: [`AccountBalancesRead::step`] until it
/// returns true, then [`AccountBalancesRead::balances`].
#[derive(Debug, Clone)]
pub struct AccountBalancesRead {
    filter: AccountFilter,
    limit: usize,
    /// What is left to read; `None` for an account without rows, or a read that is over.
    rows: Option<RowsLeft>,
    found: Vec<AccountBalance>,
}

/// The balance rows a read has yet to look at: account `account` of part `part`, with
/// timestamps in `min..=max`.
#[derive(Debug, Clone, Copy)]
struct RowsLeft {
    part: usize,
    account: u32,
    min: u64,
    max: u64,
}

impl AccountBalancesRead {
    /// Starts the read over `state` as it stands now, up to the account's newest row.
    pub fn new(state: &StateMachine, filter: &AccountFilter) -> AccountBalancesRead {
        let part = state.layout.part_of(filter.account_id);
        let max = match filter.timestamp_max {
            0 => u64::MAX,
            max => max,
        };
        let history = &state.parts[part].balance_history;
        let rows = state.parts[part]
            .account_position(filter.account_id)
            .and_then(|account| {
                Some(RowsLeft {
                    part,
                    account,
                    min: filter.timestamp_min,
                    max: max.min(history.newest(account)?),
                })
            })
            .filter(|rows| rows.min <= rows.max);
        AccountBalancesRead {
            filter: *filter,
            limit: filter.limit_effective(),
            rows,
            found: Vec::new(),
        }
    }

    /// Reads about [`QUERY_STEP_RECORDS`] rows; true once the read is over (the limit
    /// reached or the range read). A step ends between two timestamps, never among
    /// rows of one, so the next step starts just past the last row it read.
    pub fn step(&mut self, state: &StateMachine) -> bool {
        let Some(left) = &mut self.rows else {
            return true;
        };
        let history = &state.parts[left.part].balance_history;
        let rows = history.rows_between(left.account, left.min, left.max, self.filter.reversed);
        let mut last = None;
        for (read, row) in rows.enumerate() {
            if let Some(last) =
                last.filter(|&last| read >= QUERY_STEP_RECORDS && last != row.timestamp)
            {
                // Rows are in timestamp order, so `last` is strictly before (after,
                // reversed) this row's: the bound moves without overflow.
                match self.filter.reversed {
                    false => left.min = last + 1,
                    true => left.max = last - 1,
                }
                return false;
            }
            last = Some(row.timestamp);
            let transfer = state.transfer_by_ref(row.transfer_ref);
            if self.filter.matches_at(&transfer, row.timestamp) {
                self.found.push(AccountBalance {
                    timestamp: row.timestamp,
                    balances: row.balances.public(),
                });
                if self.found.len() >= self.limit {
                    break;
                }
            }
        }
        self.rows = None;
        true
    }

    /// The balances found, in the order asked (a finished read); taken out, so a
    /// second call answers none.
    pub fn balances(&mut self) -> Vec<AccountBalance> {
        assert!(self.rows.is_none(), "the read is not finished");
        std::mem::take(&mut self.found)
    }
}
