//! The transmit path: each chain the guest queues is one frame (header included), checked and
//! written to the backend straight from guest memory, gathered into one `writev`.

use tracing::{debug, warn};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestMemory, VolatileSlice};

use super::backend::NetBackend;
use super::device::NetStats;
use super::{FRAMES_PER_ROUND, MAX_FRAME_LEN, TXQ, VNET_HDR_LEN};
use crate::devices::virtio::{ActiveState, GuestMemoryMmap, QueueError};

/// Why a frame from the guest was not sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    #[error("descriptor chain does not terminate (loop, or next index out of the table)")]
    UnterminatedChain,
    #[error("descriptor {index} is device-writable; a frame to send must be device-readable")]
    WriteOnlyDescriptor { index: usize },
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("frame of {0} bytes is shorter than the 12-byte virtio-net header")]
    TooShort(u64),
    #[error("frame of {0} bytes or more is longer than {MAX_FRAME_LEN} bytes")]
    TooLong(u64),
}

/// Sends every frame the guest queued, up to `FRAMES_PER_ROUND`; every chain goes back to the
/// guest, sent or not. Returns whether the budget ran out with frames left (notifications
/// then stay off: the caller must come back).
pub fn process(
    active: &mut ActiveState,
    backend: &mut dyn NetBackend,
    stats: &mut NetStats,
) -> Result<bool, QueueError> {
    let queue_err = |source| QueueError::Queue { index: TXQ, source };
    let mem = &active.mem;
    let queue = &mut active.queues[TXQ];
    let mut sent = 0;
    let budget_spent = 'round: loop {
        queue.disable_notification(mem).map_err(queue_err)?;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match frame_slices(chain, mem) {
                Ok(slices) => match backend.write_frame(&slices) {
                    Ok(_) => stats.tx_frames += 1,
                    Err(e) => {
                        // The host side refused it (a full or detached tap): as a NIC would.
                        debug!(error = %e, "virtio-net: the tap did not take a frame");
                        stats.tx_dropped += 1;
                    }
                },
                Err(e) => {
                    warn!(error = %e, "virtio-net: frame from the guest dropped");
                    stats.tx_dropped += 1;
                }
            }
            queue.add_used(mem, head, 0).map_err(queue_err)?;
            sent += 1;
            if sent == FRAMES_PER_ROUND {
                break 'round true;
            }
        }
        // Catches frames queued between the last pop and re-enabling notifications.
        if !queue.enable_notification(mem).map_err(queue_err)? {
            break false;
        }
    };
    if sent > 0 {
        active.signal_used_queue(TXQ)?;
    }
    Ok(budget_spent)
}

/// The guest memory of frame `chain`: readable buffers in order, at least a header and at
/// most `MAX_FRAME_LEN` bytes in all.
pub fn frame_slices<'m>(
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
) -> Result<Vec<VolatileSlice<'m>>, TxError> {
    let mut slices = Vec::new();
    let mut total: u64 = 0;
    let mut cut_short = false;
    for (index, d) in chain.enumerate() {
        // virtio-queue's iterator stops silently on a loop or a `next` outside the table: a
        // chain whose last descriptor still has NEXT was cut short.
        cut_short = d.has_next();
        if d.is_write_only() {
            return Err(TxError::WriteOnlyDescriptor { index });
        }
        total += u64::from(d.len());
        if total > MAX_FRAME_LEN as u64 {
            return Err(TxError::TooLong(total));
        }
        if d.len() == 0 {
            continue;
        }
        let slice =
            mem.get_slice(d.addr(), d.len() as usize)
                .map_err(|_| TxError::OutOfMemory {
                    addr: d.addr().0,
                    len: d.len(),
                })?;
        slices.push(slice);
    }
    if cut_short {
        return Err(TxError::UnterminatedChain);
    }
    if total < VNET_HDR_LEN as u64 {
        return Err(TxError::TooShort(total));
    }
    Ok(slices)
}
