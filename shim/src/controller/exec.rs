//! `exec`: a new process in a running container's VM, detached, on a `--console-socket`, or
//! in the foreground with our stdio attached and signals forwarded until it exits.

use std::path::PathBuf;

use crate::agent_client::StdioSet;

use super::sandbox::{check_console, Sandbox};
use super::signals::{self, Forwarder};
use super::tty::{stdin_fd, RawMode};
use super::{console, state, stdio_attach, Error};

/// A process to run in a container with `exec`.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// An OCI `process` object.
    pub process: serde_json::Value,
    /// Return once started, with no stdio attached.
    pub detach: bool,
    /// With a terminal: the pty master goes to this socket instead of our stdio.
    pub console_socket: Option<PathBuf>,
}

impl Sandbox {
    /// `exec`: a new process in a running container; its exit code unless detached.
    pub fn exec(&self, id: &str, req: &ExecRequest) -> Result<i32, Error> {
        let sigset = if req.detach {
            None
        } else {
            Some(signals::block_for_vm()?)
        };
        let record = self.root.load(id)?;
        let client = self.connect(&record)?;
        let terminal = req.process["terminal"].as_bool().unwrap_or(false);
        let exec_id = state::generate_id().replacen("sbx", "exec", 1);
        let process_json = req.process.to_string();
        if req.detach || req.console_socket.is_some() {
            check_console(terminal, req.console_socket.as_deref()).map_err(|reason| {
                Error::Container {
                    id: id.to_string(),
                    reason: format!("exec: {reason}"),
                }
            })?;
        }
        if let Some(socket) = &req.console_socket {
            client.exec_process(id, &exec_id, &process_json, StdioSet::default(), true)?;
            let relay = self.hand_over_tty(&client, &record, &exec_id, socket)?;
            let Some(sigset) = sigset else {
                return Ok(0);
            };
            Forwarder::spawn(sigset).started(&client, id, &exec_id, false);
            let status = client.wait_process(id, &exec_id)?;
            console::wait_relay(relay);
            return Ok(status.code());
        }
        let Some(sigset) = sigset else {
            client.exec_process(id, &exec_id, &process_json, StdioSet::default(), false)?;
            return Ok(0);
        };
        let announced = stdio_attach::announced(terminal);
        client.exec_process(id, &exec_id, &process_json, announced, terminal)?;
        let raw = if terminal {
            RawMode::enable(stdin_fd())
        } else {
            None
        };
        let attached = stdio_attach::attach(&client, id, &exec_id, terminal)?;
        Forwarder::spawn(sigset).started(&client, id, &exec_id, terminal);
        let status = client.wait_process(id, &exec_id)?;
        attached.drain();
        drop(raw);
        Ok(status.code())
    }
}
