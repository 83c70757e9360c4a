//! Guest memory: anonymous, private, not pre-faulted mappings split around the MMIO gap,
//! so host pages are only used once the guest touches them; and read-only files (the kernel,
//! the initrd) mapped into it copy-on-write instead of copied.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};

use crate::arch::layout::{ram_ranges, PAGE_SIZE as PAGE};

/// The guest memory type of the whole VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors of creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("--memory: cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Errors of putting a file's bytes into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum FileMapError {
    #[error("guest range {addr:#x}+{len:#x} is not inside one guest memory region")]
    OutOfRange { addr: u64, len: u64 },
    #[error(
        "cannot read {len:#x} bytes at file offset {offset:#x} into guest {addr:#x}: {source}"
    )]
    Read {
        addr: u64,
        offset: u64,
        len: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// Puts `len` bytes of `file` from `offset` into guest memory at `addr`.
///
/// The whole pages of the range are mapped from the file, private and copy-on-write
/// (`MAP_PRIVATE | MAP_FIXED` over the guest RAM mapping), the rest is copied. A mapped page
/// costs host memory only once the guest touches it, and until the guest writes to it, it is
/// the page cache's page, shared with every other VM booted from the same file. That needs
/// `addr` and `offset` page-aligned alike; otherwise, or if the file cannot be mapped, all of
/// it is copied. Returns how many bytes were mapped.
///
/// The file must not be changed in place while the VM runs (replace it by renaming a new file
/// over it): pages the guest has not written to follow the file.
pub fn map_or_copy_file(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &File,
    offset: u64,
    len: u64,
) -> Result<u64, FileMapError> {
    let a = addr.raw_value();
    let out_of_range = || FileMapError::OutOfRange { addr: a, len };
    let region = mem.find_region(addr).ok_or_else(out_of_range)?;
    let region_off = a - region.start_addr().raw_value();
    if region_off
        .checked_add(len)
        .is_none_or(|end| end > region.len())
    {
        return Err(out_of_range());
    }
    let whole = if a.is_multiple_of(PAGE) && offset.is_multiple_of(PAGE) {
        len / PAGE * PAGE
    } else {
        0
    };
    let mapped = if whole > 0 && map_pages(region, region_off, file, offset, whole) {
        whole
    } else {
        0
    };
    let rest = len - mapped;
    if rest > 0 {
        let read_err = |source| FileMapError::Read {
            addr: a,
            offset,
            len,
            source,
        };
        let io_err = |e| read_err(vm_memory::GuestMemoryError::IOError(e));
        let mut f = file.try_clone().map_err(io_err)?;
        f.seek(SeekFrom::Start(offset + mapped)).map_err(io_err)?;
        mem.read_exact_volatile_from(addr.unchecked_add(mapped), &mut f, rest as usize)
            .map_err(read_err)?;
    }
    Ok(mapped)
}

/// Maps `len` bytes (whole pages) of `file` at `offset` over the region's mapping at
/// `region_off`; false if the kernel refuses (e.g. a pipe), the caller then copies.
fn map_pages(
    region: &vm_memory::GuestRegionMmap<()>,
    region_off: u64,
    file: &File,
    offset: u64,
    len: u64,
) -> bool {
    let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(region_off)) else {
        return false;
    };
    let (Ok(len), Ok(offset)) = (usize::try_from(len), libc::off_t::try_from(offset)) else {
        return false;
    };
    // SAFETY: `host`..`host + len` lies inside this region's own mapping (the caller checked
    // the range against the region), which the region keeps mapped until it is dropped and
    // then unmaps as a whole, this mapping included. MAP_FIXED replaces those pages in place,
    // so no other mapping is touched. It runs while the VM is built: no vCPU runs and no
    // device holds a reference into these pages, whose content was not written yet.
    let r = unsafe {
        libc::mmap(
            host.cast::<libc::c_void>(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset,
        )
    };
    if r == libc::MAP_FAILED {
        tracing::debug!(
            "cannot map the file into guest memory ({}); copying it",
            std::io::Error::last_os_error()
        );
        return false;
    }
    true
}

/// Maps `mib` MiB of guest RAM.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mib << 20)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemory;

    #[test]
    fn memory_above_the_gap_is_a_second_region() {
        assert_eq!(create_guest_memory(64).unwrap().num_regions(), 1);
        assert_eq!(create_guest_memory(4096).unwrap().num_regions(), 2);
    }
}
