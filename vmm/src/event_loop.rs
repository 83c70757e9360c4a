//! The main thread's event loop: an event-manager `EventManager` whose subscribers are the
//! exit signal, the API socket and the virtio devices' queue and backend handlers.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::vstate::{ExitReason, ExitSignal};

/// A subscriber as the event manager stores it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the event manager: {0}")]
    Create(event_manager::Error),
    #[error("event loop failed: {0}")]
    Run(event_manager::Error),
}

/// Wakes the loop when a vCPU, a device or the API requests the exit.
struct ExitHandler {
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for ExitHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.event(), EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the exit eventfd");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.event().read();
    }
}

/// The event loop of the VMM.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
}

impl EventLoop {
    pub fn new(exit: Arc<ExitSignal>) -> Result<Self, EventLoopError> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::Create)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitHandler { exit: exit.clone() })));
        Ok(Self { manager, exit })
    }

    /// Adds a subscriber; its `init` registers its fds.
    pub fn add(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// The event manager, for device managers that add subscribers themselves.
    pub fn manager_mut(&mut self) -> &mut EventManager<Subscriber> {
        &mut self.manager
    }

    /// Dispatches events until an exit is requested, calling `tick` after each round.
    pub fn run_until_exit(&mut self, mut tick: impl FnMut()) -> Result<ExitReason, EventLoopError> {
        loop {
            if let Some(reason) = self.exit.reason() {
                return Ok(reason);
            }
            self.manager
                .run_with_timeout(1000)
                .map_err(EventLoopError::Run)?;
            tick();
        }
    }
}
