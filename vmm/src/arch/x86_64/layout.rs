//! The guest physical address map: where boot structures, RAM, the MMIO gap and the
//! devices live. Every address the boot code writes to is named here.

/// The GDT used for the PVH entry (null, code, data, TSS descriptors).
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: any exception before the kernel installs its own triple-faults.
pub const BOOT_IDT_START: u64 = 0x520;
/// The PVH `hvm_start_info` structure; its address is passed in RBX.
pub const PVH_INFO_START: u64 = 0x6000;
/// The PVH module list (the initrd).
pub const MODLIST_START: u64 = 0x6040;
/// The PVH memory map (e820-like table).
pub const MEMMAP_START: u64 = 0x7000;
/// Room for memory map entries (each 24 bytes) up to `CMDLINE_START`.
pub const MEMMAP_MAX_ENTRIES: usize = 64;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The longest command line, including its terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area; the MP table goes here and RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: the kernel is loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap (virtio-mmio devices, IOAPIC, LAPIC) from 3 GiB to 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Virtio-mmio device windows start here, one 4 KiB page each (inside the 32-bit MMIO gap).
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// The IOAPIC and LAPIC register windows (emulated by KVM's in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS region and identity-map page (needed by VMX for real mode).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// IRQ lines: the i8042 keyboard uses 1, the serial port 4, and virtio devices one each from
/// `IRQ_BASE` to `IRQ_MAX`, the last line the IOAPIC routes.
pub const KEYBOARD_IRQ: u32 = 1;
pub const SERIAL_IRQ: u32 = 4;
pub const IRQ_BASE: u32 = 5;
pub const IRQ_MAX: u32 = 23;

/// The page size of guest and host (x86_64's base page), the unit of memory mappings.
pub const PAGE_SIZE: u64 = 4096;

/// Each virtio-pmem region starts on a 128 MiB boundary (a Linux memory section, which the
/// guest hotplugs the region into) above RAM and the MMIO gap.
pub const PMEM_ALIGN: u64 = 128 << 20;

/// Where the first virtio-pmem region may start with `ram_size` bytes of RAM: the first
/// 1 GiB boundary above both RAM and the 32-bit MMIO gap.
pub fn pmem_start(ram_size: u64) -> u64 {
    let ram_end = ram_ranges(ram_size)
        .last()
        .map_or(0, |(start, size)| start + size);
    ram_end.max(MMIO_GAP_END).next_multiple_of(1 << 30)
}

/// Guest RAM ranges `(start, size)` for `size` bytes of memory: RAM stops at the MMIO gap
/// and continues above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    #[test]
    fn pmem_goes_above_ram_and_the_gap() {
        assert_eq!(pmem_start(128 << 20), 4 << 30);
        assert_eq!(pmem_start(4 << 30), 5 << 30);
        assert_eq!(pmem_start((4 << 30) + 1), 6 << 30);
        assert_eq!(pmem_start(4 << 30) % PMEM_ALIGN, 0);
    }
}
