//! Where a snapshot's state comes from while it loads: a snapshot read whole
//! ([`LoadedSource`]), or one handed over run by run as it is read, so that reading and
//! loading overlap (the engine's recovery).

use crate::state::ImageError;
use tally_types::packed::{PackedRun, UnpackedRun};
use tally_types::{Account, LoadedImage, StateImage, Transfer};

/// What a snapshot says before its state: its last timestamp, and how many accounts
/// it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStart {
    /// The timestamp of the last event the snapshot covers.
    pub last_timestamp: u64,
    /// The accounts it holds, handed over by [`ImageSource::next_accounts`].
    pub accounts: usize,
}

/// A snapshot's state in the order a snapshot file holds it: the accounts, then the
/// stored transfers, then what follows them
/// ([`crate::StateMachine::from_image_source`]).
pub trait ImageSource {
    /// The next accounts, in creation order; `None` after the last.
    fn next_accounts(&mut self) -> Result<Option<Vec<Account>>, ImageError>;
    /// Asked once, after the last accounts: the transfers stored unpacked (older
    /// formats only; they come before every run), and how many transfers the
    /// snapshot stores in all.
    fn transfers_head(&mut self) -> Result<(Vec<Transfer>, usize), ImageError>;
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
    accounts: Option<Vec<Account>>,
    plain_transfers: Vec<Transfer>,
    transfers: usize,
    runs: std::vec::IntoIter<PackedRun>,
    rest: StateImage,
    spare: UnpackedRun,
}

impl LoadedSource {
    /// `loaded` as [`crate::StateMachine::from_image_source`] takes it.
    pub(crate) fn split(loaded: LoadedImage) -> (ImageStart, LoadedSource) {
        let transfers = loaded.transfers_len();
        let LoadedImage {
            mut image,
            packed_transfers,
        } = loaded;
        let start = ImageStart {
            last_timestamp: image.last_timestamp,
            accounts: image.accounts.len(),
        };
        let rest = StateImage {
            pending_statuses: std::mem::take(&mut image.pending_statuses),
            refunded: std::mem::take(&mut image.refunded),
            failed_ids: std::mem::take(&mut image.failed_ids),
            ..StateImage::default()
        };
        let source = LoadedSource {
            accounts: Some(image.accounts),
            plain_transfers: image.transfers,
            transfers,
            runs: packed_transfers.into_iter(),
            rest,
            spare: UnpackedRun::default(),
        };
        (start, source)
    }
}

impl ImageSource for LoadedSource {
    fn next_accounts(&mut self) -> Result<Option<Vec<Account>>, ImageError> {
        Ok(self.accounts.take())
    }

    fn transfers_head(&mut self) -> Result<(Vec<Transfer>, usize), ImageError> {
        Ok((std::mem::take(&mut self.plain_transfers), self.transfers))
    }

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
