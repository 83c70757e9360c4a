//! Sandboxes started with `sandbox run -d` of a sleeping busybox container through the microVM
//! path, and the host processes each one leaves running (its VMM and any helper).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_tests::bundle::{Bundle, StateRoot};

use super::run_true;
use super::Guest;

/// One bundle, state root and image cache shared by the sandboxes started through it.
pub struct Detached {
    sandbox: PathBuf,
    env: Vec<(&'static str, PathBuf)>,
    bundle: Bundle,
    root: StateRoot,
    _cache: StateRoot,
    /// Ids started and not yet deleted.
    live: Vec<String>,
}

/// A started sandbox.
pub struct Started {
    /// Wall time of `sandbox run -d` (VM boot and container start).
    pub wall: Duration,
    /// Host processes that appeared meanwhile.
    pub pids: Vec<u32>,
}

/// The PIDs in /proc.
pub fn pids() -> HashSet<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Detached {
    pub fn new(sandbox: &Path, guest: &Guest) -> Detached {
        let bundle = Bundle::new("bench-sleep");
        bundle.edit(|c| c["process"]["args"] = serde_json::json!(["sleep", "3600"]));
        let cache = StateRoot::new("bench-image-cache");
        Detached {
            sandbox: sandbox.into(),
            env: run_true::vm_env(guest, cache.path()),
            bundle,
            root: StateRoot::new("bench-detached"),
            _cache: cache,
            live: Vec::new(),
        }
    }

    /// `sandbox --root R ARGS`, stdio away from pipes (a detached VMM could hold them open).
    fn sandbox(&self, args: &[&str]) -> Result<(), String> {
        let errlog = self.root.path().join("stderr");
        let err = fs::File::create(&errlog).map_err(|e| e.to_string())?;
        let status = Command::new(&self.sandbox)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            let text = fs::read_to_string(&errlog).unwrap_or_default();
            Err(format!(
                "`sandbox {}` failed ({status}): {}",
                args.join(" "),
                text.trim()
            ))
        }
    }

    /// The standard output of `sandbox exec ID ARGS` (a process in the running container).
    pub fn exec_output(&self, id: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.sandbox)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--root")
            .arg(self.root.path())
            .args(["exec", id])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`sandbox exec {id} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `sandbox run -d` of the sleeping container as `id`.
    pub fn start(&mut self, id: &str) -> Result<Started, String> {
        let before = pids();
        let bundle = self.bundle.path().to_string_lossy().into_owned();
        let t = Instant::now();
        self.sandbox(&["run", "-d", "-b", &bundle, id])?;
        let wall = t.elapsed();
        self.live.push(id.to_string());
        let pids = pids().difference(&before).copied().collect();
        Ok(Started { wall, pids })
    }

    /// `sandbox delete -f` of every live sandbox.
    pub fn delete_all(&mut self) -> Vec<String> {
        let ids = std::mem::take(&mut self.live);
        ids.iter()
            .filter_map(|id| self.sandbox(&["delete", "-f", id]).err())
            .collect()
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = self.delete_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_sees_ourselves_and_a_new_child() {
        let before = pids();
        assert!(before.contains(&std::process::id()));
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let new: Vec<u32> = pids().difference(&before).copied().collect();
        assert!(new.contains(&child.id()), "{new:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
