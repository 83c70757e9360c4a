//! The tasks one shim serves (a pod's containers, or one `ctr` container): each task's
//! backend (its own VM or its pod's), its init and exec processes, and how they ended.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::MutexGuard;

use containerd_shim_protos::ttrpc::{self, Code};

use crate::agent_client::AgentClient;

use super::events::Event;
use super::process::{Exit, Process};
use super::rpc::{error, not_found};
use super::service::Service;
use super::vm_id;

/// How a task runs.
pub(super) enum Backend {
    /// In its own microVM (a `ctr` container, or a pod's sandbox container whose VM the
    /// pod's other containers join), reached through this client.
    Vm(AgentClient),
    /// In the microVM of pod `pod_id`.
    Member { client: AgentClient, pod_id: String },
}

/// One task: a container and its exec processes.
pub(super) struct TaskEntry {
    pub bundle: PathBuf,
    pub backend: Backend,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// Whether we mounted containerd's rootfs at `<bundle>/rootfs`.
    pub rootfs_mounted: bool,
}

impl Service {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, TaskEntry>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the VM a task runs in (its own, or its pod's).
    pub(super) fn vm_of(&self, id: &str) -> Option<String> {
        let tasks = self.lock();
        Some(match &tasks.get(id)?.backend {
            Backend::Vm(_) => vm_id(id),
            Backend::Member { pod_id, .. } => vm_id(pod_id),
        })
    }

    /// The agent client of the VM a task runs in.
    pub(super) fn client(&self, id: &str) -> Result<AgentClient, ttrpc::Error> {
        let tasks = self.lock();
        let task = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
        Ok(match &task.backend {
            Backend::Vm(c) | Backend::Member { client: c, .. } => c.clone(),
        })
    }

    /// The client and the init pid of pod `pod_id`'s sandbox container in this shim.
    pub(super) fn pod(&self, pod_id: &str) -> Result<(AgentClient, u32), ttrpc::Error> {
        let tasks = self.lock();
        match tasks.get(pod_id) {
            Some(TaskEntry {
                backend: Backend::Vm(c),
                init,
                ..
            }) => Ok((c.clone(), init.pid)),
            _ => Err(error(
                Code::FAILED_PRECONDITION,
                format!("pod sandbox {pod_id} is not served by this shim: create it first"),
            )),
        }
    }

    /// Runs `f` on the process (id, exec_id).
    pub(super) fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> T,
    ) -> Result<T, ttrpc::Error> {
        let mut tasks = self.lock();
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id, ""))?;
        let p = if exec_id.is_empty() {
            &mut task.init
        } else {
            task.execs
                .get_mut(exec_id)
                .ok_or_else(|| not_found(id, exec_id))?
        };
        Ok(f(p))
    }

    /// Records an exit and publishes it (once).
    pub(super) fn exited(&self, id: &str, exec_id: &str, exit: Exit) {
        let mut tasks = self.lock();
        let Some(task) = tasks.get_mut(id) else {
            return;
        };
        let p = if exec_id.is_empty() {
            &mut task.init
        } else {
            match task.execs.get_mut(exec_id) {
                Some(p) => p,
                None => return,
            }
        };
        if p.exit().is_some() {
            return;
        }
        // Queued while the lock is held, so TaskExit precedes anything a waiter does next.
        self.events.send(Event::Exit {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            pid: p.pid,
            exit: exit.clone(),
        });
        p.set_exit(exit);
    }
}
