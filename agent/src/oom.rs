//! OOM kills in the containers' cgroups, found without polling: an inotify watch on each
//! container's `memory.events` (cgroup v2 signals every change of its values as a file
//! modification) and an eventfd rung when containers come or go. An idle guest never wakes
//! for it; a timer that re-read every container's state would run the agent's state loading
//! and the kernel's cgroup code twice a second, keeping their pages in use.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the OOM watch's inotify instance: {0}")]
    Inotify(nix::Error),
    #[error("cannot create the OOM watch's eventfd: {0}")]
    EventFd(nix::Error),
}

/// What is known of one watched container.
struct Watched {
    wd: WatchDescriptor,
    path: PathBuf,
    kills: u64,
}

/// The watch; [`OomWatch::run`] serves it on a thread of its own.
pub struct OomWatch {
    inotify: Inotify,
    changed: EventFd,
}

/// The `oom_kill` count of a `memory.events` file (0 if absent or unreadable).
fn oom_kills(path: &Path) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl OomWatch {
    pub fn new() -> Result<OomWatch, Error> {
        Ok(OomWatch {
            inotify: Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                .map_err(Error::Inotify)?,
            changed: EventFd::from_value_and_flags(
                0,
                EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
            )
            .map_err(Error::EventFd)?,
        })
    }

    /// Tells the watch that containers were created or removed.
    pub fn containers_changed(&self) {
        let _ = self.changed.write(1);
    }

    /// Serves the watch forever. `containers` lists each container's id and `memory.events`
    /// path; `report(id, kills)` is called whenever a container's OOM kill count grows (also
    /// for kills counted before it was first seen).
    pub fn run(
        &self,
        containers: impl Fn() -> Vec<(String, PathBuf)>,
        report: impl Fn(&str, u64),
    ) -> ! {
        let mut watched: HashMap<String, Watched> = HashMap::new();
        self.sync(&mut watched, &containers(), &report);
        loop {
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.changed.as_fd(), PollFlags::POLLIN),
            ];
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue;
            }
            let ready = |i: usize| {
                fds[i]
                    .revents()
                    .is_some_and(|r| r.contains(PollFlags::POLLIN))
            };
            let (modified, changed) = (ready(0), ready(1));
            if changed {
                let _ = self.changed.read();
                self.sync(&mut watched, &containers(), &report);
            }
            if modified {
                let events = self.inotify.read_events().unwrap_or_default();
                for (id, w) in watched.iter_mut() {
                    if events.iter().any(|e| e.wd == w.wd) {
                        check(id, w, &report);
                    }
                }
            }
        }
    }

    /// Watches the containers of `now` and forgets the others.
    fn sync(
        &self,
        watched: &mut HashMap<String, Watched>,
        now: &[(String, PathBuf)],
        report: &impl Fn(&str, u64),
    ) {
        watched.retain(|id, w| {
            let keep = now.iter().any(|(i, p)| i == id && *p == w.path);
            if !keep {
                let _ = self.inotify.rm_watch(w.wd);
            }
            keep
        });
        for (id, path) in now {
            if watched.contains_key(id) {
                continue;
            }
            match self.inotify.add_watch(path, AddWatchFlags::IN_MODIFY) {
                Ok(wd) => {
                    let mut w = Watched {
                        wd,
                        path: path.clone(),
                        kills: 0,
                    };
                    check(id, &mut w, report);
                    watched.insert(id.clone(), w);
                }
                Err(e) => log::debug!("OOM watch: {}: {e}", path.display()),
            }
        }
    }
}

/// Reports `w`'s container if its kill count grew.
fn check(id: &str, w: &mut Watched, report: &impl Fn(&str, u64)) {
    let kills = oom_kills(&w.path);
    if kills > w.kills {
        w.kills = kills;
        report(id, kills);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn kills_are_read_from_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        fs::write(
            &f,
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&f), 2);
        assert_eq!(oom_kills(&dir.path().join("absent")), 0);
    }

    #[test]
    fn a_growing_count_is_reported_once_per_change_and_new_containers_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.events");
        let b = dir.path().join("b.events");
        fs::write(&a, "oom_kill 0\n").unwrap();
        fs::write(&b, "oom_kill 3\n").unwrap();
        let list = Arc::new(Mutex::new(vec![("a".to_string(), a.clone())]));
        let watch = Arc::new(OomWatch::new().unwrap());
        let (tx, rx) = mpsc::channel();
        {
            let (watch, list) = (watch.clone(), list.clone());
            std::thread::spawn(move || {
                watch.run(
                    || list.lock().unwrap().clone(),
                    |id, kills| tx.send((id.to_string(), kills)).unwrap(),
                )
            });
        }
        let next = || rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let quiet = || rx.recv_timeout(Duration::from_millis(300)).is_err();
        assert!(quiet(), "nothing to report yet");
        fs::write(&a, "oom_kill 1\n").unwrap();
        assert_eq!(next(), ("a".to_string(), 1));
        // A write that does not raise the count reports nothing.
        fs::write(&a, "oom_kill 1\n").unwrap();
        assert!(quiet());
        // A new container with kills already counted is reported when it is announced.
        list.lock().unwrap().push(("b".to_string(), b.clone()));
        watch.containers_changed();
        assert_eq!(next(), ("b".to_string(), 3));
        fs::write(&b, "oom_kill 4\n").unwrap();
        assert_eq!(next(), ("b".to_string(), 4));
        // A container that went is no longer watched.
        list.lock().unwrap().retain(|(id, _)| id != "a");
        watch.containers_changed();
        std::thread::sleep(Duration::from_millis(100));
        fs::write(&a, "oom_kill 9\n").unwrap();
        assert!(quiet());
    }
}
