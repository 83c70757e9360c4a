//! Exit and OOM notifications waiting for the host's GetEvent long-poll, in the protocol's form.
//! Bounded: if the host never asks, the oldest events are dropped with a warning.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use protocol::agent::{Event, EventKind};

use crate::process_table::Process;
use crate::reaper::ExitStatus;

const MAX_QUEUED: usize = 4096;

/// The protocol's form of an exit.
pub fn exit_status(status: ExitStatus) -> protocol::agent::ExitStatus {
    let mut out = protocol::agent::ExitStatus::new();
    match status {
        ExitStatus::Exited(code) => out.exit_code = code,
        ExitStatus::Signaled {
            signal,
            core_dumped,
        } => {
            out.signal = signal as u32;
            out.core_dumped = core_dumped;
        }
    }
    out
}

/// The guest's uptime for an event's or a reply's timestamp; 0 if the clock cannot be read.
pub fn uptime_ms() -> u64 {
    crate::init::uptime_ms().unwrap_or(0)
}

/// Process `p` (pid `pid`) ended with `status`.
pub fn exit_event(p: &Process, pid: Pid, status: ExitStatus) -> Event {
    let mut event = Event::new();
    event.kind = EventKind::EXIT.into();
    event.container_id = p.container_id.clone();
    event.exec_id = p.exec_id.clone();
    event.pid = pid.as_raw() as u32;
    event.status = Some(exit_status(status)).into();
    event.time_ms = uptime_ms();
    event
}

/// Container `id`'s cgroup counted another OOM kill.
pub fn oom_event(id: &str) -> Event {
    let mut event = Event::new();
    event.kind = EventKind::OOM.into();
    event.container_id = id.to_string();
    event.time_ms = uptime_ms();
    event
}

/// What GetEvent returns when nothing happened within its timeout.
pub fn no_event() -> Event {
    let mut none = Event::new();
    none.kind = EventKind::NONE.into();
    none.time_ms = uptime_ms();
    none
}

#[derive(Default)]
pub struct EventQueue {
    queue: Mutex<VecDeque<Event>>,
    ready: Condvar,
}

impl EventQueue {
    pub fn push(&self, event: Event) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() >= MAX_QUEUED {
            log::warn!("event queue full; dropping the oldest event");
            queue.pop_front();
        }
        queue.push_back(event);
        self.ready.notify_one();
    }

    /// The oldest event, waiting up to `timeout` (forever if `None`).
    pub fn pop(&self, timeout: Option<Duration>) -> Option<Event> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(event) = queue.pop_front() {
                return Some(event);
            }
            queue = match deadline {
                None => self.ready.wait(queue).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.ready
                        .wait_timeout(queue, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn events_come_out_in_order_and_wake_a_waiter() {
        let q = Arc::new(EventQueue::default());
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.pop(None).map(|e| e.pid))
        };
        for pid in [7, 8] {
            let mut e = Event::new();
            e.pid = pid;
            q.push(e);
        }
        let first = waiter.join().unwrap();
        let second = q.pop(Some(Duration::ZERO)).map(|e| e.pid);
        assert_eq!((first, second), (Some(7), Some(8)));
        assert!(q.pop(Some(Duration::from_millis(1))).is_none());
    }
}
