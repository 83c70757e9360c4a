//! Processes the host runs in the guest itself, outside any container (container id ""):
//! started from an OCI `process` object with spawn.rs, and removed all together.

use std::sync::Arc;

use nix::sys::signal::Signal;
use thiserror::Error;

use crate::process_table::{self, Process, ProcessTable};
use crate::reaper::Reaper;
use crate::spawn::{self, ProcessSpec, StdioPlan};

/// Errors starting or removing guest processes.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Table(#[from] process_table::Error),
    /// The process JSON is not one the agent can start.
    #[error(transparent)]
    BadProcess(spawn::Error),
    #[error(transparent)]
    Spawn(spawn::Error),
    #[error("container_id \"\": {0} processes still run; use force")]
    StillRunning(usize),
}

/// Starts `process_json` in the guest as `exec_id` and records it.
pub fn exec(
    processes: &ProcessTable,
    reaper: &Reaper,
    exec_id: &str,
    process_json: &str,
    plan: StdioPlan,
) -> Result<Arc<Process>, Error> {
    processes.ensure_free("", exec_id)?;
    let spec = ProcessSpec::from_json(process_json).map_err(Error::BadProcess)?;
    reaper.spawn_locked(|| {
        let spawned = spawn::spawn(&spec, plan).map_err(Error::Spawn)?;
        Ok(processes.insert("", exec_id, spawned))
    })
}

/// RemoveContainer of "": forgets the processes run directly in the guest, killing those that
/// still run if `force`.
pub fn remove(processes: &ProcessTable, force: bool) -> Result<(), Error> {
    let running: Vec<_> = processes
        .of_container("")
        .into_iter()
        .filter(|p| p.exit_status().is_none())
        .collect();
    if !running.is_empty() && !force {
        return Err(Error::StillRunning(running.len()));
    }
    for p in &running {
        let _ = p.signal(Signal::SIGKILL);
    }
    for p in &running {
        p.wait();
    }
    processes.remove_container("");
    Ok(())
}
