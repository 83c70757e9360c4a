//! The interrupt of a virtio device: the InterruptStatus bits the transport shows the driver,
//! and the irqfd through which KVM injects the device's IRQ into the guest.

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

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
}
