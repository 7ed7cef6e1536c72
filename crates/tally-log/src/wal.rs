//! The write-ahead log: recovery at open, group-commit appends, snapshots and the
//! retirement of segments they cover.
//!
//! Cost per group (envelope): one `write` of 48 + 128 × events bytes per batch, one
//! `fdatasync`, no allocation once the buffer has grown to the largest group. Encoding
//! is ~128 bytes of stores per event plus CRC32C (hardware, > 10 GB/s), so the
//! `fdatasync` dominates: group commit amortises it over every batch in the group.
//!
//! Preallocated segments: a sync after an append must also make the file's new length
//! durable (a journal commit on ext4); a sync after a write over bytes already on disk
//! need not, and costs less latency and less CPU (figures: docs/performance.md). So a
//! busy log writes its frames in place into a *spare*: a zero-filled segment-sized file
//! written in small steps between commits ([`Wal::write_spare_step`]) and renamed into
//! place at rotation. Recovery reads zeros after the last frame as
//! unwritten space.

use crate::error::LogError;
use crate::format::{self, APPEND_BYTES_MAX, SEGMENT_HEADER_SIZE};
use crate::scan::{self, Collect, SegmentFile, Tail};
use crate::snapshot::{self, SnapshotSource, SnapshotStream};
use crate::storage::{FsStorage, Storage};
use crate::{LogOptions, LogRecord, SyncMode};
use std::path::{Path, PathBuf};
use tally_types::{LoadedImage, StateImage};

/// A spare segment is wanted only once this much has been logged since open (or an
/// eighth of a segment, if less): a ledger that logs little (a test, a tool) never
/// writes a segment-sized file of zeros.
pub const SPARE_TRIGGER_BYTES: u64 = 8 * 1024 * 1024;

/// Most zeros one [`Wal::write_spare_step`] writes (and syncs). A step runs on the log's
/// own thread between commits, so it never contends with a commit for the disk; this
/// bound keeps it short: well under a commit interval on a common disk (figures:
/// docs/performance.md).
pub const SPARE_STEP_BYTES_MAX: u64 = 256 * 1024;

/// Synced log bytes let go from the page cache at a time: large enough that the hint
/// costs nothing per group, small enough that the pages freed are taken again at once.
pub const DROP_CACHED_BYTES: u64 = 1024 * 1024;

/// Where [`Wal::open_with_sink`] hands what it recovers, as it reads it: a caller can
/// rebuild its state on another thread while the rest of the log is still being read,
/// and never holds the whole log in memory.
pub trait RecoverySink {
    /// The newest readable snapshot, (last sequence included, state), or `None` to start
    /// from an empty state. Called once, before any record, unless a snapshot was
    /// streamed whole ([`RecoverySink::snapshot_stream`]). The state's stored
    /// transfers come packed, as the file holds them (format 3), so that loading never
    /// holds them all unpacked; [`LoadedImage::unpack`] gives the plain image.
    fn start(&mut self, snapshot: Option<(u64, LoadedImage)>);
    /// The next logged record after the snapshot; sequences are consecutive, starting
    /// right after the snapshot's. Records already handed over stay valid only if open
    /// then succeeds: on an error the caller must drop what it built from them.
    fn record(&mut self, record: LogRecord);
    /// Where to hand the newest snapshot as it is read, if this sink takes it that way
    /// (so that loading overlaps reading): [`Wal::open_with_sink`] then streams each
    /// snapshot it tries there, newest first, and calls [`RecoverySink::start`] only
    /// with `None`, when none was whole. [`crate::read_log_into`] never streams.
    fn snapshot_stream(&mut self) -> Option<&mut dyn SnapshotStream> {
        None
    }
}

/// What [`Wal::open_with_sink`] did besides handing records over: the torn tail left by
/// a crash that it cut, if any, and how many records it handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Bytes of a torn write discarded from the end of the log, up to its last
    /// non-zero byte (0 after a clean shutdown). Zeros after them are preallocated
    /// space, not counted: after a torn write in place they are kept for later frames.
    pub torn_tail_bytes_cut: u64,
    /// Whether the last segment was removed because its header never reached the disk
    /// (a crash during rotation); its bytes, if any were written, count as cut.
    pub torn_segment_removed: bool,
    /// The file the cut bytes were kept in, next to the segments ([`torn_tail_name`]):
    /// a crash leaves an unacknowledged write there, but damage to an acknowledged last
    /// frame looks the same, so its bytes are kept for an operator, never dropped.
    pub torn_tail_kept: Option<PathBuf>,
    /// Records handed to the sink.
    pub records: u64,
}

/// Collects what recovery hands over, for [`Wal::open_with_storage`] and
/// [`crate::read_log`].
#[derive(Default)]
pub(crate) struct Collected {
    pub snapshot: Option<(u64, StateImage)>,
    pub records: Vec<LogRecord>,
}

impl RecoverySink for Collected {
    fn start(&mut self, snapshot: Option<(u64, LoadedImage)>) {
        self.snapshot = snapshot.map(|(sequence, loaded)| (sequence, loaded.unpack()));
    }

    fn record(&mut self, record: LogRecord) {
        self.records.push(record);
    }
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// The newest readable snapshot: (last sequence included, state).
    pub snapshot: Option<(u64, StateImage)>,
    /// Every logged record after the snapshot, in sequence order.
    pub records: Vec<LogRecord>,
    /// Bytes of a torn write discarded from the end of the log, up to its last
    /// non-zero byte (0 after a clean shutdown). Zeros after them are preallocated
    /// space, not counted: after a torn write in place they are kept for later frames.
    pub torn_tail_bytes_cut: u64,
    /// Whether the last segment was removed because its header never reached the disk
    /// (a crash during rotation); its bytes, if any were written, count as cut.
    pub torn_segment_removed: bool,
    /// Where the cut bytes were kept (see [`Repairs::torn_tail_kept`]).
    pub torn_tail_kept: Option<PathBuf>,
}

/// The write-ahead log of one data directory. See the crate docs for its invariants.
#[derive(Debug)]
pub struct Wal {
    storage: Box<dyn Storage>,
    options: LogOptions,
    /// Every segment present, oldest first; the last is the one appended to.
    segments: Vec<SegmentFile>,
    /// Header plus frames of the current segment: where the next group is written.
    segment_current_bytes: u64,
    /// The current segment's file length: below it lie zeros, written in place.
    segment_current_capacity: u64,
    segment_current_frames: u64,
    /// Where the current segment's pages still in the page cache begin: those before it
    /// were written, synced and let go ([`DROP_CACHED_BYTES`]).
    segment_current_cached_from: u64,
    sequence_next: u64,
    /// Bytes logged since open (decides when a spare is worth writing).
    bytes_logged: u64,
    /// Bytes of the durable spare segment waiting to be used, if there is one.
    spare_ready: Option<u64>,
    /// Zeros written so far into the spare's temp file, while one is being written.
    spare_written: Option<u64>,
    /// Writing a spare failed: no new one until the next rotation (no retry storm on
    /// ENOSPC).
    spare_failed: bool,
    /// The zeros a step writes; allocated at the first step, [`SPARE_STEP_BYTES_MAX`].
    zeros: Vec<u8>,
    /// Group-commit buffer, reused; bounded by [`APPEND_BYTES_MAX`].
    buffer: Vec<u8>,
    poisoned: bool,
    /// Snapshots known to be readable (loaded at open or written since), ascending.
    snapshots_good: Vec<u64>,
    /// Snapshots found damaged at open (recovery fell back past them).
    snapshots_damaged: Vec<PathBuf>,
}

impl Wal {
    /// Opens (creating if missing) the log in `dir` and recovers it.
    ///
    /// Takes no lock: hold a [`crate::DirLock`] on `dir` first, for the Wal's lifetime.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(Wal, Recovered), LogError> {
        let storage = FsStorage::create_dir(dir)
            .map_err(|e| LogError::io(dir.to_path_buf(), "create data directory", e))?;
        Wal::open_with_storage(Box::new(storage), options)
    }

    /// [`Wal::open`] over any storage (tests use `faulty::FaultyStorage`, behind the
    /// `fault-injection` feature).
    pub fn open_with_storage(
        storage: Box<dyn Storage>,
        options: LogOptions,
    ) -> Result<(Wal, Recovered), LogError> {
        let mut collected = Collected::default();
        let (wal, repairs) = Wal::open_with_sink(storage, options, &mut collected)?;
        let recovered = Recovered {
            snapshot: collected.snapshot,
            records: collected.records,
            torn_tail_bytes_cut: repairs.torn_tail_bytes_cut,
            torn_segment_removed: repairs.torn_segment_removed,
            torn_tail_kept: repairs.torn_tail_kept,
        };
        Ok((wal, recovered))
    }

    /// [`Wal::open_with_storage`], handing the snapshot and each record to `sink` as
    /// they are read instead of collecting them. Every check and repair is the same;
    /// on an error, what the sink received must be dropped.
    pub fn open_with_sink(
        mut storage: Box<dyn Storage>,
        options: LogOptions,
        sink: &mut dyn RecoverySink,
    ) -> Result<(Wal, Repairs), LogError> {
        let segment_bytes = crate::SEGMENT_BYTES_MIN..=format::SEGMENT_FILE_BYTES_MAX;
        assert!(
            segment_bytes.contains(&options.segment_bytes_max),
            "segment_bytes_max must be in {segment_bytes:?}: recovery reads no larger file"
        );
        let listing = scan::list(&mut *storage)?;
        remove_temps(&mut *storage, &listing.temps)?;
        let mut spare_ready = keep_spare(&mut *storage, listing.spare.as_deref(), &options)?;

        let SnapshotChoice {
            loaded,
            damaged: snapshots_damaged,
            first_damage,
        } = newest_snapshot(&mut *storage, &listing.snapshots, sink.snapshot_stream())?;
        let base = loaded.as_ref().map_or(0, |snapshot| snapshot.sequence);
        let snapshots_good: Vec<u64> = loaded.as_ref().map(|s| s.sequence).into_iter().collect();
        let snapshots_exist = !snapshots_good.is_empty() || first_damage.is_some();
        match loaded {
            // Streamed whole: the sink has it.
            Some(snapshot::Loaded { image: None, .. }) => {}
            loaded => sink.start(loaded.map(|s| (s.sequence, s.image.expect("snapshot kept")))),
        }
        let mut segments = listing.segments;
        let (log, records) =
            match replay_after(&mut *storage, &segments, base, snapshots_exist, sink) {
                Ok(replayed) => replayed,
                Err(error) => {
                    return Err(explain_gap(error, first_damage, base, &snapshots_damaged));
                }
            };
        scan::check_close_marker(
            &mut *storage,
            listing.close_marker.as_deref(),
            &segments,
            &log,
        )?;

        let (mut current, repairs) = repair_tail(&mut *storage, &mut segments, log.last)?;
        if segments.is_empty() || current.bytes == 0 {
            let (segment, capacity) =
                start_segment(&mut *storage, log.next_sequence, spare_ready.take())?;
            segments.push(segment);
            current.bytes = SEGMENT_HEADER_SIZE as u64;
            current.capacity = capacity;
        }
        assert!(current.capacity >= current.bytes);
        let current_name = &segments.last().expect("a current segment").name;
        sync_recovered(&mut *storage, current_name)?;

        assert_eq!(log.next_sequence, base + 1 + records);

        let wal = Wal {
            storage,
            options,
            segments,
            segment_current_bytes: current.bytes,
            segment_current_capacity: current.capacity,
            segment_current_frames: current.frames,
            segment_current_cached_from: 0,
            sequence_next: log.next_sequence,
            bytes_logged: 0,
            spare_ready,
            spare_written: None,
            spare_failed: false,
            zeros: Vec::new(),
            buffer: Vec::new(),
            poisoned: false,
            snapshots_good,
            snapshots_damaged,
        };
        Ok((wal, Repairs { records, ..repairs }))
    }

    /// Closes the log cleanly: records, in a small file of its own (written as a temp
    /// file, synced, renamed, the directory synced), the last sequence it holds. Every
    /// record up to there is already synced; from now on recovery treats a log that
    /// ends before it as damaged instead of torn. Nothing to do for an empty or
    /// poisoned log (a poisoned log's last frames may not be durable).
    ///
    /// Afterwards the log takes no more appends (they fail as on a poisoned log).
    pub fn close(&mut self) -> Result<(), LogError> {
        let last_sequence = self.sequence_next - 1;
        let was_poisoned = std::mem::replace(&mut self.poisoned, true);
        if was_poisoned || last_sequence == 0 {
            return Ok(());
        }
        let marker = format::encode_close_marker(last_sequence);
        let temp = format::CLOSE_MARKER_TEMP_NAME;
        let storage = &mut *self.storage;
        // The marker claims every frame durable: make it so even where appends did not
        // sync (`SyncMode::UnsafeNoSync`; rotation synced the segments before).
        let current = &self.segments.last().expect("a current segment").name;
        storage
            .sync_data(current)
            .map_err(|e| LogError::io(storage.path(current), "fdatasync", e))?;
        let path = storage.path(temp);
        let io = |what: &'static str| {
            let path = path.clone();
            move |e| LogError::io(path, what, e)
        };
        storage.create(temp).map_err(io("create close marker"))?;
        storage
            .append(temp, &marker)
            .map_err(io("write close marker"))?;
        storage.sync_data(temp).map_err(io("fdatasync"))?;
        storage.close(temp);
        storage
            .rename(temp, format::CLOSE_MARKER_NAME)
            .map_err(io("rename close marker"))?;
        storage
            .sync_dir()
            .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))
    }

    /// The sequence the next appended record must carry.
    pub fn next_sequence(&self) -> u64 {
        self.sequence_next
    }

    /// True once an I/O error has made the log refuse writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Snapshot files found damaged at open; recovery used an older one (or none).
    pub fn snapshots_damaged(&self) -> &[PathBuf] {
        &self.snapshots_damaged
    }

    /// Group commit: writes every record in one append, then one `fdatasync`, and
    /// returns only when they are durable (with [`SyncMode::Fdatasync`]).
    ///
    /// Any I/O error poisons the log: this and every later append fail, and the
    /// directory must be reopened (recovery then cuts whatever partial write remains).
    ///
    /// # Panics
    /// If sequences do not run on from [`Wal::next_sequence`], a batch exceeds
    /// `BATCH_EVENTS_MAX`, or the group exceeds [`APPEND_BYTES_MAX`]: engine bugs.
    pub fn append(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if records.is_empty() {
            return Ok(());
        }
        self.buffer.clear();
        for (index, record) in records.iter().enumerate() {
            assert_eq!(
                record.sequence,
                self.sequence_next + index as u64,
                "log records must be appended with consecutive sequences"
            );
            format::encode_frame(record, &mut self.buffer);
            assert!(
                self.buffer.len() <= APPEND_BYTES_MAX,
                "append group exceeds APPEND_BYTES_MAX"
            );
        }
        let group_bytes = self.buffer.len() as u64;
        let result = self.write_group(group_bytes);
        if result.is_err() {
            self.poisoned = true;
            return result;
        }
        self.segment_current_bytes += group_bytes;
        self.segment_current_capacity = self
            .segment_current_capacity
            .max(self.segment_current_bytes);
        self.segment_current_frames += records.len() as u64;
        self.sequence_next += records.len() as u64;
        self.bytes_logged += group_bytes;
        Ok(())
    }

    /// Writes the group right after the last frame: in place over preallocated zeros
    /// while they last, extending the file past them. Rotates first when the group
    /// would overflow the segment, or would extend the file while a spare is ready.
    fn write_group(&mut self, group_bytes: u64) -> Result<(), LogError> {
        let end = self.segment_current_bytes + group_bytes;
        let full = end > self.options.segment_bytes_max;
        let extends = end > self.segment_current_capacity;
        if self.segment_current_frames > 0 && (full || (extends && self.spare_ready.is_some())) {
            self.rotate()?;
        }
        let name = &self.segments.last().expect("a current segment").name;
        let storage = &mut self.storage;
        storage
            .write_at(name, self.segment_current_bytes, &self.buffer)
            .map_err(|e| LogError::io(storage.path(name), "write", e))?;
        if self.options.sync == SyncMode::Fdatasync {
            storage
                .sync_data(name)
                .map_err(|e| LogError::io(storage.path(name), "fdatasync", e))?;
            self.drop_synced_pages(self.segment_current_bytes + group_bytes);
        }
        Ok(())
    }

    /// Lets the page cache free the current segment's whole pages before `synced_end`
    /// once they add up to [`DROP_CACHED_BYTES`]. The page holding `synced_end` stays
    /// cached: the next group writes into it, and a partial write into a page the cache
    /// no longer holds would first read it from the disk.
    fn drop_synced_pages(&mut self, synced_end: u64) {
        let page_end = crate::page_cache::page_start(synced_end);
        let from = self.segment_current_cached_from;
        if page_end >= from + DROP_CACHED_BYTES {
            let name = &self.segments.last().expect("a current segment").name;
            self.storage.drop_cached(name, from, page_end - from);
            self.segment_current_cached_from = page_end;
        }
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let spare = self.spare_ready.take();
        self.spare_failed = false;
        let previous = self
            .segments
            .last()
            .expect("a current segment")
            .name
            .clone();
        if self.options.sync == SyncMode::UnsafeNoSync {
            // Appends did not sync this segment; a snapshot or close marker may later
            // rely on its frames, and no later sync of the new segment covers them.
            self.storage
                .sync_data(&previous)
                .map_err(|e| LogError::io(self.storage.path(&previous), "fdatasync", e))?;
        }
        let (segment, capacity) = start_segment(&mut *self.storage, self.sequence_next, spare)?;
        if self.options.sync == SyncMode::Fdatasync {
            // Every frame of the previous segment is synced, and so are the zeros left of
            // a spare it started from: none of it is read again.
            let from = self.segment_current_cached_from;
            let end = self
                .segment_current_capacity
                .max(self.segment_current_bytes);
            self.storage
                .drop_cached(&previous, from, end.saturating_sub(from));
        }
        self.storage.close(&previous);
        self.segments.push(segment);
        self.segment_current_bytes = SEGMENT_HEADER_SIZE as u64;
        self.segment_current_capacity = capacity;
        self.segment_current_frames = 0;
        self.segment_current_cached_from = 0;
        Ok(())
    }

    /// True when a spare segment is worth writing now: none is ready, the log is busy
    /// (see [`SPARE_TRIGGER_BYTES`]), and the current segment is at least half used
    /// (writing it as late as that keeps its disk traffic away from most of the
    /// segment's life). Also true while one is half written.
    pub fn spare_wanted(&self) -> bool {
        if self.poisoned || self.spare_ready.is_some() || self.spare_failed {
            return false;
        }
        if self.spare_written.is_some() {
            return true;
        }
        let trigger = SPARE_TRIGGER_BYTES.min(self.options.segment_bytes_max / 8);
        let half_used = self.segment_current_bytes >= self.segment_current_capacity / 2;
        self.bytes_logged >= trigger && half_used
    }

    /// True when a spare is wanted and the current segment is three quarters used: the
    /// caller should write steps even if they delay commits, or the log will have to
    /// grow its next segment by extending the file.
    pub fn spare_urgent(&self) -> bool {
        let used = self.segment_current_bytes;
        self.spare_wanted() && used >= self.options.segment_bytes_max / 4 * 3
    }

    /// Writes the next at most `bytes_max` (≤ [`SPARE_STEP_BYTES_MAX`]) zeros of the
    /// spare and syncs them; the last step renames the temp file to `wal-spare.log` and
    /// syncs the directory, so a file of that name is always whole and durable. Does nothing
    /// unless [`Wal::spare_wanted`].
    ///
    /// Returns the zeros this step wrote ([`Wal::spare_ready`] tells when the spare is
    /// whole). An error gives up on this spare (its temp file is removed, best effort,
    /// and again at the next open) and stops spares until the next rotation; it never
    /// poisons the log.
    pub fn write_spare_step(&mut self, bytes_max: u64) -> Result<u64, LogError> {
        if !self.spare_wanted() {
            return Ok(0);
        }
        let temp = format::SPARE_SEGMENT_TEMP_NAME;
        let result = self.spare_step(temp, bytes_max.clamp(1, SPARE_STEP_BYTES_MAX));
        if result.is_err() {
            self.spare_written = None;
            self.spare_failed = true;
            let _ = self.storage.remove(temp);
        }
        result
    }

    fn spare_step(&mut self, temp: &str, bytes_max: u64) -> Result<u64, LogError> {
        let spare_bytes = self.options.segment_bytes_max;
        let storage = &mut *self.storage;
        let path = storage.path(temp);
        let written = match self.spare_written {
            Some(written) => written,
            None => {
                storage
                    .create(temp)
                    .map_err(|e| LogError::io(path.clone(), "create spare segment", e))?;
                0
            }
        };
        let step = bytes_max.min(spare_bytes - written);
        self.zeros.resize(SPARE_STEP_BYTES_MAX as usize, 0);
        storage
            .append(temp, &self.zeros[..step as usize])
            .map_err(|e| LogError::io(path.clone(), "write spare segment", e))?;
        storage
            .sync_data(temp)
            .map_err(|e| LogError::io(path.clone(), "fdatasync", e))?;
        let written = written + step;
        self.spare_written = Some(written);
        if written < spare_bytes {
            return Ok(step);
        }
        let len = storage
            .len(temp)
            .map_err(|e| LogError::io(path.clone(), "stat spare segment", e))?;
        assert_eq!(len, spare_bytes, "the spare holds exactly what was written");
        storage
            .rename(temp, format::SPARE_SEGMENT_NAME)
            .map_err(|e| LogError::io(path, "rename spare segment", e))?;
        storage
            .sync_dir()
            .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))?;
        self.spare_written = None;
        self.spare_ready = Some(spare_bytes);
        Ok(step)
    }

    /// Bytes of the spare segment ready for the next rotation, if any.
    pub fn spare_ready(&self) -> Option<u64> {
        self.spare_ready
    }

    /// Zeros left after the last frame of the current segment: room for frames that are
    /// written in place (0 when the segment grows by extending its file).
    pub fn preallocated_bytes_left(&self) -> u64 {
        self.segment_current_capacity - self.segment_current_bytes
    }

    /// Writes a snapshot of the state after record `sequence`, atomically (temp file,
    /// fdatasync, rename, fsync of the directory). Then removes snapshots and segments
    /// that even the previous snapshot no longer needs: the previous one stays as a
    /// fallback, with every segment after it.
    ///
    /// An error here leaves the log itself untouched and does not poison appends.
    ///
    /// # Panics
    /// If `sequence` has not been appended yet, or is older than the newest snapshot.
    pub fn write_snapshot(&mut self, sequence: u64, image: &StateImage) -> Result<(), LogError> {
        let job = self.snapshot_job(sequence)?;
        let written = job.write(image)?;
        match self.snapshot_written(written)? {
            Some(retirement) => retirement.run().map(|_| ()),
            None => Ok(()),
        }
    }

    /// Starts a snapshot at `sequence` that [`SnapshotJob::write`] can write on another
    /// thread while this log keeps appending; hand its result to
    /// [`Wal::snapshot_written`]. One job at a time.
    pub fn snapshot_job(&mut self, sequence: u64) -> Result<SnapshotJob, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if self.options.sync == SyncMode::UnsafeNoSync {
            // A durable snapshot past unsynced frames would leave, after a crash, a log
            // that ends before its snapshot: a directory recovery refuses.
            let current = &self.segments.last().expect("a current segment").name;
            self.storage
                .sync_data(current)
                .map_err(|e| LogError::io(self.storage.path(current), "fdatasync", e))?;
        }
        assert!(
            sequence < self.sequence_next,
            "snapshot at {sequence} covers records not yet logged (next is {})",
            self.sequence_next
        );
        assert!(
            self.snapshots_good
                .last()
                .is_none_or(|&newest| newest <= sequence),
            "snapshot at {sequence} is older than the newest snapshot"
        );
        let storage = self
            .storage
            .another_handle()
            .map_err(|e| LogError::io(self.storage.path(""), "open a snapshot handle", e))?;
        Ok(SnapshotJob { storage, sequence })
    }

    /// Records a snapshot written by a [`SnapshotJob`]. The segments that the older kept
    /// snapshot covers, and any snapshot older than it, leave the log at once; the
    /// returned [`Retirement`] removes their files, on whichever thread runs it.
    pub fn snapshot_written(&mut self, sequence: u64) -> Result<Option<Retirement>, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        assert!(
            self.snapshots_good
                .last()
                .is_none_or(|&newest| newest <= sequence),
            "snapshot at {sequence} is older than the newest snapshot"
        );
        if self.snapshots_good.last() != Some(&sequence) {
            self.snapshots_good.push(sequence);
        }
        let count = self.snapshots_good.len();
        if count < 2 {
            return Ok(None);
        }
        // The handle first: if it cannot be had, the log still lists every file, and a
        // later retirement removes them.
        let storage = self
            .storage
            .another_handle()
            .map_err(|e| LogError::io(self.storage.path(""), "open a retirement handle", e))?;
        let previous = self.snapshots_good[count - 2];
        self.snapshots_good.drain(..count - 2);
        let mut segments = Vec::new();
        while self.segments.len() > 1 && self.segments[1].first_sequence <= previous + 1 {
            segments.push(self.segments.remove(0).name);
        }
        Ok(Some(Retirement {
            storage,
            snapshots_before: previous,
            segments,
        }))
    }
}

/// Files a snapshot made unnecessary ([`Wal::snapshot_written`]): the segments whose
/// records all precede the older kept snapshot, and the snapshots older than it. The
/// log no longer reads them, so they may be removed on another thread: deleting a
/// gigabyte of segments can keep the file system busy for a second, and the log's
/// next sync would wait behind it on the log's own thread. A crash before they are
/// gone leaves only files recovery skips (segments wholly before its snapshot, older
/// snapshots), removed at the next retirement.
#[derive(Debug)]
pub struct Retirement {
    storage: Box<dyn Storage>,
    snapshots_before: u64,
    segments: Vec<String>,
}

impl Retirement {
    /// Removes the files and syncs the directory; returns how many were removed. A
    /// file that cannot be removed does not stop the others; the first error is
    /// returned at the end.
    pub fn run(mut self) -> Result<usize, LogError> {
        let mut names = std::mem::take(&mut self.segments);
        let listed = scan::list(&mut *self.storage);
        let mut first_error = None;
        match listed {
            Ok(listing) => names.extend(
                listing
                    .snapshots
                    .into_iter()
                    .filter(|(sequence, _)| *sequence < self.snapshots_before)
                    .map(|(_, name)| name),
            ),
            Err(error) => first_error = Some(error),
        }
        let mut removed = 0;
        for name in &names {
            match self.storage.remove(name) {
                Ok(()) => removed += 1,
                Err(e) => {
                    first_error.get_or_insert(LogError::io(
                        self.storage.path(name),
                        "remove retired file",
                        e,
                    ));
                }
            }
        }
        if removed > 0
            && let Err(e) = self.storage.sync_dir()
        {
            first_error.get_or_insert(LogError::io(self.storage.path(""), "fsync directory", e));
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(removed),
        }
    }
}

fn write_snapshot_atomically(
    storage: &mut dyn Storage,
    temp: &str,
    name: &str,
    sequence: u64,
    source: &dyn SnapshotSource,
) -> Result<(), LogError> {
    let path = storage.path(temp);
    storage
        .create(temp)
        .map_err(|e| LogError::io(path.clone(), "create snapshot", e))?;
    let bytes = snapshot::write(storage, temp, sequence, source)
        .map_err(|e| LogError::io(path.clone(), "write snapshot", e))?;
    let len = storage
        .len(temp)
        .map_err(|e| LogError::io(path.clone(), "stat snapshot", e))?;
    assert_eq!(
        len, bytes,
        "the snapshot file holds exactly what was written"
    );
    storage
        .sync_data(temp)
        .map_err(|e| LogError::io(path.clone(), "fdatasync", e))?;
    storage
        .rename(temp, name)
        .map_err(|e| LogError::io(path, "rename snapshot", e))?;
    storage
        .sync_dir()
        .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))
}

/// Starts a segment durably: from the spare of `spare` bytes if there is one (renamed
/// into place), else as a new empty file; then the header written and synced, then the
/// directory synced, so that frames are only ever written to a segment whose header is
/// on disk. Returns the segment and its file length (its capacity for in-place writes).
///
/// A crash between the rename and the header's sync leaves a segment of zeros, which
/// recovery removes as a torn header.
fn start_segment(
    storage: &mut dyn Storage,
    first_sequence: u64,
    spare: Option<u64>,
) -> Result<(SegmentFile, u64), LogError> {
    let name = format::segment_name(first_sequence);
    let path = storage.path(&name);
    match spare {
        Some(_) => storage
            .rename(format::SPARE_SEGMENT_NAME, &name)
            .map_err(|e| LogError::io(path.clone(), "rename spare segment", e))?,
        None => storage
            .create(&name)
            .map_err(|e| LogError::io(path.clone(), "create segment", e))?,
    }
    storage
        .write_at(&name, 0, &format::encode_segment_header(first_sequence))
        .map_err(|e| LogError::io(path.clone(), "write", e))?;
    storage
        .sync_data(&name)
        .map_err(|e| LogError::io(path, "fdatasync", e))?;
    storage
        .sync_dir()
        .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))?;
    let capacity = spare.unwrap_or(0).max(SEGMENT_HEADER_SIZE as u64);
    let segment = SegmentFile {
        first_sequence,
        name,
    };
    Ok((segment, capacity))
}

/// What recovery found among the snapshots: the newest one that reads back whole (its
/// state kept), the damaged ones newer than it, and the first damage found.
struct SnapshotChoice {
    loaded: Option<snapshot::Loaded>,
    damaged: Vec<PathBuf>,
    first_damage: Option<LogError>,
}

/// Reads the snapshots newest first until one reads back whole, each into `stream` as it
/// is read when there is one (the one chosen is then returned without its image).
/// Damage moves on to the next older one; any other error stops recovery.
fn newest_snapshot(
    storage: &mut dyn Storage,
    snapshots: &[(u64, String)],
    mut stream: Option<&mut dyn SnapshotStream>,
) -> Result<SnapshotChoice, LogError> {
    let mut choice = SnapshotChoice {
        loaded: None,
        damaged: Vec::new(),
        first_damage: None,
    };
    for (_, name) in snapshots.iter().rev() {
        let read = match stream.as_deref_mut() {
            Some(stream) => {
                snapshot::read_streamed(storage, name, stream).map(|sequence| snapshot::Loaded {
                    sequence,
                    image: None,
                })
            }
            None => snapshot::read(storage, name, true),
        };
        match read {
            Ok(snapshot) => {
                choice.loaded = Some(snapshot);
                break;
            }
            Err(error @ LogError::Corrupt { .. }) => {
                choice.damaged.push(storage.path(name));
                choice.first_damage.get_or_insert(error);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(choice)
}

/// Hands every logged record after `base` to `sink`, reading from the segment that
/// holds `base + 1`; returns the scan and how many records were handed over.
/// `snapshots_exist`: a snapshot (whole or damaged) is present, so an empty log is a
/// missing segment, not a new ledger.
fn replay_after(
    storage: &mut dyn Storage,
    segments: &[SegmentFile],
    base: u64,
    snapshots_exist: bool,
    sink: &mut dyn RecoverySink,
) -> Result<(scan::LogScan, u64), LogError> {
    // Paired check: what recovery hands over is consecutive and starts after the base.
    let mut records = 0u64;
    let mut hand_over = |record: LogRecord| {
        records += 1;
        assert_eq!(
            record.sequence,
            base + records,
            "recovered records are consecutive"
        );
        sink.record(record);
    };
    if segments.is_empty() && snapshots_exist {
        return Err(LogError::MissingSegment {
            file: storage.path(&format::segment_name(base + 1)),
            first_sequence: base + 1,
            reason: "snapshots exist but no log segment does".into(),
        });
    }
    let start = segments
        .iter()
        .rposition(|segment| segment.first_sequence <= base + 1)
        .unwrap_or(0);
    let log = scan::scan_log(
        storage,
        segments,
        start,
        base,
        &mut Collect::After {
            base,
            out: &mut hand_over,
        },
    )?;
    Ok((log, records))
}

/// A damaged snapshot with no fallback is its own error, clearer than the gap it leaves:
/// a missing segment after a snapshot was skipped as damaged becomes a snapshot error.
fn explain_gap(
    error: LogError,
    first_damage: Option<LogError>,
    base: u64,
    snapshots_damaged: &[PathBuf],
) -> LogError {
    match (error, first_damage) {
        (error @ LogError::MissingSegment { .. }, Some(damage)) => LogError::Snapshot {
            file: snapshots_damaged.first().cloned().unwrap_or_default(),
            reason: format!(
                "{damage}; falling back to {} needs the log from sequence {}: {error}",
                if base == 0 {
                    "no snapshot".to_string()
                } else {
                    format!("snapshot {base}")
                },
                base + 1
            ),
        },
        (error, _) => error,
    }
}

/// Where appends continue in the current (last) segment.
#[derive(Debug, Clone, Copy, Default)]
struct CurrentSegment {
    /// Header plus whole frames.
    bytes: u64,
    /// The file's length: frames may be written in place up to it.
    capacity: u64,
    frames: u64,
}

/// Repairs the end of the last segment as its scan found it: a torn write is cleared
/// (zeroed in place, or cut off), a segment whose header is torn is removed. Returns
/// where appends continue (all zero when there is no segment to continue) and what was
/// repaired (`records` left 0 for the caller).
fn repair_tail(
    storage: &mut dyn Storage,
    segments: &mut Vec<SegmentFile>,
    last_scan: Option<scan::SegmentScan>,
) -> Result<(CurrentSegment, Repairs), LogError> {
    let mut current = CurrentSegment::default();
    let mut repairs = Repairs::default();
    let (Some(last), Some(scan)) = (segments.last(), last_scan) else {
        return Ok((current, repairs));
    };
    let path = storage.path(&last.name);
    match scan.tail {
        Tail::Clean => current.capacity = scan.valid_bytes + scan.zero_tail_bytes,
        Tail::Torn {
            valid_bytes,
            torn_bytes,
            zero_bytes,
        } => {
            repairs.torn_tail_kept = keep_torn_bytes(storage, &last.name, valid_bytes, torn_bytes)?;
            current.capacity =
                clear_torn_tail(storage, &last.name, valid_bytes, torn_bytes, zero_bytes)?;
            repairs.torn_tail_bytes_cut = torn_bytes;
        }
        Tail::TornHeader { torn_bytes } => {
            repairs.torn_tail_kept = keep_torn_bytes(storage, &last.name, 0, torn_bytes)?;
            storage
                .remove(&last.name)
                .map_err(|e| LogError::io(path.clone(), "remove torn segment", e))?;
            storage
                .sync_dir()
                .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))?;
            repairs.torn_tail_bytes_cut = torn_bytes;
            repairs.torn_segment_removed = true;
            segments.pop();
        }
    }
    if !matches!(scan.tail, Tail::TornHeader { .. }) {
        current.bytes = scan.valid_bytes;
        current.frames = scan.frames;
    }
    Ok((current, repairs))
}

/// The name of the file that keeps the bytes of a torn tail cut from segment `segment`
/// at `offset`: `torn-<segment>-at-<offset>.bin`, which no part of the log reads.
pub fn torn_tail_name(segment: &str, offset: u64) -> String {
    format!("torn-{}-at-{offset}.bin", segment.trim_end_matches(".log"))
}

/// Copies `bytes` bytes of `segment` from `offset` into their own durable file
/// ([`torn_tail_name`]) before the tail is cleared, and returns its path; `None` when
/// there is nothing to keep. A crash before the clear keeps them again at the next open.
fn keep_torn_bytes(
    storage: &mut dyn Storage,
    segment: &str,
    offset: u64,
    bytes: u64,
) -> Result<Option<PathBuf>, LogError> {
    if bytes == 0 {
        return Ok(None);
    }
    let kept = torn_tail_name(segment, offset);
    let error = |storage: &dyn Storage, what, e| LogError::io(storage.path(&kept), what, e);
    storage
        .create(&kept)
        .map_err(|e| error(storage, "create torn-tail copy", e))?;
    // One chunk at a time: a torn tail is at most a segment.
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < offset + bytes {
        let take = usize::try_from((offset + bytes - at).min(chunk.len() as u64))
            .expect("a chunk fits in memory");
        storage
            .read_at(segment, at, &mut chunk[..take])
            .map_err(|e| LogError::io(storage.path(segment), "read torn tail", e))?;
        storage
            .append(&kept, &chunk[..take])
            .map_err(|e| error(storage, "write torn-tail copy", e))?;
        at += take as u64;
    }
    storage
        .sync_data(&kept)
        .map_err(|e| error(storage, "fdatasync", e))?;
    storage.close(&kept);
    storage
        .sync_dir()
        .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))?;
    Ok(Some(storage.path(&kept)))
}

/// What was read back may come from the page cache, not the disk: after a restart
/// without a machine crash (a failed sync, a killed process) unsynced frames, a cleared
/// torn tail or a segment's name may not be durable yet. Make them so before anything
/// is appended after them, acknowledged, or named in a close marker. (After a failed
/// fsync Linux may drop the dirty pages and report the next fsync as successful:
/// restart the host, not just the process, then.)
fn sync_recovered(storage: &mut dyn Storage, current: &str) -> Result<(), LogError> {
    storage
        .sync_data(current)
        .map_err(|e| LogError::io(storage.path(current), "fdatasync", e))?;
    storage
        .sync_dir()
        .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))
}

/// Discards a torn write at the end of the last segment and returns the segment's
/// capacity for frames afterwards. A torn write in place (zeros follow it) is zeroed
/// where it lies, so the preallocated space after it stays usable; otherwise the file
/// is truncated to its last whole frame. Either way only zeros then follow the last
/// frame; open syncs the segment (it is the current one) before it returns. Zeroing is
/// itself safe to tear: what a crash leaves of it is a shorter torn tail, found and
/// cleared the same way at the next open.
fn clear_torn_tail(
    storage: &mut dyn Storage,
    name: &str,
    valid_bytes: u64,
    torn_bytes: u64,
    zero_bytes: u64,
) -> Result<u64, LogError> {
    let path = storage.path(name);
    let capacity = if zero_bytes == 0 {
        storage
            .truncate(name, valid_bytes)
            .map_err(|e| LogError::io(path.clone(), "truncate torn tail", e))?;
        valid_bytes
    } else {
        let torn = usize::try_from(torn_bytes).expect("a segment fits in memory");
        storage
            .write_at(name, valid_bytes, &vec![0u8; torn])
            .map_err(|e| LogError::io(path, "zero torn tail", e))?;
        valid_bytes + torn_bytes + zero_bytes
    };
    Ok(capacity)
}

/// The spare found at open is kept if it has the size this log writes; otherwise it is
/// removed. It is whole and durable by construction (see [`Wal::write_spare_step`]), and
/// all zeros but perhaps its first [`SEGMENT_HEADER_SIZE`] bytes: a rotation that wrote
/// and synced the header of the segment it was becoming, but crashed before the rename
/// reached the disk, leaves that header in it. Kept as is, it would give the next
/// segment made from this spare a stale header until its own header is durable; so a
/// header found here is zeroed, durably, before the spare is kept.
fn keep_spare(
    storage: &mut dyn Storage,
    spare: Option<&str>,
    options: &LogOptions,
) -> Result<Option<u64>, LogError> {
    let Some(name) = spare else {
        return Ok(None);
    };
    let path = storage.path(name);
    let bytes = storage
        .len(name)
        .map_err(|e| LogError::io(path.clone(), "stat spare segment", e))?;
    if bytes == options.segment_bytes_max {
        let mut head = [0u8; SEGMENT_HEADER_SIZE];
        storage
            .read_at(name, 0, &mut head)
            .map_err(|e| LogError::io(path.clone(), "read spare segment", e))?;
        if !format::is_zero(&head) {
            storage
                .write_at(name, 0, &[0u8; SEGMENT_HEADER_SIZE])
                .map_err(|e| LogError::io(path.clone(), "write spare segment", e))?;
            storage
                .sync_data(name)
                .map_err(|e| LogError::io(path.clone(), "fdatasync", e))?;
        }
        return Ok(Some(bytes));
    }
    storage
        .remove(name)
        .map_err(|e| LogError::io(path, "remove spare segment", e))?;
    storage
        .sync_dir()
        .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))?;
    Ok(None)
}

fn remove_temps(storage: &mut dyn Storage, temps: &[String]) -> Result<(), LogError> {
    for temp in temps {
        storage
            .remove(temp)
            .map_err(|e| LogError::io(storage.path(temp), "remove unfinished file", e))?;
    }
    if !temps.is_empty() {
        storage
            .sync_dir()
            .map_err(|e| LogError::io(storage.path(""), "fsync directory", e))?;
    }
    Ok(())
}

/// A snapshot being written through its own storage handle, off the log's thread.
#[derive(Debug)]
pub struct SnapshotJob {
    storage: Box<dyn Storage>,
    sequence: u64,
}

impl SnapshotJob {
    /// Writes the snapshot atomically (temp file, sync, rename, sync the directory) and
    /// returns its sequence for [`Wal::snapshot_written`]. A failure leaves the log as
    /// it was: the previous snapshot and every segment are still there.
    pub fn write(mut self, source: &dyn SnapshotSource) -> Result<u64, LogError> {
        let name = format::snapshot_name(self.sequence);
        let temp = format!("{name}{}", format::TEMP_SUFFIX);
        if let Err(error) =
            write_snapshot_atomically(&mut *self.storage, &temp, &name, self.sequence, source)
        {
            // Best effort: a leftover temp file is removed at the next open anyway.
            let _ = self.storage.remove(&temp);
            return Err(error);
        }
        Ok(self.sequence)
    }
}
