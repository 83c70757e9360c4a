//! The thread that serves a virtio-fs device while it is active: it waits for kicks of the
//! hiprio and request queues and answers every request queued, until the device is reset.
//!
//! The thread unshares its file system attributes (`unshare(CLONE_FS)`) and clears its own
//! umask, so the modes the guest asks for reach the host as they are without loosening the
//! umask of the rest of the VMM (its sockets and log files).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{request, Share};
use crate::devices::virtio::{ActiveState, GuestMemoryGate};

/// The epoll token of the stop event; queue kicks use their queue index.
const STOP: u64 = u64::MAX;

/// A running worker.
pub struct Worker {
    stop: EventFd,
    thread: JoinHandle<ActiveState>,
}

impl Worker {
    /// Starts serving `state`'s queues, woken by `kicks` (one eventfd per queue, in order).
    pub fn spawn(
        share: Arc<Share>,
        state: ActiveState,
        kicks: Vec<EventFd>,
        gate: GuestMemoryGate,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (index, kick) in kicks.iter().enumerate() {
            let event = EpollEvent::new(EventSet::IN, index as u64);
            epoll.ctl(ControlOperation::Add, kick.as_raw_fd(), event)?;
        }
        let event = EpollEvent::new(EventSet::IN, STOP);
        epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), event)?;
        let stop_evt = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("virtio-fs".into())
            .spawn(move || run(&share, state, &kicks, &epoll, &stop_evt, &gate))?;
        Ok(Self { stop, thread })
    }

    /// Stops the thread once it has finished the request it is serving; returns the queues,
    /// or `None` if the thread panicked.
    pub fn stop(self) -> Option<ActiveState> {
        if let Err(e) = self.stop.write(1) {
            error!(error = %e, "virtio-fs: cannot signal the worker to stop");
        }
        self.thread.join().ok()
    }
}

fn run(
    share: &Share,
    mut state: ActiveState,
    kicks: &[EventFd],
    epoll: &Epoll,
    stop: &EventFd,
    gate: &GuestMemoryGate,
) -> ActiveState {
    own_umask();
    let mut events = vec![EpollEvent::default(); kicks.len() + 1];
    'serve: loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!(error = %e, "virtio-fs: the worker cannot wait for kicks; it stops");
                break;
            }
        };
        for event in &events[..ready] {
            let token = event.data();
            if token == STOP {
                let _ = stop.read();
                break 'serve;
            }
            let index = token as usize;
            // The counter only wakes us; draining it keeps level-triggered epoll quiet.
            let _ = kicks[index].read();
            let _writing = gate.read().unwrap_or_else(|e| e.into_inner());
            let served = state.serve_queue(index, |chain, mem| request::serve(share, chain, mem));
            if let Err(e) = served {
                error!(queue = index, error = %e, "virtio-fs: queue processing failed");
            }
        }
    }
    // The guest's inodes and open files go with the session; a new driver starts afresh.
    share.end_session();
    state
}

/// Gives this thread its own umask, cleared; if it cannot, new files get the process's
/// umask on top of the guest's.
fn own_umask() {
    // SAFETY: unshare(CLONE_FS) only detaches this thread's root, working directory and
    // umask from the other threads'; it touches no memory.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        warn!(
            "virtio-fs: cannot unshare the worker's file system attributes ({}); the VMM's umask \
             applies to the files the guest creates",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: umask only sets this thread's file creation mask (unshared above); it cannot fail.
    unsafe { libc::umask(0) };
}
