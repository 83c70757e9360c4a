//! sandbox-vmm: a microVM monitor on KVM, one process per microVM.
//! Boot order: create VM, memory, vCPUs, load kernel, devices, run.
pub mod device_manager;
pub mod devices;
