//! `cargo xtask lab -- CMD [ARGS]`: runs a command in the lab host and exits with its status.
//! SIGINT/SIGTERM stop the run and kill the lab VM before exiting.

use std::ffi::OsString;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sandbox_tests::lab;

#[derive(clap::Args)]
pub struct Args {
    /// Kill the lab VM after this many seconds.
    #[arg(long, default_value_t = lab::DEFAULT_TIMEOUT.as_secs())]
    pub timeout: u64,
    /// Lab VM memory in MiB.
    #[arg(long, default_value_t = 3072)]
    pub memory: u32,
    /// Boot the lab VM even on a host with vmx/svm.
    #[arg(long)]
    pub force_vm: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<OsString>,
}

/// A cancel flag raised by SIGINT or SIGTERM.
pub fn cancel_on_signals() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).context("installing a signal handler")?;
    }
    Ok(flag)
}

/// Lab options from the command-line flags, streaming output and cancelled by signals.
pub fn options(timeout: u64, memory: u32, force_vm: bool) -> Result<lab::Options> {
    Ok(lab::Options {
        timeout: Duration::from_secs(timeout),
        memory_mib: memory,
        force_vm,
        cancel: Some(cancel_on_signals()?),
        ..lab::Options::default()
    })
}

pub fn run(args: Args) -> Result<()> {
    let opts = options(args.timeout, args.memory, args.force_vm)?;
    match lab::run(&args.cmd, &opts) {
        Ok(out) => std::process::exit(out.status),
        Err(lab::Error::Cancelled) => {
            eprintln!("xtask lab: interrupted; the lab VM was killed");
            std::process::exit(130)
        }
        Err(e) => Err(e.into()),
    }
}
