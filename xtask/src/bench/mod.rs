//! `cargo xtask bench [--quick]`: every benchmark beside its peer in the same run; host
//! benchmarks here, Linux-booting ones in one lab VM; writes target/bench/report.{json,md} + PNGs.

mod boot_to_agent;
mod breakdown;
mod density;
mod detached;
mod floor;
mod idle;
mod lab;
mod log;
mod machine;
mod measure;
mod memory;
mod peak_rss;
mod plot;
mod report;
mod run_true;
mod runtime_host;
mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sandbox_tests::artifacts;
use sandbox_tests::boot::{BootConfig, Vmm};

use report::{Report, Row};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A short run: few rounds, small N (about 10 minutes in all).
    #[arg(long)]
    pub quick: bool,
    /// Rounds per benchmark (default 10, 3 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Guests held at once by the density benchmark (default 20, 4 with --quick).
    #[arg(long = "density", value_name = "N")]
    pub density: Option<u32>,
    /// Memory budget for the density benchmark's "largest N that fits", MiB.
    #[arg(long, default_value_t = 2048)]
    pub budget_mib: u64,
    /// Output directory (default target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip the benchmarks that boot Linux (no lab).
    #[arg(long)]
    pub no_lab: bool,
    /// Lab VM memory in MiB (the density benchmark holds N guests at once).
    #[arg(long, default_value_t = 6144)]
    pub lab_memory: u32,
    /// Limit for the lab run, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Run only these benchmarks (comma-separated: vmm-floor, runtime-host, boot-to-agent,
    /// memory-per-sandbox, density, run-true).
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    #[command(flatten)]
    pub inside: lab::InsideArgs,
}

impl Args {
    /// Whether the benchmark `name` is to run (`--only`).
    pub fn selects(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }

    /// Whether any benchmark that needs the lab is to run.
    fn needs_lab(&self) -> bool {
        !self.no_lab
            && ["boot-to-agent", "memory-per-sandbox", "density", "run-true"]
                .iter()
                .any(|n| self.selects(n))
    }
}

/// Rounds, N and budget after --quick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub rounds: usize,
    pub memory_rounds: usize,
    pub density: u32,
    pub budget_mib: u64,
}

impl Plan {
    pub fn from_args(a: &Args) -> Plan {
        let rounds = a.rounds.unwrap_or(if a.quick { 3 } else { 10 }).max(1);
        Plan {
            rounds,
            memory_rounds: if a.quick { 1 } else { rounds.min(3) },
            density: a.density.unwrap_or(if a.quick { 4 } else { 20 }).max(1),
            budget_mib: a.budget_mib,
        }
    }
}

/// The guest the lab benchmarks boot, and the two VMMs that boot it.
pub struct Guest {
    pub vmm: PathBuf,
    pub vmlinux: PathBuf,
    pub rootfs: PathBuf,
}

impl Guest {
    pub fn config_ours(&self) -> BootConfig {
        let vmm = Vmm::Sandbox {
            binary: self.vmm.clone(),
        };
        BootConfig::new(vmm, self.vmlinux.clone(), self.rootfs.clone())
    }

    pub fn config_peer(&self) -> BootConfig {
        BootConfig::new(Vmm::Qemu, self.vmlinux.clone(), self.rootfs.clone())
    }
}

/// The order of the rows in the report.
const ORDER: &[&str] = &[
    "vmm-floor",
    "vmm-floor-rss",
    "boot-to-agent",
    "run-true",
    "memory-per-sandbox",
    "density",
    "density-mib-per-sandbox",
    "density-start-ms",
    "runtime-host",
    "runtime-host-vs-runc",
];

fn sort_rows(rows: &mut [Row]) {
    rows.sort_by_key(|r| {
        ORDER
            .iter()
            .position(|n| *n == r.name)
            .unwrap_or(ORDER.len())
    });
}

pub fn run(args: Args) -> Result<()> {
    let plan = Plan::from_args(&args);
    if args.inside.inside {
        return lab::inside(&args, plan);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| artifacts::workspace_root().join("target").join("bench"));
    let vmm = build("vmm", "sandbox-vmm")?;
    let sandbox = build("shim", "sandbox")?;

    let bar = ProgressBar::new((plan.rounds * 2) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let mut rows = Vec::new();
    if args.selects("vmm-floor") {
        bar.set_message("vmm-floor (host /dev/kvm)");
        rows.extend(floor::run(&vmm, plan.rounds, &bar));
    }
    if args.selects("runtime-host") {
        bar.set_message("runtime-host (sandbox --no-vm, crun, runc)");
        rows.extend(runtime_host::run(&sandbox, plan.rounds, &bar));
    }
    bar.finish_with_message("host benchmarks done");

    let lab_part = if !args.needs_lab() {
        report::LabPartial {
            machine: "not run".into(),
            ..Default::default()
        }
    } else {
        lab::from_host(&args, plan, &out, &vmm, &sandbox)
    };
    rows.extend(lab_part.results);
    sort_rows(&mut rows);
    let report = Report {
        date: now_utc(),
        machine: machine::describe(),
        lab_machine: lab_part.machine,
        quick: args.quick,
        results: rows,
        density: lab_part.density,
    };
    report::write(&out.join("report.json"), &report.to_json())?;
    let md = report.to_markdown();
    report::write(&out.join("report.md"), &md)?;
    plot::ratios(&report.results, &out.join("ratios.png"))?;
    if !report.density.is_empty() {
        plot::density(&report.density, &out.join("density.png"))?;
    }
    println!("{md}");
    println!(
        "written: {}/report.{{json,md}}, ratios.png, density.png",
        out.display()
    );
    Ok(())
}

/// `cargo build --release -p PACKAGE --bin BIN` (for the VMM, the static build of
/// `crate::boot::release_build_args`) with the cargo that runs us. When the build fails
/// (others may be mid-edit in a shared checkout) an existing binary is used, with a warning.
fn build(package: &str, bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let path = artifacts::target_dir().join("release").join(bin);
    let status = Command::new(cargo)
        .args(crate::boot::release_build_args(package, bin))
        .current_dir(artifacts::workspace_root())
        .status()
        .context("running cargo build")?;
    if status.success() {
        return Ok(path);
    }
    if path.exists() {
        eprintln!(
            "warning: cargo build --release -p {package} failed ({status}); using the existing {}",
            path.display()
        );
        return Ok(path);
    }
    bail!(
        "cargo build --release -p {package} --bin {bin} failed ({status}) and there is no {}",
        path.display()
    )
}

/// `date -u`, RFC 3339.
fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Paths that must exist before the lab is worth booting.
fn guest_paths(vmm: &Path) -> Result<Guest> {
    Ok(Guest {
        vmm: vmm.to_path_buf(),
        vmlinux: artifacts::vmlinux()?,
        rootfs: artifacts::rootfs()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn plan(argv: &[&str]) -> Plan {
        let cli = Cli::parse_from(std::iter::once("bench").chain(argv.iter().copied()));
        Plan::from_args(&cli.args)
    }

    #[test]
    fn quick_shrinks_rounds_and_n() {
        let full = plan(&[]);
        assert_eq!((full.rounds, full.memory_rounds, full.density), (10, 3, 20));
        let quick = plan(&["--quick"]);
        assert_eq!(
            (quick.rounds, quick.memory_rounds, quick.density),
            (3, 1, 4)
        );
        assert_eq!(plan(&["--density", "50"]).density, 50);
        assert_eq!(plan(&["--rounds", "0"]).rounds, 1);
    }

    #[test]
    fn rows_follow_the_issue_order() {
        let mut rows: Vec<Row> = ["runtime-host", "zzz", "vmm-floor", "boot-to-agent"]
            .iter()
            .map(|n| Row::failed(n, "ms", "p", &[], String::new()))
            .collect();
        sort_rows(&mut rows);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["vmm-floor", "boot-to-agent", "runtime-host", "zzz"]);
    }
}
