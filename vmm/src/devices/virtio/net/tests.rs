//! Tests of the virtio-net device against a tap stand-in (a datagram socket pair: one frame per
//! read or write, as a tap): both paths, hostile chains, waiting for buffers, the event loop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};

use super::backend::{read_frame_from, write_frame_to};
use super::*;
use crate::devices::virtio::test_utils::{guest_memory, xorshift, NEXT, WRITE as W};
use crate::devices::virtio::{GuestMemoryMmap, IrqTrigger, IrqType, VirtioDevice};

const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// Receive buffer `i` (descriptor `i`) lives at `RX_BUFS + i * SLOT`.
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x80_0000;
const SLOT: u64 = 0x1_0000;

/// The tap stand-in: frames are datagrams; it counts the frames read and keeps the offloads.
struct PairBackend {
    sock: UnixDatagram,
    reads: Arc<AtomicUsize>,
    offload: Arc<AtomicU32>,
}

impl NetBackend for PairBackend {
    fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_frame_from(self.raw_fd(), buf)?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(n)
    }
    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        write_frame_to(self.raw_fd(), bufs)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offload.store(flags, Ordering::SeqCst);
        Ok(())
    }
}

struct Fixture<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    net: Arc<Mutex<Net>>,
    host: UnixDatagram,
    reads: Arc<AtomicUsize>,
    offload: Arc<AtomicU32>,
    irq: Arc<IrqTrigger>,
    rx_desc: u16,
    tx_desc: u16,
}

impl<'a> Fixture<'a> {
    /// A device the driver activated with `features`, a receive queue of 64 entries.
    fn new(mem: &'a GuestMemoryMmap, features: u64) -> Self {
        Self::with_rx_queue(mem, features, 64)
    }

    fn with_rx_queue(mem: &'a GuestMemoryMmap, features: u64, rx_size: u16) -> Self {
        let (host, dev) = UnixDatagram::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        let offload = Arc::new(AtomicU32::new(u32::MAX));
        let backend = PairBackend {
            sock: dev,
            reads: reads.clone(),
            offload: offload.clone(),
        };
        let mut net = Net::new(
            Box::new(backend),
            "fd=test".into(),
            Some([2, 0, 0, 0, 0, 1]),
            None,
        )
        .unwrap();
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), rx_size);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 64);
        net.set_acked_features(features | (1 << VIRTIO_F_VERSION_1));
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
        net.activate(mem.clone(), irq.clone(), queues).unwrap();
        Self {
            mem,
            rxq,
            txq,
            net: Arc::new(Mutex::new(net)),
            host,
            reads,
            offload,
            irq,
            rx_desc: 0,
            tx_desc: 0,
        }
    }

    /// Posts one receive chain of `(len, flags)` buffers, linked in order, each in its own
    /// slot; returns its head.
    fn post_rx_chain(&mut self, bufs: &[(u32, u16)]) -> u16 {
        let head = self.rx_desc;
        let descs = link(
            head,
            bufs.iter().enumerate().map(|(i, &(len, flags))| {
                let addr = RX_BUFS + u64::from(head + i as u16) * SLOT;
                (addr, len, flags)
            }),
        );
        self.rxq.add_desc_chains(&descs, head).unwrap();
        self.rx_desc += bufs.len() as u16;
        head
    }

    /// Posts receive buffers of `lens` bytes, one chain each.
    fn post_rx(&mut self, lens: &[u32]) {
        for &len in lens {
            self.post_rx_chain(&[(len, W)]);
        }
    }

    /// Used entry `i` of the receive queue: (head, length).
    fn rx_used(&self, i: u16) -> (u16, u32) {
        let e = self.rxq.used().ring().ref_at(i as usize).unwrap().load();
        (e.id() as u16, e.len())
    }

    fn rx_used_count(&self) -> u16 {
        self.rxq.used().idx().load()
    }

    /// What the device wrote into the single-buffer chain `head`, `len` bytes.
    fn rx_bytes(&self, head: u16, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut v, GuestAddress(RX_BUFS + u64::from(head) * SLOT))
            .unwrap();
        v
    }

    /// Reads the frames used from entry `from` on, each spanning `num_buffers` entries.
    fn rx_frames(&self, from: u16) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut i = from;
        while i < self.rx_used_count() {
            let (head, len) = self.rx_used(i);
            let mut frame = self.rx_bytes(head, len);
            let buffers = u16::from_le_bytes([frame[10], frame[11]]);
            for j in 1..buffers {
                let (head, len) = self.rx_used(i + j);
                frame.extend(self.rx_bytes(head, len));
            }
            frames.push(frame);
            i += buffers;
        }
        frames
    }

    /// The guest queues a frame made of `(addr, len, flags)` descriptors, linked in order.
    fn guest_send(&mut self, descs: &[Buf]) {
        let head = self.tx_desc;
        let raw = link(head, descs.iter().copied());
        self.txq.add_desc_chains(&raw, head).unwrap();
        self.tx_desc += descs.len() as u16;
    }

    /// Frames the host end got, without waiting.
    fn host_frames(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 2 * MAX_FRAME_LEN];
        while let Ok(n) = self.host.recv(&mut buf) {
            frames.push(buf[..n].to_vec());
        }
        frames
    }

    fn process_rx(&self) {
        self.net.lock().unwrap().process_rx();
    }

    fn process_tx(&self) {
        self.net.lock().unwrap().process_tx();
    }

    fn stats(&self) -> NetStats {
        self.net.lock().unwrap().stats()
    }
}

/// A descriptor as the tests write it: address, length, flags.
type Buf = (u64, u32, u16);

/// Raw descriptors for one chain starting at index `head`: each but the last gets NEXT.
fn link(head: u16, descs: impl ExactSizeIterator<Item = Buf>) -> Vec<RawDescriptor> {
    let count = descs.len();
    descs
        .enumerate()
        .map(|(i, (addr, len, flags))| {
            let i = i as u16;
            let (flags, next) = if usize::from(i) + 1 < count {
                (flags | NEXT, head + i + 1)
            } else {
                (flags, 0)
            };
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect()
}

/// A frame of `len` bytes: a zero header, then a pattern that depends on `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((VNET_HDR_LEN..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// `f` as the guest should see it: `num_buffers` set.
fn with_num_buffers(mut f: Vec<u8>, n: u16) -> Vec<u8> {
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

#[test]
fn config_space_has_the_mac_and_the_mtu_with_their_features() {
    let (_, dev) = UnixDatagram::pair().unwrap();
    let backend = |sock| {
        Box::new(PairBackend {
            sock,
            reads: Arc::default(),
            offload: Arc::default(),
        })
    };
    let net = Net::new(
        backend(dev),
        "fd=3".into(),
        Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
        Some(1400),
    )
    .unwrap();
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &[2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
    let f = net.avail_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_VERSION_1,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit} not offered");
    }
    assert_eq!(net.queue_max_sizes(), &[RX_QUEUE_SIZE, TX_QUEUE_SIZE]);

    let (_, dev) = UnixDatagram::pair().unwrap();
    let plain = Net::new(backend(dev), "fd=4".into(), None, None).unwrap();
    let f = plain.avail_features();
    assert_eq!(f & ((1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_MTU)), 0);
}

#[test]
fn activation_gives_the_tap_the_offloads_the_guest_accepted() {
    let mem = guest_memory();
    let all = (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6)
        | (1 << VIRTIO_NET_F_GUEST_UFO)
        | EVENT_IDX;
    let f = Fixture::new(&mem, all);
    assert_eq!(
        f.offload.load(Ordering::SeqCst),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO
    );
    {
        let net = f.net.lock().unwrap();
        let active = net.common().active().unwrap();
        assert!(active.queues.iter().all(|q| q.event_idx_enabled()));
    }
    f.net.lock().unwrap().reset();
    assert_eq!(f.offload.load(Ordering::SeqCst), 0, "reset clears them");

    // Segmentation without checksum offload is no offload at all (the tap would refuse it).
    let f = Fixture::new(&mem, 1 << VIRTIO_NET_F_GUEST_TSO4);
    assert_eq!(f.offload.load(Ordering::SeqCst), 0);
    let net = f.net.lock().unwrap();
    assert!(!net.common().active().unwrap().queues[RXQ].event_idx_enabled());
}

#[test]
fn a_frame_fills_one_buffer_chain_without_mergeable_buffers() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, 0);
    // Header and data in separate descriptors, as Linux posts its big-packet buffers.
    let head = f.post_rx_chain(&[(VNET_HDR_LEN as u32, W), (4096, W)]);
    let sent = frame(1500, 1);
    f.host.send(&sent).unwrap();
    f.process_rx();
    assert_eq!(f.rx_used_count(), 1);
    assert_eq!(f.rx_used(0), (head, 1500));
    let mut got = f.rx_bytes(head, VNET_HDR_LEN as u32);
    got.extend(f.rx_bytes(head + 1, 1500 - VNET_HDR_LEN as u32));
    assert_eq!(got, with_num_buffers(sent, 1));
    assert_eq!(
        f.irq.status() & IrqType::Vring as u32,
        IrqType::Vring as u32
    );
    assert_eq!(f.stats().rx_frames, 1);
}

#[test]
fn a_large_frame_spans_several_mergeable_buffers() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, MRG);
    f.post_rx(&[4096; 4]);
    let sent = frame(10_000, 7);
    f.host.send(&sent).unwrap();
    f.process_rx();
    assert_eq!(f.rx_used_count(), 3);
    assert_eq!(f.rx_used(0), (0, 4096));
    assert_eq!(f.rx_used(1), (1, 4096));
    assert_eq!(f.rx_used(2), (2, 10_000 - 8192));
    assert_eq!(f.rx_frames(0), vec![with_num_buffers(sent, 3)]);

    // The largest frame a tap hands over, over 17 buffers; the fourth buffer is the first.
    f.post_rx(&[4096; 16]);
    let big = frame(MAX_FRAME_LEN, 9);
    f.host.send(&big).unwrap();
    f.process_rx();
    assert_eq!(f.rx_used(3).0, 3);
    assert_eq!(f.rx_frames(3), vec![with_num_buffers(big, 17)]);
    assert_eq!(f.stats().rx_frames, 2);
}

#[test]
fn without_buffers_frames_wait_in_the_tap_and_none_is_lost() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, MRG | EVENT_IDX);
    let sent: Vec<Vec<u8>> = (0..5).map(|i| frame(3000, i)).collect();
    for s in &sent {
        f.host.send(s).unwrap();
    }
    f.process_rx();
    f.process_rx();
    assert_eq!(f.rx_used_count(), 0);
    assert!(f.net.lock().unwrap().rx_waiting());
    assert_eq!(
        f.reads.load(Ordering::SeqCst),
        1,
        "the device read more frames than it could place"
    );

    // Two buffers: two frames go, the third waits for more.
    f.post_rx(&[4096; 2]);
    f.process_rx();
    assert_eq!(f.rx_used_count(), 2);
    assert_eq!(f.reads.load(Ordering::SeqCst), 3);
    // With the event index the guest is asked to notify at its next buffer.
    let avail_event_addr = f.rxq.used_addr().0 + 4 + 8 * 64;
    let avail_event: u16 = mem.read_obj(GuestAddress(avail_event_addr)).unwrap();
    assert_eq!(avail_event, 2);

    f.post_rx(&[4096; 8]);
    f.process_rx();
    let expected: Vec<Vec<u8>> = sent.into_iter().map(|s| with_num_buffers(s, 1)).collect();
    assert_eq!(f.rx_frames(0), expected);
    assert!(!f.net.lock().unwrap().rx_waiting());
    assert_eq!(f.stats().rx_dropped, 0);
}

#[test]
fn a_frame_waits_for_enough_buffers_across_kicks() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, MRG);
    let sent = frame(20_000, 3);
    f.host.send(&sent).unwrap();
    // The guest posts one buffer at a time; the frame goes once five are there.
    for posted in 1..=5 {
        f.post_rx(&[4096]);
        f.process_rx();
        let expect = if posted < 5 { 0 } else { 5 };
        assert_eq!(f.rx_used_count(), expect, "after {posted} buffers");
    }
    assert_eq!(f.rx_frames(0), vec![with_num_buffers(sent, 5)]);
}

#[test]
fn hostile_receive_chains_go_back_unused_and_the_frame_takes_the_next_good_one() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, MRG);
    // A device-readable buffer.
    let readable = f.post_rx_chain(&[(4096, 0)]);
    // A buffer outside guest memory.
    let outside = f.rx_desc;
    f.rxq
        .add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(1 << 40, 4096, W, 0))],
            outside,
        )
        .unwrap();
    f.rx_desc += 1;
    // A loop: 0 -> 1 -> 0.
    let looping = f.rx_desc;
    let descs = [
        RawDescriptor::from(Descriptor::new(RX_BUFS, 4096, W | NEXT, looping + 1)),
        RawDescriptor::from(Descriptor::new(RX_BUFS, 4096, W | NEXT, looping)),
    ];
    f.rxq.add_desc_chains(&descs, looping).unwrap();
    f.rx_desc += 2;
    // A `next` outside the table.
    let dangling = f.rx_desc;
    let descs = [RawDescriptor::from(Descriptor::new(
        RX_BUFS,
        4096,
        W | NEXT,
        300,
    ))];
    f.rxq.add_desc_chains(&descs, dangling).unwrap();
    f.rx_desc += 1;
    // Too short for the header, and zero length.
    let short = f.post_rx_chain(&[(8, W)]);
    let empty = f.post_rx_chain(&[(0, W)]);
    let good = f.post_rx_chain(&[(4096, W)]);

    let sent = frame(1000, 5);
    f.host.send(&sent).unwrap();
    f.process_rx();
    let used: Vec<(u16, u32)> = (0..f.rx_used_count()).map(|i| f.rx_used(i)).collect();
    assert_eq!(
        used,
        vec![
            (readable, 0),
            (outside, 0),
            (looping, 0),
            (dangling, 0),
            (short, 0),
            (empty, 0),
            (good, 1000)
        ]
    );
    assert_eq!(f.rx_bytes(good, 1000), with_num_buffers(sent, 1));
    // The readable buffer was not written.
    assert!(f.rx_bytes(readable, 16).iter().all(|&b| b == 0));
}

#[test]
fn a_frame_no_ring_can_hold_is_dropped_and_its_buffers_serve_the_next() {
    let mem = guest_memory();
    let mut f = Fixture::with_rx_queue(&mem, MRG, 16);
    f.post_rx(&[100; 16]);
    f.host.send(&frame(3000, 1)).unwrap();
    let small = frame(500, 2);
    f.host.send(&small).unwrap();
    f.process_rx();
    assert_eq!(f.stats().rx_dropped, 1);
    assert_eq!(f.rx_frames(0), vec![with_num_buffers(small, 5)]);
}

#[test]
fn without_mergeable_buffers_a_frame_larger_than_the_buffer_is_dropped() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, 0);
    f.post_rx(&[1000, 1000]);
    f.host.send(&frame(3000, 1)).unwrap();
    let fits = frame(900, 2);
    f.host.send(&fits).unwrap();
    f.process_rx();
    assert_eq!(f.stats().rx_dropped, 1);
    assert_eq!(f.rx_used_count(), 1);
    assert_eq!(f.rx_used(0), (0, 900), "the first buffer is kept for it");
    assert_eq!(f.rx_frames(0), vec![with_num_buffers(fits, 1)]);
}

#[test]
fn a_frame_is_gathered_from_several_descriptors() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, 0);
    let sent = frame(1512, 4);
    mem.write_slice(&sent[..12], GuestAddress(TX_BUFS)).unwrap();
    mem.write_slice(&sent[12..112], GuestAddress(TX_BUFS + SLOT))
        .unwrap();
    mem.write_slice(&sent[112..], GuestAddress(TX_BUFS + 2 * SLOT))
        .unwrap();
    f.guest_send(&[
        (TX_BUFS, 12, 0),
        (TX_BUFS + SLOT, 100, 0),
        (TX_BUFS + 2 * SLOT, 1400, 0),
    ]);
    f.process_tx();
    assert_eq!(f.host_frames(), vec![sent]);
    assert_eq!(f.txq.used().idx().load(), 1);
    let used = f.txq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((used.id(), used.len()), (0, 0));
    assert_eq!(f.stats().tx_frames, 1);
}

#[test]
fn hostile_transmit_chains_are_returned_and_nothing_reaches_the_tap() {
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, 0);
    let hostile: Vec<(&str, Vec<Buf>)> = vec![
        ("short header", vec![(TX_BUFS, 8, 0)]),
        ("zero length", vec![(TX_BUFS, 0, 0)]),
        (
            "write-only",
            vec![(TX_BUFS, 12, 0), (TX_BUFS + SLOT, 100, W)],
        ),
        ("outside memory", vec![(TX_BUFS, 12, 0), (1 << 40, 100, 0)]),
        (
            "straddling the end",
            vec![(TX_BUFS, 12, 0), ((16 << 20) - 50, 100, 0)],
        ),
        (
            "oversize",
            vec![(TX_BUFS, 12, 0), (TX_BUFS + SLOT, 65_551, 0)],
        ),
        ("one huge buffer", vec![(TX_BUFS, 1 << 20, 0)]),
    ];
    for (_, descs) in &hostile {
        f.guest_send(descs);
    }
    // A loop, and a `next` outside the table.
    let head = f.tx_desc;
    let descs = [
        RawDescriptor::from(Descriptor::new(TX_BUFS, 12, NEXT, head + 1)),
        RawDescriptor::from(Descriptor::new(TX_BUFS, 12, NEXT, head)),
    ];
    f.txq.add_desc_chains(&descs, head).unwrap();
    let dangling = head + 2;
    let descs = [RawDescriptor::from(Descriptor::new(TX_BUFS, 12, NEXT, 300))];
    f.txq.add_desc_chains(&descs, dangling).unwrap();
    f.tx_desc += 3;
    f.process_tx();
    let count = hostile.len() as u64 + 2;
    assert_eq!(f.host_frames(), Vec::<Vec<u8>>::new());
    assert_eq!(u64::from(f.txq.used().idx().load()), count);
    assert_eq!(f.stats().tx_dropped, count);

    // The device goes on: the largest frame allowed passes.
    let sent = frame(MAX_FRAME_LEN, 8);
    mem.write_slice(&sent, GuestAddress(TX_BUFS)).unwrap();
    f.guest_send(&[(TX_BUFS, MAX_FRAME_LEN as u32, 0)]);
    f.process_tx();
    assert_eq!(f.host_frames(), vec![sent]);
}

#[test]
fn the_event_loop_moves_frames_both_ways_and_idles_while_waiting_for_buffers() {
    type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;
    let mem = guest_memory();
    let mut f = Fixture::new(&mem, MRG | EVENT_IDX);
    let mut em = Em::new().unwrap();
    em.add_subscriber(f.net.clone());
    let run_until = |em: &mut Em, what: &str, done: &dyn Fn() -> bool| {
        for _ in 0..100 {
            if done() {
                return;
            }
            em.run_with_timeout(100).unwrap();
        }
        panic!("{what} did not happen");
    };

    // Activation kicked the receive queue: nothing there yet, then the tap wakes the device.
    f.post_rx(&[4096; 2]);
    let first = frame(600, 1);
    f.host.send(&first).unwrap();
    run_until(
        &mut em,
        "the frame from the tap reaching the guest",
        &|| f.rxq.used().idx().load() == 1,
    );
    assert_eq!(f.rx_frames(0), vec![with_num_buffers(first, 1)]);

    // The guest sends; its kick wakes the device.
    let sent = frame(300, 2);
    mem.write_slice(&sent, GuestAddress(TX_BUFS)).unwrap();
    f.guest_send(&[(TX_BUFS, 300, 0)]);
    f.net.lock().unwrap().queue_events()[TXQ].write(1).unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        got = f.host_frames();
        if !got.is_empty() {
            break;
        }
        em.run_with_timeout(100).unwrap();
    }
    assert_eq!(got, vec![sent], "the guest's frame did not reach the tap");

    // Out of buffers: frames wait and the loop stays quiet instead of spinning on the tap.
    for i in 0..3 {
        f.host.send(&frame(3000, 10 + i)).unwrap();
    }
    run_until(&mut em, "the device waiting for buffers", &|| {
        f.net.lock().unwrap().rx_waiting()
    });
    for _ in 0..3 {
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    }
    f.post_rx(&[4096; 4]);
    f.net.lock().unwrap().queue_events()[RXQ].write(1).unwrap();
    run_until(&mut em, "the waiting frames reaching the guest", &|| {
        f.rxq.used().idx().load() == 4
    });
    assert_eq!(f.stats().rx_dropped, 0);
}

#[test]
fn random_descriptor_tables_never_panic() {
    let mem = guest_memory();
    let mut next = xorshift(0x5eed_0000_0e7e_0001);
    let mut delivered = 0;
    for round in 0..300 {
        let f = Fixture::new(&mem, if round % 2 == 0 { MRG } else { 0 });
        for i in 0..8u16 {
            let r = next();
            let addr = match r % 4 {
                0 => RX_BUFS + u64::from(i) * SLOT,
                1 => (r >> 8) % (17 << 20),
                2 => TX_BUFS,
                _ => r,
            };
            let len = match (r >> 4) % 4 {
                0 => 4096,
                1 => (r >> 20) as u32 % 64,
                2 => 0,
                _ => (r >> 32) as u32,
            };
            let flags = (r >> 40) as u16 & (W | NEXT);
            let next_idx = (r >> 48) as u16 % 12;
            let raw = [RawDescriptor::from(Descriptor::new(
                addr, len, flags, next_idx,
            ))];
            f.rxq.add_desc_chains(&raw, i).unwrap();
            f.txq.add_desc_chains(&raw, i).unwrap();
        }
        f.host
            .send(&frame(1 + (next() % 9000) as usize, 1))
            .unwrap();
        f.process_rx();
        f.process_tx();
        delivered += f.stats().rx_frames;
        // Every frame sent to the host is a whole frame within bounds.
        for sent in f.host_frames() {
            assert!((VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&sent.len()));
        }
    }
    assert!(delivered > 0, "the generator never made a usable buffer");
}
