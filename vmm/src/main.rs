//! The `sandbox-vmm` binary: parses the configuration, builds the microVM and runs it.
//! Exit status 0 when the guest powers off or reboots, 1 with the reason otherwise.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vmm::{build_microvm, BootTimer, Cli, VmConfig};

/// Logs to stderr: warnings, plus boot phases with `--debug`; `SANDBOX_VMM_LOG` sets
/// another level (error, warn, info, debug, trace). A plain level filter, not an env-filter,
/// keeps the regex engine out of the binary and the start-up RSS small.
fn init_logging(debug: bool) {
    let level = std::env::var("SANDBOX_VMM_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(if debug {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let config = match VmConfig::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sandbox-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.debug);

    let result =
        build_microvm(&config, BootTimer::new(start, config.debug)).and_then(|vmm| vmm.run());
    match result {
        Ok(reason) if reason.is_clean() => {
            tracing::info!("guest stopped: {reason}");
            ExitCode::SUCCESS
        }
        Ok(reason) => {
            eprintln!("sandbox-vmm: guest stopped: {reason}");
            ExitCode::from(reason.exit_status())
        }
        Err(e) => {
            eprintln!("sandbox-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}
