//! What every virtio device shares, whatever it does: its ID, features offered and accepted,
//! queue sizes and their notification eventfds, configuration space, and activation state.
//!
//! A device embeds one `VirtioCommon` and hands it to the `VirtioDevice` trait through
//! `common()`/`common_mut()`; the trait's provided methods answer the transport from it, so a
//! device file holds only its own logic (Cloud Hypervisor's `VirtioCommon` is the model). A
//! virtio-net device, say, is `VirtioCommon::new(VIRTIO_ID_NET, features, &[RX, TX], config)`
//! with its MAC, status and MTU in `config`, changing the status through `config_space_mut`
//! (and an `IrqType::Config` interrupt); a virtio-fs device passes its hiprio and request
//! queue sizes and a configuration holding its tag. Each adds its queue processing and event
//! handler, and overrides `activate` or `reset` only if it has more to start or stop.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use tracing::{error, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::{
    VIRTIO_ID_BALLOON, VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_PMEM,
    VIRTIO_ID_VSOCK,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{GuestMemoryMmap, IrqTrigger, IrqType};

/// Errors of device activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, the driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device is already activated")]
    AlreadyActive,
    #[error("cannot signal the device's activation eventfd: {0}")]
    ActivateEvent(std::io::Error),
    #[error("cannot start the device's thread: {0}")]
    Thread(std::io::Error),
}

/// Errors of returning buffers to the guest: the used ring, or the interrupt.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {index}: {source}")]
    Queue {
        index: usize,
        source: virtio_queue::Error,
    },
    #[error("cannot signal the interrupt: {0}")]
    Interrupt(std::io::Error),
}

/// What a device holds once the driver has activated it.
pub struct ActiveState {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<IrqTrigger>,
    pub queues: Vec<Queue>,
}

impl ActiveState {
    /// Serves every chain the driver made available on queue `index`: `serve` handles one
    /// and says how many bytes it wrote into it, and the chain goes back to the guest; then
    /// interrupts the guest if it wants to know. Returns how many chains were served.
    pub fn serve_queue(
        &mut self,
        index: usize,
        mut serve: impl FnMut(DescriptorChain<&GuestMemoryMmap>, &GuestMemoryMmap) -> u32,
    ) -> Result<usize, QueueError> {
        let mem = &self.mem;
        let queue = &mut self.queues[index];
        let mut served = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = serve(chain, mem);
            queue
                .add_used(mem, head, len)
                .map_err(|source| QueueError::Queue { index, source })?;
            served += 1;
        }
        if served > 0 {
            self.signal_used_queue(index)?;
        }
        Ok(served)
    }

    /// After the device used buffers of queue `index`: interrupts the guest unless the
    /// driver asked not to be (VRING_AVAIL_F_NO_INTERRUPT, or its event index).
    pub fn signal_used_queue(&mut self, index: usize) -> Result<(), QueueError> {
        let needed = self.queues[index]
            .needs_notification(&self.mem)
            .map_err(|source| QueueError::Queue { index, source })?;
        if needed {
            self.interrupt
                .trigger(IrqType::Vring)
                .map_err(QueueError::Interrupt)?;
        }
        Ok(())
    }
}

/// The state every virtio device shares.
pub struct VirtioCommon {
    device_type: u32,
    avail_features: u64,
    acked_features: u64,
    queue_max_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    config_space: Vec<u8>,
    active: Option<ActiveState>,
}

impl VirtioCommon {
    /// A device `device_type` (`VIRTIO_ID_*`) offering `features` and VIRTIO_F_VERSION_1 (the
    /// MMIO transport version 2 requires it), with one queue per entry of `queue_max_sizes`
    /// and the configuration space `config_space` (little endian, as the driver reads it).
    pub fn new(
        device_type: u32,
        features: u64,
        queue_max_sizes: &[u16],
        config_space: Vec<u8>,
    ) -> std::io::Result<Self> {
        let queue_evts = queue_max_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            device_type,
            avail_features: features | (1 << VIRTIO_F_VERSION_1),
            acked_features: 0,
            queue_max_sizes: queue_max_sizes.to_vec(),
            queue_evts,
            config_space,
            active: None,
        })
    }

    /// The virtio device ID.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The device's name in log messages (`virtio-blk`, ...).
    pub fn name(&self) -> &'static str {
        match self.device_type {
            VIRTIO_ID_NET => "virtio-net",
            VIRTIO_ID_BLOCK => "virtio-blk",
            VIRTIO_ID_BALLOON => "virtio-balloon",
            VIRTIO_ID_VSOCK => "virtio-vsock",
            VIRTIO_ID_FS => "virtio-fs",
            VIRTIO_ID_PMEM => "virtio-pmem",
            _ => "virtio",
        }
    }

    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records what the driver accepted; bits the device does not offer are dropped.
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Whether the driver accepted feature bit `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Reads the configuration space at `offset`; bytes past its end are left untouched.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    /// Writes the configuration space at `offset`; a write reaching past its end is dropped.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(data.len())?));
        match range.and_then(|r| self.config_space.get_mut(r)) {
            Some(dst) => dst.copy_from_slice(data),
            None => warn!(
                offset,
                len = data.len(),
                "{}: configuration write outside the space",
                self.name()
            ),
        }
    }

    /// The configuration space, for a device that changes its own fields.
    pub fn config_space_mut(&mut self) -> &mut [u8] {
        &mut self.config_space
    }

    /// Takes the queues the driver set up, if the device is not active yet and they are as
    /// many as it has.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let expected = self.queue_max_sizes.len();
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        self.active = Some(ActiveState {
            mem,
            interrupt,
            queues,
        });
        Ok(())
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The queues, memory and interrupt, once activated.
    pub fn active(&self) -> Option<&ActiveState> {
        self.active.as_ref()
    }

    pub fn active_mut(&mut self) -> Option<&mut ActiveState> {
        self.active.as_mut()
    }

    /// Drops the queues and the accepted features; the device can be activated again.
    pub fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    /// Signals the event of queue `index`, as a driver's kick would: how a device serves
    /// what the driver queued before activating it.
    pub fn kick_queue(&self, index: usize) {
        if let Some(Err(e)) = self.queue_evts.get(index).map(|evt| evt.write(1)) {
            warn!(index, error = %e, "{}: cannot signal a queue event", self.name());
        }
    }

    /// Adds every queue event to the event loop.
    pub fn poll_queue_events(&self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                error!(error = ?e, "{}: cannot poll a queue event", self.name());
            }
        }
    }

    /// The queue whose event is `fd`, its counter drained (it only wakes the device), or
    /// `None` if `fd` is none of them.
    pub fn take_queue_event(&self, fd: RawFd) -> Option<usize> {
        let index = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd)?;
        let _ = self.queue_evts[index].read();
        Some(index)
    }
}

/// Reads `data.len()` bytes of a little-endian configuration image at `offset`,
/// leaving bytes past the end untouched (reads outside the space are ignored).
fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
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
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;

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

    #[test]
    fn features_config_activation_and_reset() {
        let mut c = VirtioCommon::new(VIRTIO_ID_NET, 0b101, &[16, 32], vec![1, 2, 3, 4]).unwrap();
        assert_eq!(c.name(), "virtio-net");
        assert_eq!(c.avail_features(), (1 << VIRTIO_F_VERSION_1) | 0b101);
        assert_eq!(c.queue_events().len(), 2);
        c.set_acked_features(u64::MAX);
        assert_eq!(c.acked_features(), c.avail_features());
        assert!(c.has_feature(2) && !c.has_feature(1));

        c.write_config(1, &[7, 8]);
        c.write_config(3, &[9, 9]);
        let mut d = [0u8; 4];
        c.read_config(0, &mut d);
        assert_eq!(d, [1, 7, 8, 4], "a write past the end is dropped whole");

        let irq = Arc::new(IrqTrigger::new().unwrap());
        let q = || Queue::new(16).unwrap();
        let e = c.activate(guest_memory(), irq.clone(), vec![q()]);
        assert!(matches!(
            e,
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        c.activate(guest_memory(), irq.clone(), vec![q(), q()])
            .unwrap();
        let e = c.activate(guest_memory(), irq, vec![q(), q()]);
        assert!(matches!(e, Err(ActivateError::AlreadyActive)));
        c.reset();
        assert!(!c.is_activated());
        assert_eq!(c.acked_features(), 0);
    }

    #[test]
    fn a_kick_is_taken_from_its_queue_event() {
        let c = VirtioCommon::new(VIRTIO_ID_FS, 0, &[16, 16], Vec::new()).unwrap();
        c.kick_queue(1);
        let fd = c.queue_events()[1].as_raw_fd();
        assert_eq!(c.take_queue_event(fd), Some(1));
        assert!(
            c.queue_events()[1].read().is_err(),
            "the counter was drained"
        );
        assert_eq!(c.take_queue_event(-1), None);
    }
}
