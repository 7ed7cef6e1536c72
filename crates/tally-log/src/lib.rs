//! Tally's write-ahead log, snapshots and data-directory lock.
//!
//! * [`Wal`] appends client batches as checksummed frames to segment files, one write and
//!   one `fdatasync` per group of batches (group commit), and returns only once they are
//!   durable (docs/spec.md §3.3). A busy log writes into *spare* segments zero-filled ahead of
//!   it ([`Wal::write_spare_step`]), so a sync need not also make a new file size
//!   durable.
//! * [`Wal::open`] recovers: it loads the newest readable snapshot, replays the segments
//!   after it, cuts a torn tail off the last segment, and refuses to start on damage
//!   inside the committed log (docs/spec.md §3.5).
//! * [`DirLock`] keeps a second process out of a data directory (docs/spec.md §3.7).
//! * [`events`] is the change-event journal: [`events::EventJournal`] appends, any
//!   number of [`events::EventReader`]s read, with no lock.
//! * [`verify`] checks every checksum of a directory without changing it.
//! * [`Storage`] is the small file layer under all of it: [`FsStorage`] for real files,
//!   `faulty::FaultyStorage` for crash and fault-injection tests.
//!
//! The bytes on disk are specified in `docs/log-format.md`; the crate's private `format`
//! module is that document in code.
//!
//! Invariant: sequences are consecutive, one per client batch, across segments and after
//! the snapshot; a gap anywhere is an error, never skipped.
//! Invariant: after any I/O error on the append path the [`Wal`] is poisoned and refuses
//! every later append: an fsync is never retried as if nothing had happened.
//! Invariant: `Wal::open` takes no lock; the caller holds a [`DirLock`] on the directory
//! for as long as the [`Wal`] lives.
//!
//! # Features
//!
//! * `fault-injection` (off by default): the `faulty` module (an in-memory [`Storage`]
//!   that tears writes, drops unsynced data and injects EIO/ENOSPC) and the `layout`
//!   module (byte-level access to segment, frame and close-marker bytes). For tests and
//!   fuzzing only: a production build never carries them.

#![deny(missing_docs)]

mod error;
pub mod events;
#[cfg(feature = "fault-injection")]
pub mod faulty;
mod format;
#[cfg(feature = "fault-injection")]
pub mod layout;
mod lock;
mod page_cache;
mod scan;
mod snapshot;
mod storage;
mod verify;
mod wal;

pub use error::LogError;
pub use format::{APPEND_BYTES_MAX, SEGMENT_FILE_BYTES_MAX, segment_name, snapshot_name};
pub use lock::{DirLock, LOCK_FILE_NAME};
pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotSource, SnapshotStream};
pub use storage::{FsStorage, Storage};
pub use verify::{
    ReadLog, VerifyReport, read_log, read_log_into, read_log_storage, verify, verify_storage,
};
pub use wal::{
    DROP_CACHED_BYTES, Recovered, RecoverySink, Repairs, Retirement, SPARE_STEP_BYTES_MAX,
    SPARE_TRIGGER_BYTES, SnapshotJob, Wal, torn_tail_name,
};

use tally_types::Batch;

/// One client batch as the log stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// 1, 2, 3, ...: consecutive, one per client batch, across segments and snapshots.
    pub sequence: u64,
    /// Timestamp of the batch's first event; event `i` is stamped `timestamp + i`.
    pub timestamp: u64,
    /// The client's events, in submission order.
    pub batch: Batch,
}

/// How [`Wal::append`] makes a group durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// One `fdatasync` per appended group; `append` returns only once it succeeded.
    #[default]
    Fdatasync,
    /// No sync per append: a crash loses acknowledged batches. For benchmarks only; this
    /// breaks docs/spec.md §3.3 and is named so that nobody picks it by accident. Rotations,
    /// snapshots and a clean close still sync what they rely on, so what a crash leaves
    /// always opens.
    UnsafeNoSync,
}

/// Tuning of a [`Wal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// A new segment starts when the next group would take the current one past this.
    /// A single group larger than this gets a segment of its own. From
    /// [`SEGMENT_BYTES_MIN`] to [`SEGMENT_FILE_BYTES_MAX`]: recovery reads no
    /// larger segment file, and a spare segment is exactly this long.
    pub segment_bytes_max: u64,
    /// How each append is made durable.
    pub sync: SyncMode,
}

/// The smallest `segment_bytes_max`: a header and a few frames.
pub const SEGMENT_BYTES_MIN: u64 = 512;

/// Default segment size: large enough that rotation (two extra syncs) is rare, small
/// enough that recovery reads a segment into memory in one go.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            sync: SyncMode::Fdatasync,
        }
    }
}
