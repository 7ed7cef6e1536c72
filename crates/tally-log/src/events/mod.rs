//! The event journal: every committed change event, in timestamp order, in append-only
//! segment files (docs/log-format.md §6).
//!
//! * [`EventJournal`] is the single writer (the engine). Appends are not synced per
//!   group: the write-ahead log is the source of truth, and recovery re-derives a lost
//!   tail from it. [`EventJournal::sync`] runs before a snapshot retires log.
//! * [`EventReader`] reads without any lock, from this process or another, while the
//!   writer appends, rolls segments and deletes old ones.
//!
//! Invariant: timestamps strictly increase across frames and segments; a segment's
//! name is greater than every timestamp before it, so names sort segments in order.
//! Invariant: each segment header records the previous segment's last timestamp, so a
//! reader can tell that retention deleted events it still wanted.

mod cut;
mod format;
mod journal;
mod reader;
mod segments;

pub use cut::{JournalCut, torn_events_floor, torn_events_name};
pub use format::{
    FRAME_BYTES_MAX, FRAME_EVENTS_MAX, FRAME_HEADER_SIZE, JOURNAL_FORMAT_VERSION,
    SEGMENT_HEADER_SIZE, journal_segment_name,
};
pub use journal::{
    EventJournal, JOURNAL_CACHED_BYTES, JOURNAL_RETENTION_BYTES_DEFAULT,
    JOURNAL_SEGMENT_BYTES_MAX_DEFAULT, JournalOptions,
};
pub use reader::{EventReader, UnreadableTail};
