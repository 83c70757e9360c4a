//! Signals of a foreground `run`/`exec`: blocked in every thread and taken by one thread with
//! sigwait, which forwards them to the container's process (SIGWINCH resizes its tty).

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The signals a foreground command forwards.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Blocks the forwarded signals in the calling thread (and so in threads it creates later).
/// Call before creating any thread. Children started with std's `Command` get an empty mask.
pub fn block() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}

/// Starts a detached thread that calls `handler` with each signal of `set`.
pub fn spawn_forwarder(set: SigSet, handler: impl Fn(Signal) + Send + 'static) {
    std::thread::spawn(move || loop {
        match set.wait() {
            Ok(sig) => handler(sig),
            Err(_) => return,
        }
    });
}
