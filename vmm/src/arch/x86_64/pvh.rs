//! The PVH boot protocol (xen/include/public/arch-x86/hvm/start_info.h): the
//! `hvm_start_info` structure, the memory map and the module list (initrd) in low memory.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryRegion};

use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, MEMMAP_START, MODLIST_START, PVH_INFO_START,
};
use crate::vstate::memory::GuestMemoryMmap;

/// "xEn3" with the 0x80 bit of the "E" set.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// Errors of writing the PVH boot structures.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error("cannot write the PVH start info at {PVH_INFO_START:#x}: {0}")]
    Write(linux_loader::configurator::Error),
}

/// An initrd already copied into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct InitrdRegion {
    pub address: GuestAddress,
    pub size: u64,
}

/// The memory map: low RAM below the EBDA, then every RAM region from 1 MiB up.
pub fn memmap(mem: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let ram = |addr: u64, size: u64| hvm_memmap_table_entry {
        addr,
        size,
        type_: E820_RAM,
        reserved: 0,
    };
    let mut map = vec![ram(0, EBDA_START)];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.last_addr().raw_value() + 1;
        if end > start {
            map.push(ram(start, end - start));
        }
    }
    map
}

/// Writes `hvm_start_info`, the memory map and the module list.
pub fn configure_pvh(mem: &GuestMemoryMmap, initrd: Option<InitrdRegion>) -> Result<(), PvhError> {
    let memmap = memmap(mem);
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|r| hvm_modlist_entry {
            paddr: r.address.raw_value(),
            size: r.size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(PvhError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn start_info_points_at_memmap_cmdline_and_initrd() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let initrd = InitrdRegion {
            address: GuestAddress(0x80_0000),
            size: 0x1234,
        };
        configure_pvh(&mem, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x80_0000, 0x1234));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(MEMMAP_START + 24)).unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (HIMEM_START, (32 << 20) - HIMEM_START, E820_RAM)
        );
    }

    #[test]
    fn memmap_skips_the_mmio_gap() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0xc000_0000),
            (GuestAddress(0x1_0000_0000), 1 << 30),
        ])
        .unwrap();
        let map = memmap(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!((map[2].addr, map[2].size), (0x1_0000_0000, 1 << 30));
    }
}
