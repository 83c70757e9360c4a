//! The state root: one directory per container (`<root>/<id>/`) holding `state.json` (runc's
//! fields plus our paths), the VMM's vsock socket, its serial log and its stderr.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use runtime::Status;
use serde::{Deserialize, Serialize};

/// Name of the record inside a container directory.
pub const STATE_FILE: &str = "state.json";

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    BadId(#[from] runtime::container_id::InvalidId),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The content of `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    /// PID of the VMM on this host.
    pub pid: i32,
    /// Start time of the VMM (field 22 of /proc/PID/stat), against PID reuse.
    pub vmm_start_time: u64,
    /// Last status known without asking the agent (`creating` while the VM starts).
    pub status: Status,
    pub bundle: PathBuf,
    /// The bundle's rootfs on this host (read, never written).
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    pub owner: String,
    /// The container's state directory.
    pub state_dir: PathBuf,
    /// Hybrid vsock socket of the VMM.
    pub vsock: PathBuf,
    /// Guest serial console log.
    pub console_log: PathBuf,
    /// The read-only rootfs image and its cache key.
    pub image: PathBuf,
    pub image_key: String,
    /// Whether the init has a terminal.
    pub terminal: bool,
}

/// The state root.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    pub fn new(dir: PathBuf) -> Root {
        Root { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory of container `id` (not checked).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates the directory of a new container; fails if it exists.
    pub fn reserve(&self, id: &str) -> Result<PathBuf, Error> {
        runtime::container_id::validate(id)?;
        fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        let dir = self.container_dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(id.to_string()))
            }
            Err(source) => Err(Error::Io { path: dir, source }),
        }
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, record: &Record) -> Result<(), Error> {
        let dir = self.container_dir(&record.id);
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| Error::Io { path, source })
    }

    /// Reads the record of `id`.
    pub fn load(&self, id: &str) -> Result<Record, Error> {
        if runtime::container_id::validate(id).is_err() {
            return Err(Error::NotFound(id.to_string()));
        }
        let path = self.container_dir(id).join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        serde_json::from_slice(&text).map_err(|source| Error::Json { path, source })
    }

    /// Ids of every container with a record, sorted.
    pub fn ids(&self) -> Result<Vec<String>, Error> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes the directory of `id` and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let dir = self.container_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { path: dir, source }),
        }
    }
}

/// A fresh id: `sbx-` and 12 random hex digits.
pub fn generate_id() -> String {
    let mut bytes = [0u8; 6];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mixed = nanos ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sbx-{hex}")
}

pub use runtime::state::now_rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(root: &Root, id: &str) -> Record {
        Record {
            oci_version: "1.0.2".into(),
            id: id.into(),
            pid: 42,
            vmm_start_time: 7,
            status: Status::Created,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            owner: String::new(),
            state_dir: root.container_dir(id),
            vsock: root.container_dir(id).join("vsock.sock"),
            console_log: root.container_dir(id).join("console.log"),
            image: "/images/x.erofs".into(),
            image_key: "x".into(),
            terminal: false,
        }
    }

    #[test]
    fn reserve_save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path().join("root"));
        assert!(root.ids().unwrap().is_empty());
        root.reserve("c1").unwrap();
        assert!(matches!(root.reserve("c1"), Err(Error::Exists(_))));
        assert!(matches!(root.reserve("../x"), Err(Error::BadId(_))));
        root.save(&record(&root, "c1")).unwrap();
        let r = root.load("c1").unwrap();
        assert_eq!((r.pid, r.status), (42, Status::Created));
        assert_eq!(root.ids().unwrap(), vec!["c1".to_string()]);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(root.container_dir("c1").join(STATE_FILE)).unwrap())
                .unwrap();
        assert_eq!(json["status"], "created");
        assert_eq!(json["ociVersion"], "1.0.2");
        root.remove("c1").unwrap();
        assert!(matches!(root.load("c1"), Err(Error::NotFound(_))));
        assert!(root.ids().unwrap().is_empty());
    }

    #[test]
    fn dates_and_ids() {
        let a = generate_id();
        assert!(
            runtime::container_id::validate(&a).is_ok() && a.starts_with("sbx-") && a.len() == 16,
            "{a}"
        );
        assert_ne!(a, generate_id());
    }
}
