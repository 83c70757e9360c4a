//! The Task API containerd calls: each task is a container in a microVM (its own, or its
//! pod's, which the pod's sandbox container booted); each call maps to the agent API. The
//! work of Create, Start, Pause and Delete is in `task_lifecycle.rs`, the table in `tasks.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::ttrpc::Code;
use runtime::Status;

use crate::controller::{ContainerHandle, Sandbox};

use super::events::{Event, Events};
use super::process::{self, Exit, Process, StdioPaths};
use super::rpc::{agent_error, blocking, error, not_found};
use super::tasks::TaskEntry;
use super::vm_id;

/// The shim's Task service.
#[derive(Clone)]
pub struct Service {
    pub(super) sandbox: Arc<Sandbox>,
    pub(super) events: Events,
    pub(super) tasks: Arc<Mutex<HashMap<String, TaskEntry>>>,
    exit: Arc<ExitSignal>,
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
        let stdio = StdioPaths::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
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
    use std::path::Path;

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
