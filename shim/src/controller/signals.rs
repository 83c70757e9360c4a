//! Signals of a foreground command (`run`, `exec`, the tty relay): blocked in every thread and
//! taken by one thread with sigwait, which routes each to the container's process.

use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use crate::agent_client::AgentClient;

use super::tty::{stdin_fd, stdout_fd, window_size};
use super::Error;

/// The signals a foreground command forwards to the container's process.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Blocks what a foreground command in a microVM takes: [`FORWARDED`] and SIGWINCH (it
/// relays the process's terminal, so a change of ours resizes the guest's tty).
pub fn block_for_vm() -> Result<SigSet, Error> {
    block(&[FORWARDED, &[Signal::SIGWINCH]].concat()).map_err(|e| Error::Io {
        what: "blocking signals".into(),
        source: e.into(),
    })
}

/// The set of `signals`.
pub fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set
}

/// Blocks `signals` in the calling thread (and so in threads it creates later). Call before
/// creating any thread. Children started with std's `Command` get an empty mask.
pub fn block(signals: &[Signal]) -> nix::Result<SigSet> {
    let set = set_of(signals);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}

/// Takes the (blocked) signals of `set` one by one with sigwait and hands each to `handler`;
/// returns only if sigwait fails.
pub fn wait_each(set: &SigSet, mut handler: impl FnMut(Signal)) {
    while let Ok(sig) = set.wait() {
        handler(sig);
    }
}

/// Starts a detached thread that hands each signal of `set` to `handler` ([`wait_each`]).
pub fn spawn_forwarder(set: SigSet, handler: impl FnMut(Signal) + Send + 'static) {
    std::thread::spawn(move || wait_each(&set, handler));
}

/// Where the signals of a foreground command in a microVM go: while the VM boots, SIGINT,
/// SIGTERM, SIGHUP and SIGQUIT kill the VMM (the start then fails and cleans up); once the
/// process runs, every signal is forwarded to it and SIGWINCH resizes its terminal.
pub struct Forwarder {
    state: Arc<Mutex<Forwarding>>,
}

#[derive(Default)]
struct Forwarding {
    vmm_pid: i32,
    interrupted: Option<Signal>,
    target: Option<Target>,
}

struct Target {
    client: AgentClient,
    id: String,
    exec_id: String,
    terminal: bool,
}

impl Target {
    fn resize(&self) {
        if let Some((rows, cols)) = window_size(stdout_fd()).or(window_size(stdin_fd())) {
            let _ = self.client.resize_tty(&self.id, &self.exec_id, rows, cols);
        }
    }
}

impl Forwarder {
    /// Takes the (blocked) signals of `set` from now on.
    pub fn spawn(set: SigSet) -> Forwarder {
        let state = Arc::new(Mutex::new(Forwarding::default()));
        let shared = state.clone();
        spawn_forwarder(set, move |sig| {
            let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
            match (&st.target, sig) {
                (Some(t), Signal::SIGWINCH) => {
                    if t.terminal {
                        t.resize();
                    }
                }
                (Some(t), _) => {
                    if let Err(e) = t
                        .client
                        .signal_process(&t.id, &t.exec_id, sig as i32, false)
                    {
                        tracing::debug!("forwarding {sig}: {e}");
                    }
                }
                (None, Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT) => {
                    st.interrupted = Some(sig);
                    kill_vmm(st.vmm_pid);
                }
                (None, _) => {}
            }
        });
        Forwarder { state }
    }

    fn lock(&self) -> MutexGuard<'_, Forwarding> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VMM is up: an interruption from now on kills it (at once if one came already).
    pub fn booting(&self, vmm_pid: i32) {
        let mut st = self.lock();
        st.vmm_pid = vmm_pid;
        if st.interrupted.is_some() {
            kill_vmm(vmm_pid);
        }
    }

    /// The signal that interrupted the start, if any.
    pub fn interrupted(&self) -> Option<Signal> {
        self.lock().interrupted
    }

    /// The process runs: send the window size, then forward everything to it.
    pub fn started(&self, client: &AgentClient, id: &str, exec_id: &str, terminal: bool) {
        let target = Target {
            client: client.clone(),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            terminal,
        };
        if terminal {
            target.resize();
        }
        self.lock().target = Some(target);
    }
}

fn kill_vmm(pid: i32) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
