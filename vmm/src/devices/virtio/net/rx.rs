//! The receive path: frames read from the backend into one frame-sized buffer, then copied into
//! the guest's receive buffers, one chain each or, with mergeable buffers, as many as it takes.
//!
//! Nothing is dropped for want of buffers: a frame that does not fit in what the guest has
//! posted waits, the chains popped for it are held (the guest cannot reuse them meanwhile), no
//! further frame is read from the backend, and the device asks the guest to notify it when it
//! posts more. The frame is dropped only if it can never fit: every buffer the ring can hold is
//! held, or (without mergeable buffers) the guest's buffer is smaller than the frame.

use std::io;
use std::ops::Range;

use tracing::{debug, warn};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::backend::NetBackend;
use super::device::NetStats;
use super::{FRAMES_PER_ROUND, MAX_FRAME_LEN, NUM_BUFFERS_OFFSET, RXQ, VNET_HDR_LEN};
use crate::devices::virtio::{ActiveState, GuestMemoryMmap, QueueError};

/// Why a receive buffer was given back to the guest unused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RxChainError {
    #[error("descriptor chain does not terminate (loop, or next index out of the table)")]
    UnterminatedChain,
    #[error("descriptor {index} is device-readable; a receive buffer must be device-writable")]
    ReadOnlyDescriptor { index: usize },
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("buffer of {0} bytes cannot hold the 12-byte virtio-net header")]
    TooShort(usize),
}

/// How a round of receiving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxRound {
    /// The backend has no frame left.
    Drained,
    /// A frame waits for the guest to post buffers; the backend is not read meanwhile.
    WaitingForBuffers,
    /// The round moved its share of frames; more may wait.
    BudgetSpent,
}

/// What became of the pending frame.
enum Delivery {
    Delivered,
    Waiting,
    Dropped,
}

/// A receive chain popped from the queue and validated, waiting to be filled.
struct HeldChain {
    head: u16,
    /// Its writable buffers, as a range of `Rx::regions`.
    regions: Range<usize>,
    capacity: usize,
    descriptors: usize,
}

/// The receive side of a virtio-net device.
#[derive(Default)]
pub struct Rx {
    /// One frame with its header; allocated when the driver first activates the device.
    frame: Vec<u8>,
    /// Length of the frame in `frame` that waits for buffers; 0 when none.
    frame_len: usize,
    held: Vec<HeldChain>,
    /// The buffers of the held chains, in order.
    regions: Vec<(GuestAddress, u32)>,
    held_capacity: usize,
    held_descriptors: usize,
}

impl Rx {
    /// Allocates the frame buffer (64 KiB and the header), once.
    pub fn allocate(&mut self) {
        if self.frame.is_empty() {
            self.frame = vec![0; MAX_FRAME_LEN];
        }
    }

    /// Forgets the held chains (they belong to queues that are gone) and the waiting frame.
    pub fn reset(&mut self) {
        self.frame_len = 0;
        self.held.clear();
        self.regions.clear();
        self.held_capacity = 0;
        self.held_descriptors = 0;
    }

    /// Whether a frame waits for buffers.
    pub fn has_waiting_frame(&self) -> bool {
        self.frame_len > 0
    }

    /// Moves frames from `backend` into the receive queue until the backend has none, the
    /// guest has no room, or `FRAMES_PER_ROUND` frames went; then interrupts the guest if it
    /// wants to know. `mergeable`: the driver accepted VIRTIO_NET_F_MRG_RXBUF.
    pub fn process(
        &mut self,
        active: &mut ActiveState,
        mergeable: bool,
        backend: &mut dyn NetBackend,
        stats: &mut NetStats,
    ) -> Result<RxRound, QueueError> {
        let queue_err = |source| QueueError::Queue { index: RXQ, source };
        let mut used_any = false;
        let mut frames = 0;
        let round = loop {
            if frames == FRAMES_PER_ROUND {
                break RxRound::BudgetSpent;
            }
            if self.frame_len == 0 {
                match backend.read_frame(&mut self.frame) {
                    // A descriptor at its end (a closed socket backend): nothing more comes.
                    Ok(0) => break RxRound::Drained,
                    Ok(n) if n < VNET_HDR_LEN => {
                        debug!(len = n, "virtio-net: frame shorter than its header dropped");
                        stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => self.frame_len = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break RxRound::Drained,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!(error = %e, "virtio-net: cannot read a frame from the tap");
                        break RxRound::Drained;
                    }
                }
            }
            match self.deliver(active, mergeable, &mut used_any)? {
                Delivery::Delivered => {
                    stats.rx_frames += 1;
                    frames += 1;
                    self.frame_len = 0;
                }
                Delivery::Dropped => {
                    stats.rx_dropped += 1;
                    self.frame_len = 0;
                }
                Delivery::Waiting => {
                    // Ask for a kick when the guest posts buffers (with the event index: at
                    // the next one after those held); if some came meanwhile, go on.
                    let queue = &mut active.queues[RXQ];
                    if queue.enable_notification(&active.mem).map_err(queue_err)? {
                        continue;
                    }
                    break RxRound::WaitingForBuffers;
                }
            }
        };
        if round != RxRound::WaitingForBuffers {
            // Frames are what wakes the receive path; the guest's refills need not.
            active.queues[RXQ]
                .disable_notification(&active.mem)
                .map_err(queue_err)?;
        }
        if used_any {
            active.signal_used_queue(RXQ)?;
        }
        Ok(round)
    }

    /// Puts the pending frame into held chains, popping more as needed; chains the guest got
    /// wrong go back to it unused (they may come back in any order: the used ring says which).
    fn deliver(
        &mut self,
        active: &mut ActiveState,
        mergeable: bool,
        used_any: &mut bool,
    ) -> Result<Delivery, QueueError> {
        let queue_err = |source| QueueError::Queue { index: RXQ, source };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ];
        let len = self.frame_len;
        loop {
            let enough = if mergeable {
                self.held_capacity >= len
            } else {
                !self.held.is_empty()
            };
            if enough {
                break;
            }
            if self.held_descriptors >= usize::from(queue.size()) {
                debug!(
                    len,
                    "virtio-net: the whole receive ring cannot hold a frame"
                );
                return Ok(Delivery::Dropped);
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Ok(Delivery::Waiting);
            };
            let head = chain.head_index();
            if let Err(e) = self.hold(chain, mem) {
                warn!(error = %e, "virtio-net: receive buffer returned unused");
                queue.add_used(mem, head, 0).map_err(queue_err)?;
                *used_any = true;
            }
        }

        let count = if mergeable {
            let mut filled = 0;
            1 + self
                .held
                .iter()
                .take_while(|c| {
                    filled += c.capacity;
                    filled < len
                })
                .count()
        } else if self.held[0].capacity < len {
            // The buffer stays held for the next frame, which may fit.
            debug!(
                len,
                capacity = self.held[0].capacity,
                "virtio-net: frame larger than the receive buffer"
            );
            return Ok(Delivery::Dropped);
        } else {
            1
        };
        // At most the queue size (256) chains: fits the header's 16 bits.
        self.frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&(count as u16).to_le_bytes());

        let mut offset = 0;
        for chain in &self.held[..count] {
            let start = offset;
            for &(addr, region_len) in &self.regions[chain.regions.clone()] {
                if offset == len {
                    break;
                }
                let n = (region_len as usize).min(len - offset);
                if let Err(e) = mem.write_slice(&self.frame[offset..offset + n], addr) {
                    // The range was checked when the chain was held, and guest memory
                    // does not shrink.
                    warn!(error = %e, "virtio-net: cannot write a received frame");
                }
                offset += n;
            }
            // At most MAX_FRAME_LEN bytes: fits.
            queue
                .add_used(mem, chain.head, (offset - start) as u32)
                .map_err(queue_err)?;
        }
        *used_any = true;
        self.release(count);
        Ok(Delivery::Delivered)
    }

    /// Validates `chain` as a receive buffer and holds it.
    fn hold(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), RxChainError> {
        let start = self.regions.len();
        let head = chain.head_index();
        let result = self.collect_regions(chain, mem);
        let (capacity, descriptors) = match result {
            Ok(found) => found,
            Err(e) => {
                self.regions.truncate(start);
                return Err(e);
            }
        };
        self.held.push(HeldChain {
            head,
            regions: start..self.regions.len(),
            capacity,
            descriptors,
        });
        self.held_capacity += capacity;
        self.held_descriptors += descriptors;
        Ok(())
    }

    /// Appends the buffers of `chain` to `regions`; returns its capacity and length.
    fn collect_regions(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(usize, usize), RxChainError> {
        let mut capacity = 0usize;
        let mut descriptors = 0;
        let mut cut_short = false;
        for (index, d) in chain.enumerate() {
            descriptors += 1;
            // virtio-queue's iterator stops silently on a loop or a `next` outside the table:
            // a chain whose last descriptor still has NEXT was cut short.
            cut_short = d.has_next();
            if !d.is_write_only() {
                return Err(RxChainError::ReadOnlyDescriptor { index });
            }
            if d.len() == 0 {
                continue;
            }
            if !mem.check_range(d.addr(), d.len() as usize) {
                return Err(RxChainError::OutOfMemory {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            self.regions.push((d.addr(), d.len()));
            // At most a queue's worth of u32 lengths: no overflow on 64 bits.
            capacity += d.len() as usize;
        }
        if cut_short {
            return Err(RxChainError::UnterminatedChain);
        }
        let needed = if self.held.is_empty() {
            VNET_HDR_LEN
        } else {
            1
        };
        if capacity < needed {
            return Err(RxChainError::TooShort(capacity));
        }
        Ok((capacity, descriptors))
    }

    /// Forgets the first `count` held chains, now in the used ring.
    fn release(&mut self, count: usize) {
        let regions_end = self.held[count - 1].regions.end;
        for chain in self.held.drain(..count) {
            self.held_capacity -= chain.capacity;
            self.held_descriptors -= chain.descriptors;
        }
        self.regions.drain(..regions_end);
        for chain in &mut self.held {
            chain.regions = chain.regions.start - regions_end..chain.regions.end - regions_end;
        }
    }
}
