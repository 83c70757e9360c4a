//! `cargo xtask boot --vmm qemu|sandbox`: boots our guest to agent-ready inside the lab
//! (or directly on a KVM host) and prints `agent ready in <W> ms (guest clock <N> ms)`.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sandbox_tests::boot::{BootConfig, Vmm};
use sandbox_tests::{artifacts, lab};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmKind {
    /// QEMU microvm, the reference.
    Qemu,
    /// Our sandbox-vmm.
    Sandbox,
}

impl VmmKind {
    fn name(self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Sandbox => "sandbox",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Which VMM boots the guest.
    #[arg(long, value_enum, default_value = "qemu")]
    pub vmm: VmmKind,
    /// Number of boots.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Limit for the whole lab run, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Run the boots here (set when xtask re-invokes itself in the lab).
    #[arg(long, hide = true)]
    pub inside: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.inside {
        return boot_here(&args);
    }
    artifacts::vmlinux()?;
    artifacts::rootfs()?;
    if args.vmm == VmmKind::Sandbox {
        build_vmm()?;
    }
    if lab::native_kvm() {
        return boot_here(&args);
    }
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let argv: Vec<OsString> = vec![
        exe.into(),
        "boot".into(),
        "--inside".into(),
        "--vmm".into(),
        args.vmm.name().into(),
        "--rounds".into(),
        args.rounds.to_string().into(),
    ];
    let opts = crate::lab::options(args.timeout, 3072, false)?;
    let opts = lab::Options {
        cwd: Some(artifacts::workspace_root()),
        ..opts
    };
    let out = lab::run(&argv, &opts)?;
    if out.status != 0 {
        bail!("boot in the lab failed with status {}", out.status);
    }
    Ok(())
}

/// The release VMM (static, see [`release_build_args`]), with the cargo that runs us.
pub fn build_vmm() -> Result<()> {
    build_release(&[("vmm", "sandbox-vmm")])
}

/// Builds release binaries, given as (package, binary) pairs: the VMM by its own cargo
/// call (see [`release_build_args`]), the others in one.
pub fn build_release(bins: &[(&str, &str)]) -> Result<()> {
    let (vmm, others): (Vec<_>, Vec<_>) = bins.iter().partition(|(_, bin)| *bin == VMM_BIN);
    let mut calls: Vec<Vec<String>> = vmm
        .iter()
        .map(|(package, bin)| release_build_args(package, bin))
        .collect();
    if !others.is_empty() {
        let mut args = vec!["build".to_string(), "--release".to_string()];
        for (package, bin) in &others {
            args.extend(["-p", package, "--bin", bin].map(String::from));
        }
        calls.push(args);
    }
    for args in calls {
        run_cargo(&args)?;
    }
    Ok(())
}

/// `cargo ARGS` in the workspace root, with the cargo that runs us; an error if it fails.
pub fn run_cargo<S: AsRef<str>>(args: &[S]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(artifacts::workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The VMM's binary.
const VMM_BIN: &str = "sandbox-vmm";

/// The cargo arguments of a release build of `bin` in `package`. The VMM is linked as a
/// static PIE (glibc's `crt-static`): it then starts without the dynamic loader mapping and
/// relocating libc and libgcc_s, and its peak RSS drops by about a third (docs/benchmarks.md,
/// vmm-floor). `cargo rustc` hands the flag to that one binary: in RUSTFLAGS it would also
/// reach the proc-macros, which cannot be built with crt-static on this target.
pub fn release_build_args(package: &str, bin: &str) -> Vec<String> {
    let mut args = if bin == VMM_BIN {
        vec!["rustc"]
    } else {
        vec!["build"]
    };
    args.extend(["--release", "-p", package, "--bin", bin]);
    if bin == VMM_BIN {
        args.extend(["--", "-C", "target-feature=+crt-static"]);
    }
    args.into_iter().map(String::from).collect()
}

/// The boots themselves; needs /dev/kvm with real virtualisation.
fn boot_here(args: &Args) -> Result<()> {
    let vmm = match args.vmm {
        VmmKind::Qemu => Vmm::Qemu,
        VmmKind::Sandbox => Vmm::Sandbox {
            binary: artifacts::sandbox_vmm()?,
        },
    };
    let config = BootConfig::new(vmm, artifacts::vmlinux()?, artifacts::rootfs()?);
    warm_up(&config);
    let mut walls = Vec::new();
    let mut guests = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let report = config.run()?;
        println!("{}", report.summary());
        if !report.exited {
            eprintln!("warning: the VMM did not exit after the agent was ready; it was killed");
        }
        walls.push(report.wall);
        guests.push(report.guest_ms);
    }
    if walls.len() > 1 {
        println!(
            "median of {}: agent ready in {} ms (guest clock {} ms)",
            walls.len(),
            median(&mut walls).as_millis(),
            median(&mut guests)
        );
    }
    Ok(())
}

/// Loads the VMM binary and its libraries once, so that the first timed boot does not
/// pay for reading them over the lab's 9p share.
fn warm_up(config: &BootConfig) {
    let mut warm = Command::new(config.command().get_program());
    warm.arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = warm.status();
}

fn median<T: Ord + Copy>(values: &mut [T]) -> T {
    values.sort();
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3, 1, 2]), 2);
        assert_eq!(
            median(&mut [Duration::from_millis(4), Duration::from_millis(1)]),
            Duration::from_millis(4)
        );
    }

    #[test]
    fn only_the_vmm_is_linked_statically() {
        assert_eq!(
            release_build_args("vmm", "sandbox-vmm").join(" "),
            "rustc --release -p vmm --bin sandbox-vmm -- -C target-feature=+crt-static"
        );
        assert_eq!(
            release_build_args("shim", "sandbox").join(" "),
            "build --release -p shim --bin sandbox"
        );
    }
}
