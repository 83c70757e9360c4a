//! `--console-socket` for a process whose terminal is in the guest: a host pty whose master
//! goes to the caller's socket (runc's SCM_RIGHTS protocol) and a relay process that copies
//! between the pty's slave and the guest's tty stream, and turns window-size changes of the
//! host pty into ResizeTty. The relay outlives `sandbox create`; it ends when the guest's tty
//! reaches EOF (the process and its children are gone, or the VM is).

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::pty::openpty;
use nix::sys::signal::Signal;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{self, SetArg};

use crate::agent_client::{AgentClient, Endpoint, StdioStream};

use super::signals;
use super::tty::window_size;

/// The relay's descriptors: the attached tty stream and the pty slave.
const STREAM_FD: RawFd = 3;
const SLAVE_FD: RawFd = 4;
/// Bytes moved per read.
const CHUNK: usize = 64 * 1024;

/// Errors setting up the console socket hand-over.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--console-socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("--console-socket {path}: sending the pty master: {source}")]
    Send { path: PathBuf, source: nix::Error },
    #[error("opening a pty for the console socket: {0}")]
    Pty(nix::Error),
    #[error("starting the tty relay {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
}

/// Where the relay reaches the agent again (for ResizeTty) and whose terminal it carries.
#[derive(Debug, Clone)]
pub struct RelayTarget {
    pub vsock: PathBuf,
    pub container_id: String,
    pub exec_id: String,
}

/// Opens a pty, sends its master over `console_socket` and starts the relay between its slave
/// and `tty` (already attached). `exe` is a `sandbox` binary (its hidden `tty-relay` command).
/// Returns the relay's pid.
pub fn hand_over(
    console_socket: &Path,
    tty: StdioStream,
    target: &RelayTarget,
    exe: &Path,
) -> Result<u32, Error> {
    let pty = openpty(None, None).map_err(Error::Pty)?;
    send_master(console_socket, pty.master.as_fd().as_raw_fd())?;
    drop(pty.master);
    spawn_relay(exe, OwnedFd::from(tty.into_inner()), pty.slave, target)
}

/// runc's protocol: one message whose payload is the pty's name and whose SCM_RIGHTS holds
/// the master.
fn send_master(path: &Path, master: RawFd) -> Result<(), Error> {
    let socket = UnixStream::connect(path).map_err(|source| Error::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    let fds = [master];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let payload = [IoSlice::new(b"/dev/ptmx")];
    sendmsg::<()>(socket.as_raw_fd(), &payload, &cmsg, MsgFlags::empty(), None).map_err(
        |source| Error::Send {
            path: path.to_path_buf(),
            source,
        },
    )?;
    Ok(())
}

fn spawn_relay(
    exe: &Path,
    stream: OwnedFd,
    slave: OwnedFd,
    target: &RelayTarget,
) -> Result<u32, Error> {
    let (stream_raw, slave_raw) = (stream.as_raw_fd(), slave.as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.arg("tty-relay")
        .arg("--vsock")
        .arg(&target.vsock)
        .arg("--container-id")
        .arg(&target.container_id)
        .arg("--exec-id")
        .arg(&target.exec_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure only calls dup2 and setsid, which are
    // async-signal-safe; the raw fds stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // Through temporaries above the targets, so neither source is clobbered.
            let a = libc::fcntl(stream_raw, libc::F_DUPFD, 10);
            let b = libc::fcntl(slave_raw, libc::F_DUPFD, 10);
            if a < 0 || b < 0 || libc::dup2(a, STREAM_FD) < 0 || libc::dup2(b, SLAVE_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(a);
            libc::close(b);
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        exe: exe.to_path_buf(),
        source,
    })?;
    drop((stream, slave));
    Ok(child.id())
}

/// The relay process (`sandbox tty-relay`): fds 3 (tty stream) and 4 (pty slave) are given.
/// Returns when the guest's side of the terminal has ended.
pub fn relay_main(target: &RelayTarget) -> io::Result<()> {
    // SAFETY: the parent set up fds 3 and 4 for us (spawn_relay) and nothing else owns them.
    let stream = unsafe { OwnedFd::from_raw_fd(STREAM_FD) };
    // SAFETY: as above.
    let slave = unsafe { OwnedFd::from_raw_fd(SLAVE_FD) };
    // Window changes arrive as SIGWINCH once the slave is our controlling terminal; a
    // hang-up of the master must not kill us before the guest's output is drained.
    let set = signals::block(&[Signal::SIGWINCH, Signal::SIGHUP])?;
    // SAFETY: TIOCSCTTY with a valid fd, from the session leader setsid made us.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        tracing::warn!("tty-relay: TIOCSCTTY: {}", io::Error::last_os_error());
    }
    if let Ok(mut raw) = termios::tcgetattr(&slave) {
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&slave, SetArg::TCSANOW, &raw);
    }
    let endpoint = Endpoint::HybridVsock {
        socket: target.vsock.clone(),
    };
    let resize = {
        let slave = slave.try_clone()?;
        let target = target.clone();
        move |client: &mut Option<AgentClient>| {
            let Some((rows, cols)) = window_size(slave.as_fd()) else {
                return;
            };
            if client.is_none() {
                *client = AgentClient::connect(&endpoint, Duration::from_secs(10)).ok();
            }
            if let Some(c) = client {
                if let Err(e) = c.resize_tty(&target.container_id, &target.exec_id, rows, cols) {
                    tracing::debug!("tty-relay: resize: {e}");
                }
            }
        }
    };
    std::thread::spawn(move || {
        let mut client = None;
        resize(&mut client);
        signals::wait_each(&set, |sig| {
            if sig == Signal::SIGWINCH {
                resize(&mut client);
            }
        });
    });
    let mut to_guest = File::from(stream.try_clone()?);
    let mut from_host = File::from(slave.try_clone()?);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from_host.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_guest.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        // The master was closed: no more input.
        // SAFETY: shutdown(2) on a socket fd we own a duplicate of.
        unsafe { libc::shutdown(to_guest.as_raw_fd(), libc::SHUT_WR) };
    });
    let mut from_guest = File::from(stream);
    let mut to_host = Some(File::from(slave));
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from_guest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Once nobody holds the master, keep draining so the container never blocks.
        if let Some(out) = &mut to_host {
            if out.write_all(&buf[..n]).is_err() {
                to_host = None;
            }
        }
    }
}

/// Lets the relay `pid` pass the last output on (it ends at the guest terminal's EOF), at
/// most a few seconds, then reaps it.
pub fn wait_relay(pid: u32) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let begin = std::time::Instant::now();
    while begin.elapsed() < Duration::from_secs(5) {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

/// This executable, for [`hand_over`].
pub fn current_exe() -> Result<PathBuf, Error> {
    std::env::current_exe().map_err(|source| Error::Spawn {
        exe: PathBuf::from("/proc/self/exe"),
        source,
    })
}
