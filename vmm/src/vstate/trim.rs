//! Trimming guest memory to its working set: unmapping from this process the file pages the
//! guest has only read (the kernel image, the root and container images on virtio-pmem).
//!
//! Those pages are the host's page cache, mapped into guest memory from their files. A guest
//! that booted has read much of its kernel, agent and image once and will not again; each page
//! stays mapped in the VMM (and counted in its PSS) until the process exits. Unmapping the
//! clean ones (`MADV_DONTNEED`) leaves them in the page cache, shared and reclaimable, and the
//! guest's next touch maps them back. A page the guest wrote (a private copy) or anonymous guest
//! RAM is never touched: `/proc/self/pagemap` tells them apart, and the caller keeps the
//! vCPUs and devices still meanwhile, so no page is copied between the look and the unmap.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::arch::layout::PAGE_SIZE;

/// Host page size, as the unit of the pagemap index.
const PAGE: usize = PAGE_SIZE as usize;
/// pagemap: the page is present.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap: the page is a file page (or shared anonymous memory, which guest RAM is not).
const PM_FILE: u64 = 1 << 61;
/// Pages looked at per pagemap read.
const CHUNK_PAGES: usize = 4096;

/// Errors of a trim.
#[derive(Debug, thiserror::Error)]
pub enum TrimError {
    #[error("cannot read /proc/self/pagemap: {0}")]
    Pagemap(io::Error),
    #[error("madvise(MADV_DONTNEED) of {len:#x} bytes at {addr:#x} failed: {source}")]
    Madvise {
        addr: usize,
        len: usize,
        source: io::Error,
    },
}

/// A range of this process's address space that maps guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    pub addr: usize,
    pub len: usize,
}

/// Runs (first page index, page count) of present file pages in pagemap entries.
pub fn clean_file_runs(entries: &[u64]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e & PM_PRESENT == 0 || e & PM_FILE == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((start, n)) if *start + *n == i => *n += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

/// Unmaps the present file pages of `ranges` (page-aligned) from this process; returns how
/// many bytes were unmapped.
///
/// # Safety
/// Every range must map guest memory whose file pages may be dropped: private file mappings
/// whose files are not changed in place (the page comes back with the same bytes) or shared
/// ones (the page cache keeps what was written). Nothing may write to these ranges while this
/// runs (the vCPUs paused, the devices' event loop being the caller), or a page copied after
/// its pagemap entry was read would be lost.
pub unsafe fn trim(ranges: &[HostRange]) -> Result<u64, TrimError> {
    let pagemap = File::open("/proc/self/pagemap").map_err(TrimError::Pagemap)?;
    let mut released = 0u64;
    let mut buf = vec![0u8; CHUNK_PAGES * 8];
    for r in ranges {
        let pages = r.len / PAGE;
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(CHUNK_PAGES);
            let first = r.addr / PAGE + done;
            let bytes = &mut buf[..n * 8];
            pagemap
                .read_exact_at(bytes, (first * 8) as u64)
                .map_err(TrimError::Pagemap)?;
            let entries: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            for (start, count) in clean_file_runs(&entries) {
                let addr = (first + start) * PAGE;
                let len = count * PAGE;
                // SAFETY: the range lies inside `r`, a mapping of guest memory the caller vouches
                // for: its present file pages are clean page-cache pages (or shared ones), so
                // unmapping them loses nothing, and nothing writes to them meanwhile.
                let rc =
                    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
                if rc != 0 {
                    return Err(TrimError::Madvise {
                        addr,
                        len,
                        source: io::Error::last_os_error(),
                    });
                }
                released += len as u64;
            }
            done += n;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn runs_take_present_file_pages_only() {
        let file = PM_PRESENT | PM_FILE;
        let anon = PM_PRESENT;
        let entries = [file, file, anon, 0, file, PM_FILE, file, file, file];
        assert_eq!(clean_file_runs(&entries), [(0, 2), (4, 1), (6, 3)]);
        assert!(clean_file_runs(&[anon, 0, PM_FILE]).is_empty());
    }

    /// Whether each page of the mapping at `addr` is present in this process.
    fn present(addr: usize, pages: usize) -> Vec<bool> {
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut buf = vec![0u8; pages * 8];
        pagemap
            .read_exact_at(&mut buf, (addr / PAGE * 8) as u64)
            .unwrap();
        buf.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()) & PM_PRESENT != 0)
            .collect()
    }

    #[test]
    fn read_file_pages_are_unmapped_and_written_copies_kept() {
        // A private file mapping like the kernel's in guest memory: page 0 and 2 read, page 1
        // written (a private copy), page 3 never touched.
        let mut f = tempfile::tempfile().unwrap();
        for i in 0..4u8 {
            f.write_all(&[b'a' + i; PAGE]).unwrap();
        }
        // SAFETY: a fresh private mapping of our own temporary file, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let base = map as usize;
        let byte = |page: usize| base + page * PAGE + 100;
        // SAFETY: all four addresses lie inside the 4-page mapping made above.
        unsafe {
            assert_eq!(std::ptr::read_volatile(byte(0) as *const u8), b'a');
            std::ptr::write_volatile(byte(1) as *mut u8, b'X');
            assert_eq!(std::ptr::read_volatile(byte(2) as *const u8), b'c');
        }
        assert_eq!(present(base, 4)[..3], [true, true, true]);

        let range = HostRange {
            addr: base,
            len: 4 * PAGE,
        };
        // SAFETY: the mapping is ours and private, its file is not changed, and nothing else
        // touches it while the trim runs.
        let released = unsafe { trim(&[range]) }.unwrap();
        // The two read pages (and any page fault-around mapped beside them) went; the written
        // copy stayed.
        assert!(released >= 2 * PAGE as u64, "{released}");
        let after = present(base, 4);
        assert_eq!((after[0], after[1], after[2]), (false, true, false));
        // SAFETY: as above, inside the mapping.
        unsafe {
            assert_eq!(std::ptr::read_volatile(byte(1) as *const u8), b'X');
            assert_eq!(std::ptr::read_volatile(byte(0) as *const u8), b'a');
            assert_eq!(std::ptr::read_volatile(byte(3) as *const u8), b'd');
        }
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(map, 4 * PAGE) };
    }
}
