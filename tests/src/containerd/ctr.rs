//! `ctr --address SOCKET -n NAMESPACE ...` with its output and status captured and a time
//! limit, so a test never hangs on a stuck shim.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::command::{self, Error, Output};

/// The limit of a `ctr` command unless the caller gives one.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(120);

/// `ctr` bound to one daemon and namespace.
#[derive(Clone, Debug)]
pub struct Ctr {
    program: PathBuf,
    address: PathBuf,
    namespace: String,
}

impl Ctr {
    /// `/usr/bin/ctr` unless `$SANDBOX_CTR` is set.
    pub fn new(address: &Path, namespace: &str) -> Ctr {
        Ctr {
            program: std::env::var_os("SANDBOX_CTR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/bin/ctr".into()),
            address: address.to_owned(),
            namespace: namespace.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The command, stdin closed, for callers that need to change more (stdin, env).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        command::no_stdin(&mut cmd);
        cmd
    }

    /// Runs `ctr ARGS` within `limit`; a non-zero exit is not an error here.
    pub fn run_within(&self, args: &[&str], limit: Duration) -> Result<Output, Error> {
        command::run(&mut self.command(args), limit)
    }

    /// Runs `ctr ARGS` within `DEFAULT_LIMIT`; a non-zero exit is not an error here.
    pub fn run(&self, args: &[&str]) -> Result<Output, Error> {
        self.run_within(args, DEFAULT_LIMIT)
    }

    /// Runs `ctr ARGS` within `DEFAULT_LIMIT`; it must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<Output, Error> {
        self.run(args)?.success()
    }

    /// The names of the images in the namespace (`ctr images ls -q`).
    pub fn images(&self) -> Result<Vec<String>, Error> {
        Ok(lines(&self.ok(&["images", "ls", "-q"])?.stdout))
    }

    /// The container ids in the namespace (`ctr containers ls -q`).
    pub fn containers(&self) -> Result<Vec<String>, Error> {
        Ok(lines(&self.ok(&["containers", "ls", "-q"])?.stdout))
    }

    /// The task ids in the namespace (`ctr tasks ls -q`).
    pub fn tasks(&self) -> Result<Vec<String>, Error> {
        Ok(lines(&self.ok(&["tasks", "ls", "-q"])?.stdout))
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_names_address_and_namespace_first() {
        let ctr = Ctr::new(Path::new("/run/x/containerd.sock"), "ns1");
        let cmd = ctr.command(&["tasks", "ls"]);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "--address",
                "/run/x/containerd.sock",
                "--namespace",
                "ns1",
                "tasks",
                "ls"
            ]
        );
        assert_eq!(lines(" a\n\nb \n"), ["a", "b"]);
    }
}
