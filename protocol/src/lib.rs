//! The agent API (ttrpc over vsock) between the host controller and the agent: generated
//! messages and services, the well-known ports and the stdio streams' header (`stream_header`).

/// Messages of proto/agent.proto (rust-protobuf).
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_mut,
    unused_results
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The `Agent` service: a sync ttrpc client and the server trait with `create_agent`.
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    unused_imports,
    unused_results
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub mod exit_status;
pub mod stream_header;

pub use exit_status::ExitStatus;

/// The vsock port the agent serves the ttrpc API on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The vsock port the agent accepts stdio streams on.
pub const STDIO_VSOCK_PORT: u32 = 1025;
/// The host vsock port the agent connects to once it serves its API, to say it is ready (the
/// host then needs no polling; with the VMM's hybrid vsock the host listens on
/// `<vsock socket>_1026`). The agent writes [`READY_LINE`] and closes.
pub const READY_VSOCK_PORT: u32 = 1026;
/// What the agent writes on the ready connection.
pub const READY_LINE: &[u8] = b"ready\n";
