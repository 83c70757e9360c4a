//! The virtio-fs device state: its tag and request queue count (the configuration space), the
//! share it serves, and the worker thread that serves it while the driver has it active.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::worker::Worker;
use super::{Share, HIPRIO_QUEUE_SIZE, REQUEST_QUEUE, REQUEST_QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::{
    ActivateError, ActiveState, GuestMemoryGate, GuestMemoryMmap, IrqTrigger, VirtioCommon,
    VirtioDevice,
};

/// Errors of creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Share(#[from] super::ShareError),
    #[error("tag {tag:?} must be 1 to {TAG_LEN} bytes")]
    TagLength { tag: String },
    #[error("cannot create the queue eventfds: {0}")]
    EventFd(std::io::Error),
}

/// A virtio-fs device serving one share under one tag.
pub struct Fs {
    tag: String,
    share: Arc<Share>,
    worker: Option<Worker>,
    gate: GuestMemoryGate,
    common: VirtioCommon,
}

impl Fs {
    /// The device the guest mounts as `mount -t virtiofs TAG DIR`; its worker writes guest
    /// memory only while it holds `gate` shared.
    pub fn new(tag: &str, share: Share, gate: GuestMemoryGate) -> Result<Self, FsError> {
        Ok(Self {
            tag: tag.to_owned(),
            share: Arc::new(share),
            worker: None,
            gate,
            common: VirtioCommon::new(
                VIRTIO_ID_FS,
                (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX),
                &[HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE],
                config_space(tag)?,
            )
            .map_err(FsError::EventFd)?,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn share(&self) -> &Share {
        &self.share
    }

    /// Stops the worker and gives its queues back to the device state.
    fn stop_worker(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        let state = worker.stop();
        if let (Some(state), Some(active)) = (state, self.common.active_mut()) {
            active.queues = state.queues;
        }
    }

    /// Hands the queues to a new worker thread.
    fn start_worker(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.common.has_feature(VIRTIO_RING_F_EVENT_IDX);
        let Some(active) = self.common.active_mut() else {
            return Ok(());
        };
        // The worker then tells the driver when to kick (avail_event) and interrupts only when
        // the driver asks (used_event): fewer exits under a stream of requests.
        for queue in &mut active.queues {
            queue.set_event_idx(event_idx);
        }
        let state = ActiveState {
            mem: active.mem.clone(),
            interrupt: active.interrupt.clone(),
            queues: std::mem::take(&mut active.queues),
        };
        let kicks = self
            .common
            .queue_events()
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(ActivateError::Thread)?;
        let worker = Worker::spawn(self.share.clone(), state, kicks, self.gate.clone())
            .map_err(ActivateError::Thread)?;
        self.worker = Some(worker);
        Ok(())
    }
}

/// `struct virtio_fs_config`: the tag, NUL-padded (not terminated when it fills all 36 bytes),
/// then num_request_queues (le32).
fn config_space(tag: &str) -> Result<Vec<u8>, FsError> {
    if tag.is_empty() || tag.len() > TAG_LEN {
        return Err(FsError::TagLength {
            tag: tag.to_owned(),
        });
    }
    let mut config = vec![0u8; TAG_LEN + 4];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
    Ok(config)
}

impl VirtioDevice for Fs {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.common.activate(mem, interrupt, queues)?;
        if let Err(e) = self.start_worker() {
            self.common.reset();
            return Err(e);
        }
        // Whatever the driver queued before DRIVER_OK.
        self.common.kick_queue(REQUEST_QUEUE);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.common.reset();
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// The worker thread, not the event loop, polls the queue events; the device is on the event
/// loop only as every virtio device is.
impl MutEventSubscriber for Fs {
    fn init(&mut self, _ops: &mut EventOps) {}

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        error!(
            fd = events.fd(),
            tag = %self.tag,
            "virtio-fs: unexpected event on the event loop"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::fs::request::tests::{d, message, ROOT};
    use crate::devices::virtio::fs::{HIPRIO_QUEUE, TAG_LEN};
    use crate::devices::virtio::test_utils::{guest_memory, NEXT, WRITE};
    use crate::devices::virtio::IrqType;
    use fuse_backend_rs::abi::fuse_abi::{CreateIn, InitIn, Opcode, OutHeader};
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::{ByteValued, Bytes, GuestAddress};

    fn share_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn config_space_holds_the_tag_and_one_request_queue() {
        let dir = share_dir();
        let fs = Fs::new(
            "vol0",
            Share::open(dir.path(), false).unwrap(),
            Default::default(),
        )
        .unwrap();
        let mut tag = [0xffu8; TAG_LEN];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..5], b"vol0\0");
        assert!(tag[4..].iter().all(|&b| b == 0));
        let mut n = [0u8; 4];
        fs.read_config(TAG_LEN as u64, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes(), [128, 1024]);
        assert_eq!(
            fs.avail_features(),
            (1 << VIRTIO_F_VERSION_1)
                | (1 << VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << VIRTIO_RING_F_EVENT_IDX)
        );

        let long = "t".repeat(TAG_LEN);
        let fs = Fs::new(
            &long,
            Share::open(dir.path(), false).unwrap(),
            Default::default(),
        )
        .unwrap();
        let mut tag = [0u8; TAG_LEN];
        fs.read_config(0, &mut tag);
        assert_eq!(tag, long.as_bytes());
        for bad in ["", &"t".repeat(TAG_LEN + 1)] {
            let e = Fs::new(
                bad,
                Share::open(dir.path(), false).unwrap(),
                Default::default(),
            )
            .err();
            assert!(matches!(e, Some(FsError::TagLength { .. })), "{bad:?}");
        }
    }

    /// Waits until the used ring of `q` holds `n` entries.
    fn wait_used(q: &MockSplitQueue<'_, GuestMemoryMmap>, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.used().idx().load() < n {
            assert!(
                Instant::now() < deadline,
                "the worker did not serve the request within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_worker_serves_kicks_keeps_guest_modes_and_stops_on_reset() {
        let dir = share_dir();
        let mem = guest_memory();
        let mut fs = Fs::new(
            "vol0",
            Share::open(dir.path(), false).unwrap(),
            Default::default(),
        )
        .unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());

        // INIT and a CREATE of mode 0666 with the guest's umask 0 queued before activation.
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: 0,
        };
        let create = CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
            mode: libc::S_IFREG | 0o666,
            umask: 0,
            fuse_flags: 0,
        };
        let msgs = [
            message(Opcode::Init, 0, &[init.as_slice()]),
            message(Opcode::Create, ROOT, &[create.as_slice(), b"made\0"]),
        ];
        let q = MockSplitQueue::new(&mem, 16);
        let mut descs = Vec::new();
        for (i, msg) in msgs.iter().enumerate() {
            let req = 0x10_0000 + i as u64 * 0x1000;
            let resp = 0x20_0000 + i as u64 * 0x1000;
            mem.write_slice(msg, GuestAddress(req)).unwrap();
            let first = (i * 2) as u16;
            descs.push(d(req, msg.len() as u32, NEXT, first + 1));
            descs.push(d(resp, 0x1000, WRITE, 0));
        }
        q.add_desc_chains(&descs, 0).unwrap();
        let queues = vec![Queue::new(128).unwrap(), q.create_queue().unwrap()];
        fs.activate(mem.clone(), irq.clone(), queues).unwrap();
        wait_used(&q, 2);
        for i in 0..2u64 {
            let h: OutHeader = mem.read_obj(GuestAddress(0x20_0000 + i * 0x1000)).unwrap();
            assert_eq!(h.error, 0, "request {i}");
        }
        let mode = std::fs::metadata(dir.path().join("made"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666, "the VMM's umask must not apply");
        assert_ne!(irq.status() & IrqType::Vring as u32, 0);

        // Reset stops the worker and forgets the session; the device can start again.
        assert!(fs.share().in_session());
        fs.reset();
        assert!(!fs.is_activated() && fs.worker.is_none());
        assert!(!fs.share().in_session());
        let queues = vec![Queue::new(128).unwrap(), Queue::new(1024).unwrap()];
        fs.activate(mem, irq, queues).unwrap();
        fs.common().kick_queue(HIPRIO_QUEUE);
        drop(fs);
    }
}
