//! The virtio-blk device state: the backing file, features, configuration space, and the
//! processing of the request queue once the driver activated the device.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::warn;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::Bytes;

use super::request::{Request, RequestType};
use super::{status, DISK_ID_LEN, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX};
use crate::devices::virtio::{QueueError, VirtioCommon, VirtioDevice};

/// Errors of block device creation and queue processing.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the size of disk file {path}: {source}")]
    Metadata {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the queue eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("request queue of the block device: {0}")]
    Queue(#[from] QueueError),
}

/// A virtio-blk device backed by a file.
pub struct Block {
    disk: File,
    path: PathBuf,
    read_only: bool,
    capacity: u64,
    disk_id: [u8; DISK_ID_LEN],
    common: VirtioCommon,
}

impl Block {
    /// Opens `path` (read-only when `read_only`); its size in whole sectors is the capacity.
    pub fn new(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let disk = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        let meta = disk.metadata().map_err(|source| BlockError::Metadata {
            path: path.to_owned(),
            source,
        })?;
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let size = (&disk)
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Metadata {
                path: path.to_owned(),
                source,
            })?;
        let capacity = size / SECTOR_SIZE;

        // The serial the guest reads with GET_ID (/sys/block/vdX/serial): the file's
        // device and inode numbers, unique on the host.
        let mut disk_id = [0u8; DISK_ID_LEN];
        let id = format!("{:x}{:x}", meta.dev(), meta.ino());
        let n = id.len().min(DISK_ID_LEN);
        disk_id[..n].copy_from_slice(&id.as_bytes()[..n]);

        let mut features = (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_FLUSH);
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }

        // struct virtio_blk_config: capacity (u64), size_max (u32), seg_max (u32),
        // geometry (4 bytes), blk_size (u32).
        let mut config = vec![0u8; 24];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());

        Ok(Self {
            disk,
            path: path.to_owned(),
            read_only,
            capacity,
            disk_id,
            common: VirtioCommon::new(VIRTIO_ID_BLOCK, features, &[QUEUE_SIZE], config)
                .map_err(BlockError::EventFd)?,
        })
    }

    /// The disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GET_ID answer.
    pub fn disk_id(&self) -> &[u8; DISK_ID_LEN] {
        &self.disk_id
    }

    /// Writes everything the guest wrote through to the disk (on VMM exit).
    pub fn flush(&self) -> std::io::Result<()> {
        self.disk.sync_all()
    }

    /// Serves every available request, then interrupts the guest if it wants to know.
    pub fn process_queue(&mut self) -> Result<(), BlockError> {
        let Some(active) = self.common.active_mut() else {
            return Ok(());
        };
        active.serve_queue(0, |chain, mem| {
            let req = match Request::parse(chain, self.capacity) {
                Ok(req) => req,
                Err(rejected) => {
                    warn!(error = %rejected.error, "virtio-blk: request rejected");
                    return match rejected.status_addr {
                        Some(addr) if mem.write_obj(rejected.status(), addr).is_ok() => 1,
                        _ => 0,
                    };
                }
            };
            let (status, written) = if self.read_only && req.request_type == RequestType::Out {
                (status::IOERR, 0)
            } else {
                match req.execute(&self.disk, &self.disk_id, mem) {
                    Ok(n) => (status::OK, n),
                    Err(e) => {
                        warn!(path = %self.path.display(), error = %e, "virtio-blk: request failed");
                        (status::IOERR, 0)
                    }
                }
            };
            match mem.write_obj(status, req.status_addr) {
                Ok(()) => written + 1,
                Err(_) => 0,
            }
        })?;
        Ok(())
    }
}

impl VirtioDevice for Block {
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
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::{ActivateError, GuestMemoryMmap, IrqTrigger, IrqType};
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::sync::Arc;
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;

    use crate::devices::virtio::test_utils::{NEXT, WRITE as W};
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    struct Fixture {
        file: tempfile::NamedTempFile,
        mem: GuestMemoryMmap,
        block: Block,
        irq: Arc<IrqTrigger>,
    }

    fn fixture(read_only: bool) -> Fixture {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..8 * 512).map(|i| (i / 512) as u8).collect();
        file.write_all(&content).unwrap();
        let block = Block::new(file.path(), read_only).unwrap();
        Fixture {
            file,
            mem: guest_memory(),
            block,
            irq: Arc::new(IrqTrigger::new().unwrap()),
        }
    }

    fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        mem.write_obj(t.to_le(), GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// Submits one chain, runs the device, returns (status byte, used length).
    fn submit(f: &mut Fixture, descs: &[RawDescriptor]) -> (u8, u32) {
        let q = MockSplitQueue::new(&f.mem, 16);
        let mut descs = descs.to_vec();
        let last = descs.len() - 1;
        for (i, raw) in descs.iter_mut().enumerate() {
            let mut desc = Descriptor::from(*raw);
            if i < last {
                desc.set_flags(desc.flags() | NEXT);
                desc.set_next(i as u16 + 1);
            }
            *raw = RawDescriptor::from(desc);
        }
        q.add_desc_chains(&descs, 0).unwrap();
        let queue: Queue = q.create_queue().unwrap();
        f.block.reset();
        f.block
            .activate(f.mem.clone(), f.irq.clone(), vec![queue])
            .unwrap();
        f.block.process_queue().unwrap();
        let used = q.used().ring().ref_at(0).unwrap().load();
        assert_eq!(
            q.used().idx().load(),
            1,
            "the chain is returned to the guest"
        );
        assert_eq!(f.irq.status() & IrqType::Vring as u32, 1);
        let status: u8 = f.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (status, used.len())
    }

    fn file_bytes(f: &mut Fixture) -> Vec<u8> {
        let mut v = Vec::new();
        let file = f.file.as_file_mut();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn config_and_features() {
        let f = fixture(false);
        let mut cap = [0u8; 8];
        f.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut seg = [0u8; 4];
        f.block.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        assert_eq!(f.block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f.block.avail_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
        let ro = fixture(true);
        assert_ne!(ro.block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn activation_wants_one_queue_and_a_reset_between_two() {
        let mut f = fixture(false);
        let queue = || Queue::new(QUEUE_SIZE).unwrap();
        let e = f
            .block
            .activate(f.mem.clone(), f.irq.clone(), vec![queue(), queue()]);
        assert!(matches!(
            e,
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 2
            })
        ));
        assert!(!f.block.is_activated());
        f.block
            .activate(f.mem.clone(), f.irq.clone(), vec![queue()])
            .unwrap();
        let e = f
            .block
            .activate(f.mem.clone(), f.irq.clone(), vec![queue()]);
        assert!(matches!(e, Err(ActivateError::AlreadyActive)));
        f.block.reset();
        assert!(!f.block.is_activated());
        f.block
            .activate(f.mem.clone(), f.irq.clone(), vec![queue()])
            .unwrap();
    }

    #[test]
    fn read_returns_file_bytes() {
        let mut f = fixture(false);
        header(&f.mem, VIRTIO_BLK_T_IN, 3);
        let (status, len) = submit(
            &mut f,
            &[
                d(HDR, 16, 0),
                d(DATA, 512, W),
                d(DATA + 4096, 512, W),
                d(STATUS, 1, W),
            ],
        );
        assert_eq!(status, status::OK);
        assert_eq!(len, 1025);
        let mut buf = [0u8; 512];
        f.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf.iter().all(|&b| b == 3));
        f.mem
            .read_slice(&mut buf, GuestAddress(DATA + 4096))
            .unwrap();
        assert!(buf.iter().all(|&b| b == 4));
    }

    #[test]
    fn write_lands_in_the_file_and_flush_succeeds() {
        let mut f = fixture(false);
        let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        f.mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
        header(&f.mem, VIRTIO_BLK_T_OUT, 5);
        let (status, len) = submit(&mut f, &[d(HDR, 16, 0), d(DATA, 1024, 0), d(STATUS, 1, W)]);
        assert_eq!(status, status::OK);
        assert_eq!(len, 1);
        let bytes = file_bytes(&mut f);
        assert_eq!(&bytes[5 * 512..7 * 512], &payload[..]);
        assert!(bytes[4 * 512..5 * 512].iter().all(|&b| b == 4));
        assert!(bytes[7 * 512..].iter().all(|&b| b == 7));

        header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
        let (status, len) = submit(&mut f, &[d(HDR, 16, 0), d(STATUS, 1, W)]);
        assert_eq!((status, len), (status::OK, 1));
    }

    #[test]
    fn get_id_returns_the_disk_serial() {
        let mut f = fixture(false);
        header(&f.mem, VIRTIO_BLK_T_GET_ID, 0);
        let (status, len) = submit(&mut f, &[d(HDR, 16, 0), d(DATA, 20, W), d(STATUS, 1, W)]);
        assert_eq!((status, len), (status::OK, 21));
        let mut id = [0u8; 20];
        f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, f.block.disk_id());
        assert_ne!(id[0], 0);
    }

    #[test]
    fn read_only_disk_rejects_writes() {
        let mut f = fixture(true);
        f.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        header(&f.mem, VIRTIO_BLK_T_OUT, 0);
        let (status, len) = submit(&mut f, &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)]);
        assert_eq!((status, len), (status::IOERR, 1));
        assert!(file_bytes(&mut f)[..512].iter().all(|&b| b == 0));
        // Reads still work.
        header(&f.mem, VIRTIO_BLK_T_IN, 1);
        let (status, _) = submit(&mut f, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]);
        assert_eq!(status, status::OK);
    }

    #[test]
    fn hostile_chains_get_an_error_or_are_dropped() {
        let mut f = fixture(false);
        let original = file_bytes(&mut f);
        header(&f.mem, VIRTIO_BLK_T_OUT, 7);
        // Write past the end of the disk.
        let (status, len) = submit(&mut f, &[d(HDR, 16, 0), d(DATA, 1024, 0), d(STATUS, 1, W)]);
        assert_eq!((status, len), (status::IOERR, 1));
        // Status byte not writable: dropped with length 0, status untouched.
        f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let (status, len) = submit(&mut f, &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, 0)]);
        assert_eq!((status, len), (0xff, 0));
        // Data outside guest memory.
        header(&f.mem, VIRTIO_BLK_T_IN, 0);
        let (status, len) = submit(
            &mut f,
            &[d(HDR, 16, 0), d(1 << 40, 512, W), d(STATUS, 1, W)],
        );
        assert_eq!((status, len), (status::IOERR, 1));
        assert_eq!(file_bytes(&mut f), original);
    }
}
