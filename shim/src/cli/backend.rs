//! The split between the microVM backend (`vm.rs`: host controller + agent) and the no-VM
//! backend (`novm.rs`: runtime crate on this host): one trait, chosen by `--no-vm`.

use std::path::PathBuf;

use super::{
    Cli, Command, CreateArgs, DeleteArgs, EventsArgs, ExecArgs, KillArgs, ListArgs, PsArgs,
    RunArgs, UpdateArgs,
};

/// CLI failures; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The runtime refused or failed.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// The microVM backend (host controller) failed.
    #[error(transparent)]
    Controller(#[from] crate::controller::Error),
    /// A flag or argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// A file given on the command line could not be used.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What every backend implements; the exit code is returned where runc returns one.
pub trait Backend {
    /// `run`: create + start (+ wait + delete unless detached).
    fn run(&self, a: &RunArgs) -> Result<i32, CliError>;
    /// `create`.
    fn create(&self, a: &CreateArgs) -> Result<(), CliError>;
    /// `start`.
    fn start(&self, id: &str) -> Result<(), CliError>;
    /// `state`: JSON on stdout.
    fn state(&self, id: &str) -> Result<(), CliError>;
    /// `kill`.
    fn kill(&self, a: &KillArgs) -> Result<(), CliError>;
    /// `delete`.
    fn delete(&self, a: &DeleteArgs) -> Result<(), CliError>;
    /// `exec`: the process's exit code unless detached.
    fn exec(&self, a: &ExecArgs) -> Result<i32, CliError>;
    /// `ps`.
    fn ps(&self, a: &PsArgs) -> Result<(), CliError>;
    /// `list`.
    fn list(&self, a: &ListArgs) -> Result<(), CliError>;
    /// `pause` (true) / `resume` (false).
    fn pause(&self, id: &str, pause: bool) -> Result<(), CliError>;
    /// `events [--stats]`.
    fn events(&self, a: &EventsArgs) -> Result<(), CliError>;
    /// `update`: new cgroup limits.
    fn update(&self, a: &UpdateArgs) -> Result<(), CliError>;
}

/// Picks the backend for the command line.
pub fn select(cli: &Cli) -> Result<Box<dyn Backend>, CliError> {
    if cli.no_vm {
        let root = cli
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(super::NOVM_ROOT));
        Ok(Box::new(super::novm::NoVm::new(root)))
    } else {
        Ok(Box::new(super::vm::Vm::new(cli.root.clone(), cli.debug)?))
    }
}

/// Runs one command on a backend; returns the exit code.
pub fn dispatch(b: &dyn Backend, cmd: &Command) -> Result<i32, CliError> {
    match cmd {
        Command::Run(a) => return b.run(a),
        Command::Create(a) => b.create(a)?,
        Command::Start(a) => b.start(&a.id)?,
        Command::State(a) => b.state(&a.id)?,
        Command::Kill(a) => b.kill(a)?,
        Command::Delete(a) => b.delete(a)?,
        Command::Exec(a) => return b.exec(a),
        Command::Ps(a) => b.ps(a)?,
        Command::List(a) => b.list(a)?,
        Command::Pause(a) => b.pause(&a.id, true)?,
        Command::Resume(a) => b.pause(&a.id, false)?,
        Command::Events(a) => b.events(a)?,
        Command::Update(a) => b.update(a)?,
        Command::Spec(_) | Command::TtyRelay(_) => {
            unreachable!("handled before choosing a backend")
        }
    }
    Ok(0)
}
