//! Taps for the tests of `--net`, made as a controller would, and passing one to the VMM
//! under its own descriptor number.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

pub const TUN: &str = "/dev/net/tun";
/// The flags the VMM wants of a tap it is given.
pub const VNET_TAP: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Opens tap `name` (creating it) with `flags`; it lives as long as the file, unless
/// another holder keeps it.
pub fn open_tap(name: &str, flags: libc::c_int) -> File {
    let file = OpenOptions::new().read(true).write(true).open(TUN).unwrap();
    // SAFETY: an all-zero ifreq is a valid value (a C struct of integers and arrays).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and updates the `ifreq` we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

/// Lets the child of `cmd` inherit `fd` under the same number (it is close-on-exec here).
pub fn inherit_fd(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and only calls fcntl, which
    // is async-signal-safe, on a descriptor the child inherited.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
