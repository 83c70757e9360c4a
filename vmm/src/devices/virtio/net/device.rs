//! The virtio-net device state: features, configuration space (MAC, MTU), the backend, and
//! what activation and reset do to the queues and the tap's offloads.

use std::sync::Arc;

use tracing::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};

use super::backend::NetBackend;
use super::rx::{Rx, RxRound};
use super::{tx, RXQ, RX_QUEUE_SIZE, TXQ, TX_QUEUE_SIZE};
use crate::devices::virtio::{
    ActivateError, GuestMemoryMmap, IrqTrigger, QueueError, VirtioCommon, VirtioDevice,
};

/// Errors of virtio-net device creation and queue processing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] super::TapError),
    #[error("cannot create the queue eventfds: {0}")]
    EventFd(std::io::Error),
    #[error("virtio-net {0}")]
    Queue(#[from] QueueError),
}

/// Frames moved and dropped, both ways.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    /// Frames from the tap the guest could never take (larger than its buffers).
    pub rx_dropped: u64,
    pub tx_frames: u64,
    /// Frames from the guest that were malformed or that the tap refused.
    pub tx_dropped: u64,
}

/// Features offered besides the MAC and MTU: checksum and segmentation offloads both ways,
/// mergeable receive buffers, and the event index (fewer kicks and interrupts).
const FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_UFO)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_UFO)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_RING_F_EVENT_IDX);

/// Length of the configuration space we fill: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;
const CONFIG_MTU_OFFSET: usize = 10;

/// A virtio-net device on a tap (or any `NetBackend`).
pub struct Net {
    pub(super) backend: Box<dyn NetBackend>,
    /// How the configuration named the backend (`tap=tap0`, `fd=5`), for log messages.
    label: String,
    rx: Rx,
    stats: NetStats,
    common: VirtioCommon,
}

impl Net {
    /// A device on `backend`, showing the guest `mac` and `mtu` when given.
    pub fn new(
        backend: Box<dyn NetBackend>,
        label: String,
        mac: Option<[u8; 6]>,
        mtu: Option<u16>,
    ) -> Result<Self, NetError> {
        let mut features = FEATURES;
        let mut config = vec![0u8; CONFIG_LEN];
        if let Some(mac) = mac {
            features |= 1 << VIRTIO_NET_F_MAC;
            config[..6].copy_from_slice(&mac);
        }
        if let Some(mtu) = mtu {
            features |= 1 << VIRTIO_NET_F_MTU;
            config[CONFIG_MTU_OFFSET..].copy_from_slice(&mtu.to_le_bytes());
        }
        Ok(Self {
            backend,
            label,
            rx: Rx::default(),
            stats: NetStats::default(),
            common: VirtioCommon::new(
                VIRTIO_ID_NET,
                features,
                &[RX_QUEUE_SIZE, TX_QUEUE_SIZE],
                config,
            )
            .map_err(NetError::EventFd)?,
        })
    }

    /// The backend as the configuration named it (`tap=tap0`, `fd=5`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Frames moved and dropped so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The tap offloads (`TUN_F_*`) matching the receive offloads the driver accepted: the
    /// tap then hands over only frames the guest can take. Segmentation offloads need
    /// checksum offload (the tap refuses them alone; virtio requires it too).
    pub fn tap_offloads(&self) -> u32 {
        if !self.common.has_feature(VIRTIO_NET_F_GUEST_CSUM) {
            return 0;
        }
        [
            (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
            (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
            (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
        ]
        .into_iter()
        .filter(|(feature, _)| self.common.has_feature(*feature))
        .fold(libc::TUN_F_CSUM, |flags, (_, tun)| flags | tun)
    }

    /// Moves frames from the tap to the guest (on a frame from the tap, or the guest posting
    /// receive buffers).
    pub fn process_rx(&mut self) {
        let mergeable = self.common.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let Some(active) = self.common.active_mut() else {
            return;
        };
        match self
            .rx
            .process(active, mergeable, &mut *self.backend, &mut self.stats)
        {
            // The event loop serves the others first, then comes back.
            Ok(RxRound::BudgetSpent) => self.common.kick_queue(RXQ),
            Ok(RxRound::Drained | RxRound::WaitingForBuffers) => {}
            Err(e) => error!(net = %self.label, error = %e, "virtio-net: receive failed"),
        }
    }

    /// Sends what the guest queued on the transmit queue.
    pub fn process_tx(&mut self) {
        let Some(active) = self.common.active_mut() else {
            return;
        };
        match tx::process(active, &mut *self.backend, &mut self.stats) {
            Ok(true) => self.common.kick_queue(TXQ),
            Ok(false) => {}
            Err(e) => error!(net = %self.label, error = %e, "virtio-net: transmit failed"),
        }
    }

    /// Whether a frame from the tap waits for receive buffers.
    pub fn rx_waiting(&self) -> bool {
        self.rx.has_waiting_frame()
    }

    fn set_tap_offloads(&mut self, flags: u32) {
        if let Err(e) = self.backend.set_offload(flags) {
            // The tap then sends the guest only plain frames, which it always takes.
            warn!(net = %self.label, flags, error = %e, "virtio-net: cannot set the tap's offloads");
        }
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    /// Turns on the event index if the driver accepted it, gives the tap the offloads the
    /// driver accepted, then receives what waits in the tap.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let event_idx = self.common.has_feature(VIRTIO_RING_F_EVENT_IDX);
        for queue in &mut queues {
            queue.set_event_idx(event_idx);
        }
        self.common.activate(mem, interrupt, queues)?;
        self.set_tap_offloads(self.tap_offloads());
        self.rx.allocate();
        self.common.kick_queue(RXQ);
        Ok(())
    }

    fn reset(&mut self) {
        self.common.reset();
        self.rx.reset();
        self.set_tap_offloads(0);
    }
}
