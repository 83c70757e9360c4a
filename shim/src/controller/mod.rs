//! The host controller: runs an OCI bundle's process in its own microVM (image, VMM, agent,
//! stdio) and keeps a runc-like state directory per container under the state root.

pub mod bundle;
pub mod config;
pub mod console;
pub mod container;
pub mod events;
pub mod exec;
pub mod image;
pub mod pod;
pub mod sandbox;
pub mod signals;
pub mod state;
pub mod stats;
pub mod stdio_attach;
pub mod timing;
pub mod tty;
pub mod vm;

pub use bundle::BundleSpec;
pub use config::Config;
pub use container::{ContainerHandle, LiveState};
pub use events::{AgentEvent, EventListener};
pub use exec::ExecRequest;
pub use sandbox::Sandbox;
pub use state::Record;
pub use stats::ContainerStats;

/// Errors of the controller; each names the file, device or container concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Agent(#[from] crate::agent_client::Error),
    #[error(transparent)]
    Console(#[from] console::Error),
    #[error("bundle {bundle}: {reason}")]
    Bundle {
        bundle: std::path::PathBuf,
        reason: String,
    },
    #[error("container {id}: {reason}")]
    Container { id: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}
