//! The bundle's `config.json`: loading it with oci-spec and validating it before anything is created.
//! Every error names the JSON path of the failing field, e.g. `process.rlimits[0].type: ...`.

mod validate;

use std::path::{Path, PathBuf};

pub use oci_spec::runtime::Spec;
pub use validate::validate;

/// A spec that could not be loaded or did not pass validation.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A field failed to parse or validate; `field` is its JSON path.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON path, e.g. `process.rlimits[0].type`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl SpecError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The JSON path of the failing field, if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            SpecError::Invalid { field, .. } => Some(field),
            SpecError::Read { .. } => None,
        }
    }
}

/// Reads `<bundle>/config.json`, parses and validates it.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    let spec = parse(&text)?;
    validate(&spec, bundle)?;
    Ok(spec)
}

/// Parses a spec from JSON text, reporting the JSON path of any field that does not parse.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" || path.is_empty() {
            "config.json".to_string()
        } else {
            path
        };
        let message = describe_serde_error(&field, &e.inner().to_string());
        SpecError::Invalid { field, message }
    })
}

/// Parses a `process.json` (as given to exec -p) with the same error style, under `process`.
pub fn parse_process(text: &str) -> Result<oci_spec::runtime::Process, SpecError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" || path.is_empty() {
            "process".to_string()
        } else {
            format!("process.{path}")
        };
        let message = describe_serde_error(&field, &e.inner().to_string());
        SpecError::Invalid { field, message }
    })
}

/// Turns serde's "unknown variant `X`, expected one of ..." into "unknown rlimit X".
fn describe_serde_error(field: &str, message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown variant `") else {
        return strip_position(message);
    };
    let value = rest.split('`').next().unwrap_or_default();
    let kind = if field.contains("rlimits") {
        "rlimit"
    } else if field.contains("namespaces") {
        "namespace type"
    } else if field.contains("capabilities") {
        "capability"
    } else if field.contains("architectures") {
        "seccomp architecture"
    } else if field.ends_with(".op") {
        "seccomp operator"
    } else if field.contains("flags") {
        "seccomp flag"
    } else if field.contains("seccomp") {
        "seccomp action"
    } else if field.contains("devices") {
        "device type"
    } else {
        "value"
    };
    format!("unknown {kind} {value}")
}

/// serde_json appends " at line L column C"; the JSON path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Validates a process given to exec (same rules as `process` in config.json).
pub fn validate_process(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    validate::validate_process_fields(process, "process")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_rlimit_names_the_field() {
        let text = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},
            "rlimits":[{"type":"RLIMIT_BOGUS","hard":1,"soft":1}]}}"#;
        let err = parse(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process.rlimits[0].type: unknown rlimit RLIMIT_BOGUS"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = r#"{"ociVersion":"1.0.2","hostname":5}"#;
        let err = parse(text).unwrap_err();
        assert_eq!(err.field(), Some("hostname"));
    }
}
