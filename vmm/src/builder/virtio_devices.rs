//! Step 4 of the boot: the virtio-mmio devices of the configuration, created, wired into
//! KVM and the event loop, and kept for what the VMM does with them later (flush, trim).

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::arch::layout::{pmem_start, PMEM_ALIGN};
use crate::config::VmConfig;
use crate::device_manager::mmio::{MmioDeviceManager, MmioError};
use crate::devices::virtio::balloon::{self, Balloon};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::{Fs, Share};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::pmem::{Pmem, PmemBacking};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::GuestMemoryGate;
use crate::devices::Bus;
use crate::event_loop::EventLoop;
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::trim::HostRange;
use crate::vstate::vm::Vm;

use super::BuildError;

/// The virtio devices on the MMIO bus, the command-line entries that declare them, the
/// block devices to flush before an API exit, and the pmem mappings (kept until the VM is
/// gone).
#[derive(Default)]
pub struct VirtioDevices {
    pub cmdline: Vec<String>,
    blocks: Vec<Arc<Mutex<Block>>>,
    /// Dropping one unmaps its region.
    pmem_backings: Vec<PmemBacking>,
    /// What keeps the device threads from writing guest memory (`trim`).
    memory_gate: GuestMemoryGate,
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

    /// Held exclusively, no device thread writes guest memory.
    pub fn memory_gate(&self) -> GuestMemoryGate {
        self.memory_gate.clone()
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
/// devices in order, then vsock, then the NICs in order, then the balloon, then virtio-fs
/// shares in order.
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
    for n in &config.nets {
        let net = open_net(n)?;
        let label = std::path::PathBuf::from(net.label());
        bus.place(Arc::new(Mutex::new(net)))
            .map_err(placement("--net", &label))?;
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
    let memory_gate = GuestMemoryGate::default();
    for f in &config.fs {
        let fs_err = |source| BuildError::Fs {
            path: f.path.clone(),
            source,
        };
        let share = Share::open(&f.path, f.read_only).map_err(|e| fs_err(e.into()))?;
        let fs = Fs::new(&f.tag, share, memory_gate.clone()).map_err(fs_err)?;
        bus.place(Arc::new(Mutex::new(fs)))
            .map_err(placement("--fs", &f.path))?;
    }
    let manager = bus.manager;
    Ok(VirtioDevices {
        cmdline: manager.cmdline_entries(),
        blocks,
        pmem_backings,
        memory_gate,
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

/// The virtio-net device of `n`, on its tap.
fn open_net(n: &crate::config::NetConfig) -> Result<Net, BuildError> {
    use crate::config::TapSource;
    use crate::devices::virtio::net::{NetError, Tap};
    let label = n.tap.to_string();
    let tap = match &n.tap {
        TapSource::Name(name) => Tap::open_named(name),
        TapSource::Fd(fd) => Tap::from_fd(*fd),
    };
    tap.map_err(NetError::from)
        .and_then(|tap| Net::new(Box::new(tap), label.clone(), n.mac, n.mtu))
        .map_err(|source| BuildError::Net { tap: label, source })
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
