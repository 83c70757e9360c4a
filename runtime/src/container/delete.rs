//! runtime-spec `delete`: stop what still runs (only with `force` for a started container),
//! run the poststop hooks, remove the cgroup and the state directory.

use std::fs;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{sys, wait::reap, Container, Error, Result};
use crate::hooks::HookKind;
use crate::state::Status;

impl Container {
    /// Deletes the container: a created or stopped one always, a running or paused one only
    /// with `force` (killed with SIGKILL). Runs the poststop hooks; removes cgroup and state.
    pub fn delete(mut self, force: bool) -> Result<()> {
        let status = self.status();
        match status {
            Status::Running | Status::Paused if !force => {
                return Err(Error::WrongState {
                    id: self.id().into(),
                    status,
                    op: "delete it without --force",
                })
            }
            Status::Stopped => {}
            _ => {
                if let Ok(cg) = self.cgroup() {
                    let _ = cg.set_frozen(false);
                    let _ = cg.kill_all();
                }
                // pid 0 (a create that died early) must not become "our process group".
                if self.state.pid > 0 {
                    let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
                    reap(self.state.pid);
                }
            }
        }
        if let Ok(cg) = self.cgroup() {
            cg.destroy()?;
        }
        self.state.status = Status::Stopped;
        self.run_hooks_logged(HookKind::Poststop);
        fs::remove_dir_all(&self.dir).map_err(sys(format!("remove {}", self.dir.display())))
    }
}
