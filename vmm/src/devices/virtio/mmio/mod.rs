//! The virtio-mmio transport (virtio 1.2, section 4.2), version 2 only: the register
//! window a driver uses to negotiate features, configure queues and start a device.

use std::sync::{Arc, Mutex};

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as DEVICE_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};

use super::{GuestMemoryMmap, IrqTrigger, VirtioDevice};
use crate::devices::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Virtio 1.x (non-legacy) MMIO layout.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID ("SBOX" would not fit the spirit; any value is allowed).
pub const VENDOR_ID: u32 = 0x5342_4f58;
/// Size of the register window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the ioeventfds are registered.
pub const NOTIFY_REG_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset where the device configuration space starts.
pub const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// One virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqTrigger>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    driver_status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// Wraps `device`; its queues start unconfigured.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> std::io::Result<Self> {
        let queues = Self::fresh_queues(&*device.lock().expect("virtio device poisoned"));
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(IrqTrigger::new()?),
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_status: 0,
            config_generation: 0,
        })
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            // Queue::new only fails for a max size that is zero, above 32768 or not a power of
            // two; device implementations declare valid constants.
            .map(|&max| Queue::new(max).expect("virtio device declares an invalid queue size"))
            .collect()
    }

    /// The interrupt shared with the device (its eventfd is the irqfd).
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    /// The device behind the transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The Status register.
    pub fn driver_status(&self) -> u32 {
        self.driver_status
    }

    /// Bumps ConfigGeneration; call when the device changes its configuration space.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    fn locked_device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().expect("virtio device poisoned")
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change while the driver sets the device up.
    fn queue_config_allowed(&self) -> bool {
        self.driver_status == ACKNOWLEDGE | DRIVER | FEATURES_OK
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_config_allowed() {
            warn!(
                status = self.driver_status,
                "virtio-mmio: queue register written outside set-up"
            );
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn read_register(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.locked_device().device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.locked_device().avail_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.driver_status,
            // No shared memory regions: a length of all ones means "absent".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(
                    offset,
                    "virtio-mmio: read of an unknown or write-only register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM => self.update_queue(|q| q.set_size(value as u16)),
            VIRTIO_MMIO_QUEUE_READY => self.update_queue(|q| q.set_ready(value == 1)),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.update_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.update_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.update_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.update_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                self.update_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.update_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify_queue(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => debug!(
                offset,
                value, "virtio-mmio: write to an unknown or read-only register"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.driver_status != ACKNOWLEDGE | DRIVER {
            warn!(
                status = self.driver_status,
                "virtio-mmio: DriverFeatures written outside feature negotiation"
            );
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            sel => {
                warn!(sel, "virtio-mmio: DriverFeaturesSel out of range");
                return;
            }
        };
        self.driver_features &= !(0xffff_ffffu64 << shift);
        self.driver_features |= u64::from(value) << shift;
    }

    /// The fallback path of a queue kick: KVM normally consumes QueueNotify writes through
    /// the ioeventfds, but without them the write exits to us.
    fn notify_queue(&mut self, index: u32) {
        let device = self.locked_device();
        match device.queue_events().get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!(index, error = %e, "virtio-mmio: cannot signal queue event");
                }
            }
            None => warn!(
                index,
                "virtio-mmio: QueueNotify for a queue that does not exist"
            ),
        }
    }

    /// The driver status state machine (virtio 1.2, 3.1.1): each step adds one bit.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & FAILED != 0 {
            self.driver_status |= FAILED;
            return;
        }
        let current = self.driver_status;
        let allowed = match (current, value) {
            (0, ACKNOWLEDGE) => true,
            (ACKNOWLEDGE, v) if v == ACKNOWLEDGE | DRIVER => true,
            (c, v) if c == ACKNOWLEDGE | DRIVER && v == c | FEATURES_OK => self.accept_features(),
            (c, v) if c == ACKNOWLEDGE | DRIVER | FEATURES_OK && v == c | DRIVER_OK => {
                self.driver_status = value;
                self.activate();
                return;
            }
            _ => false,
        };
        if allowed {
            self.driver_status = value;
        } else if value != current {
            warn!(
                from = current,
                to = value,
                "virtio-mmio: invalid device status transition ignored"
            );
        }
    }

    /// FEATURES_OK: the driver must accept VERSION_1 and nothing the device does not offer.
    fn accept_features(&mut self) -> bool {
        let mut device = self.locked_device();
        let offered = device.avail_features();
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
            return false;
        }
        if self.driver_features & !offered != 0 {
            warn!(
                extra = self.driver_features & !offered,
                "virtio-mmio: driver accepted features the device does not offer"
            );
            return false;
        }
        device.set_acked_features(self.driver_features);
        true
    }

    /// DRIVER_OK: hand the configured queues to the device.
    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                warn!(queue = i, "virtio-mmio: queue configuration is invalid");
                self.needs_reset();
                return;
            }
        }
        // The transport keeps its copy of the registers; the device gets its own queues.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let queues = match queues {
            Ok(q) => q,
            Err(e) => {
                warn!(error = %e, "virtio-mmio: queue configuration is invalid");
                self.needs_reset();
                return;
            }
        };
        let result =
            self.locked_device()
                .activate(self.mem.clone(), self.interrupt.clone(), queues);
        if let Err(e) = result {
            warn!(error = %e, "virtio-mmio: device activation failed");
            self.needs_reset();
        }
    }

    /// The device hit an error it cannot recover from without a reset.
    fn needs_reset(&mut self) {
        self.driver_status |= DEVICE_NEEDS_RESET;
        let _ = self.interrupt.trigger(super::IrqType::Config);
    }

    fn reset(&mut self) {
        {
            let mut device = self.locked_device();
            if device.is_activated() {
                device.reset();
            }
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.locked_device()
                .read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register read is not 32-bit"
            );
            data.fill(0);
            return;
        }
        // Below CONFIG_SPACE_OFFSET (0x100), so the offset fits in 32 bits.
        data.copy_from_slice(&self.read_register(offset as u32).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.driver_status & DRIVER != 0 && self.driver_status & FAILED == 0 {
                self.locked_device()
                    .write_config(offset - CONFIG_SPACE_OFFSET, data);
                self.config_changed();
            } else {
                warn!(
                    offset,
                    "virtio-mmio: config written before the driver loaded"
                );
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register write is not 32-bit"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            warn!(offset, "virtio-mmio: unaligned register write");
            return;
        }
        // Below CONFIG_SPACE_OFFSET (0x100), so the offset fits in 32 bits.
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests;
