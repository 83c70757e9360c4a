//! Editing another program's config file (containerd's, Docker's) and undoing the edit: a
//! backup before the first change, and on uninstall the backup put back when nothing else
//! changed since (docs/config.md, "Backups").

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::files;
use super::manifest::ConfigEdit;

/// What an edit produced: the new text and the keys it created.
pub type Edited = (String, Vec<Vec<String>>);

/// Edits the file at `path`: `edit` gets its text (`new_file` when there is no file) and
/// returns the new text and the keys it created, or None when nothing is to change (the
/// runtime is there already). An existing file is backed up first. Returns the edit and the
/// directories created for a new file, or None.
pub fn apply(
    path: &Path,
    new_file: &str,
    edit: impl FnOnce(&str) -> Result<Option<Edited>>,
) -> Result<Option<(ConfigEdit, Vec<PathBuf>)>> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some((text, created)) = edit(existing.as_deref().unwrap_or(new_file))? else {
        return Ok(None);
    };
    let (backup, dirs) = match existing {
        Some(_) => (Some(files::backup(path)?), Vec::new()),
        None => (
            None,
            files::create_dirs(path.parent().unwrap_or(Path::new("/")))?,
        ),
    };
    files::write_atomic(path, text.as_bytes(), files::mode_of(path, 0o644))?;
    let edit = ConfigEdit {
        path: path.to_path_buf(),
        backup,
        created,
    };
    Ok(Some((edit, dirs)))
}

/// Undoes `edit`: `remove` returns the file's text without our entries. If that means the
/// same as the backup (`same`), the backup is renamed over the file (its exact bytes come
/// back and no backup is left); if the install created the file and nothing but
/// `new_file` is left, the file goes. Otherwise the file keeps the user's later changes
/// without our entries, and the backup stays. Returns what was done, for the user.
pub fn undo(
    edit: &ConfigEdit,
    new_file: &str,
    remove: impl FnOnce(&str) -> Result<String>,
    same: impl Fn(&str, &str) -> bool,
) -> Result<String> {
    let path = &edit.path;
    let current = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(format!("{} is gone: nothing to undo", path.display()))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let restored = remove(&current)?;
    let write =
        |text: &str| files::write_atomic(path, text.as_bytes(), files::mode_of(path, 0o644));
    match &edit.backup {
        Some(backup) => match fs::read_to_string(backup) {
            Ok(before) if same(&before, &restored) => {
                fs::rename(backup, path).with_context(|| {
                    format!("restoring {} from {}", path.display(), backup.display())
                })?;
                Ok(format!(
                    "{}: restored as it was before the install",
                    path.display()
                ))
            }
            Ok(_) => {
                write(&restored)?;
                Ok(format!(
                    "{}: our entries removed; it changed since the install, so its backup \
                     stays: {}",
                    path.display(),
                    backup.display()
                ))
            }
            Err(_) => {
                write(&restored)?;
                Ok(format!(
                    "{}: our entries removed (its backup {} is gone)",
                    path.display(),
                    backup.display()
                ))
            }
        },
        None if same(new_file, &restored) => {
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            Ok(format!(
                "{}: removed (the install created it)",
                path.display()
            ))
        }
        None => {
            write(&restored)?;
            Ok(format!("{}: our entries removed", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_line(text: &str) -> Result<Option<Edited>> {
        if text.contains("ours") {
            return Ok(None);
        }
        Ok(Some((format!("{text}ours\n"), vec![vec!["ours".into()]])))
    }

    fn remove_line(text: &str) -> Result<String> {
        Ok(text.replace("ours\n", ""))
    }

    fn exact(a: &str, b: &str) -> bool {
        a == b
    }

    #[test]
    fn an_edit_makes_one_backup_and_undo_puts_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "# mine\n").unwrap();
        let (edit, dirs) = apply(&path, "", add_line).unwrap().unwrap();
        assert!(dirs.is_empty());
        assert_eq!(fs::read_to_string(&path).unwrap(), "# mine\nours\n");
        let backup = edit.backup.clone().unwrap();
        assert_eq!(fs::read_to_string(&backup).unwrap(), "# mine\n");
        // Idempotent: a second install changes nothing and makes no second backup.
        assert!(apply(&path, "", add_line).unwrap().is_none());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);

        let said = undo(&edit, "", remove_line, exact).unwrap();
        assert!(
            said.contains("restored as it was before the install"),
            "{said}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "# mine\n");
        assert!(!backup.exists());
    }

    #[test]
    fn a_file_changed_since_keeps_the_change_and_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "# mine\n").unwrap();
        let (edit, _) = apply(&path, "", add_line).unwrap().unwrap();
        fs::write(&path, "# mine\nours\nlater = 1\n").unwrap();
        let said = undo(&edit, "", remove_line, exact).unwrap();
        assert!(said.contains("its backup stays"), "{said}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "# mine\nlater = 1\n");
        assert!(edit.backup.unwrap().exists());
    }

    #[test]
    fn a_file_the_install_created_goes_with_its_directory_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc-docker").join("daemon.json");
        let (edit, dirs) = apply(&path, "{}\n", |t| {
            Ok(Some((format!("{t}ours\n"), Vec::new())))
        })
        .unwrap()
        .unwrap();
        assert_eq!(edit.backup, None);
        assert_eq!(dirs, [dir.path().join("etc-docker")]);
        let said = undo(&edit, "{}\n", remove_line, exact).unwrap();
        assert!(said.contains("removed (the install created it)"), "{said}");
        assert!(!path.exists());
    }
}
