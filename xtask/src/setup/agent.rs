//! The guest agent as a static binary: a build with the size-optimised `guest-agent` profile
//! (workspace Cargo.toml) for the gnu target with crt-static, linked at a fixed address
//! (`-C relocation-model=static`): a static PIE carries 270 KB of relocations and rewrites
//! 200 KB of `.data.rel.ro` at every start, private pages in every guest; the fixed-address
//! binary's read-only data stays the root image's shared pages.
//! With an explicit --target, RUSTFLAGS reach only the target crates, not build scripts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::elf;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const PACKAGE: &str = "agent";
const BINARY: &str = "sandbox-agent";
/// The cargo profile (and its directory under the target dir).
const PROFILE: &str = "guest-agent";

/// Builds the agent into `<workspace>/target/<TARGET>/guest-agent` and checks it has no interpreter.
pub fn build(workspace: &Path) -> Result<PathBuf> {
    let target_dir = workspace.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "guest agent: cargo build --profile {PROFILE} -p {PACKAGE} --target {TARGET} (crt-static)"
    );
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--profile",
            PROFILE,
            "-p",
            PACKAGE,
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the static agent failed: {status}");
    }
    let binary = target_dir.join(TARGET).join(PROFILE).join(BINARY);
    let bytes = fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    elf::check_static(&binary.display().to_string(), &bytes)?;
    Ok(binary)
}
