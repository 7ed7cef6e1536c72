//! Hints to the page cache: start writing a file's dirty pages back without waiting,
//! and let go of pages already written and synced.

use std::fs::File;

/// The page size hints count in: 4 KiB, the smallest of the platforms Tally runs on. On
/// a larger page a range ending inside a page only drops a little less: the kernel
/// drops whole pages alone.
const PAGE_BYTES: u64 = 4096;

/// The start of the page holding byte `offset`.
pub(crate) fn page_start(offset: u64) -> u64 {
    offset / PAGE_BYTES * PAGE_BYTES
}

/// `offset` and `len` as the kernel's file offsets; `None` past what they can hold (a
/// hint on such a range is skipped).
#[cfg(target_os = "linux")]
fn file_range(offset: u64, len: u64) -> Option<(libc::off64_t, libc::off64_t)> {
    Some((offset.try_into().ok()?, len.try_into().ok()?))
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` out to the disk
/// and returns at once (`sync_file_range` with `SYNC_FILE_RANGE_WRITE` on Linux; nothing
/// elsewhere). A hint: nothing becomes durable by it, and a failure only leaves the
/// pages to the kernel's own write-back. Data appended a little at a time then reaches
/// the disk a little at a time, instead of in one burst when the kernel finds it old
/// (30 s by default), with no cache flush and no journal commit of its own.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // see SAFETY below
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let Some((offset, len)) = file_range(offset, len) else {
        return;
    };
    // SAFETY: the descriptor belongs to `file`, borrowed for the call, so it stays open;
    // sync_file_range only queues the range's dirty pages for writing and touches no
    // memory of this process. Measured: the change-event journal's pages of a busy
    // festival, otherwise written back in one burst 30 s in, stalled the log's syncs for
    // 30-90 ms (docs/performance.md, "Change events").
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Tells the kernel that `len` bytes of `file` from `offset`, written and synced, will
/// not be read again soon, so their page-cache pages can be freed now
/// (`posix_fadvise` with `POSIX_FADV_DONTNEED` on Linux; nothing elsewhere); `len` 0
/// reaches to the end of the file. A hint: a failure leaves the pages cached, nothing
/// else.
///
/// Why: the log writes a stream no one reads back while the engine runs. Left cached,
/// every write lands in a page the cache has just taken from free memory, and on a
/// virtual machine whose host reclaims free guest memory, touching such a page first
/// costs the host's page fault: copying the log into the cache ran at 0.3 GB/s there,
/// against 6 GB/s into pages freed a moment before (docs/performance.md, "The log's
/// page cache").
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // see SAFETY below
pub(crate) fn drop_cached(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let Some((offset, len)) = file_range(offset, len) else {
        return;
    };
    // SAFETY: the descriptor belongs to `file`, borrowed for the call, so it stays open;
    // posix_fadvise only drops clean cached pages of the range (and queues dirty ones
    // for write-back) and touches no memory of this process.
    let _ =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn drop_cached(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn pages_let_go_read_back_the_same_and_the_file_keeps_growing() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("log"))
            .unwrap();
        let bytes: Vec<u8> = (0..3 << 20).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all(&bytes[..2 << 20]).unwrap();
        file.sync_data().unwrap();
        drop_cached(&file, 0, page_start(2 << 20));
        // Past a range let go, appends go on as before.
        file.write_all(&bytes[2 << 20..]).unwrap();
        file.sync_data().unwrap();
        drop_cached(&file, 0, 3 << 20);
        let mut read = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut read).unwrap();
        assert_eq!(read, bytes);
        assert_eq!(page_start(4095), 0);
        assert_eq!(page_start(4096), 4096);
        assert_eq!(page_start(3 << 20), 3 << 20);
    }
}
