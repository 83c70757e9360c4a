//! The `sandbox-vmm` binary: parses the configuration, builds the microVM and runs it.
//! Exit status 0 when the guest powers off or reboots, 1 with the reason otherwise.
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vmm::{build_microvm, BootTimer, Cli, VmConfig};

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
    let level = if config.debug { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SANDBOX_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();

    let result =
        build_microvm(&config, BootTimer::new(start, config.debug)).and_then(|vmm| vmm.run());
    match result {
        Ok(reason) if reason.is_clean() => {
            tracing::info!("guest stopped: {reason}");
            ExitCode::SUCCESS
        }
        Ok(reason) => {
            eprintln!("sandbox-vmm: guest stopped: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sandbox-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}
