//! Why the microVM stops, and the signal that carries it from a vCPU thread or the API
//! to the event loop. The first reason recorded wins.

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VMM exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote the reset command (0xFE) to the i8042 (Linux `reboot=k`).
    GuestReset,
    /// KVM reported a system event (PSCI-style shutdown or reset).
    SystemEvent(u32),
    /// The API asked for an exit (after flushing the block devices).
    ApiExit,
    /// KVM_EXIT_SHUTDOWN without a prior reset request: the guest triple-faulted.
    TripleFault { vcpu: u8 },
    /// KVM_EXIT_INTERNAL_ERROR; suberror 1 is an emulation failure.
    InternalError { vcpu: u8, suberror: u32 },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    FailEntry { vcpu: u8, reason: u64 },
    /// The VMM received SIGTERM or SIGINT.
    Signal(i32),
    /// A KVM_RUN ioctl or a vCPU exit we cannot handle.
    VcpuError { vcpu: u8, message: String },
}

impl ExitReason {
    /// A guest power-off/reboot or an API exit ends the process with status 0.
    /// The process exit status: 0 when clean, 128 + signal number for a signal, else 1.
    pub fn exit_status(&self) -> u8 {
        match self {
            r if r.is_clean() => 0,
            ExitReason::Signal(signo) => 128u8.saturating_add(*signo as u8),
            _ => 1,
        }
    }

    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestReset | ExitReason::SystemEvent(_) | ExitReason::ApiExit
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "guest reset through the i8042 controller"),
            ExitReason::SystemEvent(t) => write!(f, "guest system event {t}"),
            ExitReason::ApiExit => write!(f, "exit requested through the API"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu}: triple fault (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::InternalError { vcpu, suberror: 1 } => write!(
                f,
                "vCPU {vcpu}: KVM internal error: instruction emulation failure"
            ),
            ExitReason::InternalError { vcpu, suberror } => {
                write!(f, "vCPU {vcpu}: KVM internal error, suberror {suberror}")
            }
            ExitReason::FailEntry { vcpu, reason } => write!(
                f,
                "vCPU {vcpu}: failed to enter the guest, hardware reason {reason:#x}"
            ),
            ExitReason::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu}: {message}"),
            ExitReason::Signal(signo) => write!(f, "stopped by signal {signo}"),
        }
    }
}

/// The exit reason shared by all threads, with an eventfd the event loop watches.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().expect("exit signal poisoned");
        if slot.is_none() {
            *slot = Some(reason);
            // A full eventfd counter still wakes the loop; nothing to do on error.
            let _ = self.evt.write(1);
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().expect("exit signal poisoned").clone()
    }

    pub fn is_requested(&self) -> bool {
        self.reason.lock().expect("exit signal poisoned").is_some()
    }

    /// The eventfd signalled on the first request.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.is_requested());
        s.request(ExitReason::GuestReset);
        s.request(ExitReason::TripleFault { vcpu: 0 });
        assert_eq!(s.reason(), Some(ExitReason::GuestReset));
        assert_eq!(s.event().read().unwrap(), 1);
        assert!(s.reason().unwrap().is_clean());
        assert!(!ExitReason::TripleFault { vcpu: 0 }.is_clean());
    }
}
