//! Putting files in place the way running sandboxes need: a temporary file in the target's
//! directory renamed over it (a running VMM keeps mapping the old inode), directories created
//! with a record of which ones were new.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Copies `src` to `dest` (mode `mode`) by writing a temporary file beside `dest` and renaming
/// it over `dest`: never in place, so a VM that maps the old file keeps its bytes.
pub fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write_atomic(dest, &bytes, mode)
}

/// Writes `bytes` to `path` (mode `mode`) through a temporary file renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".sandbox-install-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(mode))
        })
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

/// Creates `dir` with its missing parents; returns the ones it created, outermost first.
pub fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(missing.into_iter().rev().collect())
}

/// The first of `<path>.sandbox-backup`, `<path>.sandbox-backup.1`, ... that does not exist.
pub fn backup_path(path: &Path) -> PathBuf {
    let base = format!("{}.sandbox-backup", path.display());
    (0..)
        .map(|n| match n {
            0 => PathBuf::from(&base),
            n => PathBuf::from(format!("{base}.{n}")),
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from(base))
}

/// Copies `path` to a new backup beside it (same mode); returns the backup's path.
pub fn backup(path: &Path) -> Result<PathBuf> {
    let to = backup_path(path);
    fs::copy(path, &to)
        .with_context(|| format!("backing up {} to {}", path.display(), to.display()))?;
    Ok(to)
}

/// The mode of an existing file, else `default`.
pub fn mode_of(path: &Path, default: u32) -> u32 {
    fs::metadata(path).map_or(default, |m| m.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_replaces_by_rename_so_old_readers_keep_the_old_inode() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("new"), dir.path().join("vmlinux"));
        fs::write(&dest, "old").unwrap();
        let held = fs::File::open(&dest).unwrap();
        fs::write(&src, "new").unwrap();
        install_file(&src, &dest, 0o644).unwrap();
        assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
        let old = std::io::read_to_string(held).unwrap();
        assert_eq!(old, "old", "the open file was not rewritten in place");
        assert_eq!(mode_of(&dest, 0), 0o644);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn created_dirs_are_listed_outermost_first() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(
            create_dirs(&deep).unwrap(),
            [dir.path().join("a"), dir.path().join("a/b"), deep.clone()]
        );
        assert!(create_dirs(&deep).unwrap().is_empty());
    }

    #[test]
    fn backups_never_overwrite_an_older_backup() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        fs::write(&file, "one").unwrap();
        let first = backup(&file).unwrap();
        fs::write(&file, "two").unwrap();
        let second = backup(&file).unwrap();
        assert_eq!(first, dir.path().join("config.toml.sandbox-backup"));
        assert_eq!(second, dir.path().join("config.toml.sandbox-backup.1"));
        assert_eq!(fs::read_to_string(first).unwrap(), "one");
        assert_eq!(fs::read_to_string(second).unwrap(), "two");
    }
}
