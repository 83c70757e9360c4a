//! x86_64 boot support: the guest physical layout, PVH start info, MP table, and the
//! CPUID, MSR, FPU, LAPIC and register state of each vCPU.
pub mod cpuid;
pub mod interrupts;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod pvh;
pub mod regs;
