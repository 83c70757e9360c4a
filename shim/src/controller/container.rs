//! One container inside a running microVM, by agent connection and id: what containerd's
//! Task API and runc's commands do to it after create (pause, stats, update, exec, tty, wait).
//!
//! The containerd shim holds one [`ContainerHandle`] per container (all containers of a pod
//! share the VM's [`AgentClient`]) and one [`super::events::EventListener`] per VM.

use protocol::agent::{ContainerStatus, ProcessInfo};
use runtime::Status;

use crate::agent_client::{AgentClient, ExitStatus, StdioSet, StdioStream, StreamKind};

use super::stats::ContainerStats;
use super::Error;

/// `ContainerState` in plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveState {
    /// The status as the guest sees it; `None` when the agent reports none it knows.
    pub status: Option<Status>,
    /// The init's pid in the guest.
    pub pid: u32,
    /// Set once the init has ended.
    pub exit: Option<ExitStatus>,
}

/// A container in a VM whose agent is reachable through `client`.
#[derive(Clone)]
pub struct ContainerHandle {
    client: AgentClient,
    id: String,
}

impl ContainerHandle {
    pub fn new(client: AgentClient, id: &str) -> ContainerHandle {
        ContainerHandle {
            client,
            id: id.to_string(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// Freezes every process of the container (cgroup v2 `cgroup.freeze` in the guest).
    /// Only a running container can be paused.
    pub fn pause(&self) -> Result<(), Error> {
        Ok(self.client.pause_container(&self.id)?)
    }

    /// Thaws a paused container.
    pub fn resume(&self) -> Result<(), Error> {
        Ok(self.client.resume_container(&self.id)?)
    }

    /// cgroup v2 figures: pids, cpu, memory (+ memory.stat), memory.events, io.
    pub fn stats(&self) -> Result<ContainerStats, Error> {
        Ok(ContainerStats::from_proto(
            &self.client.container_stats(&self.id)?,
        ))
    }

    /// New limits: `resources` is an OCI `linux.resources` object (the JSON containerd's
    /// Update carries, or runc's `update -r` file). Fields left out keep their values.
    pub fn update(&self, resources: &serde_json::Value) -> Result<(), Error> {
        if !resources.is_object() {
            return Err(Error::Container {
                id: self.id.clone(),
                reason: "resources: must be a JSON object (OCI linux.resources)".into(),
            });
        }
        Ok(self
            .client
            .update_container(&self.id, &resources.to_string())?)
    }

    /// Live status, init pid and exit status.
    pub fn state(&self) -> Result<LiveState, Error> {
        let s = self.client.container_state(&self.id)?;
        let status = status_from_proto(s.status.enum_value_or_default());
        let exit = (status == Some(Status::Stopped) && s.exit.is_some())
            .then(|| ExitStatus::from_proto(&s.exit));
        Ok(LiveState {
            status,
            pid: s.pid,
            exit,
        })
    }

    /// Starts the init of a created container.
    pub fn start(&self) -> Result<(), Error> {
        Ok(self.client.start_container(&self.id)?)
    }

    /// Starts a process in the container; returns its guest pid. `process` is an OCI
    /// `process` object; with `terminal` one tty stream carries both directions (open it
    /// with [`ContainerHandle::open_stream`] and `StreamKind::Tty`), otherwise the streams
    /// of `stdio` are announced and wait for their attach.
    pub fn exec(
        &self,
        exec_id: &str,
        process: &serde_json::Value,
        stdio: StdioSet,
        terminal: bool,
    ) -> Result<u32, Error> {
        Ok(self
            .client
            .exec_process(&self.id, exec_id, &process.to_string(), stdio, terminal)?)
    }

    /// Attaches one announced stream of the init (`exec_id` "") or an exec'd process.
    pub fn open_stream(&self, exec_id: &str, kind: StreamKind) -> Result<StdioStream, Error> {
        Ok(self.client.open_stream(&self.id, exec_id, kind)?)
    }

    /// Sets the terminal size of a process started with a terminal.
    pub fn resize(&self, exec_id: &str, rows: u16, cols: u16) -> Result<(), Error> {
        Ok(self.client.resize_tty(&self.id, exec_id, rows, cols)?)
    }

    /// Ends the process's stdin (containerd's CloseIO).
    pub fn close_stdin(&self, exec_id: &str) -> Result<(), Error> {
        Ok(self.client.close_stdin(&self.id, exec_id)?)
    }

    /// Signals the process (`all`: every process of the container).
    pub fn kill(&self, exec_id: &str, signal: i32, all: bool) -> Result<(), Error> {
        Ok(self.client.signal_process(&self.id, exec_id, signal, all)?)
    }

    /// Blocks until the process has ended (no deadline).
    pub fn wait(&self, exec_id: &str) -> Result<ExitStatus, Error> {
        Ok(self.client.wait_process(&self.id, exec_id)?)
    }

    /// The container's processes as the guest sees them.
    pub fn pids(&self) -> Result<Vec<ProcessInfo>, Error> {
        Ok(self.client.list_processes(&self.id)?)
    }

    /// Removes the container from the guest (`force`: kill it first).
    pub fn remove(&self, force: bool) -> Result<(), Error> {
        Ok(self.client.remove_container(&self.id, force)?)
    }
}

/// The agent's container status as the runtime's (`None`: the agent reported `UNKNOWN`).
pub fn status_from_proto(status: ContainerStatus) -> Option<Status> {
    match status {
        ContainerStatus::CREATED => Some(Status::Created),
        ContainerStatus::RUNNING => Some(Status::Running),
        ContainerStatus::PAUSED => Some(Status::Paused),
        ContainerStatus::STOPPED => Some(Status::Stopped),
        ContainerStatus::UNKNOWN => None,
    }
}
