//! A task's OCI spec made to fit a microVM: host bind mounts cannot cross into the guest, so
//! CRI's `/dev/shm` bind becomes a tmpfs of the guest and other host binds (hosts, hostname,
//! resolv.conf, termination-log, volumes) are left out, each one logged.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Errors writing the adapted bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Subdirectory of containerd's bundle holding the adapted config.json (removed with it).
pub const VM_BUNDLE_DIR: &str = "microvm";

fn is_host_bind(m: &Value) -> bool {
    let bind_option = m["options"]
        .as_array()
        .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
    (m["type"] == "bind" || bind_option) && m["source"].as_str().is_some_and(|s| s.starts_with('/'))
}

/// Rewrites the host bind mounts of `spec`; whether anything changed.
pub fn adapt_mounts(spec: &mut Value) -> bool {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = mounts.len();
    let mut changed = false;
    mounts.retain_mut(|m| {
        if !is_host_bind(m) {
            return true;
        }
        changed = true;
        if m["destination"] == "/dev/shm" {
            *m = json!({
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            });
            return true;
        }
        log::warn!(
            "host bind mount {} -> {} left out: host files cannot reach the microVM",
            m["source"],
            m["destination"]
        );
        false
    });
    changed || mounts.len() != before
}

/// The bundle directory to hand the controller: containerd's own, or (when the spec had to
/// change) `<bundle>/microvm/` with the adapted config.json whose root is the bundle's rootfs.
pub fn vm_bundle(bundle: &Path, spec: &Value) -> Result<PathBuf, Error> {
    let mut spec = spec.clone();
    if !adapt_mounts(&mut spec) {
        return Ok(bundle.to_path_buf());
    }
    let root = spec["root"]["path"]
        .as_str()
        .unwrap_or("rootfs")
        .to_string();
    spec["root"]["path"] = Value::String(bundle.join(root).display().to_string());
    let dir = bundle.join(VM_BUNDLE_DIR);
    let path = dir.join("config.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, spec.to_string()))
        .map_err(|source| Error::Write { path, source })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri_spec() -> Value {
        json!({
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/shm", "type": "bind",
                 "source": "/run/c/sandboxes/x/shm", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "type": "bind",
                 "source": "/var/lib/c/x/hosts", "options": ["rbind", "rw"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"}
            ]
        })
    }

    #[test]
    fn shm_becomes_a_tmpfs_and_other_host_binds_go() {
        let mut spec = cri_spec();
        assert!(adapt_mounts(&mut spec));
        let dests: Vec<_> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(dests, ["/proc", "/dev/shm", "/dev/mqueue"]);
        assert_eq!(spec["mounts"][1]["type"], "tmpfs");
    }

    #[test]
    fn a_spec_without_host_binds_keeps_its_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let spec = json!({"root": {"path": "rootfs"}, "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"}]});
        assert_eq!(vm_bundle(dir.path(), &spec).unwrap(), dir.path());
        let vm = vm_bundle(dir.path(), &cri_spec()).unwrap();
        assert_eq!(vm, dir.path().join(VM_BUNDLE_DIR));
        let written: Value =
            serde_json::from_slice(&std::fs::read(vm.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            written["root"]["path"],
            dir.path().join("rootfs").display().to_string()
        );
    }
}
