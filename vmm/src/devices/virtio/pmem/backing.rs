//! The host side of a pmem region: the backing file mapped into the VMM, padded to whole
//! 2 MiB blocks, to be registered with KVM as a memory slot of its own.
//!
//! A read-only region is a private, read-only mapping of the file registered as a read-only
//! slot (`KVM_MEM_READONLY`): the guest reads the page cache's pages directly, every VM
//! booted from the same file shares them, and a guest write becomes an MMIO exit that no
//! device claims (dropped). On a KVM without read-only slots the mapping is private and
//! writable instead: guest writes then land in private copies and never reach the file. A
//! writable region is a shared mapping: guest writes reach the file, and a flush request
//! makes them durable.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::REGION_ALIGN;

/// Errors of opening and mapping a pmem file.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the size of {path}: {source}")]
    Metadata {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("{path}: {size} bytes do not fit in the guest's address space")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("cannot map {path}: {source}")]
    Map {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A pmem file mapped into this process.
#[derive(Debug)]
pub struct PmemBacking {
    file: File,
    path: PathBuf,
    host_addr: *mut libc::c_void,
    /// Length of the mapping and of the guest region: the file size rounded up to 2 MiB.
    region_len: u64,
    read_only: bool,
}

// SAFETY: the mapping is plain memory owned by this value until drop; the raw pointer is
// only handed to KVM and to munmap, never dereferenced here, so moving or sharing the value
// across threads cannot race on it.
unsafe impl Send for PmemBacking {}
// SAFETY: as above, `&PmemBacking` gives no access to the mapped bytes.
unsafe impl Sync for PmemBacking {}

impl PmemBacking {
    /// Opens and maps `path`. `writable_fallback` asks for a private writable mapping of a
    /// read-only file (for a KVM without read-only slots).
    pub fn open(
        path: &Path,
        read_only: bool,
        writable_fallback: bool,
    ) -> Result<Self, BackingError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BackingError::Open {
                path: path.to_owned(),
                source,
            })?;
        let size = file
            .metadata()
            .map_err(|source| BackingError::Metadata {
                path: path.to_owned(),
                source,
            })?
            .len();
        if size == 0 {
            return Err(BackingError::Empty {
                path: path.to_owned(),
            });
        }
        let region_len = size
            .checked_next_multiple_of(REGION_ALIGN)
            .filter(|&l| l <= 1 << 46)
            .ok_or_else(|| BackingError::TooLarge {
                path: path.to_owned(),
                size,
            })?;
        let map_err = |source| BackingError::Map {
            path: path.to_owned(),
            source,
        };
        let prot = if read_only && !writable_fallback {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // The whole region first, anonymous: the padding past the end of the file reads as
        // zeros instead of raising SIGBUS when the guest touches it.
        // SAFETY: a new anonymous mapping at an address the kernel picks; nothing else
        // refers to it yet.
        let host_addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                region_len as usize,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host_addr == libc::MAP_FAILED {
            return Err(map_err(std::io::Error::last_os_error()));
        }
        let backing = PmemBacking {
            file,
            path: path.to_owned(),
            host_addr,
            region_len,
            read_only,
        };
        let flags = if read_only {
            libc::MAP_PRIVATE
        } else {
            libc::MAP_SHARED
        };
        let file_pages = size.next_multiple_of(4096) as usize;
        // SAFETY: the range lies inside the mapping made above, which `backing` owns (and
        // unmaps on drop, this part included); MAP_FIXED replaces those pages in place and
        // nothing has used them yet.
        let r = unsafe {
            libc::mmap(
                host_addr,
                file_pages,
                prot,
                flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
                backing.file.as_raw_fd(),
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(map_err(std::io::Error::last_os_error()));
        }
        Ok(backing)
    }

    /// Where the region is mapped in this process.
    pub fn host_addr(&self) -> u64 {
        self.host_addr as u64
    }

    /// The size of the guest region (the file's, rounded up to 2 MiB).
    pub fn region_len(&self) -> u64 {
        self.region_len
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, for the device's flushes.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for PmemBacking {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `open` made, which nothing uses any more: the
        // VM (its memory slot) is dropped before the backings (builder::Vmm field order).
        unsafe { libc::munmap(self.host_addr, self.region_len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn bytes(b: &PmemBacking, at: u64, len: usize) -> Vec<u8> {
        // SAFETY: test-only read inside the live mapping of `b`.
        unsafe { std::slice::from_raw_parts((b.host_addr() + at) as *const u8, len).to_vec() }
    }

    #[test]
    fn a_file_is_mapped_and_padded_to_2_mib_with_zeros() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x5a; 5000]).unwrap();
        let b = PmemBacking::open(f.path(), true, false).unwrap();
        assert_eq!(b.region_len(), REGION_ALIGN);
        assert_eq!(bytes(&b, 0, 5000), vec![0x5a; 5000]);
        assert_eq!(bytes(&b, 5000, 100), vec![0; 100]);
        assert_eq!(bytes(&b, REGION_ALIGN - 16, 16), vec![0; 16]);
    }

    #[test]
    fn writes_through_a_writable_region_reach_the_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8192).unwrap();
        let b = PmemBacking::open(f.path(), false, false).unwrap();
        // SAFETY: test-only write inside the live, writable mapping of `b`.
        unsafe { *((b.host_addr() + 4100) as *mut u8) = 0x77 };
        b.file().sync_all().unwrap();
        drop(b);
        assert_eq!(std::fs::read(f.path()).unwrap()[4100], 0x77);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let e = PmemBacking::open(&missing, true, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.img"), "{e}");
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        let e = PmemBacking::open(&empty, true, false)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("{} is empty", empty.display()));
    }
}
