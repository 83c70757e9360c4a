//! Host controller shared by the `sandbox` CLI and the containerd shim.
pub mod agent_client;
pub mod cli;
pub mod controller;
pub mod shimv2;
pub mod vsock;
