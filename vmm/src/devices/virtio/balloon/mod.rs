//! virtio-balloon (virtio 1.2, section 5.5) for free page reporting: the guest reports blocks
//! of free memory and the host drops the pages behind them, so guest RAM that was touched
//! once (the initramfs, page cache, freed init memory) stops costing host memory.
//!
//! The device never asks the guest to inflate (its target, `num_pages`, stays 0); inflate
//! requests a guest makes anyway release their pages the same way, deflate requests are
//! acknowledged (a page comes back by being touched again).

mod device;
mod event_handler;
mod release;

pub use device::{Balloon, BalloonError, BalloonStats};
pub use release::{disable_huge_pages, release_range, ReleaseError};

/// Entries of each queue. Linux refuses a reporting queue shorter than its report batch
/// (PAGE_REPORTING_CAPACITY, 32 blocks).
pub const QUEUE_SIZE: u16 = 128;
/// The queues, in the order the driver sets them up when only page reporting is negotiated
/// (no statistics or free page hinting queue in between).
pub const INFLATEQ: usize = 0;
pub const DEFLATEQ: usize = 1;
pub const REPORTINGQ: usize = 2;
/// Page frame numbers of the inflate and deflate queues are in 4 KiB units, whatever the
/// page size of guest or host (VIRTIO_BALLOON_PFN_SHIFT).
pub const PFN_SHIFT: u32 = 12;
/// Most PFNs one inflate descriptor may carry; Linux sends at most 256 per request.
pub const MAX_PFNS_PER_DESCRIPTOR: u32 = 4096;
/// struct virtio_balloon_config: num_pages, actual, free_page_hint_cmd_id, poison_val.
pub const CONFIG_SPACE_SIZE: usize = 16;

/// Feature bits of virtio-balloon (virtio-bindings has no `virtio_balloon.h`).
pub mod features {
    /// The device takes free page reports on the reporting queue.
    pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
}
