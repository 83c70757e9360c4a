//! The timed guest boot under real KVM: QEMU microvm (the reference) and our sandbox-vmm boot
//! our vmlinux + root image and the agent reports ready. Runs in the lab (`cargo xtask test`).

use sandbox_tests::boot::{BootConfig, BootReport, Vmm, READY_MARKER};
use sandbox_tests::{artifacts, binaries, require};

fn boot(vmm: Vmm) -> BootReport {
    let config = BootConfig::new(
        vmm,
        artifacts::vmlinux().unwrap(),
        artifacts::rootfs().unwrap(),
    );
    let report = config.run().expect("boot to agent-ready");
    let marker = report
        .console
        .lines()
        .find(|l| l.contains(READY_MARKER))
        .expect("marker line on the console");
    assert!(
        marker.starts_with(READY_MARKER),
        "marker is not a line of its own: {marker:?}"
    );
    assert!(report.guest_ms > 0, "{marker}");
    assert!(
        report.exited,
        "the VMM did not exit after the agent rebooted; console:\n{}",
        report.console
    );
    println!("{}", report.summary());
    report
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn qemu_reference_boot_reaches_agent_ready() {
    boot(Vmm::Qemu);
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn sandbox_vmm_boot_reaches_agent_ready() {
    // `cargo xtask test` builds the VMM and names it in SANDBOX_VMM.
    let binary = require!(binaries::VMM.path());
    boot(Vmm::Sandbox { binary });
}
