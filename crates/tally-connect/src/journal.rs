//! The event journal of a data directory, read without its lock.

use crate::config::ConnectError;
use std::path::{Path, PathBuf};
use tally_log::events::EventReader;
use tally_types::ChangeEvent;
use tally_types::currency::CurrencyTable;

/// A reader of `DATA/events` (the engine may be writing it, in another process).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    reader: EventReader,
}

impl Journal {
    /// Opens the journal in `dir`; a journal not written yet reads as empty.
    pub fn open(dir: &Path) -> Result<Journal, ConnectError> {
        let reader = EventReader::open(dir).map_err(|error| ConnectError::Journal {
            dir: dir.to_path_buf(),
            message: error.to_string(),
        })?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            reader,
        })
    }

    /// The events with timestamp ≥ `timestamp_min`, in order, at most `limit`: only
    /// what is complete on disk.
    pub fn read(
        &mut self,
        timestamp_min: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>, ConnectError> {
        self.reader
            .read(timestamp_min, limit)
            .map_err(|error| ConnectError::Journal {
                dir: self.dir.clone(),
                message: error.to_string(),
            })
    }
}

/// The JSON line of one event (no line break): `tally events`' line.
pub fn event_line(event: &ChangeEvent, currencies: &CurrencyTable) -> String {
    tally_json::change_event_line(event, currencies)
}
