//! The reference boot: QEMU microvm boots our vmlinux + initramfs under real KVM and the
//! agent reports ready on the console. Runs in the lab (`cargo xtask test`).

use sandbox_tests::artifacts;
use sandbox_tests::boot::{BootConfig, Vmm, READY_MARKER};

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn qemu_reference_boot_reaches_agent_ready() {
    let config = BootConfig::new(
        Vmm::Qemu,
        artifacts::vmlinux().unwrap(),
        artifacts::initramfs().unwrap(),
    );
    let report = config.run().expect("reference boot");
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
        "QEMU did not exit after the agent rebooted; console:\n{}",
        report.console
    );
    println!("{}", report.summary());
}
