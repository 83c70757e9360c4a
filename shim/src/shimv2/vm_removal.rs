//! Removing a task's VM: its pod members' image claims, the VMM (stopped and reaped) and
//! its state; what Delete does and what the shim's `delete` action redoes after a crash.

use crate::controller::Sandbox;

use super::vm_id;

/// Stops a task's VM and removes its state; also reaps the VMM (our child).
pub fn remove_vm(sandbox: &Sandbox, id: &str) {
    let id = &vm_id(id);
    // A pod VM: its containers' image claims go first (after a crash nobody else drops them).
    let members = sandbox.root().container_dir(id).join("members");
    if let Ok(entries) = std::fs::read_dir(&members) {
        for e in entries.flatten() {
            if let Some(member) = e.file_name().to_str() {
                sandbox.leave_pod(id, member);
            }
        }
    }
    let vmm_pid = sandbox.root().load(id).map(|r| r.pid).unwrap_or(0);
    if let Err(e) = sandbox.delete(id, true) {
        log::warn!("removing the VM of {id}: {e}");
    }
    if vmm_pid > 0 {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(vmm_pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}
