//! Balance history of the accounts created with the `history` flag (docs/spec.md §2,
//! "History and point-in-time balances"): for every transfer that changes such an
//! account, and every expiry, its four balances right after, with the transfer's
//! reference (whose fields `get_account_balances` filters on).
//!
//! Only accounts that ask pay: a map from account position to its rows, nothing for
//! the others. Rows are 48 bytes while every balance fits in 64 bits (real money
//! always does: 2^64 cents is 1.8 × 10^17 dollars); an account whose balance passes
//! that moves to 80-byte rows, once.
//!
//! Like the transfer lists of [`crate::history`], rows are not part of snapshots:
//! loading an image derives them from the stored transfers and pending statuses
//! ([`crate::StateMachine`] replays each history account's transfers and expiries), so
//! a snapshot needs no new section.

use crate::part::{Balances, IdHasher, TransferRef};
use std::collections::HashMap;

/// One row, narrow: every balance below 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NarrowRow {
    timestamp: u64,
    transfer_ref: TransferRef,
    balances: [u64; 4],
}

/// One row, wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WideRow {
    timestamp: u64,
    transfer_ref: TransferRef,
    balances: Balances,
}

/// A row as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BalanceRow {
    /// The transfer's timestamp, or the expiry's instant.
    pub timestamp: u64,
    /// The transfer that changed the balances (for an expiry, the pending transfer).
    pub transfer_ref: TransferRef,
    pub balances: Balances,
}

impl From<WideRow> for BalanceRow {
    fn from(row: WideRow) -> Self {
        BalanceRow {
            timestamp: row.timestamp,
            transfer_ref: row.transfer_ref,
            balances: row.balances,
        }
    }
}

#[derive(Debug, Clone)]
enum Rows {
    Narrow(Vec<NarrowRow>),
    Wide(Vec<WideRow>),
}

fn narrow(balances: &Balances) -> Option<[u64; 4]> {
    Some([
        u64::try_from(balances.debits_pending).ok()?,
        u64::try_from(balances.debits_posted).ok()?,
        u64::try_from(balances.credits_pending).ok()?,
        u64::try_from(balances.credits_posted).ok()?,
    ])
}

fn widen(row: &NarrowRow) -> WideRow {
    let [
        debits_pending,
        debits_posted,
        credits_pending,
        credits_posted,
    ] = row.balances;
    WideRow {
        timestamp: row.timestamp,
        transfer_ref: row.transfer_ref,
        balances: Balances {
            debits_pending: u128::from(debits_pending),
            debits_posted: u128::from(debits_posted),
            credits_pending: u128::from(credits_pending),
            credits_posted: u128::from(credits_posted),
        },
    }
}

/// The rows of one part's history accounts, by account position.
#[derive(Debug, Clone, Default)]
pub(crate) struct BalanceHistories {
    rows: HashMap<u32, Rows, IdHasher>,
}

/// The rows of `list` whose timestamps lie in `min..=max`, found by two searches.
fn in_range<T>(list: &[T], min: u64, max: u64, timestamp_of: fn(&T) -> u64) -> &[T] {
    let from = list.partition_point(|r| timestamp_of(r) < min);
    let to = list.partition_point(|r| timestamp_of(r) <= max).max(from);
    &list[from..to]
}

/// `balances` moved by the change that took `from` to `to`, field by field. Wrapping:
/// a field may fall (a pending amount released), and every sum is a balance the
/// account held, so none overflows in truth.
fn shifted(balances: &Balances, from: &Balances, to: &Balances) -> Balances {
    let moved = |value: u128, from: u128, to: u128| value.wrapping_add(to.wrapping_sub(from));
    Balances {
        debits_pending: moved(
            balances.debits_pending,
            from.debits_pending,
            to.debits_pending,
        ),
        debits_posted: moved(balances.debits_posted, from.debits_posted, to.debits_posted),
        credits_pending: moved(
            balances.credits_pending,
            from.credits_pending,
            to.credits_pending,
        ),
        credits_posted: moved(
            balances.credits_posted,
            from.credits_posted,
            to.credits_posted,
        ),
    }
}

/// The balances before an account's first change.
const ZERO: Balances = Balances {
    debits_pending: 0,
    debits_posted: 0,
    credits_pending: 0,
    credits_posted: 0,
};

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Narrow(list) => list.len(),
            Rows::Wide(list) => list.len(),
        }
    }

    fn timestamp(&self, index: usize) -> u64 {
        match self {
            Rows::Narrow(list) => list[index].timestamp,
            Rows::Wide(list) => list[index].timestamp,
        }
    }

    fn row(&self, index: usize) -> BalanceRow {
        BalanceRow::from(match self {
            Rows::Narrow(list) => widen(&list[index]),
            Rows::Wide(list) => list[index],
        })
    }

    /// The index after the last row at or before `timestamp`.
    fn after(&self, timestamp: u64) -> usize {
        match self {
            Rows::Narrow(list) => list.partition_point(|r| r.timestamp <= timestamp),
            Rows::Wide(list) => list.partition_point(|r| r.timestamp <= timestamp),
        }
    }

    /// Replaces the rows from `from` on with `tail`, widening every row first if one of
    /// the tail's balances passes 64 bits.
    fn replace_tail(&mut self, from: usize, tail: &[BalanceRow]) {
        if let Rows::Narrow(list) = self {
            let narrow_tail: Option<Vec<NarrowRow>> = tail
                .iter()
                .map(|row| {
                    Some(NarrowRow {
                        timestamp: row.timestamp,
                        transfer_ref: row.transfer_ref,
                        balances: narrow(&row.balances)?,
                    })
                })
                .collect();
            match narrow_tail {
                Some(narrow_tail) => {
                    list.truncate(from);
                    list.extend(narrow_tail);
                    return;
                }
                None => *self = Rows::Wide(list.iter().map(widen).collect()),
            }
        }
        if let Rows::Wide(list) = self {
            list.truncate(from);
            list.extend(tail.iter().map(|row| WideRow {
                timestamp: row.timestamp,
                transfer_ref: row.transfer_ref,
                balances: row.balances,
            }));
        }
    }
}

impl BalanceHistories {
    /// Room for `additional` more rows of `account`: a snapshot's load knows how many
    /// it derives, so a long history neither copies itself as it doubles nor faults in
    /// room it will not use.
    pub fn reserve(&mut self, account: u32, additional: usize) {
        if additional == 0 {
            return;
        }
        match self.rows_of(account) {
            Rows::Narrow(list) => list.reserve_exact(additional),
            Rows::Wide(list) => list.reserve_exact(additional),
        }
    }

    /// Account `account`'s rows, narrow and empty until its first row.
    fn rows_of(&mut self, account: u32) -> &mut Rows {
        self.rows
            .entry(account)
            .or_insert_with(|| Rows::Narrow(Vec::new()))
    }

    /// Adds a row to account `account`'s history, `row.balances` being the account's
    /// balances right after the change. Rows stay in timestamp order, each the balances
    /// at its instant: a row older than the newest (an imported transfer stamped before
    /// an expiry already recorded) takes its change onto the row before it, and every
    /// later row gains the change too, as replaying the changes in timestamp order
    /// would give (what a snapshot's load derives).
    pub fn append(&mut self, account: u32, row: BalanceRow) {
        let rows = self.rows_of(account);
        let count = rows.len();
        if count == 0 || rows.timestamp(count - 1) <= row.timestamp {
            if let (Rows::Narrow(list), Some(balances)) = (&mut *rows, narrow(&row.balances)) {
                list.push(NarrowRow {
                    timestamp: row.timestamp,
                    transfer_ref: row.transfer_ref,
                    balances,
                });
            } else {
                rows.replace_tail(count, &[row]);
            }
            return;
        }
        let at = rows.after(row.timestamp);
        let newest = rows.row(count - 1).balances;
        let before = at.checked_sub(1).map_or(ZERO, |i| rows.row(i).balances);
        let mut tail = vec![BalanceRow {
            balances: shifted(&before, &newest, &row.balances),
            ..row
        }];
        tail.extend((at..count).map(|i| {
            let later = rows.row(i);
            BalanceRow {
                balances: shifted(&later.balances, &newest, &row.balances),
                ..later
            }
        }));
        rows.replace_tail(at, &tail);
    }

    /// Removes the row `append` added last for `account` at `timestamp` (a chain's
    /// rollback, newest first), taking its change back out of the rows after it.
    pub fn pop(&mut self, account: u32, timestamp: u64) {
        let at = self.rows.get(&account).and_then(|rows| {
            let last = rows.len().checked_sub(1)?;
            if rows.timestamp(last) == timestamp {
                return Some(last);
            }
            rows.after(timestamp)
                .checked_sub(1)
                .filter(|&i| rows.timestamp(i) == timestamp)
        });
        let (Some(at), Some(rows)) = (at, self.rows.get_mut(&account)) else {
            panic!("a balance row undone twice");
        };
        let removed = rows.row(at).balances;
        let before = at.checked_sub(1).map_or(ZERO, |i| rows.row(i).balances);
        let tail: Vec<BalanceRow> = (at + 1..rows.len())
            .map(|i| {
                let later = rows.row(i);
                BalanceRow {
                    balances: shifted(&later.balances, &removed, &before),
                    ..later
                }
            })
            .collect();
        rows.replace_tail(at, &tail);
    }

    /// The timestamp of account `account`'s newest row; `None` without rows.
    pub fn newest(&self, account: u32) -> Option<u64> {
        let rows = self.rows.get(&account)?;
        let count = rows.len();
        (count > 0).then(|| rows.timestamp(count - 1))
    }

    /// Account `account`'s rows with timestamps in `min..=max`, oldest first (newest
    /// first when `reversed`), read lazily: a page of a long history costs the page.
    pub fn rows_between(
        &self,
        account: u32,
        min: u64,
        max: u64,
        reversed: bool,
    ) -> Box<dyn Iterator<Item = BalanceRow> + '_> {
        let rows: Box<dyn DoubleEndedIterator<Item = BalanceRow> + '_> =
            match self.rows.get(&account) {
                None => Box::new(std::iter::empty()),
                Some(Rows::Narrow(list)) => Box::new(
                    in_range(list, min, max, |r| r.timestamp)
                        .iter()
                        .map(|row| BalanceRow::from(widen(row))),
                ),
                Some(Rows::Wide(list)) => Box::new(
                    in_range(list, min, max, |r| r.timestamp)
                        .iter()
                        .map(|row| BalanceRow::from(*row)),
                ),
            };
        if reversed { Box::new(rows.rev()) } else { rows }
    }

    /// Account `account`'s rows, oldest first.
    #[cfg(test)]
    fn rows(&self, account: u32) -> Vec<BalanceRow> {
        self.rows_between(account, 0, u64::MAX, false).collect()
    }

    /// Bytes of memory held (rows and the map's slots).
    pub fn bytes(&self) -> usize {
        let slots = self.rows.capacity() * (std::mem::size_of::<(u32, Rows)>() + 1);
        let rows: usize = self
            .rows
            .values()
            .map(|rows| match rows {
                Rows::Narrow(list) => list.capacity() * std::mem::size_of::<NarrowRow>(),
                Rows::Wide(list) => list.capacity() * std::mem::size_of::<WideRow>(),
            })
            .sum();
        slots + rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(timestamp: u64, posted: u128) -> BalanceRow {
        BalanceRow {
            timestamp,
            transfer_ref: timestamp as u32,
            balances: Balances {
                debits_pending: 0,
                debits_posted: posted,
                credits_pending: 1,
                credits_posted: 2,
            },
        }
    }

    #[test]
    fn rows_widen_once_a_balance_passes_64_bits_and_pop_in_order() {
        assert_eq!(std::mem::size_of::<NarrowRow>(), 48);
        let mut histories = BalanceHistories::default();
        histories.append(7, row(1, 5));
        histories.append(7, row(2, u128::from(u64::MAX)));
        assert!(matches!(histories.rows.get(&7), Some(Rows::Narrow(_))));
        histories.append(7, row(3, u128::from(u64::MAX) + 1));
        assert!(matches!(histories.rows.get(&7), Some(Rows::Wide(_))));
        assert_eq!(
            histories.rows(7),
            vec![
                row(1, 5),
                row(2, u128::from(u64::MAX)),
                row(3, u128::from(u64::MAX) + 1)
            ]
        );
        histories.pop(7, 3);
        assert_eq!(
            histories.rows(7),
            vec![row(1, 5), row(2, u128::from(u64::MAX))]
        );
        assert!(histories.rows(8).is_empty());
        histories.append(8, row(4, 1));
        assert_eq!(histories.rows(8), vec![row(4, 1)]);
        // An older row (an imported transfer) goes in timestamp order, its change
        // (2 more posted) onto the balances before it and onto the rows after it; and
        // back out.
        histories.append(8, row(2, 3));
        let moved = |timestamp, debits_posted, credits| BalanceRow {
            timestamp,
            transfer_ref: timestamp as u32,
            balances: Balances {
                debits_pending: 0,
                debits_posted,
                credits_pending: credits,
                credits_posted: 2 * credits,
            },
        };
        assert_eq!(histories.rows(8), vec![moved(2, 2, 0), moved(4, 3, 1)]);
        histories.pop(8, 2);
        assert_eq!(histories.rows(8), vec![row(4, 1)]);
    }

    #[test]
    fn a_page_reads_only_the_rows_in_its_time_range() {
        let mut histories = BalanceHistories::default();
        for timestamp in [10, 20, 20, 30, 40] {
            histories.append(1, row(timestamp, u128::from(timestamp)));
        }
        let page = |min, max, reversed| -> Vec<u64> {
            histories
                .rows_between(1, min, max, reversed)
                .map(|row| row.timestamp)
                .collect()
        };
        assert_eq!(page(20, 30, false), vec![20, 20, 30]);
        assert_eq!(page(20, 30, true), vec![30, 20, 20]);
        assert_eq!(page(0, u64::MAX, true), vec![40, 30, 20, 20, 10]);
        assert_eq!(page(11, 19, false), Vec::<u64>::new());
        assert_eq!(page(30, 20, false), Vec::<u64>::new());
        assert_eq!(histories.rows_between(2, 0, u64::MAX, false).count(), 0);
    }
}
