//! virtio-vsock (virtio 1.2, section 5.10) in userspace, with the host end on a Unix socket
//! in Firecracker's hybrid convention (`CONNECT <port>\n` → `OK <hostport>\n`).

mod connection;
mod device;
mod event_handler;
mod muxer;
mod packet;

pub use connection::{ConnError, ConnState};
pub use device::{Vsock, VsockError};
pub use muxer::{MuxerError, VsockMuxer};
pub use packet::{op, Packet, PacketError, PacketHeader, HDR_LEN};

/// The CID of the host.
pub const HOST_CID: u64 = 2;
/// Entries of each of the rx, tx and event queues. Linux fills the whole rx queue with 4 KiB
/// buffers at probe time and keeps it full, so each entry costs the guest 4 KiB of slab: 64
/// (256 KiB in flight towards the guest) instead of 256 saves 0.75 MiB of every sandbox.
pub const QUEUE_SIZE: u16 = 64;
/// Largest payload of one packet we accept from the guest (Linux sends at most 64 KiB).
pub const MAX_PKT_DATA: usize = 64 << 10;
/// Receive buffer we advertise per connection: the most guest→host bytes we hold.
pub const CONN_BUF_SIZE: u32 = 256 << 10;
/// Connections per device, so a guest or host cannot exhaust our file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// Queue indices.
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
