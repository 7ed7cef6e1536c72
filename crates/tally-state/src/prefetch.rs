//! The prefetch pipeline: walks the transfers still to be applied and prefetches, in
//! steps, the cache lines that applying each will read.
//!
//! At a million accounts a transfer touches about nine cache lines that miss (index
//! slots, account records, history tails), and each dependent miss stalls the checks
//! for a round trip to memory. Loads issued ahead of time would stall too: a load that
//! misses holds up retirement, so the out-of-order window fills within a few hundred
//! instructions. A prefetch ([`crate::hints::prefetch`]) retires at once, so the apply
//! loop keeps the lines of the next dozen transfers in flight while it runs the checks
//! of this one.

use crate::hints::prefetch;
use crate::part::Part;
use tally_types::Transfer;

/// How many transfers ahead of the one being applied each prefetch step runs: the
/// transfers themselves first (in a replayed log each batch is its own allocation,
/// cold), then their index slots, then (once those have arrived) the account records
/// and history heads they point to, then (once those have arrived) the history tails.
/// A post, void or refund also prefetches the transfer it names: index slot, then the
/// offset of its packed record, then the record.
/// Each step runs far enough behind the one before for its lines to have arrived, and
/// far enough ahead of the apply for its own to arrive in time.
const EVENTS_AHEAD: usize = 24;
const SLOTS_AHEAD: usize = 12;
const RECORDS_AHEAD: usize = 6;
const TAILS_AHEAD: usize = 3;

/// Walks a run of transfers ahead of the apply loop, prefetching in four steps what
/// applying each will read (see the constants above). Only hints: whatever it
/// prefetches, or fails to, the results are the same.
///
/// With `LOAD` ([`LoadPrefetcher`]) it serves loading a snapshot's transfers, which
/// reads less: loading stores each transfer, adds it to the ledger and code indexes,
/// and finds its two accounts' positions (an index slot, then the record's first line,
/// where the id is checked). Ids and user data are indexed later, many at once, no
/// transfer is named, and the histories are built on another thread that prefetches
/// its own lines; so the id, user-data and named slots, the balances and the tails
/// step are left out.
#[derive(Debug)]
pub(crate) struct Prefetcher<I, const LOAD: bool = false> {
    events: I,
    slots: I,
    records: I,
    tails: I,
}

/// The prefetcher for loading a snapshot's transfers (see [`Prefetcher`]).
pub(crate) type LoadPrefetcher<I> = Prefetcher<I, true>;

impl<'a, I: Iterator<Item = &'a Transfer> + Clone, const LOAD: bool> Prefetcher<I, LOAD> {
    /// Over `transfers`, in the order they will be applied; primes each step.
    pub(crate) fn new(parts: &[Box<Part>], transfers: I) -> Prefetcher<I, LOAD> {
        let mut prefetcher = Prefetcher {
            events: transfers.clone(),
            slots: transfers.clone(),
            records: transfers.clone(),
            tails: transfers,
        };
        prefetcher.advance_events(EVENTS_AHEAD);
        prefetcher.advance_slots(parts, SLOTS_AHEAD);
        prefetcher.advance_records(parts, RECORDS_AHEAD);
        prefetcher.advance_tails(parts, TAILS_AHEAD);
        prefetcher
    }

    /// Moves every step on by `transfers`, as the apply loop is about to apply that many.
    #[inline]
    pub(crate) fn advance(&mut self, parts: &[Box<Part>], transfers: usize) {
        self.advance_events(transfers);
        self.advance_slots(parts, transfers);
        self.advance_records(parts, transfers);
        self.advance_tails(parts, transfers);
    }

    #[inline]
    fn advance_events(&mut self, transfers: usize) {
        for t in self.events.by_ref().take(transfers) {
            // The fields the next step reads (taking their addresses reads nothing).
            prefetch(&raw const t.id);
            prefetch(&raw const t.debit_account_id);
            prefetch(&raw const t.credit_account_id);
            if !LOAD {
                prefetch(&raw const t.pending_id);
            }
        }
    }

    #[inline]
    fn advance_slots(&mut self, parts: &[Box<Part>], transfers: usize) {
        let Some(layout) = parts.first().map(|part| part.layout) else {
            return;
        };
        for t in self.slots.by_ref().take(transfers) {
            let home = &parts[layout.part_of(t.id)];
            if LOAD {
                // Loading gathers the user-data entries, to index later in table order.
                home.prefetch_ledger_code_slots(t);
            } else {
                home.prefetch_transfer_slot(t.id);
                home.prefetch_value_slots(t);
            }
            if !LOAD {
                // The pending transfer a post or void settles, or the one a refund
                // returns.
                if t.pending_id != 0 {
                    parts[layout.part_of(t.pending_id)].prefetch_transfer_slot(t.pending_id);
                }
            }
            for account in [t.debit_account_id, t.credit_account_id] {
                parts[layout.part_of(account)].prefetch_account_slot(account);
            }
        }
    }

    #[inline]
    fn advance_records(&mut self, parts: &[Box<Part>], transfers: usize) {
        if LOAD {
            step(
                &mut self.records,
                parts,
                transfers,
                |_, _| {},
                Part::prefetch_account_id,
            );
        } else {
            step(
                &mut self.records,
                parts,
                transfers,
                Part::prefetch_transfer_start,
                Part::prefetch_account,
            );
        }
    }

    #[inline]
    fn advance_tails(&mut self, parts: &[Box<Part>], transfers: usize) {
        if !LOAD {
            step(
                &mut self.tails,
                parts,
                transfers,
                Part::prefetch_transfer_record,
                Part::prefetch_history_tail,
            );
        }
    }
}

/// One prefetch step over the next `transfers` of `cursor`: `named` for the transfer a
/// post, void or refund names, `account` for both accounts, each on the part its id
/// belongs to.
#[inline]
fn step<'a>(
    cursor: &mut impl Iterator<Item = &'a Transfer>,
    parts: &[Box<Part>],
    transfers: usize,
    named: impl Fn(&Part, u128),
    account: impl Fn(&Part, u128),
) {
    let Some(layout) = parts.first().map(|part| part.layout) else {
        return;
    };
    for t in cursor.take(transfers) {
        if t.pending_id != 0 {
            named(&parts[layout.part_of(t.pending_id)], t.pending_id);
        }
        for id in [t.debit_account_id, t.credit_account_id] {
            account(&parts[layout.part_of(id)], id);
        }
    }
}
