//! process.rlimits: each POSIX rlimit set with setrlimit(2) in the container's init.
//! Values are checked (soft <= hard, no duplicates) by spec validation.

use nix::sys::resource::{setrlimit, Resource};
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

/// An rlimit the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("process.rlimits[{index}]: set {typ}: {source}")]
pub struct RlimitError {
    index: usize,
    typ: PosixRlimitType,
    source: nix::Error,
}

fn resource(t: PosixRlimitType) -> Resource {
    match t {
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
    }
}

/// Applies every rlimit to the calling process.
pub fn apply(rlimits: &[PosixRlimit]) -> Result<(), RlimitError> {
    for (index, r) in rlimits.iter().enumerate() {
        setrlimit(resource(r.typ()), r.soft(), r.hard()).map_err(|source| RlimitError {
            index,
            typ: r.typ(),
            source,
        })?;
    }
    Ok(())
}
