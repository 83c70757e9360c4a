//! Moves PID 1 off the initramfs onto a tmpfs copy of it, then re-executes the agent there.
//! Containers need this: pivot_root(2) refuses to move away from the kernel's initial rootfs.
//!
//! Like busybox `switch_root`: mount a tmpfs, copy the initramfs tree into it, delete the
//! originals to give their memory back, move the tmpfs onto `/`, chroot and exec `/init` again
//! with [`SWITCHED_ENV`] set so the second run knows it is done.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use thiserror::Error;

/// Set in the environment of the re-executed agent.
pub const SWITCHED_ENV: &str = "SANDBOX_AGENT_SWITCHED_ROOT";
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
    if std::env::var_os(SWITCHED_ENV).is_some() {
        return false;
    }
    match nix::sys::statfs::statfs("/") {
        Ok(fs) => {
            let magic = fs.filesystem_type().0;
            magic == RAMFS_MAGIC || magic == TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Switches and re-executes `/init` with `args`; returns only on failure.
pub fn switch_and_reexec(args: &[String]) -> Error {
    match switch() {
        Ok(()) => reexec(args),
        Err(e) => e,
    }
}

fn switch() -> Result<(), Error> {
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
    for entry in read_dir(Path::new("/"))? {
        let path = entry.path();
        if path == new_root {
            continue;
        }
        copy_tree(&path, &new_root.join(entry.file_name()))?;
    }
    // Give the initramfs's memory back; what is still in use (our own binary) stays alive
    // until the exec below.
    for entry in read_dir(Path::new("/"))? {
        let path = entry.path();
        if path != new_root {
            let _ = remove_tree(&path);
        }
    }
    nix::unistd::chdir(new_root).map_err(sys("chdir /.newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move /.newroot onto /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

fn reexec(args: &[String]) -> Error {
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let mut argv = vec![to_c("/init")];
    argv.extend(args.iter().map(|a| to_c(a)));
    let mut env: Vec<CString> = std::env::vars()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect();
    env.push(to_c(&format!("{SWITCHED_ENV}=1")));
    match nix::unistd::execve(&to_c("/init"), &argv, &env) {
        Err(source) => Error::Sys {
            step: "exec /init",
            source,
        },
        Ok(never) => match never {},
    }
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

/// Copies files, directories, symlinks and device nodes, keeping modes and owners.
fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    let copy_err = |source| Error::Copy {
        path: from.display().to_string(),
        source,
    };
    let meta = fs::symlink_metadata(from).map_err(copy_err)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir_all(to).map_err(copy_err)?;
        for entry in read_dir(from)? {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
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
        fs::copy(from, to).map_err(copy_err)?;
    } else {
        // FIFOs and sockets have no place in an initramfs image.
        return Ok(());
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(copy_err)?;
    let _ = std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

/// Deletes a tree without crossing into other mounts.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let root_dev = fs::symlink_metadata("/")?.dev();
        if meta.dev() != root_dev {
            return Ok(());
        }
        for entry in fs::read_dir(path)? {
            remove_tree(&entry?.path())?;
        }
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    }
}
