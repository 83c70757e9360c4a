//! hooks: prestart, createRuntime, createContainer, startContainer, poststart, poststop.
//! Each hook gets the container state on stdin and is killed when its timeout expires.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

/// A hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started.
    #[error("hooks.{kind}[{index}]: run {path}: {source}")]
    Spawn {
        /// Hook kind.
        kind: &'static str,
        /// Index in the list.
        index: usize,
        /// The binary.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The hook exited unsuccessfully.
    #[error("hooks.{kind}[{index}]: {path} failed: {status}{stderr}")]
    Failed {
        /// Hook kind.
        kind: &'static str,
        /// Index in the list.
        index: usize,
        /// The binary.
        path: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its stderr, if any.
        stderr: String,
    },
    /// The hook ran longer than its timeout and was killed.
    #[error("hooks.{kind}[{index}]: {path} timed out after {secs}s")]
    Timeout {
        /// Hook kind.
        kind: &'static str,
        /// Index in the list.
        index: usize,
        /// The binary.
        path: String,
        /// The timeout.
        secs: i64,
    },
}

/// The six hook points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Deprecated; runs with createRuntime.
    Prestart,
    /// Runtime namespace, after namespaces are created, before pivot_root.
    CreateRuntime,
    /// Container namespace, before pivot_root.
    CreateContainer,
    /// Container namespace, just before the user process is executed.
    StartContainer,
    /// Runtime namespace, after the user process started.
    Poststart,
    /// Runtime namespace, after the container is deleted.
    Poststop,
}

impl HookKind {
    /// The field name in the spec.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// The hooks of this kind in `hooks`.
    #[allow(deprecated)]
    pub fn list(self, hooks: &Hooks) -> &[Hook] {
        let v = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        v.as_deref().unwrap_or_default()
    }
}

/// Runs every hook of `kind` in order with `state_json` on stdin; stops at the first failure.
pub fn run(kind: HookKind, hooks: Option<&Hooks>, state_json: &str) -> Result<(), HookError> {
    let Some(hooks) = hooks else {
        return Ok(());
    };
    for (index, hook) in kind.list(hooks).iter().enumerate() {
        run_one(kind.name(), index, hook, state_json)?;
    }
    Ok(())
}

fn run_one(
    kind: &'static str,
    index: usize,
    hook: &Hook,
    state_json: &str,
) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let mut cmd = Command::new(hook.path());
    let args = hook.args().as_deref().unwrap_or_default();
    if let Some(argv0) = args.first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
    }
    cmd.args(args.iter().skip(1));
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind,
        index,
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let deadline = hook
        .timeout()
        .map(|s| (s, Instant::now() + Duration::from_secs(s as u64)));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    return Ok(());
                }
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                let stderr = stderr.trim();
                return Err(HookError::Failed {
                    kind,
                    index,
                    path,
                    status,
                    stderr: if stderr.is_empty() {
                        String::new()
                    } else {
                        format!(": {stderr}")
                    },
                });
            }
            Ok(None) => {}
            Err(source) => {
                return Err(HookError::Spawn {
                    kind,
                    index,
                    path,
                    source,
                })
            }
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout {
                    kind,
                    index,
                    path,
                    secs,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
