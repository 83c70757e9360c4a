//! The shared directory: fuse-backend-rs's passthrough file system rooted at it and the FUSE
//! server in front of it, opened once when the VM is built so a bad path fails the start.
//!
//! The passthrough file system works on file descriptors relative to the share's root: a
//! lookup opens one name in its parent directory (`O_PATH | O_NOFOLLOW`, never `..` above the
//! root), and only regular files and directories are ever opened for I/O. The guest resolves
//! symlinks itself: READLINK hands it the link's text, which it follows in its own namespace,
//! so a symlink in the share never leads the server to a host file outside it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

/// Errors of opening a share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{}: the path must be valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long the guest may trust a name or attributes it looked up before asking again: what
/// virtiofsd uses with `cache=auto`, so a host edit is seen within a second.
const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// A directory served to the guest.
pub struct Share {
    path: PathBuf,
    read_only: bool,
    fs: Arc<PassthroughFs<()>>,
    server: Server<Arc<PassthroughFs<()>>>,
    /// Whether the guest started a FUSE session (FUSE_INIT) since the last reset.
    session: AtomicBool,
}

impl Share {
    /// Opens `path` as the root of a share. A read-only share refuses every change
    /// (`read_only` module).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ShareError> {
        let root = path.to_str().ok_or_else(|| ShareError::NotUtf8 {
            path: path.to_owned(),
        })?;
        let open_err = |source| ShareError::Open {
            path: path.to_owned(),
            source,
        };
        if !std::fs::metadata(path).map_err(open_err)?.is_dir() {
            return Err(ShareError::NotADirectory {
                path: path.to_owned(),
            });
        }
        let config = Config {
            root_dir: root.to_owned(),
            // Close-to-open consistency: the guest caches a file's data while it has it
            // open and checks the host's copy on every open, so edits on either side are seen.
            cache_policy: CachePolicy::Auto,
            entry_timeout: CACHE_TIMEOUT,
            attr_timeout: CACHE_TIMEOUT,
            // Writes go to the host file when the guest makes them, not when it evicts pages.
            writeback: false,
            xattr: false,
            do_import: true,
            ..Config::default()
        };
        let fs = PassthroughFs::<()>::new(config).map_err(open_err)?;
        // import() opens the root, and clears the umask so that the modes the guest asks for
        // are kept: for this thread, which shares the umask with the whole VMM while it builds
        // the VM, so it is put back. The worker thread has its own (worker::own_umask).
        // SAFETY: umask only swaps the process's file creation mask; it cannot fail.
        let umask = unsafe { libc::umask(0o022) };
        let imported = fs.import();
        // SAFETY: as above.
        unsafe { libc::umask(umask) };
        imported.map_err(open_err)?;
        raise_open_file_limit();
        let fs = Arc::new(fs);
        Ok(Self {
            path: path.to_owned(),
            read_only,
            server: Server::new(fs.clone()),
            fs,
            session: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The FUSE server of the share.
    pub fn server(&self) -> &Server<Arc<PassthroughFs<()>>> {
        &self.server
    }

    /// Forgets the guest's FUSE session (its inodes and open files) after a device reset: the
    /// driver starts a new one with FUSE_INIT. Reopens the root, which clears the calling
    /// thread's umask: call it from the worker, which has its own.
    pub fn end_session(&self) {
        self.fs.destroy();
        self.session.store(false, Ordering::Release);
    }

    /// Records that the guest sent FUSE_INIT.
    pub fn start_session(&self) {
        self.session.store(true, Ordering::Release);
    }

    /// Whether the guest has a FUSE session: the server then holds host descriptors for the
    /// guest's inodes and open files, which a snapshot cannot carry (docs/virtio-fs.md).
    pub fn in_session(&self) -> bool {
        self.session.load(Ordering::Acquire)
    }
}

/// The passthrough file system keeps a descriptor open for every inode the guest holds (each
/// name in its dentry cache): up to the hard limit of open files rather than the soft one
/// (1024 by default), as virtiofsd does.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the rlimit `limit` points to; raising the soft limit up to
        // the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!(
                "virtio-fs: cannot raise the open file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
