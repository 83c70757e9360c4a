//! Joining a pod: an app container of a CRI pod is created in the VM its pod's sandbox
//! container booted, in that container's namespaces, with its image on one of the VM's slots.

use std::path::Path;

use containerd_shim_protos::ttrpc::{self, Code};

use crate::agent_client::AgentClient;
use crate::controller::Sandbox;

use super::fifo_relay;
use super::process::StdioPaths;
use super::rpc::error;
use super::tasks::Backend;
use super::{spec, vm_id};

/// Creates a container of a pod in the pod's VM: its namespaces are the pod's (the sandbox
/// container's, by its pid in the guest) and its image arrives on one of the pod's slots.
pub(super) fn join_pod(
    sandbox: &Sandbox,
    pod_id: &str,
    pod_vm: Option<(AgentClient, u32)>,
    id: &str,
    bundle: &Path,
    mut spec: serde_json::Value,
    stdio: &StdioPaths,
) -> Result<(Backend, u32), ttrpc::Error> {
    let (client, pod_pid) =
        pod_vm.ok_or_else(|| error(Code::INTERNAL, format!("pod {pod_id} has no VM")))?;
    join_namespaces(&mut spec, pod_pid);
    spec::adapt_mounts(&mut spec);
    let pid = sandbox
        .join_pod(
            &vm_id(pod_id),
            &vm_id(id),
            bundle,
            &spec.to_string(),
            fifo_relay::announced(stdio),
            &client,
        )
        .map_err(|e| {
            error(
                Code::INTERNAL,
                format!("creating {id} in pod {pod_id}: {e}"),
            )
        })?;
    Ok((
        Backend::Member {
            client,
            pod_id: pod_id.to_string(),
        },
        pid,
    ))
}

/// Points a pod member's namespace paths (CRI names the pause process's namespaces on the
/// host: `/proc/<pid>/ns/ipc`) at the sandbox container's process in the guest.
pub fn join_namespaces(spec: &mut serde_json::Value, sandbox_pid: u32) {
    let Some(namespaces) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return;
    };
    for ns in namespaces {
        if ns["path"].as_str().is_none_or(str::is_empty) {
            continue;
        }
        let file = match ns["type"].as_str().unwrap_or("") {
            "network" => "net",
            "mount" => "mnt",
            other => other,
        }
        .to_string();
        ns["path"] = serde_json::Value::String(format!("/proc/{sandbox_pid}/ns/{file}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_join_the_sandbox_containers_namespaces_in_the_guest() {
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "mount"},
            {"type": "uts", "path": ""}
        ]}});
        join_namespaces(&mut spec, 7);
        let ns = &spec["linux"]["namespaces"];
        assert_eq!(ns[0]["path"], "/proc/7/ns/pid");
        assert_eq!(ns[1]["path"], "/proc/7/ns/ipc");
        assert_eq!(ns[2]["path"], "/proc/7/ns/net");
        assert!(ns[3].get("path").is_none(), "a new namespace stays new");
        assert_eq!(ns[4]["path"], "");
        let mut bare = json!({});
        join_namespaces(&mut bare, 7);
        assert_eq!(bare, json!({}));
    }
}
