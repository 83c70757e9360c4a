//! Read-only rootfs images: a bundle's rootfs tree turned into an erofs file (mkfs.erofs),
//! cached by a hash of the tree and removed once no container directory uses it.
//!
//! Cache layout: `<cache>/<key>.erofs` and `<cache>/<key>.users/<n>` (one file per user,
//! holding the user's state directory); `<cache>/.lock` serialises builds and removals.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// Errors building or releasing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rootfs {path}: {source}")]
    Walk { path: PathBuf, source: io::Error },
    #[error("image cache {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
    #[error("cannot lock the image cache {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error("cannot run mkfs.erofs (install erofs-utils): {0}")]
    MkfsSpawn(io::Error),
    #[error("mkfs.erofs {image} {rootfs} failed ({status}): {stderr}")]
    Mkfs {
        image: PathBuf,
        rootfs: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// An image in use by one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub key: String,
    pub path: PathBuf,
}

/// The image cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    fn cache_err(&self, path: &Path) -> impl Fn(io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Cache {
            path: path.clone(),
            source,
        }
    }

    fn lock(&self) -> Result<Flock<File>, Error> {
        fs::create_dir_all(&self.dir).map_err(self.cache_err(&self.dir))?;
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.cache_err(&path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| Error::Lock { path, source })
    }

    fn image_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.erofs"))
    }

    fn users_dir(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.users"))
    }

    /// The image of `rootfs`, built if the cache lacks it, registered as used by `user` (a
    /// container's state directory).
    pub fn acquire(&self, rootfs: &Path, user: &Path) -> Result<Image, Error> {
        let key = tree_hash(rootfs)?;
        let _lock = self.lock()?;
        let path = self.image_path(&key);
        if !path.is_file() {
            build(rootfs, &path)?;
        }
        let users = self.users_dir(&key);
        fs::create_dir_all(&users).map_err(self.cache_err(&users))?;
        let entry = users.join(user_name(user));
        fs::write(&entry, user.as_os_str().as_encoded_bytes()).map_err(self.cache_err(&entry))?;
        Ok(Image { key, path })
    }

    /// Drops `user`'s claim on image `key` (and the claims of users whose state directory is
    /// gone); removes the image when nobody uses it any more. Returns whether it was removed.
    pub fn release(&self, key: &str, user: &Path) -> Result<bool, Error> {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let _lock = self.lock()?;
        let users = self.users_dir(key);
        let _ = fs::remove_file(users.join(user_name(user)));
        let mut left = 0;
        if let Ok(entries) = fs::read_dir(&users) {
            for entry in entries.filter_map(|e| e.ok()) {
                let alive = fs::read(entry.path())
                    .map(|p| Path::new(&String::from_utf8_lossy(&p).into_owned()).is_dir())
                    .unwrap_or(false);
                if alive {
                    left += 1;
                } else {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        if left > 0 {
            return Ok(false);
        }
        let _ = fs::remove_dir(&users);
        match fs::remove_file(self.image_path(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.cache_err(&self.image_path(key))(e)),
        }
    }
}

/// A file name for a user: the hash of its state directory path.
fn user_name(user: &Path) -> String {
    let digest = Sha256::digest(user.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..12])
}

/// How `build` lays an image out, part of every key: images of an older layout are not reused.
const IMAGE_FORMAT: &[u8] = b"erofs noinline_data\0";

/// mkfs.erofs into a temporary file beside `image`, then renamed into place. No tail packing
/// (`-E noinline_data`): erofs maps only files of the plain layout with DAX, and the guest
/// mounts the image from virtio-pmem with DAX.
fn build(rootfs: &Path, image: &Path) -> Result<(), Error> {
    let tmp = image.with_extension(format!("tmp-{}", std::process::id()));
    let out = Command::new("mkfs.erofs")
        .args(["--quiet", "-E", "noinline_data"])
        .arg(&tmp)
        .arg(rootfs)
        .output()
        .map_err(Error::MkfsSpawn)?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Mkfs {
            image: image.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, image).map_err(|source| Error::Cache {
        path: image.to_path_buf(),
        source,
    })
}

/// SHA-256 over every entry of the tree in name order: path, type, mode, owner, mtime, and
/// the content of files, targets of symlinks and numbers of devices. 24 hex digits.
pub fn tree_hash(rootfs: &Path) -> Result<String, Error> {
    let mut h = Sha256::new();
    h.update(IMAGE_FORMAT);
    hash_dir(rootfs, Path::new(""), &mut h)?;
    Ok(hex::encode(&h.finalize()[..12]))
}

fn hash_dir(root: &Path, rel: &Path, h: &mut Sha256) -> Result<(), Error> {
    let dir = root.join(rel);
    let walk = |source| Error::Walk {
        path: dir.clone(),
        source,
    };
    let meta = fs::symlink_metadata(&dir).map_err(walk)?;
    hash_meta(rel, &meta, h);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(walk)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(walk)?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let err = |source| Error::Walk {
            path: path.clone(),
            source,
        };
        let meta = fs::symlink_metadata(&path).map_err(err)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            hash_dir(root, &rel, h)?;
            continue;
        }
        hash_meta(&rel, &meta, h);
        if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(err)?;
            h.update(target.as_os_str().as_encoded_bytes());
        } else if ft.is_file() {
            let mut f = File::open(&path).map_err(err)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        } else if ft.is_block_device() || ft.is_char_device() {
            h.update(meta.rdev().to_le_bytes());
        }
    }
    Ok(())
}

fn hash_meta(rel: &Path, meta: &fs::Metadata, h: &mut Sha256) {
    h.update(rel.as_os_str().as_encoded_bytes());
    h.update([0]);
    for n in [
        u64::from(meta.mode()),
        u64::from(meta.uid()),
        u64::from(meta.gid()),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.size(),
    ] {
        h.update(n.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(dir: &Path) -> PathBuf {
        let root = dir.join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/hello"), "hello").unwrap();
        symlink("hello", root.join("bin/link")).unwrap();
        root
    }

    #[test]
    fn hash_follows_content_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        let a = tree_hash(&root).unwrap();
        assert_eq!(a, tree_hash(&root).unwrap());
        fs::write(root.join("bin/hello"), "HELLO").unwrap();
        let b = tree_hash(&root).unwrap();
        assert_ne!(a, b);
        fs::rename(root.join("bin/link"), root.join("bin/link2")).unwrap();
        assert_ne!(b, tree_hash(&root).unwrap());
        assert!(matches!(
            tree_hash(&dir.path().join("absent")),
            Err(Error::Walk { .. })
        ));
    }

    #[test]
    fn image_is_shared_then_removed_with_its_last_user() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        let cache = Cache::new(dir.path().join("cache"));
        let (u1, u2) = (dir.path().join("state/c1"), dir.path().join("state/c2"));
        fs::create_dir_all(&u1).unwrap();
        fs::create_dir_all(&u2).unwrap();
        let i1 = cache.acquire(&root, &u1).unwrap();
        let i2 = cache.acquire(&root, &u2).unwrap();
        assert_eq!(i1, i2);
        let magic = fs::read(&i1.path).unwrap();
        // erofs superblock magic 0xE0F5E1E2 at offset 1024.
        assert_eq!(&magic[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
        assert!(!cache.release(&i1.key, &u1).unwrap());
        assert!(i1.path.exists());
        // c2's directory vanished (e.g. removed by hand): its claim is stale.
        fs::remove_dir(&u2).unwrap();
        assert!(cache.release(&i1.key, &u1).unwrap());
        assert!(!i1.path.exists());
        assert!(!cache.users_dir(&i1.key).exists());
    }
}
