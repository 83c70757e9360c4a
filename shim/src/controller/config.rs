//! Where the controller finds its pieces: the state root, `sandbox-vmm`, the guest kernel and
//! initramfs, the image cache; each from an environment variable or a fixed default.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default state root (runc uses /run/runc).
pub const DEFAULT_ROOT: &str = "/run/sandbox";
/// Default cache of rootfs images, shared by all state roots.
pub const DEFAULT_IMAGE_CACHE: &str = "/var/lib/sandbox/images";
/// Default guest kernel and initramfs.
pub const DEFAULT_KERNEL: &str = "/usr/share/sandbox/vmlinux";
pub const DEFAULT_INITRD: &str = "/usr/share/sandbox/initramfs.cpio";
/// Default guest size.
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// How long the guest may take to reach agent-ready (an emulated lab CPU is slow).
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors finding the pieces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest {what} {path} is missing: set ${var} (e.g. target/guest/{file} after cargo xtask setup)")]
    NoGuestFile {
        what: &'static str,
        path: PathBuf,
        var: &'static str,
        file: &'static str,
    },
    #[error("${var}={value:?}: {reason}")]
    BadVar {
        var: &'static str,
        value: String,
        reason: String,
    },
}

/// The controller's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// State root: one directory per container.
    pub root: PathBuf,
    /// `sandbox-vmm`.
    pub vmm: PathBuf,
    /// Uncompressed vmlinux with a PVH note.
    pub kernel: PathBuf,
    /// Initramfs with the agent as /init.
    pub initrd: PathBuf,
    /// Where rootfs images are cached.
    pub image_cache: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Limit for the guest to reach agent-ready.
    pub agent_timeout: Duration,
    /// Print the time of each start phase to stderr.
    pub debug: bool,
}

impl Config {
    /// Settings from the environment: `$SANDBOX_VMM` (else `sandbox-vmm` next to this
    /// executable, else on $PATH), `$SANDBOX_KERNEL`, `$SANDBOX_INITRD`, `$SANDBOX_IMAGE_CACHE`,
    /// `$SANDBOX_VCPUS`, `$SANDBOX_MEMORY_MIB`, `$SANDBOX_AGENT_TIMEOUT` (seconds).
    pub fn from_env(root: Option<PathBuf>, debug: bool) -> Result<Config, Error> {
        Ok(Config {
            root: root.unwrap_or_else(|| DEFAULT_ROOT.into()),
            vmm: find_vmm(),
            kernel: env_path("SANDBOX_KERNEL", DEFAULT_KERNEL),
            initrd: env_path("SANDBOX_INITRD", DEFAULT_INITRD),
            image_cache: env_path("SANDBOX_IMAGE_CACHE", DEFAULT_IMAGE_CACHE),
            vcpus: env_number("SANDBOX_VCPUS", DEFAULT_VCPUS)?,
            memory_mib: env_number("SANDBOX_MEMORY_MIB", DEFAULT_MEMORY_MIB)?,
            agent_timeout: Duration::from_secs(
                env_number(
                    "SANDBOX_AGENT_TIMEOUT",
                    DEFAULT_AGENT_TIMEOUT.as_secs() as u32,
                )?
                .into(),
            ),
            debug,
        })
    }

    /// Checks that the guest files exist (only needed when a VM is started).
    pub fn check_guest(&self) -> Result<(), Error> {
        for (what, path, var, file) in [
            ("kernel", &self.kernel, "SANDBOX_KERNEL", "vmlinux"),
            (
                "initramfs",
                &self.initrd,
                "SANDBOX_INITRD",
                "initramfs.cpio",
            ),
        ] {
            if !path.is_file() {
                return Err(Error::NoGuestFile {
                    what,
                    path: path.clone(),
                    var,
                    file,
                });
            }
        }
        Ok(())
    }
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn env_number(var: &'static str, default: u32) -> Result<u32, Error> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|e: std::num::ParseIntError| Error::BadVar {
                var,
                value: v.clone(),
                reason: e.to_string(),
            }),
        _ => Ok(default),
    }
}

/// `$SANDBOX_VMM`, else `sandbox-vmm` beside this executable, else `sandbox-vmm` on $PATH.
fn find_vmm() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOX_VMM").filter(|v| !v.is_empty()) {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let beside = exe.parent().unwrap_or(Path::new("/")).join("sandbox-vmm");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("sandbox-vmm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_guest_files_name_the_variable() {
        let cfg = Config {
            root: "/nonexistent".into(),
            vmm: "/bin/true".into(),
            kernel: "/nonexistent/vmlinux".into(),
            initrd: "/nonexistent/initramfs.cpio".into(),
            image_cache: "/nonexistent".into(),
            vcpus: 1,
            memory_mib: 256,
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            debug: false,
        };
        let msg = cfg.check_guest().unwrap_err().to_string();
        assert!(
            msg.contains("SANDBOX_KERNEL") && msg.contains("/nonexistent/vmlinux"),
            "{msg}"
        );
    }
}
