//! Places virtio devices on the MMIO bus: a 4 KiB window and an IRQ each, KVM ioeventfds
//! for queue kicks, an irqfd for interrupts, and the `virtio_mmio.device=` kernel argument.
//!
//! Use from the VMM builder, after the in-kernel irqchip exists and before vCPUs run:
//!
//! ```ignore
//! let mut mmio = MmioDeviceManager::new();
//! let block = Arc::new(Mutex::new(Block::new(path, read_only)?));
//! mmio.register_virtio(vm_fd, &mem, &mut mmio_bus, &mut event_manager, block)?;
//! let vsock = Arc::new(Mutex::new(Vsock::new(cid, &uds_path)?));
//! mmio.register_virtio(vm_fd, &mem, &mut mmio_bus, &mut event_manager, vsock)?;
//! cmdline.extend(mmio.cmdline_entries()); // "virtio_mmio.device=4K@0xd0000000:5", ...
//! ```
//!
//! `event_manager` is anything implementing `SubscriberOps` over
//! `Arc<Mutex<dyn MutEventSubscriber + Send>>` (e.g. `event_manager::EventManager`); the
//! device is added there so its queue events and backend fds are polled by the event loop.
//! Keep the returned `MmioDeviceInfo` (or `transports()`) to reach devices later, e.g. to
//! flush block devices on exit.

use std::sync::{Arc, Mutex};

use event_manager::{MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::arch::layout::{IRQ_BASE, IRQ_MAX, MMIO_DEVICES_START};
use crate::devices::virtio::mmio::{MMIO_WINDOW_SIZE, NOTIFY_REG_OFFSET};
use crate::devices::virtio::{GuestMemoryMmap, MmioTransport, VirtioDevice};
use crate::devices::{Bus, BusError};

/// A subscriber as the event manager stores it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors of virtio device placement.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("no IRQ left for virtio device {index}: IRQs {IRQ_BASE}..={IRQ_MAX} are taken")]
    IrqsExhausted { index: u32 },
    #[error("cannot create the virtio-mmio transport: {0}")]
    Transport(std::io::Error),
    #[error("cannot place the virtio-mmio window at {base:#x}: {source}")]
    Bus { base: u64, source: BusError },
    #[error("cannot register the ioeventfd of queue {queue} at {addr:#x}: {source}")]
    Ioeventfd {
        queue: usize,
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("cannot register the irqfd for IRQ {irq}: {source}")]
    Irqfd { irq: u32, source: kvm_ioctls::Error },
}

/// Where one device was placed.
#[derive(Clone)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub len: u64,
    pub irq: u32,
    pub device_type: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl MmioDeviceInfo {
    /// The kernel command-line entry that declares this device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.len >> 10,
            self.base,
            self.irq
        )
    }
}

/// The virtio-mmio devices of one VM.
#[derive(Default)]
pub struct MmioDeviceManager {
    devices: Vec<MmioDeviceInfo>,
}

impl MmioDeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next window and IRQ, without taking them.
    fn next_slot(&self) -> Result<(u64, u32), MmioError> {
        let index = self.devices.len() as u32;
        let irq = IRQ_BASE + index;
        if irq > IRQ_MAX {
            return Err(MmioError::IrqsExhausted { index });
        }
        Ok((
            MMIO_DEVICES_START + u64::from(index) * MMIO_WINDOW_SIZE,
            irq,
        ))
    }

    /// Puts `device` on the bus behind a virtio-mmio transport, wires its queue kicks
    /// (ioeventfds) and interrupt (irqfd) into KVM, and adds it to the event loop.
    pub fn register_virtio<D, S>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        bus: &mut Bus,
        event_manager: &mut S,
        device: Arc<Mutex<D>>,
    ) -> Result<MmioDeviceInfo, MmioError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
        S: SubscriberOps<Subscriber = Subscriber>,
    {
        let (base, irq) = self.next_slot()?;
        let transport =
            MmioTransport::new(mem.clone(), device.clone()).map_err(MmioError::Transport)?;
        let device_type = {
            let dev = device.lock().expect("virtio device poisoned");
            let notify_addr = base + NOTIFY_REG_OFFSET;
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                // The driver writes the queue index (32 bits) to QueueNotify: one
                // ioeventfd per queue, matched on that value.
                vm.register_ioevent(evt, &IoEventAddress::Mmio(notify_addr), queue as u32)
                    .map_err(|source| MmioError::Ioeventfd {
                        queue,
                        addr: notify_addr,
                        source,
                    })?;
            }
            dev.device_type()
        };
        vm.register_irqfd(transport.interrupt().irq_evt(), irq)
            .map_err(|source| MmioError::Irqfd { irq, source })?;

        let transport = Arc::new(Mutex::new(transport));
        bus.insert(transport.clone(), base, MMIO_WINDOW_SIZE)
            .map_err(|source| MmioError::Bus { base, source })?;
        event_manager.add_subscriber(device);

        let info = MmioDeviceInfo {
            base,
            len: MMIO_WINDOW_SIZE,
            irq,
            device_type,
            transport,
        };
        self.devices.push(info.clone());
        Ok(info)
    }

    /// `virtio_mmio.device=4K@0xd0000000:5`-style entries, one per device, in order.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.cmdline_entry()).collect()
    }

    /// The placed devices, in registration order.
    pub fn devices(&self) -> &[MmioDeviceInfo] {
        &self.devices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::Block;
    use crate::devices::virtio::vsock::Vsock;
    use event_manager::EventManager;
    use vm_memory::GuestAddress;

    /// Creates a VM with an irqchip, or says why /dev/kvm cannot.
    fn vm() -> Result<VmFd, kvm_ioctls::Error> {
        let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
        vm.create_irq_chip()?;
        Ok(vm)
    }

    #[test]
    fn devices_get_consecutive_windows_irqs_and_cmdline_entries() {
        let vm = vm();
        let why = vm.as_ref().err().map(ToString::to_string);
        sandbox_tests::require!(
            let Ok(vm) = vm,
            "/dev/kvm cannot create a VM with an irqchip here: {}",
            why.unwrap_or_default()
        );
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut bus = Bus::new();
        let mut em: EventManager<Subscriber> = EventManager::new().unwrap();
        let mut mgr = MmioDeviceManager::new();
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(1 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();

        let block = Arc::new(Mutex::new(Block::new(disk.path(), false).unwrap()));
        let info = mgr
            .register_virtio(&vm, &mem, &mut bus, &mut em, block)
            .unwrap();
        assert_eq!((info.base, info.irq), (0xd000_0000, 5));
        let vsock = Arc::new(Mutex::new(Vsock::new(3, &dir.path().join("v")).unwrap()));
        let info = mgr
            .register_virtio(&vm, &mem, &mut bus, &mut em, vsock)
            .unwrap();
        assert_eq!(
            (info.base, info.irq, info.device_type),
            (0xd000_1000, 6, 19)
        );
        assert_eq!(
            mgr.cmdline_entries(),
            vec![
                "virtio_mmio.device=4K@0xd0000000:5".to_string(),
                "virtio_mmio.device=4K@0xd0001000:6".to_string(),
            ]
        );

        // Both windows answer on the bus with the virtio magic and their device IDs.
        let mut b = [0u8; 4];
        assert!(bus.read(0xd000_0000, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0x7472_6976);
        assert!(bus.read(0xd000_0008, &mut b));
        assert_eq!(u32::from_le_bytes(b), 2);
        assert!(bus.read(0xd000_1008, &mut b));
        assert_eq!(u32::from_le_bytes(b), 19);
        assert!(!bus.read(0xd000_2000, &mut b));
    }

    #[test]
    fn irqs_run_out_after_the_ioapic_lines() {
        let mut mgr = MmioDeviceManager::new();
        assert_eq!(mgr.next_slot().unwrap(), (0xd000_0000, 5));
        // Pretend 19 devices are placed.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let vsock: Arc<Mutex<dyn VirtioDevice>> =
            Arc::new(Mutex::new(Vsock::new(3, &dir.path().join("v")).unwrap()));
        let transport = Arc::new(Mutex::new(MmioTransport::new(mem, vsock).unwrap()));
        for i in 0..=(IRQ_MAX - IRQ_BASE) {
            mgr.devices.push(MmioDeviceInfo {
                base: 0,
                len: MMIO_WINDOW_SIZE,
                irq: IRQ_BASE + i,
                device_type: 19,
                transport: transport.clone(),
            });
        }
        assert!(matches!(
            mgr.next_slot(),
            Err(MmioError::IrqsExhausted { index: 19 })
        ));
    }
}
