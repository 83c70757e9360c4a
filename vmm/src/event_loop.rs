//! The main thread's event loop: an event-manager `EventManager` whose subscribers are the
//! exit signal, SIGTERM/SIGINT, the API socket and the virtio devices' handlers.

use std::fs::File;
use std::io::Read;
use std::os::unix::io::FromRawFd;
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
    #[error("cannot set up SIGTERM/SIGINT handling: {0}")]
    Signals(std::io::Error),
}

/// Turns SIGTERM and SIGINT into an orderly exit (the API socket is removed, the console
/// flushed). The signals are blocked in the main thread before any vCPU thread exists, so
/// every thread inherits the mask and only the signalfd sees them.
struct SignalHandler {
    fd: File,
    exit: Arc<ExitSignal>,
}

impl SignalHandler {
    fn new(exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use; the
        // calls only read and write it and the thread's signal mask.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new signalfd that nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Self { fd, exit })
    }
}

impl MutEventSubscriber for SignalHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the signalfd");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        if let Ok(n) = self.fd.read(&mut info) {
            if n == info.len() {
                let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                self.exit.request(ExitReason::Signal(signo as i32));
            }
        }
    }
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
        let signals = SignalHandler::new(exit.clone()).map_err(EventLoopError::Signals)?;
        manager.add_subscriber(Arc::new(Mutex::new(signals)));
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
