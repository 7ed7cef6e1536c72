//! The engine's snapshot source: a frozen state read in place by the snapshot writer.

use tally_log::SnapshotSource;
use tally_state::{FrozenState, SideTables};
use tally_types::{Account, PendingStatus};

/// A frozen state as a snapshot's source: accounts and transfers are read in place and
/// encoded one at a time, so writing a snapshot of tens of millions of transfers never
/// builds a vector of them all (gigabytes, and the time to fill them, on a machine whose
/// other core runs the ledger). Only the side tables are gathered and sorted.
pub(crate) struct FrozenSource<'a> {
    frozen: &'a FrozenState,
    side_tables: SideTables,
}

impl<'a> FrozenSource<'a> {
    pub(crate) fn new(frozen: &'a FrozenState) -> FrozenSource<'a> {
        FrozenSource {
            frozen,
            side_tables: frozen.side_tables(),
        }
    }
}

impl SnapshotSource for FrozenSource<'_> {
    fn last_timestamp(&self) -> u64 {
        self.frozen.last_timestamp()
    }
    fn accounts_len(&self) -> usize {
        self.frozen.accounts_len()
    }
    fn accounts(&self) -> Box<dyn Iterator<Item = Account> + '_> {
        Box::new(self.frozen.accounts())
    }
    fn transfers_len(&self) -> usize {
        self.frozen.transfers_len()
    }
    fn packed_transfer_runs(
        &self,
        run: &mut dyn FnMut(usize, &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.frozen.for_each_packed_run(run)
    }
    fn pending_statuses(&self) -> &[(u128, PendingStatus)] {
        &self.side_tables.pending_statuses
    }
    fn refunded(&self) -> &[(u128, u128)] {
        &self.side_tables.refunded
    }
    fn failed_ids(&self) -> &[u128] {
        &self.side_tables.failed_ids
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::FrozenSource;
    use tally_log::{LogOptions, LogRecord, SnapshotSource, Wal};
    use tally_state::StateMachine;
    use tally_types::{Account, Batch, Transfer, TransferFlags};

    /// The snapshot file of `source`, written by the log as the engine writes one.
    fn snapshot_bytes(source: &dyn SnapshotSource) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), LogOptions::default()).unwrap();
        let record = LogRecord {
            sequence: 1,
            timestamp: 1,
            batch: Batch::CreateAccounts(Vec::new()),
        };
        wal.append(&[record]).unwrap();
        let job = wal.snapshot_job(1).unwrap();
        let sequence = job.write(source).unwrap();
        std::fs::read(dir.path().join(tally_log::snapshot_name(sequence))).unwrap()
    }

    /// A snapshot written from the frozen state in place is byte for byte the one
    /// written from its image: on one part (the store's packed chunks written as they
    /// are) and on three (accounts and transfers merged by timestamp and packed again),
    /// with more transfers than one packed run holds and every side table filled.
    #[test]
    fn a_snapshot_read_in_place_is_the_image_s_snapshot_byte_for_byte() {
        for parts in [1, 3] {
            let mut state = StateMachine::with_capacity_in_parts(0, 0, parts);
            let accounts = (1..=40)
                .map(|id| Account {
                    id,
                    ledger: 156,
                    code: 1,
                    ..Account::default()
                })
                .collect();
            state.apply(10, &Batch::CreateAccounts(accounts));
            let transfer = |id: u128, debit: u128, credit: u128, amount: u128| Transfer {
                id,
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                ledger: 156,
                code: 1,
                ..Transfer::default()
            };
            let bulk = tally_types::packed::PACKED_RUN_RECORDS as u128 + 4_000;
            let mut timestamp = 1_000;
            for first in (0..bulk).step_by(8_000) {
                let events = (first..bulk.min(first + 8_000))
                    .map(|n| transfer(1_000 + n, 1 + n % 40, 1 + (n + 7) % 40, 1 + n % 1_000))
                    .collect::<Vec<_>>();
                let count = events.len() as u64;
                state.apply(timestamp, &Batch::CreateTransfers(events));
                timestamp += count + 1;
            }
            let events = vec![
                Transfer {
                    flags: TransferFlags::PENDING,
                    timeout: 60,
                    ..transfer(500_000, 1, 2, 50)
                },
                Transfer {
                    flags: TransferFlags::PENDING,
                    user_data_128: u128::MAX,
                    ..transfer(500_001, 3, 4, 70)
                },
                Transfer {
                    flags: TransferFlags::REFUND,
                    pending_id: 1_000,
                    ..transfer(500_002, 0, 0, 1)
                },
                // Burns its id: the debit account does not exist.
                transfer(500_003, 999, 2, 5),
            ];
            state.apply(timestamp, &Batch::CreateTransfers(events));
            let frozen = state.freeze();
            let image = frozen.image();
            assert!(
                !image.pending_statuses.is_empty()
                    && !image.refunded.is_empty()
                    && !image.failed_ids.is_empty()
            );
            assert_eq!(image.transfers.len() as u128, bulk + 3, "{parts} parts");
            let in_place = snapshot_bytes(&FrozenSource::new(&frozen));
            assert_eq!(in_place, snapshot_bytes(&image), "{parts} parts");
            assert!(
                in_place.len() as u128 > bulk * 16,
                "every transfer is in the file"
            );
        }
    }
}
