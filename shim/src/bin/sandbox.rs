//! `sandbox`: the runc-compatible command line. Each container runs in its own microVM, or
//! with `--no-vm` directly on this host (runc-level isolation).

use clap::Parser;
use shim::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match cli::run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("sandbox: {e}");
            std::process::exit(1);
        }
    }
}
