//! The real binary rejects bad settings with one line naming the flag, and a non-zero status.
mod common;

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_kernel_file() {
    let (code, err) = run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "sandbox-vmm: --kernel: /nonexistent/vmlinux: No such file\n"
    );
}

#[test]
fn bad_vcpus() {
    let g = common::GuestDir::new();
    let k = g.kernel().display().to_string();
    let (code, err) = run(&["--kernel", &k, "--vcpus", "0"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "sandbox-vmm: --vcpus: must be between 1 and 32, got 0\n"
    );
}

#[test]
fn kernel_that_is_not_elf() {
    let g = common::GuestDir::new();
    let bad = g.path("bzImage");
    std::fs::write(&bad, vec![0u8; 4096]).unwrap();
    let (code, err) = run(&["--kernel", bad.to_str().unwrap(), "--memory", "16"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("sandbox-vmm: --kernel {}: ", bad.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn elf_without_pvh_note() {
    let g = common::GuestDir::new();
    let mut elf = common::pvh_elf(common::GUEST_CODE);
    // Turn the PT_NOTE program header (the second) into PT_NULL.
    elf[64 + 56..64 + 56 + 4].copy_from_slice(&0u32.to_le_bytes());
    let path = g.path("nopvh");
    std::fs::write(&path, elf).unwrap();
    let (code, err) = run(&["--kernel", path.to_str().unwrap(), "--memory", "16"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no PVH entry point"), "{err}");
}

#[test]
fn fs_share_that_is_not_a_directory() {
    let g = common::GuestDir::new();
    let k = g.kernel().display().to_string();
    let (code, err) = run(&["--kernel", &k, "--fs", "tag=vol,path=/nonexistent/dir"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "sandbox-vmm: --fs: /nonexistent/dir: No such directory\n"
    );
    let (code, err) = run(&["--kernel", &k, "--fs", "tag=vol"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "sandbox-vmm: --fs: no path; expected tag=TAG,path=DIR[,ro]\n"
    );
}
