//! sandbox-vmm: a microVM monitor on KVM, one process per microVM.
//! Boot order (builder.rs): create VM, memory, load kernel, devices, vCPUs, run.
// Outside tests a failure is an error the caller sees, never a panic; a poisoned lock may
// keep `expect` with its reason.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod unix_listener;
pub mod vstate;

pub use builder::{build_microvm, BootTimer, BuildError, Vmm};
pub use config::{Cli, ConfigError, VmConfig};
pub use vstate::ExitReason;
