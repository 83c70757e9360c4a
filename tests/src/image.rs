//! The busybox test image: Debian's busybox-static in an OCI image built with umoci, saved as
//! an OCI archive (cached under /var/tmp by busybox's hash) and imported with `ctr`.
//!
//! One archive holds two tags: `latest` (command `sh`) and `pause` (command `sleep`, the CRI
//! sandbox image: no registry is reachable, so containerd must never pull one).

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::containerd::command;
use crate::containerd::ctr::Ctr;

/// The busybox image.
pub const BUSYBOX: &str = "localhost/sandbox-test/busybox:latest";
/// The CRI pause (sandbox) image.
pub const PAUSE: &str = "localhost/sandbox-test/busybox:pause";
/// The name `ctr images import --base-name` prefixes to the archive's tags.
const BASE_NAME: &str = "localhost/sandbox-test/busybox";
/// Where archives are cached (outside /tmp: the lab hides the host's /tmp).
pub const CACHE_DIR: &str = "/var/tmp/sandbox-test-images";
/// Bumped when the recipe below changes, so old archives are not reused.
const RECIPE_VERSION: &str = "1";
const BUSYBOX_BIN: &str = "/bin/busybox";
const LIMIT: Duration = Duration::from_secs(300);
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path} (install busybox-static): {source}")]
    Busybox { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Command(#[from] command::Error),
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

/// The archive's cache key: the recipe version and busybox's SHA-256.
pub fn cache_key(busybox: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(RECIPE_VERSION.as_bytes());
    h.update([0]);
    h.update(busybox);
    hex::encode(&h.finalize()[..12])
}

/// The OCI archive, built now unless a cached one exists.
pub fn archive() -> Result<PathBuf, Error> {
    let busybox = fs::read(BUSYBOX_BIN).map_err(|source| Error::Busybox {
        path: BUSYBOX_BIN.into(),
        source,
    })?;
    let cache = Path::new(CACHE_DIR);
    let path = cache.join(format!("busybox-{}.tar", cache_key(&busybox)));
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(cache).map_err(write_err(cache))?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(cache)
        .map_err(write_err(cache))?;
    build(work.path(), &path)?;
    Ok(path)
}

/// umoci: a new image, busybox unpacked into its rootfs, repacked, configured, tagged; then
/// the layout is tarred (entries without a `./` prefix) and moved into place.
fn build(work: &Path, dest: &Path) -> Result<(), Error> {
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let image = format!("{}:latest", layout.display());
    let umoci = |args: &[&str]| -> Result<(), Error> {
        command::run_ok(command::no_stdin(Command::new("umoci").args(args)), LIMIT)?;
        Ok(())
    };
    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle.to_string_lossy()])?;
    fill_rootfs(&bundle.join("rootfs"))?;
    umoci(&["repack", "--image", &image, &bundle.to_string_lossy()])?;
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.env",
        PATH_ENV,
        "--config.workingdir",
        "/",
        "--config.cmd",
        "sh",
    ])?;
    umoci(&[
        "config",
        "--image",
        &image,
        "--tag",
        "pause",
        "--config.cmd",
        "sleep",
        "--config.cmd",
        "2147483647",
    ])?;
    let tar = work.join("image.tar");
    command::run_ok(
        command::no_stdin(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&tar)
                .args(["oci-layout", "index.json", "blobs"]),
        ),
        LIMIT,
    )?;
    fs::rename(&tar, dest).map_err(write_err(dest))
}

/// busybox with a symlink per applet, the usual top-level directories, passwd and group.
fn fill_rootfs(root: &Path) -> Result<(), Error> {
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/log",
    ] {
        let p = root.join(d);
        fs::create_dir_all(&p).map_err(write_err(&p))?;
    }
    let tmp = root.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(write_err(&tmp))?;
    let bin = root.join("bin");
    let target = bin.join("busybox");
    fs::copy(BUSYBOX_BIN, &target).map_err(write_err(&target))?;
    let list = command::run_ok(
        command::no_stdin(Command::new(BUSYBOX_BIN).arg("--list")),
        LIMIT,
    )?;
    for applet in list
        .stdout
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let link = bin.join(applet);
        symlink("busybox", &link).map_err(write_err(&link))?;
    }
    for (name, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        let p = root.join(name);
        fs::write(&p, text).map_err(write_err(&p))?;
    }
    Ok(())
}

/// Imports `BUSYBOX` and `PAUSE` into `ctr`'s namespace (unpacked for the default
/// snapshotter); the pause image is labelled pinned, as the CRI plugin does with its own.
pub fn import(ctr: &Ctr) -> Result<(), Error> {
    let archive = archive()?;
    ctr.ok(&[
        "images",
        "import",
        "--base-name",
        BASE_NAME,
        &archive.to_string_lossy(),
    ])?;
    ctr.ok(&["images", "label", PAUSE, "io.cri-containerd.pinned=pinned"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_busybox_and_the_recipe() {
        assert_eq!(cache_key(b"a"), cache_key(b"a"));
        assert_ne!(cache_key(b"a"), cache_key(b"b"));
        assert_eq!(cache_key(b"a").len(), 24);
    }

    #[test]
    fn the_names_share_the_import_base_name() {
        assert_eq!(BUSYBOX, format!("{BASE_NAME}:latest"));
        assert_eq!(PAUSE, format!("{BASE_NAME}:pause"));
    }

    /// Builds (or reuses) the archive: an OCI layout with both tags, no `./` entries.
    #[test]
    fn the_archive_is_an_oci_layout_with_both_tags() {
        let path = archive().expect("build the busybox archive");
        let list = command::run_ok(
            command::no_stdin(Command::new("tar").arg("-tf").arg(&path)),
            LIMIT,
        )
        .unwrap()
        .stdout;
        assert!(list.lines().any(|l| l == "index.json"), "{list}");
        assert!(list.lines().any(|l| l == "oci-layout"), "{list}");
        assert!(!list.lines().any(|l| l.starts_with("./")), "{list}");
        let index = command::run_ok(
            command::no_stdin(Command::new("tar").arg("-xOf").arg(&path).arg("index.json")),
            LIMIT,
        )
        .unwrap()
        .stdout;
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        let mut tags: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .collect();
        tags.sort();
        assert_eq!(tags, ["latest", "pause"]);
    }
}
