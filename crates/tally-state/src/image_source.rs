//! Where a snapshot's state comes from while it loads: a snapshot read whole
//! ([`LoadedSource`]), or one handed over run by run as it is read, so that reading and
//! loading overlap (the engine's recovery).

use crate::state::ImageError;
use tally_types::packed::{PackedRun, UnpackedRun};
use tally_types::{LoadedImage, StateImage};

/// The stored transfers of a snapshot, then what follows them, in the order a snapshot
/// file holds them ([`crate::StateMachine::from_image_source`]).
pub trait ImageSource {
    /// The next run of stored transfers, in timestamp order; `None` after the last.
    fn next_run(&mut self) -> Result<Option<UnpackedRun>, ImageError>;
    /// A run loaded, handed back so that its room serves a later one.
    fn spent(&mut self, run: UnpackedRun);
    /// What follows the transfers: the pending statuses, the refunds and the failed
    /// ids (anything else in it is ignored). Asked for once, after the last run.
    fn rest(&mut self) -> Result<StateImage, ImageError>;
}

/// A snapshot read whole: its packed runs are unpacked one at a time as loading asks,
/// into the room of the run before, so loading never holds them all unpacked.
pub(crate) struct LoadedSource {
    runs: std::vec::IntoIter<PackedRun>,
    rest: StateImage,
    spare: UnpackedRun,
}

impl LoadedSource {
    /// `loaded` cut as [`crate::StateMachine::from_image_source`] takes it: the head
    /// (the last timestamp, the accounts and any plain transfers), how many transfers
    /// it stores in all, and the source of its packed runs and the rest.
    pub(crate) fn split(loaded: LoadedImage) -> (StateImage, usize, LoadedSource) {
        let transfers = loaded.transfers_len();
        let LoadedImage {
            mut image,
            packed_transfers,
        } = loaded;
        let rest = StateImage {
            pending_statuses: std::mem::take(&mut image.pending_statuses),
            refunded: std::mem::take(&mut image.refunded),
            failed_ids: std::mem::take(&mut image.failed_ids),
            ..StateImage::default()
        };
        let source = LoadedSource {
            runs: packed_transfers.into_iter(),
            rest,
            spare: UnpackedRun::default(),
        };
        (image, transfers, source)
    }
}

impl ImageSource for LoadedSource {
    fn next_run(&mut self) -> Result<Option<UnpackedRun>, ImageError> {
        Ok(self
            .runs
            .next()
            .map(|run| UnpackedRun::of(run, std::mem::take(&mut self.spare))))
    }

    fn spent(&mut self, run: UnpackedRun) {
        self.spare = run;
    }

    fn rest(&mut self) -> Result<StateImage, ImageError> {
        Ok(std::mem::take(&mut self.rest))
    }
}
