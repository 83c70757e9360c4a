//! The lab VM's QEMU process: its command line (TCG, nested SVM, 9p shares, console and
//! virtio-serial ports) and its spawning with those ports wired to pipes of ours.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// The lab's output channels, in order: the kernel console (ISA serial ttyS0), then the
/// virtio-serial ports `/init` finds by name for the command's stdout, stderr and status.
/// Virtio ports are fast and, unlike a serial tty, look like pipes to the command.
pub const PORTS: usize = 4;
const PORT_NAMES: [&str; PORTS - 1] = ["lab.stdout", "lab.stderr", "lab.status"];
/// First descriptor number the ports get in QEMU.
const FIRST_PORT_FD: RawFd = 3;

/// What the lab VM is made of.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub control_dir: PathBuf,
    /// Shared writable at its own path, above the read-only root.
    pub writable_dir: Option<PathBuf>,
    /// Appended to the kernel command line (e.g. `loglevel=7` to debug the lab's boot).
    pub extra_cmdline: String,
}

/// A running lab VM and the read ends of its serial ports.
pub struct Vm {
    pub child: Child,
    pub ports: [File; PORTS],
}

impl VmConfig {
    /// The kernel command line: quiet console on ttyS0, no reboot loop, the control dir.
    pub fn cmdline(&self) -> String {
        let mut line = format!(
            "console=ttyS0 quiet panic=-1 mitigations=off lab.dir={}",
            self.control_dir.display()
        );
        if !self.extra_cmdline.is_empty() {
            line.push(' ');
            line.push_str(&self.extra_cmdline);
        }
        line
    }

    /// QEMU's arguments; port i writes to descriptor 3 + i.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(s.into());
        for s in [
            "-accel",
            "tcg,thread=multi",
            "-M",
            "pc",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            push(s.to_owned());
        }
        push("-cpu".into());
        push(self.cpu_model.clone());
        push("-smp".into());
        push(self.cpus.to_string());
        push("-m".into());
        push(format!("{}M", self.memory_mib));
        push("-kernel".into());
        push(self.vmlinux.display().to_string());
        push("-initrd".into());
        push(self.initramfs.display().to_string());
        push("-append".into());
        push(self.cmdline());
        for i in 0..PORTS {
            push("-chardev".into());
            push(format!(
                "file,id=lab{i},path=/proc/self/fd/{},append=on",
                FIRST_PORT_FD + i as RawFd
            ));
        }
        push("-serial".into());
        push("chardev:lab0".into());
        push("-device".into());
        push("virtio-serial-pci,id=labports".into());
        for (i, name) in PORT_NAMES.iter().enumerate() {
            push("-device".into());
            push(format!(
                "virtserialport,bus=labports.0,nr={},chardev=lab{},name={name}",
                i + 1,
                i + 1
            ));
        }
        push("-virtfs".into());
        push(
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
                .into(),
        );
        if let Some(dir) = &self.writable_dir {
            push("-virtfs".into());
            push(format!(
                "local,path={},mount_tag=labcwd,security_model=none,multidevs=remap",
                option_value(dir)
            ));
        }
        a
    }

    /// Starts QEMU in its own process group, killed by the kernel if our thread dies.
    pub fn spawn(&self) -> io::Result<Vm> {
        let mut reads = Vec::with_capacity(PORTS);
        let mut writes = Vec::with_capacity(PORTS);
        for _ in 0..PORTS {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            // Park the write end high, so the dup2s in the child cannot clobber each other.
            let high = fcntl(w.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(64))?;
            // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
            writes.push(unsafe { OwnedFd::from_raw_fd(high) });
            reads.push(File::from(r));
        }
        let raw: Vec<RawFd> = writes.iter().map(|w| w.as_raw_fd()).collect();

        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, dup2) on descriptors that are open in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, FIRST_PORT_FD + i as RawFd) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // Our copies of the write ends go now, so the pipes end when QEMU does.
        drop(writes);
        let ports: [File; PORTS] = reads
            .try_into()
            .map_err(|_| io::Error::other("pipe count"))?;
        Ok(Vm { child, ports })
    }
}

/// Escapes a QEMU option value: a comma is written twice.
fn option_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            qemu: "qemu-system-x86_64".into(),
            cpu_model: "max,-xsave".into(),
            cpus: 2,
            memory_mib: 3072,
            vmlinux: "/c/vmlinux".into(),
            initramfs: "/c/initramfs.cpio".into(),
            control_dir: "/var/tmp/sandbox-lab-x".into(),
            writable_dir: Some("/w/a,b".into()),
            extra_cmdline: "loglevel=7".into(),
        }
    }

    #[test]
    fn args_wire_ports_and_shares() {
        let args: Vec<String> = config()
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("-cpu max,-xsave -smp 2 -m 3072M"),
            "{joined}"
        );
        assert!(
            joined.contains("lab.dir=/var/tmp/sandbox-lab-x"),
            "{joined}"
        );
        assert!(
            joined.contains("file,id=lab3,path=/proc/self/fd/6"),
            "{joined}"
        );
        assert!(joined.contains("readonly=on"), "{joined}");
        assert!(joined.contains("path=/w/a,,b,mount_tag=labcwd"), "{joined}");
        assert_eq!(args.iter().filter(|a| *a == "-chardev").count(), PORTS);
        assert!(joined.contains("-serial chardev:lab0"), "{joined}");
        assert!(
            joined.contains("virtserialport,bus=labports.0,nr=3,chardev=lab3,name=lab.status"),
            "{joined}"
        );
    }
}
