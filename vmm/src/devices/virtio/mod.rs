//! Virtio devices and their MMIO transport: the `VirtioDevice` contract every device
//! implements, the state they all share, and the interrupt a device raises. The constants of
//! the virtio 1.x spec come from `virtio-bindings` (Linux's uapi headers); a device module
//! defines only those it lacks.

pub mod balloon;
pub mod block;
mod common;
pub mod fs;
mod interrupt;
pub mod mmio;
pub mod net;
pub mod pmem;
pub mod vsock;

use std::sync::Arc;

use tracing::warn;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use common::{ActivateError, ActiveState, QueueError, VirtioCommon};
pub use interrupt::{IrqTrigger, IrqType};
pub use mmio::MmioTransport;

/// The guest memory type every device works on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Held shared by the device threads (virtio-fs workers) while they write guest memory, and
/// exclusively by what needs guest memory to stay still without them (the API's `trim`, with
/// the vCPUs paused and the event loop's devices on its own thread).
pub type GuestMemoryGate = std::sync::Arc<std::sync::RwLock<()>>;

/// A virtio device, independent of the transport that exposes it.
///
/// The transport negotiates features and configures queues; on DRIVER_OK it hands the
/// queues to `activate`. Queue notifications reach the device through `queue_events`
/// (ioeventfds registered with KVM, also written by the transport on a QueueNotify exit).
///
/// A device implements `common`/`common_mut`; the other methods answer from its
/// `VirtioCommon`, and a device overrides only those where it does more.
pub trait VirtioDevice: Send {
    /// The state every device shares.
    fn common(&self) -> &VirtioCommon;
    fn common_mut(&mut self) -> &mut VirtioCommon;

    /// The virtio device ID (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32 {
        self.common().device_type()
    }
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.common().queue_max_sizes()
    }
    /// The features the device offers.
    fn avail_features(&self) -> u64 {
        self.common().avail_features()
    }
    /// The features the driver accepted (a subset of `avail_features`).
    fn acked_features(&self) -> u64 {
        self.common().acked_features()
    }
    /// Records the features the driver accepted; bits not offered are dropped.
    fn set_acked_features(&mut self, features: u64) {
        self.common_mut().set_acked_features(features);
    }
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.common().read_config(offset, data);
    }
    /// Writes the device configuration space at `offset`; read-only unless the device
    /// says otherwise.
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!(
            offset,
            "{}: configuration space is read-only",
            self.common().name()
        );
    }
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd] {
        self.common().queue_events()
    }
    /// Starts the device with the queues the driver configured, then serves what the driver
    /// queued before (a kick that arrived early) as if the first queue had been kicked.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.common_mut().activate(mem, interrupt, queues)?;
        self.common().kick_queue(0);
        Ok(())
    }
    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool {
        self.common().is_activated()
    }
    /// Stops the device and drops its queues; it can be activated again.
    fn reset(&mut self) {
        self.common_mut().reset();
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

    /// A deterministic pseudo-random sequence (xorshift64*) from `seed`, for the tests that
    /// throw random descriptor tables at a device.
    pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// 16 MiB of guest memory at address 0.
    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }
}
