//! The microVM backend of the `sandbox` CLI: runc's commands on top of the host controller,
//! each container in its own microVM; state under `--root` (default /run/sandbox).

use std::io::Write;
use std::path::{Path, PathBuf};

use runtime::Status;

use crate::controller::{self, Config, ExecRequest, Record, Sandbox};

use super::backend::{Backend, CliError};
use super::signal::parse_signal;
use super::{
    CreateArgs, DeleteArgs, EventsArgs, ExecArgs, KillArgs, ListArgs, PsArgs, RunArgs, UpdateArgs,
};

/// The backend.
pub struct Vm {
    sandbox: Sandbox,
}

impl Vm {
    /// A backend with settings from the environment (see `controller::Config::from_env`).
    pub fn new(root: Option<PathBuf>, debug: bool) -> Result<Vm, CliError> {
        let cfg = Config::from_env(root, debug).map_err(controller::Error::from)?;
        Ok(Vm {
            sandbox: Sandbox::new(cfg),
        })
    }
}

/// `run bundle/` (a directory with config.json as the only positional) means: that bundle,
/// a generated id. Otherwise runc's `--bundle DIR ID`.
fn id_and_bundle(a: &CreateArgs) -> (String, PathBuf) {
    let positional = Path::new(&a.id);
    if a.bundle == Path::new(".") && positional.join("config.json").is_file() {
        (controller::state::generate_id(), positional.to_path_buf())
    } else {
        (a.id.clone(), a.bundle.clone())
    }
}

/// runc's `state` JSON.
fn state_json(r: &Record, status: Status) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": r.oci_version,
        "id": r.id,
        "pid": r.pid,
        "status": status.to_string(),
        "bundle": r.bundle,
        "rootfs": r.rootfs,
        "created": r.created,
        "owner": r.owner,
    })
}

fn print_json(v: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// `uid[:gid]`.
fn parse_user(s: &str) -> Result<(u32, Option<u32>), CliError> {
    let bad = || CliError::Usage(format!("--user {s:?}: expected UID[:GID]"));
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g.parse().map_err(|_| bad())?)),
        None => (s, None),
    };
    Ok((uid.parse().map_err(|_| bad())?, gid))
}

impl Vm {
    /// The process of an `exec`: `-p FILE`, or the bundle's process with the command line,
    /// environment, cwd, user and terminal replaced.
    fn exec_process(&self, a: &ExecArgs) -> Result<serde_json::Value, CliError> {
        let mut p = match &a.process {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_str(&text)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
            }
            None => {
                if a.command.is_empty() {
                    return Err(CliError::Usage(
                        "exec needs a command (or -p process.json)".into(),
                    ));
                }
                let mut p = self.sandbox.bundle_process(&a.id)?;
                p["args"] = serde_json::json!(a.command);
                p
            }
        };
        if !p.is_object() {
            return Err(CliError::Usage(
                "the exec process must be a JSON object".into(),
            ));
        }
        if !a.env.is_empty() {
            let mut env: Vec<serde_json::Value> = p["env"].as_array().cloned().unwrap_or_default();
            env.extend(a.env.iter().map(|e| serde_json::json!(e)));
            p["env"] = env.into();
        }
        if let Some(cwd) = &a.cwd {
            p["cwd"] = serde_json::json!(cwd);
        }
        if let Some(user) = &a.user {
            let (uid, gid) = parse_user(user)?;
            p["user"]["uid"] = uid.into();
            if let Some(gid) = gid {
                p["user"]["gid"] = gid.into();
            }
        }
        if a.process.is_none() || a.tty {
            p["terminal"] = a.tty.into();
        }
        // runc's process.json may leave these out (Go zero values).
        if p["cwd"].as_str().is_none() {
            p["cwd"] = "/".into();
        }
        if !p["user"].is_object() {
            p["user"] = serde_json::json!({"uid": 0, "gid": 0});
        }
        Ok(p)
    }
}

impl Backend for Vm {
    fn run(&self, a: &RunArgs) -> Result<i32, CliError> {
        let (id, bundle) = id_and_bundle(&a.create);
        let console = a.create.console_socket.as_deref();
        if a.detach {
            let record = self
                .sandbox
                .run_detached_with_console(&id, &bundle, console)?;
            if let Some(p) = &a.create.pid_file {
                controller::sandbox::write_pid_file(p, record.pid)?;
            }
            return Ok(0);
        }
        Ok(self
            .sandbox
            .run_with_console(&id, &bundle, a.create.pid_file.as_deref(), console)?)
    }

    fn create(&self, a: &CreateArgs) -> Result<(), CliError> {
        let (id, bundle) = id_and_bundle(a);
        let record = self
            .sandbox
            .create_with_console(&id, &bundle, a.console_socket.as_deref())?;
        if let Some(p) = &a.pid_file {
            controller::sandbox::write_pid_file(p, record.pid)?;
        }
        Ok(())
    }

    fn start(&self, id: &str) -> Result<(), CliError> {
        Ok(self.sandbox.start(id)?)
    }

    fn state(&self, id: &str) -> Result<(), CliError> {
        let (record, status) = self.sandbox.state(id)?;
        print_json(&state_json(&record, status))
    }

    fn kill(&self, a: &KillArgs) -> Result<(), CliError> {
        let signal = parse_signal(&a.signal)?;
        Ok(self.sandbox.kill(&a.id, signal, a.all)?)
    }

    fn delete(&self, a: &DeleteArgs) -> Result<(), CliError> {
        match self.sandbox.delete(&a.id, a.force) {
            Err(controller::Error::State(controller::state::Error::NotFound(_))) if a.force => {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    fn exec(&self, a: &ExecArgs) -> Result<i32, CliError> {
        if a.tty && a.detach && a.console_socket.is_none() {
            return Err(CliError::Usage(
                "exec --tty --detach needs --console-socket (the pty master goes there)".into(),
            ));
        }
        let process = self.exec_process(a)?;
        let req = ExecRequest {
            process,
            detach: a.detach,
            console_socket: a.console_socket.clone(),
        };
        Ok(self.sandbox.exec(&a.id, &req)?)
    }

    fn ps(&self, a: &PsArgs) -> Result<(), CliError> {
        let procs = self.sandbox.ps(&a.id)?;
        if a.format == "json" {
            let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
            return print_json(&serde_json::json!(pids));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{:<8} {:>8} {:>8}  CMD", "UID", "PID", "PPID");
        for p in procs {
            let _ = writeln!(
                out,
                "{:<8} {:>8} {:>8}  {}",
                p.uid, p.pid, p.ppid, p.cmdline
            );
        }
        Ok(())
    }

    fn list(&self, a: &ListArgs) -> Result<(), CliError> {
        let all = self.sandbox.list()?;
        if a.quiet {
            for (r, _) in &all {
                println!("{}", r.id);
            }
            return Ok(());
        }
        if a.format == "json" {
            let v: Vec<_> = all.iter().map(|(r, s)| state_json(r, *s)).collect();
            return print_json(&serde_json::json!(v));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ID                PID         STATUS      BUNDLE                      CREATED                          OWNER");
        for (r, s) in all {
            let _ = writeln!(
                out,
                "{:<17} {:<11} {:<11} {:<27} {:<32} {}",
                r.id,
                r.pid,
                s.to_string(),
                r.bundle.display(),
                r.created,
                if r.owner.is_empty() { "root" } else { &r.owner }
            );
        }
        Ok(())
    }

    fn pause(&self, id: &str, pause: bool) -> Result<(), CliError> {
        if pause {
            Ok(self.sandbox.pause(id)?)
        } else {
            Ok(self.sandbox.resume(id)?)
        }
    }

    fn events(&self, a: &EventsArgs) -> Result<(), CliError> {
        let interval = super::events::parse_interval(&a.interval)?;
        let handle = self.sandbox.handle(&a.id)?;
        let print = |line: String| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        if a.stats {
            print(super::events::stats_line(&a.id, &handle.stats()?));
            return Ok(());
        }
        // Follow: OOM events as the agent reports them, stats every interval, until the VM
        // (and so the container) is gone.
        let listener = controller::EventListener::spawn(handle.client().clone());
        let mut next_stats = std::time::Instant::now();
        loop {
            let now = std::time::Instant::now();
            if now >= next_stats {
                match handle.stats() {
                    Ok(s) => print(super::events::stats_line(&a.id, &s)),
                    Err(_) => return Ok(()),
                }
                next_stats = now + interval;
            }
            match listener.recv_timeout(next_stats.saturating_duration_since(now)) {
                Ok(Some(controller::AgentEvent::Oom { container_id, .. }))
                    if container_id == a.id =>
                {
                    print(super::events::oom_line(&a.id))
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }

    fn update(&self, a: &UpdateArgs) -> Result<(), CliError> {
        Ok(self.sandbox.update(&a.id, &a.resources()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_args(id: &str, bundle: &str) -> CreateArgs {
        CreateArgs {
            bundle: bundle.into(),
            console_socket: None,
            pid_file: None,
            no_pivot: false,
            no_new_keyring: false,
            id: id.into(),
        }
    }

    #[test]
    fn positional_bundle_gets_a_generated_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let b = dir.path().to_str().unwrap();
        let (id, bundle) = id_and_bundle(&create_args(b, "."));
        assert!(id.starts_with("sbx-"), "{id}");
        assert_eq!(bundle, dir.path());
        let (id, bundle) = id_and_bundle(&create_args("c1", b));
        assert_eq!((id.as_str(), bundle.as_path()), ("c1", dir.path()));
        // A plain id in a directory without such a subdirectory stays an id.
        let (id, bundle) = id_and_bundle(&create_args("c2", "."));
        assert_eq!((id.as_str(), bundle.as_path()), ("c2", Path::new(".")));
    }

    #[test]
    fn exec_process_json_gets_runc_defaults_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("process.json");
        std::fs::write(&file, r#"{"args":["sh"],"env":["A=1"]}"#).unwrap();
        let vm = Vm::new(Some(dir.path().join("root")), false).unwrap();
        let args = ExecArgs {
            process: Some(file),
            tty: false,
            detach: false,
            console_socket: None,
            pid_file: None,
            cwd: None,
            env: vec!["B=2".into()],
            user: Some("1000:5".into()),
            id: "c1".into(),
            command: Vec::new(),
        };
        let p = vm.exec_process(&args).unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh"]));
        assert_eq!(p["env"], serde_json::json!(["A=1", "B=2"]));
        assert_eq!(p["user"], serde_json::json!({"uid": 1000, "gid": 5}));
        assert_eq!(p["cwd"], "/");
        let no_command = ExecArgs {
            process: None,
            user: None,
            ..args
        };
        assert!(matches!(
            vm.exec_process(&no_command),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn users_and_state_json() {
        assert_eq!(parse_user("1000").unwrap(), (1000, None));
        assert_eq!(parse_user("1000:5").unwrap(), (1000, Some(5)));
        assert!(parse_user("x").is_err());
    }
}
