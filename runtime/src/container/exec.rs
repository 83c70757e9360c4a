//! `exec`: a new process inside a created or running container, in its namespaces and cgroup,
//! with its own user, capabilities and no_new_privs, under the container's seccomp filter.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::Process;

use super::{errno, sys, wait::reap, Container, Error, Result};
use crate::process::channel::{self, Msg};
use crate::process::exec;
use crate::spec::SpecError;
use crate::state::Status;

/// Options for [`Container::exec`].
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Console socket for a process with `terminal: true`.
    pub console_socket: Option<PathBuf>,
    /// stdin, stdout and stderr for the process; None inherits the caller's.
    pub stdio: Option<[RawFd; 3]>,
}

impl Container {
    /// Starts `process` inside the running container (same namespaces and cgroup) and
    /// returns its PID once it has exec'd. Its caps, user and no_new_privs come from `process`;
    /// the container's seccomp filter applies.
    pub fn exec(&mut self, process: &Process, opts: &ExecOptions) -> Result<i32> {
        self.status_for("exec", |s| s == Status::Running || s == Status::Created)?;
        crate::spec::validate_process(process)?;
        let console = match (&opts.console_socket, process.terminal()) {
            (Some(path), Some(true)) => {
                Some(crate::tty::connect(path).map_err(|e| Error::Init(e.to_string()))?)
            }
            (None, Some(true)) => {
                return Err(SpecError::invalid(
                    "process.terminal",
                    "true, but no console socket was given",
                )
                .into())
            }
            _ => None,
        };
        let (parent_end, child_end) = channel::pair().map_err(sys("socketpair"))?;
        // SAFETY: as in create: the child runs only runtime setup code, then _exit or execve.
        let child = match unsafe { fork() }.map_err(errno("fork"))? {
            ForkResult::Child => {
                drop(parent_end);
                exec::intermediate(exec::ExecArgs {
                    spec: &self.spec,
                    process,
                    init_pid: self.state.pid,
                    chan: child_end,
                    console: console.as_ref().map(|c| c.as_raw_fd()),
                    stdio: opts.stdio,
                })
            }
            ForkResult::Parent { child } => child,
        };
        drop(child_end);
        drop(console);
        let result = (|| {
            if let Some(cg) = &self.state.cgroup_path {
                fs::write(cg.join("cgroup.procs"), child.to_string())
                    .map_err(sys(format!("join cgroup {}", cg.display())))?;
            }
            parent_end.send(&Msg::Go).map_err(sys("sync channel"))?;
            let mut pid = None;
            loop {
                match parent_end.recv().map_err(sys("sync channel"))? {
                    Some(Msg::Pid(p)) => pid = Some(p),
                    Some(Msg::Ready) => {}
                    Some(Msg::Error(e)) => {
                        if let Some(p) = pid {
                            reap(p);
                        }
                        return Err(Error::Init(e));
                    }
                    Some(other) => {
                        return Err(Error::Init(format!("sync channel: unexpected {other:?}")))
                    }
                    None => {
                        return pid.ok_or_else(|| {
                            Error::Init("exec: the process exited during setup".into())
                        })
                    }
                }
            }
        })();
        let _ = waitpid(child, None);
        result
    }
}
