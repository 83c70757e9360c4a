//! virtiofsd, the vhost-user virtio-fs backend that QEMU (the benchmarks' peer) needs for its
//! `vhost-user-fs-device`: `cargo install --locked` from crates.io, cached by version.
//! Debian 12 has no package of it; it links libseccomp and libcap-ng (packages.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cache::{self, Cache};

/// The release installed; bump to move the peer to another.
pub const VERSION: &str = "1.14.0";
const KIND: &str = "virtiofsd";

/// The installed binary, and whether this run built it.
pub struct Virtiofsd {
    pub binary: PathBuf,
    pub built: bool,
}

/// Returns the cached virtiofsd of `VERSION`, installing it first if needed.
pub fn ensure(cache: &Cache) -> Result<Virtiofsd> {
    let dest = cache.kind_dir(KIND)?.join(VERSION);
    let binary = binary_in(&dest);
    if binary.is_file() {
        return Ok(Virtiofsd {
            binary,
            built: false,
        });
    }
    let _lock = cache.lock(KIND)?;
    if binary.is_file() {
        return Ok(Virtiofsd {
            binary,
            built: false,
        });
    }
    let tmp = cache::fresh_tmp_dir(&dest)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("virtiofsd: cargo install --locked virtiofsd@{VERSION}");
    let status = Command::new(cargo)
        .args(["install", "--locked", "--version", VERSION, "--root"])
        .arg(&tmp)
        .arg("virtiofsd")
        // Build it on its own, not with the workspace's flags or target directory.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install virtiofsd@{VERSION} failed: {status}");
    }
    if !binary_in(&tmp).is_file() {
        bail!("cargo install put no bin/virtiofsd into {}", tmp.display());
    }
    cache::publish_dir(&tmp, &dest)?;
    Ok(Virtiofsd {
        binary,
        built: true,
    })
}

fn binary_in(root: &Path) -> PathBuf {
    root.join("bin").join("virtiofsd")
}
