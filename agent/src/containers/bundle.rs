//! A container's bundle in the guest: the rootfs mounted from its block device under a writable
//! overlay, the config.json the runtime crate reads, and the record of what to undo on removal.
//!
//! Layout under the run directory: `containers/<id>/{lower,upper,rootfs,config.json}` and the
//! runtime's state in `state/<id>/`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use thiserror::Error;

/// Errors preparing or removing a container's filesystem.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    BadId(#[from] runtime::container_id::InvalidId),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("oci_spec_json: {0}")]
    BadSpec(String),
    #[error("rootfs.device: {device} is neither a block device nor a directory: {source}")]
    Device {
        device: String,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
}

/// The container's root filesystem as the host describes it.
#[derive(Debug, Clone, Default)]
pub struct RootfsSource {
    /// "vdb", "/dev/vdb", or (host test runs) a directory used as the lower layer.
    pub device: String,
    pub fstype: String,
    pub options: Vec<String>,
    pub upper_device: String,
    pub upper_fstype: String,
}

/// A prepared bundle: where it is and the mounts to undo, innermost last.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Bundle {
    /// Unmounts everything (lazily, so a stray process cannot pin it) and removes the dir.
    pub fn remove(self) {
        for target in self.mounts.iter().rev() {
            if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
                log::warn!("cannot unmount {}: {e}", target.display());
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            log::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// The bundles of this sandbox's containers, by container id.
pub struct Bundles {
    run_dir: PathBuf,
    bundles: Mutex<HashMap<String, Bundle>>,
}

impl Bundles {
    pub fn new(run_dir: PathBuf) -> Bundles {
        Bundles {
            run_dir,
            bundles: Mutex::new(HashMap::new()),
        }
    }

    /// Where the runtime keeps its per-container state.
    pub fn state_root(&self) -> PathBuf {
        self.run_dir.join("state")
    }

    /// The bundle directory of container `id`.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join("containers").join(id)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn exists(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Mounts the rootfs and writes config.json (root.path pointing at it, process.terminal
    /// as requested). On error nothing is left mounted.
    pub fn prepare(
        &self,
        id: &str,
        spec_json: &str,
        rootfs: &RootfsSource,
        terminal: bool,
    ) -> Result<PathBuf, Error> {
        runtime::container_id::validate(id)?;
        let mut bundles = self.lock();
        if bundles.contains_key(id) {
            return Err(Error::Exists(id.to_string()));
        }
        let config = patch_spec(spec_json, terminal)?;
        let dir = self.bundle_dir(id);
        let mut bundle = Bundle {
            dir: dir.clone(),
            mounts: Vec::new(),
        };
        match mount_rootfs(&mut bundle, rootfs).and_then(|()| {
            let path = dir.join("config.json");
            fs::write(&path, config).map_err(|source| Error::Write { path, source })
        }) {
            Ok(()) => {
                bundles.insert(id.to_string(), bundle);
                Ok(dir)
            }
            Err(e) => {
                bundle.remove();
                Err(e)
            }
        }
    }

    /// Forgets the container and undoes its mounts.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let bundle = self
            .lock()
            .remove(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        bundle.remove();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bundle>> {
        self.bundles.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The host's config.json with root.path set to our overlay and process.terminal as asked.
fn patch_spec(spec_json: &str, terminal: bool) -> Result<String, Error> {
    let mut spec: serde_json::Value =
        serde_json::from_str(spec_json).map_err(|e| Error::BadSpec(e.to_string()))?;
    let object = spec
        .as_object_mut()
        .ok_or_else(|| Error::BadSpec("not a JSON object".into()))?;
    let root = object
        .entry("root")
        .or_insert_with(|| serde_json::json!({}));
    let root = root
        .as_object_mut()
        .ok_or_else(|| Error::BadSpec("root is not an object".into()))?;
    root.insert("path".into(), "rootfs".into());
    if let Some(process) = object.get_mut("process").and_then(|p| p.as_object_mut()) {
        process.insert("terminal".into(), terminal.into());
    }
    serde_json::to_string_pretty(&spec).map_err(|e| Error::BadSpec(e.to_string()))
}

fn mkdir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Mkdir {
        path: path.to_path_buf(),
        source,
    })
}

fn do_mount(
    bundle: &mut Bundle,
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    mount(Some(source), target, fstype, flags, data).map_err(|e| Error::Mount {
        what: format!("{source} ({})", fstype.unwrap_or("bind")),
        target: target.to_path_buf(),
        source: e,
    })?;
    bundle.mounts.push(target.to_path_buf());
    Ok(())
}

fn device_path(device: &str) -> String {
    if device.starts_with('/') {
        device.to_string()
    } else {
        format!("/dev/{device}")
    }
}

/// lower: the image, read-only; upper: tmpfs or the given device; rootfs: overlay of both.
fn mount_rootfs(bundle: &mut Bundle, src: &RootfsSource) -> Result<(), Error> {
    let lower = bundle.dir.join("lower");
    let upper_mnt = bundle.dir.join("upper");
    let rootfs = bundle.dir.join("rootfs");
    for d in [&lower, &upper_mnt, &rootfs] {
        mkdir(d)?;
    }
    let device = device_path(&src.device);
    let meta = fs::metadata(&device).map_err(|source| Error::Device {
        device: device.clone(),
        source,
    })?;
    if meta.is_dir() {
        do_mount(
            bundle,
            &device,
            &lower,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(None::<&str>, &lower, None::<&str>, flags, None::<&str>).map_err(|e| {
            Error::Mount {
                what: "read-only remount".into(),
                target: lower.clone(),
                source: e,
            }
        })?;
    } else {
        let options = src.options.join(",");
        do_mount(
            bundle,
            &device,
            &lower,
            Some(&src.fstype),
            MsFlags::MS_RDONLY,
            (!options.is_empty()).then_some(options.as_str()),
        )?;
    }
    if src.upper_device.is_empty() {
        do_mount(
            bundle,
            "tmpfs",
            &upper_mnt,
            Some("tmpfs"),
            MsFlags::MS_NODEV,
            Some("mode=0755"),
        )?;
    } else {
        let fstype = if src.upper_fstype.is_empty() {
            "ext4"
        } else {
            &src.upper_fstype
        };
        do_mount(
            bundle,
            &device_path(&src.upper_device),
            &upper_mnt,
            Some(fstype),
            MsFlags::empty(),
            None,
        )?;
    }
    let upper = upper_mnt.join("upper");
    let work = upper_mnt.join("work");
    mkdir(&upper)?;
    mkdir(&work)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    do_mount(
        bundle,
        "overlay",
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(&data),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_root_path_and_terminal_are_rewritten() {
        let out = patch_spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"/host/bundle/rootfs","readonly":true},"process":{"args":["sh"],"terminal":false}}"#,
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["terminal"], true);
        assert!(matches!(patch_spec("[]", false), Err(Error::BadSpec(_))));
    }

    #[test]
    fn ids_and_devices() {
        assert!(runtime::container_id::validate("c1.a_b+c-d").is_ok());
        assert!(runtime::container_id::validate("../x").is_err());
        assert!(runtime::container_id::validate("").is_err());
        assert_eq!(device_path("vdb"), "/dev/vdb");
        assert_eq!(device_path("/dev/vdc"), "/dev/vdc");
    }
}
