//! containerd's rootfs mounts (a snapshotter's overlay or bind mount) put at the bundle's
//! rootfs directory, from which the controller builds the VM's image; undone at delete.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors mounting the rootfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mounting the rootfs ({fstype} {source_path}) at {target}: {errno}")]
    Mount {
        fstype: String,
        source_path: String,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("creating the rootfs directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One mount of CreateTaskRequest.rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Mount {
    pub fn from_proto(m: &containerd_shim_protos::api::Mount) -> Mount {
        Mount {
            fstype: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.to_vec(),
        }
    }

    /// mount(2) flags and the filesystem data string of the options.
    fn flags_and_data(&self) -> (MsFlags, String) {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in &self.options {
            match o.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" | "defaults" => {}
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                other => data.push(other.to_string()),
            }
        }
        if self.fstype == "bind" {
            flags |= MsFlags::MS_BIND;
        }
        (flags, data.join(","))
    }
}

/// Mounts each of `mounts` at `target` in order (creating `target`).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), Error> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|source| Error::Dir {
        path: target.to_path_buf(),
        source,
    })?;
    for (i, m) in mounts.iter().enumerate() {
        let (flags, data) = m.flags_and_data();
        let fstype = (!m.fstype.is_empty() && m.fstype != "bind").then_some(m.fstype.as_str());
        let res = mount(
            Some(m.source.as_str()),
            target,
            fstype,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        );
        if let Err(errno) = res {
            for _ in 0..i {
                unmount(target);
            }
            return Err(Error::Mount {
                fstype: m.fstype.clone(),
                source_path: m.source.clone(),
                target: target.to_path_buf(),
                errno,
            });
        }
    }
    Ok(())
}

/// Unmounts `target` (lazily, so a busy tree never blocks a delete); not mounted is fine.
pub fn unmount(target: &Path) {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => log::warn!("unmounting {}: {e}", target.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_go_to_data_and_bind_options_to_flags() {
        let overlay = Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), "lowerdir=/a:/b".into(), "ro".into()],
        };
        let (flags, data) = overlay.flags_and_data();
        assert_eq!(flags, MsFlags::MS_RDONLY);
        assert_eq!(data, "index=off,lowerdir=/a:/b");
        let bind = Mount {
            fstype: "bind".into(),
            source: "/snap/1/fs".into(),
            options: vec!["rbind".into(), "rw".into()],
        };
        let (flags, data) = bind.flags_and_data();
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(data.is_empty());
    }

    #[test]
    fn no_mounts_is_nothing_to_do_and_unmounting_a_plain_dir_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        mount_all(&[], &dir.path().join("rootfs")).unwrap();
        assert!(!dir.path().join("rootfs").exists());
        unmount(dir.path());
    }
}
