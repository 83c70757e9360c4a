//! `cargo xtask uninstall`: removes exactly what the manifest of a prefix records, unless a
//! sandbox is running; config edits are undone under the backup policy of docs/config.md.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use sandbox_tests::binaries;

use super::manifest::{self, Manifest};
use super::{config_edit, containerd_config, docker_config, running, Layout, DEFAULT_PREFIX};

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    /// The prefix `cargo xtask install` installed under.
    #[arg(long, default_value = DEFAULT_PREFIX, value_name = "DIR")]
    pub prefix: PathBuf,
}

pub fn run(args: UninstallArgs) -> Result<()> {
    let prefix = std::path::absolute(&args.prefix)?;
    let m = manifest::load(&prefix)?.ok_or_else(|| {
        anyhow!(
            "no install manifest at {}: cargo xtask install did not install under {}",
            manifest::path(&prefix).display(),
            prefix.display()
        )
    })?;
    let running = running::find(&m)?;
    if !running.is_empty() {
        bail!(running::refusal(&running));
    }
    for line in remove(&m)? {
        println!("{line}");
    }
    Ok(())
}

/// Undoes everything `m` records; returns what was done, line by line.
pub fn remove(m: &Manifest) -> Result<Vec<String>> {
    let mut said = Vec::new();
    if let Some(edit) = &m.containerd {
        said.push(config_edit::undo(
            edit,
            containerd_config::NEW_FILE,
            |text| {
                let mut doc = containerd_config::parse(&edit.path, text)?;
                containerd_config::remove(&mut doc, &edit.created);
                Ok(doc.to_string())
            },
            |a, b| a == b,
        )?);
    }
    if let Some(edit) = &m.docker {
        let shim = Layout {
            prefix: m.prefix.clone(),
        }
        .binary(&binaries::SANDBOX);
        said.push(config_edit::undo(
            edit,
            "{}\n",
            |text| {
                let mut v = docker_config::parse(&edit.path, text)?;
                docker_config::remove(&mut v, &edit.created, &shim);
                Ok(docker_config::render(&v))
            },
            |a, b| {
                let parse = |t| docker_config::parse(&edit.path, t).ok();
                parse(a).is_some() && parse(a) == parse(b)
            },
        )?);
    }
    if let Some(created) = &m.config_created {
        match fs::read(&created.path) {
            Ok(bytes) if manifest::digest(&bytes) == created.sha256 => {
                remove_file(&created.path)?;
                said.push(format!("{}: removed", created.path.display()));
            }
            Ok(_) => said.push(format!(
                "{}: kept, it was changed since the install (your settings)",
                created.path.display()
            )),
            Err(_) => {}
        }
    }
    for file in &m.files {
        remove_file(file)?;
    }
    said.push(format!("removed {} installed files", m.files.len()));
    remove_file(&manifest::path(&m.prefix))?;
    for dir in m.dirs.iter().rev() {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(_) => said.push(format!("{}: kept, not empty", dir.display())),
        }
    }
    Ok(said)
}

fn remove_file(path: &std::path::Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::{ConfigEdit, CreatedFile};
    use super::*;

    /// An install as `install::run` records it, made by hand in a temporary directory.
    #[test]
    fn uninstall_removes_what_the_manifest_records_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("prefix");
        let layout = Layout {
            prefix: prefix.clone(),
        };
        let mut m = Manifest {
            prefix: prefix.clone(),
            config_path: dir.path().join("etc/config.toml"),
            ..Default::default()
        };
        m.add_dirs(super::super::files::create_dirs(&layout.bin()).unwrap());
        m.add_dirs(super::super::files::create_dirs(&layout.share()).unwrap());
        for f in [layout.bin().join("sandbox"), layout.share().join("vmlinux")] {
            fs::write(&f, "x").unwrap();
            m.add_file(&f);
        }
        // Something of the user's beside ours stays, and so does its directory.
        fs::write(layout.bin().join("users-tool"), "y").unwrap();
        // The config file the install wrote, unchanged.
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(&m.config_path, "# defaults\n").unwrap();
        m.config_created = Some(CreatedFile {
            path: m.config_path.clone(),
            sha256: manifest::digest(b"# defaults\n"),
        });
        // containerd's config, edited with a backup.
        let ctrd = dir.path().join("containerd.toml");
        let user = "version = 2\n# mine\n[grpc]\naddress = \"/x\"\n";
        fs::write(&ctrd, user).unwrap();
        let rt = containerd_config::Runtime {
            shim: layout.bin().join("containerd-shim-sandbox-v2"),
            config: m.config_path.clone(),
        };
        let (edit, _) = config_edit::apply(&ctrd, containerd_config::NEW_FILE, |t| {
            let mut doc = containerd_config::parse(&ctrd, t)?;
            match containerd_config::add(&mut doc, &rt)? {
                containerd_config::Added::Created(c) => Ok(Some((doc.to_string(), c))),
                containerd_config::Added::Present => Ok(None),
            }
        })
        .unwrap()
        .unwrap();
        m.containerd = Some(edit);
        m.save().unwrap();

        let said = remove(&m).unwrap();
        assert_eq!(fs::read_to_string(&ctrd).unwrap(), user);
        assert!(!m.config_path.exists());
        assert!(!layout.share().exists(), "{said:?}");
        assert!(!manifest::path(&prefix).exists());
        let mut left: Vec<_> = walk(dir.path());
        left.sort();
        assert_eq!(
            left,
            [
                ctrd.clone(),
                dir.path().join("etc"),
                prefix.clone(),
                layout.bin(),
                layout.bin().join("users-tool"),
            ],
            "{said:?}"
        );
        assert!(
            said.iter().any(|l| l.contains("kept, not empty")),
            "{said:?}"
        );
    }

    #[test]
    fn a_config_file_changed_since_the_install_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        fs::write(&config, "[vm]\nmemory_mib = 512\n").unwrap();
        let m = Manifest {
            prefix: dir.path().join("p"),
            config_path: config.clone(),
            config_created: Some(CreatedFile {
                path: config.clone(),
                sha256: manifest::digest(b"# defaults\n"),
            }),
            containerd: None::<ConfigEdit>,
            ..Default::default()
        };
        let said = remove(&m).unwrap();
        assert!(config.exists());
        assert!(said[0].ends_with("kept, it was changed since the install (your settings)"));
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }
}
