//! virtio-pmem (virtio 1.2, section 5.19): a file mapped into the guest's physical address
//! space, which the guest uses as persistent memory (`/dev/pmem0`) and can mount with DAX, so
//! reading it costs neither a request nor a copy into guest RAM. The device itself only serves
//! the flush queue; the mapping and its KVM memory slot are `PmemBacking`'s.

mod backing;
mod device;
mod event_handler;
mod request;

pub use backing::{BackingError, PmemBacking};
pub use device::{Pmem, PmemError};
pub use request::{FlushRequest, Rejected, RequestError};

/// Entries of the request queue. The guest sends one flush at a time per writer and
/// preallocates nothing per entry.
pub const QUEUE_SIZE: u16 = 32;
/// The guest maps the region with memory hotplug, in 2 MiB subsections: a region's start and
/// size are multiples of this.
pub const REGION_ALIGN: u64 = 2 << 20;

/// `virtio_pmem_req.type`: the only request type.
pub const REQ_TYPE_FLUSH: u32 = 0;
/// `virtio_pmem_resp.ret` values.
pub const RESP_OK: u32 = 0;
pub const RESP_EIO: u32 = 1;
