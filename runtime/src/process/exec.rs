//! A new process in a running container: setns into every namespace of its init, join its
//! cgroup, then the same user/capability/seccomp steps as the init before execve.

use std::os::fd::RawFd;

use oci_spec::runtime::{Process, Spec};

use super::channel::{Channel, Msg};
use super::{clone_sibling, exit_child, finish, limits, prepare};
use crate::namespaces::ToJoin;

/// What the forked side needs.
pub(crate) struct ExecArgs<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub init_pid: i32,
    pub chan: Channel,
    pub console: Option<RawFd>,
    pub stdio: Option<[RawFd; 3]>,
}

/// Runs in the forked intermediate. Never returns.
pub(crate) fn intermediate(args: ExecArgs) -> ! {
    let chan = &args.chan;
    let result = (|| -> Result<(), String> {
        if let Some(fds) = args.stdio {
            super::set_stdio(fds)?;
        }
        chan.expect_go()?;
        let mut join = ToJoin::of_process(args.init_pid).map_err(|e| e.to_string())?;
        join.join_user().map_err(|e| e.to_string())?;
        join.join_rest().map_err(|e| e.to_string())?;
        let pid = clone_sibling().map_err(|e| format!("fork the exec process: {e}"))?;
        if pid == 0 {
            let code = match exec_process(&args) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = args.chan.send(&Msg::Error(e));
                    127
                }
            };
            exit_child(code);
        }
        chan.send(&Msg::Pid(pid)).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => exit_child(0),
        Err(e) => {
            let _ = chan.send(&Msg::Error(e));
            exit_child(1)
        }
    }
}

fn exec_process(args: &ExecArgs) -> Result<std::convert::Infallible, String> {
    let process = args.process;
    if let Some(fd) = args.console {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        crate::tty::setup(fd, size, false).map_err(|e| e.to_string())?;
        let _ = nix::unistd::close(fd);
    }
    limits(process)?;
    let prepared = prepare(process, args.spec)?;
    args.chan.send(&Msg::Ready).map_err(|e| e.to_string())?;
    finish(process, prepared, &mut || Ok(()))
}
