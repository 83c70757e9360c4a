//! Early init of the guest: as PID 1, mount the pseudo filesystems and attach the console.
//! `report_ready` prints the readiness marker of docs/CONVENTIONS.md and may power off.

use std::fs;
use std::io::Write;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::stat::Mode;
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{dup2, getpid, sync};

/// The line the host waits for; followed by ` uptime_ms=<N>`.
pub const READY_MARKER: &str = "SANDBOX-AGENT-READY";
/// Kernel command line flag: power off right after reporting readiness.
pub const EXIT_AFTER_READY_FLAG: &str = "sandbox.exit_after_ready";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create mount point {path}: {source}")]
    CreateMountPoint {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
    #[error("cannot create symlink {path}: {source}")]
    Symlink {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot open /dev/console: {0}")]
    OpenConsole(nix::Error),
    #[error("cannot attach /dev/console to fd {fd}: {source}")]
    AttachConsole { fd: i32, source: nix::Error },
    #[error("cannot read CLOCK_BOOTTIME: {0}")]
    BootTime(nix::Error),
    #[error("cannot write the readiness marker: {0}")]
    WriteMarker(std::io::Error),
    #[error("cannot read /proc/cmdline: {0}")]
    ReadCmdline(std::io::Error),
    #[error("reboot(RB_AUTOBOOT) failed: {0}")]
    Reboot(nix::Error),
}

/// One filesystem PID 1 mounts, in order.
struct PseudoMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Order matters: /dev/pts and /dev/shm live on the devtmpfs, the cgroup
/// mount point on sysfs.
const PSEUDO_MOUNTS: &[PseudoMount] = &[
    PseudoMount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoMount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    PseudoMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    PseudoMount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    PseudoMount {
        fstype: "tmpfs",
        target: "/run",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    PseudoMount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    // The root image is read-only; the agent writes /etc/resolv.conf (CreateSandbox's DNS).
    PseudoMount {
        fstype: "tmpfs",
        target: "/etc",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    PseudoMount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// The usual /dev symlinks that devtmpfs does not create.
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// Whether this process is the guest's init.
pub fn is_pid1() -> bool {
    getpid().as_raw() == 1
}

/// Prepares the guest when running as PID 1; does nothing otherwise (tests, host runs).
pub fn setup() -> Result<(), Error> {
    if !is_pid1() {
        return Ok(());
    }
    mount_pseudo_filesystems()?;
    create_dev_symlinks()?;
    attach_console()
}

fn mount_pseudo_filesystems() -> Result<(), Error> {
    for m in PSEUDO_MOUNTS {
        fs::create_dir_all(m.target).map_err(|source| Error::CreateMountPoint {
            path: m.target,
            source,
        })?;
        mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data).map_err(|source| {
            Error::Mount {
                fstype: m.fstype,
                target: m.target,
                source,
            }
        })?;
    }
    Ok(())
}

fn create_dev_symlinks() -> Result<(), Error> {
    for (target, path) in DEV_SYMLINKS {
        match std::os::unix::fs::symlink(target, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Symlink { path, source: e })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/console (the devtmpfs node now), so
/// output works even if the kernel found no console in the initramfs.
fn attach_console() -> Result<(), Error> {
    let console = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(Error::OpenConsole)?;
    for fd in 0..=2 {
        dup2(console, fd).map_err(|source| Error::AttachConsole { fd, source })?;
    }
    if console > 2 {
        // The descriptor was only needed as the dup2 source.
        let _ = nix::unistd::close(console);
    }
    Ok(())
}

/// Milliseconds since the guest kernel started, including time suspended.
pub fn uptime_ms() -> Result<u64, Error> {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(Error::BootTime)?;
    let ms = ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000;
    Ok(ms)
}

/// The marker line, without the newline.
pub fn ready_line(uptime_ms: u64) -> String {
    format!("{READY_MARKER} uptime_ms={uptime_ms}")
}

/// Connects to the host's ready port and says so (protocol::READY_VSOCK_PORT), on a thread
/// of its own: a host that does not listen resets the connection, which is fine.
fn tell_the_host() {
    let notify = || -> std::io::Result<()> {
        let addr = vsock::VsockAddr::new(vsock::VMADDR_CID_HOST, protocol::READY_VSOCK_PORT);
        let mut stream = vsock::VsockStream::connect(&addr)?;
        stream.write_all(protocol::READY_LINE)
    };
    let spawned = std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || {
            if let Err(e) = notify() {
                log::debug!("ready notification to the host: {e}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the ready notification: {e}");
    }
}

/// Whether a kernel command line asks the agent to power off once ready.
pub fn wants_exit_after_ready(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w == EXIT_AFTER_READY_FLAG)
}

/// Prints the readiness marker on the console. As PID 1 with
/// `sandbox.exit_after_ready` on the command line, then syncs and reboots,
/// which ends the VM (reboot=k, QEMU -no-reboot).
pub fn report_ready() -> Result<(), Error> {
    let line = ready_line(uptime_ms()?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(Error::WriteMarker)?;
    drop(out);
    if !is_pid1() {
        return Ok(());
    }
    tell_the_host();
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(Error::ReadCmdline)?;
    if wants_exit_after_ready(&cmdline) {
        sync();
        let never = reboot(RebootMode::RB_AUTOBOOT).map_err(Error::Reboot)?;
        match never {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_matches_the_convention() {
        assert_eq!(ready_line(1234), "SANDBOX-AGENT-READY uptime_ms=1234");
    }

    #[test]
    fn exit_flag_is_a_whole_word() {
        assert!(wants_exit_after_ready(
            "console=ttyS0 reboot=k sandbox.exit_after_ready quiet\n"
        ));
        assert!(!wants_exit_after_ready("console=ttyS0 reboot=k quiet"));
        assert!(!wants_exit_after_ready("sandbox.exit_after_ready_not"));
    }

    #[test]
    fn uptime_is_positive_and_monotonic() {
        let a = uptime_ms().unwrap();
        let b = uptime_ms().unwrap();
        assert!(a > 0);
        assert!(b >= a);
    }

    #[test]
    fn setup_is_a_no_op_outside_pid1() {
        assert!(!is_pid1());
        setup().unwrap();
    }

    #[test]
    fn mount_targets_come_after_their_parents() {
        let pos = |t: &str| PSEUDO_MOUNTS.iter().position(|m| m.target == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
    }
}
