//! What the virtio-net device needs of the host side of its link: read one frame, write one
//! frame gathered from guest memory, set the receive offloads; and the fd I/O a tap or any
//! datagram-like descriptor does it with.

use std::io;
use std::os::fd::RawFd;

use vm_memory::VolatileSlice;

/// The host end of a virtio-net device. Every frame starts with a 12-byte
/// `virtio_net_hdr_v1`; one read or write moves exactly one frame.
pub trait NetBackend: Send {
    /// The descriptor the event loop watches for frames to read.
    fn raw_fd(&self) -> RawFd;
    /// Reads the next frame into `buf`, returning its length; `WouldBlock` when none waits.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame made of `bufs` in order.
    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
    /// The offloads (`TUN_F_*`) of the frames the guest accepts; 0 for plain frames only.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// Reads one frame from `fd` into `buf`.
pub fn read_frame_from(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes; read writes at most that.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes the frame made of `bufs` to `fd` with one `writev`.
pub fn write_frame_to(fd: RawFd, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    let iovecs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard().as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let count = libc::c_int::try_from(iovecs.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: each iovec describes a `VolatileSlice` of guest memory, mapped for as long as
    // the slices borrowed here live; writev only reads them. The guest may change the bytes
    // meanwhile, which only changes what is sent.
    let n = unsafe { libc::writev(fd, iovecs.as_ptr(), count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
