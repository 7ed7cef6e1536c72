//! What openraft moves a snapshot through: the snapshot file itself when one is sent
//! from disk, or bytes in memory while one is received (or kept on a simulated disk).
//!
//! A snapshot is the whole ledger (about 128 bytes a transfer): the sending side reads
//! it from the file rather than keeping a copy in memory, so a replica holds its state
//! and no second image of it between snapshots.

use std::io::{Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's bytes, read or written by openraft's chunked transport.
#[derive(Debug)]
pub enum SnapshotData {
    /// Bytes in memory: a snapshot being received, or one on a simulated disk.
    Bytes(Cursor<Vec<u8>>),
    /// The snapshot file, opened for sending.
    File(tokio::fs::File),
}

impl SnapshotData {
    /// Empty bytes, to receive a snapshot into.
    pub fn receiving() -> SnapshotData {
        SnapshotData::Bytes(Cursor::new(Vec::new()))
    }

    /// The whole snapshot as bytes: those received, or the file read from its start.
    pub async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self {
            SnapshotData::Bytes(cursor) => Ok(cursor.into_inner()),
            SnapshotData::File(mut file) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                file.seek(SeekFrom::Start(0)).await?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).await?;
                Ok(bytes)
            }
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Bytes(cursor) => Pin::new(cursor).poll_read(cx, buf),
            SnapshotData::File(file) => Pin::new(file).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SnapshotData::Bytes(cursor) => Pin::new(cursor).poll_write(cx, buf),
            SnapshotData::File(file) => Pin::new(file).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Bytes(cursor) => Pin::new(cursor).poll_flush(cx),
            SnapshotData::File(file) => Pin::new(file).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Bytes(cursor) => Pin::new(cursor).poll_shutdown(cx),
            SnapshotData::File(file) => Pin::new(file).poll_shutdown(cx),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match self.get_mut() {
            SnapshotData::Bytes(cursor) => Pin::new(cursor).start_seek(position),
            SnapshotData::File(file) => Pin::new(file).start_seek(position),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match self.get_mut() {
            SnapshotData::Bytes(cursor) => Pin::new(cursor).poll_complete(cx),
            SnapshotData::File(file) => Pin::new(file).poll_complete(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_file_reads_as_the_bytes_written_to_it_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let written: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut receiving = SnapshotData::receiving();
        receiving.write_all(&written[..4_000]).await.unwrap();
        receiving.write_all(&written[4_000..]).await.unwrap();
        std::fs::write(&path, receiving.into_bytes().await.unwrap()).unwrap();

        let mut sending = SnapshotData::File(tokio::fs::File::open(&path).await.unwrap());
        assert_eq!(sending.seek(SeekFrom::End(0)).await.unwrap(), 10_000);
        sending.seek(SeekFrom::Start(7_000)).await.unwrap();
        let mut tail = Vec::new();
        sending.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, written[7_000..]);
        assert_eq!(sending.into_bytes().await.unwrap(), written);
    }
}
