//! `cargo xtask`: the project's tasks. Each subcommand lives in its own module.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod boot;
mod demo;
mod install;
mod lab;
mod setup;
mod test;

#[derive(Parser)]
#[command(name = "xtask", about = "sandbox project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install Debian packages and build the guest kernel, agent and initramfs (cached).
    Setup(setup::Args),
    /// Run a command inside the lab host (a QEMU VM with real, emulated-SVM KVM).
    Lab(lab::Args),
    /// Boot the guest to agent-ready and report the time.
    Boot(boot::Args),
    /// Boot a microVM and run a demo container.
    Demo(demo::Args),
    /// Run every test: unit, host and lab.
    Test(test::Args),
    /// Benchmarks against peers (QEMU, runc, crun) with a report and plots.
    Bench(bench::Args),
    /// Build in release mode and install the runtime (binaries, guest, config file; with
    /// --containerd / --docker also their configs), recorded in a manifest.
    Install(install::Args),
    /// Remove what cargo xtask install added (refused while sandboxes are running).
    Uninstall(install::UninstallArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup(a) => setup::run(a),
        Cmd::Lab(a) => lab::run(a),
        Cmd::Boot(a) => boot::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Test(a) => test::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Install(a) => install::run(a),
        Cmd::Uninstall(a) => install::uninstall(a),
    }
}
