//! Create, Start, Pause/Resume and Delete of a task and of its exec processes: the work
//! behind those Task API calls, from rootfs mount and VM boot to exit watch and VM removal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim::api;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::ttrpc::{self, Code};
use runtime::Status;

use crate::agent_client::{AgentClient, OutputPumps};
use crate::controller::{ContainerHandle, Sandbox};

use super::events::Event;
use super::fifo_relay;
use super::pod::{self, Role};
use super::pod_join::join_pod;
use super::process::{Exit, Process, StdioPaths};
use super::rpc::{agent_error, blocking, error, not_found};
use super::service::Service;
use super::tasks::{Backend, TaskEntry};
use super::vm_removal::remove_vm;
use super::{rootfs, spec, vm_id};

/// Exit status reported when the VM went away before the process's exit was known.
const LOST_EXIT_STATUS: u32 = 255;
/// Disks a pod VM gets for the containers that join it over its life.
const POD_SLOTS: usize = 4;

impl Service {
    pub(super) async fn create_task(
        &self,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        if self.lock().contains_key(&id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("task {id} already exists"),
            ));
        }
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(error(
                Code::UNIMPLEMENTED,
                "checkpoint/restore is not supported by the microVM runtime",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let stdio = StdioPaths::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let spec =
            pod::read_spec(&bundle).map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))?;
        let mounts: Vec<rootfs::Mount> = req.rootfs.iter().map(rootfs::Mount::from_proto).collect();
        let rootfs_dir = bundle.join(spec["root"]["path"].as_str().unwrap_or("rootfs"));
        let rootfs_mounted = !mounts.is_empty();
        let role = Role::from_spec(&spec);
        let pod_vm = match &role {
            Role::PodMember { sandbox_id } => Some(self.pod(sandbox_id)?),
            Role::Standalone | Role::PodSandbox => None,
        };
        let sandbox = self.sandbox.clone();
        let (backend, pid) = {
            let bundle = bundle.clone();
            let id = id.clone();
            let stdio = stdio.clone();
            blocking(move || {
                rootfs::mount_all(&mounts, &rootfs_dir)
                    .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
                let created = match &role {
                    Role::Standalone | Role::PodSandbox => {
                        let slots = if role == Role::PodSandbox {
                            POD_SLOTS
                        } else {
                            0
                        };
                        spec::vm_bundle(&bundle, &spec)
                            .map_err(|e| error(Code::INTERNAL, e.to_string()))
                            .and_then(|dir| create_vm(&sandbox, &id, &dir, &stdio, slots))
                    }
                    Role::PodMember { sandbox_id } => {
                        join_pod(&sandbox, sandbox_id, pod_vm, &id, &bundle, spec, &stdio)
                    }
                };
                if created.is_err() && rootfs_mounted {
                    rootfs::unmount(&rootfs_dir);
                }
                created
            })
            .await?
        };
        if let Backend::Vm(client) = &backend {
            self.watch_oom(client);
        }
        let mut init = Process::new("", stdio.clone(), Vec::new());
        init.pid = pid;
        self.lock().insert(
            id.clone(),
            TaskEntry {
                bundle: bundle.clone(),
                backend,
                init,
                execs: HashMap::new(),
                rootfs_mounted,
            },
        );
        self.events.send(Event::Create {
            id,
            bundle: req.bundle.clone(),
            stdio,
            pid,
        });
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    pub(super) async fn start_process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> TtrpcResult<api::StartResponse> {
        let client = self.client(id)?;
        let (stdio, spec, pid, status) = self.with_process(id, exec_id, |p| {
            (p.stdio.clone(), p.spec.clone(), p.pid, p.status)
        })?;
        if status != Status::Created {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("process {id}/{exec_id} was already started"),
            ));
        }
        let (c, i, e) = (client.clone(), vm_id(id), exec_id.to_string());
        let (pid, relays) = blocking(move || {
            if e.is_empty() {
                // Streams first: output written right after the start is never lost.
                let relays = fifo_relay::attach(&c, &i, "", &stdio)
                    .map_err(|err| agent_error("attaching stdio", err))?;
                c.start_container(&i)
                    .map_err(|err| agent_error("StartContainer", err))?;
                Ok((pid, relays))
            } else {
                let json = String::from_utf8_lossy(&spec).into_owned();
                let pid = c
                    .exec_process(&i, &e, &json, fifo_relay::announced(&stdio), stdio.terminal)
                    .map_err(|err| agent_error("ExecProcess", err))?;
                let relays = fifo_relay::attach(&c, &i, &e, &stdio)
                    .map_err(|err| agent_error("attaching stdio", err))?;
                Ok((pid, relays))
            }
        })
        .await?;
        self.with_process(id, exec_id, |p| {
            p.pid = pid;
            p.status = Status::Running;
        })?;
        self.events.send(if exec_id.is_empty() {
            Event::Start {
                id: id.to_string(),
                pid,
            }
        } else {
            Event::ExecStarted {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
            }
        });
        self.watch_exit(client, id.to_string(), exec_id.to_string(), relays);
        if exec_id.is_empty() {
            // The VMM drops the pages the guest only needed to start (a request answered at
            // once; off the executor all the same).
            if let Some(vm) = self.vm_of(id) {
                let sandbox = self.sandbox.clone();
                std::thread::spawn(move || sandbox.trim_vm_later(&vm));
            }
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    pub(super) async fn delete_process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !exec_id.is_empty() {
            let (pid, exit) = self.with_process(id, exec_id, |p| (p.pid, p.exit()))?;
            let status = self.with_process(id, exec_id, |p| p.status)?;
            if status == Status::Running {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id} of task {id} is still running"),
                ));
            }
            if let Some(t) = self.lock().get_mut(id) {
                t.execs.remove(exec_id);
            }
            let exit = exit.unwrap_or_else(|| Exit::new(0));
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            });
        }
        let (pid, exit, status) = self.with_process(id, "", |p| (p.pid, p.exit(), p.status))?;
        if matches!(status, Status::Running | Status::Paused) {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("task {id} is still running: kill it first"),
            ));
        }
        let Some(task) = self.lock().remove(id) else {
            return Err(not_found(id, ""));
        };
        let sandbox = self.sandbox.clone();
        let id_owned = id.to_string();
        blocking(move || {
            match task.backend {
                Backend::Vm(_) => remove_vm(&sandbox, &id_owned),
                Backend::Member { client, pod_id } => {
                    if let Err(e) = client.remove_container(&vm_id(&id_owned), true) {
                        log::warn!("removing {id_owned} from pod {pod_id}: {e}");
                    }
                    sandbox.leave_pod(&vm_id(&pod_id), &vm_id(&id_owned));
                }
            }
            if task.rootfs_mounted {
                rootfs::unmount(&task.bundle.join("rootfs"));
            }
            Ok(())
        })
        .await?;
        let exit = exit.unwrap_or_else(|| Exit::new(0));
        self.events.send(Event::Delete {
            id: id.to_string(),
            pid,
            exit: exit.clone(),
        });
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    /// Freezes or thaws a task's container (cgroup v2 freezer in the guest; the VM runs on).
    pub(super) async fn set_paused(&self, id: &str, pause: bool) -> TtrpcResult<api::Empty> {
        let status = self.with_process(id, "", |p| p.status)?;
        let want = if pause {
            Status::Running
        } else {
            Status::Paused
        };
        if status != want {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!(
                    "task {id} is {status:?}: only a {want:?} task can be {}",
                    if pause { "paused" } else { "resumed" }
                ),
            ));
        }
        let client = self.client(id)?;
        let owned = id.to_string();
        blocking(move || {
            let handle = ContainerHandle::new(client, &vm_id(&owned));
            let res = if pause {
                handle.pause()
            } else {
                handle.resume()
            };
            res.map_err(|e| error(Code::INTERNAL, format!("{owned}: {e}")))
        })
        .await?;
        self.with_process(id, "", |p| {
            if p.status == want {
                p.status = if pause {
                    Status::Paused
                } else {
                    Status::Running
                };
            }
        })?;
        self.events.send(if pause {
            Event::Paused { id: id.to_string() }
        } else {
            Event::Resumed { id: id.to_string() }
        });
        Ok(api::Empty::default())
    }

    /// Waits (on a blocking thread) for the process to end in the guest, drains its output,
    /// then publishes TaskExit before any waiter learns of the exit.
    fn watch_exit(&self, client: AgentClient, id: String, exec_id: String, relays: OutputPumps) {
        let svc = self.clone();
        tokio::task::spawn_blocking(move || {
            let status = match client.wait_process(&vm_id(&id), &exec_id) {
                Ok(s) => s.code() as u32,
                Err(e) => {
                    log::warn!("waiting for {id}/{exec_id}: {e}");
                    LOST_EXIT_STATUS
                }
            };
            relays.drain();
            svc.exited(&id, &exec_id, Exit::new(status));
        });
    }
}

/// Boots the VM (with `slots` disks for a pod's later containers) and creates the container
/// in it, stdio announced.
fn create_vm(
    sandbox: &Sandbox,
    id: &str,
    bundle: &Path,
    stdio: &StdioPaths,
    slots: usize,
) -> Result<(Backend, u32), ttrpc::Error> {
    let (_record, client, pid) = sandbox
        .create_pod(&vm_id(id), bundle, fifo_relay::announced(stdio), slots)
        .map_err(|e| error(Code::INTERNAL, format!("creating {id}: {e}")))?;
    Ok((Backend::Vm(client), pid))
}
