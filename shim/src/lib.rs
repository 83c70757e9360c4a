//! The host side of sandbox: the controller library (`controller`, `agent_client`, `vsock`)
//! under its two front ends, the `sandbox` CLI (`cli`) and the containerd shim (`shimv2`).

pub mod agent_client;
pub mod cli;
pub mod controller;
pub mod shimv2;
pub mod vsock;
