//! The `sandbox` command line: runc's command names, flags and exit codes, with a backend
//! chosen by `--no-vm` (host namespaces only) or, by default, the microVM path.

pub mod backend;
pub mod events;
pub mod novm;
pub mod signal;
pub mod spec;
pub mod update;
pub mod vm;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use backend::{select, Backend, CliError};
pub use update::UpdateArgs;

/// Default state root of the no-VM backend (runc uses /run/runc).
pub const NOVM_ROOT: &str = "/run/sandbox-novm";

/// sandbox: runs OCI containers, each in its own microVM.
#[derive(Debug, Parser)]
#[command(name = "sandbox", version, about, long_about = None)]
pub struct Cli {
    /// Run the container directly on this host, with namespaces, cgroups and seccomp only:
    /// runc-level isolation, no microVM. For tests, comparison with runc and debugging.
    #[arg(long, global = true)]
    pub no_vm: bool,
    /// Log debug messages to stderr.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Directory for container state (default /run/sandbox-novm with --no-vm).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Accepted for runc compatibility (containerd passes it); logs go to stderr.
    #[arg(long, global = true, value_name = "FILE", hide = true)]
    pub log: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "log-format", global = true, hide = true)]
    pub log_format: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// runc's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and start a container, wait for it and delete it (unless --detach).
    Run(RunArgs),
    /// Create a container: set it up and leave its process waiting for `start`.
    Create(CreateArgs),
    /// Start the user process of a created container.
    Start(IdArg),
    /// Print the state of a container as JSON.
    State(IdArg),
    /// Send a signal (default SIGTERM) to a container's init, or with --all to all processes.
    Kill(KillArgs),
    /// Delete a container (a running one only with --force).
    Delete(DeleteArgs),
    /// Run a new process inside a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps(PsArgs),
    /// List containers.
    List(ListArgs),
    /// Freeze all processes of a container (cgroup v2 freezer).
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// Print a container's cgroup statistics (--stats: once) and OOM events as JSON.
    Events(EventsArgs),
    /// Change a container's cgroup limits (runc's flags, or -r resources.json).
    Update(UpdateArgs),
    /// Internal: relays a host pty (fd 4) to a guest terminal stream (fd 3).
    #[command(hide = true)]
    TtyRelay(TtyRelayArgs),
    /// Write a default config.json into the bundle directory.
    Spec(SpecArgs),
}

/// A container id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Container id.
    pub id: String,
}

/// `create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Bundle directory (holds config.json).
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the pty master (SCM_RIGHTS) when process.terminal is true.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// File to write the init's PID to.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, hide = true)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, hide = true)]
    pub no_new_keyring: bool,
    /// Container id.
    pub id: String,
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// As for create.
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return after starting instead of waiting for the container.
    #[arg(short = 'd', long)]
    pub detach: bool,
}

/// `kill` flags.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Container id.
    pub id: String,
    /// Signal name or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

/// `delete` flags.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill the container first if it is running.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Container id.
    pub id: String,
}

/// `exec` flags.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A process.json to run instead of the command line.
    #[arg(short = 'p', long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Allocate a pty (needs --console-socket).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Return once the process has started.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Console socket for the pty master.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// File to write the process's PID to.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container id.
    pub id: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `ps` flags.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// table or json.
    #[arg(short = 'f', long, default_value = "table")]
    pub format: String,
    /// Container id.
    pub id: String,
}

/// `list` flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(short = 'f', long, default_value = "table")]
    pub format: String,
    /// Print only ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `events` flags.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print statistics once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between statistics while following (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// Container id.
    pub id: String,
}

/// `tty-relay` arguments (started by `--console-socket`, never by users).
#[derive(Debug, Args)]
pub struct TtyRelayArgs {
    /// The VMM's hybrid vsock socket.
    #[arg(long)]
    pub vsock: PathBuf,
    /// The container.
    #[arg(long)]
    pub container_id: String,
    /// The process ("" for the init).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub exec_id: String,
}

/// `spec` flags.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Bundle directory to write config.json into.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: &Cli) -> Result<i32, CliError> {
    if let Command::Spec(a) = &cli.command {
        spec::write_default(&a.bundle)?;
        return Ok(0);
    }
    if let Command::TtyRelay(a) = &cli.command {
        let target = crate::controller::console::RelayTarget {
            vsock: a.vsock.clone(),
            container_id: a.container_id.clone(),
            exec_id: a.exec_id.clone(),
        };
        crate::controller::console::relay_main(&target).map_err(|source| CliError::File {
            path: a.vsock.clone(),
            source,
        })?;
        return Ok(0);
    }
    let backend = select(cli)?;
    backend::dispatch(backend.as_ref(), &cli.command)
}
