//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its
//! CPUs, the IOAPIC and the ISA interrupt routing. Written at the start of the EBDA.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START, IRQ_MAX};
use crate::vstate::memory::GuestMemoryMmap;

/// Errors of writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("MP table for {0} vCPUs does not fit in the EBDA")]
    TooManyCpus(u8),
    #[error("cannot write the MP table at {EBDA_START:#x}: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and the FPU + APIC feature flags, as a BIOS reports them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const EBDA_SIZE: usize = 0x400;
const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The configuration table entries (after the header).
fn entries(num_cpus: u8) -> (Vec<u8>, u16) {
    let mut e = Vec::new();
    let mut count = 0u16;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        e.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        count += 1;
    }
    e.extend_from_slice(&[ENTRY_BUS, 0]);
    e.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic_id = num_cpus;
    e.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    e.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // Conforming polarity and trigger (flags 0), ISA bus IRQ n to IOAPIC pin n.
        e.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    e.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (e, count)
}

/// The floating pointer structure followed by the configuration table.
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    let (body, count) = entries(num_cpus);
    let table_len = HEADER_SIZE + body.len();
    if FLOATING_SIZE + table_len > EBDA_SIZE {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let table_addr = EBDA_START as u32 + FLOATING_SIZE as u32;

    let mut fp = Vec::with_capacity(FLOATING_SIZE);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC, 0]);
    table.extend_from_slice(b"SANDBOX ");
    table.extend_from_slice(b"SANDBOX-VMM ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum
    table.extend_from_slice(&body);
    table[7] = checksum(&table);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table for `num_cpus` vCPUs at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts_are_valid() {
        for cpus in [1u8, 2, 32] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(checksum(&t[..16]), 0);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(checksum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(cpus) + 1 + 1 + 24 + 2);
            // The BSP is the first processor entry.
            assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        }
    }
}
