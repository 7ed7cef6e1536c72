//! Snapshot files: a [`StateImage`] as header, five sections of items in checksummed
//! chunks, and a footer. See `docs/log-format.md` for the bytes.
//!
//! Chunks (8,192 items, 1 MiB of accounts; 65,536 packed transfers, about 2 MiB) keep
//! every buffer bounded and let a snapshot of millions of accounts stream through
//! without one giant CRC or allocation. Transfers are stored in the packed layout of
//! [`tally_types::packed`] (format 3), the state machine's own: a snapshot writes the
//! store's chunks as they are, about a quarter of the fixed layout's bytes.

use crate::error::LogError;
use crate::format::{self, HeaderError, le_u32, le_u64, le_u128};
use crate::storage::Storage;
use std::io;
use std::path::PathBuf;
use tally_types::codec::{
    RECORD_LAYOUT_VERSION, RECORD_SIZE, decode_account, decode_transfer, encode_account,
};
use tally_types::packed::{
    self, PACKED_RUN_RECORDS, PACKED_TRANSFER_BYTES_MAX, PackedRun, RunError, UnpackedRun,
};
use tally_types::{Account, LoadedImage, PendingStatus, StateImage, Transfer};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TALLYSNP";
/// Version of the snapshot layout written. Version 3 stores transfers packed; versions
/// 1 and 2 (the log's format version, then shared) stored them in the fixed 128-byte
/// layout, and are still read.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 3;
pub const SNAPSHOT_FORMAT_VERSION_READ_OLDEST: u16 = 1;
/// The first snapshot version whose transfers section is packed.
const PACKED_TRANSFERS_SINCE: u16 = 3;
/// The fewest bytes a packed transfer takes: presence, four one-byte varints (id,
/// accounts, amount), three (ledger, code, flags) and the stamp. Bounds a section's
/// count against the file before anything is allocated for it.
const PACKED_TRANSFER_BYTES_MIN: usize = 1 + 4 + 3 + 8;
pub const SNAPSHOT_HEADER_SIZE: usize = 64;
pub const SECTION_MAGIC: [u8; 4] = *b"SECT";
pub const SECTION_HEADER_SIZE: usize = 32;
pub const FOOTER_MAGIC: [u8; 8] = *b"TALLYEND";
pub const FOOTER_SIZE: usize = 16;
/// Items per chunk the writer uses.
pub const CHUNK_ITEMS: u32 = 8_192;
/// Most items per chunk a reader accepts: bounds the read buffer (8 MiB of fixed
/// records, 11.25 MiB of packed transfers at their longest).
pub const CHUNK_ITEMS_MAX: u32 = 65_536;
/// Packed transfers per chunk the writer uses: one chunk of the state machine's store.
const PACKED_CHUNK_ITEMS: u32 = PACKED_RUN_RECORDS as u32;

/// The sections, in file order: (id, item bytes, name).
const SECTIONS: [(u16, usize, &str); 5] = [
    (1, RECORD_SIZE, "accounts"),
    // Item bytes 0: packed, variable length (format 3; RECORD_SIZE before).
    (2, 0, "transfers"),
    (3, 32, "pending_statuses"),
    (4, 32, "refunded"),
    (5, 16, "failed_ids"),
];

/// What a snapshot is written from: a [`StateImage`], or a state read in place (the
/// engine writes from a frozen state, never building the image's vector of every
/// transfer). Items come in file order: accounts in creation order, transfers in
/// timestamp order, side tables sorted by id.
pub trait SnapshotSource {
    /// Timestamp of the last event applied (0 for an empty ledger).
    fn last_timestamp(&self) -> u64;
    /// How many accounts [`SnapshotSource::accounts`] yields.
    fn accounts_len(&self) -> usize;
    /// Exactly `accounts_len` accounts, in creation order.
    fn accounts(&self) -> Box<dyn Iterator<Item = Account> + '_>;
    /// How many transfers [`SnapshotSource::packed_transfer_runs`] hands out.
    fn transfers_len(&self) -> usize;
    /// Hands `run` exactly `transfers_len` transfers in timestamp order, packed
    /// ([`tally_types::packed`]), as `(records, bytes)` runs of
    /// [`PACKED_RUN_RECORDS`] records, the last one shorter, none when empty; stops at
    /// the first error `run` returns.
    fn packed_transfer_runs(
        &self,
        run: &mut dyn FnMut(usize, &[u8]) -> io::Result<()>,
    ) -> io::Result<()>;
    /// The status of every transfer flagged `pending`, sorted by id.
    fn pending_statuses(&self) -> &[(u128, PendingStatus)];
    /// `(transfer id, total refunded so far)` for every refunded transfer, sorted by id.
    fn refunded(&self) -> &[(u128, u128)];
    /// Transfer ids burned by a transient failure, sorted.
    fn failed_ids(&self) -> &[u128];
}

impl SnapshotSource for StateImage {
    fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }
    fn accounts_len(&self) -> usize {
        self.accounts.len()
    }
    fn accounts(&self) -> Box<dyn Iterator<Item = Account> + '_> {
        Box::new(self.accounts.iter().copied())
    }
    fn transfers_len(&self) -> usize {
        self.transfers.len()
    }
    fn packed_transfer_runs(
        &self,
        run: &mut dyn FnMut(usize, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        packed::pack_in_runs(self.transfers.iter().copied(), run)
    }
    fn pending_statuses(&self) -> &[(u128, PendingStatus)] {
        &self.pending_statuses
    }
    fn refunded(&self) -> &[(u128, u128)] {
        &self.refunded
    }
    fn failed_ids(&self) -> &[u128] {
        &self.failed_ids
    }
}

/// One section's items in file order, encoded one at a time into a chunk's slots.
trait SectionItems {
    fn encode_next(&mut self, out: &mut [u8]);
    /// Whether every item has been encoded (the count in the section header was right).
    fn is_exhausted(&mut self) -> bool;
}

/// [`SectionItems`] over an iterator and an encoding of one item.
struct Items<I, F> {
    items: I,
    encode: F,
}

impl<T, I: Iterator<Item = T>, F: FnMut(T, &mut [u8])> SectionItems for Items<I, F> {
    fn encode_next(&mut self, out: &mut [u8]) {
        let item = self
            .items
            .next()
            .expect("a snapshot source yields as many items as it counts");
        (self.encode)(item, out);
    }

    fn is_exhausted(&mut self) -> bool {
        self.items.next().is_none()
    }
}

/// Section `id`'s item count and items (every section but the packed transfers).
fn section_items(source: &dyn SnapshotSource, id: u16) -> (usize, Box<dyn SectionItems + '_>) {
    match id {
        1 => (
            source.accounts_len(),
            Box::new(Items {
                items: source.accounts(),
                encode: |account: Account, out: &mut [u8]| {
                    encode_account(&account, out.try_into().expect("record size"));
                },
            }),
        ),
        3 => (
            source.pending_statuses().len(),
            Box::new(Items {
                items: source.pending_statuses().iter(),
                encode: |&(transfer_id, status): &(u128, PendingStatus), out: &mut [u8]| {
                    out[0..16].copy_from_slice(&transfer_id.to_le_bytes());
                    out[16] = status as u8;
                },
            }),
        ),
        4 => (
            source.refunded().len(),
            Box::new(Items {
                items: source.refunded().iter(),
                encode: |&(transfer_id, amount): &(u128, u128), out: &mut [u8]| {
                    out[0..16].copy_from_slice(&transfer_id.to_le_bytes());
                    out[16..32].copy_from_slice(&amount.to_le_bytes());
                },
            }),
        ),
        5 => (
            source.failed_ids().len(),
            Box::new(Items {
                items: source.failed_ids().iter(),
                encode: |id: &u128, out: &mut [u8]| out.copy_from_slice(&id.to_le_bytes()),
            }),
        ),
        _ => unreachable!("section ids are fixed"),
    }
}

/// Decodes one item into `image` (or only checks it when `image` is `None`).
fn decode_item(id: u16, bytes: &[u8], image: Option<&mut StateImage>) -> Result<(), String> {
    match id {
        1 => {
            let account = decode_account(bytes.try_into().map_err(|_| "item size")?)
                .map_err(|e| e.to_string())?;
            if let Some(image) = image {
                image.accounts.push(account);
            }
        }
        2 => {
            // Versions 1 and 2 only: the fixed layout.
            let transfer = decode_transfer(bytes.try_into().map_err(|_| "item size")?)
                .map_err(|e| e.to_string())?;
            if let Some(image) = image {
                image.transfers.push(transfer);
            }
        }
        3 => {
            let status = PendingStatus::from_u8(bytes[16])
                .ok_or_else(|| format!("unknown pending status {}", bytes[16]))?;
            if bytes[17..32].iter().any(|&b| b != 0) {
                return Err("reserved bytes are not zero".into());
            }
            if let Some(image) = image {
                image.pending_statuses.push((le_u128(bytes, 0), status));
            }
        }
        4 => {
            if let Some(image) = image {
                image.refunded.push((le_u128(bytes, 0), le_u128(bytes, 16)));
            }
        }
        5 => {
            if let Some(image) = image {
                image.failed_ids.push(le_u128(bytes, 0));
            }
        }
        _ => unreachable!("section ids are fixed"),
    }
    Ok(())
}

/// CRC of a chunk, seeded with its section and index so that a chunk moved or swapped
/// within the file does not pass.
fn chunk_crc(section_id: u16, chunk_index: u64, bytes: &[u8]) -> u32 {
    let mut seed = [0u8; 16];
    seed[0..8].copy_from_slice(&u64::from(section_id).to_le_bytes());
    seed[8..16].copy_from_slice(&chunk_index.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&seed), bytes)
}

/// CRC of a packed chunk: seeded like [`chunk_crc`], over its length field and bytes.
fn packed_chunk_crc(chunk_index: u64, length: [u8; 4], bytes: &[u8]) -> u32 {
    let mut seed = [0u8; 20];
    seed[0..8].copy_from_slice(&2u64.to_le_bytes());
    seed[8..16].copy_from_slice(&chunk_index.to_le_bytes());
    seed[16..20].copy_from_slice(&length);
    crc32c::crc32c_append(crc32c::crc32c(&seed), bytes)
}

fn encode_header(sequence: u64, last_timestamp: u64) -> [u8; SNAPSHOT_HEADER_SIZE] {
    let mut header = [0u8; SNAPSHOT_HEADER_SIZE];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..10].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header[10..12].copy_from_slice(&RECORD_LAYOUT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(SNAPSHOT_HEADER_SIZE as u32).to_le_bytes());
    header[16..24].copy_from_slice(&sequence.to_le_bytes());
    header[24..32].copy_from_slice(&last_timestamp.to_le_bytes());
    header[32..36].copy_from_slice(&(SECTIONS.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&header[0..60]);
    header[60..64].copy_from_slice(&crc.to_le_bytes());
    header
}

fn section_header(
    id: u16,
    item_bytes: usize,
    count: usize,
    chunk_items: u32,
) -> [u8; SECTION_HEADER_SIZE] {
    let mut header = [0u8; SECTION_HEADER_SIZE];
    header[0..4].copy_from_slice(&SECTION_MAGIC);
    header[4..6].copy_from_slice(&id.to_le_bytes());
    header[6..8].copy_from_slice(&(item_bytes as u16).to_le_bytes());
    header[8..16].copy_from_slice(&(count as u64).to_le_bytes());
    header[16..20].copy_from_slice(&chunk_items.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Dirty snapshot bytes allowed before an intermediate `fdatasync`. Without it a
/// multi-gigabyte snapshot reaches the disk in one final sync, and every log sync
/// queued behind it waits: a commit stall of a second or more under full load (figures:
/// docs/performance.md).
const SNAPSHOT_SYNC_BYTES: u64 = 32 * 1024 * 1024;

/// Writes the whole snapshot to `name` with appends of at most one chunk each, syncing
/// every [`SNAPSHOT_SYNC_BYTES`]. The caller syncs the rest and renames. Returns the
/// bytes written.
pub(crate) fn write(
    storage: &mut dyn Storage,
    name: &str,
    sequence: u64,
    source: &dyn SnapshotSource,
) -> io::Result<u64> {
    let mut written = 0u64;
    let mut unsynced = 0u64;
    let mut cached_from = 0u64;
    let mut put = |storage: &mut dyn Storage, bytes: &[u8]| -> io::Result<()> {
        storage.append(name, bytes)?;
        written += bytes.len() as u64;
        unsynced += bytes.len() as u64;
        if unsynced >= SNAPSHOT_SYNC_BYTES {
            storage.sync_data(name)?;
            unsynced = 0;
            // Nothing reads a snapshot back but recovery: its synced pages are let go,
            // so the next ones reuse them instead of taking fresh memory (as the log
            // does, `Wal::drop_synced_pages`). The page being appended to stays.
            let page_end = crate::page_cache::page_start(written);
            storage.drop_cached(name, cached_from, page_end - cached_from);
            cached_from = page_end;
        }
        Ok(())
    };
    put(storage, &encode_header(sequence, source.last_timestamp()))?;
    let mut chunk = Vec::with_capacity(CHUNK_ITEMS as usize * RECORD_SIZE + 4);
    for (id, item_bytes, _) in SECTIONS {
        if id == 2 {
            let count = source.transfers_len();
            put(
                storage,
                &section_header(id, item_bytes, count, PACKED_CHUNK_ITEMS),
            )?;
            let mut chunk_index = 0u64;
            let mut records_written = 0usize;
            let mut run_short = false;
            source.packed_transfer_runs(&mut |records, bytes| {
                // Every run but the last is whole, as the section header's chunk size
                // promises a reader.
                assert!(
                    !run_short && (1..=PACKED_RUN_RECORDS).contains(&records),
                    "a packed run of {records} records after a short one or too long"
                );
                assert!(bytes.len() <= records * PACKED_TRANSFER_BYTES_MAX);
                run_short = records < PACKED_RUN_RECORDS;
                let length = u32::try_from(bytes.len())
                    .expect("a packed run is under 12 MiB")
                    .to_le_bytes();
                chunk.clear();
                chunk.extend_from_slice(&length);
                chunk.extend_from_slice(bytes);
                let crc = packed_chunk_crc(chunk_index, length, bytes);
                chunk.extend_from_slice(&crc.to_le_bytes());
                put(storage, &chunk)?;
                chunk_index += 1;
                records_written += records;
                Ok(())
            })?;
            // Paired with the count in the section header, as for the other sections.
            assert_eq!(
                records_written, count,
                "packed transfers written differ from the count"
            );
            continue;
        }
        let (count, mut items) = section_items(source, id);
        put(storage, &section_header(id, item_bytes, count, CHUNK_ITEMS))?;
        for (chunk_index, start) in (0..count).step_by(CHUNK_ITEMS as usize).enumerate() {
            let end = count.min(start + CHUNK_ITEMS as usize);
            chunk.clear();
            chunk.resize((end - start) * item_bytes, 0);
            for out in chunk.chunks_exact_mut(item_bytes) {
                items.encode_next(out);
            }
            let crc = chunk_crc(id, chunk_index as u64, &chunk);
            chunk.extend_from_slice(&crc.to_le_bytes());
            put(storage, &chunk)?;
        }
        // Paired with the count in the section header: a source that yields more items
        // than it counts would otherwise leave a snapshot silently short.
        assert!(
            items.is_exhausted(),
            "section {id} has more items than counted"
        );
    }
    let mut footer = [0u8; FOOTER_SIZE];
    footer[0..8].copy_from_slice(&FOOTER_MAGIC);
    footer[8..12].copy_from_slice(&(SECTIONS.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&footer[0..12]);
    footer[12..16].copy_from_slice(&crc.to_le_bytes());
    put(storage, &footer)?;
    Ok(written)
}

/// Reads a snapshot sequentially, bounds-checking every length against the file size.
struct Reader<'a> {
    storage: &'a mut dyn Storage,
    name: &'a str,
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl Reader<'_> {
    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> LogError {
        LogError::corrupt(self.path.clone(), offset, reason)
    }

    /// Reads the next `n` bytes into `buf`; returns where they start.
    fn take(&mut self, n: usize, buf: &mut Vec<u8>) -> Result<u64, LogError> {
        buf.clear();
        buf.resize(n, 0);
        self.take_into(buf)
    }

    /// Reads the next `into.len()` bytes into `into`; returns where they start.
    fn take_into(&mut self, into: &mut [u8]) -> Result<u64, LogError> {
        let at = self.offset;
        let n = into.len();
        if self.len - self.offset < n as u64 {
            return Err(self.corrupt(
                at,
                format!(
                    "snapshot ends at byte {} but {n} more bytes are expected",
                    self.len
                ),
            ));
        }
        self.storage
            .read_at(self.name, at, into)
            .map_err(|e| LogError::io(self.path.clone(), "read snapshot", e))?;
        self.offset += n as u64;
        Ok(at)
    }
}

/// What a snapshot file holds: its sequence and, when asked for, the state (transfers
/// still packed in format 3).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub sequence: u64,
    pub image: Option<LoadedImage>,
}

/// Takes a snapshot as it is read, so that loading it overlaps reading it (see
/// `RecoverySink::snapshot_stream`). [`SnapshotStream::begin`] comes first, then the
/// accounts a checked chunk at a time, then [`SnapshotStream::head`], the runs of
/// transfers, each checked, then [`SnapshotStream::end`] once the whole file has been
/// checked, or [`SnapshotStream::abandoned`] when damage (or an I/O error) was found
/// first: what was built from this snapshot must then be dropped.
pub trait SnapshotStream {
    /// A snapshot begins: its sequence, its last timestamp and how many accounts it
    /// holds.
    fn begin(&mut self, sequence: u64, last_timestamp: u64, accounts: u64);
    /// The next accounts, in creation order, their chunk checked.
    fn accounts(&mut self, accounts: Vec<Account>);
    /// After the accounts: the transfers unpacked (before format 3 only; from
    /// format 3 none, and the head comes before the runs) and how many transfers the
    /// snapshot stores.
    fn head(&mut self, transfers: Vec<Transfer>, stored: u64);
    /// The next run of packed transfers, checked and unpacked.
    fn run(&mut self, run: UnpackedRun);
    /// Room for the next run (a spent one), if the stream has one to give back.
    fn spare_run(&mut self) -> UnpackedRun;
    /// The rest (pending statuses, refunds, failed ids): the snapshot is whole.
    fn end(&mut self, rest: StateImage);
    /// The snapshot since the last begin is not usable: drop what was built from it.
    fn abandoned(&mut self);
}

/// Where a read snapshot's state goes.
enum Keep<'a> {
    /// Nowhere: the file is only checked.
    Nothing,
    /// Into one image, the transfers' runs kept packed.
    Image,
    /// To a stream, as it is read.
    Stream(&'a mut dyn SnapshotStream),
}

/// [`read`] handing the snapshot to `stream` as it is read (see [`SnapshotStream`]);
/// returns its sequence. On an error after the begin, the stream is told it was
/// abandoned.
pub(crate) fn read_streamed(
    storage: &mut dyn Storage,
    name: &str,
    stream: &mut dyn SnapshotStream,
) -> Result<u64, LogError> {
    let mut begun = false;
    let mut tracked = BeginTracker {
        stream,
        begun: &mut begun,
    };
    let read = read_keeping(storage, name, Keep::Stream(&mut tracked));
    if read.is_err() && begun {
        stream.abandoned();
    }
    read.map(|loaded| loaded.sequence)
}

/// Notes whether a begin went to the stream, passing everything on.
struct BeginTracker<'a> {
    stream: &'a mut dyn SnapshotStream,
    begun: &'a mut bool,
}

impl SnapshotStream for BeginTracker<'_> {
    fn begin(&mut self, sequence: u64, last_timestamp: u64, accounts: u64) {
        *self.begun = true;
        self.stream.begin(sequence, last_timestamp, accounts);
    }

    fn accounts(&mut self, accounts: Vec<Account>) {
        self.stream.accounts(accounts);
    }

    fn head(&mut self, transfers: Vec<Transfer>, stored: u64) {
        self.stream.head(transfers, stored);
    }

    fn run(&mut self, run: UnpackedRun) {
        self.stream.run(run);
    }

    fn spare_run(&mut self) -> UnpackedRun {
        self.stream.spare_run()
    }

    fn end(&mut self, rest: StateImage) {
        self.stream.end(rest);
    }

    fn abandoned(&mut self) {
        self.stream.abandoned();
    }
}

/// Reads and checks every checksum of snapshot `name`; builds the image when `keep`.
pub(crate) fn read(storage: &mut dyn Storage, name: &str, keep: bool) -> Result<Loaded, LogError> {
    read_keeping(
        storage,
        name,
        if keep { Keep::Image } else { Keep::Nothing },
    )
}

/// [`read`], the state going where `keep` says.
fn read_keeping(
    storage: &mut dyn Storage,
    name: &str,
    mut keep: Keep<'_>,
) -> Result<Loaded, LogError> {
    let path = storage.path(name);
    let len = storage
        .len(name)
        .map_err(|e| LogError::io(path.clone(), "stat snapshot", e))?;
    let mut reader = Reader {
        storage,
        name,
        path,
        offset: 0,
        len,
    };
    let mut buf = Vec::new();
    reader.take(SNAPSHOT_HEADER_SIZE, &mut buf)?;
    let (version, sequence, last_timestamp) =
        decode_header(&buf).map_err(|e| reader.corrupt(0, e.to_string()))?;
    if format::parse_snapshot_name(name) != Some(sequence) {
        return Err(reader.corrupt(
            16,
            format!("header says sequence {sequence}, name disagrees"),
        ));
    }
    let mut image = (!matches!(keep, Keep::Nothing)).then(|| LoadedImage {
        image: StateImage {
            last_timestamp,
            ..StateImage::default()
        },
        packed_transfers: Vec::new(),
    });
    for (id, item_bytes, section) in SECTIONS {
        if id == 2 && version >= PACKED_TRANSFERS_SINCE {
            let runs = match (&mut keep, image.as_mut()) {
                (Keep::Stream(stream), Some(_)) => KeptRuns::Stream(&mut **stream),
                (_, Some(image)) => KeptRuns::Packed(&mut image.packed_transfers),
                (_, None) => KeptRuns::Nothing,
            };
            read_packed_transfers(&mut reader, &mut buf, runs)?;
            continue;
        }
        // Before format 3 the transfers section held fixed 128-byte records.
        let item_bytes = if id == 2 { RECORD_SIZE } else { item_bytes };
        let streamed = match (&mut keep, id) {
            (Keep::Stream(stream), 1) => Some(StreamedAccounts {
                stream: &mut **stream,
                sequence,
            }),
            _ => None,
        };
        read_section(
            &mut reader,
            &mut buf,
            (id, item_bytes, section),
            image.as_mut().map(|image| &mut image.image),
            streamed,
        )?;
    }
    let at = reader.take(FOOTER_SIZE, &mut buf)?;
    if buf[0..8] != FOOTER_MAGIC
        || le_u32(&buf, 8) as usize != SECTIONS.len()
        || crc32c::crc32c(&buf[0..12]) != le_u32(&buf, 12)
    {
        return Err(reader.corrupt(at, "snapshot footer is damaged"));
    }
    if reader.offset != reader.len {
        return Err(reader.corrupt(reader.offset, "bytes after the snapshot footer"));
    }
    if let Keep::Stream(stream) = keep {
        let mut rest = image
            .take()
            .expect("a streamed snapshot builds its image")
            .image;
        if version < PACKED_TRANSFERS_SINCE {
            // The transfers came unpacked, with everything else: all go at the end.
            let transfers = std::mem::take(&mut rest.transfers);
            let stored = transfers.len() as u64;
            stream.head(transfers, stored);
        }
        stream.end(rest);
    }
    Ok(Loaded { sequence, image })
}

/// The header's format version, sequence and last timestamp.
fn decode_header(header: &[u8]) -> Result<(u16, u64, u64), HeaderError> {
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if crc32c::crc32c(&header[0..60]) != le_u32(header, 60) {
        return Err(HeaderError::BadChecksum);
    }
    let version = format::le_u16(header, 8);
    if !(SNAPSHOT_FORMAT_VERSION_READ_OLDEST..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
        return Err(HeaderError::Unsupported(format!(
            "snapshot format version {version}, this build reads \
             {SNAPSHOT_FORMAT_VERSION_READ_OLDEST} to {SNAPSHOT_FORMAT_VERSION}"
        )));
    }
    if format::le_u16(header, 10) != RECORD_LAYOUT_VERSION {
        return Err(HeaderError::Unsupported(format!(
            "record layout version {}, this build reads {RECORD_LAYOUT_VERSION}",
            format::le_u16(header, 10)
        )));
    }
    if le_u32(header, 12) as usize != SNAPSHOT_HEADER_SIZE
        || le_u32(header, 32) as usize != SECTIONS.len()
        || header[36..60].iter().any(|&b| b != 0)
    {
        return Err(HeaderError::Unsupported("unexpected header fields".into()));
    }
    Ok((version, le_u64(header, 16), le_u64(header, 24)))
}

/// Reads and checks a section header: magic, CRC, the expected id and item-bytes field,
/// the chunk size, reserved bytes; and that `count` items of at least `item_bytes_min`
/// bytes fit in the rest of the file, before anything is allocated for them. Returns
/// the count and the items per chunk.
fn read_section_header(
    reader: &mut Reader<'_>,
    buf: &mut Vec<u8>,
    id: u16,
    item_bytes_field: usize,
    item_bytes_min: usize,
    section: &str,
) -> Result<(u64, u32), LogError> {
    let at = reader.take(SECTION_HEADER_SIZE, buf)?;
    if buf[0..4] != SECTION_MAGIC || crc32c::crc32c(&buf[0..28]) != le_u32(buf, 28) {
        return Err(reader.corrupt(at, format!("{section} section header is damaged")));
    }
    let count = le_u64(buf, 8);
    let chunk_items = le_u32(buf, 16);
    if format::le_u16(buf, 4) != id
        || format::le_u16(buf, 6) as usize != item_bytes_field
        || !(1..=CHUNK_ITEMS_MAX).contains(&chunk_items)
        || buf[20..28].iter().any(|&b| b != 0)
    {
        return Err(reader.corrupt(
            at,
            format!("{section} section header has unexpected fields"),
        ));
    }
    let remaining = reader.len - reader.offset;
    if count
        .checked_mul(item_bytes_min as u64)
        .is_none_or(|bytes| bytes > remaining)
    {
        return Err(reader.corrupt(at, format!("{section} count {count} exceeds the file")));
    }
    Ok((count, chunk_items))
}

/// Where the runs of a packed transfers section go.
enum KeptRuns<'a> {
    /// Nowhere: they are only checked.
    Nothing,
    /// Into the image, packed.
    Packed(&'a mut Vec<PackedRun>),
    /// To a stream, unpacked, after the head.
    Stream(&'a mut dyn SnapshotStream),
}

/// Reads and checks the packed transfers section (format 3): every chunk's length
/// against its item count and the file, its CRC, and every record, which must fill the
/// chunk exactly. Keeps each chunk where `runs` says.
fn read_packed_transfers(
    reader: &mut Reader<'_>,
    buf: &mut Vec<u8>,
    mut runs: KeptRuns<'_>,
) -> Result<(), LogError> {
    let section = "transfers";
    // Item bytes 0 in the header: variable; each takes at least the shortest record.
    let (count, chunk_items) =
        read_section_header(reader, buf, 2, 0, PACKED_TRANSFER_BYTES_MIN, section)?;
    if let KeptRuns::Stream(stream) = &mut runs {
        stream.head(Vec::new(), count);
    }
    let mut done = 0u64;
    let mut chunk_index = 0u64;
    while done < count {
        let items = (count - done).min(u64::from(chunk_items)) as usize;
        let chunk_at = reader.take(4, buf)?;
        let length: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
        let bytes = u32::from_le_bytes(length) as usize;
        if !(items * PACKED_TRANSFER_BYTES_MIN..=items * PACKED_TRANSFER_BYTES_MAX).contains(&bytes)
        {
            return Err(reader.corrupt(
                chunk_at,
                format!(
                    "{section} chunk {chunk_index} length {bytes} does not fit {items} records"
                ),
            ));
        }
        // A chunk kept is read straight into the run's own buffer (fresh zeroed pages,
        // written once), not into `buf` and copied.
        let mut kept = (!matches!(runs, KeptRuns::Nothing)).then(|| vec![0; bytes]);
        let items_at = match kept.as_mut() {
            Some(records) => reader.take_into(records)?,
            None => reader.take(bytes, buf)?,
        };
        let records = kept.as_deref().unwrap_or(&buf[..]);
        let mut crc = [0; 4];
        reader.take_into(&mut crc)?;
        if packed_chunk_crc(chunk_index, length, records) != u32::from_le_bytes(crc) {
            return Err(reader.corrupt(
                chunk_at,
                format!("{section} chunk {chunk_index} CRC32C does not match"),
            ));
        }
        let checked = match (&mut runs, kept) {
            (KeptRuns::Packed(runs), Some(records)) => {
                PackedRun::new(items, records).map(|run| runs.push(run))
            }
            (KeptRuns::Stream(stream), Some(records)) => {
                UnpackedRun::check(items, records, stream.spare_run()).map(|run| stream.run(run))
            }
            _ => packed::check_run(items, &buf[..], |_, _| {}),
        };
        checked.map_err(|error| match error {
            RunError::Record {
                index,
                offset,
                error,
            } => reader.corrupt(
                items_at + offset as u64,
                format!("{section} item {}: {error}", done + index as u64),
            ),
            RunError::BytesAfterRecords { offset } => reader.corrupt(
                items_at + offset as u64,
                format!("{section} chunk {chunk_index} has bytes after its {items} records"),
            ),
        })?;
        done += items as u64;
        chunk_index += 1;
    }
    Ok(())
}

/// A stream the accounts section goes to a chunk at a time, after its begin.
struct StreamedAccounts<'a> {
    stream: &'a mut dyn SnapshotStream,
    sequence: u64,
}

/// Reads and checks section `(id, item_bytes, name)`, decoding its items into `image`
/// (or only checking them when `image` is `None`). With `streamed` (the accounts), each
/// chunk's items go to the stream once the chunk is checked, after its begin.
fn read_section(
    reader: &mut Reader<'_>,
    buf: &mut Vec<u8>,
    (id, item_bytes, section): (u16, usize, &str),
    mut image: Option<&mut StateImage>,
    mut streamed: Option<StreamedAccounts<'_>>,
) -> Result<(), LogError> {
    let (count, chunk_items) =
        read_section_header(reader, buf, id, item_bytes, item_bytes, section)?;
    if let Some(image) = image.as_deref_mut() {
        // Bounded by the file size just above; a stream takes one chunk at a time.
        let count = match streamed {
            Some(_) => (chunk_items as usize).min(count as usize),
            None => count as usize,
        };
        match id {
            1 => image.accounts.reserve_exact(count),
            2 => image.transfers.reserve_exact(count),
            3 => image.pending_statuses.reserve_exact(count),
            4 => image.refunded.reserve_exact(count),
            _ => image.failed_ids.reserve_exact(count),
        }
    }
    if let (Some(streamed), Some(image)) = (streamed.as_mut(), image.as_deref()) {
        debug_assert_eq!(id, 1, "only the accounts stream");
        streamed
            .stream
            .begin(streamed.sequence, image.last_timestamp, count);
    }
    let mut done = 0u64;
    let mut chunk_index = 0u64;
    while done < count {
        let items = (count - done).min(u64::from(chunk_items)) as usize;
        let chunk_at = reader.take(items * item_bytes + 4, buf)?;
        let (items_bytes, crc) = buf.split_at(items * item_bytes);
        if chunk_crc(id, chunk_index, items_bytes) != le_u32(crc, 0) {
            return Err(reader.corrupt(
                chunk_at,
                format!("{section} chunk {chunk_index} CRC32C does not match"),
            ));
        }
        for (index, item) in items_bytes.chunks_exact(item_bytes).enumerate() {
            decode_item(id, item, image.as_deref_mut()).map_err(|why| {
                reader.corrupt(
                    chunk_at + (index * item_bytes) as u64,
                    format!("{section} item {}: {why}", done + index as u64),
                )
            })?;
        }
        if let (Some(streamed), Some(image)) = (streamed.as_mut(), image.as_deref_mut()) {
            let left = count - done - items as u64;
            let next = Vec::with_capacity(left.min(u64::from(chunk_items)) as usize);
            streamed
                .stream
                .accounts(std::mem::replace(&mut image.accounts, next));
        }
        done += items as u64;
        chunk_index += 1;
    }
    Ok(())
}
