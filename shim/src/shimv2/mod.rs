//! `containerd-shim-sandbox-v2`: the containerd runtime v2 shim. One shim serves one pod
//! (or one `ctr` container); each task runs in a microVM through the host controller.

pub mod config;
pub mod events;
pub mod fifo_relay;
mod oom_watch;
pub mod pod;
mod pod_join;
pub mod process;
pub mod rootfs;
mod rpc;
pub mod serve;
pub mod service;
pub mod spec;
pub mod start;
pub mod stats;
mod task_lifecycle;
mod tasks;
pub mod vm_removal;

pub use start::ShimV2;

/// The runtime name containerd knows us by (`io.containerd.sandbox.v2` →
/// `containerd-shim-sandbox-v2`).
pub const RUNTIME_ID: &str = "io.containerd.sandbox.v2";

/// Errors of the shim's own start-up; each names the flag, variable or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag} {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    Shim(String),
}

/// Longest task id used as it is for the controller and the agent; longer ones (CRI's are 64
/// hex digits) would make the VM's socket path exceed sun_path (108 bytes).
const MAX_PLAIN_ID: usize = 40;

/// The name a task has in the controller's state root and in the guest: its id, or for a long
/// (or unusual) id a digest of it, the same every time (so `delete` finds it after a crash).
pub fn vm_id(id: &str) -> String {
    if id.len() <= MAX_PLAIN_ID && runtime::container_id::validate(id).is_ok() {
        return id.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    format!("h-{}", &hex::encode(digest)[..30])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_get_a_short_stable_name() {
        assert_eq!(vm_id("ctr-run-1"), "ctr-run-1");
        let cri = "ed1e716fb830d487978baa98125ff76a8a0b9d28505ce8156f3ab43ff68723c5";
        let short = vm_id(cri);
        assert_eq!(short, vm_id(cri));
        assert!(short.len() <= MAX_PLAIN_ID, "{short}");
        assert!(runtime::container_id::validate(&short).is_ok());
        assert_ne!(short, vm_id(&cri.replace('e', "f")));
    }
}
