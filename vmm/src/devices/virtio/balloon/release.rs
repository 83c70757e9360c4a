//! Handing guest pages back to the host: a guest physical range the guest declared free is
//! checked against guest memory, then its host mapping is dropped with madvise(MADV_DONTNEED).
//! The next guest access to those pages faults in fresh zero pages, or, where the kernel or
//! initrd file is mapped into guest memory (vstate::memory::map_or_copy_file), the file's
//! page again: either is fine for pages the guest declared free.

use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryRegion, MemoryRegionAddress};

use crate::arch::layout::PAGE_SIZE;
use crate::devices::virtio::GuestMemoryMmap;

/// Why a range was not released; the guest gets no feedback, the VMM logs it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("range {addr:#x}+{len:#x} is empty")]
    Empty { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} is not aligned to {PAGE_SIZE} bytes")]
    Unaligned { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} wraps around the address space")]
    Overflow { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} is not inside one guest memory region")]
    OutOfRange { addr: u64, len: u64 },
    #[error(
        "range {addr:#x}+{len:#x} is backed by a file; dropping its pages would not free them"
    )]
    FileBacked { addr: u64, len: u64 },
    #[error("madvise(MADV_DONTNEED) of range {addr:#x}+{len:#x} failed: errno {errno}")]
    Madvise { addr: u64, len: u64, errno: i32 },
}

/// Drops the host pages behind guest range `addr`..`addr + len`. The range must be page
/// aligned, non-empty and inside a single anonymous guest memory region.
pub fn release_range(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u64,
) -> Result<(), ReleaseError> {
    let a = addr.raw_value();
    if len == 0 {
        return Err(ReleaseError::Empty { addr: a, len });
    }
    if !a.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(ReleaseError::Unaligned { addr: a, len });
    }
    let last = a
        .checked_add(len - 1)
        .ok_or(ReleaseError::Overflow { addr: a, len })?;
    let region = mem
        .find_region(addr)
        .ok_or(ReleaseError::OutOfRange { addr: a, len })?;
    if region.to_region_addr(GuestAddress(last)).is_none() {
        return Err(ReleaseError::OutOfRange { addr: a, len });
    }
    if region.file_offset().is_some() {
        return Err(ReleaseError::FileBacked { addr: a, len });
    }
    let offset = MemoryRegionAddress(a - region.start_addr().raw_value());
    let host = region
        .get_host_address(offset)
        .map_err(|_| ReleaseError::OutOfRange { addr: a, len })?;
    let host_len = usize::try_from(len).map_err(|_| ReleaseError::Overflow { addr: a, len })?;
    // SAFETY: `host`..`host + len` lies inside the private mapping of one guest memory
    // region (checked above), which `mem` keeps mapped for this call. MADV_DONTNEED only
    // replaces the content with zero pages (or the mapped file's pages) on the next access;
    // the VMM holds no Rust
    // references into guest memory (it goes through volatile accesses), and the guest
    // declared these pages free, so neither side loses data it still needs.
    let r = unsafe { libc::madvise(host.cast::<libc::c_void>(), host_len, libc::MADV_DONTNEED) };
    if r != 0 {
        return Err(ReleaseError::Madvise {
            addr: a,
            len,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    Ok(())
}

/// Asks the host not to back guest memory with transparent huge pages (MADV_NOHUGEPAGE).
/// With huge pages one touched byte costs 2 MiB, and khugepaged would fill the holes that
/// released ranges leave in a huge page back in; on hosts with THP set to `always` (Debian's
/// default) that undoes free page reporting. Errors are returned for logging only.
pub fn disable_huge_pages(mem: &GuestMemoryMmap) -> Result<(), ReleaseError> {
    for region in mem.iter() {
        let addr = region.start_addr().raw_value();
        let len = region.len();
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| ReleaseError::OutOfRange { addr, len })?;
        let host_len = usize::try_from(len).map_err(|_| ReleaseError::Overflow { addr, len })?;
        // SAFETY: `host`..`host + len` is exactly the mapping of this region, which `mem`
        // keeps mapped; MADV_NOHUGEPAGE only changes how the kernel backs it, not its content.
        let r =
            unsafe { libc::madvise(host.cast::<libc::c_void>(), host_len, libc::MADV_NOHUGEPAGE) };
        if r != 0 {
            return Err(ReleaseError::Madvise {
                addr,
                len,
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// Two regions with a hole between them: 0..1 MiB and 2 MiB..3 MiB.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(2 << 20), 1 << 20),
        ])
        .unwrap()
    }

    #[test]
    fn released_pages_read_as_zero_and_neighbours_keep_their_content() {
        let mem = memory();
        mem.write_slice(&[0xaa; 3 * 4096], GuestAddress(0x1_0000))
            .unwrap();
        release_range(&mem, GuestAddress(0x1_1000), 4096).unwrap();
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(0x1_1000)).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        mem.read_slice(&mut page, GuestAddress(0x1_0000)).unwrap();
        assert!(page.iter().all(|&b| b == 0xaa));
        mem.read_slice(&mut page, GuestAddress(0x1_2000)).unwrap();
        assert!(page.iter().all(|&b| b == 0xaa));
        // A whole region at once.
        release_range(&mem, GuestAddress(2 << 20), 1 << 20).unwrap();
    }

    #[test]
    fn huge_pages_can_be_turned_off_for_all_regions() {
        let mem = memory();
        disable_huge_pages(&mem).unwrap();
        // /proc/self/smaps shows the advice as the `nh` flag of the mappings holding them.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        for region in mem.iter() {
            let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
            let mut inside = false;
            let mut checked = false;
            for line in smaps.lines() {
                if let Some((range, _)) = line.split_once(' ') {
                    if let Some((a, b)) = range.split_once('-') {
                        if let (Ok(a), Ok(b)) =
                            (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                        {
                            inside = (a..b).contains(&host);
                            continue;
                        }
                    }
                }
                if inside && line.starts_with("VmFlags:") {
                    assert!(line.split_whitespace().any(|f| f == "nh"), "{line}");
                    checked = true;
                }
            }
            assert!(checked, "no smaps entry for {host:#x}");
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mem = memory();
        let e = |addr: u64, len: u64| release_range(&mem, GuestAddress(addr), len).unwrap_err();
        assert_eq!(
            e(0x1000, 0),
            ReleaseError::Empty {
                addr: 0x1000,
                len: 0
            }
        );
        assert_eq!(
            e(0x1001, 4096),
            ReleaseError::Unaligned {
                addr: 0x1001,
                len: 4096
            }
        );
        assert_eq!(
            e(0x1000, 100),
            ReleaseError::Unaligned {
                addr: 0x1000,
                len: 100
            }
        );
        assert_eq!(
            e(u64::MAX - 4095, 8192),
            ReleaseError::Overflow {
                addr: u64::MAX - 4095,
                len: 8192
            }
        );
        // In the hole, past the end, and across the hole.
        assert_eq!(
            e(1 << 20, 4096),
            ReleaseError::OutOfRange {
                addr: 1 << 20,
                len: 4096
            }
        );
        assert_eq!(
            e(3 << 20, 4096),
            ReleaseError::OutOfRange {
                addr: 3 << 20,
                len: 4096
            }
        );
        assert_eq!(
            e((1 << 20) - 4096, 3 << 20),
            ReleaseError::OutOfRange {
                addr: (1 << 20) - 4096,
                len: 3 << 20
            }
        );
        // Ending one page past a region.
        assert_eq!(
            e((2 << 20) + 4096, 1 << 20),
            ReleaseError::OutOfRange {
                addr: (2 << 20) + 4096,
                len: 1 << 20
            }
        );
    }

    #[test]
    fn file_backed_memory_is_not_released() {
        use vm_memory::{FileOffset, GuestRegionMmap, MmapRegion};
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let region = MmapRegion::from_file(FileOffset::new(file, 0), 1 << 20).unwrap();
        let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        assert_eq!(
            release_range(&mem, GuestAddress(0), 4096).unwrap_err(),
            ReleaseError::FileBacked { addr: 0, len: 4096 }
        );
    }
}
