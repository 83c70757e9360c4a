//! The sandboxes still running from an install: the installed `sandbox` lists the state roots
//! of every config file the install points at (its own, and each containerd handler's
//! `ConfigPath`): `state.root` and each containerd namespace under `state.shim_root`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::manifest::Manifest;
use super::{containerd_config, installed_sandbox, Layout};

/// A sandbox that is not stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub id: String,
    pub status: String,
    pub root: PathBuf,
}

/// Every sandbox of the install's state roots whose status is not `stopped`.
pub fn find(m: &Manifest) -> Result<Vec<Running>> {
    let layout = Layout {
        prefix: m.prefix.clone(),
    };
    if !layout.binary(&sandbox_tests::binaries::SANDBOX).is_file() {
        eprintln!(
            "warning: {} is gone: cannot look for running sandboxes",
            layout.binary(&sandbox_tests::binaries::SANDBOX).display()
        );
        return Ok(Vec::new());
    }
    let mut configs = vec![m.config_path.clone()];
    if let Some(edit) = &m.containerd {
        if let Ok(text) = std::fs::read_to_string(&edit.path) {
            if let Ok(doc) = containerd_config::parse(&edit.path, &text) {
                configs.extend(containerd_config::config_paths(&doc));
            }
        }
    }
    configs.sort();
    configs.dedup();
    let mut found = Vec::new();
    for config in &configs {
        for root in state_roots(&layout, config)? {
            found.extend(list(&layout, config, &root)?);
        }
    }
    Ok(found)
}

/// `sandbox` reading `config` (`/dev/null` when it does not exist: the defaults then).
fn sandbox_with(layout: &Layout, config: &Path) -> Command {
    let mut cmd = installed_sandbox(layout);
    let file = if config.exists() {
        config
    } else {
        Path::new("/dev/null")
    };
    cmd.arg("--config").arg(file);
    cmd
}

fn output(mut cmd: Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `state.root`, and every namespace directory under `state.shim_root`.
fn state_roots(layout: &Layout, config: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = sandbox_with(layout, config);
    cmd.arg("config");
    let shown: toml::Table = toml::from_str(&output(cmd)?)
        .map_err(|e| anyhow!("parsing the output of sandbox config: {e}"))?;
    let key = |k: &str| {
        shown
            .get("state")
            .and_then(|s| s.get(k))
            .and_then(toml::Value::as_str)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("sandbox config shows no state.{k}"))
    };
    let mut roots = vec![key("root")?];
    if let Ok(entries) = std::fs::read_dir(key("shim_root")?) {
        roots.extend(
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
    }
    Ok(roots)
}

/// The sandboxes of one state root that are not stopped.
fn list(layout: &Layout, config: &Path, root: &Path) -> Result<Vec<Running>> {
    let mut cmd = sandbox_with(layout, config);
    cmd.arg("--root").arg(root).args(["list", "-f", "json"]);
    let states: Vec<serde_json::Value> = serde_json::from_str(&output(cmd)?)
        .map_err(|e| anyhow!("parsing the output of sandbox list: {e}"))?;
    Ok(not_stopped(&states, root))
}

fn not_stopped(states: &[serde_json::Value], root: &Path) -> Vec<Running> {
    states
        .iter()
        .filter(|s| s["status"] != "stopped")
        .map(|s| Running {
            id: s["id"].as_str().unwrap_or_default().to_string(),
            status: s["status"].as_str().unwrap_or_default().to_string(),
            root: root.to_path_buf(),
        })
        .collect()
}

/// The refusal, naming each sandbox.
pub fn refusal(running: &[Running]) -> String {
    let names: Vec<String> = running
        .iter()
        .map(|r| format!("{} ({}, state root {})", r.id, r.status, r.root.display()))
        .collect();
    format!(
        "not uninstalling: {} sandbox(es) still running: {}. Stop them first (sandbox --root \
         ROOT delete --force ID, or remove the pods and tasks through containerd), then run \
         cargo xtask uninstall again",
        running.len(),
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sandboxes_not_stopped_count_and_the_refusal_names_them() {
        let states = serde_json::json!([
            {"id": "web", "status": "running"},
            {"id": "old", "status": "stopped"},
            {"id": "frozen", "status": "paused"},
        ]);
        let running = not_stopped(states.as_array().unwrap(), Path::new("/run/sandbox"));
        assert_eq!(
            running.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["web", "frozen"]
        );
        assert_eq!(
            refusal(&running),
            "not uninstalling: 2 sandbox(es) still running: web (running, state root \
             /run/sandbox), frozen (paused, state root /run/sandbox). Stop them first \
             (sandbox --root ROOT delete --force ID, or remove the pods and tasks through \
             containerd), then run cargo xtask uninstall again"
        );
    }
}
