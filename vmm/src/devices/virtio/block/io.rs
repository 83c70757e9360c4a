//! Performing a validated virtio-blk request on the disk file: data moved between the file
//! and guest memory through a bounded bounce buffer, flushes, and the GET_ID answer.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{Address, Bytes};

use super::request::{Request, RequestType};
use super::{DISK_ID_LEN, SECTOR_SIZE};
use crate::devices::virtio::GuestMemoryMmap;

/// Largest bounce buffer used to move data between the file and guest memory.
const IO_CHUNK: usize = 64 << 10;

/// An I/O failure of a valid request; the guest sees IOERR.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("disk file I/O at byte {offset}: {source}")]
    File { offset: u64, source: std::io::Error },
    #[error("guest memory access at {0:#x} failed")]
    GuestMemory(u64),
    #[error("flush of the disk file: {0}")]
    Flush(std::io::Error),
}

impl Request {
    /// Performs the request on `disk`; returns how many bytes were written to guest buffers
    /// (not counting the status byte).
    pub fn execute(
        &self,
        disk: &File,
        disk_id: &[u8; DISK_ID_LEN],
        mem: &GuestMemoryMmap,
    ) -> Result<u32, IoError> {
        // Parsing bounded `sector` by the capacity, so the byte offset cannot overflow.
        let mut offset = self.sector * SECTOR_SIZE;
        let mut written: u32 = 0;
        let mut buf = Vec::new();
        match self.request_type {
            RequestType::In => {
                for &(addr, len) in &self.data {
                    let mut done = 0usize;
                    while done < len as usize {
                        let n = (len as usize - done).min(IO_CHUNK);
                        buf.resize(n, 0);
                        disk.read_exact_at(&mut buf, offset)
                            .map_err(|source| IoError::File { offset, source })?;
                        let at = addr.unchecked_add(done as u64);
                        mem.write_slice(&buf, at)
                            .map_err(|_| IoError::GuestMemory(at.0))?;
                        done += n;
                        offset += n as u64;
                    }
                    written += len;
                }
            }
            RequestType::Out => {
                for &(addr, len) in &self.data {
                    let mut done = 0usize;
                    while done < len as usize {
                        let n = (len as usize - done).min(IO_CHUNK);
                        buf.resize(n, 0);
                        let at = addr.unchecked_add(done as u64);
                        mem.read_slice(&mut buf, at)
                            .map_err(|_| IoError::GuestMemory(at.0))?;
                        disk.write_all_at(&buf, offset)
                            .map_err(|source| IoError::File { offset, source })?;
                        done += n;
                        offset += n as u64;
                    }
                }
            }
            RequestType::Flush => disk.sync_all().map_err(IoError::Flush)?,
            RequestType::GetId => {
                let mut id = &disk_id[..];
                for &(addr, len) in &self.data {
                    if id.is_empty() {
                        break;
                    }
                    let n = id.len().min(len as usize);
                    mem.write_slice(&id[..n], addr)
                        .map_err(|_| IoError::GuestMemory(addr.0))?;
                    id = &id[n..];
                    written += n as u32;
                }
            }
        }
        Ok(written)
    }
}
