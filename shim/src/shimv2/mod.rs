//! `containerd-shim-sandbox-v2`: the containerd runtime v2 shim. One shim serves one pod
//! (or one `ctr` container); each task runs in a microVM through the host controller.

pub mod config;
pub mod events;
pub mod io;
pub mod pod;
pub mod process;
pub mod rootfs;
pub mod serve;
pub mod service;
pub mod start;
pub mod stats;

pub use start::ShimV2;

/// The runtime name containerd knows us by (`io.containerd.sandbox.v2` →
/// `containerd-shim-sandbox-v2`).
pub const RUNTIME_ID: &str = "io.containerd.sandbox.v2";

/// Errors of the shim's own start-up; each names the flag, variable or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag} {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    Shim(String),
}
