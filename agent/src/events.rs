//! Exit and OOM notifications waiting for the host's GetEvent long-poll.
//! Bounded: if the host never asks, the oldest events are dropped with a warning.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use protocol::agent::Event;

const MAX_QUEUED: usize = 4096;

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
