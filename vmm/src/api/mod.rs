//! The control API: a line-delimited JSON protocol on a Unix socket (docs/vmm-api.md)
//! to query the state, pause/resume the vCPUs, shut the guest down, or flush and exit.
mod server;

pub use server::{ApiError, ApiServerHandle, VmControl};
