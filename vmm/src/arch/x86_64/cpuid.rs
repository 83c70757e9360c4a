//! CPUID for each vCPU: KVM's supported list, patched with the APIC ID, topology and
//! hypervisor bit a guest expects. KVM's own signature leaves (0x4000_0000...) are kept as is.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24, TSC-deadline mode of the LAPIC timer (emulated by KVM).
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28, HTT: EBX[23:16] holds a valid logical processor count.
const EDX_HTT: u32 = 1 << 28;

/// Bits needed to number `count` items (the x2APIC ID shift of a topology level).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Patches `cpuid` (KVM's supported list) for vCPU `id` of `count`: one socket, one
/// thread per core, `count` cores, APIC ID = vCPU index. `tsc_deadline` is whether KVM
/// emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER), which KVM does not list
/// itself; without it Linux calibrates the LAPIC timer, which fails under nested TCG.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, count: u8, tsc_deadline: bool) {
    let (id, count) = (u32::from(id), u32::from(count));
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC ID, [23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (id << 24) | (count << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                // Level 0: SMT (1 thread per core); level 1: cores; then invalid levels.
                entry.edx = id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = id_bits(count);
                        entry.ebx = count;
                        entry.ecx = (2 << 8) | 1;
                    }
                    n => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = n & 0xff;
                    }
                }
            }
            LEAF_AMD_SIZE => {
                // ECX[7:0]: cores per package - 1 (AMD); ECX[15:12]: APIC ID size.
                entry.ecx = (entry.ecx & !0xf0ff) | (count - 1) | (id_bits(count) << 12);
            }
            LEAF_AMD_EXT_APIC_ID => {
                // EAX: extended APIC ID; EBX: core ID, one thread per core; ECX: node 0.
                entry.eax = id;
                entry.ebx = (entry.ebx & !0xffff) | (id & 0xff);
                entry.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_topology_and_hypervisor_bit() {
        let mut cpuid = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY, 2),
            entry(0x4000_0000, 0),
            entry(LEAF_AMD_EXT_APIC_ID, 0),
            entry(LEAF_V2_EXT_TOPOLOGY, 1),
        ])
        .unwrap();
        patch_cpuid(&mut cpuid, 2, 3, true);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, (2 << 24) | (3 << 16) | 0x800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx), (1, 2));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (2, 3, 0x201, 2));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (0, 0, 2));
        assert_eq!(e[4].ebx, 0x800, "KVM signature leaves are untouched");
        assert_eq!((e[5].eax, e[5].ebx & 0xffff), (2, 2));
        assert_eq!((e[6].eax, e[6].ebx, e[6].edx), (2, 3, 2));
    }

    #[test]
    fn id_bits_counts_bits() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(32), 5);
    }
}
