//! Batch stamping: the wall clock (or a requested manual time), forced monotonic.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};
use tally_types::{Batch, NS_PER_S, TransferFlags};

/// Nanoseconds since the Unix epoch; 0 if the system clock is before 1970.
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// The stamp of a batch of `events` events: the requested time (or the wall clock),
/// never at or before `last_timestamp`. `None` if the batch's last event would not fit
/// in u64.
pub fn batch_stamp(requested: u64, last_timestamp: u64, events: usize) -> Option<u64> {
    let stamp = requested.max(last_timestamp.checked_add(1)?);
    stamp.checked_add(events.saturating_sub(1) as u64)?;
    Some(stamp)
}

/// A ledger's batch stamping: [`batch_stamp`], kept clear of expiry instants.
///
/// Expiries run before the first batch stamped at or after their instant. So that each
/// expiry can be stamped at its exact instant — after every earlier event, before
/// every later one, shared with none — a batch is moved later (by as little as needed)
/// when an expiry instant falls on or inside its stamps, or when one of its pending
/// transfers would expire at an instant another already has.
///
/// The instants kept are those of every pending transfer stamped so far that may still
/// expire, each with the last stamp of the batch that asked for it last. Batches are
/// stamped before they are applied, so this is a superset: an instant whose pending
/// transfer was posted, voided or refused is dropped when a batch would collide with
/// it and the applied state, past that batch, shows no transfer waiting on it
/// ([`Settled`]). Stamps then never depend on when the process last started (a restart
/// keeps only the instants that still wait).
#[derive(Debug, Clone, Default)]
pub struct Stamper {
    timestamp_last: u64,
    /// Instant, and the last stamp of the batch that added it (0: a recovered state's).
    expiry_instants: BTreeMap<u64, u64>,
}

/// Whether no pending transfer waits on an expiry instant any more, as far as the
/// applied state knows: called with the instant and the last stamp of the batch that
/// added it, it must answer `false` unless that batch has been applied and the state
/// holds no pending transfer expiring at that instant.
pub type Settled<'a> = &'a dyn Fn(u64, u64) -> bool;

/// Stamping gives up keeping a batch clear of expiry instants after this many tries
/// (never met in practice: each try moves past one collision).
const STAMP_TRIES_MAX: usize = 65_536;

impl Stamper {
    /// A stamper after `timestamp_last`, with the expiry instants of the pending
    /// transfers that still wait (a recovered state's). An instant at or before
    /// `timestamp_last` (which may lie past the state's last stamp) is kept until the
    /// first batch: it is due at once ([`Stamper::next_expiry`]).
    pub fn new(timestamp_last: u64, expiry_instants: impl IntoIterator<Item = u64>) -> Stamper {
        Stamper {
            timestamp_last,
            expiry_instants: expiry_instants.into_iter().map(|at| (at, 0)).collect(),
        }
    }

    /// The last timestamp handed out.
    pub fn timestamp_last(&self) -> u64 {
        self.timestamp_last
    }

    /// The earliest instant a stamped pending transfer may expire at, if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry_instants.keys().next().copied()
    }

    /// Stamps `batch`, requested at `requested`, and moves past it. An instant it would
    /// collide with that is `settled` is dropped first. `None` (nothing changed) if its
    /// last event would not fit in u64.
    pub fn stamp(&mut self, requested: u64, batch: &Batch, settled: Settled<'_>) -> Option<u64> {
        let instants = RefCell::new(&mut self.expiry_instants);
        let latest_in = |from: u64, to: u64| {
            let mut instants = instants.borrow_mut();
            loop {
                let (&at, &added) = instants.range(from..=to).next_back()?;
                if !settled(at, added) {
                    return Some(at);
                }
                instants.remove(&at);
            }
        };
        let stamp = clear_stamp(requested, self.timestamp_last, batch, latest_in)?;
        self.timestamp_last = stamp + batch.len().saturating_sub(1) as u64;
        let last = self.timestamp_last;
        self.expiry_instants
            .extend(expiry_instants_of(stamp, batch).map(|at| (at, last)));
        let passed = self.timestamp_last.saturating_add(1);
        self.expiry_instants = self.expiry_instants.split_off(&passed);
        Some(stamp)
    }
}

/// The instants at which `batch`'s pending transfers with a timeout would expire, were
/// it stamped from `stamp`, added to `instants`.
pub fn add_expiry_instants(instants: &mut BTreeSet<u64>, stamp: u64, batch: &Batch) {
    instants.extend(expiry_instants_of(stamp, batch));
}

/// The instants at which `batch`'s pending transfers with a timeout would expire, were
/// it stamped from `stamp`.
fn expiry_instants_of(stamp: u64, batch: &Batch) -> impl Iterator<Item = u64> {
    pending_timeouts(batch)
        .into_iter()
        .filter_map(move |(index, timeout_ns)| (stamp + index as u64).checked_add(timeout_ns))
}

/// [`batch_stamp`], moved later until no expiry instant falls on or inside the batch's
/// stamps and none of its pending transfers would expire at an instant already taken.
/// `latest_in(from, to)` is the latest known expiry instant in `from..=to`, if any.
/// `None` if the batch's last event would not fit in u64.
pub fn clear_stamp(
    requested: u64,
    timestamp_last: u64,
    batch: &Batch,
    latest_in: impl Fn(u64, u64) -> Option<u64>,
) -> Option<u64> {
    let mut stamp = batch_stamp(requested, timestamp_last, batch.len())?;
    let pending = pending_timeouts(batch);
    for _ in 0..STAMP_TRIES_MAX {
        let last = stamp.checked_add(batch.len().saturating_sub(1) as u64)?;
        if let Some(inside) = latest_in(stamp, last) {
            stamp = inside.checked_add(1)?;
            continue;
        }
        // Two of the batch's own never share an instant: their stamps differ by
        // less than a batch (8,190 ns), their timeouts by whole seconds.
        let shared = pending.iter().any(|&(index, timeout_ns)| {
            (stamp + index as u64)
                .checked_add(timeout_ns)
                .is_some_and(|at| latest_in(at, at).is_some())
        });
        if !shared {
            return Some(stamp);
        }
        stamp = stamp.checked_add(1)?;
        stamp.checked_add(batch.len().saturating_sub(1) as u64)?;
    }
    Some(stamp)
}

/// Per pending transfer of `batch` with a timeout: its index and its timeout in ns.
fn pending_timeouts(batch: &Batch) -> Vec<(usize, u64)> {
    let Batch::CreateTransfers(transfers) = batch else {
        return Vec::new();
    };
    transfers
        .iter()
        .enumerate()
        .filter(|(_, t)| t.flags.contains(TransferFlags::PENDING) && t.timeout != 0)
        .map(|(index, t)| (index, u64::from(t.timeout) * NS_PER_S))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_types::Transfer;

    fn pending(timeout: u32) -> Transfer {
        Transfer {
            flags: TransferFlags::PENDING,
            timeout,
            ..Transfer::default()
        }
    }

    /// No instant is known to be settled.
    fn never(_: u64, _: u64) -> bool {
        false
    }

    #[test]
    fn stamps_never_go_backwards_and_never_overflow() {
        assert_eq!(batch_stamp(100, 0, 5), Some(100));
        assert_eq!(batch_stamp(100, 200, 5), Some(201));
        assert_eq!(batch_stamp(u64::MAX, 0, 1), Some(u64::MAX));
        assert_eq!(batch_stamp(u64::MAX, 0, 2), None);
        assert_eq!(batch_stamp(0, u64::MAX, 1), None);
    }

    #[test]
    fn batches_are_stamped_clear_of_expiry_instants() {
        let mut stamper = Stamper::new(0, []);
        let first = Batch::CreateTransfers(vec![pending(1), Transfer::default()]);
        assert_eq!(stamper.stamp(100, &first, &never), Some(100));
        assert_eq!(stamper.next_expiry(), Some(100 + NS_PER_S));
        // Spanning the instant: moved just after it.
        let three = Batch::CreateTransfers(vec![Transfer::default(); 3]);
        assert_eq!(
            stamper.stamp(99 + NS_PER_S, &three, &never),
            Some(101 + NS_PER_S)
        );
        assert_eq!(stamper.next_expiry(), None);
        // A pending transfer that would expire at an instant another has: moved by 1.
        let mut stamper = Stamper::new(0, [1_000 + NS_PER_S]);
        let one = Batch::CreateTransfers(vec![pending(1)]);
        assert_eq!(stamper.stamp(1_000, &one, &never), Some(1_001));
    }

    #[test]
    fn an_instant_nobody_waits_on_any_more_no_longer_moves_a_batch() {
        let mut stamper = Stamper::new(0, []);
        let two = Batch::CreateTransfers(vec![pending(1), pending(1)]);
        assert_eq!(stamper.stamp(2_000, &two, &never), Some(2_000));
        // The first was voided, and the state has applied through the batch that
        // asked for its instant (last stamp 2,001).
        let voided = |at, added| added <= 2_001 && at == 2_000 + NS_PER_S;
        let one = Batch::CreateTransfers(vec![Transfer::default()]);
        assert_eq!(
            stamper.clone().stamp(2_000 + NS_PER_S, &one, &never),
            Some(2_002 + NS_PER_S),
            "past both instants while they may still be due"
        );
        assert_eq!(
            stamper.stamp(2_000 + NS_PER_S, &one, &voided),
            Some(2_000 + NS_PER_S)
        );
        assert_eq!(stamper.next_expiry(), Some(2_001 + NS_PER_S));
    }
}
