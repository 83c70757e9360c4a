//! virtio-net (virtio 1.2, section 5.1) in the VMM's userspace, on its event loop: frames move
//! between the guest's queues and a tap opened with a virtio-net header (no vhost-net).
//!
//! The device (`device.rs`) offers checksum and TSO/UFO offloads both ways, mergeable receive
//! buffers and the event index; what the guest accepts of the receive offloads goes to the tap
//! (`TUNSETOFFLOAD`), so the tap hands over only frames the guest can take. `rx.rs` moves
//! frames from the tap into receive buffers (one frame may span several with mergeable
//! buffers; without buffers it waits, reading no more from the tap), `tx.rs` gathers the
//! guest's frames straight from guest memory into one `writev`. The tap is one `NetBackend`
//! (`backend.rs`, `tap.rs`): the device only reads and writes whole frames through it.

mod backend;
mod device;
mod event_handler;
mod rx;
mod tap;
#[cfg(test)]
mod tests;
mod tx;

pub use backend::NetBackend;
pub use device::{Net, NetError, NetStats};
pub use rx::RxChainError;
pub use tap::{Tap, TapError, TUN_PATH};
pub use tx::TxError;

/// Entries of the receive queue. The guest fills it whenever the interface is up, with
/// buffers of 1.5 KiB at first (mergeable buffers; up to 4 KiB once it sees large frames):
/// 128 entries cost the guest about 256 KiB, 256 would cost 448 KiB, nearly all the 0.5 MiB a
/// NIC may add to a sandbox with the VMM's part. A 64 KiB frame needs 43 of them.
pub const RX_QUEUE_SIZE: u16 = 128;
/// Entries of the transmit queue: they cost the guest no buffers (it sends from its own
/// socket buffers), and a large frame takes up to 19 of them (no indirect descriptors).
pub const TX_QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
/// Length of `struct virtio_net_hdr_v1`, the header before every frame (VIRTIO_F_VERSION_1).
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in that header: how many receive buffers the frame spans.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame with its header: a 64 KiB GSO packet, its Ethernet header and the
/// virtio-net header (65536 + 14 + 12). The tap hands over nothing larger, and the guest may
/// send nothing larger.
pub const MAX_FRAME_LEN: usize = 65562;
/// Frames moved per wake-up of a queue before the device lets the event loop serve others.
pub const FRAMES_PER_ROUND: usize = 256;
