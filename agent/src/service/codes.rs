//! The ttrpc status each failure of the agent's parts answers with: the code tells the host
//! what kind of failure it was, the message is the error's one line.

use ttrpc::Code;

use crate::containers::{self, Error as ContainerError};
use crate::guest_processes;
use crate::process_table;
use crate::runtime_helper::{self, Kind};

/// A ttrpc error with `code` and `message`.
pub fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.to_string()))
}

fn table(e: &process_table::Error) -> Code {
    match e {
        process_table::Error::NotFound { .. } => Code::NOT_FOUND,
        process_table::Error::Exists { .. } => Code::ALREADY_EXISTS,
        process_table::Error::StreamUnavailable { .. }
        | process_table::Error::NoTerminal { .. }
        | process_table::Error::Exited { .. } => Code::FAILED_PRECONDITION,
        process_table::Error::Sys { .. } => Code::INTERNAL,
    }
}

fn bundle(e: &containers::BundleError) -> Code {
    match e {
        containers::BundleError::BadId(_)
        | containers::BundleError::BadSpec(_)
        | containers::BundleError::Device { .. } => Code::INVALID_ARGUMENT,
        containers::BundleError::Exists(_) => Code::ALREADY_EXISTS,
        containers::BundleError::NotFound(_) => Code::NOT_FOUND,
        _ => Code::INTERNAL,
    }
}

/// The code of a runtime failure of `kind`.
fn runtime_kind(kind: Kind) -> Code {
    match kind {
        Kind::Invalid => Code::INVALID_ARGUMENT,
        Kind::Exists => Code::ALREADY_EXISTS,
        Kind::NotFound => Code::NOT_FOUND,
        Kind::WrongState | Kind::Other => Code::FAILED_PRECONDITION,
    }
}

/// A runtime call of the agent's own; what the runtime cannot classify is the agent's failure.
fn runtime(e: &runtime::Error) -> Code {
    match Kind::of(e) {
        Kind::Other => Code::INTERNAL,
        kind => runtime_kind(kind),
    }
}

/// A runtime call in the helper: its unclassified failures still refuse the request.
fn helper(e: &runtime_helper::Error) -> Code {
    match e {
        runtime_helper::Error::Runtime { kind, .. } => runtime_kind(*kind),
        _ => Code::INTERNAL,
    }
}

impl From<process_table::Error> for ttrpc::Error {
    fn from(e: process_table::Error) -> Self {
        status(table(&e), e)
    }
}

impl From<ContainerError> for ttrpc::Error {
    fn from(e: ContainerError) -> Self {
        let code = match &e {
            ContainerError::Unknown(_) => Code::NOT_FOUND,
            ContainerError::Running(_) => Code::FAILED_PRECONDITION,
            ContainerError::BadProcess(_) => Code::INVALID_ARGUMENT,
            ContainerError::Bundle(e) => bundle(e),
            ContainerError::Runtime(e) => runtime(e),
            ContainerError::Helper(e) => helper(e),
            ContainerError::Process(e) => table(e),
            ContainerError::Console(_) | ContainerError::Stdio(_) | ContainerError::Tty(_) => {
                Code::INTERNAL
            }
        };
        status(code, e)
    }
}

impl From<guest_processes::Error> for ttrpc::Error {
    fn from(e: guest_processes::Error) -> Self {
        let code = match &e {
            guest_processes::Error::Table(e) => table(e),
            guest_processes::Error::BadProcess(_) => Code::INVALID_ARGUMENT,
            guest_processes::Error::Spawn(crate::spawn::Error::Spawn { .. })
            | guest_processes::Error::StillRunning(_) => Code::FAILED_PRECONDITION,
            guest_processes::Error::Spawn(_) => Code::INTERNAL,
        };
        status(code, e)
    }
}
