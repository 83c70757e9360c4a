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

/// A pmem file holding `text` and a NUL, padded to 3 MiB (the region is then 4 MiB).
fn pmem_file(g: &GuestDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = g.path(name);
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(3 << 20, 0);
    std::fs::write(&path, &bytes).unwrap();
    path
}

#[test]
fn a_read_only_pmem_region_is_guest_memory_the_guest_cannot_change() {
    let g = GuestDir::new();
    let path = pmem_file(&g, "ro.img", "PMEM-CONTENT");
    let (out, console) = g.run("pmem", &["--pmem", &format!("{},ro", path.display())]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    // The guest read the file's bytes at the region's address (4 GiB), then wrote one.
    let readonly_slots = kvm_ioctls::Kvm::new()
        .unwrap()
        .check_extension(kvm_ioctls::Cap::ReadonlyMem);
    let after = if readonly_slots {
        "PMEM-CONTENT" // the write exited as MMIO and was dropped
    } else {
        "XMEM-CONTENT" // it went to a private copy
    };
    assert_eq!(console, format!("PMEM-CONTENT\n{after}\n"));
    assert!(std::fs::read(&path).unwrap().starts_with(b"PMEM-CONTENT\0"));
}

#[test]
fn a_writable_pmem_region_writes_through_to_its_file() {
    let g = GuestDir::new();
    let path = pmem_file(&g, "rw.img", "PMEM-CONTENT");
    let (out, console) = g.run("pmem", &["--pmem", &path.display().to_string()]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(console, "PMEM-CONTENT\nXMEM-CONTENT\n");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"XMEM-CONTENT\0"));
    assert_eq!(bytes.len(), 3 << 20, "the file keeps its size");
}

#[test]
fn a_bad_pmem_file_is_one_error_naming_it() {
    let g = GuestDir::new();
    let empty = g.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let (out, _) = g.run("pmem", &["--pmem", &empty.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "sandbox-vmm: --pmem {}: {} is empty\n",
            empty.display(),
            empty.display()
        )
    );
}
