//! The virtio-vsock device state: guest CID, queues, and the moves of packets between the
//! virtqueues and the muxer that owns the host sockets.

use std::path::Path;
use std::sync::Arc;

use tracing::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueT, Writer};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{MuxerError, VsockMuxer};
use super::packet::Packet;
use super::{QUEUE_SIZE, RXQ, TXQ};
use crate::devices::virtio::{
    ActivateError, GuestMemoryMmap, IrqTrigger, QueueError, VirtioCommon, VirtioDevice,
};

/// Errors of vsock device creation and queue processing.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved (must be 3 or more)")]
    InvalidCid(u64),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("cannot create a vsock eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("vsock {0}")]
    Queue(#[from] QueueError),
}

/// A virtio-vsock device whose host end is a Unix socket.
pub struct Vsock {
    cid: u64,
    pub(super) muxer: VsockMuxer,
    /// Signalled on activation so the event loop delivers what queued up before it.
    pub(super) activate_evt: EventFd,
    common: VirtioCommon,
}

impl Vsock {
    /// A device for guest `cid`, listening for the host on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if cid < 3 || cid > u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(cid));
        }
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = cid.to_le_bytes().to_vec();
        Ok(Self {
            cid,
            muxer: VsockMuxer::new(cid, uds_path)?,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            common: VirtioCommon::new(VIRTIO_ID_VSOCK, 0, &[QUEUE_SIZE; 3], config)
                .map_err(VsockError::EventFd)?,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Moves every packet the guest queued on TX to the muxer.
    pub fn process_tx(&mut self) -> Result<(), VsockError> {
        let Some(active) = self.common.active_mut() else {
            return Ok(());
        };
        let muxer = &mut self.muxer;
        active.serve_queue(TXQ, |chain, mem| {
            match Packet::from_tx_chain(chain, mem) {
                Ok(pkt) => muxer.send_pkt(&pkt),
                Err(e) => warn!(error = %e, "vsock: dropping TX packet"),
            }
            0
        })?;
        Ok(())
    }

    /// Fills RX buffers with what the muxer has for the guest.
    pub fn process_rx(&mut self) -> Result<(), VsockError> {
        let Some(active) = self.common.active_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ];
        let used_err = |source| QueueError::Queue { index: RXQ, source };
        let mut used_any = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let mut writer: Writer<'_, ()> = match Writer::new(mem, chain) {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "vsock: RX buffer is not in guest memory");
                    queue.add_used(mem, head, 0).map_err(used_err)?;
                    used_any = true;
                    continue;
                }
            };
            let Some(capacity) = Packet::rx_capacity(&writer) else {
                warn!("vsock: RX buffer has no room for a payload after the header");
                queue.add_used(mem, head, 0).map_err(used_err)?;
                used_any = true;
                continue;
            };
            let Some(pkt) = self.muxer.recv_pkt(capacity.min(super::MAX_PKT_DATA)) else {
                // Nothing after all (the socket had drained): give the buffer back.
                queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                continue;
            };
            let len = match pkt.write_to(&mut writer) {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "vsock: cannot write RX packet");
                    0
                }
            };
            queue.add_used(mem, head, len).map_err(used_err)?;
            used_any = true;
        }
        if used_any {
            active.signal_used_queue(RXQ)?;
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    /// Delivery of what queued up before activation (host connections) is the event loop's,
    /// woken by `activate_evt`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.common.activate(mem, interrupt, queues)?;
        self.activate_evt
            .write(1)
            .map_err(ActivateError::ActivateEvent)
    }

    fn reset(&mut self) {
        self.common.reset();
        self.muxer.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::vsock::packet::{op, PacketHeader, HDR_LEN, TYPE_STREAM};
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use crate::devices::virtio::test_utils::{NEXT, WRITE as W};
    const RX_BUFS: u64 = 0x40_0000;
    const TX_BUFS: u64 = 0x50_0000;

    type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    struct Fixture<'a> {
        mem: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        dev: Arc<Mutex<Vsock>>,
        em: Em,
        tx_next: u16,
    }

    impl<'a> Fixture<'a> {
        fn new(mem: &'a GuestMemoryMmap, dir: &tempfile::TempDir) -> Self {
            // Eight RX buffers of 4 KiB, each its own chain.
            Self::with_rx_buffers(mem, dir, &[0x1000; 8])
        }

        /// RX buffer `i` is `rx_lens[i]` bytes at `RX_BUFS + i * 0x1000`, each its own chain.
        fn with_rx_buffers(
            mem: &'a GuestMemoryMmap,
            dir: &tempfile::TempDir,
            rx_lens: &[u32],
        ) -> Self {
            // The mock sizes its avail ring at one byte per entry, so only the first half
            // of the entries may be posted before it runs into the used ring: 32 entries
            // leave room for the 16 RX buffers the tests post.
            let rxq = MockSplitQueue::create(mem, GuestAddress(0), 32);
            let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
            let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
            let rx: Vec<RawDescriptor> = (0u64..)
                .zip(rx_lens)
                .map(|(i, &len)| {
                    RawDescriptor::from(Descriptor::new(RX_BUFS + i * 0x1000, len, W, 0))
                })
                .collect();
            rxq.add_desc_chains(&rx, 0).unwrap();
            let dev = Arc::new(Mutex::new(
                Vsock::new(3, &dir.path().join("v.sock")).unwrap(),
            ));
            let queues = vec![
                rxq.create_queue().unwrap(),
                txq.create_queue().unwrap(),
                evq.create_queue().unwrap(),
            ];
            dev.lock()
                .unwrap()
                .activate(mem.clone(), Arc::new(IrqTrigger::new().unwrap()), queues)
                .unwrap();
            let mut em = Em::new().unwrap();
            em.add_subscriber(dev.clone());
            Self {
                mem,
                rxq,
                txq,
                dev,
                em,
                tx_next: 0,
            }
        }

        /// Runs the event loop until the guest got `n` RX packets in total.
        fn run_until_rx(&mut self, n: u16) {
            for _ in 0..100 {
                if self.rxq.used().idx().load() >= n {
                    return;
                }
                self.em.run_with_timeout(100).unwrap();
            }
            panic!("guest did not receive packet {n}");
        }

        /// The `i`th packet the device placed in the RX queue.
        fn rx_packet(&self, i: u16) -> (PacketHeader, Vec<u8>) {
            let elem = self.rxq.used().ring().ref_at(i as usize).unwrap().load();
            let addr = RX_BUFS + u64::from(elem.id()) * 0x1000;
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = PacketHeader::from_bytes(&raw);
            assert_eq!(elem.len() as usize, HDR_LEN + hdr.len as usize);
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            (hdr, data)
        }

        /// The guest sends a packet: header and data in two descriptors, then a kick.
        fn guest_send(&mut self, hdr: PacketHeader, data: &[u8]) {
            let slot = u64::from(self.tx_next);
            let addr = TX_BUFS + slot * 0x1000;
            self.mem
                .write_slice(&hdr.to_bytes(), GuestAddress(addr))
                .unwrap();
            self.mem
                .write_slice(data, GuestAddress(addr + 0x100))
                .unwrap();
            let descs = [
                RawDescriptor::from(Descriptor::new(
                    addr,
                    HDR_LEN as u32,
                    NEXT,
                    self.tx_next + 1,
                )),
                RawDescriptor::from(Descriptor::new(addr + 0x100, data.len() as u32, 0, 0)),
            ];
            self.txq.add_desc_chains(&descs, self.tx_next).unwrap();
            self.tx_next += 2;
            self.dev.lock().unwrap().queue_events()[TXQ]
                .write(1)
                .unwrap();
            self.em.run_with_timeout(100).unwrap();
        }
    }

    fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: usize) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port,
            dst_port,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn config_space_holds_the_guest_cid() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Vsock::new(42, &dir.path().join("s")).unwrap();
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 42);
        assert!(matches!(
            Vsock::new(2, &dir.path().join("t")),
            Err(VsockError::InvalidCid(2))
        ));
    }

    #[test]
    fn host_connect_reaches_guest_and_data_flows_through_the_queues() {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest_memory();
        let mut f = Fixture::new(&mem, &dir);

        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        f.run_until_rx(1);
        let (req, _) = f.rx_packet(0);
        assert_eq!(req.op, op::REQUEST);
        assert_eq!((req.src_cid, req.dst_cid, req.dst_port), (2, 3, 1024));
        let hp = req.src_port;

        // The guest accepts and sends data.
        f.guest_send(guest_hdr(op::RESPONSE, 1024, hp, 0), &[]);
        f.guest_send(guest_hdr(op::RW, 1024, hp, 5), b"hello");
        assert_eq!(f.txq.used().idx().load(), 2);
        let mut reader = BufReader::new(host.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {hp}\n"));
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        // Host data reaches the guest's RX queue.
        host.write_all(b"world").unwrap();
        f.run_until_rx(2);
        let (hdr, data) = f.rx_packet(1);
        assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RW, hp, 1024));
        assert_eq!(data, b"world");
    }

    #[test]
    fn malformed_tx_packets_are_consumed_without_effect() {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest_memory();
        let mut f = Fixture::new(&mem, &dir);
        // A header claiming more data than the chain holds.
        let mut h = guest_hdr(op::REQUEST, 1, 5000, 0);
        h.len = 4000;
        f.guest_send(h, b"abc");
        assert_eq!(f.txq.used().idx().load(), 1, "chain returned to the guest");
        assert_eq!(f.rxq.used().idx().load(), 0, "no reply to garbage");
    }

    #[test]
    fn an_rx_buffer_without_room_for_a_payload_does_not_end_the_host_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest_memory();
        // The second buffer holds a header and nothing more.
        let lens = [0x1000, HDR_LEN as u32, 0x1000, 0x1000];
        let mut f = Fixture::with_rx_buffers(&mem, &dir, &lens);
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        f.run_until_rx(1);
        let hp = f.rx_packet(0).0.src_port;
        f.guest_send(guest_hdr(op::RESPONSE, 1024, hp, 0), &[]);

        // Filling that buffer meant a zero-length read of the host socket, whose 0 was taken
        // for EOF: the guest got SHUTDOWN and never the data.
        host.write_all(b"hello").unwrap();
        f.run_until_rx(2);
        let unused = f.rxq.used().ring().ref_at(1).unwrap().load();
        if unused.len() != 0 {
            let (hdr, _) = f.rx_packet(1);
            panic!(
                "the header-only buffer carried op {} (flags {})",
                hdr.op, hdr.flags
            );
        }
        assert_eq!(unused.id(), 1);
        f.run_until_rx(3);
        let (hdr, data) = f.rx_packet(2);
        assert_eq!((hdr.op, data.as_slice()), (op::RW, &b"hello"[..]));
        let conn = f.dev.lock().unwrap().muxer.conn_state(hp, 1024);
        assert_eq!(
            conn,
            Some(crate::devices::virtio::vsock::ConnState::Established)
        );
    }

    #[test]
    fn rx_stalls_without_buffers_and_resumes_when_the_guest_adds_some() {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest_memory();
        let mut f = Fixture::new(&mem, &dir);
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        f.run_until_rx(1);
        let hp = f.rx_packet(0).0.src_port;
        let mut accept = guest_hdr(op::RESPONSE, 1024, hp, 0);
        accept.buf_alloc = 1 << 20;
        f.guest_send(accept, &[]);

        // More than the seven buffers left can carry (4052 payload bytes each).
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        host.write_all(&sent).unwrap();
        f.run_until_rx(8);
        // Out of buffers: the device goes quiet instead of spinning on the readable socket.
        for _ in 0..3 {
            assert_eq!(f.em.run_with_timeout(0).unwrap(), 0);
        }
        assert_eq!(f.rxq.used().idx().load(), 8);

        // The guest recycles the eight buffers (descriptors 0-7 again) and kicks: 15
        // payload buffers in all, enough for the 40000 bytes.
        let rx: Vec<RawDescriptor> = (0..8)
            .map(|i| RawDescriptor::from(Descriptor::new(RX_BUFS + i * 0x1000, 0x1000, W, 0)))
            .collect();
        f.rxq.add_desc_chains(&rx, 0).unwrap();
        f.dev.lock().unwrap().queue_events()[RXQ].write(1).unwrap();
        let mut received = Vec::new();
        let mut next_used = 1;
        while received.len() < sent.len() {
            f.run_until_rx(next_used + 1);
            while next_used < f.rxq.used().idx().load() {
                let (hdr, data) = f.rx_packet(next_used);
                assert_eq!(hdr.op, op::RW);
                received.extend_from_slice(&data);
                next_used += 1;
            }
        }
        assert_eq!(received, sent);
    }
}
