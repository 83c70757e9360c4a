//! The shim's settings: a `KEY=VALUE` file of defaults for the controller's `SANDBOX_*`
//! variables (VM size, kernel, root image), under the variables containerd passes to the shim.

use std::path::{Path, PathBuf};

use crate::controller;

/// Default configuration file; `$SANDBOX_SHIM_CONFIG` names another.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/sandbox/containerd-shim.env";
/// Default parent of the shim's state roots (one per containerd namespace).
pub const DEFAULT_STATE_ROOT: &str = "/run/containerd-shim-sandbox";
/// Variables the file may set.
const KNOWN_KEYS: &[&str] = &[
    "SANDBOX_VMM",
    "SANDBOX_KERNEL",
    "SANDBOX_ROOTFS",
    "SANDBOX_INITRD",
    "SANDBOX_IMAGE_CACHE",
    "SANDBOX_VCPUS",
    "SANDBOX_MEMORY_MIB",
    "SANDBOX_AGENT_TIMEOUT",
    "SANDBOX_SHIM_ROOT",
];

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Controller(#[from] controller::config::Error),
}

/// The settings of `KEY=VALUE` lines (`#` comments, blank lines, optional quotes).
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason: String| Error::Syntax {
            path: path.to_path_buf(),
            line: n + 1,
            reason,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax(format!("expected KEY=VALUE, got {line:?}")))?;
        let key = key.trim();
        if !KNOWN_KEYS.contains(&key) {
            return Err(syntax(format!(
                "unknown setting {key:?} (known: {})",
                KNOWN_KEYS.join(", ")
            )));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Applies the configuration file as defaults: a variable already in the environment wins.
/// A missing default file is no error; a missing file named by `$SANDBOX_SHIM_CONFIG` is.
pub fn apply_file_defaults() -> Result<(), Error> {
    let (path, required) = match std::env::var_os("SANDBOX_SHIM_CONFIG") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(()),
        Err(source) => return Err(Error::Read { path, source }),
    };
    for (key, value) in parse(&path, &text)? {
        if std::env::var_os(&key).is_none_or(|v| v.is_empty()) {
            // SAFETY: called from main before the runtime's worker threads start, so no
            // other thread reads the environment concurrently.
            unsafe { std::env::set_var(&key, &value) };
        }
    }
    Ok(())
}

/// The state root of one containerd namespace: `$SANDBOX_SHIM_ROOT/<namespace>`.
pub fn state_root(namespace: &str) -> PathBuf {
    let base = std::env::var_os("SANDBOX_SHIM_ROOT")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT), PathBuf::from);
    let ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    base.join(ns)
}

/// The controller's configuration for a namespace.
pub fn controller_config(namespace: &str) -> Result<controller::Config, Error> {
    Ok(controller::Config::from_env(
        Some(state_root(namespace)),
        false,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings_comments_and_quotes() {
        let text = "# VM size\nSANDBOX_VCPUS=2\n\n SANDBOX_MEMORY_MIB = \"512\"\n";
        let got = parse(Path::new("f"), text).unwrap();
        assert_eq!(
            got,
            vec![
                ("SANDBOX_VCPUS".to_string(), "2".to_string()),
                ("SANDBOX_MEMORY_MIB".to_string(), "512".to_string())
            ]
        );
    }

    #[test]
    fn a_bad_line_names_the_file_line_and_key() {
        let err = parse(Path::new("/etc/x.env"), "SANDBOX_VCPUS=1\nVCPUS=2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/x.env:2") && err.contains("VCPUS"),
            "{err}"
        );
        let err = parse(Path::new("/etc/x.env"), "junk\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/x.env:1"), "{err}");
    }

    #[test]
    fn state_root_is_per_namespace() {
        assert!(state_root("k8s.io").ends_with("k8s.io"));
        assert!(state_root("").ends_with("default"));
    }
}
