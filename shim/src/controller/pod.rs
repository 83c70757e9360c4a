//! A pod in one VM: the pod's VM boots with empty disk slots, and each container that joins
//! it later gets its image written to the next free slot and is created in the running VM.

use std::fs;
use std::path::{Path, PathBuf};

use crate::agent_client::{AgentClient, RootfsDevice, StdioSet};

use super::bundle::BundleSpec;
use super::image::Image;
use super::sandbox::{Sandbox, ROOTFS_FSTYPE};
use super::state::Record;
use super::timing::Phases;
use super::Error;

/// Size of each empty disk slot of a pod VM (sparse; an image must fit).
pub const POD_SLOT_BYTES: u64 = 1 << 30;
/// Slots are the virtio-blk disks `vda` to `vdx`.
const MAX_SLOTS: usize = 24;

impl Sandbox {
    /// `create` for a caller that relays stdio itself (the containerd shim): the streams of
    /// `stdio` (or the tty, when the spec asks for a terminal) are announced and wait for the
    /// caller to attach them; the VMM keeps running after we return. A pod's VM gets `slots`
    /// empty disks on which the pod's other containers later receive their images
    /// (`join_pod`). Returns the record, a connected client and the init's pid in the guest.
    pub fn create_pod(
        &self,
        id: &str,
        bundle: &Path,
        stdio: StdioSet,
        slots: usize,
    ) -> Result<(Record, AgentClient, u32), Error> {
        let mut phases = Phases::new(self.cfg.debug);
        let spec = BundleSpec::load(bundle)?;
        let created = self.create_vm(id, &spec, stdio, &mut phases, None, slots)?;
        created.vmm.detach();
        let pid = created
            .client
            .container_state(id)
            .map(|s| s.pid)
            .unwrap_or(0);
        Ok((created.record, created.client, pid))
    }

    /// Creates container `id` (spec `spec_json`, rootfs from `bundle`) in the running VM of
    /// pod `pod_id`: its image is written to the pod's next unused disk slot and mounted from
    /// there. Returns the init's pid in the guest.
    pub fn join_pod(
        &self,
        pod_id: &str,
        id: &str,
        bundle: &Path,
        spec_json: &str,
        stdio: StdioSet,
        client: &AgentClient,
    ) -> Result<u32, Error> {
        let spec = BundleSpec::load(bundle)?;
        let pod = self.root.load(pod_id)?;
        let member = pod.state_dir.join("members").join(id);
        fs::create_dir_all(&member).map_err(|source| Error::Io {
            what: format!("creating {}", member.display()),
            source,
        })?;
        let result = (|| {
            let Image { key, path } = self.cache.acquire(&spec.rootfs, &member)?;
            fs::write(member.join("image-key"), &key).map_err(|source| Error::Io {
                what: format!("writing {}", member.join("image-key").display()),
                source,
            })?;
            let (slot, device) = claim_slot(&pod.state_dir, id)?;
            copy_into_slot(&path, &slot)?;
            let rootfs = RootfsDevice {
                device,
                fstype: ROOTFS_FSTYPE.into(),
                ..RootfsDevice::default()
            };
            client.create_container(id, spec_json, &rootfs, stdio, spec.terminal)?;
            Ok(client.container_state(id).map(|s| s.pid).unwrap_or(0))
        })();
        if result.is_err() {
            self.leave_pod(pod_id, id);
        }
        result
    }

    /// Forgets a container that joined pod `pod_id` (after RemoveContainer): its claim on its
    /// image. Its disk slot stays used: the guest may still cache the old blocks.
    pub fn leave_pod(&self, pod_id: &str, id: &str) {
        let Ok(pod) = self.root.load(pod_id) else {
            return;
        };
        let member = pod.state_dir.join("members").join(id);
        if let Ok(key) = fs::read_to_string(member.join("image-key")) {
            if let Err(e) = self.cache.release(&key, &member) {
                tracing::warn!("releasing image {key}: {e}");
            }
        }
        let _ = fs::remove_dir_all(&member);
    }
}

/// The sparse slot files of a new pod VM in its state directory.
pub(super) fn pod_slots(dir: &Path, slots: usize) -> Result<Vec<PathBuf>, Error> {
    (0..slots)
        .map(|n| {
            let path = dir.join(format!("slot-{n}.img"));
            fs::File::create(&path)
                .and_then(|f| f.set_len(POD_SLOT_BYTES))
                .map_err(|source| Error::Io {
                    what: format!("creating disk slot {}", path.display()),
                    source,
                })?;
            Ok(path)
        })
        .collect()
}

/// Takes the first unused slot of a pod for container `id`: its file and guest device
/// (slot n is the n-th virtio-blk disk: vda, vdb, ...; the pod's own image is on virtio-pmem).
fn claim_slot(dir: &Path, id: &str) -> Result<(PathBuf, String), Error> {
    for n in 0.. {
        let slot = dir.join(format!("slot-{n}.img"));
        if !slot.exists() || n >= MAX_SLOTS {
            break;
        }
        let marker = dir.join(format!("slot-{n}.used"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            Ok(mut f) => {
                let _ = std::io::Write::write_all(&mut f, id.as_bytes());
                let device = format!("vd{}", (b'a' + n as u8) as char);
                return Ok((slot, device));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(Error::Io {
                    what: format!("claiming {}", marker.display()),
                    source,
                })
            }
        }
    }
    Err(Error::Container {
        id: id.to_string(),
        reason: format!(
            "its pod's VM has no unused disk slot left in {} (a pod VM takes a fixed number of containers over its life)",
            dir.display()
        ),
    })
}

/// Writes an image over the start of a slot (the slot keeps its size: the guest sized the
/// disk at boot).
fn copy_into_slot(image: &Path, slot: &Path) -> Result<(), Error> {
    let io = |what: String| move |source| Error::Io { what, source };
    let len = fs::metadata(image)
        .map_err(io(format!("reading {}", image.display())))?
        .len();
    if len > POD_SLOT_BYTES {
        return Err(Error::Io {
            what: format!("image {} ({len} bytes)", image.display()),
            source: std::io::Error::other(format!(
                "larger than a pod disk slot ({POD_SLOT_BYTES} bytes)"
            )),
        });
    }
    let mut from = fs::File::open(image).map_err(io(format!("reading {}", image.display())))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .open(slot)
        .map_err(io(format!("writing {}", slot.display())))?;
    std::io::copy(&mut from, &mut to).map_err(io(format!("writing {}", slot.display())))?;
    to.sync_all()
        .map_err(io(format!("writing {}", slot.display())))?;
    Ok(())
}
