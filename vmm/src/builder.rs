//! Builds and runs a microVM from a `VmConfig`, one function per boot step: create the VM,
//! guest memory, load the kernel, devices, system tables, vCPUs, then run the event loop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::kernel::{load_pvh_elf, KernelError};
use crate::arch::layout::{
    pmem_start, CMDLINE_MAX_SIZE, CMDLINE_START, MMIO_GAP_START, PAGE_SIZE, PMEM_ALIGN,
};
use crate::arch::mptable::{self, MptableError};
use crate::arch::pvh::{configure_pvh, InitrdRegion, PvhError};
use crate::arch::regs::{self, RegsError};
use crate::config::{SerialOutput, VmConfig};
use crate::device_manager::legacy::{LegacyDeviceError, PortIoDeviceManager};
use crate::device_manager::mmio::{MmioDeviceManager, MmioError};
use crate::devices::legacy::SerialInput;
use crate::devices::virtio::balloon::{self, Balloon, BalloonError};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::pmem::{BackingError, Pmem, PmemBacking, PmemError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::Bus;
use crate::event_loop::{EventLoop, EventLoopError};
use crate::vstate::memory::{
    create_guest_memory, map_or_copy_file, FileMapError, GuestMemoryMmap, MemoryError,
};
use crate::vstate::trim::HostRange;
use crate::vstate::vcpu::{self, Vcpu, VcpuControl, VcpuError, VcpuHandle};
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::{ExitReason, ExitSignal};

/// Errors of building or running the microVM; each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("--kernel {}: {source}", path.display())]
    KernelOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--kernel {}: {source}", path.display())]
    KernelLoad { path: PathBuf, source: KernelError },
    #[error("--initrd {}: {source}", path.display())]
    InitrdOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--initrd {}: {size} bytes do not fit in guest memory above the kernel (ends at {kernel_end:#x}); raise --memory", path.display())]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
    },
    #[error("--initrd {}: cannot put it into guest memory: {source}", path.display())]
    InitrdLoad { path: PathBuf, source: FileMapError },
    #[error("--cmdline: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("--cmdline: cannot append {entry:?}: {source}")]
    CmdlineEntry {
        entry: String,
        source: linux_loader::cmdline::Error,
    },
    #[error("--cmdline: cannot write it to guest memory: {0}")]
    LoadCmdline(linux_loader::loader::Error),
    #[error(transparent)]
    Legacy(#[from] LegacyDeviceError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    Pvh(#[from] PvhError),
    #[error("--block {}: {source}", path.display())]
    Block { path: PathBuf, source: BlockError },
    #[error("--pmem {}: {source}", path.display())]
    PmemBacking { path: PathBuf, source: BackingError },
    #[error("--pmem {}: {source}", path.display())]
    Pmem { path: PathBuf, source: PmemError },
    #[error("--pmem {}: {source}", path.display())]
    PmemSlot { path: PathBuf, source: VmError },
    #[error("--vsock {}: {source}", path.display())]
    Vsock { path: PathBuf, source: VsockError },
    #[error("--balloon: {0}")]
    Balloon(BalloonError),
    #[error("--balloon: {0}")]
    BalloonPlacement(MmioError),
    #[error("{flag} {}: {source}", path.display())]
    MmioPlacement {
        flag: &'static str,
        path: PathBuf,
        source: MmioError,
    },
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("cannot create the exit eventfd: {0}")]
    ExitEvent(std::io::Error),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

/// Logs the time since process start of each boot phase when `--debug` is on.
#[derive(Debug, Clone, Copy)]
pub struct BootTimer {
    start: Instant,
    enabled: bool,
}

impl BootTimer {
    pub fn new(start: Instant, enabled: bool) -> Self {
        Self { start, enabled }
    }

    /// Logs that `phase` is done.
    pub fn phase(&self, phase: &str) {
        if self.enabled {
            let ms = self.start.elapsed().as_secs_f64() * 1000.0;
            tracing::info!("boot phase {phase}: done at {ms:.3} ms since process start");
        }
    }
}

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

/// The virtio devices on the MMIO bus, the command-line entries that declare them, the
/// block devices to flush before an API exit, and the pmem mappings (kept until the VM is
/// gone).
#[derive(Default)]
pub struct VirtioDevices {
    pub cmdline: Vec<String>,
    blocks: Vec<Arc<Mutex<Block>>>,
    /// Dropping one unmaps its region.
    pmem_backings: Vec<PmemBacking>,
}

impl VirtioDevices {
    /// Where the pmem regions are mapped in this process.
    pub fn pmem_ranges(&self) -> Vec<HostRange> {
        self.pmem_backings
            .iter()
            .map(|b| HostRange {
                addr: b.host_addr() as usize,
                len: b.region_len() as usize,
            })
            .collect()
    }

    /// Flushes every block device to its backing file.
    pub fn flush(&mut self) {
        for block in &self.blocks {
            let block = block.lock().expect("block device poisoned");
            if let Err(e) = block.flush() {
                tracing::error!(path = %block.path().display(), error = %e, "cannot flush block device");
            }
        }
    }
}

/// KVM memory slots of pmem regions: after the (at most two) RAM slots.
const PMEM_FIRST_SLOT: u32 = 8;

/// Step 4: virtio-mmio devices from the configuration: block devices in order, then pmem
/// devices in order, then vsock, then the balloon.
pub fn attach_virtio_devices(
    config: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_loop: &mut EventLoop,
) -> Result<VirtioDevices, BuildError> {
    let mut bus = VirtioBus {
        manager: MmioDeviceManager::new(),
        vm,
        mem,
        mmio_bus,
        event_loop,
    };
    let placement = |flag: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::MmioPlacement { flag, path, source }
    };
    let mut blocks = Vec::new();
    for b in &config.blocks {
        let block = Block::new(&b.path, b.read_only).map_err(|source| BuildError::Block {
            path: b.path.clone(),
            source,
        })?;
        let block = Arc::new(Mutex::new(block));
        bus.place(block.clone())
            .map_err(placement("--block", &b.path))?;
        blocks.push(block);
    }
    let mut pmem_backings = Vec::new();
    let mut next_start = pmem_start(config.memory_mib << 20);
    for (index, p) in config.pmems.iter().enumerate() {
        let (pmem, backing) = map_pmem(vm, p, index as u32, &mut next_start)?;
        bus.place(Arc::new(Mutex::new(pmem)))
            .map_err(placement("--pmem", &p.path))?;
        pmem_backings.push(backing);
    }
    if let Some(v) = &config.vsock {
        let vsock =
            Vsock::new(u64::from(v.cid), &v.uds_path).map_err(|source| BuildError::Vsock {
                path: v.uds_path.clone(),
                source,
            })?;
        bus.place(Arc::new(Mutex::new(vsock)))
            .map_err(placement("--vsock", &v.uds_path))?;
    }
    if config.balloon {
        // Released pages would come back as parts of huge pages otherwise.
        if let Err(e) = balloon::disable_huge_pages(mem) {
            tracing::warn!(error = %e, "cannot turn transparent huge pages off for guest memory");
        }
        let balloon = Balloon::new().map_err(BuildError::Balloon)?;
        bus.place(Arc::new(Mutex::new(balloon)))
            .map_err(BuildError::BalloonPlacement)?;
    }
    let manager = bus.manager;
    Ok(VirtioDevices {
        cmdline: manager.cmdline_entries(),
        blocks,
        pmem_backings,
    })
}

/// What placing a virtio-mmio device needs: the device manager and the VM, memory, bus and
/// event loop it wires the device into.
struct VirtioBus<'a> {
    manager: MmioDeviceManager,
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    mmio_bus: &'a mut Bus,
    event_loop: &'a mut EventLoop,
}

impl VirtioBus<'_> {
    fn place<D>(&mut self, device: Arc<Mutex<D>>) -> Result<(), MmioError>
    where
        D: crate::devices::virtio::VirtioDevice
            + event_manager::MutEventSubscriber
            + Send
            + 'static,
    {
        self.manager
            .register_virtio(
                self.vm.fd(),
                self.mem,
                self.mmio_bus,
                self.event_loop.manager_mut(),
                device,
            )
            .map(|_| ())
    }
}

/// Maps pmem file `index` at the next 128 MiB boundary from `next_start` (which it moves past
/// the region) as its own KVM slot, read-only when KVM can; returns the device and the
/// mapping, which must outlive the VM.
fn map_pmem(
    vm: &Vm,
    p: &crate::config::PmemConfig,
    index: u32,
    next_start: &mut u64,
) -> Result<(Pmem, PmemBacking), BuildError> {
    let path = || p.path.clone();
    let readonly_slot = p.read_only && vm.has_readonly_memory();
    let backing = PmemBacking::open(&p.path, p.read_only, p.read_only && !readonly_slot).map_err(
        |source| BuildError::PmemBacking {
            path: path(),
            source,
        },
    )?;
    let start = next_start.next_multiple_of(PMEM_ALIGN);
    *next_start = start + backing.region_len();
    // SAFETY: the mapping is owned by `backing`, which the caller keeps (in `VirtioDevices`)
    // until the VM is dropped (builder::Vmm::run drops the VM first).
    unsafe {
        vm.register_region(
            PMEM_FIRST_SLOT + index,
            start,
            backing.region_len(),
            backing.host_addr(),
            readonly_slot,
        )
    }
    .map_err(|source| BuildError::PmemSlot {
        path: path(),
        source,
    })?;
    let pmem = Pmem::new(&backing, start).map_err(|source| BuildError::Pmem {
        path: path(),
        source,
    })?;
    Ok((pmem, backing))
}

/// A built microVM, ready to run.
pub struct Vmm {
    // Declared first so the VM (and its memory slots) go before the memory mapping.
    vm: Vm,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    control: Arc<VcpuControl>,
    vcpus: Vec<Vcpu>,
    legacy: PortIoDeviceManager,
    devices: VirtioDevices,
    event_loop: EventLoop,
    api: Option<crate::api::ApiServerHandle>,
}

/// Builds the microVM described by `config`.
pub fn build_microvm(config: &VmConfig, timer: BootTimer) -> Result<Vmm, BuildError> {
    let exit = Arc::new(ExitSignal::new().map_err(BuildError::ExitEvent)?);
    let control = Arc::new(VcpuControl::default());

    let (vm, mem) = create_vm_and_memory(config.memory_mib)?;
    // Set up side by side, so both phases end here.
    timer.phase("KVM setup");
    timer.phase("memory");

    let kernel = load_kernel(&mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(&mem, path, kernel.end)?),
        None => None,
    };
    timer.phase("load kernel");

    let mut pio_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    let legacy = PortIoDeviceManager::new(vm.fd(), &mut pio_bus, &config.serial, exit.clone())?;
    let mut event_loop = EventLoop::new(exit.clone())?;
    if config.serial == SerialOutput::Stdout {
        event_loop.add(Arc::new(Mutex::new(SerialInput::new(
            legacy.serial.clone(),
            std::io::stdin(),
        ))));
    }
    let devices = attach_virtio_devices(config, &vm, &mem, &mut mmio_bus, &mut event_loop)?;
    let cmdline = build_cmdline(&config.cmdline, &devices.cmdline)?;
    configure_system(&mem, &cmdline, initrd, config.vcpus)?;
    timer.phase("devices");

    vcpu::install_kick_handler()?;
    let vcpus = create_vcpus(
        &vm,
        config.vcpus,
        kernel.entry,
        (&pio_bus, &mmio_bus),
        &exit,
        &control,
        Some(timer),
    )?;
    timer.phase("vCPUs");

    let api = match &config.api_sock {
        Some(path) => Some(crate::api::ApiServerHandle::bind(path)?),
        None => None,
    };

    Ok(Vmm {
        vm,
        mem,
        exit,
        control,
        vcpus,
        legacy,
        devices,
        event_loop,
        api,
    })
}

impl Vmm {
    /// Starts the vCPUs and runs the event loop until the VM stops; returns why.
    pub fn run(self) -> Result<ExitReason, BuildError> {
        let Vmm {
            vm,
            mem,
            exit,
            control,
            vcpus,
            legacy,
            devices,
            mut event_loop,
            api,
        } = self;
        let handles: Vec<VcpuHandle> = vcpus
            .into_iter()
            .map(Vcpu::start_threaded)
            .collect::<Result<_, _>>()?;
        let handles = Arc::new(handles);
        let mut guest_ranges: Vec<HostRange> = mem
            .iter()
            .map(|r| HostRange {
                addr: r.as_ptr() as usize,
                len: r.len() as usize,
            })
            .collect();
        guest_ranges.extend(devices.pmem_ranges());
        let devices = Arc::new(Mutex::new(devices));
        if let Some(api) = api {
            event_loop.add(api.into_subscriber(crate::api::VmControl {
                exit: exit.clone(),
                control: control.clone(),
                vcpus: handles.clone(),
                devices: devices.clone(),
                i8042: legacy.i8042.clone(),
                guest_ranges,
            }));
        }
        let result = event_loop.run_until_exit(|| {});
        vcpu::stop_vcpus(&control, &handles);
        if let Ok(ExitReason::ApiExit) = &result {
            devices.lock().expect("devices poisoned").flush();
        }
        legacy.flush();
        // Dropping the event loop drops the API server, which removes its socket file.
        drop(event_loop);
        drop(vm);
        // The pmem mappings go only now that no memory slot refers to them.
        drop(devices);
        drop(mem);
        Ok(result?)
    }
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
