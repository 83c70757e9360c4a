//! virtio-blk (virtio 1.2, section 5.2) backed by a host file: the device state, the
//! parsing of guest requests, and the event handler that serves the request queue.

mod device;
mod event_handler;
mod request;

pub use device::{Block, BlockError};
pub use request::{Rejected, Request, RequestError, RequestType};

/// Size of a virtio-blk sector, fixed by the spec whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Entries of the single request queue. The guest's blk-mq preallocates one request per entry
/// (about 0.5 KiB each with virtio-blk's inline scatterlist): 64 deep is plenty for a microVM's
/// disk and costs a quarter of 256.
pub const QUEUE_SIZE: u16 = 64;
/// Data descriptors allowed per request (header and status take the other two).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the GET_ID answer.
pub const DISK_ID_LEN: usize = 20;

/// Feature bits of virtio-blk.
pub mod features {
    pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
    pub const VIRTIO_BLK_F_RO: u32 = 5;
    pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
}

/// Request types.
pub mod request_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Status values written in the last byte of a request.
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}
