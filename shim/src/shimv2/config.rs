//! The shim's settings: the config file named by containerd's runtime options (`ConfigPath`,
//! so each runtime handler can have its own), else `$SANDBOX_CONFIG`, else the default file.
//!
//! containerd 1.6 hands the runtime options to `start` on stdin (a protobuf `Any` holding
//! `runtimeoptions.v1.Options` for a runtime other than runc). `start` passes the path on to
//! the server it spawns and records it in the bundle for the later `delete`, which gets no
//! options. The old `KEY=VALUE` file is refused with a message saying what replaced it.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

use crate::controller;
use crate::settings::{self, Settings, Source};

/// The shim's former `KEY=VALUE` file and the variable that named another.
pub const LEGACY_CONFIG_FILE: &str = "/etc/sandbox/containerd-shim.env";
pub const LEGACY_CONFIG_ENV: &str = "SANDBOX_SHIM_CONFIG";
/// File in a task's bundle holding the `ConfigPath` its `start` was given.
pub const CONFIG_PATH_FILE: &str = "sandbox-config-path";
/// The message type of containerd's runtime options for runtimes other than runc.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Errors reading the shim's settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: the shim's KEY=VALUE file is no longer read: its settings go in the TOML config file {} (docs/config.md); move them there and remove {}", .path.display(), settings::DEFAULT_CONFIG_FILE, .path.display())]
    LegacyFile { path: PathBuf },
    #[error("${LEGACY_CONFIG_ENV}={value:?} is no longer read: name the TOML config file with ConfigPath in containerd's runtime options or with ${} (docs/config.md)", settings::CONFIG_ENV)]
    LegacyVar { value: String },
    #[error(transparent)]
    Settings(#[from] settings::Error),
    #[error("containerd's runtime options ({RUNTIME_OPTIONS_TYPE}): {reason}")]
    Options { reason: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses to start while the old file (`legacy_file`) or its variable is still there: its
/// settings would be silently ignored otherwise.
pub fn refuse_legacy(
    legacy_file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Error> {
    if let Some(value) = env(LEGACY_CONFIG_ENV) {
        return Err(Error::LegacyVar { value });
    }
    if legacy_file.exists() {
        return Err(Error::LegacyFile {
            path: legacy_file.to_path_buf(),
        });
    }
    Ok(())
}

/// The settings, with the config file `config_path` from containerd's runtime options if
/// they named one.
pub fn load(config_path: Option<PathBuf>) -> Result<Settings, Error> {
    refuse_legacy(Path::new(LEGACY_CONFIG_FILE), &settings::process_env)?;
    let req = settings::Request {
        config: config_path.map(|p| (p, Source::RuntimeOptions)),
        root: None,
    };
    Ok(settings::load(&req)?)
}

/// The state root of one containerd namespace: `<state.shim_root>/<namespace>`.
pub fn state_root(settings: &Settings, namespace: &str) -> PathBuf {
    let ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    settings.state.shim_root.value.join(ns)
}

/// The controller's configuration for a namespace.
pub fn controller_config(settings: &Settings, namespace: &str) -> controller::Config {
    settings.controller_config(state_root(settings, namespace), false)
}

/// The `ConfigPath` of containerd's runtime options, when `options` are
/// `runtimeoptions.v1.Options` and name one (other options, runc's say, carry none).
pub fn config_path_of(options: &Any) -> Result<Option<PathBuf>, Error> {
    let name = options.type_url.rsplit('/').next().unwrap_or_default();
    if name != RUNTIME_OPTIONS_TYPE {
        return Ok(None);
    }
    let bad = |e: containerd_shim::protos::protobuf::Error| Error::Options {
        reason: e.to_string(),
    };
    // message Options { string type_url = 1; string config_path = 2; }
    let mut input = CodedInputStream::from_bytes(&options.value);
    let mut path = String::new();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (2 << 3) | 2 {
            path = input.read_string().map_err(bad)?;
        } else {
            containerd_shim::protos::protobuf::rt::skip_field_for_tag(tag, &mut input)
                .map_err(bad)?;
        }
    }
    if path.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(Error::Options {
            reason: format!("ConfigPath {} is not an absolute path", path.display()),
        });
    }
    Ok(Some(path))
}

/// Records `path` (the runtime options' `ConfigPath`) in the bundle for `delete`.
pub fn record_config_path(bundle: &Path, path: &Path) -> Result<(), Error> {
    let file = bundle.join(CONFIG_PATH_FILE);
    std::fs::write(&file, path.as_os_str().as_encoded_bytes())
        .map_err(|source| Error::Io { path: file, source })
}

/// The `ConfigPath` recorded in the bundle by `start`, if any.
pub fn recorded_config_path(bundle: &Path) -> Option<PathBuf> {
    std::fs::read_to_string(bundle.join(CONFIG_PATH_FILE))
        .ok()
        .map(|p| PathBuf::from(p.trim_end()))
        .filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runtimeoptions.v1.Options` as containerd encodes it.
    fn options(type_url: &str, type_field: &str, config_path: &str) -> Any {
        let mut value = Vec::new();
        for (field, s) in [(1u8, type_field), (2u8, config_path)] {
            if !s.is_empty() {
                value.push((field << 3) | 2);
                value.push(s.len() as u8);
                value.extend_from_slice(s.as_bytes());
            }
        }
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn config_path_comes_from_runtime_options() {
        let any = options("runtimeoptions.v1.Options", "", "/etc/sandbox/big.toml");
        assert_eq!(
            config_path_of(&any).unwrap(),
            Some(PathBuf::from("/etc/sandbox/big.toml"))
        );
        let prefixed = options(
            "type.googleapis.com/runtimeoptions.v1.Options",
            "x",
            "/c.toml",
        );
        assert_eq!(
            config_path_of(&prefixed).unwrap(),
            Some(PathBuf::from("/c.toml"))
        );
        assert_eq!(
            config_path_of(&options("runtimeoptions.v1.Options", "x", "")).unwrap(),
            None
        );
        assert_eq!(
            config_path_of(&options("containerd.runc.v1.Options", "", "/x")).unwrap(),
            None,
            "runc's options are not ours"
        );
        let err = config_path_of(&options("runtimeoptions.v1.Options", "", "rel.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "containerd's runtime options (runtimeoptions.v1.Options): ConfigPath rel.toml is not an absolute path"
        );
    }

    #[test]
    fn the_old_file_and_variable_are_refused_with_what_replaced_them() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("containerd-shim.env");
        let none = |_: &str| None;
        refuse_legacy(&old, &none).unwrap();
        std::fs::write(&old, "SANDBOX_VCPUS=2\n").unwrap();
        assert_eq!(
            refuse_legacy(&old, &none).unwrap_err().to_string(),
            format!(
                "{p}: the shim's KEY=VALUE file is no longer read: its settings go in the TOML \
                 config file /etc/sandbox/config.toml (docs/config.md); move them there and remove {p}",
                p = old.display()
            )
        );
        let var = |k: &str| (k == LEGACY_CONFIG_ENV).then(|| "/x.env".to_string());
        assert_eq!(
            refuse_legacy(&dir.path().join("gone"), &var)
                .unwrap_err()
                .to_string(),
            "$SANDBOX_SHIM_CONFIG=\"/x.env\" is no longer read: name the TOML config file with \
             ConfigPath in containerd's runtime options or with $SANDBOX_CONFIG (docs/config.md)"
        );
    }

    #[test]
    fn the_config_path_is_recorded_in_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_config_path(dir.path()), None);
        record_config_path(dir.path(), Path::new("/etc/sandbox/b.toml")).unwrap();
        assert_eq!(
            recorded_config_path(dir.path()),
            Some(PathBuf::from("/etc/sandbox/b.toml"))
        );
    }

    #[test]
    fn state_root_is_per_namespace() {
        let exe = Path::new("/opt/sb/bin/containerd-shim-sandbox-v2");
        let no_file = |k: &str| (k == settings::CONFIG_ENV).then(|| "/dev/null".to_string());
        let s = settings::load_with(&settings::Request::default(), &no_file, exe).unwrap();
        assert_eq!(
            state_root(&s, "k8s.io"),
            Path::new("/run/containerd-shim-sandbox/k8s.io")
        );
        assert!(state_root(&s, "").ends_with("default"));
    }
}
