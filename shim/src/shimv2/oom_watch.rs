//! TaskOOM: one thread per VM long-polls the agent's events and publishes an OOM kill in
//! the guest for the task whose container it hit, until the VM goes away.

use crate::agent_client::AgentClient;
use crate::controller::{vm::CALL_TIMEOUT, AgentEvent, EventListener};

use super::events::Event;
use super::service::Service;
use super::vm_id;

impl Service {
    /// Publishes TaskOOM for OOM kills in the guest of a VM (its own task's, and those of the
    /// pod's containers that join it later) until the VM goes away.
    pub(super) fn watch_oom(&self, client: &AgentClient) {
        let svc = self.clone();
        let endpoint = client.endpoint().clone();
        std::thread::spawn(move || {
            // Its own connection: the long poll holds a call open.
            let Ok(own) = AgentClient::connect(&endpoint, CALL_TIMEOUT) else {
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
}
