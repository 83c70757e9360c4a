//! The Task API containerd calls: each task is a container in a microVM (its own, or its
//! pod's, which the pod's sandbox container booted); each call maps to the agent API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::ttrpc::{self, Code};
use runtime::Status;

use crate::agent_client::{self, AgentClient};
use crate::controller::{AgentEvent, ContainerHandle, EventListener, Sandbox};

use super::events::{Event, Events};
use super::io::{self, Relays};
use super::pod::{self, Role};
use super::process::{self, Exit, Process, StdioPaths};
use super::{rootfs, spec, vm_id};

/// Exit status reported when the VM went away before the process's exit was known.
const LOST_EXIT_STATUS: u32 = 255;
/// Disks a pod VM gets for the containers that join it over its life.
const POD_SLOTS: usize = 4;

/// How a task runs.
enum Backend {
    /// In its own microVM (a `ctr` container, or a pod's sandbox container whose VM the
    /// pod's other containers join), reached through this client.
    Vm(AgentClient),
    /// In the microVM of pod `pod_id`.
    Member { client: AgentClient, pod_id: String },
}

/// One task: a container and its exec processes.
struct Task_ {
    bundle: PathBuf,
    backend: Backend,
    init: Process,
    execs: HashMap<String, Process>,
    /// Whether we mounted containerd's rootfs at `<bundle>/rootfs`.
    rootfs_mounted: bool,
}

/// The shim's Task service.
#[derive(Clone)]
pub struct Service {
    sandbox: Arc<Sandbox>,
    events: Events,
    tasks: Arc<Mutex<HashMap<String, Task_>>>,
    exit: Arc<ExitSignal>,
}

fn error(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        error(Code::NOT_FOUND, format!("task {id} not found"))
    } else {
        error(
            Code::NOT_FOUND,
            format!("process {exec_id} of task {id} not found"),
        )
    }
}

/// An agent error as a ttrpc status, keeping the agent's code where it answered.
fn agent_error(what: &str, e: agent_client::Error) -> ttrpc::Error {
    let code = match e.code() {
        Some(Code::FAILED_PRECONDITION) => Code::FAILED_PRECONDITION,
        Some(Code::NOT_FOUND) => Code::NOT_FOUND,
        Some(Code::INVALID_ARGUMENT) => Code::INVALID_ARGUMENT,
        Some(Code::ALREADY_EXISTS) => Code::ALREADY_EXISTS,
        _ => Code::INTERNAL,
    };
    error(code, format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ttrpc::Error> + Send + 'static,
) -> Result<T, ttrpc::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(Code::INTERNAL, format!("worker thread: {e}")))?
}

fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.to_string(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        terminal,
    }
}

impl Service {
    pub fn new(sandbox: Sandbox, events: Events, exit: Arc<ExitSignal>) -> Service {
        Service {
            sandbox: Arc::new(sandbox),
            events,
            tasks: Arc::new(Mutex::new(HashMap::new())),
            exit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task_>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the VM a task runs in (its own, or its pod's).
    fn vm_of(&self, id: &str) -> Option<String> {
        let tasks = self.lock();
        Some(match &tasks.get(id)?.backend {
            Backend::Vm(_) => vm_id(id),
            Backend::Member { pod_id, .. } => vm_id(pod_id),
        })
    }

    /// The agent client of the VM a task runs in.
    fn client(&self, id: &str) -> Result<AgentClient, ttrpc::Error> {
        let tasks = self.lock();
        let task = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
        Ok(match &task.backend {
            Backend::Vm(c) | Backend::Member { client: c, .. } => c.clone(),
        })
    }

    /// The client and the init pid of pod `pod_id`'s sandbox container in this shim.
    fn pod(&self, pod_id: &str) -> Result<(AgentClient, u32), ttrpc::Error> {
        let tasks = self.lock();
        match tasks.get(pod_id) {
            Some(Task_ {
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
    fn with_process<T>(
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

    /// Waits (on a blocking thread) for the process to end in the guest, drains its output,
    /// then publishes TaskExit before any waiter learns of the exit.
    fn watch_exit(&self, client: AgentClient, id: String, exec_id: String, relays: Relays) {
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

    /// Records an exit and publishes it (once).
    fn exited(&self, id: &str, exec_id: &str, exit: Exit) {
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

    /// Freezes or thaws a task (the pause container only changes its status).
    async fn set_paused(&self, id: &str, pause: bool) -> TtrpcResult<api::Empty> {
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

    /// Publishes TaskOOM for OOM kills in the guest of a VM (its own task's, and those of the
    /// pod's containers that join it later) until the VM goes away.
    fn watch_oom(&self, client: &AgentClient) {
        let svc = self.clone();
        let endpoint = client.endpoint().clone();
        std::thread::spawn(move || {
            // Its own connection: the long poll holds a call open.
            let Ok(own) = AgentClient::connect(&endpoint, crate::controller::vm::CALL_TIMEOUT)
            else {
                return;
            };
            let listener = EventListener::spawn(own);
            while let Some(Ok(event)) = listener.recv() {
                if let AgentEvent::Oom { container_id, .. } = event {
                    let task = svc
                        .lock()
                        .keys()
                        .find(|id| vm_id(id) == container_id)
                        .cloned();
                    if let Some(id) = task {
                        svc.events.send(Event::Oom { id });
                    }
                }
            }
        });
    }

    async fn create_task(
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
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
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
            Task_ {
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

    async fn start_process(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StartResponse> {
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
                let relays = io::attach(&c, &i, "", &stdio)
                    .map_err(|err| agent_error("attaching stdio", err))?;
                c.start_container(&i)
                    .map_err(|err| agent_error("StartContainer", err))?;
                Ok((pid, relays))
            } else {
                let json = String::from_utf8_lossy(&spec).into_owned();
                let pid = c
                    .exec_process(&i, &e, &json, io::announced(&stdio), stdio.terminal)
                    .map_err(|err| agent_error("ExecProcess", err))?;
                let relays = io::attach(&c, &i, &e, &stdio)
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

    async fn delete_process(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
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
        .create_pod(&vm_id(id), bundle, io::announced(stdio), slots)
        .map_err(|e| error(Code::INTERNAL, format!("creating {id}: {e}")))?;
    Ok((Backend::Vm(client), pid))
}

/// Creates a container of a pod in the pod's VM: its namespaces are the pod's (the sandbox
/// container's, by its pid in the guest) and its image arrives on one of the pod's slots.
fn join_pod(
    sandbox: &Sandbox,
    pod_id: &str,
    pod_vm: Option<(AgentClient, u32)>,
    id: &str,
    bundle: &Path,
    mut spec: serde_json::Value,
    stdio: &StdioPaths,
) -> Result<(Backend, u32), ttrpc::Error> {
    let (client, pod_pid) =
        pod_vm.ok_or_else(|| error(Code::INTERNAL, format!("pod {pod_id} has no VM")))?;
    pod::join_namespaces(&mut spec, pod_pid);
    spec::adapt_mounts(&mut spec);
    let pid = sandbox
        .join_pod(
            &vm_id(pod_id),
            &vm_id(id),
            bundle,
            &spec.to_string(),
            io::announced(stdio),
            &client,
        )
        .map_err(|e| {
            error(
                Code::INTERNAL,
                format!("creating {id} in pod {pod_id}: {e}"),
            )
        })?;
    Ok((
        Backend::Member {
            client,
            pod_id: pod_id.to_string(),
        },
        pid,
    ))
}

/// Stops a task's VM and removes its state; also reaps the VMM (our child).
pub fn remove_vm(sandbox: &Sandbox, id: &str) {
    let id = &vm_id(id);
    // A pod VM: its containers' image claims go first (after a crash nobody else drops them).
    let members = sandbox.root().container_dir(id).join("members");
    if let Ok(entries) = std::fs::read_dir(&members) {
        for e in entries.flatten() {
            if let Some(member) = e.file_name().to_str() {
                sandbox.leave_pod(id, member);
            }
        }
    }
    let vmm_pid = sandbox.root().load(id).map(|r| r.pid).unwrap_or(0);
    if let Err(e) = sandbox.delete(id, true) {
        log::warn!("removing the VM of {id}: {e}");
    }
    if vmm_pid > 0 {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(vmm_pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

fn status_of(p: &Process) -> api::Status {
    match p.status {
        // A task exists once its container is created: `creating` is never its status.
        Status::Creating | Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Paused => api::Status::PAUSED,
        Status::Stopped => api::Status::STOPPED,
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} bundle {}", req.id, req.bundle);
        self.create_task(req).await
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        self.start_process(&req.id, &req.exec_id).await
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let bundle = {
            let tasks = self.lock();
            let t = tasks.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            t.bundle.display().to_string()
        };
        self.with_process(&req.id, &req.exec_id, |p| {
            let exit = p.exit();
            api::StateResponse {
                id: if req.exec_id.is_empty() {
                    req.id.clone()
                } else {
                    req.exec_id.clone()
                },
                bundle,
                pid: p.pid,
                status: status_of(p).into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: exit.as_ref().map_or(0, |e| e.status),
                exited_at: exit.map(|e| e.timestamp()).into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let client = self.client(&req.id)?;
        let id = vm_id(&req.id);
        let procs = blocking(move || {
            client
                .list_processes(&id)
                .map_err(|e| agent_error("ListProcesses", e))
        })
        .await?;
        Ok(api::PidsResponse {
            processes: procs
                .into_iter()
                .map(|p| containerd_shim_protos::types::task::ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true).await
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false).await
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let exit = self.with_process(&req.id, &req.exec_id, |p| p.exit())?;
        if exit.is_some() {
            return Err(error(
                Code::NOT_FOUND,
                format!("process {}/{} already finished", req.id, req.exec_id),
            ));
        }
        let client = self.client(&req.id)?;
        let status = self.with_process(&req.id, &req.exec_id, |p| p.status)?;
        if status == Status::Created && req.exec_id.is_empty() {
            // Never started: nothing runs in the guest yet; containerd expects it to end.
            let (c, id) = (client.clone(), vm_id(&req.id));
            blocking(move || {
                c.remove_container(&id, true)
                    .map_err(|e| agent_error("RemoveContainer", e))
            })
            .await?;
            self.exited(&req.id, "", Exit::new(128 + req.signal));
            return Ok(api::Empty::default());
        }
        let (id, exec_id) = (vm_id(&req.id), req.exec_id.clone());
        blocking(move || {
            client
                .signal_process(&id, &exec_id, req.signal as i32, req.all)
                .map_err(|e| agent_error("SignalProcess", e))
        })
        .await?;
        Ok(api::Empty::default())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        self.client(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(error(Code::INVALID_ARGUMENT, "exec_id is empty"));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a: &Any| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&spec).is_err() {
            return Err(error(
                Code::INVALID_ARGUMENT,
                format!("exec {}: spec is not an OCI process in JSON", req.exec_id),
            ));
        }
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        {
            let mut tasks = self.lock();
            let task = tasks
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?;
            if task.execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists in {}", req.exec_id, req.id),
                ));
            }
            task.execs
                .insert(req.exec_id.clone(), Process::new(&req.exec_id, stdio, spec));
        }
        self.events.send(Event::ExecAdded {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
        });
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let client = self.client(&req.id)?;
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        blocking(move || {
            client
                .resize_tty(&vm_id(&req.id), &req.exec_id, rows, cols)
                .map_err(|e| agent_error("ResizeTty", e))
        })
        .await?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let client = self.client(&req.id)?;
        if !req.stdin {
            return Ok(api::Empty::default());
        }
        blocking(move || {
            client
                .close_stdin(&vm_id(&req.id), &req.exec_id)
                .map_err(|e| agent_error("CloseStdin", e))
        })
        .await?;
        Ok(api::Empty::default())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let client = self.client(&req.id)?;
        let value = req
            .resources
            .as_ref()
            .map(|a: &Any| a.value.clone())
            .unwrap_or_default();
        let resources: serde_json::Value = serde_json::from_slice(&value).map_err(|e| {
            error(
                Code::INVALID_ARGUMENT,
                format!(
                    "update of {}: resources is not OCI linux.resources JSON: {e}",
                    req.id
                ),
            )
        })?;
        blocking(move || {
            ContainerHandle::new(client, &vm_id(&req.id))
                .update(&resources)
                .map_err(|e| error(Code::INTERNAL, format!("update of {}: {e}", req.id)))
        })
        .await?;
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let rx = self.with_process(&req.id, &req.exec_id, |p| p.subscribe())?;
        let exit = process::wait_exit(rx)
            .await
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let client = self.client(&req.id)?;
        let id = req.id.clone();
        let stats = blocking(move || {
            ContainerHandle::new(client, &vm_id(&id))
                .stats()
                .map_err(|e| error(Code::INTERNAL, format!("stats of {id}: {e}")))
        })
        .await?;
        Ok(api::StatsResponse {
            stats: Some(super::stats::to_any(&stats)).into(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {} {}", req.id, req.exec_id);
        self.delete_process(&req.id, &req.exec_id).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let pid = self.with_process(&req.id, "", |p| p.pid)?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // One shim serves a whole pod: it goes once its last task is deleted.
        if self.lock().is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Config;
    use crate::shimv2::events::Sink;

    fn service(dir: &Path) -> (Service, Arc<Mutex<Vec<Event>>>) {
        let cfg = Config {
            root: dir.join("state"),
            vmm: "/nonexistent/sandbox-vmm".into(),
            kernel: "/nonexistent/vmlinux".into(),
            guest_root: crate::controller::config::GuestRoot::Image(
                "/nonexistent/rootfs.erofs".into(),
            ),
            image_cache: dir.join("images"),
            vcpus: 1,
            memory_mib: 256,
            agent_timeout: std::time::Duration::from_secs(1),
            debug: false,
        };
        let list = Arc::new(Mutex::new(Vec::new()));
        let events = Events::spawn(Sink::Memory(list.clone()));
        let svc = Service::new(Sandbox::new(cfg), events, Arc::new(ExitSignal::default()));
        (svc, list)
    }

    fn code(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_bundle_without_config_json_is_refused_naming_it_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, events) = service(dir.path());
        let req = api::CreateTaskRequest {
            id: "c1".into(),
            bundle: dir.path().join("bundle").display().to_string(),
            ..Default::default()
        };
        let err = svc.create_task(req).await.unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        assert_eq!(code(err), Code::INVALID_ARGUMENT);
        assert!(svc.lock().is_empty());
        assert!(!dir.path().join("state").join("c1").exists());
        tokio::task::yield_now().await;
        assert!(events.lock().unwrap().is_empty(), "no TaskCreate");
    }

    #[tokio::test]
    async fn a_guest_that_cannot_boot_fails_create_and_leaves_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"]}}"#,
        )
        .unwrap();
        let (svc, _events) = service(dir.path());
        let req = api::CreateTaskRequest {
            id: "c2".into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        let err = svc.create_task(req).await.unwrap_err();
        assert!(err.to_string().contains("vmlinux"), "{err}");
        assert!(svc.lock().is_empty());
        assert!(!dir.path().join("state").join("c2").exists());
    }

    #[tokio::test]
    async fn calls_on_unknown_tasks_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, _events) = service(dir.path());
        assert_eq!(
            code(svc.start_process("nope", "").await.unwrap_err()),
            Code::NOT_FOUND
        );
        assert_eq!(
            code(svc.delete_process("nope", "").await.unwrap_err()),
            Code::NOT_FOUND
        );
        assert_eq!(code(svc.client("nope").err().unwrap()), Code::NOT_FOUND);
        assert_eq!(
            code(svc.pod("nope").err().unwrap()),
            Code::FAILED_PRECONDITION
        );
    }
}
