//! An OCI bundle as the controller reads it: config.json parsed once, with the rootfs
//! directory and the terminal flag that every later step of a create or run needs.

use std::fs;
use std::path::{Path, PathBuf};

use super::Error;

/// The parts of config.json the controller reads.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The bundle directory, canonical.
    pub dir: PathBuf,
    /// `root.path` inside it.
    pub rootfs: PathBuf,
    /// config.json as written, for the agent.
    pub json: String,
    pub value: serde_json::Value,
    /// `process.terminal`.
    pub terminal: bool,
}

impl BundleSpec {
    /// Reads and checks `bundle/config.json`: a rootfs directory and a process are required.
    pub fn load(bundle: &Path) -> Result<BundleSpec, Error> {
        let bad = |reason: String| Error::Bundle {
            bundle: bundle.to_path_buf(),
            reason,
        };
        let dir = fs::canonicalize(bundle).map_err(|e| bad(e.to_string()))?;
        let json = fs::read_to_string(dir.join("config.json"))
            .map_err(|e| bad(format!("config.json: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| bad(format!("config.json: {e}")))?;
        let root = value["root"]["path"]
            .as_str()
            .ok_or_else(|| bad("config.json: root.path is missing".into()))?;
        let rootfs = dir.join(root);
        if !rootfs.is_dir() {
            return Err(bad(format!(
                "root.path {} is not a directory",
                rootfs.display()
            )));
        }
        if !value["process"].is_object() {
            return Err(bad("config.json: process is missing".into()));
        }
        let terminal = value["process"]["terminal"].as_bool().unwrap_or(false);
        Ok(BundleSpec {
            dir,
            rootfs,
            json,
            value,
            terminal,
        })
    }

    /// `ociVersion`, runc's default when the spec has none.
    pub fn oci_version(&self) -> &str {
        self.value["ociVersion"].as_str().unwrap_or("1.0.2")
    }

    /// The container's process spec (the base of an `exec` process).
    pub fn process(&self) -> &serde_json::Value {
        &self.value["process"]
    }
}
