//! The `--config` JSON file: the same settings as the flags, typed as JSON, unknown fields
//! refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The `--config` JSON file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub serial: Option<String>,
    #[serde(default)]
    pub block: Vec<FileBlock>,
    #[serde(default)]
    pub pmem: Vec<FileBlock>,
    #[serde(default)]
    pub fs: Vec<super::FileFs>,
    pub vsock: Option<FileVsock>,
    #[serde(default)]
    pub net: Vec<super::FileNet>,
    pub api_sock: Option<PathBuf>,
    #[serde(default)]
    pub balloon: bool,
    #[serde(default)]
    pub debug: bool,
}

/// A `block` or `pmem` entry of the JSON file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBlock {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// The `vsock` entry of the JSON file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVsock {
    pub cid: u64,
    pub uds_path: PathBuf,
}

impl FileConfig {
    /// Reads and parses a `--config` file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "No such file".into()
            } else {
                e.to_string()
            },
        })?;
        serde_json::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}
