//! A private containerd daemon: started from a generated config with its own directory and
//! socket, stopped by PID (SIGTERM, then SIGKILL) on drop with its shims and mounts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::command;
use super::config::Config;
use super::ctr::Ctr;
use super::procs;

/// How long containerd may take to answer on its socket (the lab's CPU is emulated).
const START_LIMIT: Duration = Duration::from_secs(90);
/// How long containerd may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("containerd exited ({status}) before it answered; its log:\n{log}")]
    Exited { status: String, log: String },
    #[error("containerd did not answer on {socket} within {limit:?}; its log:\n{log}")]
    NoAnswer {
        socket: PathBuf,
        limit: Duration,
        log: String,
    },
}

/// A running containerd; stopped and cleaned up on drop.
pub struct Containerd {
    config: Config,
    program: PathBuf,
    /// Its whole environment on top of ours (PATH included).
    env: Vec<(String, String)>,
    /// Whether our `SANDBOX_*` variables are kept from it (and so from its shims).
    without_sandbox_vars: bool,
    /// The config file it runs with.
    config_file: PathBuf,
    child: Option<Child>,
}

/// How to start one.
pub struct Builder {
    config: Config,
    program: PathBuf,
    path_prefix: Vec<PathBuf>,
    env: Vec<(String, String)>,
    without_sandbox_vars: bool,
    config_file: Option<PathBuf>,
}

impl Builder {
    /// containerd with `config`; `/usr/bin/containerd` unless `$SANDBOX_CONTAINERD` is set.
    pub fn new(config: Config) -> Builder {
        Builder {
            config,
            program: std::env::var_os("SANDBOX_CONTAINERD")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/bin/containerd".into()),
            path_prefix: Vec::new(),
            env: Vec::new(),
            without_sandbox_vars: false,
            config_file: None,
        }
    }

    /// Runs containerd with this config file, written by the caller (from the config's
    /// `to_toml`, edited), instead of writing `config.toml` in its directory.
    pub fn config_file(mut self, path: &Path) -> Builder {
        self.config_file = Some(path.to_owned());
        self
    }

    /// Keeps this process's `SANDBOX_*` variables from containerd and its shims, which then
    /// run on their config file alone.
    pub fn without_sandbox_vars(mut self) -> Builder {
        self.without_sandbox_vars = true;
        self
    }

    /// Puts `dir` first on containerd's PATH (where it looks for `containerd-shim-*-v2`).
    pub fn path_first(mut self, dir: &Path) -> Builder {
        self.path_prefix.push(dir.to_owned());
        self
    }

    /// One more environment variable for containerd (and so for the shims it starts).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Builder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The environment variables given with `env`.
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }

    /// Writes the config, starts containerd and waits until it answers.
    pub fn start(self) -> Result<Containerd, Error> {
        let config = self.config;
        for dir in std::iter::once(config.dir.clone()).chain(config.dirs()) {
            fs::create_dir_all(&dir).map_err(|source| Error::Prepare {
                path: dir.clone(),
                source,
            })?;
        }
        let toml_path = match self.config_file {
            Some(path) => path,
            None => {
                let path = config.dir.join("config.toml");
                fs::write(&path, config.to_toml()).map_err(|source| Error::Prepare {
                    path: path.clone(),
                    source,
                })?;
                path
            }
        };
        let mut path: Vec<PathBuf> = self.path_prefix.clone();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ));
        let mut env = self.env;
        env.push((
            "PATH".into(),
            std::env::join_paths(path)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ));
        let mut daemon = Containerd {
            config,
            program: self.program,
            env,
            without_sandbox_vars: self.without_sandbox_vars,
            config_file: toml_path,
            child: None,
        };
        daemon.spawn()?;
        daemon.wait_ready()?;
        Ok(daemon)
    }
}

impl Containerd {
    /// Its gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.config.socket()
    }

    /// Its private directory (root, state, config, log).
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The config it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Its PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `ctr` bound to this daemon and namespace `ns`.
    pub fn ctr(&self, ns: &str) -> Ctr {
        Ctr::new(&self.socket(), ns)
    }

    /// What containerd has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.config.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The shim processes of this daemon: they carry its socket in `-address`.
    pub fn shim_pids(&self) -> Vec<u32> {
        let socket = self.socket().to_string_lossy().into_owned();
        procs::matching(|argv| {
            argv.first()
                .is_some_and(|a0| a0.contains("containerd-shim"))
                && argv.contains(&socket)
        })
    }

    /// Processes other than containerd whose command line names a path under its directory
    /// (shims, VMMs started with sockets or bundles there, runc).
    pub fn processes_under_dir(&self) -> Vec<u32> {
        let dir = self.config.dir.to_string_lossy().into_owned();
        let own = self.pid();
        procs::matching(|argv| argv.iter().any(|a| a.contains(&dir)))
            .into_iter()
            .filter(|pid| Some(*pid) != own)
            .collect()
    }

    /// Mount points under its directory.
    pub fn mounts(&self) -> Vec<PathBuf> {
        procs::mounts_under(&self.config.dir)
    }

    /// Stops containerd (SIGTERM, as an init system would) and starts it again with the same
    /// config, root and state; its shims keep running and must be reconnected.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop_daemon();
        self.spawn()?;
        self.wait_ready()
    }

    /// Starts the process, its output appended to `containerd.log`.
    fn spawn(&mut self) -> Result<(), Error> {
        let log_path = self.config.dir.join("containerd.log");
        let prepare = |source| Error::Prepare {
            path: log_path.clone(),
            source,
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(prepare)?;
        let log_err = log.try_clone().map_err(prepare)?;
        let mut cmd = Command::new(&self.program);
        if self.without_sandbox_vars {
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("SANDBOX_") {
                    cmd.env_remove(key);
                }
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&self.config_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: self.program.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let begin = Instant::now();
        let ctr = self.ctr("default");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(Error::Exited {
                        status: status.to_string(),
                        log: self.log(),
                    });
                }
            }
            if self.socket().exists()
                && command::run_ok(&mut ctr.command(&["version"]), Duration::from_secs(10)).is_ok()
            {
                return Ok(());
            }
            if begin.elapsed() > START_LIMIT {
                return Err(Error::NoAnswer {
                    socket: self.socket(),
                    limit: START_LIMIT,
                    log: self.log(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then SIGKILL after `STOP_GRACE`; reaps it.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGTERM);
            let begin = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && begin.elapsed() < STOP_GRACE {
                thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for Containerd {
    /// Stops containerd, then kills what a failed test left: its shims with their children
    /// and anything else running from its directory; unmounts what is mounted there.
    fn drop(&mut self) {
        self.stop_daemon();
        let mut pids = self.shim_pids();
        pids.extend(self.processes_under_dir());
        procs::kill_trees(&pids);
        procs::unmount_under(&self.config.dir);
        let _ = fs::remove_dir_all(&self.config.dir);
    }
}
