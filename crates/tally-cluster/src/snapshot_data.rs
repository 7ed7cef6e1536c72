//! What openraft moves a snapshot through: a file (the snapshot sent, or the one being
//! received from the leader), or bytes in memory on a simulated disk.
//!
//! A snapshot is the whole ledger (about 128 bytes a transfer): it goes from file to
//! file, so a replica holds its state and no second image of it.

use std::io::{Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's bytes, read or written by openraft's chunked transport.
#[derive(Debug)]
pub enum SnapshotData {
    /// Bytes in memory: a snapshot on a simulated disk, sent or received.
    Bytes(Cursor<Vec<u8>>),
    /// A snapshot file: opened to send it, or being received.
    File(tokio::fs::File),
}

impl SnapshotData {
    /// A new file to receive a snapshot into, each chunk taken whole by one write: a
    /// call dropped mid-chunk (a deadline, a lost connection) then leaves none of it,
    /// and the chunk sent again lands at its offset, not after a part of itself.
    pub fn receiving_into(mut file: tokio::fs::File) -> SnapshotData {
        file.set_max_buf_size(crate::network::SNAPSHOT_CHUNK_BYTES);
        SnapshotData::File(file)
    }

    /// Empty bytes, to receive a snapshot into (a simulated disk).
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
    async fn a_receiving_file_takes_a_whole_chunk_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = tokio::fs::File::create(dir.path().join("r")).await.unwrap();
        let mut receiving = SnapshotData::receiving_into(file);
        let chunk = vec![7u8; crate::network::SNAPSHOT_CHUNK_BYTES];
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let taken = Pin::new(&mut receiving).poll_write(&mut cx, &chunk);
        assert!(matches!(taken, Poll::Ready(Ok(n)) if n == chunk.len()));
        receiving.flush().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("r")).unwrap(), chunk);
    }

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
