//! Trace files: the exact request stream of a run, to replay it later.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TALLYTRC` |
//! | 8 | 2 | format version ([`TRACE_VERSION`]) |
//! | 10 | 2 | reserved, zero |
//! | 12 | 4 | CRC32C of bytes 0..12 |
//!
//! then frames, each `type: u8, reserved: [u8; 3], length: u32, crc32c: u32` followed by
//! `length` payload bytes (CRC32C over the payload). The payload is the `wincode`
//! (bincode 1.x wire format) encoding of a trace type below: type 1 [`TraceMeta`] (first,
//! once), type 2 a chunk of up to [`CHUNK_REQUESTS_MAX`] requests, type 3 the end frame
//! with the totals (last, once; a file without it is truncated). The wincode types are
//! separate from the engine's types; they convert at the edge.
//!
//! The trace holds the run parameters (population, seed, mix, curve) and every request
//! with its scheduled instant. Setup (accounts, pre-midnight funding) is rebuilt from the
//! recorded population parameters by the same format version of the load generator.

use crate::mix::{Kind, Request};
use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tally_types::{Transfer, TransferFlags};
use wincode::{SchemaRead, SchemaWrite};

/// The first eight bytes of every trace file.
pub const TRACE_MAGIC: [u8; 8] = *b"TALLYTRC";
/// The trace format version this load generator writes and reads. 2: account ids end
/// in their population slot, transfer ids in their customer's key (version 1's ids
/// would not match the accounts this version's setup creates).
pub const TRACE_VERSION: u16 = 2;
const HEADER_SIZE: usize = 16;
const FRAME_HEADER_SIZE: usize = 12;
/// Requests per chunk frame; keeps every frame well under wincode's 4 MiB
/// preallocation limit (a request is at most two 130-byte transfers).
pub const CHUNK_REQUESTS_MAX: usize = 4_096;
/// Largest frame payload accepted when reading.
const FRAME_BYTES_MAX: u32 = 8 << 20;

const FRAME_META: u8 = 1;
const FRAME_CHUNK: u8 = 2;
const FRAME_END: u8 = 3;

/// Run parameters. `config_json` holds the load generator's run configuration (serde
/// JSON), `seed` the generator seed.
#[derive(Debug, Clone, PartialEq, SchemaWrite, SchemaRead)]
pub struct TraceMeta {
    /// Seed of the request generator.
    pub seed: u64,
    /// The run configuration as JSON.
    pub config_json: String,
}

#[derive(Debug, Clone, Copy, PartialEq, SchemaWrite, SchemaRead)]
struct TraceTransfer {
    id: u128,
    debit_account_id: u128,
    credit_account_id: u128,
    amount: u128,
    pending_id: u128,
    user_data_128: u128,
    user_data_64: u64,
    user_data_32: u32,
    timeout: u32,
    ledger: u32,
    code: u16,
    flags: u16,
}

#[derive(Debug, Clone, PartialEq, SchemaWrite, SchemaRead)]
struct TraceRequest {
    offset_ns: u64,
    kind: u8,
    transfers: Vec<TraceTransfer>,
}

#[derive(Debug, Clone, PartialEq, SchemaWrite, SchemaRead)]
struct TraceChunk {
    requests: Vec<TraceRequest>,
}

#[derive(Debug, Clone, PartialEq, SchemaWrite, SchemaRead)]
struct TraceEnd {
    requests: u64,
    transfers: u64,
}

/// Why a trace could not be written or read.
#[derive(Debug)]
pub enum TraceError {
    /// Opening, reading or writing the file failed.
    Io {
        /// The trace file.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The file does not start with [`TRACE_MAGIC`].
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// The file is a trace of another format version.
    UnsupportedVersion {
        /// The trace file.
        path: PathBuf,
        /// The version the file says it has.
        version: u16,
    },
    /// A checksum, frame or payload is wrong.
    Corrupt {
        /// The trace file.
        path: PathBuf,
        /// Byte offset of the bad header or frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The file ends before its end frame.
    Truncated {
        /// The trace file.
        path: PathBuf,
        /// Byte offset where the file ends.
        offset: u64,
    },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Io { path, error } => write!(f, "trace {}: {error}", path.display()),
            TraceError::BadMagic { path } => {
                write!(f, "trace {}: not a Tally trace (bad magic)", path.display())
            }
            TraceError::UnsupportedVersion { path, version } => write!(
                f,
                "trace {}: format version {version}, this loadgen reads {TRACE_VERSION}",
                path.display()
            ),
            TraceError::Corrupt { path, offset, what } => {
                write!(
                    f,
                    "trace {}: corrupt at offset {offset}: {what}",
                    path.display()
                )
            }
            TraceError::Truncated { path, offset } => {
                write!(
                    f,
                    "trace {}: truncated at offset {offset} (no end frame)",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for TraceError {}

fn to_trace(transfer: &Transfer) -> TraceTransfer {
    TraceTransfer {
        id: transfer.id,
        debit_account_id: transfer.debit_account_id,
        credit_account_id: transfer.credit_account_id,
        amount: transfer.amount,
        pending_id: transfer.pending_id,
        user_data_128: transfer.user_data_128,
        user_data_64: transfer.user_data_64,
        user_data_32: transfer.user_data_32,
        timeout: transfer.timeout,
        ledger: transfer.ledger,
        code: transfer.code,
        flags: transfer.flags.bits(),
    }
}

fn from_trace(transfer: &TraceTransfer) -> Option<Transfer> {
    Some(Transfer {
        id: transfer.id,
        debit_account_id: transfer.debit_account_id,
        credit_account_id: transfer.credit_account_id,
        amount: transfer.amount,
        pending_id: transfer.pending_id,
        user_data_128: transfer.user_data_128,
        user_data_64: transfer.user_data_64,
        user_data_32: transfer.user_data_32,
        timeout: transfer.timeout,
        ledger: transfer.ledger,
        code: transfer.code,
        flags: TransferFlags::from_bits(transfer.flags).ok()?,
        timestamp: 0,
    })
}

/// Writes a trace as requests are generated.
#[derive(Debug)]
pub struct TraceWriter {
    path: PathBuf,
    out: BufWriter<File>,
    chunk: Vec<TraceRequest>,
    requests: u64,
    transfers: u64,
}

impl TraceWriter {
    /// Creates the trace file at `path` and writes its header and meta frame.
    pub fn create(path: &Path, meta: &TraceMeta) -> Result<TraceWriter, TraceError> {
        let io = |error| TraceError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::create(path).map_err(io)?;
        let mut writer = TraceWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            chunk: Vec::with_capacity(CHUNK_REQUESTS_MAX),
            requests: 0,
            transfers: 0,
        };
        let mut header = [0u8; HEADER_SIZE];
        header[0..8].copy_from_slice(&TRACE_MAGIC);
        header[8..10].copy_from_slice(&TRACE_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        writer.out.write_all(&header).map_err(io)?;
        writer.frame(FRAME_META, meta)?;
        Ok(writer)
    }

    fn frame<T: SchemaWrite<wincode::config::DefaultConfig, Src = T>>(
        &mut self,
        frame_type: u8,
        value: &T,
    ) -> Result<(), TraceError> {
        let payload = wincode::serialize(value).map_err(|error| TraceError::Corrupt {
            path: self.path.clone(),
            offset: 0,
            what: format!("encoding a frame: {error}"),
        })?;
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|length| *length <= FRAME_BYTES_MAX)
            .ok_or_else(|| TraceError::Corrupt {
                path: self.path.clone(),
                offset: 0,
                what: format!("frame of {} bytes is too large", payload.len()),
            })?;
        let mut header = [0u8; FRAME_HEADER_SIZE];
        header[0] = frame_type;
        header[4..8].copy_from_slice(&length.to_le_bytes());
        header[8..12].copy_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        let io = |error| TraceError::Io {
            path: self.path.clone(),
            error,
        };
        self.out.write_all(&header).map_err(io)?;
        self.out.write_all(&payload).map_err(io)
    }

    /// Appends one request; full chunks are written as they fill.
    pub fn push(&mut self, request: &Request) -> Result<(), TraceError> {
        self.requests += 1;
        self.transfers += request.transfers.len() as u64;
        self.chunk.push(TraceRequest {
            offset_ns: request.offset_ns,
            kind: request.kind as u8,
            transfers: request.transfers.iter().map(to_trace).collect(),
        });
        if self.chunk.len() == CHUNK_REQUESTS_MAX {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<(), TraceError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = TraceChunk {
            requests: std::mem::take(&mut self.chunk),
        };
        self.frame(FRAME_CHUNK, &chunk)?;
        self.chunk = chunk.requests;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the end frame and syncs the file; returns the request count.
    pub fn finish(mut self) -> Result<u64, TraceError> {
        self.flush_chunk()?;
        let end = TraceEnd {
            requests: self.requests,
            transfers: self.transfers,
        };
        self.frame(FRAME_END, &end)?;
        let path = self.path.clone();
        let io = |error| TraceError::Io {
            path: path.clone(),
            error,
        };
        let file = self
            .out
            .into_inner()
            .map_err(|error| io(error.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(end.requests)
    }
}

/// Reads a trace back, request by request, checking every checksum.
#[derive(Debug)]
pub struct TraceReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    meta: TraceMeta,
    pending: std::vec::IntoIter<TraceRequest>,
    requests: u64,
    transfers: u64,
    done: bool,
}

impl TraceReader {
    /// Opens a trace, checks its header and reads its meta frame.
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let file = File::open(path).map_err(|error| TraceError::Io {
            path: path.into(),
            error,
        })?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; HEADER_SIZE];
        read_exact_or(&mut input, &mut header, path, 0)?;
        if header[0..8] != TRACE_MAGIC {
            return Err(TraceError::BadMagic { path: path.into() });
        }
        let stored_crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if crc32c::crc32c(&header[0..12]) != stored_crc {
            return Err(corrupt(path, 0, "header checksum mismatch"));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != TRACE_VERSION {
            return Err(TraceError::UnsupportedVersion {
                path: path.into(),
                version,
            });
        }
        let mut reader = TraceReader {
            path: path.into(),
            input,
            offset: HEADER_SIZE as u64,
            meta: TraceMeta {
                seed: 0,
                config_json: String::new(),
            },
            pending: Vec::new().into_iter(),
            requests: 0,
            transfers: 0,
            done: false,
        };
        let (frame_type, payload) = reader.frame()?;
        if frame_type != FRAME_META {
            return Err(corrupt(
                path,
                HEADER_SIZE as u64,
                "first frame is not the meta frame",
            ));
        }
        reader.meta = wincode::deserialize::<TraceMeta>(&payload)
            .map_err(|error| corrupt(path, HEADER_SIZE as u64, &format!("meta: {error}")))?;
        Ok(reader)
    }

    /// The run parameters recorded in the trace.
    pub fn meta(&self) -> &TraceMeta {
        &self.meta
    }

    fn frame(&mut self) -> Result<(u8, Vec<u8>), TraceError> {
        let start = self.offset;
        let mut header = [0u8; FRAME_HEADER_SIZE];
        read_exact_or(&mut self.input, &mut header, &self.path, start)?;
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if header[1..4] != [0, 0, 0] || length > FRAME_BYTES_MAX {
            return Err(corrupt(&self.path, start, "bad frame header"));
        }
        let mut payload = vec![0u8; length as usize];
        read_exact_or(&mut self.input, &mut payload, &self.path, start)?;
        if crc32c::crc32c(&payload) != crc {
            return Err(corrupt(&self.path, start, "frame checksum mismatch"));
        }
        self.offset += (FRAME_HEADER_SIZE + payload.len()) as u64;
        Ok((header[0], payload))
    }

    fn next_request(&mut self) -> Result<Option<Request>, TraceError> {
        loop {
            if let Some(request) = self.pending.next() {
                return self.convert(request).map(Some);
            }
            if self.done {
                return Ok(None);
            }
            let start = self.offset;
            let (frame_type, payload) = self.frame()?;
            match frame_type {
                FRAME_CHUNK => {
                    let chunk = wincode::deserialize::<TraceChunk>(&payload)
                        .map_err(|error| corrupt(&self.path, start, &format!("chunk: {error}")))?;
                    self.pending = chunk.requests.into_iter();
                }
                FRAME_END => {
                    let end = wincode::deserialize::<TraceEnd>(&payload)
                        .map_err(|error| corrupt(&self.path, start, &format!("end: {error}")))?;
                    if end.requests != self.requests || end.transfers != self.transfers {
                        return Err(corrupt(&self.path, start, "end frame totals disagree"));
                    }
                    let mut rest = [0u8; 1];
                    if self.input.read(&mut rest).map_err(|error| self.io(error))? != 0 {
                        return Err(corrupt(
                            &self.path,
                            self.offset,
                            "bytes after the end frame",
                        ));
                    }
                    self.done = true;
                }
                other => {
                    return Err(corrupt(
                        &self.path,
                        start,
                        &format!("unknown frame type {other}"),
                    ));
                }
            }
        }
    }

    fn io(&self, error: std::io::Error) -> TraceError {
        TraceError::Io {
            path: self.path.clone(),
            error,
        }
    }

    fn convert(&mut self, request: TraceRequest) -> Result<Request, TraceError> {
        let offset = self.offset;
        let kind = Kind::from_u8(request.kind)
            .ok_or_else(|| corrupt(&self.path, offset, "unknown request kind"))?;
        let transfers = request
            .transfers
            .iter()
            .map(from_trace)
            .collect::<Option<Vec<Transfer>>>()
            .ok_or_else(|| corrupt(&self.path, offset, "unknown transfer flags"))?;
        self.requests += 1;
        self.transfers += transfers.len() as u64;
        Ok(Request {
            offset_ns: request.offset_ns,
            kind,
            transfers,
        })
    }
}

impl Iterator for TraceReader {
    type Item = Result<Request, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_request() {
            Ok(Some(request)) => Some(Ok(request)),
            Ok(None) => None,
            Err(error) => {
                // One error ends the stream.
                self.done = true;
                self.pending = Vec::new().into_iter();
                Some(Err(error))
            }
        }
    }
}

fn corrupt(path: &Path, offset: u64, what: &str) -> TraceError {
    TraceError::Corrupt {
        path: path.into(),
        offset,
        what: what.into(),
    }
}

fn read_exact_or(
    input: &mut impl Read,
    buffer: &mut [u8],
    path: &Path,
    offset: u64,
) -> Result<(), TraceError> {
    input.read_exact(buffer).map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            TraceError::Truncated {
                path: path.into(),
                offset,
            }
        } else {
            TraceError::Io {
                path: path.into(),
                error,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::{Generator, MixSpec};
    use crate::population::{Population, PopulationSpec};

    fn requests(count: u64) -> Vec<Request> {
        let spec = PopulationSpec {
            users: 1_000,
            merchants: 50,
            ..PopulationSpec::default()
        };
        let mut generator = Generator::new(Population::new(spec), MixSpec::default(), 9);
        (0..count).map(|i| generator.next_at(i * 50_000)).collect()
    }

    fn write(path: &Path, requests: &[Request]) {
        let meta = TraceMeta {
            seed: 9,
            config_json: "{\"x\":1}".into(),
        };
        let mut writer = TraceWriter::create(path, &meta).expect("create");
        for request in requests {
            writer.push(request).expect("push");
        }
        assert_eq!(writer.finish().expect("finish"), requests.len() as u64);
    }

    #[test]
    fn record_then_replay_gives_the_same_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.trace");
        let original = requests(10_000);
        write(&path, &original);
        let reader = TraceReader::open(&path).expect("open");
        assert_eq!(reader.meta().seed, 9);
        assert_eq!(reader.meta().config_json, "{\"x\":1}");
        let replayed: Vec<Request> = reader.collect::<Result<_, _>>().expect("read");
        assert_eq!(replayed, original);
    }

    #[test]
    fn flipped_bits_truncation_and_foreign_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.trace");
        write(&path, &requests(5_000));
        let bytes = std::fs::read(&path).expect("read");
        let read_all = |bytes: &[u8]| -> Result<usize, TraceError> {
            let damaged = dir.path().join("damaged.trace");
            std::fs::write(&damaged, bytes).expect("write");
            let reader = TraceReader::open(&damaged)?;
            reader.collect::<Result<Vec<_>, _>>().map(|r| r.len())
        };
        assert_eq!(read_all(&bytes).expect("intact"), 5_000);
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        assert!(matches!(
            read_all(&flipped),
            Err(TraceError::Corrupt { .. })
        ));
        assert!(matches!(
            read_all(&bytes[..bytes.len() - 7]),
            Err(TraceError::Truncated { .. })
        ));
        let mut versioned = bytes.clone();
        versioned[8] = 9;
        assert!(matches!(
            read_all(&versioned),
            Err(TraceError::Corrupt { .. })
        ));
        assert!(matches!(
            read_all(b"not a trace at all"),
            Err(TraceError::BadMagic { .. })
        ));
    }
}
