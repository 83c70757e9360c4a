//! The virtio-pmem device state: the region's guest address and size (the configuration
//! space), and the flush queue, served against the backing file.

use std::fs::File;
use std::path::{Path, PathBuf};

use tracing::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_PMEM;
use vm_memory::Bytes;

use super::request::FlushRequest;
use super::{PmemBacking, QUEUE_SIZE, RESP_EIO, RESP_OK};
use crate::devices::virtio::{QueueError, VirtioCommon, VirtioDevice};

/// Errors of pmem device creation and queue processing.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    #[error("cannot duplicate the file descriptor of {path}: {source}")]
    CloneFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the queue eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("request queue of the pmem device: {0}")]
    Queue(#[from] QueueError),
}

/// A virtio-pmem device whose region the builder mapped at `start`.
pub struct Pmem {
    file: File,
    path: PathBuf,
    read_only: bool,
    common: VirtioCommon,
}

impl Pmem {
    /// The device for `backing`, placed at guest physical address `start`.
    pub fn new(backing: &PmemBacking, start: u64) -> Result<Self, PmemError> {
        let file = backing
            .file()
            .try_clone()
            .map_err(|source| PmemError::CloneFile {
                path: backing.path().to_owned(),
                source,
            })?;
        // struct virtio_pmem_config: start (le64), size (le64).
        let mut config = vec![0u8; 16];
        config[0..8].copy_from_slice(&start.to_le_bytes());
        config[8..16].copy_from_slice(&backing.region_len().to_le_bytes());
        Ok(Self {
            file,
            path: backing.path().to_owned(),
            read_only: backing.read_only(),
            common: VirtioCommon::new(VIRTIO_ID_PMEM, 0, &[QUEUE_SIZE], config)
                .map_err(PmemError::EventFd)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves every available request, then interrupts the guest if it wants to know.
    pub fn process_queue(&mut self) -> Result<(), PmemError> {
        let Some(active) = self.common.active_mut() else {
            return Ok(());
        };
        active.serve_queue(0, |chain, mem| {
            let answer = match FlushRequest::parse(chain) {
                Ok(req) => {
                    let ret = match flush(&self.file, self.read_only) {
                        Ok(()) => RESP_OK,
                        Err(e) => {
                            warn!(path = %self.path.display(), error = %e, "virtio-pmem: flush failed");
                            RESP_EIO
                        }
                    };
                    Some((req.response, ret))
                }
                Err(rejected) => {
                    warn!(error = %rejected.error, "virtio-pmem: request rejected");
                    rejected.response.map(|addr| (addr, RESP_EIO))
                }
            };
            match answer {
                Some((addr, ret)) if mem.write_obj(ret.to_le(), addr).is_ok() => 4,
                _ => 0,
            }
        })?;
        Ok(())
    }
}

/// Makes what the guest wrote durable: the file's data (the shared mapping's dirty pages are
/// the file's page cache). Nothing to do for a read-only region.
fn flush(file: &File, read_only: bool) -> std::io::Result<()> {
    if read_only {
        return Ok(());
    }
    file.sync_data()
}

impl VirtioDevice for Pmem {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::pmem::REQ_TYPE_FLUSH;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::{GuestMemoryMmap, IrqTrigger, IrqType};
    use std::io::Write;
    use std::sync::Arc;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    use crate::devices::virtio::test_utils::{NEXT, WRITE as W};
    const REQ: u64 = 0x10_0000;
    const RESP: u64 = 0x20_0000;

    struct Fixture {
        _file: tempfile::NamedTempFile,
        _backing: PmemBacking,
        mem: GuestMemoryMmap,
        pmem: Pmem,
        irq: Arc<IrqTrigger>,
    }

    fn fixture(read_only: bool) -> Fixture {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[1u8; 3 << 20]).unwrap();
        let backing = PmemBacking::open(file.path(), read_only, false).unwrap();
        let pmem = Pmem::new(&backing, 0x1_4000_0000).unwrap();
        Fixture {
            _file: file,
            _backing: backing,
            mem: guest_memory(),
            pmem,
            irq: Arc::new(IrqTrigger::new().unwrap()),
        }
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Submits one chain (descriptors given with their flags and next), runs the device,
    /// returns (response word, used length).
    fn submit(f: &mut Fixture, descs: &[RawDescriptor]) -> (u32, u32) {
        f.mem.write_obj(0xdead_beefu32, GuestAddress(RESP)).unwrap();
        let q = MockSplitQueue::new(&f.mem, 16);
        q.add_desc_chains(descs, 0).unwrap();
        let queue: Queue = q.create_queue().unwrap();
        f.pmem.reset();
        f.pmem
            .activate(f.mem.clone(), f.irq.clone(), vec![queue])
            .unwrap();
        f.pmem.process_queue().unwrap();
        assert_eq!(
            q.used().idx().load(),
            1,
            "the chain is returned to the guest"
        );
        let used = q.used().ring().ref_at(0).unwrap().load();
        (f.mem.read_obj(GuestAddress(RESP)).unwrap(), used.len())
    }

    fn flush_chain() -> [RawDescriptor; 2] {
        [d(REQ, 4, NEXT, 1), d(RESP, 4, W, 0)]
    }

    #[test]
    fn config_space_is_the_region() {
        let f = fixture(true);
        let mut v = [0u8; 8];
        f.pmem.read_config(0, &mut v);
        assert_eq!(u64::from_le_bytes(v), 0x1_4000_0000);
        f.pmem.read_config(8, &mut v);
        assert_eq!(
            u64::from_le_bytes(v),
            4 << 20,
            "3 MiB rounded up to 2 MiB blocks"
        );
        assert_eq!(f.pmem.device_type(), 27);
        assert_eq!(f.pmem.avail_features(), 1 << VIRTIO_F_VERSION_1);
    }

    #[test]
    fn flush_answers_ok_on_both_kinds_of_region() {
        for read_only in [true, false] {
            let mut f = fixture(read_only);
            f.mem.write_obj(REQ_TYPE_FLUSH, GuestAddress(REQ)).unwrap();
            assert_eq!(submit(&mut f, &flush_chain()), (RESP_OK, 4));
            assert_eq!(f.irq.status() & IrqType::Vring as u32, 1);
        }
    }

    #[test]
    fn hostile_chains_get_eio_or_are_dropped() {
        let mut f = fixture(false);
        // Unknown type: EIO.
        f.mem.write_obj(7u32, GuestAddress(REQ)).unwrap();
        assert_eq!(submit(&mut f, &flush_chain()), (RESP_EIO, 4));
        f.mem.write_obj(REQ_TYPE_FLUSH, GuestAddress(REQ)).unwrap();
        // Response not writable: dropped, the word untouched.
        let (ret, len) = submit(&mut f, &[d(REQ, 4, NEXT, 1), d(RESP, 4, 0, 0)]);
        assert_eq!((ret, len), (0xdead_beef, 0));
        // Zero-length response, response outside guest memory.
        assert_eq!(submit(&mut f, &[d(REQ, 4, NEXT, 1), d(RESP, 0, W, 0)]).1, 0);
        assert_eq!(
            submit(&mut f, &[d(REQ, 4, NEXT, 1), d(1 << 40, 4, W, 0)]).1,
            0
        );
        // Request device-writable, too short, or outside guest memory: EIO.
        assert_eq!(
            submit(&mut f, &[d(REQ, 4, W | NEXT, 1), d(RESP, 4, W, 0)]),
            (RESP_EIO, 4)
        );
        assert_eq!(
            submit(&mut f, &[d(REQ, 2, NEXT, 1), d(RESP, 4, W, 0)]),
            (RESP_EIO, 4)
        );
        assert_eq!(
            submit(&mut f, &[d(1 << 40, 4, NEXT, 1), d(RESP, 4, W, 0)]),
            (RESP_EIO, 4)
        );
        // A lone descriptor, three descriptors, a loop: dropped.
        assert_eq!(submit(&mut f, &[d(RESP, 4, W, 0)]).1, 0);
        let three = [d(REQ, 4, NEXT, 1), d(REQ, 4, NEXT, 2), d(RESP, 4, W, 0)];
        assert_eq!(submit(&mut f, &three).1, 0);
        let looped = [d(REQ, 4, NEXT, 1), d(RESP, 4, W | NEXT, 0)];
        assert_eq!(submit(&mut f, &looped), (0xdead_beef, 0));
    }
}
