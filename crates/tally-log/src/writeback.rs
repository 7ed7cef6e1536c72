//! Starting the write-back of a file's dirty pages without waiting for it.

use std::fs::File;

/// Asks the kernel to start writing `len` bytes of `file` from `offset` out to the disk
/// and returns at once (`sync_file_range` with `SYNC_FILE_RANGE_WRITE` on Linux; nothing
/// elsewhere). A hint: nothing becomes durable by it, and a failure only leaves the
/// pages to the kernel's own write-back. Data appended a little at a time then reaches
/// the disk a little at a time, instead of in one burst when the kernel finds it old
/// (30 s by default), with no cache flush and no journal commit of its own.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // see SAFETY below
pub(crate) fn start(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
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
pub(crate) fn start(_file: &File, _offset: u64, _len: u64) {}
