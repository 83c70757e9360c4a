//! The virtio-balloon device state: features, configuration space, and what the device does
//! with the buffers of its three queues (inflate, deflate, free page reporting).

use tracing::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use super::features::VIRTIO_BALLOON_F_REPORTING;
use super::release::{release_range, ReleaseError};
use super::{
    CONFIG_SPACE_SIZE, DEFLATEQ, INFLATEQ, MAX_PFNS_PER_DESCRIPTOR, PFN_SHIFT, QUEUE_SIZE,
    REPORTINGQ,
};
use crate::arch::layout::PAGE_SIZE;
use crate::devices::virtio::{GuestMemoryMmap, QueueError, VirtioCommon, VirtioDevice};

/// Errors of balloon device creation and queue processing.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("cannot create a balloon queue eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("balloon {0}")]
    Queue(#[from] QueueError),
}

/// What the guest handed back so far; read by tests and logged at debug level.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonStats {
    /// Bytes dropped from free page reports.
    pub reported_bytes: u64,
    /// Bytes dropped from inflate requests.
    pub inflated_bytes: u64,
    /// Descriptors or ranges refused (wrong direction, out of guest memory, unaligned).
    pub rejected: u64,
}

/// A virtio-balloon device offering free page reporting.
pub struct Balloon {
    common: VirtioCommon,
    stats: BalloonStats,
}

/// The fields of the configuration space the driver writes: `actual`, the pages it says it
/// holds, and `poison_val`, what it writes into pages it frees (kept, not used). `num_pages`
/// (the target, offset 0) stays 0; `free_page_hint_cmd_id` is unused.
const ACTUAL_OFFSET: u64 = 4;
const POISON_VAL_OFFSET: u64 = 12;

/// The chains of one queue pass, to return to the guest.
type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

impl Balloon {
    pub fn new() -> Result<Self, BalloonError> {
        let common = VirtioCommon::new(
            VIRTIO_ID_BALLOON,
            1 << VIRTIO_BALLOON_F_REPORTING,
            &[QUEUE_SIZE; 3],
            vec![0; CONFIG_SPACE_SIZE],
        )
        .map_err(BalloonError::EventFd)?;
        Ok(Self {
            common,
            stats: BalloonStats::default(),
        })
    }

    /// What the guest handed back so far.
    pub fn stats(&self) -> BalloonStats {
        self.stats
    }

    /// Serves every queue, then interrupts the guest once per queue it used buffers of.
    pub fn process_queues(&mut self) -> Result<(), BalloonError> {
        for index in [INFLATEQ, DEFLATEQ, REPORTINGQ] {
            self.process_queue(index)?;
        }
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), BalloonError> {
        let Some(active) = self.common.active_mut() else {
            return Ok(());
        };
        let stats = &mut self.stats;
        let served = active.serve_queue(index, |chain, mem| {
            match index {
                INFLATEQ => inflate(chain, mem, stats),
                REPORTINGQ => report(chain, mem, stats),
                // Deflated pages come back when the guest touches them.
                _ => {}
            }
            // Nothing is written into any of these buffers.
            0
        })?;
        if served > 0 {
            debug!(queue = index, stats = ?self.stats, "virtio-balloon: buffers returned");
        }
        Ok(())
    }
}

/// A free page report: each device-writable descriptor is one free block of guest memory.
fn report(chain: Chain<'_>, mem: &GuestMemoryMmap, stats: &mut BalloonStats) {
    for desc in chain {
        if !desc.is_write_only() {
            warn!(
                addr = desc.addr().0,
                "virtio-balloon: report descriptor is not device-writable; ignored"
            );
            stats.rejected += 1;
            continue;
        }
        let len = u64::from(desc.len());
        match release_range(mem, desc.addr(), len) {
            Ok(()) => stats.reported_bytes += len,
            Err(e) => reject(stats, &e),
        }
    }
}

/// An inflate request: device-readable descriptors holding little-endian u32 PFNs.
fn inflate(chain: Chain<'_>, mem: &GuestMemoryMmap, stats: &mut BalloonStats) {
    for desc in chain {
        let count = desc.len() / 4;
        if desc.is_write_only() || count > MAX_PFNS_PER_DESCRIPTOR {
            warn!(
                addr = desc.addr().0,
                len = desc.len(),
                "virtio-balloon: inflate descriptor is device-writable or too long; ignored"
            );
            stats.rejected += 1;
            continue;
        }
        // Runs of consecutive PFNs become one release.
        let mut run: Option<(u64, u64)> = None;
        for i in 0..u64::from(count) {
            let Some(at) = desc.addr().0.checked_add(i * 4) else {
                stats.rejected += 1;
                break;
            };
            let Ok(pfn) = mem.read_obj::<u32>(GuestAddress(at)) else {
                warn!(
                    addr = at,
                    "virtio-balloon: inflate PFN outside guest memory"
                );
                stats.rejected += 1;
                break;
            };
            let page = u64::from(u32::from_le(pfn)) << PFN_SHIFT;
            run = match run {
                Some((start, len)) if start + len == page => Some((start, len + PAGE_SIZE)),
                Some((start, len)) => {
                    release_inflated(mem, start, len, stats);
                    Some((page, PAGE_SIZE))
                }
                None => Some((page, PAGE_SIZE)),
            };
        }
        if let Some((start, len)) = run {
            release_inflated(mem, start, len, stats);
        }
    }
}

fn release_inflated(mem: &GuestMemoryMmap, start: u64, len: u64, stats: &mut BalloonStats) {
    match release_range(mem, GuestAddress(start), len) {
        Ok(()) => stats.inflated_bytes += len,
        Err(e) => reject(stats, &e),
    }
}

fn reject(stats: &mut BalloonStats, e: &ReleaseError) {
    stats.rejected += 1;
    warn!(error = %e, "virtio-balloon: range not released");
}

impl VirtioDevice for Balloon {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The driver writes the whole of `actual` or `poison_val`, nothing else.
        if data.len() != 4 {
            warn!(
                offset,
                len = data.len(),
                "virtio-balloon: configuration write of the wrong size"
            );
            return;
        }
        match offset {
            ACTUAL_OFFSET | POISON_VAL_OFFSET => self.common.write_config(offset, data),
            _ => warn!(
                offset,
                "virtio-balloon: write to a read-only configuration field"
            ),
        }
    }

    fn reset(&mut self) {
        self.common.reset();
        // `actual` and `poison_val` go back to 0 with the driver that wrote them.
        self.common.config_space_mut().fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::{ActivateError, IrqTrigger, IrqType};
    use std::sync::Arc;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};

    use crate::devices::virtio::test_utils::{NEXT, WRITE};
    const DATA: u64 = 0x10_0000;

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Fills `pages` pages from `addr` with 0xaa.
    fn fill(mem: &GuestMemoryMmap, addr: u64, pages: usize) {
        mem.write_slice(&vec![0xaa; pages * 4096], GuestAddress(addr))
            .unwrap();
    }

    /// Whether the page at `addr` reads as all zeros.
    fn zero(mem: &GuestMemoryMmap, addr: u64) -> bool {
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(addr)).unwrap();
        page.iter().all(|&b| b == 0)
    }

    /// Queues `descs` on queue `index` (the others stay unconfigured), runs the device once;
    /// returns the used ring index of that queue, whether the interrupt fired, and the stats.
    fn run(
        mem: &GuestMemoryMmap,
        index: usize,
        descs: &[RawDescriptor],
    ) -> (u16, bool, BalloonStats) {
        let q = MockSplitQueue::new(mem, 16);
        q.add_desc_chains(descs, 0).unwrap();
        let mut queues: Vec<Queue> = (0..3).map(|_| Queue::new(QUEUE_SIZE).unwrap()).collect();
        queues[index] = q.create_queue().unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let mut balloon = Balloon::new().unwrap();
        balloon.set_acked_features(balloon.avail_features());
        balloon.activate(mem.clone(), irq.clone(), queues).unwrap();
        balloon.process_queues().unwrap();
        let fired = irq.status() & IrqType::Vring as u32 != 0;
        (q.used().idx().load(), fired, balloon.stats())
    }

    #[test]
    fn features_queues_and_config() {
        let mut b = Balloon::new().unwrap();
        assert_eq!(b.device_type(), 5);
        assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE; 3]);
        assert_ne!(b.avail_features() & (1 << VIRTIO_BALLOON_F_REPORTING), 0);
        b.set_acked_features(u64::MAX);
        assert_eq!(b.acked_features(), b.avail_features());
        // The target is 0; the driver's `actual` and `poison_val` read back; nothing else sticks.
        b.write_config(4, &9u32.to_le_bytes());
        b.write_config(0, &5u32.to_le_bytes());
        b.write_config(12, &[1, 2]);
        let mut cfg = [0xffu8; 16];
        b.read_config(0, &mut cfg);
        assert_eq!(cfg, [0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Activation wants the three queues.
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let e = b.activate(guest_memory(), irq, vec![Queue::new(QUEUE_SIZE).unwrap()]);
        assert!(matches!(
            e,
            Err(ActivateError::QueueCount {
                expected: 3,
                got: 1
            })
        ));
        assert!(!b.is_activated());
    }

    #[test]
    fn reported_blocks_are_released_and_returned() {
        let mem = guest_memory();
        fill(&mem, DATA, 4);
        fill(&mem, DATA + 0x10_0000, 1);
        // One report of two blocks (2 pages, then 1 page elsewhere).
        let (used, fired, stats) = run(
            &mem,
            REPORTINGQ,
            &[
                d(DATA, 8192, WRITE | NEXT, 1),
                d(DATA + 0x10_0000, 4096, WRITE, 0),
            ],
        );
        assert_eq!((used, fired), (1, true));
        assert_eq!(stats.reported_bytes, 3 * 4096);
        assert_eq!(stats.rejected, 0);
        assert!(zero(&mem, DATA) && zero(&mem, DATA + 4096) && zero(&mem, DATA + 0x10_0000));
        assert!(
            !zero(&mem, DATA + 2 * 4096),
            "the page after the block keeps its content"
        );
    }

    #[test]
    fn hostile_reports_are_refused_without_releasing_anything() {
        let mem = guest_memory();
        fill(&mem, DATA, 2);
        let descs = [
            // Not device-writable (wrong direction).
            d(DATA, 4096, NEXT, 1),
            // Zero length.
            d(DATA, 0, WRITE | NEXT, 2),
            // Not page aligned.
            d(DATA + 1, 4096, WRITE | NEXT, 3),
            // Outside guest memory (16 MiB), and straddling its end.
            d(1 << 40, 4096, WRITE | NEXT, 4),
            d((16 << 20) - 4096, 8192, WRITE | NEXT, 5),
            // Wrapping around the address space.
            d(!0xfff, 8192, WRITE, 0),
        ];
        let (used, fired, stats) = run(&mem, REPORTINGQ, &descs);
        assert_eq!(
            (used, fired),
            (1, true),
            "the chain still goes back to the guest"
        );
        assert_eq!(stats.rejected, 6);
        assert_eq!(stats.reported_bytes, 0);
        assert!(!zero(&mem, DATA) && !zero(&mem, DATA + 4096));
    }

    #[test]
    fn a_descriptor_loop_ends_and_the_chain_is_returned() {
        let mem = guest_memory();
        // Two descriptors pointing at each other: iteration stops after the queue size.
        let (used, _, stats) = run(
            &mem,
            REPORTINGQ,
            &[
                d(DATA, 4096, WRITE | NEXT, 1),
                d(DATA + 4096, 4096, WRITE | NEXT, 0),
            ],
        );
        assert_eq!(used, 1);
        assert!(stats.reported_bytes <= 16 * 4096);
    }

    #[test]
    fn inflated_pfns_are_released_in_runs() {
        let mem = guest_memory();
        let pages = 0x40_0000u64;
        fill(&mem, pages, 4);
        // PFNs of pages 0, 1 and 3 of the block (a run of two, then one).
        let pfns: Vec<u8> = [0u64, 1, 3]
            .iter()
            .flat_map(|i| (((pages >> PFN_SHIFT) + i) as u32).to_le_bytes())
            .collect();
        mem.write_slice(&pfns, GuestAddress(DATA)).unwrap();
        let (used, fired, stats) = run(&mem, INFLATEQ, &[d(DATA, 12, 0, 0)]);
        assert_eq!((used, fired), (1, true));
        assert_eq!(stats.inflated_bytes, 3 * 4096);
        assert!(zero(&mem, pages) && zero(&mem, pages + 4096) && zero(&mem, pages + 3 * 4096));
        assert!(!zero(&mem, pages + 2 * 4096));
    }

    #[test]
    fn hostile_inflates_are_refused() {
        let mem = guest_memory();
        // A PFN beyond guest memory, a device-writable PFN list, one that is far too long,
        // and a list that runs off the end of guest memory.
        mem.write_obj(0x00ff_ffffu32, GuestAddress(DATA)).unwrap();
        mem.write_obj(0x00ff_ffffu32, GuestAddress((16 << 20) - 4))
            .unwrap();
        let descs = [
            d(DATA, 4, NEXT, 1),
            d(DATA, 4, WRITE | NEXT, 2),
            d(DATA, (MAX_PFNS_PER_DESCRIPTOR + 1) * 4, NEXT, 3),
            d((16 << 20) - 4, 8, 0, 0),
        ];
        let (used, _, stats) = run(&mem, INFLATEQ, &descs);
        assert_eq!(used, 1);
        assert_eq!(stats.inflated_bytes, 0);
        // The PFN outside guest memory, the writable list, the long one, and for the last
        // one both the read past the end and its out-of-memory PFN.
        assert_eq!(stats.rejected, 5);
    }

    #[test]
    fn deflates_are_acknowledged_and_reset_stops_the_device() {
        let mem = guest_memory();
        let (used, fired, stats) = run(&mem, DEFLATEQ, &[d(DATA, 4, 0, 0)]);
        assert_eq!((used, fired), (1, true));
        assert_eq!(stats, BalloonStats::default());
        let mut b = Balloon::new().unwrap();
        let queues = (0..3).map(|_| Queue::new(QUEUE_SIZE).unwrap()).collect();
        b.activate(mem, Arc::new(IrqTrigger::new().unwrap()), queues)
            .unwrap();
        assert!(b.is_activated());
        b.reset();
        assert!(!b.is_activated());
        b.process_queues().unwrap();
    }
}
