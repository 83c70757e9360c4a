//! The build cache outside the checkout (`$SANDBOX_CACHE`, default /var/cache/sandbox-build):
//! content-addressed output directories, published atomically, plus a lock per kind.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

pub const DEFAULT_CACHE: &str = "/var/cache/sandbox-build";

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn from_env() -> Cache {
        let root = std::env::var_os("SANDBOX_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
        Cache { root }
    }

    /// `<root>/<kind>`, created if needed.
    pub fn kind_dir(&self, kind: &str) -> Result<PathBuf> {
        let dir = self.root.join(kind);
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        Ok(dir)
    }

    /// Takes the exclusive lock of one kind (kernel, initramfs), waiting for other setups.
    pub fn lock(&self, kind: &str) -> Result<Flock<File>> {
        let path = self.kind_dir(kind)?.join(".lock");
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((file, _)) => {
                eprintln!("waiting for another setup holding {}", path.display());
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// Hash of the inputs of one artifact; each part is length-prefixed so parts cannot run together.
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..12])
}

/// Renames a fully written `tmp` directory to `dest`; if `dest` appeared meanwhile, keeps it.
pub fn publish_dir(tmp: &Path, dest: &Path) -> Result<()> {
    match fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            fs::remove_dir_all(tmp).ok();
            Ok(())
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))
        }
    }
}

/// Whether a directory name is an output key made by [`key`].
fn is_key(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes all but the `keep` most recently used output directories of `kind_dir`,
/// never `current`. Old agent builds would otherwise pile up.
pub fn prune(kind_dir: &Path, keep: usize, current: &Path) -> Result<()> {
    let mut outputs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(kind_dir)
        .with_context(|| format!("cannot list {}", kind_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| is_key(&e.file_name().to_string_lossy()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .filter(|(_, p)| p != current)
        .collect();
    outputs.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, old) in outputs.into_iter().skip(keep.saturating_sub(1)) {
        fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// Marks an output directory as just used, for [`prune`].
pub fn touch(dir: &Path) {
    let _ = fs::File::open(dir).and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// A fresh, empty `<dest>.tmp` next to `dest`.
pub fn fresh_tmp_dir(dest: &Path) -> Result<PathBuf> {
    let mut name = dest.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    Ok(tmp)
}

/// Points `link` at `target`, replacing whatever was there atomically.
pub fn link(target: &Path, link: &Path) -> Result<()> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut name = link.as_os_str().to_owned();
    name.push(".link-tmp");
    let tmp = PathBuf::from(name);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("cannot create symlink {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("cannot replace {}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_part_and_its_boundaries() {
        let a = key(&[b"ab", b"c"]);
        assert_eq!(a, key(&[b"ab", b"c"]));
        assert_ne!(a, key(&[b"a", b"bc"]));
        assert_ne!(a, key(&[b"ab", b"d"]));
        assert_eq!(a.len(), 24);
    }

    #[test]
    fn publish_and_link() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("abc");
        let tmp = fresh_tmp_dir(&dest).unwrap();
        fs::write(tmp.join("f"), b"1").unwrap();
        publish_dir(&tmp, &dest).unwrap();
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"1");
        // A second publisher loses the race quietly and its copy is removed.
        let tmp = fresh_tmp_dir(&dest).unwrap();
        fs::write(tmp.join("f"), b"2").unwrap();
        publish_dir(&tmp, &dest).unwrap();
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"1");
        assert!(!tmp.exists());

        let l = dir.path().join("out/f");
        link(&dest.join("f"), &l).unwrap();
        link(&dest.join("f"), &l).unwrap();
        assert_eq!(fs::read(&l).unwrap(), b"1");
    }

    #[test]
    fn prune_keeps_current_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..4).map(|i| key(&[&[i]])).collect();
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for (i, n) in names.iter().enumerate() {
            let p = dir.path().join(n);
            fs::create_dir(&p).unwrap();
            let f = fs::File::open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        fs::create_dir(dir.path().join("build-6.1")).unwrap();
        // names[0] is the oldest but current; names[3] is the newest.
        prune(dir.path(), 2, &dir.path().join(&names[0])).unwrap();
        let exists = |n: &str| dir.path().join(n).exists();
        assert!(exists(&names[0]));
        assert!(exists(&names[3]));
        assert!(!exists(&names[1]));
        assert!(!exists(&names[2]));
        assert!(exists("build-6.1"));
    }
}
