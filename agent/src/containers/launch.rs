//! A container's init or exec started through the runtime helper, with the stdio pipes the host
//! announced or a console socket for the pty master, and recorded before its exit is reaped.

use std::path::PathBuf;
use std::sync::Arc;

use nix::unistd::Pid;

use super::{Containers, Error};
use crate::console::ConsoleSocket;
use crate::process_table::Process;
use crate::runtime_helper::{self, Job};
use crate::spawn::{self, ChildStdio, Spawned, StdioEnds, StdioPlan};

impl Containers {
    /// Runs the runtime helper for `job` with the stdio of `plan` (a terminal comes back over a
    /// console socket at `console_path`) and records the process it started.
    pub(super) fn launch(
        &self,
        container_id: &str,
        exec_id: &str,
        mut job: Job<'_>,
        plan: StdioPlan,
        console_path: PathBuf,
    ) -> Result<Arc<Process>, Error> {
        let (child, ends, console) = if plan.terminal {
            let console = ConsoleSocket::bind(&console_path)?;
            (ChildStdio::default(), StdioEnds::default(), Some(console))
        } else {
            let (child, ends) = spawn::pipes(plan)?;
            (child, ends, None)
        };
        let console_socket = console.as_ref().map(|c| c.path().to_path_buf());
        match &mut job {
            Job::Create {
                console_socket: c, ..
            }
            | Job::Exec {
                console_socket: c, ..
            } => *c = console_socket,
        }
        self.reaper.spawn_locked(|| {
            let pid = runtime_helper::run(&job, child)?;
            let mut ends = ends;
            let mut tty_control = None;
            if let Some(console) = &console {
                let master = console.receive()?;
                tty_control = Some(master.try_clone().map_err(Error::Tty)?);
                ends.tty = Some(master);
            }
            let spawned = Spawned {
                pid: Pid::from_raw(pid),
                ends,
                tty_control,
            };
            Ok(self.processes.insert(container_id, exec_id, spawned))
        })
    }
}
