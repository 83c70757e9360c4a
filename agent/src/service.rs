//! The agent API server: each ttrpc call of proto/agent.proto mapped onto the agent's parts.
//! Errors become ttrpc statuses whose code tells the host what kind of failure it was.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::agent::*;
use protocol::agent_ttrpc;
use ttrpc::{Code, TtrpcContext};

use crate::config::Config;
use crate::events::EventQueue;
use crate::process::{self, ProcessSpec, StdioPlan};
use crate::processes::{self as table, ProcessTable};
use crate::reaper::{ExitStatus as Status, Reaper};
use crate::sandbox;

type Result<T> = ttrpc::Result<T>;

/// The state every call works on.
pub struct AgentService {
    pub config: Config,
    pub reaper: Arc<Reaper>,
    pub processes: Arc<ProcessTable>,
    pub events: Arc<EventQueue>,
    /// Whether sethostname affects only this agent (PID 1 or a private UTS namespace).
    pub own_uts: bool,
    /// Tells main to stop serving and power off (or exit on a host run).
    pub shutdown: Sender<()>,
}

fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.to_string()))
}

impl From<table::Error> for ttrpc::Error {
    fn from(e: table::Error) -> Self {
        let code = match e {
            table::Error::NotFound { .. } => Code::NOT_FOUND,
            table::Error::Exists { .. } => Code::ALREADY_EXISTS,
            table::Error::StreamUnavailable { .. }
            | table::Error::NoTerminal { .. }
            | table::Error::Exited { .. } => Code::FAILED_PRECONDITION,
            table::Error::Sys { .. } => Code::INTERNAL,
        };
        status(code, e)
    }
}

fn containers_unimplemented(call: &str) -> ttrpc::Error {
    status(
        Code::UNIMPLEMENTED,
        format!("{call}: containers are not wired to the runtime crate yet; only processes with an empty container_id run"),
    )
}

/// The protocol's form of an exit.
pub fn exit_status(status: Status) -> ExitStatus {
    let mut out = ExitStatus::new();
    match status {
        Status::Exited(code) => out.exit_code = code,
        Status::Signaled {
            signal,
            core_dumped,
        } => {
            out.signal = signal as u32;
            out.core_dumped = core_dumped;
        }
    }
    out
}

fn uptime_ms() -> u64 {
    crate::init::uptime_ms().unwrap_or(0)
}

impl AgentService {
    fn check_container_id(&self, call: &str, container_id: &str) -> Result<()> {
        if container_id.is_empty() {
            Ok(())
        } else {
            Err(containers_unimplemented(call))
        }
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
        resp.container_count = 0;
        Ok(resp)
    }

    fn get_event(&self, _ctx: &TtrpcContext, req: GetEventRequest) -> Result<Event> {
        let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms.into()));
        Ok(self.events.pop(timeout).unwrap_or_else(|| {
            let mut none = Event::new();
            none.kind = EventKind::NONE.into();
            none.time_ms = uptime_ms();
            none
        }))
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        _req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        Err(containers_unimplemented("CreateContainer"))
    }

    fn start_container(&self, _ctx: &TtrpcContext, _req: StartContainerRequest) -> Result<Empty> {
        Err(containers_unimplemented("StartContainer"))
    }

    fn container_state(
        &self,
        _ctx: &TtrpcContext,
        _req: ContainerStateRequest,
    ) -> Result<ContainerStateResponse> {
        Err(containers_unimplemented("ContainerState"))
    }

    fn remove_container(&self, _ctx: &TtrpcContext, req: RemoveContainerRequest) -> Result<Empty> {
        if !req.container_id.is_empty() {
            return Err(containers_unimplemented("RemoveContainer"));
        }
        // The sandbox itself: forget processes run in the guest that have ended.
        let running: Vec<_> = self
            .processes
            .of_container("")
            .into_iter()
            .filter(|p| p.exit_status().is_none())
            .collect();
        if !running.is_empty() && !req.force {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "container_id \"\": {} processes still run; use force",
                    running.len()
                ),
            ));
        }
        for p in &running {
            let _ = p.signal(Signal::SIGKILL);
        }
        for p in &running {
            p.wait();
        }
        self.processes.remove_container("");
        Ok(Empty::new())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> Result<ListProcessesResponse> {
        self.check_container_id("ListProcesses", &req.container_id)?;
        let ours = self.processes.all();
        let pids = sandbox::pids().map_err(|e| status(Code::INTERNAL, e))?;
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

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Result<ExecProcessResponse> {
        self.check_container_id("ExecProcess", &req.container_id)?;
        if req.exec_id.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec_id: must not be empty for a process outside a container",
            ));
        }
        let spec = ProcessSpec::from_json(&req.process_json)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let plan = StdioPlan {
            stdin: req.stdio.stdin,
            stdout: req.stdio.stdout,
            stderr: req.stdio.stderr,
            terminal: req.terminal,
        };
        self.processes
            .ensure_free(&req.container_id, &req.exec_id)?;
        let process = self.reaper.spawn_locked(|| {
            let spawned = process::spawn(&spec, plan)?;
            Ok::<_, process::Error>(
                self.processes
                    .insert(&req.container_id, &req.exec_id, spawned),
            )
        });
        let process = process.map_err(|e| {
            let code = match e {
                process::Error::Spawn { .. } => Code::FAILED_PRECONDITION,
                _ => Code::INTERNAL,
            };
            status(code, e)
        })?;
        log::info!(
            "ExecProcess {:?}/{:?} pid {} {:?}",
            req.container_id,
            req.exec_id,
            process.pid,
            spec.args
        );
        let mut resp = ExecProcessResponse::new();
        resp.pid = process.pid.as_raw() as u32;
        Ok(resp)
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> Result<Empty> {
        self.check_container_id("SignalProcess", &req.container_id)?;
        let signal = Signal::try_from(req.signal as i32).map_err(|_| {
            status(
                Code::INVALID_ARGUMENT,
                format!("signal: {} is not a signal number", req.signal),
            )
        })?;
        if req.all {
            for p in self.processes.of_container(&req.container_id) {
                let _ = p.signal(signal);
            }
            return Ok(Empty::new());
        }
        self.processes
            .get(&req.container_id, &req.exec_id)?
            .signal(signal)?;
        Ok(Empty::new())
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> Result<WaitProcessResponse> {
        self.check_container_id("WaitProcess", &req.container_id)?;
        let process = self.processes.get(&req.container_id, &req.exec_id)?;
        let mut resp = WaitProcessResponse::new();
        resp.status = Some(exit_status(process.wait())).into();
        resp.pid = process.pid.as_raw() as u32;
        Ok(resp)
    }

    fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> Result<Empty> {
        self.check_container_id("ResizeTty", &req.container_id)?;
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
        self.check_container_id("CloseStdin", &req.container_id)?;
        self.processes
            .get(&req.container_id, &req.exec_id)?
            .close_stdin();
        Ok(Empty::new())
    }
}
