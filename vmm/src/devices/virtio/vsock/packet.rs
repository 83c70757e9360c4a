//! vsock packets: the 44-byte `virtio_vsock_hdr` and its payload, read from a TX descriptor
//! chain or written into an RX one.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use super::MAX_PKT_DATA;
use crate::devices::virtio::GuestMemoryMmap;

/// Length of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;

/// Operations (virtio 1.2, 5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// The only socket type we carry.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors of packet parsing.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain is not in guest memory: {0}")]
    Descriptor(virtio_queue::Error),
    #[error("TX chain holds {0} readable bytes, less than the {HDR_LEN}-byte header")]
    HeaderTooShort(usize),
    #[error("packet header says len {len}, more than the {MAX_PKT_DATA}-byte maximum")]
    DataTooLong { len: u32 },
    #[error("packet header says len {len}, but the chain holds only {available} bytes")]
    DataMissing { len: u32, available: usize },
    #[error("RX buffer of {available} bytes cannot hold a packet of {needed} bytes")]
    RxBufferTooSmall { available: usize, needed: usize },
    #[error("guest memory access failed: {0}")]
    Io(std::io::Error),
}

/// `struct virtio_vsock_hdr`, fields in host order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Decodes the little-endian wire layout.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        // The offsets are the fixed layout's, all inside the header.
        fn at<const N: usize>(b: &[u8; HDR_LEN], offset: usize) -> [u8; N] {
            let mut field = [0u8; N];
            field.copy_from_slice(&b[offset..offset + N]);
            field
        }
        let u64_at = |o: usize| u64::from_le_bytes(at(b, o));
        let u32_at = |o: usize| u32::from_le_bytes(at(b, o));
        let u16_at = |o: usize| u16::from_le_bytes(at(b, o));
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire layout.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A header and its payload (`data.len() == hdr.len`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub hdr: PacketHeader,
    pub data: Vec<u8>,
}

impl Packet {
    /// Reads a packet the guest queued on the TX queue.
    pub fn from_tx_chain(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, PacketError> {
        let mut reader: Reader<'_, ()> =
            Reader::new(mem, chain).map_err(PacketError::Descriptor)?;
        let available = reader.available_bytes();
        if available < HDR_LEN {
            return Err(PacketError::HeaderTooShort(available));
        }
        let mut raw = [0u8; HDR_LEN];
        reader.read_exact(&mut raw).map_err(PacketError::Io)?;
        let hdr = PacketHeader::from_bytes(&raw);
        if hdr.len as usize > MAX_PKT_DATA {
            return Err(PacketError::DataTooLong { len: hdr.len });
        }
        let available = reader.available_bytes();
        if hdr.len as usize > available {
            return Err(PacketError::DataMissing {
                len: hdr.len,
                available,
            });
        }
        let mut data = vec![0u8; hdr.len as usize];
        reader.read_exact(&mut data).map_err(PacketError::Io)?;
        Ok(Self { hdr, data })
    }

    /// How many bytes of payload fit in an RX chain; `None` when it has no room for a
    /// payload byte after the header. Such a chain is not used: the payload size we read from
    /// a host socket is the room left, and a zero-length read returns 0, which means EOF.
    pub fn rx_capacity(writer: &Writer<'_, ()>) -> Option<usize> {
        writer
            .available_bytes()
            .checked_sub(HDR_LEN)
            .filter(|&room| room > 0)
    }

    /// Writes the packet into an RX chain; returns the bytes written.
    pub fn write_to(&self, writer: &mut Writer<'_, ()>) -> Result<u32, PacketError> {
        let needed = HDR_LEN + self.data.len();
        let available = writer.available_bytes();
        if available < needed {
            return Err(PacketError::RxBufferTooSmall { available, needed });
        }
        let mut hdr = self.hdr;
        hdr.len = self.data.len() as u32;
        writer.write_all(&hdr.to_bytes()).map_err(PacketError::Io)?;
        writer.write_all(&self.data).map_err(PacketError::Io)?;
        Ok(needed as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn sample() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 0x4_0000,
            fwd_cnt: 77,
        }
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn header_wire_layout() {
        let b = sample().to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &1024u32.to_le_bytes());
        assert_eq!(&b[28..30], &[1, 0]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[40..44], &77u32.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&b), sample());
    }

    #[test]
    fn tx_chain_with_split_header_and_data() {
        let mem = guest_memory();
        let b = sample().to_bytes();
        // Header split over two descriptors, data in a third.
        mem.write_slice(&b[..20], GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&b[20..], GuestAddress(0x11_0000)).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x12_0000)).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[d(0x10_0000, 20, 0), d(0x11_0000, 24, 0), d(0x12_0000, 5, 0)])
            .unwrap();
        let pkt = Packet::from_tx_chain(chain, &mem).unwrap();
        assert_eq!(pkt.hdr, sample());
        assert_eq!(pkt.data, b"hello");
    }

    #[test]
    fn hostile_tx_chains_are_rejected() {
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, 16);
        // Too short for a header.
        let chain = q.build_desc_chain(&[d(0x10_0000, 43, 0)]).unwrap();
        assert!(matches!(
            Packet::from_tx_chain(chain, &mem),
            Err(PacketError::HeaderTooShort(43))
        ));
        // Device-writable buffers are not TX data.
        let chain = q.build_desc_chain(&[d(0x10_0000, 64, 2)]).unwrap();
        assert!(matches!(
            Packet::from_tx_chain(chain, &mem),
            Err(PacketError::HeaderTooShort(0))
        ));
        // Out of guest memory.
        let chain = q.build_desc_chain(&[d(1 << 40, 64, 0)]).unwrap();
        assert!(matches!(
            Packet::from_tx_chain(chain, &mem),
            Err(PacketError::Descriptor(_))
        ));
        // len larger than the data present, and larger than the maximum.
        let mut h = sample();
        h.len = 100;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        let chain = q.build_desc_chain(&[d(0x10_0000, 64, 0)]).unwrap();
        assert!(matches!(
            Packet::from_tx_chain(chain, &mem),
            Err(PacketError::DataMissing {
                len: 100,
                available: 20
            })
        ));
        h.len = u32::MAX;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        let chain = q.build_desc_chain(&[d(0x10_0000, 64, 0)]).unwrap();
        assert!(matches!(
            Packet::from_tx_chain(chain, &mem),
            Err(PacketError::DataTooLong { .. })
        ));
    }

    #[test]
    fn rx_chain_write_and_too_small_buffer() {
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, 16);
        let pkt = Packet {
            hdr: sample(),
            data: b"hello".to_vec(),
        };
        let chain = q
            .build_desc_chain(&[d(0x10_0000, 30, 2), d(0x11_0000, 100, 2)])
            .unwrap();
        let mut w: Writer<'_, ()> = Writer::new(&mem, chain).unwrap();
        assert_eq!(Packet::rx_capacity(&w), Some(130 - HDR_LEN));
        assert_eq!(pkt.write_to(&mut w).unwrap(), 49);
        let mut raw = [0u8; 49];
        mem.read_slice(&mut raw[..30], GuestAddress(0x10_0000))
            .unwrap();
        mem.read_slice(&mut raw[30..], GuestAddress(0x11_0000))
            .unwrap();
        assert_eq!(
            PacketHeader::from_bytes(raw[..44].try_into().unwrap()),
            sample()
        );
        assert_eq!(&raw[44..], b"hello");

        // Room for the header only: no payload would fit, so the chain is not used.
        let chain = q
            .build_desc_chain(&[d(0x10_0000, HDR_LEN as u32, 2)])
            .unwrap();
        let w: Writer<'_, ()> = Writer::new(&mem, chain).unwrap();
        assert_eq!(Packet::rx_capacity(&w), None);

        let chain = q.build_desc_chain(&[d(0x10_0000, 40, 2)]).unwrap();
        let mut w: Writer<'_, ()> = Writer::new(&mem, chain).unwrap();
        assert_eq!(Packet::rx_capacity(&w), None);
        assert!(matches!(
            pkt.write_to(&mut w),
            Err(PacketError::RxBufferTooSmall { .. })
        ));
    }

    /// Deterministic pseudo-random TX chains: parsing never panics and never returns more
    /// data than the header announced.
    #[test]
    fn random_tx_chains_never_panic() {
        let mem = guest_memory();
        let mut next = crate::devices::virtio::test_utils::xorshift(0x00dd_c0ff_ee15_600d);
        let mut parsed = 0;
        for _ in 0..3000 {
            let q = MockSplitQueue::new(&mem, 16);
            let mut h = sample();
            h.len = match next() % 4 {
                0 => 0,
                1 => (next() % 200) as u32,
                2 => (next() % (MAX_PKT_DATA as u64 + 10)) as u32,
                _ => next() as u32,
            };
            mem.write_slice(&h.to_bytes(), GuestAddress(0x10_0000))
                .unwrap();
            let count = (next() % 4 + 1) as usize;
            let mut descs = Vec::new();
            for i in 0..count {
                let r = next();
                let addr = match r % 3 {
                    0 => 0x10_0000 + (i as u64) * 0x100,
                    1 => (r >> 8) % (20 << 20),
                    _ => r,
                };
                let len = match (r >> 4) % 3 {
                    0 => HDR_LEN as u32,
                    1 => ((r >> 16) % 300) as u32,
                    _ => (r >> 32) as u32,
                };
                let flags = (r >> 40) as u16 & 3;
                let next_idx = if (r >> 48).is_multiple_of(5) {
                    (r >> 50) as u16 % 20
                } else {
                    i as u16 + 1
                };
                let flags = if i + 1 == count {
                    flags & !1
                } else {
                    flags | 1
                };
                descs.push(RawDescriptor::from(Descriptor::new(
                    addr, len, flags, next_idx,
                )));
            }
            q.add_desc_chains(&descs, 0).unwrap();
            let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
            let Some(chain) = virtio_queue::QueueOwnedT::iter(&mut queue, &mem)
                .unwrap()
                .next()
            else {
                continue;
            };
            if let Ok(pkt) = Packet::from_tx_chain(chain, &mem) {
                parsed += 1;
                assert_eq!(pkt.data.len(), pkt.hdr.len as usize);
                assert!(pkt.data.len() <= MAX_PKT_DATA);
            }
        }
        assert!(parsed > 0);
    }
}
