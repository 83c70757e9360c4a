//! A guest booted to agent-ready and left idle (the VMM keeps running): the boot of
//! `sandbox_tests::boot` without `sandbox.exit_after_ready`. Killed on drop.

use std::io;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sandbox_tests::boot::{self, BootConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} gave no agent-ready line within {} s; console:\n{console}", .timeout.as_secs())]
    NotReady {
        program: String,
        timeout: Duration,
        console: String,
    },
}

/// A running VMM whose guest's agent is ready.
pub struct IdleVm {
    child: Child,
    /// From spawn to the agent's ready line.
    pub ready: Duration,
}

/// The boot command of `config` with the kernel command line that keeps the guest running.
pub fn command(config: &BootConfig) -> Command {
    BootConfig {
        exit_after_ready: false,
        ..config.clone()
    }
    .command()
}

impl IdleVm {
    /// Boots and waits for the ready line (the console keeps being drained afterwards).
    pub fn start(config: &BootConfig, timeout: Duration) -> Result<IdleVm, Error> {
        let cmd = command(config);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let (start, mut child, lines) =
            boot::spawn_with_console(cmd).map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;
        super::log::line(&format!("idle: started {program} pid {}", child.id()));
        let mut console = String::new();
        let deadline = start + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok((at, line)) => {
                    if boot::parse_marker(&line).is_some() {
                        super::log::line(&format!(
                            "idle: pid {} ready after {} ms",
                            child.id(),
                            (at - start).as_millis()
                        ));
                        return Ok(IdleVm {
                            child,
                            ready: at - start,
                        });
                    }
                    console.push_str(line.trim_end_matches('\r'));
                    console.push('\n');
                }
                Err(_) => break,
            }
        }
        let _ = kill(&mut child);
        Err(Error::NotReady {
            program,
            timeout,
            console,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ready_ms(&self) -> f64 {
        self.ready.as_secs_f64() * 1000.0
    }

    /// Whether the VMM is still running (an idle guest must not exit).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for IdleVm {
    fn drop(&mut self) {
        let pid = self.child.id();
        let killed = kill(&mut self.child);
        super::log::line(&format!("idle: pid {pid} stopped ({killed:?})"));
    }
}

/// Kills the VMM's process group and reaps it.
fn kill(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_none() {
        // SAFETY: killpg only signals the group our live, unreaped child leads.
        unsafe {
            libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
        }
    }
    child.wait().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_tests::boot::Vmm;

    #[test]
    fn idle_boot_drops_only_exit_after_ready() {
        let cfg = BootConfig::new(Vmm::Qemu, "/g/vmlinux".into(), "/g/rootfs.erofs".into());
        let args: Vec<String> = command(&cfg)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.last().unwrap(),
            &format!("{} {}", boot::QEMU_CMDLINE, boot::QEMU_ROOT_CMDLINE)
        );
        assert!(!args.iter().any(|a| a.contains("exit_after_ready")));
        assert!(args.iter().any(|a| a == "microvm,acpi=off"));
    }

    #[test]
    fn a_vmm_that_exits_without_the_marker_is_not_ready() {
        let cfg = BootConfig {
            vmm: Vmm::Sandbox {
                binary: "/bin/echo".into(),
            },
            ..BootConfig::new(Vmm::Qemu, "/g/k".into(), "/g/i".into())
        };
        let err = IdleVm::start(&cfg, Duration::from_secs(10)).err().unwrap();
        match err {
            Error::NotReady { console, .. } => assert!(console.contains("--kernel /g/k")),
            other => panic!("{other}"),
        }
    }
}
