//! `cargo xtask demo`: setup, release builds of `sandbox` and `sandbox-vmm`, a busybox demo
//! bundle, then `sandbox --debug run BUNDLE` in the lab (or here on a KVM host).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sandbox_tests::bundle::Bundle;
use sandbox_tests::{artifacts, lab};
use serde_json::json;

use crate::setup;

/// What the demo container runs.
const SCRIPT: &str = "echo \"hello from container $(hostname) in a microVM\"; \
    echo \"guest kernel: $(uname -r)\"; echo \"processes it sees:\"; ps -o pid,args; \
    echo its root: $(ls /)";

#[derive(clap::Args)]
pub struct Args {
    /// Limit for the lab run, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub fn run(args: Args) -> Result<()> {
    setup::run(setup::Args::default())?;
    build_binaries()?;
    let release = artifacts::target_dir().join("release");
    let sandbox = release.join("sandbox");
    let vmm = release.join("sandbox-vmm");
    let kernel = artifacts::vmlinux()?;
    let rootfs = artifacts::rootfs()?;

    // Under /var/tmp: the lab sees it (it hides the host's /tmp). Removed on drop.
    let bundle = Bundle::new("demo");
    bundle.edit(|c| {
        c["process"]["args"] = json!(["sh", "-c", SCRIPT]);
        c["hostname"] = json!("demo");
    });
    let argv: Vec<OsString> = vec![
        sandbox.clone().into(),
        "--debug".into(),
        "--root".into(),
        "/run/sandbox-demo".into(),
        "run".into(),
        bundle.path().into(),
    ];
    let env: Vec<(OsString, OsString)> = vec![
        ("SANDBOX_VMM".into(), vmm.into()),
        ("SANDBOX_KERNEL".into(), kernel.into()),
        ("SANDBOX_ROOTFS".into(), rootfs.into()),
        (
            "SANDBOX_IMAGE_CACHE".into(),
            "/run/sandbox-demo-images".into(),
        ),
    ];
    println!(
        "==> bundle {} (busybox-static rootfs)",
        bundle.path().display()
    );
    println!("==> the container runs: sh -c '{SCRIPT}'");
    println!("==> {}", show(&argv));
    let status = if lab::native_kvm() {
        println!("==> on this KVM host");
        Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .status()
            .context("running sandbox")?
            .code()
            .unwrap_or(1)
    } else {
        println!("==> in the lab (QEMU TCG with nested KVM): timings are those of an emulated CPU");
        let opts = lab::Options {
            env,
            cwd: Some(artifacts::workspace_root()),
            ..crate::lab::options(args.timeout, 3072, false)?
        };
        lab::run(&argv, &opts)?.status
    };
    println!("==> sandbox exited with status {status}");
    if status != 0 {
        bail!("the demo container failed (status {status})");
    }
    Ok(())
}

fn show(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| Path::new(a).display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo build --release -p vmm -p shim` (the binaries `sandbox-vmm` and `sandbox`).
fn build_binaries() -> Result<()> {
    println!("==> cargo build --release -p vmm -p shim");
    crate::boot::build_release(&[("vmm", "sandbox-vmm"), ("shim", "sandbox")])
}
