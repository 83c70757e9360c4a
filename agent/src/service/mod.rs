//! The agent API server: each ttrpc call of proto/agent.proto read from its request, handed to
//! the part that does the work (containers/, guest_processes.rs, process_table.rs, sandbox.rs)
//! and answered in the protocol's shape; codes.rs picks each error's ttrpc code.

mod codes;

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::agent::*;
use protocol::agent_ttrpc;
use ttrpc::{Code, TtrpcContext};

use crate::config::Config;
use crate::containers::{Containers, RootfsSource};
use crate::events::{self, uptime_ms, EventQueue};
use crate::guest_processes;
use crate::process_table::ProcessTable;
use crate::reaper::Reaper;
use crate::sandbox;
use crate::spawn::StdioPlan;
use crate::stats;
use codes::status;

type Result<T> = ttrpc::Result<T>;

/// The state every call works on.
pub struct AgentService {
    pub config: Config,
    pub containers: Containers,
    pub reaper: Arc<Reaper>,
    pub processes: Arc<ProcessTable>,
    pub events: Arc<EventQueue>,
    /// Whether sethostname affects only this agent (PID 1 or a private UTS namespace).
    pub own_uts: bool,
    /// Tells main to stop serving and power off (or exit on a host run).
    pub shutdown: Sender<()>,
}

fn stdio_plan(stdio: &protocol::agent::Stdio, terminal: bool) -> StdioPlan {
    StdioPlan {
        stdin: stdio.stdin,
        stdout: stdio.stdout,
        stderr: stdio.stderr,
        terminal,
    }
}

impl agent_ttrpc::Agent for AgentService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> Result<CheckResponse> {
        let mut resp = CheckResponse::new();
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        resp.uptime_ms = uptime_ms();
        Ok(resp)
    }

    fn create_sandbox(&self, _ctx: &TtrpcContext, req: CreateSandboxRequest) -> Result<Empty> {
        log::info!(
            "CreateSandbox id={:?} hostname={:?}",
            req.sandbox_id,
            req.hostname
        );
        if !req.hostname.is_empty() {
            if !self.own_uts {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    "hostname: not PID 1 and no private UTS namespace; refusing to rename the host",
                ));
            }
            sandbox::set_hostname(&req.hostname).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        }
        if !req.dns_servers.is_empty() || !req.dns_search.is_empty() {
            match &self.config.resolv_conf {
                Some(path) => sandbox::write_resolv_conf(path, &req.dns_servers, &req.dns_search)
                    .map_err(|e| status(Code::INTERNAL, e))?,
                None => log::warn!("dns settings ignored: no --resolv-conf on a host run"),
            }
        }
        Ok(Empty::new())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> Result<Empty> {
        log::info!("Shutdown requested");
        let _ = self.shutdown.send(());
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, _req: StatsRequest) -> Result<StatsResponse> {
        let internal = |e: sandbox::Error| status(Code::INTERNAL, e);
        let mem = sandbox::meminfo().map_err(internal)?;
        let load = sandbox::loadavg().map_err(internal)?;
        let mut resp = StatsResponse::new();
        resp.uptime_ms = uptime_ms();
        resp.mem_total_bytes = mem.total;
        resp.mem_free_bytes = mem.free;
        resp.mem_available_bytes = mem.available;
        [resp.load1_x100, resp.load5_x100, resp.load15_x100] = load;
        resp.process_count = sandbox::pids().map_err(internal)?.len() as u32;
        resp.container_count = self.containers.count() as u32;
        Ok(resp)
    }

    fn get_event(&self, _ctx: &TtrpcContext, req: GetEventRequest) -> Result<Event> {
        let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms.into()));
        Ok(self.events.pop(timeout).unwrap_or_else(events::no_event))
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        let id = req.container_id.as_str();
        let rootfs = req.rootfs.clone().unwrap_or_default();
        let source = RootfsSource {
            device: rootfs.device,
            fstype: rootfs.fstype,
            options: rootfs.options,
            upper_device: rootfs.upper_device,
            upper_fstype: rootfs.upper_fstype,
        };
        let plan = stdio_plan(&req.stdio, req.terminal);
        let init = self
            .containers
            .create(id, &req.oci_spec_json, &source, plan)?;
        log::info!("CreateContainer {id}: init pid {}", init.pid);
        let mut resp = CreateContainerResponse::new();
        resp.pid = init.pid.as_raw() as u32;
        Ok(resp)
    }

    fn start_container(&self, _ctx: &TtrpcContext, req: StartContainerRequest) -> Result<Empty> {
        self.containers.start(&req.container_id)?;
        log::info!("StartContainer {}", req.container_id);
        Ok(Empty::new())
    }

    fn container_state(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerStateRequest,
    ) -> Result<ContainerStateResponse> {
        let state = self.containers.state(&req.container_id)?;
        let mut resp = ContainerStateResponse::new();
        resp.container_id = req.container_id.clone();
        resp.pid = state.pid as u32;
        resp.status = match (state.status, state.exit) {
            (_, Some(_)) | (runtime::Status::Stopped, _) => ContainerStatus::STOPPED,
            (runtime::Status::Created | runtime::Status::Creating, _) => ContainerStatus::CREATED,
            (runtime::Status::Running, _) => ContainerStatus::RUNNING,
            (runtime::Status::Paused, _) => ContainerStatus::PAUSED,
        }
        .into();
        if let Some(exit) = state.exit {
            resp.exit = Some(events::exit_status(exit)).into();
        }
        Ok(resp)
    }

    fn remove_container(&self, _ctx: &TtrpcContext, req: RemoveContainerRequest) -> Result<Empty> {
        let id = req.container_id.as_str();
        if id.is_empty() {
            guest_processes::remove(&self.processes, req.force)?;
            return Ok(Empty::new());
        }
        self.containers.remove(id, req.force)?;
        log::info!("RemoveContainer {id}");
        Ok(Empty::new())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> Result<ListProcessesResponse> {
        let pids = if req.container_id.is_empty() {
            sandbox::pids().map_err(|e| status(Code::INTERNAL, e))?
        } else {
            self.containers.ps(&req.container_id)?
        };
        let ours = self.processes.all();
        let mut resp = ListProcessesResponse::new();
        for pid in pids {
            let Some(entry) = sandbox::proc_entry(pid) else {
                continue;
            };
            let mut info = ProcessInfo::new();
            info.pid = entry.pid as u32;
            info.ppid = entry.ppid as u32;
            info.uid = entry.uid;
            info.cmdline = entry.cmdline;
            if let Some(p) = ours
                .iter()
                .find(|p| p.pid.as_raw() == pid && p.exit_status().is_none())
            {
                info.exec_id = p.exec_id.clone();
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: PauseContainerRequest) -> Result<Empty> {
        self.containers.pause(&req.container_id)?;
        log::info!("PauseContainer {}", req.container_id);
        Ok(Empty::new())
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ResumeContainerRequest) -> Result<Empty> {
        self.containers.resume(&req.container_id)?;
        log::info!("ResumeContainer {}", req.container_id);
        Ok(Empty::new())
    }

    fn container_stats(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerStatsRequest,
    ) -> Result<ContainerStatsResponse> {
        let stats = self.containers.stats(&req.container_id)?;
        let mut resp = stats::to_proto(&stats);
        resp.container_id = req.container_id;
        Ok(resp)
    }

    fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> Result<Empty> {
        let resources: runtime::LinuxResources = serde_json::from_str(&req.resources_json)
            .map_err(|e| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("resources_json: not an OCI linux.resources object: {e}"),
                )
            })?;
        self.containers.update(&req.container_id, &resources)?;
        log::info!(
            "UpdateContainer {}: {}",
            req.container_id,
            req.resources_json
        );
        Ok(Empty::new())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Result<ExecProcessResponse> {
        self.containers.check(&req.container_id)?;
        if req.exec_id.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec_id: must not be empty (the empty id names a container's init)",
            ));
        }
        let plan = stdio_plan(&req.stdio, req.terminal);
        let process = if req.container_id.is_empty() {
            guest_processes::exec(
                &self.processes,
                &self.reaper,
                &req.exec_id,
                &req.process_json,
                plan,
            )?
        } else {
            self.containers
                .exec(&req.container_id, &req.exec_id, &req.process_json, plan)?
        };
        log::info!(
            "ExecProcess {:?}/{:?} pid {}",
            req.container_id,
            req.exec_id,
            process.pid
        );
        let mut resp = ExecProcessResponse::new();
        resp.pid = process.pid.as_raw() as u32;
        Ok(resp)
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> Result<Empty> {
        self.containers.check(&req.container_id)?;
        let signal = Signal::try_from(req.signal as i32).map_err(|_| {
            status(
                Code::INVALID_ARGUMENT,
                format!("signal: {} is not a signal number", req.signal),
            )
        })?;
        if req.all && !req.container_id.is_empty() {
            self.containers.kill_all(&req.container_id, signal)?;
        } else if req.all {
            for p in self.processes.of_container(&req.container_id) {
                let _ = p.signal(signal);
            }
        } else {
            self.processes
                .get(&req.container_id, &req.exec_id)?
                .signal(signal)?;
        }
        Ok(Empty::new())
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> Result<WaitProcessResponse> {
        self.containers.check(&req.container_id)?;
        let process = self.processes.get(&req.container_id, &req.exec_id)?;
        let mut resp = WaitProcessResponse::new();
        resp.status = Some(events::exit_status(process.wait())).into();
        resp.pid = process.pid.as_raw() as u32;
        Ok(resp)
    }

    fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> Result<Empty> {
        self.containers.check(&req.container_id)?;
        let too_big = |field: &str, v: u32| {
            status(
                Code::INVALID_ARGUMENT,
                format!("{field}: {v} does not fit a terminal size"),
            )
        };
        let rows = u16::try_from(req.rows).map_err(|_| too_big("rows", req.rows))?;
        let cols = u16::try_from(req.cols).map_err(|_| too_big("cols", req.cols))?;
        self.processes
            .get(&req.container_id, &req.exec_id)?
            .resize_tty(rows, cols)?;
        Ok(Empty::new())
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> Result<Empty> {
        self.containers.check(&req.container_id)?;
        self.processes
            .get(&req.container_id, &req.exec_id)?
            .close_stdin();
        Ok(Empty::new())
    }
}
