//! How a process ended, decoded from the agent's `ExitStatus` message: one type for every
//! host-side user of the agent API (the controller and the agent's own tests).

/// How a process ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// Signal `signal` ended it.
    Signaled { signal: u32, core_dumped: bool },
}

impl ExitStatus {
    /// Decodes the agent's message: a signal number of 0 means a normal exit.
    pub fn from_proto(s: &crate::agent::ExitStatus) -> ExitStatus {
        match s.signal {
            0 => ExitStatus::Exited(s.exit_code),
            signal => ExitStatus::Signaled {
                signal,
                core_dumped: s.core_dumped,
            },
        }
    }

    /// The exit code a shell (and runc) reports: the code, or 128+N after signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled { signal, .. } => 128 + signal as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_report_128_plus_n() {
        let mut m = crate::agent::ExitStatus::new();
        m.exit_code = 3;
        assert_eq!(ExitStatus::from_proto(&m), ExitStatus::Exited(3));
        assert_eq!(ExitStatus::from_proto(&m).code(), 3);
        m.signal = 9;
        m.core_dumped = true;
        let s = ExitStatus::from_proto(&m);
        assert_eq!(
            s,
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: true
            }
        );
        assert_eq!(s.code(), 137);
    }
}
