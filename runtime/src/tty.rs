//! process.terminal: a pty whose master is handed to the caller over `--console-socket`
//! (runc's protocol: one SCM_RIGHTS message), whose slave becomes the process's stdio.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The terminal could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("process.terminal: {step}: {message}")]
pub struct TtyError {
    step: &'static str,
    message: String,
}

fn fail(step: &'static str) -> impl Fn(nix::Error) -> TtyError {
    move |e| TtyError {
        step,
        message: e.to_string(),
    }
}

/// Connects to the console socket given by the caller (done before the container is forked).
pub fn connect(path: &Path) -> Result<OwnedFd, TtyError> {
    let s = UnixStream::connect(path).map_err(|e| TtyError {
        step: "connect --console-socket",
        message: format!("{}: {e}", path.display()),
    })?;
    Ok(OwnedFd::from(s))
}

/// Opens a pty from /dev/ptmx, sends the master over `socket`, and makes the slave the
/// controlling terminal and stdio of the calling process. With `console` the slave is also
/// bind-mounted onto /dev/console (for the container's init).
pub fn setup(socket: RawFd, size: Option<(u16, u16)>, console: bool) -> Result<(), TtyError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(fail("open /dev/ptmx"))?;
    grantpt(&master).map_err(fail("grantpt"))?;
    unlockpt(&master).map_err(fail("unlockpt"))?;
    let name = ptsname_r(&master).map_err(fail("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(fail("open pty slave"))?;
    // SAFETY: `slave` was just opened and is owned here only.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives on the stack for the call.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    if console {
        let dest = Path::new("/dev/console");
        if !dest.exists() {
            std::fs::File::create(dest).map_err(|e| TtyError {
                step: "create /dev/console",
                message: e.to_string(),
            })?;
        }
        nix::mount::mount(
            Some(name.as_str()),
            dest,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail("bind pty onto /dev/console"))?;
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let payload = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(socket, &payload, &cmsg, MsgFlags::empty(), None)
        .map_err(fail("send pty master over the console socket"))?;
    drop(master);
    // SAFETY: TIOCSCTTY on our own session leader with a valid fd.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(fail("make the pty the controlling terminal")(
            nix::Error::last(),
        ));
    }
    for fd in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), fd).map_err(fail("dup2 pty onto stdio"))?;
    }
    Ok(())
}
