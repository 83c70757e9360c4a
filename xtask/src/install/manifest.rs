//! The record of what `cargo xtask install` added under a prefix and elsewhere, kept at
//! `PREFIX/share/sandbox/install-manifest.json`; `cargo xtask uninstall` removes exactly that.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The manifest's name in the share directory.
pub const FILE_NAME: &str = "install-manifest.json";

/// What an install added; a later install over it adds to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub prefix: PathBuf,
    /// Files put in place (binaries, guest files).
    pub files: Vec<PathBuf>,
    /// Directories the install created, outermost first; removed when empty.
    pub dirs: Vec<PathBuf>,
    /// The config file the installed runtime reads (the containerd and Docker entries name it).
    pub config_path: PathBuf,
    /// The config file, when the install wrote it (it never overwrites one), with its digest
    /// then: uninstall removes it only if it is unchanged.
    pub config_created: Option<CreatedFile>,
    /// The edit of containerd's config, if `--containerd` made one.
    pub containerd: Option<ConfigEdit>,
    /// The edit of Docker's daemon.json, if `--docker` made one.
    pub docker: Option<ConfigEdit>,
}

/// A file the install created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// An edit of another program's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEdit {
    pub path: PathBuf,
    /// The copy made before the edit; None when the install created the file.
    pub backup: Option<PathBuf>,
    /// The tables (keys, as paths) the edit created, outermost first; the runtime's last.
    pub created: Vec<Vec<String>>,
}

/// Where the manifest of `prefix` lives.
pub fn path(prefix: &Path) -> PathBuf {
    prefix.join("share").join("sandbox").join(FILE_NAME)
}

/// The manifest of `prefix`, if one was written.
pub fn load(prefix: &Path) -> Result<Option<Manifest>> {
    let path = path(prefix);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl Manifest {
    /// Writes it (replacing the previous one by rename).
    pub fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        super::files::write_atomic(&path(&self.prefix), text.as_bytes(), 0o644)
    }

    /// Records a file put in place.
    pub fn add_file(&mut self, path: &Path) {
        if !self.files.iter().any(|f| f == path) {
            self.files.push(path.to_path_buf());
        }
    }

    /// Records directories the install created (outermost first).
    pub fn add_dirs(&mut self, dirs: Vec<PathBuf>) {
        for d in dirs {
            if !self.dirs.contains(&d) {
                self.dirs.push(d);
            }
        }
    }
}

/// The SHA-256 of `bytes`, in hex.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_survives_a_round_trip_under_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("share/sandbox")).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut m = Manifest {
            prefix: dir.path().into(),
            config_path: "/etc/sandbox/config.toml".into(),
            ..Default::default()
        };
        m.add_file(Path::new("/p/bin/sandbox"));
        m.add_file(Path::new("/p/bin/sandbox"));
        m.add_dirs(vec!["/p/bin".into()]);
        m.add_dirs(vec!["/p/bin".into(), "/p/share".into()]);
        m.containerd = Some(ConfigEdit {
            path: "/etc/containerd/config.toml".into(),
            backup: Some("/etc/containerd/config.toml.sandbox-backup".into()),
            created: vec![vec!["plugins".into()]],
        });
        m.save().unwrap();
        assert_eq!(
            path(dir.path()),
            dir.path().join("share/sandbox/install-manifest.json")
        );
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(back.files.len(), 1);
        assert_eq!(back.dirs, [PathBuf::from("/p/bin"), "/p/share".into()]);
    }
}
