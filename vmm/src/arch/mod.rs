//! Architecture-specific boot support; only x86_64 is implemented.
//! Each submodule sets up one part of the boot CPU and memory state.
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
