//! The `mounts` array: option strings to mount(2) flags, data and propagation, and each mount
//! performed under the new root in spec order (bind/rbind with a remount for their flags).

use std::fs;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use super::RootfsError;

/// mount(2) flags, the data string and propagation parsed from a mount's options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    /// Flags to set.
    pub flags: MsFlags,
    /// Propagation flags applied after the mount.
    pub propagation: MsFlags,
    /// Filesystem-specific data ("size=65536k,mode=755").
    pub data: String,
}

/// Parses OCI mount options the way runc does: known flags, propagation, the rest is data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            other => {
                if let Some(p) = propagation(other.strip_prefix("propagation=").unwrap_or(other)) {
                    out.propagation |= p;
                } else {
                    data.push(other.to_string());
                }
                continue;
            }
        };
        out.flags |= set;
        out.flags &= !clear;
    }
    out.data = data.join(",");
    out
}

/// Propagation flags for "shared", "rslave"...
pub fn propagation(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Resolves `path` inside `root`, following symlinks but never leaving `root`.
pub fn resolve_in_root(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut hops = 0;
    while let Some(p) = pending.pop() {
        let comps: Vec<Component> = p.components().collect();
        for (i, c) in comps.iter().enumerate() {
            match c {
                Component::RootDir => resolved = PathBuf::new(),
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(name) => {
                    let candidate = resolved.join(name);
                    let full = root.join(&candidate);
                    match fs::read_link(&full) {
                        Ok(target) if hops < 40 => {
                            hops += 1;
                            let rest: PathBuf = comps[i + 1..].iter().collect();
                            pending.push(rest);
                            if target.is_absolute() {
                                resolved = PathBuf::new();
                            }
                            pending.push(target);
                            break;
                        }
                        _ => resolved = candidate,
                    }
                }
            }
        }
    }
    root.join(resolved)
}

/// Creates `dest` as a directory, or as an empty file when `file` is true.
pub fn create_mount_point(dest: &Path, file: bool) -> std::io::Result<()> {
    if file {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        if !dest.exists() {
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dest)?;
        }
        Ok(())
    } else {
        fs::create_dir_all(dest)
    }
}

/// Mount flags that a user namespace locks on an existing mount and a remount must keep.
pub fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    out
}

/// Performs mount `index` of the spec under `rootfs`.
pub fn mount_one(
    rootfs: &Path,
    index: usize,
    m: &Mount,
    in_userns: bool,
) -> Result<(), RootfsError> {
    let field = format!("mounts[{index}]");
    let fail = |what: &str, e: &dyn std::fmt::Display| RootfsError::Mount {
        field: field.clone(),
        destination: m.destination().clone(),
        message: format!("{what}: {e}"),
    };
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or_default();
    let is_bind = typ == "bind" || opts.flags.contains(MsFlags::MS_BIND);
    let dest = resolve_in_root(rootfs, m.destination());
    if !dest.starts_with(rootfs) {
        return Err(fail("destination escapes the rootfs", &dest.display()));
    }

    if is_bind {
        let source = m
            .source()
            .as_ref()
            .ok_or_else(|| fail("bind", &"missing source"))?;
        let is_dir = source.is_dir();
        create_mount_point(&dest, !is_dir).map_err(|e| fail("create mount point", &e))?;
        let base = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        mount(
            Some(source.as_path()),
            &dest,
            None::<&str>,
            base,
            None::<&str>,
        )
        .map_err(|e| fail(&format!("bind {}", source.display()), &e))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let keep = if in_userns {
                locked_flags(&dest)
            } else {
                MsFlags::empty()
            };
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                extra | keep | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|e| fail("remount", &e))?;
        }
    } else {
        create_mount_point(&dest, false).map_err(|e| fail("create mount point", &e))?;
        let fstype = if typ == "cgroup" { "cgroup2" } else { typ };
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(fstype));
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let result = mount(
            Some(source.as_path()),
            &dest,
            Some(fstype),
            opts.flags,
            data,
        );
        match result {
            Ok(()) => {}
            // sysfs cannot be mounted in a user namespace that does not own the network
            // namespace: fall back to a recursive bind of the host's /sys, like runc.
            Err(nix::Error::EPERM) if fstype == "sysfs" => {
                mount(
                    Some("/sys"),
                    &dest,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| fail("bind /sys", &e))?;
            }
            Err(e) => return Err(fail(&format!("mount {fstype}"), &e)),
        }
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(|e| fail("set propagation", &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_data_and_propagation() {
        let o = parse_options(&[
            "nosuid".into(),
            "strictatime".into(),
            "mode=755".into(),
            "size=65536k".into(),
            "rslave".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
    }

    #[test]
    fn rw_clears_ro() {
        let o = parse_options(&["ro".into(), "rw".into()]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let dir = std::env::temp_dir().join(format!("rt-resolve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::os::unix::fs::symlink("/run", dir.join("varrun")).unwrap();
        std::os::unix::fs::symlink("../../..", dir.join("up")).unwrap();
        assert_eq!(
            resolve_in_root(&dir, Path::new("/varrun/x")),
            dir.join("run/x")
        );
        assert_eq!(resolve_in_root(&dir, Path::new("/up/etc")), dir.join("etc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
