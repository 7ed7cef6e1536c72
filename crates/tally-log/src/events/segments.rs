//! What the journal's writer and readers share: listing segment files and reading
//! headers at an offset without moving any file position.

use super::format::{
    FRAME_HEADER_SIZE, FrameHeader, SEGMENT_HEADER_SIZE, SegmentHeader, decode_frame_header,
    decode_segment_header, parse_journal_segment_name,
};
use crate::LogError;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One segment file found in the journal directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    /// The number in its name.
    pub first_timestamp: u64,
    pub path: PathBuf,
}

/// The journal's segment files, oldest first; a missing directory holds none.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(LogError::io(dir.to_path_buf(), "read_dir", error)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| LogError::io(dir.to_path_buf(), "read_dir", error))?;
        let name = entry.file_name();
        let Some(first_timestamp) = name.to_str().and_then(parse_journal_segment_name) else {
            continue;
        };
        segments.push(SegmentFile {
            first_timestamp,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|segment| segment.first_timestamp);
    Ok(segments)
}

/// Reads a file front to back through a buffer of [`ReadAhead::CHUNK`] bytes or more:
/// checking a segment with two small reads a frame made two system calls for every
/// few hundred bytes.
pub(crate) struct ReadAhead<'f> {
    file: &'f File,
    path: &'f Path,
    buffer: Vec<u8>,
    /// The file offset of `buffer[0]`.
    start: u64,
}

impl<'f> ReadAhead<'f> {
    const CHUNK: usize = 1 << 20;

    pub(crate) fn new(file: &'f File, path: &'f Path) -> Self {
        ReadAhead {
            file,
            path,
            buffer: Vec::new(),
            start: 0,
        }
    }

    /// Up to `len` bytes at `offset`, fewer only at the end of the file.
    pub(crate) fn read(&mut self, offset: u64, len: usize) -> Result<&[u8], LogError> {
        let buffered = self.start..=self.start + self.buffer.len() as u64;
        if !buffered.contains(&offset) || !buffered.contains(&(offset + len as u64)) {
            self.buffer.resize(len.max(Self::CHUNK), 0);
            let read = read_at_most(self.file, self.path, offset, &mut self.buffer)?;
            self.buffer.truncate(read);
            self.start = offset;
        }
        let from = usize::try_from(offset - self.start).expect("within the buffer");
        let to = (from + len).min(self.buffer.len());
        Ok(&self.buffer[from..to])
    }
}

/// Reads up to `buffer.len()` bytes at `offset`; fewer only at the end of the file.
pub(crate) fn read_at_most(
    file: &File,
    path: &Path,
    offset: u64,
    buffer: &mut [u8],
) -> Result<usize, LogError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(LogError::io(path.to_path_buf(), "read", error)),
        }
    }
    Ok(filled)
}

/// The segment's header, or why it is not valid (incomplete, damaged, or not matching
/// the file's name).
pub(crate) fn read_segment_header(
    file: &File,
    segment: &SegmentFile,
) -> Result<Result<SegmentHeader, String>, LogError> {
    let mut bytes = [0u8; SEGMENT_HEADER_SIZE];
    let read = read_at_most(file, &segment.path, 0, &mut bytes)?;
    Ok(decode_segment_header(&bytes[..read]).and_then(|header| {
        if header.first_timestamp == segment.first_timestamp
            && header.previous_last_timestamp < header.first_timestamp
        {
            Ok(header)
        } else {
            Err(format!(
                "segment header timestamps ({}, previous {}) do not match its name",
                header.first_timestamp, header.previous_last_timestamp
            ))
        }
    }))
}

/// The frame header at `offset`: `None` at the end of the file, or why it is not valid.
pub(crate) fn read_frame_header(
    file: &File,
    path: &Path,
    offset: u64,
) -> Result<Option<Result<FrameHeader, String>>, LogError> {
    let mut bytes = [0u8; FRAME_HEADER_SIZE];
    match read_at_most(file, path, offset, &mut bytes)? {
        0 => Ok(None),
        read => Ok(Some(decode_frame_header(&bytes[..read]))),
    }
}

/// Opens a segment for reading; `None` when it is gone (deleted by retention).
pub(crate) fn open_segment(path: &Path) -> Result<Option<File>, LogError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(LogError::io(path.to_path_buf(), "open", error)),
    }
}
