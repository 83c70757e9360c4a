//! Parsing and validation of one virtio-blk request (a descriptor chain from the guest):
//! a 16-byte readable header, data buffers of the right direction, a writable status byte.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use super::{status, SECTOR_SIZE, SEG_MAX};
use crate::devices::virtio::GuestMemoryMmap;

/// Length of `struct virtio_blk_outhdr`.
const HEADER_LEN: u32 = 16;

/// The request header as the guest lays it out (little endian).
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct RequestHeader {
    request_type: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: RequestHeader is plain old data made of integers, with no padding
// (u32 + u32 + u64 at natural alignment), so every byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain does not terminate (loop, or next index out of the table)")]
    UnterminatedChain,
    #[error("descriptor chain has {0} descriptors, at least header and status are needed")]
    TooFewDescriptors(usize),
    #[error("descriptor chain has {0} data descriptors, more than seg_max {SEG_MAX}")]
    TooManySegments(usize),
    #[error("status descriptor at {0:#x} is not device-writable")]
    StatusNotWritable(u64),
    #[error("status descriptor at {0:#x} has zero length or is outside guest memory")]
    StatusOutOfMemory(u64),
    #[error("header descriptor at {0:#x} is device-writable")]
    HeaderWritable(u64),
    #[error("header descriptor has length {0}, shorter than {HEADER_LEN}")]
    HeaderTooShort(u32),
    #[error("header at {0:#x} is outside guest memory")]
    HeaderOutOfMemory(u64),
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    #[error("data descriptor {index} has the wrong direction for request type {request_type}")]
    DataWrongDirection { index: usize, request_type: u32 },
    #[error("data descriptor {index} has zero length")]
    DataZeroLength { index: usize },
    #[error("data buffer {addr:#x}+{len:#x} is outside guest memory")]
    DataOutOfMemory { addr: u64, len: u32 },
    #[error("request data length {0} is not a multiple of the sector size")]
    LengthNotSectorMultiple(u64),
    #[error(
        "request at sector {sector} of {len} bytes goes past the capacity of {capacity} sectors"
    )]
    SectorOutOfRange {
        sector: u64,
        len: u64,
        capacity: u64,
    },
}

/// A refused request, and where to tell the guest if the status byte itself was usable.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub error: RequestError,
    /// `None` when the chain has no usable status byte: it is returned with length 0.
    pub status_addr: Option<GuestAddress>,
}

impl Rejected {
    /// The status byte the guest gets for this refusal.
    pub fn status(&self) -> u8 {
        match self.error {
            RequestError::UnsupportedType(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// What the guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
}

/// A validated request: every buffer lies in guest memory and points the right way.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    pub sector: u64,
    /// Data buffers in chain order.
    pub data: Vec<(GuestAddress, u32)>,
    pub status_addr: GuestAddress,
}

impl Request {
    /// Validates `chain` against guest memory and a disk of `capacity` sectors.
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        capacity: u64,
    ) -> Result<Request, Rejected> {
        let mem = chain.memory();
        let descs: Vec<Descriptor> = chain.clone().collect();
        let reject = |error, status_addr| Err(Rejected { error, status_addr });

        // The iterator stops silently on a loop or a bad `next`: a chain that ends on a
        // descriptor still flagged NEXT was cut short and cannot be trusted.
        let Some(last) = descs.last() else {
            return reject(RequestError::TooFewDescriptors(0), None);
        };
        if last.has_next() {
            return reject(RequestError::UnterminatedChain, None);
        }
        if !last.is_write_only() {
            return reject(RequestError::StatusNotWritable(last.addr().0), None);
        }
        if last.len() == 0 || !mem.check_range(last.addr(), 1) {
            return reject(RequestError::StatusOutOfMemory(last.addr().0), None);
        }
        let status_addr = Some(last.addr());
        if descs.len() < 2 {
            return reject(RequestError::TooFewDescriptors(descs.len()), status_addr);
        }

        let head = descs[0];
        if head.is_write_only() {
            return reject(RequestError::HeaderWritable(head.addr().0), status_addr);
        }
        if head.len() < HEADER_LEN {
            return reject(RequestError::HeaderTooShort(head.len()), status_addr);
        }
        let header: RequestHeader = match mem.read_obj(head.addr()) {
            Ok(h) => h,
            Err(_) => return reject(RequestError::HeaderOutOfMemory(head.addr().0), status_addr),
        };
        let raw_type = u32::from_le(header.request_type);
        let request_type = match raw_type {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            t => return reject(RequestError::UnsupportedType(t), status_addr),
        };
        let sector = u64::from_le(header.sector);

        let data_descs = &descs[1..descs.len() - 1];
        if data_descs.len() > SEG_MAX as usize {
            return reject(RequestError::TooManySegments(data_descs.len()), status_addr);
        }
        let mut data = Vec::with_capacity(data_descs.len());
        let mut total: u64 = 0;
        if request_type != RequestType::Flush {
            let device_writes = request_type != RequestType::Out;
            for (i, d) in data_descs.iter().enumerate() {
                let index = i + 1;
                if d.is_write_only() != device_writes {
                    return reject(
                        RequestError::DataWrongDirection {
                            index,
                            request_type: raw_type,
                        },
                        status_addr,
                    );
                }
                if d.len() == 0 {
                    return reject(RequestError::DataZeroLength { index }, status_addr);
                }
                if !mem.check_range(d.addr(), d.len() as usize) {
                    return reject(
                        RequestError::DataOutOfMemory {
                            addr: d.addr().0,
                            len: d.len(),
                        },
                        status_addr,
                    );
                }
                // At most SEG_MAX buffers of u32 length: cannot overflow a u64.
                total += u64::from(d.len());
                data.push((d.addr(), d.len()));
            }
        }

        match request_type {
            RequestType::In | RequestType::Out => {
                if !total.is_multiple_of(SECTOR_SIZE) {
                    return reject(RequestError::LengthNotSectorMultiple(total), status_addr);
                }
                let end = sector.checked_add(total / SECTOR_SIZE);
                if end.is_none_or(|end| end > capacity) {
                    return reject(
                        RequestError::SectorOutOfRange {
                            sector,
                            len: total,
                            capacity,
                        },
                        status_addr,
                    );
                }
            }
            RequestType::GetId if data.is_empty() => {
                return reject(RequestError::TooFewDescriptors(descs.len()), status_addr);
            }
            RequestType::GetId | RequestType::Flush => {}
        }

        Ok(Request {
            request_type,
            sector,
            data,
            status_addr: last.addr(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    use crate::devices::virtio::test_utils::{NEXT, WRITE as W};
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const CAPACITY: u64 = 8;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn write_header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        mem.write_obj(
            RequestHeader {
                request_type: t,
                _reserved: 0,
                sector,
            },
            GuestAddress(HDR),
        )
        .unwrap();
    }

    /// Builds the chain `descs` (NEXT flags set in order) and parses it.
    fn parse(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, Rejected> {
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        Request::parse(chain, CAPACITY)
    }

    fn err(r: Result<Request, Rejected>) -> Rejected {
        r.expect_err("hostile chain must be rejected")
    }

    #[test]
    fn parses_a_valid_read() {
        let mem = guest_memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 2);
        let r = parse(
            &mem,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, W),
                desc(DATA + 512, 1024, W),
                desc(STATUS, 1, W),
            ],
        )
        .unwrap();
        assert_eq!(r.request_type, RequestType::In);
        assert_eq!(r.sector, 2);
        assert_eq!(
            r.data,
            vec![(GuestAddress(DATA), 512), (GuestAddress(DATA + 512), 1024)]
        );
        assert_eq!(r.status_addr, GuestAddress(STATUS));
    }

    #[test]
    fn rejects_wrong_directions() {
        let mem = guest_memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        // Device-writable header.
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, W), desc(DATA, 512, W), desc(STATUS, 1, W)],
        ));
        assert_eq!(e.error, RequestError::HeaderWritable(HDR));
        assert_eq!(e.status_addr, Some(GuestAddress(STATUS)));
        assert_eq!(e.status(), status::IOERR);
        // Device-readable data buffer for a read.
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        ));
        assert!(matches!(
            e.error,
            RequestError::DataWrongDirection { index: 1, .. }
        ));
        // Device-writable data buffer for a write.
        write_header(&mem, VIRTIO_BLK_T_OUT, 0);
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
        ));
        assert!(matches!(
            e.error,
            RequestError::DataWrongDirection { index: 1, .. }
        ));
        // Read-only status: the chain is dropped.
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, 0)],
        ));
        assert_eq!(e.error, RequestError::StatusNotWritable(STATUS));
        assert_eq!(e.status_addr, None);
    }

    #[test]
    fn rejects_buffers_outside_guest_memory() {
        let mem = guest_memory();
        let beyond = 16 << 20;
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(beyond, 512, W), desc(STATUS, 1, W)],
        ));
        assert!(matches!(e.error, RequestError::DataOutOfMemory { .. }));
        // Straddling the end of memory.
        let e = err(parse(
            &mem,
            &[
                desc(HDR, 16, 0),
                desc(beyond - 256, 512, W),
                desc(STATUS, 1, W),
            ],
        ));
        assert!(matches!(e.error, RequestError::DataOutOfMemory { .. }));
        let e = err(parse(
            &mem,
            &[desc(beyond, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
        ));
        assert_eq!(e.error, RequestError::HeaderOutOfMemory(beyond));
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(u64::MAX, 1, W)],
        ));
        assert_eq!(e.error, RequestError::StatusOutOfMemory(u64::MAX));
        assert_eq!(e.status_addr, None);
    }

    #[test]
    fn rejects_zero_length_and_short_header() {
        let mem = guest_memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 0, W), desc(STATUS, 1, W)],
        ));
        assert_eq!(e.error, RequestError::DataZeroLength { index: 1 });
        let e = err(parse(
            &mem,
            &[desc(HDR, 8, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
        ));
        assert_eq!(e.error, RequestError::HeaderTooShort(8));
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 0, W)],
        ));
        assert_eq!(e.error, RequestError::StatusOutOfMemory(STATUS));
        let e = err(parse(&mem, &[desc(STATUS, 1, W)]));
        assert_eq!(e.error, RequestError::TooFewDescriptors(1));
    }

    #[test]
    fn rejects_sectors_beyond_capacity_and_bad_lengths() {
        let mem = guest_memory();
        write_header(&mem, VIRTIO_BLK_T_IN, CAPACITY - 1);
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
        ));
        assert!(matches!(e.error, RequestError::SectorOutOfRange { .. }));
        // Overflowing sector number.
        write_header(&mem, VIRTIO_BLK_T_OUT, u64::MAX);
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        ));
        assert!(matches!(e.error, RequestError::SectorOutOfRange { .. }));
        // Partial sector.
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 100, W), desc(STATUS, 1, W)],
        ));
        assert_eq!(e.error, RequestError::LengthNotSectorMultiple(100));
        // A 2 GiB buffer cannot be in 16 MiB of memory.
        let e = err(parse(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 1 << 31, W), desc(STATUS, 1, W)],
        ));
        assert!(matches!(e.error, RequestError::DataOutOfMemory { .. }));
        // Lengths summing past 4 GiB: virtio-queue cuts the chain, which we refuse.
        let e = err(parse(
            &mem,
            &[
                desc(HDR, 16, 0),
                desc(DATA, u32::MAX, W),
                desc(DATA, u32::MAX, W),
                desc(STATUS, 1, W),
            ],
        ));
        assert_eq!(e.error, RequestError::UnterminatedChain);
        // Unknown request type gets UNSUPP.
        write_header(&mem, 77, 0);
        let e = err(parse(&mem, &[desc(HDR, 16, 0), desc(STATUS, 1, W)]));
        assert_eq!(e.error, RequestError::UnsupportedType(77));
        assert_eq!(e.status(), status::UNSUPP);
    }

    #[test]
    fn rejects_descriptor_loops() {
        let mem = guest_memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&mem, 16);
        let n = NEXT;
        // 0 -> 1 -> 2 -> 1: the status descriptor points back into the chain.
        let descs = [
            RawDescriptor::from(Descriptor::new(HDR, 16, n, 1)),
            RawDescriptor::from(Descriptor::new(DATA, 512, n | W, 2)),
            RawDescriptor::from(Descriptor::new(STATUS, 1, n | W, 1)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        let e = Request::parse(chain, CAPACITY).unwrap_err();
        assert_eq!(e.error, RequestError::UnterminatedChain);
        assert_eq!(e.status_addr, None);
        // A `next` index outside the table.
        let q = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(Descriptor::new(HDR, 16, n, 1)),
            RawDescriptor::from(Descriptor::new(STATUS, 1, n | W, 300)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        let e = Request::parse(chain, CAPACITY).unwrap_err();
        assert_eq!(e.error, RequestError::UnterminatedChain);
    }

    /// Deterministic pseudo-random descriptor tables: parsing never panics, and whatever
    /// is accepted lies within guest memory and the disk.
    #[test]
    fn random_descriptor_tables_never_panic() {
        let mem = guest_memory();
        let mut next = crate::devices::virtio::test_utils::xorshift(0x5eed_1234_abcd_0001);
        let mut accepted = 0;
        for _ in 0..3000 {
            let q = MockSplitQueue::new(&mem, 16);
            let count = (next() % 6 + 1) as usize;
            let mut descs = Vec::new();
            for i in 0..count {
                let r = next();
                let addr = match r % 4 {
                    0 => HDR,
                    1 => DATA + (r >> 8) % 0x1000,
                    2 => (r >> 8) % (20 << 20),
                    _ => r,
                };
                let len = match (r >> 4) % 4 {
                    0 => 16,
                    1 => 512,
                    2 => 0,
                    _ => (r >> 32) as u32,
                };
                let mut flags = (r >> 40) as u16 & (W | NEXT);
                let next_idx = if (r >> 48).is_multiple_of(4) {
                    (r >> 50) as u16 % 20
                } else {
                    i as u16 + 1
                };
                if i + 1 == count && (r >> 56).is_multiple_of(2) {
                    flags &= !NEXT;
                }
                descs.push(RawDescriptor::from(Descriptor::new(
                    addr, len, flags, next_idx,
                )));
            }
            let t = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, 4, 8, 99][(next() % 5) as usize];
            write_header(&mem, t, next() % 12);
            q.add_desc_chains(&descs, 0).unwrap();
            let mut queue: Queue = q.create_queue().unwrap();
            let Some(chain) = queue.iter(&mem).unwrap().next() else {
                continue;
            };
            if let Ok(req) = Request::parse(chain, CAPACITY) {
                accepted += 1;
                for (addr, len) in &req.data {
                    assert!(mem.check_range(*addr, *len as usize));
                }
                if matches!(req.request_type, RequestType::In | RequestType::Out) {
                    let total: u64 = req.data.iter().map(|d| u64::from(d.1)).sum();
                    assert!(req.sector + total / SECTOR_SIZE <= CAPACITY);
                }
            }
        }
        // The generator must also produce valid chains, or the test proves little.
        assert!(accepted > 0);
    }
}
