//! Switching to the container's root: pivot_root(".", ".") then detaching the old root,
//! so no host mount stays reachable from inside.

use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, close, fchdir, pivot_root};

use super::RootfsError;

/// Makes `rootfs` the new `/` of this mount namespace.
pub fn pivot(rootfs: &Path) -> Result<(), RootfsError> {
    let fail = |step: &'static str| move |e: nix::Error| RootfsError::Pivot { step, source: e };
    let old = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open /"))?;
    let new = open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open rootfs"))?;
    let result = (|| {
        fchdir(new).map_err(fail("fchdir rootfs"))?;
        pivot_root(".", ".").map_err(fail("pivot_root"))?;
        fchdir(old).map_err(fail("fchdir old root"))?;
        // The old root may be shared with the host; make sure the unmount does not propagate.
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(fail("make old root slave"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(fail("detach old root"))?;
        chdir("/").map_err(fail("chdir /"))
    })();
    let _ = close(old);
    let _ = close(new);
    result
}
