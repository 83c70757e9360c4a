//! virtio-fs (virtio 1.2, section 5.11): a host directory the guest mounts with
//! `mount -t virtiofs TAG DIR`, served inside the VMM by fuse-backend-rs's passthrough file system.
//!
//! The guest sends FUSE requests on two queues: hiprio (FORGET, INTERRUPT) and one request
//! queue. A thread of the device's own serves both (`worker`), so a slow host file system never
//! holds up the event loop, and it has its own umask so guest-chosen modes are kept as they are.
//! A request is a FUSE message in the chain's device-readable buffers and its reply goes into
//! the device-writable ones (`request`); a read-only share answers every request that would
//! change it with EROFS before the FUSE server sees it (`read_only`). Why the file server runs
//! in the VMM rather than in a virtiofsd process, and how it works with free page reporting,
//! `trim` and copy-on-write snapshots: docs/virtio-fs.md.

mod device;
mod read_only;
mod request;
mod share;
mod worker;

pub use device::{Fs, FsError};
pub use share::{Share, ShareError};

/// The two queues, in the order the driver sets them up.
pub const HIPRIO_QUEUE: usize = 0;
pub const REQUEST_QUEUE: usize = 1;
/// Entries of the hiprio queue: FORGETs and INTERRUPTs, one descriptor each.
pub const HIPRIO_QUEUE_SIZE: u16 = 128;
/// Entries of the request queue. With indirect descriptors every request takes one entry; a
/// driver without them needs one per page of its largest request (1 MiB, 256 pages) plus the
/// headers.
pub const REQUEST_QUEUE_SIZE: u16 = 1024;
/// Length of the tag field of the configuration space (`struct virtio_fs_config`).
pub const TAG_LEN: usize = 36;
