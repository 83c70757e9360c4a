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

use virtio_queue::QueueT;

use super::{request, Share};
use crate::devices::virtio::{ActiveState, GuestMemoryGate, QueueError};

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
            if let Err(e) = serve(share, &mut state, index) {
                error!(queue = index, error = %e, "virtio-fs: queue processing failed");
            }
        }
    }
    // The guest's inodes and open files go with the session; a new driver starts afresh.
    share.end_session();
    state
}

/// Serves queue `index` until the driver has nothing more in it, with its kicks off meanwhile;
/// re-enabling them checks for requests added in between (virtio 1.2, 2.7.10).
fn serve(share: &Share, state: &mut ActiveState, index: usize) -> Result<(), QueueError> {
    let queue_err = |source| QueueError::Queue { index, source };
    if !state.queues[index].ready() {
        return Ok(());
    }
    loop {
        state.queues[index]
            .disable_notification(&state.mem)
            .map_err(queue_err)?;
        let served = state.serve_queue(index, |chain, mem| request::serve(share, chain, mem))?;
        let more = state.queues[index]
            .enable_notification(&state.mem)
            .map_err(queue_err)?;
        // A ring whose index runs ahead of chains that cannot be taken (a driver's bug or
        // attack) must not keep the thread spinning: wait for the next kick.
        if !more || served == 0 {
            return Ok(());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::IrqTrigger;
    use std::time::Duration;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn a_ring_running_ahead_of_its_chains_does_not_keep_the_worker_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let share = Share::open(dir.path(), false).unwrap();
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, 16);
        // An available index 100 entries ahead of a 16-entry ring: no chain can be taken.
        let avail = q.avail_addr().0;
        mem.write_obj(100u16, GuestAddress(avail + 2)).unwrap();
        let mut state = ActiveState {
            mem: mem.clone(),
            interrupt: Arc::new(IrqTrigger::new().unwrap()),
            queues: vec![q.create_queue().unwrap()],
        };
        let (done, finished) = std::sync::mpsc::channel();
        // On failure the thread spins on; it is left behind, the test fails.
        std::thread::spawn(move || {
            let _ = serve(&share, &mut state, 0);
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(10)).is_ok(),
            "serve() did not return within 10 s"
        );
    }
}
