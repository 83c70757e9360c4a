//! Booting the guest (our vmlinux + root image) to agent-ready under a VMM, timed: the
//! reference boot with QEMU microvm, and the same with our `sandbox-vmm`. Needs real KVM.
//! Ours maps the erofs root image into the guest with virtio-pmem and boots it with DAX, as
//! the controller does (docs/CONVENTIONS.md); QEMU's microvm machine cannot plug a
//! virtio-pmem device (it is a memory device only its PCI proxy places), so the reference
//! boots the same image from a read-only virtio-blk disk.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The agent's readiness line on the console (see docs/CONVENTIONS.md).
pub const READY_MARKER: &str = "SANDBOX-AGENT-READY uptime_ms=";
/// Kernel command line of the boot under our VMM (the controller's, shim::controller::config).
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd percpu_alloc=page noreplace-smp page_reporting.page_reporting_order=0 slub_max_order=0 quiet";
/// The same for QEMU microvm, which has no i8042 to reset through: a triple fault resets
/// it, and `-no-reboot` turns the reset into QEMU's exit.
pub const QEMU_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd percpu_alloc=page noreplace-smp page_reporting.page_reporting_order=0 slub_max_order=0 quiet";
/// The root: the first pmem device, erofs, with DAX.
pub const ROOT_CMDLINE: &str =
    "root=/dev/pmem0 rootfstype=erofs rootflags=dax=always ro rootwait init=/init";
/// The same image as QEMU's first virtio-blk disk.
pub const QEMU_ROOT_CMDLINE: &str = "root=/dev/vda rootfstype=erofs ro rootwait init=/init";
/// The agent powers the VM off right after it is ready.
pub const EXIT_AFTER_READY: &str = "sandbox.exit_after_ready";
/// Guest memory of the timed boot: the controller's default (shim::controller::config::DEFAULT_MEMORY_MIB).
pub const MEMORY_MIB: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{program} exited ({status}) before the agent was ready; console:\n{console}")]
    ExitedEarly {
        program: PathBuf,
        status: String,
        console: String,
    },
    #[error("no `{READY_MARKER}<N>` line from {program} within {} s; console:\n{console}", .timeout.as_secs())]
    NotReady {
        program: PathBuf,
        timeout: Duration,
        console: String,
    },
    #[error("waiting for {program} failed: {source}")]
    Wait { program: PathBuf, source: io::Error },
}

/// Which VMM boots the guest.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// `qemu-system-x86_64 -M microvm`, the reference.
    Qemu,
    /// Our VMM binary.
    Sandbox { binary: PathBuf },
}

/// One timed boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    pub vmm: Vmm,
    pub vmlinux: PathBuf,
    /// The erofs root image.
    pub rootfs: PathBuf,
    /// Whether the guest powers off once the agent is ready (else it stays up).
    pub exit_after_ready: bool,
    /// Limit for reaching the marker.
    pub ready_timeout: Duration,
    /// Limit for the VMM to exit after the marker, before it is killed.
    pub exit_timeout: Duration,
}

/// What a timed boot measured.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// From the VMM's start to the marker line on its console.
    pub wall: Duration,
    /// The guest's CLOCK_BOOTTIME when it printed the marker.
    pub guest_ms: u64,
    /// Whether the VMM exited by itself after the marker (else it was killed).
    pub exited: bool,
    /// The console up to the VMM's exit.
    pub console: String,
}

impl BootReport {
    /// The line `cargo xtask boot` prints.
    pub fn summary(&self) -> String {
        format!(
            "agent ready in {} ms (guest clock {} ms)",
            self.wall.as_millis(),
            self.guest_ms
        )
    }
}

impl BootConfig {
    pub fn new(vmm: Vmm, vmlinux: PathBuf, rootfs: PathBuf) -> Self {
        Self {
            vmm,
            vmlinux,
            rootfs,
            exit_after_ready: true,
            ready_timeout: Duration::from_secs(120),
            exit_timeout: Duration::from_secs(15),
        }
    }

    /// The guest kernel command line under this VMM.
    pub fn cmdline(&self) -> String {
        let (base, root) = match self.vmm {
            Vmm::Qemu => (QEMU_CMDLINE, QEMU_ROOT_CMDLINE),
            Vmm::Sandbox { .. } => (CMDLINE, ROOT_CMDLINE),
        };
        let mut c = format!("{base} {root}");
        if self.exit_after_ready {
            c.push(' ');
            c.push_str(EXIT_AFTER_READY);
        }
        c
    }

    /// The VMM's command line.
    pub fn command(&self) -> Command {
        match &self.vmm {
            Vmm::Qemu => {
                let mut drive = std::ffi::OsString::from("file=");
                drive.push(&self.rootfs);
                drive.push(",if=none,id=root,format=raw,readonly=on");
                let mut c = Command::new("qemu-system-x86_64");
                // Without ACPI (our guest has none) QEMU declares its virtio-mmio devices on
                // the kernel command line, as we do.
                c.args(["-accel", "kvm", "-M", "microvm,acpi=off", "-cpu", "host"])
                    .args(["-m", &format!("{MEMORY_MIB}M")])
                    .args(["-smp", "1", "-nodefaults", "-no-user-config"])
                    .args(["-nographic", "-no-reboot", "-serial", "stdio"])
                    .arg("-drive")
                    .arg(drive)
                    .args(["-device", "virtio-blk-device,drive=root"])
                    .arg("-kernel")
                    .arg(&self.vmlinux)
                    .args(["-append", &self.cmdline()]);
                c
            }
            Vmm::Sandbox { binary } => {
                let mut pmem = self.rootfs.clone().into_os_string();
                pmem.push(",ro");
                let mut c = Command::new(binary);
                c.arg("--kernel")
                    .arg(&self.vmlinux)
                    .arg("--pmem")
                    .arg(pmem)
                    .args(["--cmdline", &self.cmdline()])
                    .args(["--memory", &MEMORY_MIB.to_string()])
                    .args(["--vcpus", "1", "--serial", "stdout"]);
                c
            }
        }
    }

    fn program(&self) -> PathBuf {
        self.command().get_program().into()
    }

    /// Boots, waits for the marker and for the VMM's exit (killing it after `exit_timeout`).
    pub fn run(&self) -> Result<BootReport, Error> {
        let program = self.program();
        let (start, mut child, lines) =
            spawn_with_console(self.command()).map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;

        let mut console = String::new();
        let ready_deadline = start + self.ready_timeout;
        let ready = loop {
            let left = ready_deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok((at, line)) => {
                    console.push_str(line.trim_end_matches('\r'));
                    console.push('\n');
                    if let Some(ms) = parse_marker(&line) {
                        break Some((at - start, ms));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= ready_deadline {
                break None;
            }
        };
        let Some((wall, guest_ms)) = ready else {
            let status = kill(&mut child).map_err(|source| Error::Wait {
                program: program.clone(),
                source,
            })?;
            return Err(match status {
                Some(status) => Error::ExitedEarly {
                    program,
                    status: status.to_string(),
                    console,
                },
                None => Error::NotReady {
                    program,
                    timeout: self.ready_timeout,
                    console,
                },
            });
        };

        let exit_deadline = Instant::now() + self.exit_timeout;
        let mut exited = false;
        while Instant::now() < exit_deadline {
            if child
                .try_wait()
                .map_err(|source| Error::Wait {
                    program: program.clone(),
                    source,
                })?
                .is_some()
            {
                exited = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        if !exited {
            kill(&mut child).map_err(|source| Error::Wait {
                program: program.clone(),
                source,
            })?;
        }
        while let Ok((_, line)) = lines.recv_timeout(Duration::from_millis(200)) {
            console.push_str(line.trim_end_matches('\r'));
            console.push('\n');
        }
        Ok(BootReport {
            wall,
            guest_ms,
            exited,
            console,
        })
    }
}

/// A console line and when it arrived.
pub type ConsoleLine = (Instant, String);

/// Starts a VMM in its own process group (killed if we die) and reads its stdout and stderr
/// as lines on a channel, until both end; returns the start time, the child and the lines.
pub fn spawn_with_console(
    mut cmd: Command,
) -> io::Result<(Instant, Child, mpsc::Receiver<ConsoleLine>)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL when we die.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let (tx, lines) = mpsc::channel();
    for pipe in [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(File::from(pipe)).lines() {
                let Ok(line) = line else { break };
                // Keep draining when nobody listens any more, so the VMM never blocks.
                let _ = tx.send((Instant::now(), line));
            }
        });
    }
    Ok((start, child, lines))
}

/// Kills the VMM's process group; returns its status if it had already exited.
fn kill(child: &mut Child) -> io::Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    // SAFETY: killpg only sends a signal to the group our live child leads.
    unsafe {
        libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
    }
    child.wait()?;
    Ok(None)
}

/// `... SANDBOX-AGENT-READY uptime_ms=123` → 123.
pub fn parse_marker(line: &str) -> Option<u64> {
    let rest = &line[line.find(READY_MARKER)? + READY_MARKER.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_marker_anywhere_in_a_line() {
        assert_eq!(
            parse_marker("SANDBOX-AGENT-READY uptime_ms=812\r"),
            Some(812)
        );
        assert_eq!(
            parse_marker("[ 1.0] x SANDBOX-AGENT-READY uptime_ms=5 y"),
            Some(5)
        );
        assert_eq!(parse_marker("SANDBOX-AGENT-READY uptime_ms="), None);
        assert_eq!(parse_marker("booting"), None);
    }

    #[test]
    fn qemu_reference_command_line() {
        let cfg = BootConfig::new(Vmm::Qemu, "/g/vmlinux".into(), "/g/rootfs.erofs".into());
        let args: Vec<String> = cfg
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("-accel kvm -M microvm,acpi=off -cpu host -m 128M"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "-drive file=/g/rootfs.erofs,if=none,id=root,format=raw,readonly=on \
                 -device virtio-blk-device,drive=root -kernel /g/vmlinux"
            ),
            "{joined}"
        );
        assert_eq!(
            args.last().unwrap(),
            &format!("{QEMU_CMDLINE} {QEMU_ROOT_CMDLINE} {EXIT_AFTER_READY}")
        );
    }

    #[test]
    fn sandbox_vmm_command_line() {
        let vmm = Vmm::Sandbox {
            binary: "/t/sandbox-vmm".into(),
        };
        let mut cfg = BootConfig::new(vmm, "/g/vmlinux".into(), "/g/rootfs.erofs".into());
        let args = |cfg: &BootConfig| -> String {
            cfg.command()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            args(&cfg),
            format!(
                "--kernel /g/vmlinux --pmem /g/rootfs.erofs,ro --cmdline {CMDLINE} {ROOT_CMDLINE} \
                 {EXIT_AFTER_READY} --memory 128 --vcpus 1 --serial stdout"
            )
        );
        cfg.exit_after_ready = false;
        assert!(!args(&cfg).contains(EXIT_AFTER_READY));
    }
}
