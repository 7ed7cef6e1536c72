//! The whole ledger state as plain data: what a snapshot stores and what the state
//! machine is rebuilt from. Kept here (not in the state machine) so the log crate can
//! encode it without knowing the state machine's internals.

use crate::packed::PackedRun;
use crate::records::{Account, Transfer};

/// Where a pending transfer stands. Stored in snapshots as its `u8` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PendingStatus {
    /// Still reserving its amount.
    Pending = 0,
    /// Posted (wholly or in part) by a `post_pending_transfer`.
    Posted = 1,
    /// Released by a `void_pending_transfer`.
    Voided = 2,
    /// Released by its timeout.
    Expired = 3,
}

impl PendingStatus {
    /// The status with this on-disk value.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(PendingStatus::Pending),
            1 => Some(PendingStatus::Posted),
            2 => Some(PendingStatus::Voided),
            3 => Some(PendingStatus::Expired),
            _ => None,
        }
    }
}

/// A full copy of the ledger state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateImage {
    /// Timestamp of the last event applied (0 for an empty ledger).
    pub last_timestamp: u64,
    /// Every account, in creation (timestamp) order.
    pub accounts: Vec<Account>,
    /// Every stored transfer, in timestamp order.
    pub transfers: Vec<Transfer>,
    /// The status of every transfer flagged `pending`, by its id.
    pub pending_statuses: Vec<(u128, PendingStatus)>,
    /// For every refunded transfer: the total refunded so far, by its id.
    pub refunded: Vec<(u128, u128)>,
    /// Transfer ids burned by a transient failure (`id_already_failed` on reuse).
    pub failed_ids: Vec<u128>,
}

/// A snapshot's state as read from disk. Format 3 keeps the stored transfers packed, as
/// the file holds them (about a quarter of the bytes of [`Transfer`]s): they are in
/// `packed_transfers` and `image.transfers` is empty. Older formats give them
/// unpacked, in `image.transfers`, and `packed_transfers` is empty. Either way the
/// transfers are in timestamp order, the image's first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedImage {
    /// Everything but the packed transfers.
    pub image: StateImage,
    /// The transfers as the file packs them, in timestamp order (empty for older formats).
    pub packed_transfers: Vec<PackedRun>,
}

impl LoadedImage {
    /// Stored transfers, packed or not.
    pub fn transfers_len(&self) -> usize {
        self.image.transfers.len()
            + self
                .packed_transfers
                .iter()
                .map(PackedRun::records)
                .sum::<usize>()
    }

    /// The plain image, every transfer unpacked.
    pub fn unpack(self) -> StateImage {
        let LoadedImage {
            mut image,
            packed_transfers,
        } = self;
        image.transfers.reserve_exact(
            packed_transfers
                .iter()
                .map(PackedRun::records)
                .sum::<usize>(),
        );
        for run in &packed_transfers {
            image.transfers.extend(run.iter());
        }
        image
    }
}

impl From<StateImage> for LoadedImage {
    fn from(image: StateImage) -> LoadedImage {
        LoadedImage {
            image,
            packed_transfers: Vec::new(),
        }
    }
}
