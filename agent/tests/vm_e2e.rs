//! The agent as PID 1 of a real microVM: `sandbox-vmm` boots the guest kernel with the
//! initramfs, and the host client reaches the agent through the VMM's hybrid vsock socket.
//! Needs real KVM, so it runs in the lab (`cargo xtask test`, or `cargo xtask lab --` on the
//! test binary with `--ignored`).
//!
//! Inputs (environment, defaults in brackets): SANDBOX_VMM [target/release/sandbox-vmm],
//! SANDBOX_VMLINUX [target/guest/vmlinux], SANDBOX_INITRAMFS [target/guest/initramfs.cpio],
//! SANDBOX_ROOTFS_IMAGE [built here from /usr/bin/busybox with mkfs.ext4 -d; without them the
//! test is a recorded skip, and a failure under CI] — an ext4 image with a busybox root.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::client::{AgentClient, Endpoint, ExitStatus, RootfsDevice, StdioSet, StreamKind};
use sandbox_tests::require;

const BUSYBOX: &str = "/usr/bin/busybox";

/// Output the bulk container writes by default: 16 MiB, far beyond the vsock credit window, so
/// flow control and ordering are exercised; SANDBOX_E2E_BULK_BYTES overrides it. The issue's
/// 100 MiB end to end (CLI, agent, vsock) is tests/tests/e2e_run.rs's large-output test. Long
/// runs here meet the nested lab's own faults (SVM emulated by QEMU 7.2 TCG): now and then a
/// guest triple fault (after 2, 12, 98 or 139 MiB, once during boot with no vsock traffic at
/// all), an L1 kernel panic in svm_vcpu_run, or an L1 hang. A KVM trace of one triple fault
/// showed the emulated CPU taking an instruction-fetch #PF on mapped kernel text right after an
/// MMIO read (virtio-mmio InterruptStatus), with no exception injected by KVM; the guest RAM
/// after another held intact kernel page tables, IDT and code: the emulator's fault, not the
/// vsock device's. So the lab runs a smaller amount.
const BULK_BYTES: usize = 16 << 20;

fn bulk_bytes() -> usize {
    std::env::var("SANDBOX_E2E_BULK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BULK_BYTES)
}

fn input(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(default)
    })
}

/// Longest the whole test may take before the VMM is killed, so a stalled stream fails the
/// test (its reads end) instead of hanging the lab run. Not a performance limit.
const WATCHDOG: Duration = Duration::from_secs(600);

/// The VMM process; killed and reaped on drop if still running.
struct Vm {
    child: Child,
    done: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Kills the VMM after [`WATCHDOG`] unless the test has finished.
    fn start_watchdog(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let done = self.done.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + WATCHDOG;
            while std::time::Instant::now() < deadline {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !done.load(Ordering::SeqCst) {
                eprintln!("watchdog: killing sandbox-vmm after {WATCHDOG:?}");
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn boot(dir: tempfile::TempDir, vsock: &Path, image: &Path) -> Vm {
    let mut cmd = Command::new(input("SANDBOX_VMM", "target/release/sandbox-vmm"));
    cmd.arg("--kernel")
        .arg(input("SANDBOX_VMLINUX", "target/guest/vmlinux"))
        .arg("--initrd")
        .arg(input("SANDBOX_INITRAMFS", "target/guest/initramfs.cpio"))
        .args(["--cmdline", "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet"])
        .args(["--memory", "256", "--vcpus", "1", "--serial", "stdout"])
        .arg("--vsock")
        .arg(format!("3,{}", vsock.display()));
    cmd.arg("--block").arg(format!("{},ro", image.display()));
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .expect("starting sandbox-vmm");
    let vm = Vm {
        child,
        done: Arc::new(AtomicBool::new(false)),
        _dir: dir,
    };
    vm.start_watchdog();
    vm
}

/// Whether `program` can be started (it is on PATH).
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// An ext4 image of a busybox root in `dir`; the test has checked that busybox and mkfs.ext4
/// are there.
fn busybox_image(dir: &Path) -> PathBuf {
    let root = dir.join("image");
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "hostname", "cat", "yes", "head"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let image = dir.join("rootfs.ext4");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&root)
        .arg(&image)
        .status()
        .expect("running mkfs.ext4");
    assert!(made.success(), "mkfs.ext4 -d {}: {made}", root.display());
    image
}

fn container_spec(script: &str, env: &[String]) -> String {
    let mut all_env = vec!["PATH=/bin".to_string()];
    all_env.extend_from_slice(env);
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", script], "env": all_env, "cwd": "/",
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    })
    .to_string()
}

/// Reads a stream to its end, printing progress so a stall shows where it happened.
fn read_all_with_progress(stream: &mut impl Read, what: &str, expected: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut next_report = 64 << 10;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() >= expected && out.len() - n < expected {
            eprintln!("{what}: all {expected} bytes arrived; waiting for the end of the stream");
        }
        if out.len() >= next_report {
            eprintln!("{what}: {} bytes so far", out.len());
            next_report += if out.len() < 1 << 20 {
                64 << 10
            } else {
                8 << 20
            };
        }
    }
}

/// Guest → host bulk output through the VMM's vsock device, checked byte for byte.
fn bulk_output(client: &AgentClient, rootfs: &RootfsDevice) {
    let bulk_len = bulk_bytes();
    let spec = container_spec(
        "yes 0123456789abcdef | head -c $BYTES",
        &[format!("BYTES={bulk_len}")],
    );
    let out_only = StdioSet {
        stdin: false,
        stdout: true,
        stderr: false,
    };
    client
        .create_container("bulk", &spec, rootfs, out_only, false)
        .unwrap();
    let mut stdout = client.open_stream("bulk", "", StreamKind::Stdout).unwrap();
    client.start_container("bulk").unwrap();
    let started = std::time::Instant::now();
    let out = read_all_with_progress(&mut stdout, "bulk stdout", bulk_len);
    println!(
        "{} bytes of output through vsock in {:.2} s",
        out.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.len(), bulk_len);
    let line = b"0123456789abcdef\n";
    for (i, chunk) in out.chunks(line.len()).enumerate() {
        assert_eq!(chunk, &line[..chunk.len()], "output corrupted at line {i}");
    }
    assert_eq!(
        client.wait_process("bulk", "").unwrap(),
        ExitStatus::Exited(0)
    );
    client.remove_container("bulk", false).unwrap();
}

/// Host → guest stdin, ended by closing the stream's write side, echoed back by cat.
fn stdin_round_trip(client: &AgentClient, rootfs: &RootfsDevice) {
    let all = StdioSet {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    client
        .create_container("cat", &container_spec("cat", &[]), rootfs, all, false)
        .unwrap();
    let mut stdin = client.open_stream("cat", "", StreamKind::Stdin).unwrap();
    let mut stdout = client.open_stream("cat", "", StreamKind::Stdout).unwrap();
    client.start_container("cat").unwrap();
    let input: Vec<u8> = (0..(200u32 << 10)).map(|i| (i % 251) as u8).collect();
    let expected = input.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
        eprintln!("stdin: all {} bytes written; closing", input.len());
        stdin.close_write().unwrap();
    });
    let out = read_all_with_progress(&mut stdout, "cat stdout", expected.len());
    writer.join().unwrap();
    assert!(
        out == expected,
        "stdin came back different ({} bytes)",
        out.len()
    );
    assert_eq!(
        client.wait_process("cat", "").unwrap(),
        ExitStatus::Exited(0)
    );
    client.remove_container("cat", false).unwrap();
}

#[test]
#[ignore = "needs real KVM: run by cargo xtask test in the lab"]
fn agent_in_a_microvm_answers_over_hybrid_vsock() {
    // Outside /tmp: the lab hides the host's /tmp.
    let dir = tempfile::Builder::new()
        .prefix("agent-e2e")
        .tempdir_in("/var/tmp")
        .unwrap();
    let vsock = dir.path().join("v.sock");
    let image = match std::env::var_os("SANDBOX_ROOTFS_IMAGE") {
        Some(image) => PathBuf::from(image),
        None => {
            require!(
                Path::new(BUSYBOX).exists(),
                "no {BUSYBOX} for the container image (and no SANDBOX_ROOTFS_IMAGE)"
            );
            require!(
                runs("mkfs.ext4"),
                "no mkfs.ext4 for the container image (and no SANDBOX_ROOTFS_IMAGE)"
            );
            busybox_image(dir.path())
        }
    };
    let mut vm = boot(dir, &vsock, &image);

    let endpoint = Endpoint::HybridVsock {
        socket: vsock.clone(),
    };
    let client =
        AgentClient::wait_for_agent(&endpoint, Duration::from_secs(120), Duration::from_secs(30))
            .expect("the agent answers through the VMM's vsock");
    let check = client.check().unwrap();
    println!(
        "agent {} up, guest uptime {} ms",
        check.version, check.uptime_ms
    );
    client
        .create_sandbox("e2e", "e2e-guest", &["10.0.2.3".into()], &[])
        .unwrap();
    let stats = client.stats().unwrap();
    assert!(stats.mem_total_bytes > 100 << 20, "{stats:?}");

    // The only program in the bare initramfs is the agent itself: run it with a bad flag and
    // read its complaint on stderr.
    let json = serde_json::json!({"args": ["/init", "--bogus"], "env": [], "cwd": "/"});
    let stdio = StdioSet {
        stdin: false,
        stdout: false,
        stderr: true,
    };
    client
        .exec_process("", "bad", &json.to_string(), stdio, false)
        .unwrap();
    let mut stderr = client.open_stream("", "bad", StreamKind::Stderr).unwrap();
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    assert!(text.contains("unknown argument \"--bogus\""), "{text:?}");
    assert_eq!(
        client.wait_process("", "bad").unwrap(),
        ExitStatus::Exited(1)
    );

    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", "echo hi from $(hostname); exit 3"],
                    "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hostname": "box",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "mount"}]}
    });
    let rootfs = RootfsDevice {
        device: "vda".into(),
        fstype: "ext4".into(),
    };
    let out = StdioSet {
        stdin: false,
        stdout: true,
        stderr: false,
    };
    client
        .create_container("c1", &spec.to_string(), &rootfs, out, false)
        .unwrap();
    let mut stdout = client.open_stream("c1", "", StreamKind::Stdout).unwrap();
    client.start_container("c1").unwrap();
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    assert_eq!(text, "hi from box\n");
    assert_eq!(client.wait_process("c1", "").unwrap().code(), 3);
    client.remove_container("c1", false).unwrap();

    bulk_output(&client, &rootfs);
    stdin_round_trip(&client, &rootfs);

    client.shutdown().unwrap();
    let status = vm.child.wait().unwrap();
    vm.done.store(true, Ordering::SeqCst);
    println!("sandbox-vmm exited: {status}");
    assert!(status.success(), "{status}");
}
