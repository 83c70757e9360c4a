//! Parsing of one virtio-pmem request: a device-readable `virtio_pmem_req` (le32 type) and
//! a device-writable `virtio_pmem_resp` (le32 ret), in that order.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::REQ_TYPE_FLUSH;
use crate::devices::virtio::GuestMemoryMmap;

/// Length of the request and of the response.
const FIELD_LEN: u32 = 4;

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain does not terminate (loop, or next index out of the table)")]
    UnterminatedChain,
    #[error("descriptor chain has {0} descriptors, a request and a response are needed")]
    WrongLength(usize),
    #[error("request descriptor at {0:#x} is device-writable")]
    RequestWritable(u64),
    #[error("request descriptor at {addr:#x} is {len} bytes, or outside guest memory")]
    BadRequest { addr: u64, len: u32 },
    #[error("response descriptor at {0:#x} is not device-writable")]
    ResponseNotWritable(u64),
    #[error("response descriptor at {addr:#x} is {len} bytes, or outside guest memory")]
    BadResponse { addr: u64, len: u32 },
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
}

/// A valid flush request: where its response goes.
#[derive(Debug, PartialEq, Eq)]
pub struct FlushRequest {
    pub response: GuestAddress,
}

/// A refused request, and where to answer EIO if the response buffer itself was usable.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub error: RequestError,
    pub response: Option<GuestAddress>,
}

impl FlushRequest {
    /// Validates `chain` against guest memory.
    pub fn parse(chain: DescriptorChain<&GuestMemoryMmap>) -> Result<FlushRequest, Rejected> {
        let mem = chain.memory();
        // At most one descriptor more than needed, so a guest cannot make us collect a
        // long chain.
        let descs: Vec<Descriptor> = chain.clone().take(3).collect();
        let reject = |error, response| Err(Rejected { error, response });
        let Some(last) = descs.last() else {
            return reject(RequestError::WrongLength(0), None);
        };
        if last.has_next() && descs.len() < 3 {
            return reject(RequestError::UnterminatedChain, None);
        }
        if descs.len() != 2 {
            return reject(RequestError::WrongLength(descs.len()), None);
        }
        let (req, resp) = (descs[0], descs[1]);
        if !resp.is_write_only() {
            return reject(RequestError::ResponseNotWritable(resp.addr().0), None);
        }
        if resp.len() < FIELD_LEN || !mem.check_range(resp.addr(), FIELD_LEN as usize) {
            return reject(
                RequestError::BadResponse {
                    addr: resp.addr().0,
                    len: resp.len(),
                },
                None,
            );
        }
        let response = Some(resp.addr());
        if req.is_write_only() {
            return reject(RequestError::RequestWritable(req.addr().0), response);
        }
        let bad_request = RequestError::BadRequest {
            addr: req.addr().0,
            len: req.len(),
        };
        if req.len() < FIELD_LEN {
            return reject(bad_request, response);
        }
        let raw: u32 = match mem.read_obj(req.addr()) {
            Ok(v) => v,
            Err(_) => return reject(bad_request, response),
        };
        match u32::from_le(raw) {
            REQ_TYPE_FLUSH => Ok(FlushRequest {
                response: resp.addr(),
            }),
            t => reject(RequestError::UnsupportedType(t), response),
        }
    }
}
