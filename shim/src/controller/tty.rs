//! The host side of a container terminal: the user's terminal in raw mode while attached
//! (restored on drop) and its window size.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Puts a terminal in raw mode; restores the previous settings on drop.
pub struct RawMode {
    fd: std::os::fd::OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn enable(fd: BorrowedFd<'_>) -> Option<RawMode> {
        if !nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false) {
            return None;
        }
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode {
            fd: fd.try_clone_to_owned().ok()?,
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// Rows and columns of the terminal on `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass; the fd is borrowed.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// This process's stdin, borrowed.
pub fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process; we only borrow it.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// This process's stdout, borrowed.
pub fn stdout_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 1 stays open for the life of the process; we only borrow it.
    unsafe { BorrowedFd::borrow_raw(1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::{openpty, Winsize};
    use std::os::fd::AsFd;

    #[test]
    fn raw_mode_is_restored_and_size_read() {
        let ws = Winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&ws), None).unwrap();
        assert_eq!(window_size(pty.slave.as_fd()), Some((33, 101)));
        let before = termios::tcgetattr(&pty.slave).unwrap();
        assert!(before.local_flags.contains(termios::LocalFlags::ICANON));
        {
            let _raw = RawMode::enable(pty.slave.as_fd()).unwrap();
            let now = termios::tcgetattr(&pty.slave).unwrap();
            assert!(!now.local_flags.contains(termios::LocalFlags::ICANON));
        }
        let after = termios::tcgetattr(&pty.slave).unwrap();
        assert!(after.local_flags.contains(termios::LocalFlags::ICANON));
        let file = tempfile::tempfile().unwrap();
        assert!(RawMode::enable(file.as_fd()).is_none());
        assert_eq!(window_size(file.as_fd()), None);
    }
}
