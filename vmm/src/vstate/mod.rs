//! The KVM state of the microVM: the VM and its irqchip, guest memory, the vCPUs and
//! their threads, and the reason the VM stopped.
pub mod exit;
pub mod memory;
pub mod trim;
pub mod vcpu;
pub mod vm;

pub use exit::{ExitReason, ExitSignal};
