//! `get_account_transfers` (docs/spec.md §2, "Reads"), answered a bounded step at a
//! time as queries are ([`crate::Query`]): a caller holding the state's read lock for
//! one step never holds up commits for longer than that step.
//!
//! The read walks the account's history (its transfers in timestamp order), newest or
//! oldest first, over the entries it held when the read began: transfers committed
//! between steps are not answered, so the answer is the account's history as it stood
//! at the start. A walk stops early once it is past the time range, since a history is
//! in timestamp order.

use crate::history::HistoryWalk;
use crate::query::QUERY_STEP_RECORDS;
use crate::state::StateMachine;
use tally_types::{AccountFilter, Transfer};

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
