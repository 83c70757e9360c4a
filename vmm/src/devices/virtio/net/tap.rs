//! The tap backend: a tap interface opened by name through /dev/net/tun, or handed over as an
//! open descriptor, always with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte header.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vm_memory::VolatileSlice;

use super::backend::{read_frame_from, write_frame_to, NetBackend};
use super::VNET_HDR_LEN;

/// Where the tun/tap driver is opened.
pub const TUN_PATH: &str = "/dev/net/tun";

/// The flags every tap of ours has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Errors of opening a tap; each names the interface, the descriptor or /dev/net/tun.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open {path}: {source}")]
    OpenTun { path: String, source: io::Error },
    #[error("cannot attach to tap {name}: {source}")]
    Attach { name: String, source: io::Error },
    #[error("descriptor {fd} is not a tap: {source}")]
    NotTap { fd: RawFd, source: io::Error },
    #[error(
        "descriptor {fd} is tap {name} opened without {missing}; open it with \
         IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
    )]
    Flags {
        fd: RawFd,
        name: String,
        missing: &'static str,
    },
    #[error("tap {name}: cannot set the 12-byte virtio-net header (TUNSETVNETHDRSZ): {source}")]
    VnetHdr { name: String, source: io::Error },
    #[error("tap {name}: cannot make it non-blocking: {source}")]
    NonBlocking { name: String, source: io::Error },
    #[error("tap {name}: cannot reset its offloads (TUNSETOFFLOAD): {source}")]
    Offload { name: String, source: io::Error },
}

/// A tap interface, its frames prefixed with a `virtio_net_hdr_v1`.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to tap `name`, creating it if there is none (a tap we create disappears
    /// when the VMM exits, however it exits).
    pub fn open_named(name: &str) -> Result<Self, TapError> {
        Self::open_named_at(Path::new(TUN_PATH), name)
    }

    /// `open_named` through the tun driver at `tun_path`.
    pub fn open_named_at(tun_path: &Path, name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(tun_path)
            .map_err(|source| TapError::OpenTun {
                path: tun_path.display().to_string(),
                source,
            })?;
        let attach_err = |source| TapError::Attach {
            name: name.to_string(),
            source,
        };
        let mut req = ifreq_named(name).map_err(attach_err)?;
        req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads (and may update) the `ifreq` we own, for the whole call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(attach_err(io::Error::last_os_error()));
        }
        Self::configure(file, interface_name(&req))
    }

    /// Takes over descriptor `fd`, a tap opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
    /// (the caller's header size is replaced by ours). `fd` is closed when the tap is dropped;
    /// on error it is left open and untouched.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: an all-zero ifreq is a valid value (a C struct of integers and arrays).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes into the `ifreq` we own; on a descriptor that is not a tap
        // it fails and changes nothing.
        let rc = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::NotTap {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name = interface_name(&req);
        // SAFETY: TUNGETIFF filled in `ifru_flags`.
        let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
        let missing = [
            (libc::IFF_TAP, "IFF_TAP"),
            (libc::IFF_NO_PI, "IFF_NO_PI"),
            (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
        ]
        .into_iter()
        .find(|(bit, _)| flags & bit == 0);
        if let Some((_, missing)) = missing {
            return Err(TapError::Flags { fd, name, missing });
        }
        // SAFETY: `fd` is an open tap (TUNGETIFF succeeded on it) that the caller handed to
        // us: it was open before the VMM opened any file (checked with the configuration) and
        // each descriptor is taken once, so nothing else in this process owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: F_SETFD only changes the close-on-exec flag of a descriptor we now own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        set_nonblocking(&file).map_err(|source| TapError::NonBlocking {
            name: name.clone(),
            source,
        })?;
        Self::configure(file, name)
    }

    /// The 12-byte header on every frame, and no offloads until the guest accepts some.
    fn configure(file: File, name: String) -> Result<Self, TapError> {
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the local `hdr_len`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(TapError::VnetHdr {
                name,
                source: io::Error::last_os_error(),
            });
        }
        let mut tap = Self { file, name };
        if let Err(source) = tap.set_offload(0) {
            return Err(TapError::Offload {
                name: tap.name,
                source,
            });
        }
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_frame_from(self.file.as_raw_fd(), buf)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        write_frame_to(self.file.as_raw_fd(), bufs)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // TUNSETOFFLOAD takes the flags as the ioctl's argument value.
        // SAFETY: the argument is passed by value; nothing of ours is read or written.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An `ifreq` carrying interface name `name`.
fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: an all-zero ifreq is a valid value (a C struct of integers and arrays).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name and its NUL must fit; the configuration checked that it does.
    if name.len() >= req.ifr_name.len() || name.as_bytes().contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// The interface name the kernel put into `req`.
fn interface_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL read and change only the status flags of a descriptor we own.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this process may create taps (root with /dev/net/tun).
    fn tun_usable() -> Result<(), String> {
        if !Path::new(TUN_PATH).exists() {
            return Err(format!("{TUN_PATH} does not exist"));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot create taps".into());
        }
        Ok(())
    }

    fn tap_name(tag: &str) -> String {
        format!("sbx{tag}{}", std::process::id() % 100_000)
    }

    #[test]
    fn a_tap_opened_by_name_has_our_flags_and_goes_with_its_descriptor() {
        let usable = tun_usable();
        sandbox_tests::require!(usable.is_ok(), "{}", usable.unwrap_err());
        let name = tap_name("n");
        let tap = Tap::open_named(&name).unwrap();
        assert_eq!(tap.name(), name);
        let sys = format!("/sys/class/net/{name}");
        assert!(Path::new(&sys).exists());
        let flags = std::fs::read_to_string(format!("{sys}/tun_flags")).unwrap();
        let flags = i32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
        assert_eq!(flags & TAP_FLAGS, TAP_FLAGS, "{flags:#x}");
        // The guest's offloads reach the tap; TSO without checksum offload is refused.
        let mut tap = tap;
        tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
            .unwrap();
        assert!(tap.set_offload(libc::TUN_F_TSO4).is_err());
        // Nothing is read while nothing was sent: the descriptor does not block.
        let mut buf = [0u8; 64];
        let e = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(tap);
        assert!(!Path::new(&sys).exists(), "the tap we created outlived us");
    }

    #[test]
    fn a_descriptor_must_be_a_tap_with_a_virtio_net_header() {
        let usable = tun_usable();
        sandbox_tests::require!(usable.is_ok(), "{}", usable.unwrap_err());
        // A pipe is no tap, and stays open after the refusal.
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let e = Tap::from_fd(fds[0]).unwrap_err();
        assert!(matches!(e, TapError::NotTap { .. }), "{e}");
        // SAFETY: F_GETFD only reads the flags of a descriptor this test owns.
        assert!(unsafe { libc::fcntl(fds[0], libc::F_GETFD) } >= 0);
        // SAFETY: the test owns both ends and closes each once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }

        // A tap without IFF_VNET_HDR is refused, naming the flag.
        let name = tap_name("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_PATH)
            .unwrap();
        let mut req = ifreq_named(&name).unwrap();
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates the `ifreq` we own.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(rc, 0);
        let e = Tap::from_fd(file.as_raw_fd()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "descriptor {} is tap {name} opened without IFF_VNET_HDR; open it with \
                 IFF_TAP | IFF_NO_PI | IFF_VNET_HDR",
                file.as_raw_fd()
            )
        );
        drop(file);

        // One opened with it is taken over.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_PATH)
            .unwrap();
        let mut req = ifreq_named(&name).unwrap();
        req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates the `ifreq` we own.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(rc, 0);
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        let tap = Tap::from_fd(fd).unwrap();
        assert_eq!(tap.name(), name);
        assert_eq!(tap.raw_fd(), fd);
    }

    #[test]
    fn a_missing_tun_driver_is_named() {
        let e = Tap::open_named_at(Path::new("/nonexistent/tun"), "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot open /nonexistent/tun: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_tap_already_attached_elsewhere_is_named() {
        let usable = tun_usable();
        sandbox_tests::require!(usable.is_ok(), "{}", usable.unwrap_err());
        let name = tap_name("b");
        let _first = Tap::open_named(&name).unwrap();
        let e = Tap::open_named(&name).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot attach to tap {name}: ")),
            "{e}"
        );
    }
}
