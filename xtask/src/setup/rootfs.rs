//! The guest root image: the entries of rootfs-image/initramfs.list as a read-only erofs
//! image (`rootfs.erofs`), which the VMM maps into the guest with virtio-pmem and the guest
//! kernel mounts as its root with DAX (docs/CONVENTIONS.md). The tree is laid out in a
//! staging directory and packed by `mkfs.erofs` (erofs-utils) with mtime 0 and a fixed UUID.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::initramfs::{Entry, Kind, Source};

/// The image's file system UUID: fixed, so equal inputs give equal images.
const IMAGE_UUID: &str = "5a4db0c5-0000-4000-8000-000000000001";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create {name} in the staging tree {dir}: {error}")]
    Stage {
        name: String,
        dir: String,
        error: io::Error,
    },
    #[error("cannot create device node {name}: {error}")]
    Node { name: String, error: nix::Error },
    #[error("cannot run mkfs.erofs (package erofs-utils): {0}")]
    Spawn(io::Error),
    #[error("mkfs.erofs failed ({status}): {stderr}")]
    Mkfs { status: String, stderr: String },
}

/// Lays the entries out under `stage` (an empty directory), with `contents` supplying the
/// regular files. Owners are left to mkfs.erofs (`--all-root`: the list is all root's).
pub fn stage_tree(
    entries: &[Entry],
    mut contents: impl FnMut(&Source) -> io::Result<Vec<u8>>,
    stage: &Path,
) -> Result<(), Error> {
    for e in entries {
        let path = stage.join(&e.name);
        let stage_err = |error| Error::Stage {
            name: e.name.clone(),
            dir: stage.display().to_string(),
            error,
        };
        match &e.kind {
            Kind::Dir => fs::create_dir(&path).map_err(stage_err)?,
            Kind::File(source) => {
                fs::write(&path, contents(source).map_err(stage_err)?).map_err(stage_err)?
            }
            Kind::Symlink(target) => symlink(target, &path).map_err(stage_err)?,
            Kind::Node {
                block,
                major,
                minor,
            } => {
                let kind = if *block {
                    SFlag::S_IFBLK
                } else {
                    SFlag::S_IFCHR
                };
                mknod(
                    &path,
                    kind,
                    Mode::from_bits_truncate(e.perm),
                    makedev(u64::from(*major), u64::from(*minor)),
                )
                .map_err(|error| Error::Node {
                    name: e.name.clone(),
                    error,
                })?;
            }
        }
        if !matches!(e.kind, Kind::Symlink(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(e.perm)).map_err(stage_err)?;
        }
    }
    Ok(())
}

/// The image is padded to a multiple of this: a pmem region's granule, which QEMU wants the
/// backing file to match (the padding is never read).
const IMAGE_ALIGN: u64 = 2 << 20;

/// Packs `stage` into the erofs image `out`: 4 KiB blocks (DAX needs the page size),
/// uncompressed, every file root's, every timestamp 0; padded to whole 2 MiB.
///
/// No tail packing (`-E noinline_data`): erofs maps only files of the plain layout with DAX;
/// a file whose last block is inlined beside its inode (mkfs.erofs's default) is read through
/// the guest's page cache instead, a private copy in every guest of the agent the guest runs.
pub fn mkfs(stage: &Path, out: &Path) -> Result<(), Error> {
    let output = Command::new("mkfs.erofs")
        .args(["--quiet", "-T0", "--all-root", "-E", "noinline_data"])
        .args(["-U", IMAGE_UUID])
        .arg(out)
        .arg(stage)
        .output()
        .map_err(Error::Spawn)?;
    if !output.status.success() {
        return Err(Error::Mkfs {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let pad = |error| Error::Stage {
        name: out.display().to_string(),
        dir: stage.display().to_string(),
        error,
    };
    let image = fs::OpenOptions::new().write(true).open(out).map_err(pad)?;
    let len = image.metadata().map_err(pad)?.len();
    image
        .set_len(len.next_multiple_of(IMAGE_ALIGN))
        .map_err(pad)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::initramfs::parse_list;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    const LIST: &str = "dir /dev 0755 0 0\nnod /dev/console 0600 0 0 c 5 1\n\
                        dir /tmp 1777 0 0\nfile /init @agent 0755 0 0\nslink /sbin init 0777 0 0\n";

    #[test]
    fn the_tree_has_every_entry_with_its_mode() {
        let entries = parse_list("list", LIST).unwrap();
        let dir = tempfile::tempdir().unwrap();
        stage_tree(&entries, |_| Ok(b"AGENT".to_vec()), dir.path()).unwrap();
        let meta = |n: &str| fs::symlink_metadata(dir.path().join(n)).unwrap();
        assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(fs::read(dir.path().join("init")).unwrap(), b"AGENT");
        assert_eq!(meta("init").mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(dir.path().join("sbin")).unwrap(),
            Path::new("init")
        );
        if nix::unistd::geteuid().is_root() {
            let console = meta("dev/console");
            assert!(console.file_type().is_char_device());
            assert_eq!(console.rdev(), makedev(5, 1));
        }
    }

    #[test]
    fn the_image_is_erofs_padded_to_2_mib() {
        let entries =
            parse_list("list", "dir /tmp 1777 0 0\nfile /init @agent 0755 0 0\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        fs::create_dir(&stage).unwrap();
        stage_tree(&entries, |_| Ok(vec![7; 10_000]), &stage).unwrap();
        let out = dir.path().join("root.erofs");
        mkfs(&stage, &out).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, IMAGE_ALIGN);
        // The erofs superblock magic at 1024.
        assert_eq!(&bytes[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
        // /init has the plain layout (0), which the guest maps with DAX; the default inline
        // layout (2) would be read into the guest's page cache.
        let dump = Command::new("dump.erofs")
            .args(["--path=/init"])
            .arg(&out)
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("Layout: 0 "), "{dump}");
    }

    #[test]
    fn mkfs_failures_carry_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let e = mkfs(&dir.path().join("missing"), &dir.path().join("out.erofs"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mkfs.erofs failed") || e.starts_with("cannot run"),
            "{e}"
        );
    }
}
