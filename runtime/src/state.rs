//! Container state (runtime-spec "state"): kept as `<root>/<id>/state.json`, with the status
//! (created, running, paused, stopped) derived from the init process each time it is read.
//!
//! [`State`] and [`Status`] are ours, not oci-spec's `State` and `ContainerState`: oci-spec
//! 0.10's status has no `paused` (runc's, which pause/resume report), its state lacks runc's
//! `rootfs`, `created` and `owner` and makes `pid` optional, and a flattened oci-spec state
//! would carry a second `status`; what the hooks get on stdin is oci-spec's
//! `State` ([`State::oci_json`]).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::ContainerState;
use serde::{Deserialize, Serialize};

/// State directory failures; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a state file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// state.json did not parse.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// runtime-spec status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created; the user process has not been started.
    Created,
    /// The user process runs.
    Running,
    /// Frozen through the cgroup freezer.
    Paused,
    /// The init process has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

impl From<Status> for ContainerState {
    /// runtime-spec's view: a paused container's process has started and not exited, which
    /// the spec calls running (it defines no pause).
    fn from(status: Status) -> ContainerState {
        match status {
            Status::Creating => ContainerState::Creating,
            Status::Created => ContainerState::Created,
            Status::Running | Status::Paused => ContainerState::Running,
            Status::Stopped => ContainerState::Stopped,
        }
    }
}

/// What `state` reports, in runc's JSON shape, plus what the runtime needs to find the
/// container again (init start time against PID reuse, cgroup path).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// runtime-spec version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Init process PID (0 once stopped and unknown).
    pub pid: i32,
    /// Current status.
    pub status: Status,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Owner (user name of the creator); runc prints it.
    pub owner: String,
    /// Spec annotations.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// Start time of the init (from /proc/PID/stat) to detect PID reuse.
    #[serde(default, rename = "initStartTime")]
    pub init_start_time: u64,
    /// The container's cgroup directory, if it has one.
    #[serde(
        default,
        rename = "cgroupPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub cgroup_path: Option<PathBuf>,
}

impl State {
    /// The runtime-spec state passed to hooks: ociVersion, id, status, pid, bundle and
    /// annotations, each always present.
    pub fn oci_state(&self) -> oci_spec::runtime::State {
        let mut state = oci_spec::runtime::State::default();
        state
            .set_version(self.oci_version.clone())
            .set_id(self.id.clone())
            .set_status(self.status.into())
            .set_pid(Some(self.pid))
            .set_bundle(self.bundle.clone())
            .set_annotations(Some(self.annotations.clone()));
        state
    }

    /// [`State::oci_state`] as the JSON a hook reads on stdin.
    pub fn oci_json(&self) -> String {
        serde_json::to_string(&self.oci_state()).expect("state serialises")
    }

    /// Writes `<dir>/state.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_vec(self).expect("state serialises");
        fs::write(&tmp, text)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|source| StateError::Io { path, source })
    }

    /// Reads `<dir>/state.json` and refreshes the status from the live process.
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = dir.join("state.json");
        let text = fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        let mut state: State =
            serde_json::from_slice(&text).map_err(|source| StateError::Parse { path, source })?;
        state.refresh(dir);
        Ok(state)
    }

    /// Derives the status from /proc, the exec fifo and the cgroup freezer.
    pub fn refresh(&mut self, dir: &Path) {
        if self.status == Status::Creating {
            return;
        }
        self.status = match process_info(self.pid) {
            Some((state, start))
                if start == self.init_start_time && state != 'Z' && state != 'X' =>
            {
                if dir.join(crate::container::EXEC_FIFO).exists() {
                    Status::Created
                } else if self
                    .cgroup_path
                    .as_ref()
                    .and_then(|p| fs::read_to_string(p.join("cgroup.freeze")).ok())
                    .is_some_and(|s| s.trim() == "1")
                {
                    Status::Paused
                } else {
                    Status::Running
                }
            }
            _ => Status::Stopped,
        };
    }
}

/// (state letter, start time) of a process from /proc/PID/stat.
pub fn process_info(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Now as RFC 3339 UTC with nanoseconds, like runc's `created`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// `secs.nanos` since the epoch as RFC 3339 UTC with nanoseconds.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 30, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T');
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_709_210_096, 5), "2024-02-29T12:34:56.000000005Z");
    }

    #[test]
    fn hooks_get_the_runtime_spec_state() {
        let state = State {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            pid: 42,
            status: Status::Paused,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            owner: "root".into(),
            annotations: HashMap::new(),
            init_start_time: 7,
            cgroup_path: None,
        };
        let v: serde_json::Value = serde_json::from_str(&state.oci_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ociVersion": "1.0.2", "id": "c1", "status": "running", "pid": 42,
                "bundle": "/b", "annotations": {}})
        );
        let stopped = State {
            status: Status::Stopped,
            ..state
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&stopped.oci_json()).unwrap()["status"],
            "stopped"
        );
    }

    #[test]
    fn own_process_info() {
        let (state, start) = process_info(std::process::id() as i32).unwrap();
        assert!(state == 'R' || state == 'S');
        assert!(start > 0);
    }
}
