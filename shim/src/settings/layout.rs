//! The installed layout the defaults come from: `cargo xtask install` puts the binaries in
//! `PREFIX/bin` and the guest files in `PREFIX/share/sandbox`, found again from the executable.

use std::path::{Path, PathBuf};

/// The VMM's file name.
pub const VMM_NAME: &str = "sandbox-vmm";
/// The guest kernel's and root image's file names in the share directory.
pub const KERNEL_NAME: &str = "vmlinux";
pub const ROOT_IMAGE_NAME: &str = "rootfs.erofs";

/// `<exe dir>/../share/sandbox`: where `cargo xtask install --prefix P` put the guest files
/// for an executable in `P/bin`, so any prefix works without a config file.
pub fn share_dir(exe: &Path) -> PathBuf {
    let bin = exe.parent().unwrap_or(Path::new("/"));
    let prefix = bin.parent().unwrap_or(Path::new("/"));
    prefix.join("share").join("sandbox")
}

/// `sandbox-vmm` beside the executable when it is there, else the bare name (looked up on
/// `$PATH` when spawned); with the note saying which.
pub fn default_vmm(exe: &Path) -> (PathBuf, &'static str) {
    let beside = exe.parent().unwrap_or(Path::new("/")).join(VMM_NAME);
    if beside.is_file() {
        (beside, "beside the executable")
    } else {
        (
            PathBuf::from(VMM_NAME),
            "on $PATH (none beside the executable)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_dir_follows_the_prefix() {
        assert_eq!(
            share_dir(Path::new("/opt/sb/bin/sandbox")),
            Path::new("/opt/sb/share/sandbox")
        );
        assert_eq!(
            share_dir(Path::new("/usr/local/bin/containerd-shim-sandbox-v2")),
            Path::new("/usr/local/share/sandbox")
        );
    }

    #[test]
    fn the_vmm_is_found_beside_the_executable() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("sandbox");
        assert_eq!(default_vmm(&exe).0, PathBuf::from(VMM_NAME));
        std::fs::write(dir.path().join(VMM_NAME), "").unwrap();
        assert_eq!(default_vmm(&exe).0, dir.path().join(VMM_NAME));
    }
}
