//! root and mounts: propagation, the rootfs bind, the spec's mounts in order, /dev, then
//! pivot_root; after it, readonlyPaths, maskedPaths and a read-only root.

pub mod devices;
pub mod mounts;
pub mod paths;
pub mod pivot;

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

/// Rootfs setup failures; each names the spec field it was working on.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount from the `mounts` array failed.
    #[error("{field}: {destination}: {message}")]
    Mount {
        /// e.g. `mounts[3]`
        field: String,
        /// The mount destination.
        destination: PathBuf,
        /// What failed.
        message: String,
    },
    /// Creating a device node or /dev symlink failed.
    #[error("{field}: {path}: {message}")]
    Device {
        /// The spec field.
        field: String,
        /// The device path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Masking, read-only or root remount failed.
    #[error("{field}: {path}: {source}")]
    Path {
        /// The spec field.
        field: String,
        /// The path.
        path: PathBuf,
        /// errno.
        source: nix::Error,
    },
    /// Preparing or binding the root failed.
    #[error("root.path: {step}: {source}")]
    Root {
        /// The step.
        step: &'static str,
        /// errno.
        source: nix::Error,
    },
    /// pivot_root or detaching the old root failed.
    #[error("root.path: pivot_root: {step}: {source}")]
    Pivot {
        /// The step.
        step: &'static str,
        /// errno.
        source: nix::Error,
    },
}

/// The mount point (from /proc/self/mountinfo) that contains `path`.
fn mount_point_of(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.as_os_str().len())
}

/// Everything before pivot_root, in the container's new mount namespace. `before_pivot` runs
/// the createRuntime/createContainer hooks at the point the spec puts them.
pub fn prepare(
    spec: &Spec,
    rootfs: &Path,
    in_userns: bool,
    before_pivot: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Result<(), String>, RootfsError> {
    let linux = spec.linux().as_ref();
    let root_prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(mounts::propagation)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    let step = |step: &'static str| move |source| RootfsError::Root { step, source };
    mount(None::<&str>, "/", None::<&str>, root_prop, None::<&str>)
        .map_err(step("set root propagation"))?;
    // pivot_root refuses a new root whose parent mount is shared.
    if let Some(mp) = mount_point_of(rootfs) {
        mount(
            None::<&str>,
            &mp,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(step("make the rootfs parent mount private"))?;
    }
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("bind rootfs onto itself"))?;

    let list = spec.mounts().as_deref().unwrap_or_default();
    for (i, m) in list.iter().enumerate() {
        mounts::mount_one(rootfs, i, m, in_userns)?;
    }
    let dev_is_bind = list.iter().any(|m| {
        m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind"))
    });
    if !dev_is_bind {
        let devs = linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default();
        devices::create_devices(rootfs, devs, in_userns)?;
        devices::create_symlinks(rootfs)?;
    }
    if let Err(e) = before_pivot() {
        return Ok(Err(e));
    }
    pivot::pivot(rootfs)?;
    Ok(Ok(()))
}

/// After pivot_root: root.readonly and the root propagation (before hostname and sysctl).
pub fn finalize_root(spec: &Spec) -> Result<(), RootfsError> {
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        paths::readonly_root()?;
    }
    if let Some(prop) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(mounts::propagation)
    {
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>).map_err(|source| {
            RootfsError::Root {
                step: "linux.rootfsPropagation",
                source,
            }
        })?;
    }
    Ok(())
}

/// Last: readonlyPaths then maskedPaths (after sysctl, which writes under /proc/sys).
pub fn finalize_paths(spec: &Spec) -> Result<(), RootfsError> {
    if let Some(linux) = spec.linux() {
        for (i, p) in linux.readonly_paths().iter().flatten().enumerate() {
            paths::readonly(i, Path::new(p))?;
        }
        for (i, p) in linux.masked_paths().iter().flatten().enumerate() {
            paths::mask(i, Path::new(p))?;
        }
    }
    Ok(())
}
