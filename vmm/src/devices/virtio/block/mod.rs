//! virtio-blk (virtio 1.2, section 5.2) backed by a host file: the device state, the
//! parsing of guest requests, and the event handler that serves the request queue.

mod device;
mod event_handler;
mod io;
mod request;

pub use device::{Block, BlockError};
pub use io::IoError;
pub use request::{Rejected, Request, RequestError, RequestType};

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;

/// Size of a virtio-blk sector, fixed by the spec whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Entries of the single request queue. The guest's blk-mq preallocates one request per entry
/// (about 0.5 KiB each with virtio-blk's inline scatterlist): 64 deep is plenty for a microVM's
/// disk and costs a quarter of 256.
pub const QUEUE_SIZE: u16 = 64;
/// Data descriptors allowed per request (header and status take the other two).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the GET_ID answer.
pub const DISK_ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Status values written in the last byte of a request (`VIRTIO_BLK_S_*`, as that byte).
pub mod status {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

    pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
    pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
}
