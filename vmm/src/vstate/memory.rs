//! Guest memory: anonymous, private, not pre-faulted mappings split around the MMIO gap,
//! so host pages are only used once the guest touches them.

use vm_memory::GuestAddress;

use crate::arch::layout::ram_ranges;

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
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn memory_above_the_gap_is_a_second_region() {
        assert_eq!(create_guest_memory(64).unwrap().num_regions(), 1);
        assert_eq!(create_guest_memory(4096).unwrap().num_regions(), 2);
    }
}
