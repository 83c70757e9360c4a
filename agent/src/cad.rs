//! Ctrl-Alt-Del as a graceful shutdown request. As PID 1 the agent asks the kernel to send
//! it SIGINT on Ctrl-Alt-Del instead of restarting at once (`reboot(RB_DISABLE_CAD)`); the
//! VMM's `shutdown` API call injects those keys. On SIGINT the workload gets SIGTERM and a
//! grace period, then the agent's normal shutdown runs (kill, sync, reboot → VM exit).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::reboot::set_cad_enabled;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use thiserror::Error;

use crate::process_table::ProcessTable;

/// How long the workload gets between SIGTERM and the shutdown's SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);
/// How often the grace period looks whether everything has exited.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot block SIGINT for the agent's threads: {0}")]
    Block(nix::Error),
    #[error("cannot turn Ctrl-Alt-Del into SIGINT (reboot RB_DISABLE_CAD): {0}")]
    DisableCad(nix::Error),
    #[error("cannot start the Ctrl-Alt-Del thread: {0}")]
    Thread(std::io::Error),
}

/// Blocks SIGINT in the calling thread (every later thread inherits it) and routes
/// Ctrl-Alt-Del to it. Call before any thread is started.
pub fn route_to_sigint() -> Result<(), Error> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(Error::Block)?;
    set_cad_enabled(false).map_err(Error::DisableCad)
}

/// Starts the thread that waits for Ctrl-Alt-Del (SIGINT), stops the workload with SIGTERM
/// and a grace period, then calls `shutdown`.
pub fn watch(
    processes: Arc<ProcessTable>,
    shutdown: impl FnOnce() + Send + 'static,
) -> Result<(), Error> {
    thread::Builder::new()
        .name("ctrl-alt-del".into())
        .spawn(move || {
            let mut set = SigSet::empty();
            set.add(Signal::SIGINT);
            loop {
                match set.wait() {
                    Ok(Signal::SIGINT) => break,
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("sigwait for SIGINT failed: {e}");
                        return;
                    }
                }
            }
            log::info!(
                "Ctrl-Alt-Del: stopping the workload (grace {} ms)",
                GRACE.as_millis()
            );
            stop_gracefully(&processes, GRACE);
            shutdown();
        })
        .map(drop)
        .map_err(Error::Thread)
}

/// SIGTERM to every live process, then waits until they have all exited or `grace` is over.
/// Returns whether they all exited.
pub fn stop_gracefully(processes: &ProcessTable, grace: Duration) -> bool {
    let live = || {
        processes
            .all()
            .into_iter()
            .filter(|p| p.exit_status().is_none())
            .collect::<Vec<_>>()
    };
    for p in live() {
        let _ = p.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        if live().is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}
