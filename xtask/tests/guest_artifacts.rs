//! Checks the guest artifacts `cargo xtask setup` linked into target/guest/: a PVH-bootable
//! vmlinux, a static agent, and an initramfs with /init and /dev/console.

use std::io::Read;
use std::path::PathBuf;

use goblin::elf::{program_header::PT_INTERP, Elf};

fn artifact(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run `cargo xtask setup` first",
            path.display()
        )
    })
}

#[test]
fn vmlinux_is_an_x86_64_elf_with_the_pvh_note() {
    let bytes = artifact("vmlinux");
    let elf = Elf::parse(&bytes).expect("vmlinux is ELF");
    assert!(elf.is_64);
    assert_eq!(elf.header.e_machine, goblin::elf::header::EM_X86_64);
    let pvh = elf
        .iter_note_headers(&bytes)
        .expect("vmlinux has PT_NOTE segments")
        .filter_map(Result::ok)
        .find(|n| n.name == "Xen" && n.n_type == 18)
        .expect("Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18)");
    let mut entry = [0u8; 4];
    entry.copy_from_slice(&pvh.desc[..4]);
    let entry = u32::from_le_bytes(entry);
    // The 32-bit entry lies inside the kernel's physical load range (it starts at 16 MiB).
    assert!(entry >= 0x100_0000, "PVH entry {entry:#x}");
    // Stripped: no symbol table left.
    assert!(
        elf.syms.is_empty(),
        "vmlinux still has {} symbols",
        elf.syms.len()
    );
}

#[test]
fn agent_is_static() {
    let bytes = artifact("sandbox-agent");
    let elf = Elf::parse(&bytes).expect("sandbox-agent is ELF");
    assert!(!elf.program_headers.iter().any(|p| p.p_type == PT_INTERP));
    assert!(elf.libraries.is_empty(), "needs {:?}", elf.libraries);
}

#[test]
fn initramfs_has_init_and_console() {
    let bytes = artifact("initramfs.cpio");
    let agent = artifact("sandbox-agent");
    let mut rest: &[u8] = &bytes;
    let mut init = None;
    let mut console = None;
    let mut names = Vec::new();
    loop {
        let mut r = cpio::NewcReader::new(rest).expect("newc entry");
        if r.entry().is_trailer() {
            break;
        }
        let name = r.entry().name().to_string();
        let mode = r.entry().mode();
        match name.as_str() {
            "init" => {
                let mut data = Vec::new();
                r.read_to_end(&mut data).unwrap();
                init = Some((mode, data));
            }
            "dev/console" => {
                console = Some((mode, r.entry().rdev_major(), r.entry().rdev_minor()));
            }
            _ => {}
        }
        names.push(name);
        rest = r.finish().unwrap();
    }
    let (mode, data) = init.expect("/init in the initramfs");
    assert_eq!(mode, 0o100755);
    assert!(data == agent, "/init is not target/guest/sandbox-agent");
    assert_eq!(console, Some((0o020600, 5, 1)), "/dev/console char 5,1");
    for dir in ["dev", "proc", "sys", "run", "tmp"] {
        assert!(names.iter().any(|n| n == dir), "no /{dir} in {names:?}");
    }
}

/// Boots vmlinux + initramfs in QEMU's microvm with TCG (no KVM needed) and waits for the
/// agent's readiness marker; `sandbox.exit_after_ready` makes the guest reboot, which ends
/// QEMU (-no-reboot).
#[test]
fn guest_boots_to_agent_ready_under_qemu_tcg() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let guest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
    let mut child = Command::new("qemu-system-x86_64")
        // acpi=off: QEMU then lists the virtio-mmio devices on the kernel command line.
        .args(["-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", "2", "-m", "256", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(guest.join("vmlinux"))
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio"))
        .args([
            "-append",
            "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd sandbox.exit_after_ready",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qemu-system-x86_64 (cargo xtask setup installs it)");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // A guard against a hung guest, not a performance check.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = status
        .unwrap_or_else(|| panic!("guest did not power off; console:\n{}", console.join("\n")));
    let ready = console
        .iter()
        .find_map(|l| l.strip_prefix("SANDBOX-AGENT-READY uptime_ms="))
        .unwrap_or_else(|| panic!("no readiness marker; console:\n{}", console.join("\n")));
    let ms: u64 = ready.trim().parse().expect("uptime_ms is a number");
    assert!(ms > 0);
    assert!(status.success(), "qemu: {status}, stderr: {stderr}");
    // PID 1 must not have died on the way (panic=-1 would also end QEMU).
    assert!(
        !console.iter().any(|l| l.contains("Kernel panic")),
        "{}",
        console.join("\n")
    );
}
