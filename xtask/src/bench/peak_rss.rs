//! The peak resident set of a program's own image: `VmHWM` from /proc, read when the process
//! stops at its exit under ptrace (PTRACE_O_TRACEEXIT), while its memory is still mapped.
//!
//! wait4's `ru_maxrss` cannot measure a small process: it also counts the pages the child had
//! before exec. A posix_spawn child (vfork) shares the parent's memory until exec, so its
//! `ru_maxrss` starts at the parent's peak; a fork child starts with the parent's anonymous
//! pages. Either way a 3 MiB VMM spawned by a 4 MiB xtask reads as 4 MiB.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program} under ptrace: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("waiting for {program} failed: {source}")]
    Wait { program: String, source: io::Error },
    #[error("ptrace({request}) on {program} failed: {source}")]
    Ptrace {
        program: String,
        request: &'static str,
        source: io::Error,
    },
    #[error("{program} did not stop after exec (wait status {status:#x})")]
    NoExecStop { program: String, status: i32 },
    #[error("{program} exited before its VmHWM could be read")]
    NoExitStop { program: String },
    #[error("{program} failed: {how}")]
    Failed { program: String, how: String },
}

/// Runs `cmd` to completion with stdio on /dev/null and returns its peak RSS in KiB.
/// A non-zero exit or a death by signal is an error.
pub fn run(cmd: &mut Command) -> Result<u64, Error> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // PTRACE_TRACEME system call, which is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            let null = std::ptr::null_mut::<libc::c_void>();
            if libc::ptrace(libc::PTRACE_TRACEME, 0, null, null) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let tracee = Tracee {
        pid: child.id() as libc::pid_t,
        program,
    };
    // A traced process stops with SIGTRAP once exec has replaced its image.
    let status = tracee.wait()?;
    if !libc::WIFSTOPPED(status) || libc::WSTOPSIG(status) != libc::SIGTRAP {
        return Err(Error::NoExecStop {
            program: tracee.program,
            status,
        });
    }
    let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL;
    tracee.ptrace(
        "PTRACE_SETOPTIONS",
        libc::PTRACE_SETOPTIONS,
        options as usize,
    )?;
    tracee.ptrace("PTRACE_CONT", libc::PTRACE_CONT, 0)?;

    let mut peak_kib = None;
    loop {
        let status = tracee.wait()?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return tracee.finish(status, peak_kib);
        }
        let exit_event = libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8);
        let signal = if status >> 8 == exit_event {
            peak_kib = vm_hwm_kib(tracee.pid);
            0
        } else {
            // A signal-delivery stop: deliver the signal as if we were not there.
            libc::WSTOPSIG(status)
        };
        tracee.ptrace("PTRACE_CONT", libc::PTRACE_CONT, signal as usize)?;
    }
}

struct Tracee {
    pid: libc::pid_t,
    program: String,
}

impl Tracee {
    fn wait(&self) -> Result<i32, Error> {
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our own child, which std never reaps (we never call its
            // wait methods); `status` is a writable local.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                return Ok(status);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Wait {
                    program: self.program.clone(),
                    source: e,
                });
            }
        }
    }

    fn ptrace(&self, name: &'static str, request: libc::c_uint, data: usize) -> Result<(), Error> {
        // SAFETY: the requests used here (SETOPTIONS, CONT) take no pointer: `data` is an
        // option mask or a signal number, and the tracee is stopped, as they require.
        let r = unsafe {
            libc::ptrace(
                request,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                data as *mut libc::c_void,
            )
        };
        if r == -1 {
            return Err(Error::Ptrace {
                program: self.program.clone(),
                request: name,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn finish(self, status: i32, peak_kib: Option<u64>) -> Result<u64, Error> {
        if libc::WIFSIGNALED(status) {
            let how = format!("signal {}", libc::WTERMSIG(status));
            return Err(Error::Failed {
                program: self.program,
                how,
            });
        }
        if libc::WEXITSTATUS(status) != 0 {
            let how = format!("exit {}", libc::WEXITSTATUS(status));
            return Err(Error::Failed {
                program: self.program,
                how,
            });
        }
        peak_kib.ok_or(Error::NoExitStop {
            program: self.program,
        })
    }
}

/// `VmHWM` of a live process, KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let status =
            "Name:\tsandbox-vmm\nVmPeak:\t  20000 kB\nVmHWM:\t    2056 kB\nVmRSS:\t 2000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2056));
        assert_eq!(parse_vm_hwm("VmRSS: 5 kB\n"), None);
    }

    #[test]
    fn sees_a_large_allocation_of_the_child() {
        // 64 MiB touched by the child's own image must show.
        let script = r#"x=$(head -c 67108864 /dev/zero | tr '\0' a); test ${#x} = 67108864"#;
        let kib = run(Command::new("sh").args(["-c", script])).unwrap();
        assert!(kib >= 60 * 1024, "{kib}");
    }

    #[test]
    fn does_not_count_the_parents_memory() {
        // Grow our own resident set well past what `true` needs; the child must not inherit
        // it in the figure (ru_maxrss would).
        let ballast = vec![1u8; 96 << 20];
        let touched: u64 = ballast.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        assert_eq!(touched, (96 << 20) / 4096);
        let kib = run(&mut Command::new("true")).unwrap();
        assert!(kib < 16 * 1024, "{kib}");
        drop(ballast);
    }

    #[test]
    fn a_failing_program_is_an_error() {
        let err = run(&mut Command::new("false")).unwrap_err();
        assert!(matches!(err, Error::Failed { .. }), "{err}");
        let err = run(Command::new("sh").args(["-c", "kill -9 $$"])).unwrap_err();
        assert!(err.to_string().contains("signal 9"), "{err}");
    }
}
