//! Where the tests find the workspace's binaries (the `sandbox` CLI, the VMM, the containerd
//! shim): `cargo xtask test` builds them before the tests run and names them in variables.
//!
//! The tests never build them themselves. Under a plain `cargo test` a binary is looked up in
//! the target directory; a test that needs one which is not there calls
//! `require!(binaries::SANDBOX.path())`, a skip (a failure under CI) that says how to build it.

use std::path::{Path, PathBuf};

use crate::artifacts;

/// A binary of the workspace that tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    /// Its file name in `<target>/<profile>/`.
    pub name: &'static str,
    /// The variable `cargo xtask test` names it in.
    pub var: &'static str,
    /// The package that builds it.
    pub package: &'static str,
}

/// The `sandbox` CLI (`--no-vm` in the host tests, the microVM backend in the lab).
pub const SANDBOX: Binary = Binary {
    name: "sandbox",
    var: "SANDBOX_BIN",
    package: "shim",
};

/// The VMM.
pub const VMM: Binary = Binary {
    name: "sandbox-vmm",
    var: "SANDBOX_VMM",
    package: "vmm",
};

/// The containerd shim, named as containerd derives it from `io.containerd.sandbox.v2`.
pub const SHIM: Binary = Binary {
    name: "containerd-shim-sandbox-v2",
    var: "SANDBOX_SHIM_BIN",
    package: "shim",
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{name}` is not built: run the tests with `cargo xtask test`, which builds it, or \
         build it first (`cargo build -p {package} --bin {name}`) or name it in ${var}"
    )]
    NotBuilt {
        name: &'static str,
        package: &'static str,
        var: &'static str,
    },
    #[error("${var} names {path}, which does not exist")]
    Missing { var: &'static str, path: PathBuf },
}

impl Binary {
    /// `$VAR` when set, else the newest of its release and debug builds in the target
    /// directory (the one holding the running test executable first).
    pub fn path(&self) -> Result<PathBuf, Error> {
        if let Some(path) = std::env::var_os(self.var).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(path);
            return if path.exists() {
                Ok(path)
            } else {
                Err(Error::Missing {
                    var: self.var,
                    path,
                })
            };
        }
        let mut targets = vec![artifacts::target_dir()];
        if let Some(t) = exe_target_dir() {
            targets.insert(0, t);
        }
        newest(
            targets
                .iter()
                .flat_map(|t| ["release", "debug"].map(|p| t.join(p).join(self.name))),
        )
        .ok_or(Error::NotBuilt {
            name: self.name,
            package: self.package,
            var: self.var,
        })
    }
}

/// The paths of all of `binaries`, or the first one's error.
pub fn paths(binaries: &[Binary]) -> Result<Vec<PathBuf>, Error> {
    binaries.iter().map(Binary::path).collect()
}

/// The most recently modified of the files that exist.
fn newest(candidates: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(mtime, _)| *mtime)
        .map(|(_, p)| p)
}

/// `<target>` of a test executable at `<target>/<profile>/deps/<exe>`.
fn exe_target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(Path::to_owned))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let missing = Binary {
            name: "no-such-binary",
            var: "SANDBOX_TEST_NO_SUCH_BINARY",
            package: "shim",
        };
        let msg = missing.path().unwrap_err().to_string();
        assert!(
            msg.contains("`no-such-binary` is not built")
                && msg.contains("cargo xtask test")
                && msg.contains("cargo build -p shim --bin no-such-binary")
                && msg.contains("$SANDBOX_TEST_NO_SUCH_BINARY"),
            "{msg}"
        );
    }

    #[test]
    fn the_newest_build_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&old, "").unwrap();
        std::fs::write(&new, "").unwrap();
        let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(earlier)
            .unwrap();
        let gone = dir.path().join("gone");
        assert_eq!(
            newest([old.clone(), new.clone(), gone].into_iter()),
            Some(new)
        );
        assert_eq!(newest([old.clone()].into_iter()), Some(old));
    }
}
