//! Paths of the guest artifacts that `cargo xtask setup` links into `target/guest/`,
//! and discovery of the workspace root they live under.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest artifact {path} is missing: run cargo xtask setup")]
    Missing { path: PathBuf },
    #[error("{path} is missing: run cargo build --release -p vmm")]
    NoVmm { path: PathBuf },
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| is_workspace_root(dir))
        .unwrap_or_else(|| manifest.parent().unwrap_or(manifest))
        .to_owned()
}

fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
}

/// `target/guest` under the workspace root.
pub fn guest_dir() -> PathBuf {
    workspace_root().join("target").join("guest")
}

fn existing(name: &str) -> Result<PathBuf, Error> {
    let path = guest_dir().join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Missing { path })
    }
}

/// The guest kernel, uncompressed with the PVH entry point.
pub fn vmlinux() -> Result<PathBuf, Error> {
    existing("vmlinux")
}

/// The guest initramfs (newc cpio, the agent as /init).
pub fn initramfs() -> Result<PathBuf, Error> {
    existing("initramfs.cpio")
}

/// The guest root image (erofs, the agent as /init), booted from virtio-pmem.
pub fn rootfs() -> Result<PathBuf, Error> {
    existing("rootfs.erofs")
}

/// The static agent binary.
pub fn agent() -> Result<PathBuf, Error> {
    existing("sandbox-agent")
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else `target/` under the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Our VMM, release build.
pub fn sandbox_vmm() -> Result<PathBuf, Error> {
    let path = target_dir().join("release").join("sandbox-vmm");
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::NoVmm { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let root = workspace_root();
        assert!(is_workspace_root(&root), "{}", root.display());
        assert!(root.join("tests").join("Cargo.toml").exists());
    }

    #[test]
    fn missing_artifact_names_setup() {
        let err = existing("no-such-artifact").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no-such-artifact") && msg.contains("run cargo xtask setup"),
            "{msg}"
        );
    }
}
