//! Boots our guest kernel and initramfs (target/guest, from `cargo xtask setup`) with the
//! real binary: agent readiness, several vCPUs, virtio devices, vsock to the agent, the API.
//! These need real KVM: `cargo xtask test` runs them in the lab.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const READY: &str = "SANDBOX-AGENT-READY";

fn guest_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest")
        .join(name)
}

fn vmm(cmdline: &str, serial: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"));
    c.arg("--kernel")
        .arg(guest_file("vmlinux"))
        .arg("--initrd")
        .arg(guest_file("initramfs.cpio"))
        .args(["--cmdline", cmdline, "--memory", "256", "--serial"])
        .arg(serial);
    c
}

/// Waits until the console shows the agent's readiness line (or the VMM exits).
fn wait_ready(child: &mut Child, serial: &std::path::Path) {
    loop {
        if std::fs::read_to_string(serial)
            .unwrap_or_default()
            .contains(READY)
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sandbox-vmm exited ({status}) before the agent was ready:\n{}",
                std::fs::read_to_string(serial).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn guest_reaches_agent_ready_and_its_reboot_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let out = vmm(
        "console=ttyS0 reboot=k panic=-1 sandbox.exit_after_ready",
        &serial,
    )
    .output()
    .unwrap();
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(
        out.status.success(),
        "{}\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(console.contains(READY), "{console}");
    assert!(console.contains("reboot: Restarting system"), "{console}");
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn two_vcpus_and_virtio_devices_are_seen_by_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let vsock = dir.path().join("v.sock");
    let out = vmm(
        "console=ttyS0 reboot=k panic=-1 sandbox.exit_after_ready",
        &serial,
    )
    .args(["--vcpus", "2", "--block"])
    .arg(&disk)
    .arg("--vsock")
    .arg(format!("3,{}", vsock.display()))
    .output()
    .unwrap();
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(out.status.success(), "{console}");
    assert!(
        console.contains("smp: Brought up 1 node, 2 CPUs"),
        "{console}"
    );
    assert!(
        console.contains("virtio-mmio.0 at 0xd0000000-0xd0000fff, IRQ 5"),
        "{console}"
    );
    assert!(
        console.contains("[vda] 16384 512-byte logical blocks"),
        "{console}"
    );
    assert!(console.contains(READY), "{console}");
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn host_reaches_the_agent_over_vsock_and_api_flush_and_exit_stops_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let vsock = dir.path().join("v.sock");
    let api = dir.path().join("api.sock");
    let mut child = vmm("console=ttyS0 reboot=k panic=-1 quiet", &serial)
        .arg("--vsock")
        .arg(format!("3,{}", vsock.display()))
        .arg("--api-sock")
        .arg(&api)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut child, &serial);

    // Firecracker's hybrid vsock: CONNECT to the agent's API port (1024).
    let mut s = UnixStream::connect(&vsock).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    drop(s);

    let mut a = UnixStream::connect(&api).unwrap();
    a.write_all(b"state\nflush-and-exit\n").unwrap();
    let mut replies = String::new();
    a.read_to_string(&mut replies).unwrap();
    assert_eq!(
        replies,
        "{\"ok\":true,\"state\":\"running\"}\n{\"ok\":true,\"state\":\"exiting\"}\n"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!api.exists());
}
