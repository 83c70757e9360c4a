//! The API socket as an event-manager subscriber: accepts connections, reads one request
//! per line, answers one JSON object per line, and acts on the VM through `VmControl`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::Deserialize;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::builder::VirtioDevices;
use crate::devices::legacy::I8042;
use crate::event_loop::Subscriber;
use crate::unix_listener::{StaleSocket, UnixSocketListener};
use crate::vstate::trim::{self, HostRange};
use crate::vstate::vcpu::{self, VcpuControl, VcpuHandle};
use crate::vstate::{ExitReason, ExitSignal};

/// Longest request line accepted.
const MAX_LINE: usize = 4096;
/// Grace period of `shutdown` before the VMM stops the guest itself.
const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5000;

/// Errors of API set-up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the shutdown timer: {0}")]
    Timer(vmm_sys_util::errno::Error),
    #[error("--api-sock {path}: cannot listen: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
}

/// What the API acts on.
pub struct VmControl {
    pub exit: Arc<ExitSignal>,
    pub control: Arc<VcpuControl>,
    pub vcpus: Arc<Vec<VcpuHandle>>,
    pub devices: Arc<Mutex<VirtioDevices>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// Guest RAM and the pmem regions, for `trim`.
    pub guest_ranges: Vec<HostRange>,
}

/// A request line: `{"action": "pause"}` or just `pause`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Request {
    action: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// `trim`: run it this many milliseconds later instead of now.
    #[serde(default)]
    delay_ms: Option<u64>,
}

fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.trim();
    if line.starts_with('{') {
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
    } else {
        Ok(Request {
            action: line.to_string(),
            timeout_ms: None,
            delay_ms: None,
        })
    }
}

fn reply_ok(state: &str) -> String {
    serde_json::json!({"ok": true, "state": state}).to_string()
}

fn reply_err(error: &str) -> String {
    serde_json::json!({"ok": false, "error": error}).to_string()
}

/// The bound socket, before the VM runs.
pub struct ApiServerHandle {
    listener: UnixSocketListener,
    shutdown_timer: TimerFd,
    trim_timer: TimerFd,
}

impl ApiServerHandle {
    /// Binds the socket at `path` (removed again when the VMM exits); a file already there
    /// is refused, not replaced.
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        let listener = UnixSocketListener::bind(path, StaleSocket::Refuse).map_err(|source| {
            ApiError::Bind {
                path: path.display().to_string(),
                source,
            }
        })?;
        let shutdown_timer = TimerFd::new().map_err(ApiError::Timer)?;
        let trim_timer = TimerFd::new().map_err(ApiError::Timer)?;
        Ok(Self {
            listener,
            shutdown_timer,
            trim_timer,
        })
    }

    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// The event-loop subscriber serving the socket.
    pub fn into_subscriber(self, vm: VmControl) -> Subscriber {
        Arc::new(Mutex::new(ApiServer {
            listener: self.listener,
            conns: HashMap::new(),
            vm,
            shutdown_timer: self.shutdown_timer,
            trim_timer: self.trim_timer,
        }))
    }
}

struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
}

struct ApiServer {
    /// Dropped with the event loop when the VMM exits, removing the socket file.
    listener: UnixSocketListener,
    conns: HashMap<RawFd, Connection>,
    vm: VmControl,
    shutdown_timer: TimerFd,
    trim_timer: TimerFd,
}

impl ApiServer {
    fn state(&self) -> &'static str {
        if self.vm.control.is_paused() {
            "paused"
        } else {
            "running"
        }
    }

    fn handle(&mut self, req: Request) -> String {
        match req.action.as_str() {
            "state" => reply_ok(self.state()),
            "pause" => {
                vcpu::pause_vcpus(&self.vm.control, &self.vm.vcpus, &self.vm.exit);
                reply_ok(self.state())
            }
            "resume" => {
                vcpu::resume_vcpus(&self.vm.control);
                reply_ok(self.state())
            }
            "shutdown" => {
                vcpu::resume_vcpus(&self.vm.control);
                self.vm
                    .i8042
                    .lock()
                    .expect("i8042 poisoned")
                    .inject_ctrl_alt_del();
                let grace = req.timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS);
                match self
                    .shutdown_timer
                    .reset(Duration::from_millis(grace.max(1)), None)
                {
                    Ok(()) => reply_ok("shutting-down"),
                    Err(e) => reply_err(&format!("cannot arm the shutdown timer: {e}")),
                }
            }
            "trim" => match req.delay_ms {
                None | Some(0) => self.trim(),
                Some(ms) => match self.trim_timer.reset(Duration::from_millis(ms), None) {
                    Ok(()) => {
                        serde_json::json!({"ok": true, "state": self.state(), "trim_in_ms": ms})
                            .to_string()
                    }
                    Err(e) => reply_err(&format!("cannot arm the trim timer: {e}")),
                },
            },
            "flush-and-exit" => {
                self.vm.devices.lock().expect("devices poisoned").flush();
                self.vm.exit.request(ExitReason::ApiExit);
                reply_ok("exiting")
            }
            other => reply_err(&format!("unknown action {other:?}")),
        }
    }

    /// Unmaps the file pages the guest has only read (vstate::trim), with the vCPUs paused
    /// for the while; answers how many KiB went.
    fn trim(&mut self) -> String {
        let was_paused = self.vm.control.is_paused();
        if !was_paused {
            vcpu::pause_vcpus(&self.vm.control, &self.vm.vcpus, &self.vm.exit);
        }
        let gate = self
            .vm
            .devices
            .lock()
            .expect("devices poisoned")
            .memory_gate();
        let quiet = gate.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the ranges are this VM's guest RAM (anonymous, or the kernel and initrd files
        // mapped private, never changed in place: docs/vmm-api.md) and its pmem regions (files
        // mapped private read-only, or shared); the vCPUs are paused, the event loop's devices
        // run on this thread and the device threads wait at the gate, so nothing writes guest
        // memory while the trim runs.
        let result = unsafe { trim::trim(&self.vm.guest_ranges) };
        drop(quiet);
        if !was_paused {
            vcpu::resume_vcpus(&self.vm.control);
        }
        match result {
            Ok(bytes) => {
                tracing::info!("api: trimmed {} KiB of guest file pages", bytes / 1024);
                serde_json::json!({"ok": true, "state": self.state(), "released_kib": bytes / 1024})
                    .to_string()
            }
            Err(e) => reply_err(&e.to_string()),
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let conns = &mut self.conns;
        self.listener.accept_all("api", |stream| {
            let fd = stream.as_raw_fd();
            if ops
                .add(Events::new_raw(fd, EventSet::IN | EventSet::READ_HANG_UP))
                .is_ok()
            {
                conns.insert(
                    fd,
                    Connection {
                        stream,
                        buf: Vec::new(),
                    },
                );
            }
        });
    }

    /// Reads what is available; answers every complete line. Returns false to close.
    fn serve(&mut self, fd: RawFd) -> bool {
        let Some(mut conn) = self.conns.remove(&fd) else {
            return false;
        };
        let mut chunk = [0u8; 512];
        let open = loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => break false,
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break false,
            }
        };
        while let Some(pos) = conn.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = conn.buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            let answer = match parse_request(&text) {
                Ok(req) => self.handle(req),
                Err(e) => reply_err(&e),
            };
            // Replies are short; a client that does not read them is dropped.
            let _ = conn.stream.set_nonblocking(false);
            let _ = conn.stream.set_write_timeout(Some(Duration::from_secs(1)));
            if conn
                .stream
                .write_all(format!("{answer}\n").as_bytes())
                .is_err()
            {
                return false;
            }
            let _ = conn.stream.set_nonblocking(true);
        }
        if conn.buf.len() > MAX_LINE {
            let _ = conn
                .stream
                .write_all(format!("{}\n", reply_err("request line too long")).as_bytes());
            return false;
        }
        if open {
            self.conns.insert(fd, conn);
        }
        open
    }

    /// Ends a `shutdown` whose grace period ran out.
    fn shutdown_overdue(&mut self) {
        let _ = self.shutdown_timer.wait();
        tracing::warn!("api: the guest did not shut down in time; stopping it");
        self.vm.devices.lock().expect("devices poisoned").flush();
        self.vm.exit.request(ExitReason::ApiExit);
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!(error = ?e, "api: cannot watch the listening socket");
        }
        if let Err(e) = ops.add(Events::new(&self.shutdown_timer, EventSet::IN)) {
            tracing::error!(error = ?e, "api: cannot watch the shutdown timer");
        }
        if let Err(e) = ops.add(Events::new(&self.trim_timer, EventSet::IN)) {
            tracing::error!(error = ?e, "api: cannot watch the trim timer");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if fd == self.shutdown_timer.as_raw_fd() {
            self.shutdown_overdue();
        } else if fd == self.trim_timer.as_raw_fd() {
            let _ = self.trim_timer.wait();
            self.trim();
        } else if !self.serve(fd) {
            let _ = ops.remove(Events::empty_raw(fd));
            self.conns.remove(&fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_json_or_bare_words() {
        assert_eq!(
            parse_request("{\"action\": \"pause\"}\n").unwrap(),
            Request {
                action: "pause".into(),
                timeout_ms: None,
                delay_ms: None
            }
        );
        assert_eq!(parse_request("state\n").unwrap().action, "state");
        assert_eq!(
            parse_request("{\"action\":\"shutdown\",\"timeout_ms\":10}")
                .unwrap()
                .timeout_ms,
            Some(10)
        );
        assert_eq!(
            parse_request(r#"{"action":"trim","delay_ms":1000}"#)
                .unwrap()
                .delay_ms,
            Some(1000)
        );
        assert!(parse_request("{\"verb\": \"x\"}")
            .unwrap_err()
            .contains("unknown field"));
    }
}
