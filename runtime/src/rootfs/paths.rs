//! linux.maskedPaths, linux.readonlyPaths and root.readonly, applied after pivot_root.
//! Missing paths are skipped, as runc does.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use super::mounts::locked_flags;
use super::RootfsError;

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a directory.
pub fn mask(index: usize, path: &Path) -> Result<(), RootfsError> {
    let result = if path.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    match result {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(RootfsError::Path {
            field: format!("linux.maskedPaths[{index}]"),
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Makes `path` read-only by bind-mounting it onto itself and remounting.
pub fn readonly(index: usize, path: &Path) -> Result<(), RootfsError> {
    let fail = |source| RootfsError::Path {
        field: format!("linux.readonlyPaths[{index}]"),
        path: path.to_path_buf(),
        source,
    };
    match mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(fail(e)),
    }
    let flags = locked_flags(path)
        | MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_REC;
    mount(Some(path), path, None::<&str>, flags, None::<&str>).map_err(fail)
}

/// root.readonly: remounts / read-only, keeping its other flags.
pub fn readonly_root() -> Result<(), RootfsError> {
    let flags =
        locked_flags(Path::new("/")) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(Some("/"), "/", None::<&str>, flags, None::<&str>).map_err(|source| RootfsError::Path {
        field: "root.readonly".into(),
        path: "/".into(),
        source,
    })
}
