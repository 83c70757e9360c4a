//! Moves PID 1 off the initramfs onto a tmpfs root. Containers need this: pivot_root(2)
//! refuses to move away from the kernel's initial rootfs.
//!
//! Unlike busybox `switch_root` it neither copies the agent nor executes it again: it mounts a
//! tmpfs, copies the initramfs tree into it except the running agent binary (directories,
//! device nodes, symlinks and any other file), which it bind-mounts in its place, moves the
//! tmpfs onto `/` and chroots there. The agent keeps running from its initramfs inode, which
//! stays in memory under the new root. That saves copying and loading the binary a second
//! time at every boot, and the memory of the initramfs files is the same either way.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use thiserror::Error;

/// Where the new root is assembled, on the old one.
const NEW_ROOT: &str = "/.newroot";
/// statfs magic numbers of the kernel's initial rootfs (ramfs, or tmpfs when built in).
const RAMFS_MAGIC: i64 = 0x858458f6;
const TMPFS_MAGIC: i64 = 0x01021994;

/// Errors switching the root; the agent carries on from the initramfs after logging one.
#[derive(Debug, Error)]
pub enum Error {
    #[error("switch_root: {step}: {source}")]
    Sys {
        step: &'static str,
        source: nix::Error,
    },
    #[error("switch_root: copying {path}: {source}")]
    Copy {
        path: String,
        source: std::io::Error,
    },
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |source| Error::Sys { step, source }
}

/// Whether PID 1 still runs from the initramfs and should switch.
pub fn needed() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(fs) => {
            let magic = fs.filesystem_type().0;
            magic == RAMFS_MAGIC || magic == TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Switches the root to a tmpfs holding the initramfs tree but the agent binary.
pub fn switch() -> Result<(), Error> {
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(|source| Error::Copy {
        path: NEW_ROOT.into(),
        source,
    })?;
    mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys("mount tmpfs on /.newroot"))?;
    // The kernel starts init with its path as argv[0] (/proc is not mounted yet).
    let exe = std::env::args_os().next().unwrap_or_default();
    let exe = fs::metadata(&exe).map_err(|source| Error::Copy {
        path: exe.to_string_lossy().into_owned(),
        source,
    })?;
    let skip = (exe.dev(), exe.ino());
    for entry in read_dir(Path::new("/"))? {
        let path = entry.path();
        if path == new_root {
            continue;
        }
        copy_tree(&path, &new_root.join(entry.file_name()), skip)?;
    }
    nix::unistd::chdir(new_root).map_err(sys("chdir /.newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move /.newroot onto /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, Error> {
    let copy_err = |source| Error::Copy {
        path: dir.display().to_string(),
        source,
    };
    fs::read_dir(dir)
        .map_err(copy_err)?
        .collect::<Result<_, _>>()
        .map_err(copy_err)
}

/// Copies files, directories, symlinks and device nodes, keeping modes and owners; leaves
/// out the file whose (device, inode) is `skip`.
fn copy_tree(from: &Path, to: &Path, skip: (u64, u64)) -> Result<(), Error> {
    let copy_err = |source| Error::Copy {
        path: from.display().to_string(),
        source,
    };
    let meta = fs::symlink_metadata(from).map_err(copy_err)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir_all(to).map_err(copy_err)?;
        for entry in read_dir(from)? {
            copy_tree(&entry.path(), &to.join(entry.file_name()), skip)?;
        }
    } else if kind.is_symlink() {
        let target = fs::read_link(from).map_err(copy_err)?;
        std::os::unix::fs::symlink(target, to).map_err(copy_err)?;
        return Ok(());
    } else if kind.is_char_device() || kind.is_block_device() {
        let sflag = if kind.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        let rdev = meta.rdev();
        let dev = makedev(nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        mknod(to, sflag, Mode::from_bits_truncate(meta.mode()), dev)
            .map_err(|e| copy_err(e.into()))?;
    } else if kind.is_file() {
        if (meta.dev(), meta.ino()) == skip {
            // The running binary stays where it is; the new root shows it by a bind mount.
            fs::File::create(to).map_err(copy_err)?;
            mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(sys("bind the agent binary into /.newroot"))?;
            return Ok(());
        }
        fs::copy(from, to).map_err(copy_err)?;
    } else {
        // FIFOs and sockets have no place in an initramfs image.
        return Ok(());
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(copy_err)?;
    let _ = std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}
