//! What every Task API call shares: the ttrpc statuses it answers with (NOT_FOUND for an
//! unknown task, the agent's own code where it answered) and agent calls off the executor.

use containerd_shim_protos::ttrpc::{self, Code};

use crate::agent_client;

/// A ttrpc status error.
pub(super) fn error(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// NOT_FOUND for task `id` or its process `exec_id`.
pub(super) fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        error(Code::NOT_FOUND, format!("task {id} not found"))
    } else {
        error(
            Code::NOT_FOUND,
            format!("process {exec_id} of task {id} not found"),
        )
    }
}

/// An agent error as a ttrpc status, keeping the agent's code where it answered.
pub(super) fn agent_error(what: &str, e: agent_client::Error) -> ttrpc::Error {
    let code = match e.code() {
        Some(Code::FAILED_PRECONDITION) => Code::FAILED_PRECONDITION,
        Some(Code::NOT_FOUND) => Code::NOT_FOUND,
        Some(Code::INVALID_ARGUMENT) => Code::INVALID_ARGUMENT,
        Some(Code::ALREADY_EXISTS) => Code::ALREADY_EXISTS,
        _ => Code::INTERNAL,
    };
    error(code, format!("{what}: {e}"))
}

/// Runs `f` (blocking agent or controller calls) on a worker thread.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ttrpc::Error> + Send + 'static,
) -> Result<T, ttrpc::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(Code::INTERNAL, format!("worker thread: {e}")))?
}
