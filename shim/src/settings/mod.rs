//! The settings of the `sandbox` CLI and the containerd shim, from four layers: built-in
//! defaults < the config file (`/etc/sandbox/config.toml`) < `SANDBOX_*` variables < flags.
//!
//! Every key is described in docs/config.md. [`load`] reads all layers or fails as a whole
//! with one error naming the file and line, variable or flag at fault: nothing runs on a
//! half-read configuration. Each value keeps its [`Source`] for `sandbox config`.

pub mod file;
pub mod keys;
pub mod layout;
pub mod show;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::controller;
use crate::controller::config::GuestRoot;

pub use file::Fault;
pub use keys::{Agent, Confinement, Image, Network, SharedFs, State, Templates, Vm};

/// The config file read when neither `--config`, `$SANDBOX_CONFIG` nor containerd's
/// `ConfigPath` names another.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/sandbox/config.toml";
/// The variable naming another config file.
pub const CONFIG_ENV: &str = "SANDBOX_CONFIG";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built in; the note says what it was derived from, if anything.
    Default(Option<String>),
    /// A line of the config file.
    File { path: PathBuf, line: usize },
    /// A `SANDBOX_*` variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
    /// containerd's runtime options for the shim (`ConfigPath`).
    RuntimeOptions,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default(None) => write!(f, "default"),
            Source::Default(Some(note)) => write!(f, "default: {note}"),
            Source::File { path, line } => write!(f, "file {}:{line}", path.display()),
            Source::Env(var) => write!(f, "environment ${var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::RuntimeOptions => write!(f, "containerd runtime options (ConfigPath)"),
        }
    }
}

/// One setting's value and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Setting<T> {
    /// A built-in default.
    pub fn default(value: T) -> Setting<T> {
        Setting {
            value,
            source: Source::Default(None),
        }
    }

    /// A default derived from something (the executable's location, ...).
    pub fn derived(value: T, note: impl Into<String>) -> Setting<T> {
        Setting {
            value,
            source: Source::Default(Some(note.into())),
        }
    }
}

/// Errors reading the settings; each names the file and line, the variable or the flag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {} (named by {by}): {source}", .path.display())]
    Read {
        path: PathBuf,
        by: Source,
        source: io::Error,
    },
    #[error("{}:{}:{}: {}{}", .path.display(), .fault.line, .fault.column,
        .fault.key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default(), .fault.message)]
    File { path: PathBuf, fault: Fault },
    #[error("${var}={value:?}: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("{flag} {value:?}: {message}")]
    Flag {
        flag: &'static str,
        value: String,
        message: String,
    },
}

/// What the caller adds to the defaults and the environment.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The config file named by `--config` or containerd's `ConfigPath`, with that source.
    pub config: Option<(PathBuf, Source)>,
    /// `--root`: the CLI's state root.
    pub root: Option<PathBuf>,
}

/// The effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file and what named it.
    pub config_file: Setting<PathBuf>,
    /// Whether it exists (the default file may be absent: defaults apply).
    pub config_found: bool,
    pub vm: Vm,
    pub agent: Agent,
    pub image: Image,
    pub state: State,
    pub network: Network,
    pub shared_fs: SharedFs,
    pub confinement: Confinement,
    pub templates: Templates,
}

/// A variable of this process's environment, unset when empty.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(|v| v.to_string_lossy().into_owned())
}

/// Reads every layer for this process: its environment, and defaults derived from its
/// executable's location.
pub fn load(req: &Request) -> Result<Settings, Error> {
    let exe = std::env::current_exe().unwrap_or_default();
    load_with(req, &process_env, &exe)
}

/// Reads every layer, with the environment and the executable given.
pub fn load_with(
    req: &Request,
    env: &dyn Fn(&str) -> Option<String>,
    exe: &Path,
) -> Result<Settings, Error> {
    let config_file = match (&req.config, env(CONFIG_ENV)) {
        (Some((path, by)), _) => Setting {
            value: path.clone(),
            source: by.clone(),
        },
        (None, Some(path)) => Setting {
            value: PathBuf::from(path),
            source: Source::Env(CONFIG_ENV),
        },
        (None, None) => Setting::default(PathBuf::from(DEFAULT_CONFIG_FILE)),
    };
    let mut s = keys::defaults(config_file, exe);
    match std::fs::read_to_string(&s.config_file.value) {
        Ok(text) => {
            s.config_found = true;
            let path = s.config_file.value.clone();
            let parsed = file::parse(&text).map_err(|fault| Error::File {
                path: path.clone(),
                fault,
            })?;
            keys::apply_file(&mut s, &parsed, &FileLayer { path, text })?;
        }
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && matches!(s.config_file.source, Source::Default(_)) => {}
        Err(source) => {
            return Err(Error::Read {
                path: s.config_file.value.clone(),
                by: s.config_file.source.clone(),
                source,
            })
        }
    }
    keys::apply_env(&mut s, env)?;
    if let Some(root) = &req.root {
        let value = root.to_string_lossy().into_owned();
        s.state.root = Setting {
            value: keys::absolute(&value).map_err(|message| Error::Flag {
                flag: "--root",
                value,
                message,
            })?,
            source: Source::Flag("--root"),
        };
    }
    Ok(s)
}

/// The config file being applied, for the sources and errors of its values.
pub struct FileLayer {
    pub path: PathBuf,
    pub text: String,
}

impl FileLayer {
    /// Sets `setting` from the file's `value` if it has one, through `convert` (which also
    /// checks the value); an error names the file, line and `key`.
    pub fn set<F, T>(
        &self,
        setting: &mut Setting<T>,
        key: &str,
        value: &Option<Spanned<F>>,
        convert: impl Fn(&F) -> Result<T, String>,
    ) -> Result<(), Error> {
        let Some(value) = value else {
            return Ok(());
        };
        let (line, column) = file::line_column(&self.text, value.span().start);
        setting.value = convert(value.get_ref()).map_err(|message| Error::File {
            path: self.path.clone(),
            fault: Fault {
                line,
                column,
                key: Some(key.to_string()),
                message,
            },
        })?;
        setting.source = Source::File {
            path: self.path.clone(),
            line,
        };
        Ok(())
    }
}

/// Sets `setting` from variable `var` if it is set, through `convert`.
pub fn set_from_env<T>(
    setting: &mut Setting<T>,
    var: &'static str,
    env: &dyn Fn(&str) -> Option<String>,
    convert: impl Fn(&str) -> Result<T, String>,
) -> Result<(), Error> {
    let Some(value) = env(var) else {
        return Ok(());
    };
    setting.value = convert(&value).map_err(|message| Error::Env {
        var,
        value: value.clone(),
        message,
    })?;
    setting.source = Source::Env(var);
    Ok(())
}

impl Settings {
    /// The controller's configuration with state root `root`.
    pub fn controller_config(&self, root: PathBuf, debug: bool) -> controller::Config {
        controller::Config {
            root,
            vmm: self.vm.vmm.value.clone(),
            kernel: self.vm.kernel.value.clone(),
            guest_root: match &self.vm.initrd.value {
                Some(initrd) => GuestRoot::Initrd(initrd.clone()),
                None => GuestRoot::Image(self.vm.root_image.value.clone()),
            },
            image_cache: self.image.cache.value.clone(),
            vcpus: self.vm.vcpus.value,
            memory_mib: self.vm.memory_mib.value,
            agent_timeout: Duration::from_secs(self.agent.timeout_secs.value.into()),
            vmm_log_level: self.vm.vmm_log_level.value.clone(),
            debug,
        }
    }

    /// The CLI's controller configuration: state under `state.root`.
    pub fn cli_config(&self, debug: bool) -> controller::Config {
        self.controller_config(self.state.root.value.clone(), debug)
    }
}
