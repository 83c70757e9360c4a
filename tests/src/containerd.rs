//! A private containerd for the tests: Debian's containerd 1.6 with a generated config (own
//! root, state and socket under /run, CRI with host networking, runtimes `runc` and `sandbox`).
//!
//! `start(name)` writes the config, puts the directory of `containerd-shim-sandbox-v2`
//! (`binaries::SHIM`: `$SANDBOX_SHIM_BIN`, else the target dir's newest build) first on containerd's
//! PATH, passes the guest's `SANDBOX_*` settings on to the shims (with a private shim state
//! root and image cache under the daemon's directory) and waits until `ctr version` answers.
//! Dropping the `Containerd` stops it by PID (SIGTERM, SIGKILL after a grace period), kills
//! what a failed test left (its shims and their children, anything run from its directory)
//! and unmounts what is mounted under it. `image::import` puts the busybox and pause images
//! in a namespace; `Ctr` runs `ctr` against the daemon with a time limit.

pub mod command;
pub mod config;
pub mod ctr;
mod daemon;
pub mod procs;

use std::path::{Path, PathBuf};

pub use config::{Config, Runtime};
pub use ctr::Ctr;
pub use daemon::{Builder, Containerd, Error};

use crate::{artifacts, binaries, bundle, image};

/// The CRI plugin's namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The first of the variables `names` that is set, else `default`.
fn setting(names: &[&str], default: impl FnOnce() -> Option<PathBuf>) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var_os(n).filter(|v| !v.is_empty()))
        .map(PathBuf::from)
        .or_else(default)
        .map(|p| p.to_string_lossy().into_owned())
}

/// A new private directory for a daemon: `/run/sandbox-ctrd-<name>-<pid>-<n>` (short: the
/// shims' socket paths must fit in sun_path).
pub fn private_dir(name: &str) -> PathBuf {
    Path::new("/run").join(bundle::unique(&format!("sandbox-ctrd-{name}")))
}

/// The builder `start` uses, for tests that change the config first.
pub fn builder(config: Config) -> Builder {
    let dir = config.dir.clone();
    let mut b = Builder::new(config);
    if let Some(dir) = binaries::SHIM.path().ok().as_deref().and_then(Path::parent) {
        b = b.path_first(dir);
    }
    let vmm = setting(&["SANDBOX_VMM"], || binaries::VMM.path().ok());
    let kernel = setting(&["SANDBOX_KERNEL", "SANDBOX_VMLINUX"], || {
        artifacts::vmlinux().ok()
    });
    let rootfs = setting(&["SANDBOX_ROOTFS"], || artifacts::rootfs().ok());
    for (key, value) in [
        ("SANDBOX_VMM", vmm),
        ("SANDBOX_KERNEL", kernel),
        ("SANDBOX_ROOTFS", rootfs),
    ] {
        if let Some(v) = value {
            b = b.env(key, v);
        }
    }
    // The shim's state and image cache stay under the daemon's directory, and no host-wide
    // configuration file applies (an empty one is written by `start`).
    b.env(
        "SANDBOX_SHIM_ROOT",
        dir.join("shim").to_string_lossy().into_owned(),
    )
    .env(
        "SANDBOX_IMAGE_CACHE",
        dir.join("images").to_string_lossy().into_owned(),
    )
    .env(
        "SANDBOX_SHIM_CONFIG",
        dir.join("shim.env").to_string_lossy().into_owned(),
    )
}

/// A daemon with the default config (pause image `image::PAUSE`), the busybox and pause images
/// imported into `namespaces`.
pub fn start(name: &str, namespaces: &[&str]) -> Result<Containerd, StartError> {
    let config = Config::new(&private_dir(name), image::PAUSE);
    start_with(config, namespaces)
}

/// Like `start`, with a given config.
pub fn start_with(config: Config, namespaces: &[&str]) -> Result<Containerd, StartError> {
    let shim_env = config.dir.join("shim.env");
    std::fs::create_dir_all(&config.dir)
        .and_then(|()| std::fs::write(&shim_env, "# no defaults: the tests set SANDBOX_*\n"))
        .map_err(|source| StartError::Prepare {
            path: shim_env,
            source,
        })?;
    let daemon = builder(config).start()?;
    for ns in namespaces {
        image::import(&daemon.ctr(ns))?;
    }
    Ok(daemon)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Daemon(#[from] Error),
    #[error("cannot import the test images: {0}")]
    Image(#[from] image::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_short_and_distinct() {
        let (a, b) = (private_dir("cri"), private_dir("cri"));
        assert_ne!(a, b);
        assert!(a.starts_with("/run"));
        // The longest socket below it must fit in sun_path (108 bytes).
        assert!(
            a.join("containerd.sock.ttrpc").as_os_str().len() < 100,
            "{a:?}"
        );
    }

    #[test]
    fn the_builder_points_the_shim_at_the_private_dir() {
        let dir = Path::new("/run/sandbox-ctrd-x");
        let b = builder(Config::new(dir, image::PAUSE));
        let env = b.env_vars();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SANDBOX_SHIM_ROOT"), Some("/run/sandbox-ctrd-x/shim"));
        assert_eq!(
            get("SANDBOX_IMAGE_CACHE"),
            Some("/run/sandbox-ctrd-x/images")
        );
        assert_eq!(
            get("SANDBOX_SHIM_CONFIG"),
            Some("/run/sandbox-ctrd-x/shim.env")
        );
    }
}
