//! `sandbox spec`: a default config.json like `runc spec` writes (busybox-friendly: sh, a
//! read-only root, the usual mounts, masked and read-only paths).

use std::path::Path;

use super::CliError;

/// The default spec, runc's `runc spec` (see default-spec.json; the tests build their
/// bundles from the same file).
pub const DEFAULT_SPEC_JSON: &str = include_str!("default-spec.json");

/// The default spec as JSON.
pub fn default_spec() -> serde_json::Value {
    serde_json::from_str(DEFAULT_SPEC_JSON).expect("default-spec.json is valid JSON")
}

/// Writes `<bundle>/config.json`, refusing to overwrite one.
pub fn write_default(bundle: &Path) -> Result<(), CliError> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(CliError::Usage(format!(
            "{}: already exists",
            path.display()
        )));
    }
    let text = serde_json::to_string_pretty(&default_spec()).expect("serialises");
    std::fs::write(&path, text).map_err(|source| CliError::File { path, source })
}
