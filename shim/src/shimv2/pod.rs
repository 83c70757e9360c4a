//! Pods: which containers share one shim (and one pod), read from the CRI annotations of a
//! bundle's config.json, the way containerd's runc shim groups them.

use std::path::Path;

/// Annotation naming the pod sandbox a CRI container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation saying whether a CRI container is the pod's sandbox (pause) or an app container.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// Value of [`CONTAINER_TYPE_ANNOTATION`] for the pause container.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";

/// Errors reading a bundle's annotations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
}

/// The role of a container in its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not a CRI container (e.g. `ctr run`): a pod of its own.
    Standalone,
    /// The pod's pause container: it boots the pod's VM and holds the pod's namespaces.
    PodSandbox,
    /// An app container of the pod `sandbox_id`.
    PodMember { sandbox_id: String },
}

impl Role {
    /// The role from a spec's annotations.
    pub fn from_spec(spec: &serde_json::Value) -> Role {
        let annotations = &spec["annotations"];
        let sandbox_id = annotations[SANDBOX_ID_ANNOTATION].as_str().unwrap_or("");
        let kind = annotations[CONTAINER_TYPE_ANNOTATION]
            .as_str()
            .unwrap_or("");
        if kind == CONTAINER_TYPE_SANDBOX {
            Role::PodSandbox
        } else if !sandbox_id.is_empty() {
            Role::PodMember {
                sandbox_id: sandbox_id.to_string(),
            }
        } else {
            Role::Standalone
        }
    }

    /// The id that names the shim serving container `id`: the pod's sandbox id for CRI
    /// containers, so every container of a pod reaches the same shim; else `id` itself.
    pub fn grouping(&self, id: &str) -> String {
        match self {
            Role::PodMember { sandbox_id } => sandbox_id.clone(),
            Role::Standalone | Role::PodSandbox => id.to_string(),
        }
    }
}

/// The spec of the bundle in `dir` (config.json).
pub fn read_spec(dir: &Path) -> Result<serde_json::Value, Error> {
    let path = dir.join("config.json");
    let text = std::fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| Error::Json { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_of_a_pod_group_by_sandbox_id() {
        let pause = json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "sandbox", SANDBOX_ID_ANNOTATION: "pod1"}});
        let app = json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "container", SANDBOX_ID_ANNOTATION: "pod1"}});
        assert_eq!(Role::from_spec(&pause), Role::PodSandbox);
        assert_eq!(Role::from_spec(&pause).grouping("pod1"), "pod1");
        assert_eq!(
            Role::from_spec(&app),
            Role::PodMember {
                sandbox_id: "pod1".into()
            }
        );
        assert_eq!(Role::from_spec(&app).grouping("app1"), "pod1");
    }

    #[test]
    fn a_container_without_cri_annotations_is_its_own_group() {
        for spec in [
            json!({}),
            json!({"annotations": {}}),
            json!({"annotations": null}),
        ] {
            assert_eq!(Role::from_spec(&spec), Role::Standalone);
            assert_eq!(Role::from_spec(&spec).grouping("c1"), "c1");
        }
    }

    #[test]
    fn a_bad_config_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_spec(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let err = read_spec(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
