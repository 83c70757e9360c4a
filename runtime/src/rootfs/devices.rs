//! /dev inside the container: the default device nodes, linux.devices, /dev/ptmx and the
//! standard symlinks (/dev/fd, stdin, stdout, stderr, core).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::RootfsError;

/// One device node to create.
struct Node {
    path: PathBuf,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn default_nodes() -> Vec<Node> {
    // runc's order, which shows in the mount table when nodes are bind-mounted (user namespace).
    [
        ("null", 1, 3),
        ("random", 1, 8),
        ("full", 1, 7),
        ("tty", 5, 0),
        ("zero", 1, 5),
        ("urandom", 1, 9),
    ]
    .into_iter()
    .map(|(name, major, minor)| Node {
        path: PathBuf::from("/dev").join(name),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Creates the default devices plus `devices` under `rootfs`; in a user namespace (where
/// mknod is not allowed) the host's node is bind-mounted instead.
pub fn create_devices(
    rootfs: &Path,
    devices: &[LinuxDevice],
    in_userns: bool,
) -> Result<(), RootfsError> {
    let mut nodes = default_nodes();
    for (i, d) in devices.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RootfsError::Device {
                    field: format!("linux.devices[{i}].type"),
                    path: d.path().clone(),
                    message: "type \"a\" is only valid in cgroup device rules".into(),
                })
            }
        };
        nodes.retain(|n| n.path != *d.path());
        nodes.push(Node {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let old = nix::sys::stat::umask(Mode::empty());
    let result = nodes
        .iter()
        .try_for_each(|n| create_node(rootfs, n, in_userns));
    nix::sys::stat::umask(old);
    result
}

fn create_node(rootfs: &Path, n: &Node, in_userns: bool) -> Result<(), RootfsError> {
    let rel = n.path.strip_prefix("/").unwrap_or(&n.path);
    let dest = rootfs.join(rel);
    let fail = |message: String| RootfsError::Device {
        field: "linux.devices".into(),
        path: n.path.clone(),
        message,
    };
    if let Some(parent) = dest.parent() {
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o755)
            .create(parent)
            .map_err(|e| fail(format!("create parent: {e}")))?;
    }
    if in_userns {
        super::mounts::create_mount_point(&dest, true).map_err(|e| fail(e.to_string()))?;
        return mount(
            Some(&n.path),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail(format!("bind from host: {e}")));
    }
    if fs::symlink_metadata(&dest).is_ok() {
        fs::remove_file(&dest).map_err(|e| fail(format!("replace existing: {e}")))?;
    }
    mknod(
        &dest,
        n.kind,
        Mode::from_bits_truncate(n.mode),
        makedev(n.major, n.minor),
    )
    .map_err(|e| fail(format!("mknod: {e}")))?;
    nix::unistd::chown(
        &dest,
        Some(nix::unistd::Uid::from_raw(n.uid)),
        Some(nix::unistd::Gid::from_raw(n.gid)),
    )
    .map_err(|e| fail(format!("chown: {e}")))
}

/// /dev/ptmx as a symlink to the devpts instance, and the standard /dev symlinks.
pub fn create_symlinks(rootfs: &Path) -> Result<(), RootfsError> {
    let dev = rootfs.join("dev");
    let ptmx = dev.join("ptmx");
    let _ = fs::remove_file(&ptmx);
    let mut links = vec![
        ("pts/ptmx", ptmx),
        ("/proc/self/fd", dev.join("fd")),
        ("/proc/self/fd/0", dev.join("stdin")),
        ("/proc/self/fd/1", dev.join("stdout")),
        ("/proc/self/fd/2", dev.join("stderr")),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", dev.join("core")));
    }
    for (target, link) in links {
        match symlink(target, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(RootfsError::Device {
                    field: "mounts".into(),
                    path: link,
                    message: format!("symlink to {target}: {e}"),
                })
            }
        }
    }
    Ok(())
}
