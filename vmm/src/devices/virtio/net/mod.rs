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

/// Entries of each of the receive and transmit queues. The guest fills the whole receive
/// queue when the interface comes up, with 1.5 KiB buffers at first (mergeable buffers):
/// 256 entries are about 384 KiB of guest memory, and as many frames in flight as QEMU's
/// and Firecracker's virtio-net keep.
pub const QUEUE_SIZE: u16 = 256;
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
