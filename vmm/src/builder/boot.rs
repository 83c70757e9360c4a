//! The boot steps before devices and after them: the VM and its memory, the kernel and
//! initrd in guest memory, the command line and boot tables, and the vCPUs.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryRegion};

use crate::arch::kernel::load_pvh_elf;
use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, MMIO_GAP_START, PAGE_SIZE};
use crate::arch::mptable;
use crate::arch::pvh::{configure_pvh, InitrdRegion};
use crate::arch::regs;
use crate::devices::Bus;
use crate::vstate::memory::{create_guest_memory, map_or_copy_file, GuestMemoryMmap};
use crate::vstate::vcpu::{self, Vcpu, VcpuControl};
use crate::vstate::vm::Vm;
use crate::vstate::ExitSignal;

use super::{BootTimer, BuildError};

/// Where the kernel landed.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    pub entry: GuestAddress,
    pub end: u64,
}

/// Stack of the thread that sets up the irqchip: a few ioctls.
const IRQCHIP_THREAD_STACK: usize = 64 << 10;

/// Step 1: the VM with its irqchip.
pub fn create_vm() -> Result<Vm, BuildError> {
    let vm = Vm::create_vm()?;
    vm.setup_irqchip()?;
    Ok(vm)
}

/// Step 2: guest memory, registered with KVM.
pub fn create_memory(vm: &Vm, mib: u64) -> Result<GuestMemoryMmap, BuildError> {
    let mem = create_guest_memory(mib)?;
    vm.register_memory(&mem)?;
    Ok(mem)
}

/// Steps 1 and 2 at once: the irqchip on a short-lived thread while this one maps and
/// registers guest memory. Each waits in the kernel for an SRCU grace period (the irqchip
/// for its IRQ routing table, the memory slot for the new slot array), that is for a kernel
/// worker to run, which on a busy host can take milliseconds; side by side the two waits
/// overlap. Without the thread they run one after the other.
pub fn create_vm_and_memory(mib: u64) -> Result<(Vm, GuestMemoryMmap), BuildError> {
    let vm = Vm::create_vm()?;
    let mem = std::thread::scope(|scope| {
        let irqchip = std::thread::Builder::new()
            .name("irqchip".into())
            .stack_size(IRQCHIP_THREAD_STACK)
            .spawn_scoped(scope, || vm.setup_irqchip());
        let mem = create_memory(&vm, mib);
        match irqchip {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
            Err(_) => vm.setup_irqchip()?,
        }
        mem
    })?;
    Ok((vm, mem))
}

/// Step 3: the ELF vmlinux at its physical addresses, mapped from the file where it can be
/// (arch::kernel); returns its PVH entry point.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelEntry, BuildError> {
    let file = File::open(path).map_err(|source| BuildError::KernelOpen {
        path: path.to_path_buf(),
        source,
    })?;
    let loaded = load_pvh_elf(mem, &file).map_err(|source| BuildError::KernelLoad {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(
        "kernel: {} bytes mapped from the file, {} copied",
        loaded.mapped,
        loaded.copied
    );
    Ok(KernelEntry {
        entry: loaded.entry,
        end: loaded.end,
    })
}

/// Step 3b: the initrd, page-aligned at the top of RAM below the MMIO gap.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdRegion, BuildError> {
    let open_err = |source| BuildError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let low_end = mem
        .iter()
        .map(|r| r.last_addr().raw_value() + 1)
        .filter(|&end| end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0);
    let address = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(|| BuildError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            kernel_end,
        })?;
    map_or_copy_file(mem, GuestAddress(address), &file, 0, size).map_err(|source| {
        BuildError::InitrdLoad {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(InitrdRegion {
        address: GuestAddress(address),
        size,
    })
}

/// The kernel command line: the configured one plus device entries.
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, BuildError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    if !base.is_empty() {
        cmdline.insert_str(base).map_err(BuildError::Cmdline)?;
    }
    for entry in extra {
        cmdline
            .insert_str(entry)
            .map_err(|source| BuildError::CmdlineEntry {
                entry: entry.clone(),
                source,
            })?;
    }
    Ok(cmdline)
}

/// Step 5: command line, PVH start info, MP table, boot GDT.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    initrd: Option<InitrdRegion>,
    num_cpus: u8,
) -> Result<(), BuildError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BuildError::LoadCmdline)?;
    configure_pvh(mem, initrd)?;
    mptable::setup_mptable(mem, num_cpus)?;
    Ok(regs::write_gdt_and_idt(mem)?)
}

/// Step 6: creates and configures every vCPU.
pub fn create_vcpus(
    vm: &Vm,
    count: u8,
    entry: GuestAddress,
    buses: (&Bus, &Bus),
    exit: &Arc<ExitSignal>,
    control: &Arc<VcpuControl>,
    timer: Option<BootTimer>,
) -> Result<Vec<Vcpu>, BuildError> {
    let supported = vcpu::SupportedCpuid::query(vm.kvm())?;
    (0..count)
        .map(|id| {
            let vcpu = Vcpu::new(
                vm.fd(),
                id,
                buses.0.clone(),
                buses.1.clone(),
                exit.clone(),
                control.clone(),
                if id == 0 { timer } else { None },
            )?;
            vcpu.configure(&supported, count, entry.raw_value())?;
            Ok(vcpu)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn cmdline_gets_device_entries_appended() {
        let c = build_cmdline(
            "console=ttyS0",
            &["virtio_mmio.device=4K@0xd0000000:5".to_string()],
        )
        .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
        );
        let long = "a".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(build_cmdline(&long, &[])
            .unwrap_err()
            .to_string()
            .starts_with("--cmdline: "));
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_page_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![0xab; 5000]).unwrap();
        let mem = create_guest_memory(16).unwrap();
        let r = load_initrd(&mem, &path, 0x20_0000).unwrap();
        assert_eq!(r.address.raw_value(), ((16 << 20) - 5000) & !0xfff);
        assert_eq!(r.size, 5000);
        // The first page is mapped from the file, the rest copied.
        for at in [0, 4095, 4096, 4999] {
            let b: u8 = mem.read_obj(r.address.unchecked_add(at)).unwrap();
            assert_eq!(b, 0xab, "byte {at}");
        }
        let past: u8 = mem.read_obj(r.address.unchecked_add(5000)).unwrap();
        assert_eq!(past, 0);
        let e = load_initrd(&mem, &path, 16 << 20).unwrap_err().to_string();
        assert!(e.contains("raise --memory"), "{e}");
    }

    #[test]
    fn kernel_without_elf_header_is_rejected_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, vec![0; 256]).unwrap();
        let mem = create_guest_memory(16).unwrap();
        let e = load_kernel(&mem, &path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--kernel {}: ", path.display())),
            "{e}"
        );
    }
}
