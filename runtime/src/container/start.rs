//! runtime-spec `start`: open the exec fifo the created init blocks on, so it execs the user's
//! program, then run the poststart hooks.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{errno, Container, Error, Result, EXEC_FIFO};
use crate::hooks::HookKind;
use crate::process::channel::Msg;
use crate::state::{self, Status};

impl Container {
    /// Starts the user process of a created container; runs the poststart hooks.
    pub fn start(&mut self) -> Result<()> {
        self.status_for("start", |s| s == Status::Created)?;
        let fifo = self.dir.join(EXEC_FIFO);
        let f = nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(errno(format!("open {}", fifo.display())))?;
        // SAFETY: `f` was just returned by open and is owned here.
        let f: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(f) };
        loop {
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&f),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
            let mut b = [0u8; 1];
            match nix::unistd::read(f.as_raw_fd(), &mut b) {
                Ok(1) => break,
                Ok(_) | Err(nix::Error::EAGAIN) => {}
                Err(e) => return Err(errno("read exec fifo")(e)),
            }
            if !matches!(state::process_info(self.state.pid), Some((s, _)) if s != 'Z') {
                let _ = fs::remove_file(&fifo);
                return Err(Error::Init(format!(
                    "container {} init exited before it could be started",
                    self.id()
                )));
            }
        }
        let _ = fs::remove_file(&fifo);
        // While we still hold the init's channel, an exec failure is reported here.
        if let Some(chan) = self.init_chan.take() {
            if let Ok(Some(Msg::Error(e))) = chan.recv() {
                return Err(Error::Init(e));
            }
        }
        self.state.status = Status::Running;
        self.run_hooks_logged(HookKind::Poststart);
        Ok(())
    }
}
