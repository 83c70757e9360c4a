//! Boots tiny bare guests on this host's /dev/kvm through the real `sandbox-vmm` binary
//! and checks the serial output, the exit status and the reported reason.
mod common;

use common::GuestDir;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn boots_through_pvh_and_prints_the_command_line_on_the_serial_port() {
    let g = GuestDir::new();
    let (out, console) = g.run("hello world=1", &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    // The guest checked the hvm_start_info magic in RBX and echoed cmdline_paddr.
    assert_eq!(console, "hello from the guest, cmdline: hello world=1\n");
}

#[test]
fn i8042_reset_exits_cleanly() {
    let g = GuestDir::new();
    let (out, console) = g.run("hello", &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(console.ends_with("hello\n"));
    assert_eq!(stderr(&out), "");
}

#[test]
fn unmapped_mmio_reads_as_all_ones_and_writes_are_dropped() {
    let g = GuestDir::new();
    let (out, console) = g.run("mmio", &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(console, "MMIO-OK\n");
}

#[test]
fn triple_fault_is_reported_with_a_non_zero_status() {
    let g = GuestDir::new();
    let (out, console) = g.run("triple", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(console, "");
    assert_eq!(
        stderr(&out),
        "sandbox-vmm: guest stopped: vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)\n"
    );
}

#[test]
fn application_processors_start_through_init_sipi() {
    for n in [2, 4] {
        let g = GuestDir::new();
        let (out, console) = g.run(&format!("s{n}"), &["--vcpus", &n.to_string()]);
        assert!(out.status.success(), "stderr: {}", stderr(&out));
        assert_eq!(console, format!("CPUS={n}\n"));
    }
}

#[test]
fn debug_logs_each_boot_phase() {
    let g = GuestDir::new();
    let (out, _) = g.run("hello", &["--debug"]);
    assert!(out.status.success());
    let err = stderr(&out);
    for phase in [
        "KVM setup",
        "memory",
        "load kernel",
        "devices",
        "first KVM_RUN",
    ] {
        assert!(
            err.contains(&format!("boot phase {phase}: done at")),
            "missing {phase} in {err}"
        );
    }
}

#[test]
fn serial_none_and_stdout_outputs() {
    let g = GuestDir::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"))
        .arg("--kernel")
        .arg(g.kernel())
        .args(["--cmdline", "hello", "--memory", "16", "--serial", "stdout"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the guest, cmdline: hello\n"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"))
        .arg("--kernel")
        .arg(g.kernel())
        .args(["--cmdline", "hello", "--memory", "16", "--serial", "none"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn stdin_reaches_the_guest_serial_port_with_serial_stdout() {
    use std::io::Write;
    let g = GuestDir::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"))
        .arg("--kernel")
        .arg(g.kernel())
        .args(["--cmdline", "echo", "--memory", "16", "--serial", "stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The guest echoes every byte it receives and resets after 'q'.
    child.stdin.take().unwrap().write_all(b"ping q").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping q");
}
