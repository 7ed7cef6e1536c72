//! Hints to the CPU and the kernel about memory: prefetching a cache line, backing a
//! large table with huge pages. Neither changes what any memory holds; both only
//! change how fast it is reached. With `tally_log::writeback`, one of the two modules
//! of the project that need `unsafe` (each use has its `SAFETY:` comment and a test).

/// Starts loading the cache line holding `at` into every cache level. A hint only:
/// any address is allowed (null, dangling, past the end), nothing is read
/// architecturally and nothing faults.
#[inline(always)]
#[allow(unsafe_code)] // see SAFETY below
pub(crate) fn prefetch<T>(at: *const T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse", not(miri)))]
    // SAFETY: `_mm_prefetch` is unsafe because it needs the `sse` target feature and
    // takes a raw pointer. The cfg above guarantees the feature for this build (it is
    // part of the x86_64 baseline). The pointer is never dereferenced: PREFETCHT0 is a
    // hint that reads nothing architecturally, cannot fault whatever `at` is, and
    // changes no memory.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>());
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse", not(miri))))]
    let _ = at;
}

/// Bytes of one transparent huge page on x86_64 and most aarch64 kernels.
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Asks the kernel to back `memory` with transparent huge pages where it can, before it
/// is first written: a table read at random (an id index of tens or hundreds of MiB)
/// then costs one TLB entry per 2 MiB instead of per 4 KiB, so its misses are not
/// doubled by page walks. Useful when the host's THP mode is `madvise` (the default
/// of many distributions); a no-op where THP is off or unsupported, and for tables
/// smaller than a huge page. Advice only: it cannot fail in a way that matters (on a
/// kernel whose base pages are not 4 KiB the start is misaligned and the kernel refuses
/// the advice with EINVAL: a no-op). The pages must not have been touched yet for the
/// advice to take at once: true of a table just allocated zeroed, which the allocator
/// maps fresh.
#[allow(unsafe_code)] // see SAFETY below
pub(crate) fn advise_huge_pages<T>(memory: &[T]) {
    let bytes = std::mem::size_of_val(memory);
    if bytes < HUGE_PAGE_BYTES {
        return;
    }
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        const PAGE_BYTES: usize = 4096;
        let start = memory.as_ptr() as usize;
        // madvise wants a page-aligned start (and rounds the length up to whole pages):
        // the range reaches at most into the first and last pages the table touches.
        let aligned = start - start % PAGE_BYTES;
        let length = start + bytes - aligned;
        // SAFETY: MADV_HUGEPAGE only sets how the kernel may back the pages of the range
        // (it never changes their contents, mappings or permissions), so no Rust
        // reference anywhere can observe it. The range covers `memory`, a live
        // allocation borrowed for the call, plus at most the rest of its first and last
        // pages, where the advice is just as harmless.
        // The result is ignored on purpose: EINVAL without THP support is fine.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, length, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{advise_huge_pages, prefetch};

    /// Any address is a valid hint: inside a buffer, one past its end, far past it,
    /// null, and dangling after the buffer is freed. None may fault or change memory.
    #[test]
    fn any_address_is_a_valid_hint_and_nothing_changes() {
        let data: Vec<u64> = (0..1024).collect();
        let start = data.as_ptr();
        prefetch(start);
        prefetch(start.wrapping_add(512));
        prefetch(start.wrapping_add(data.len()));
        prefetch(start.wrapping_add(1 << 40));
        prefetch(std::ptr::null::<u64>());
        prefetch(usize::MAX as *const u8);
        assert_eq!(data, (0..1024).collect::<Vec<u64>>());
        drop(data);
        prefetch(start);
    }

    /// Advising a live table, large or small, leaves every value as it was and the table
    /// fully usable afterwards.
    #[test]
    fn huge_page_advice_changes_no_value() {
        let mut large: Vec<u64> = (0..(8u64 << 20) / 8).collect();
        advise_huge_pages(&large);
        assert!(large.iter().enumerate().all(|(i, &v)| v == i as u64));
        large.iter_mut().for_each(|v| *v *= 3);
        assert_eq!(large[12_345], 37_035);
        let small = [1u8, 2, 3];
        advise_huge_pages(&small);
        assert_eq!(small, [1, 2, 3]);
        advise_huge_pages::<u64>(&[]);
    }
}
