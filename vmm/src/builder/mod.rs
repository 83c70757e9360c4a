//! Builds and runs a microVM from a `VmConfig`, one function per boot step: create the VM,
//! guest memory, load the kernel, devices, system tables, vCPUs, then run the event loop.

mod boot;
mod virtio_devices;

pub use boot::{
    build_cmdline, configure_system, create_memory, create_vcpus, create_vm, create_vm_and_memory,
    load_initrd, load_kernel, KernelEntry,
};
pub use virtio_devices::{attach_virtio_devices, VirtioDevices};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::{GuestMemory, GuestMemoryRegion};

use crate::arch::kernel::KernelError;
use crate::arch::mptable::MptableError;
use crate::arch::pvh::PvhError;
use crate::arch::regs::RegsError;
use crate::config::{SerialOutput, VmConfig};
use crate::device_manager::legacy::{LegacyDeviceError, PortIoDeviceManager};
use crate::device_manager::mmio::MmioError;
use crate::devices::legacy::SerialInput;
use crate::devices::virtio::balloon::BalloonError;
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::net::NetError;
use crate::devices::virtio::pmem::{BackingError, PmemError};
use crate::devices::virtio::vsock::VsockError;
use crate::devices::Bus;
use crate::event_loop::{EventLoop, EventLoopError};
use crate::vstate::memory::{FileMapError, GuestMemoryMmap, MemoryError};
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
    #[error("--fs {}: {source}", path.display())]
    Fs { path: PathBuf, source: FsError },
    #[error("--vsock {}: {source}", path.display())]
    Vsock { path: PathBuf, source: VsockError },
    #[error("--net {tap}: {source}")]
    Net { tap: String, source: NetError },
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
