//! Virtio devices and their MMIO transport: the `VirtioDevice` contract every device
//! implements and the interrupt a device raises. The constants of the virtio 1.x spec come
//! from `virtio-bindings` (Linux's uapi headers); a device module defines only those it lacks.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod pmem;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

/// The guest memory type every device works on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Why an interrupt is raised; the bit it sets in InterruptStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum IrqType {
    /// The device used buffers of a queue.
    Vring = VIRTIO_MMIO_INT_VRING,
    /// The device configuration changed.
    Config = VIRTIO_MMIO_INT_CONFIG,
}

/// The interrupt of one device: the InterruptStatus register and the irqfd that KVM
/// turns into a guest interrupt.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    irq_evt: EventFd,
}

impl IrqTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            irq_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets the status bit of `irq_type` and signals the irqfd.
    pub fn trigger(&self, irq_type: IrqType) -> std::io::Result<()> {
        self.status.fetch_or(irq_type as u32, Ordering::SeqCst);
        self.irq_evt.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every pending bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd registered with KVM as the device's irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }
}

/// Errors of device activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, the driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device is already activated")]
    AlreadyActive,
    #[error("cannot signal the device's activation eventfd: {0}")]
    ActivateEvent(std::io::Error),
}

/// What a device holds once the driver has activated it.
pub struct ActiveState {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<IrqTrigger>,
    pub queues: Vec<Queue>,
}

impl ActiveState {
    /// Checks an activation (the device is not active yet, the driver set up `expected`
    /// queues) and keeps its parts.
    pub fn new(
        already_active: bool,
        expected: usize,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<Self, ActivateError> {
        if already_active {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        Ok(Self {
            mem,
            interrupt,
            queues,
        })
    }
}

/// A virtio device, independent of the transport that exposes it.
///
/// The transport negotiates features and configures queues; on DRIVER_OK it hands the
/// queues to `activate`. Queue notifications reach the device through `queue_events`
/// (ioeventfds registered with KVM, also written by the transport on a QueueNotify exit).
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of `avail_features`).
    fn acked_features(&self) -> u64;
    /// Records the features the driver accepted; bits not offered are dropped.
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space at `offset`; most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// Starts the device with the queues the driver configured.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool;
    /// Stops the device and drops its queues; it can be activated again.
    fn reset(&mut self);
}

/// Reads `data.len()` bytes of a little-endian configuration image at `offset`,
/// leaving bytes past the end untouched (reads outside the space are ignored).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let Some(end) = start.checked_add(data.len()) else {
        return;
    };
    if end <= config.len() {
        data.copy_from_slice(&config[start..end]);
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    //! Helpers shared by the device tests.
    use super::GuestMemoryMmap;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;

    /// Descriptor flags, as `Descriptor::new` takes them.
    pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    /// 16 MiB of guest memory at address 0.
    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_trigger_sets_status_and_signals_eventfd() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger(IrqType::Vring).unwrap();
        irq.trigger(IrqType::Config).unwrap();
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.irq_evt().read().unwrap(), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn config_reads_outside_the_space_are_ignored() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 2];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4]);
        let mut d = [9u8; 2];
        read_config_bytes(&cfg, 3, &mut d);
        assert_eq!(d, [9, 9]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [9, 9]);
    }
}
