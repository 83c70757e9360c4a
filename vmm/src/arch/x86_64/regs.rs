//! Registers of the boot vCPU for the PVH entry: 32-bit protected mode with flat
//! segments from a GDT in guest memory, paging off, RBX pointing at `hvm_start_info`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START, PVH_INFO_START};
use crate::vstate::memory::GuestMemoryMmap;

/// Errors of writing the boot GDT and IDT.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT at {BOOT_GDT_START:#x}: {0}")]
    WriteGdt(vm_memory::GuestMemoryError),
    #[error("cannot write the boot IDT at {BOOT_IDT_START:#x}: {0}")]
    WriteIdt(vm_memory::GuestMemoryError),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;

/// Builds a GDT descriptor from its access/flags word, base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Null, 32-bit code, data, TSS.
const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// The KVM view of GDT entry `index`.
fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the boot GDT and an empty IDT to guest memory.
pub fn write_gdt_and_idt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteIdt)
}

/// Special registers for the PVH entry, on top of the vCPU's current ones.
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers for the PVH entry at `entry`.
pub fn pvh_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    }
}

/// FPU state after FNINIT, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_cover_4gib() {
        let s = pvh_sregs(kvm_sregs::default());
        assert_eq!((s.cs.base, s.cs.limit, s.cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (s.cs.type_, s.cs.db, s.cs.l, s.cs.present, s.cs.s),
            (0xb, 1, 0, 1, 1)
        );
        assert_eq!(
            (s.ds.selector, s.ds.type_, s.ds.limit),
            (0x10, 0x3, 0xffff_ffff)
        );
        assert_eq!(
            (s.tr.selector, s.tr.type_, s.tr.limit, s.tr.s),
            (0x18, 0xb, 0x67, 0)
        );
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(pvh_regs(0x1000).rbx, PVH_INFO_START);
    }

    #[test]
    fn gdt_lands_in_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_gdt_and_idt(&mem).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, 0x00cf_9b00_0000_ffff);
    }
}
