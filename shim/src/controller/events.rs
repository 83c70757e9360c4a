//! Exit and OOM notifications of one VM: a thread long-polls the agent's GetEvent and hands
//! typed events to the one subscriber (the agent's queue is consumed, so one per VM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use protocol::agent::{Event, EventKind};

use crate::agent_client::{AgentClient, Error, ExitStatus};

/// How long one GetEvent waits in the guest; bounds how late `Drop` notices the stop.
const POLL: Duration = Duration::from_millis(500);

/// What happened in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A process the agent started ended (`exec_id` "" is a container's init).
    Exit {
        container_id: String,
        exec_id: String,
        pid: u32,
        status: ExitStatus,
        /// Guest CLOCK_BOOTTIME, milliseconds.
        time_ms: u64,
    },
    /// The kernel OOM-killed a process of the container (its `memory.events` oom_kill grew).
    Oom { container_id: String, time_ms: u64 },
}

impl AgentEvent {
    fn from_proto(e: &Event) -> Option<AgentEvent> {
        match e.kind.enum_value_or_default() {
            EventKind::EXIT => Some(AgentEvent::Exit {
                container_id: e.container_id.clone(),
                exec_id: e.exec_id.clone(),
                pid: e.pid,
                status: ExitStatus::from_proto(&e.status),
                time_ms: e.time_ms,
            }),
            EventKind::OOM => Some(AgentEvent::Oom {
                container_id: e.container_id.clone(),
                time_ms: e.time_ms,
            }),
            EventKind::NONE => None,
        }
    }

    /// The container the event is about.
    pub fn container_id(&self) -> &str {
        match self {
            AgentEvent::Exit { container_id, .. } | AgentEvent::Oom { container_id, .. } => {
                container_id
            }
        }
    }
}

/// The subscription; stops its thread when dropped.
pub struct EventListener {
    rx: Receiver<Result<AgentEvent, Error>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventListener {
    /// Starts polling through `client` (its own connection is best: the poll holds a call
    /// open). The stream ends with one `Err` when the agent cannot be reached any more (the
    /// VM is gone).
    pub fn spawn(client: AgentClient) -> EventListener {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match client.get_event(Some(POLL)) {
                    Ok(None) => {}
                    Ok(Some(e)) => {
                        if let Some(event) = AgentEvent::from_proto(&e) {
                            if tx.send(Ok(event)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        EventListener {
            rx,
            stop,
            thread: Some(thread),
        }
    }

    /// The next event; `Err` once the agent is unreachable, `None` after that.
    pub fn recv(&self) -> Option<Result<AgentEvent, Error>> {
        self.rx.recv().ok()
    }

    /// The next event within `wait`: `Ok(None)` when none came.
    pub fn recv_timeout(&self, wait: Duration) -> Result<Option<AgentEvent>, Error> {
        match self.rx.recv_timeout(wait) {
            Ok(r) => r.map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::EventsEnded),
        }
    }
}

impl Drop for EventListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
