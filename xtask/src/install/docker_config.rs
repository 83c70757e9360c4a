//! Docker's daemon.json: registering `sandbox` as a runtime
//! (`"runtimes": {"sandbox": {"path": …}}`) beside the user's other keys, and removing it.

use std::path::Path;

use anyhow::{anyhow, Result};
use serde_json::{json, Map, Value};

/// The runtime's name (`docker run --runtime sandbox`).
pub const NAME: &str = "sandbox";

/// The outcome of [`add`].
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// The keys created, outermost first; the runtime's last.
    Created(Vec<Vec<String>>),
    /// A runtime of that name is there already: left as it is.
    Present,
}

/// Adds `runtimes.sandbox` with `path` (and `--config FILE` among its `runtimeArgs` when the
/// config is not the default one) unless a runtime of that name exists.
pub fn add(v: &mut Value, path: &Path, config: Option<&Path>) -> Result<Added> {
    let top = v
        .as_object_mut()
        .ok_or_else(|| anyhow!("the file is not a JSON object"))?;
    let mut created = Vec::new();
    if !top.contains_key("runtimes") {
        top.insert("runtimes".into(), Value::Object(Map::new()));
        created.push(vec!["runtimes".to_string()]);
    }
    let runtimes = top["runtimes"]
        .as_object_mut()
        .ok_or_else(|| anyhow!("\"runtimes\" is not a JSON object"))?;
    if runtimes.contains_key(NAME) {
        return Ok(Added::Present);
    }
    let mut entry = json!({ "path": path.to_string_lossy() });
    if let Some(config) = config {
        entry["runtimeArgs"] = json!(["--config", config.to_string_lossy()]);
    }
    runtimes.insert(NAME.into(), entry);
    created.push(vec!["runtimes".to_string(), NAME.to_string()]);
    Ok(Added::Created(created))
}

/// Removes what [`add`] created: the runtime if it still runs `path`, and `runtimes` if the
/// install created it and it is empty now. Returns whether the runtime was removed.
pub fn remove(v: &mut Value, created: &[Vec<String>], path: &Path) -> bool {
    let Some(runtimes) = v.get_mut("runtimes").and_then(Value::as_object_mut) else {
        return false;
    };
    let ours = runtimes
        .get(NAME)
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        == Some(&*path.to_string_lossy());
    if ours {
        runtimes.remove(NAME);
    }
    let made_runtimes = created.iter().any(|k| k == &["runtimes".to_string()]);
    if made_runtimes && runtimes.is_empty() {
        if let Some(top) = v.as_object_mut() {
            top.remove("runtimes");
        }
    }
    ours
}

/// Parses daemon.json (an absent or empty file is `{}`); the error names the file.
pub fn parse(path: &Path, text: &str) -> Result<Value> {
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The text written back: pretty, two spaces, as Docker's documentation shows it.
pub fn render(v: &Value) -> String {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_keys_and_runtimes_are_kept_and_removal_restores_the_value() {
        let before = json!({
            "data-root": "/srv/docker",
            "runtimes": {"runsc": {"path": "/usr/bin/runsc"}},
            "log-driver": "journald"
        });
        let mut v = before.clone();
        let shim = Path::new("/opt/sb/bin/sandbox");
        let Added::Created(created) = add(&mut v, shim, None).unwrap() else {
            panic!("not added");
        };
        assert_eq!(v["data-root"], "/srv/docker");
        assert_eq!(v["runtimes"]["runsc"]["path"], "/usr/bin/runsc");
        assert_eq!(
            v["runtimes"]["sandbox"],
            json!({"path": "/opt/sb/bin/sandbox"})
        );
        assert_eq!(created, [vec!["runtimes".to_string(), NAME.to_string()]]);
        // Idempotent.
        assert_eq!(add(&mut v, shim, None).unwrap(), Added::Present);
        assert!(remove(&mut v, &created, shim));
        assert_eq!(v, before);
    }

    #[test]
    fn a_new_file_gets_runtimes_and_loses_it_again() {
        let mut v = parse(Path::new("d"), "").unwrap();
        let config = Path::new("/srv/sandbox.toml");
        let shim = Path::new("/p/bin/sandbox");
        let Added::Created(created) = add(&mut v, shim, Some(config)).unwrap() else {
            panic!("not added");
        };
        assert_eq!(
            v,
            json!({"runtimes": {"sandbox": {"path": "/p/bin/sandbox",
                "runtimeArgs": ["--config", "/srv/sandbox.toml"]}}})
        );
        assert!(remove(&mut v, &created, shim));
        assert_eq!(v, json!({}));
    }

    #[test]
    fn a_runtime_the_user_repointed_is_left() {
        let mut v = json!({});
        let created = match add(&mut v, Path::new("/p/bin/sandbox"), None).unwrap() {
            Added::Created(c) => c,
            Added::Present => panic!("present"),
        };
        v["runtimes"]["sandbox"]["path"] = json!("/elsewhere/sandbox");
        assert!(!remove(&mut v, &created, Path::new("/p/bin/sandbox")));
        assert_eq!(v["runtimes"]["sandbox"]["path"], "/elsewhere/sandbox");
    }

    #[test]
    fn bad_files_are_named() {
        assert_eq!(
            parse(Path::new("/etc/docker/daemon.json"), "{,}")
                .unwrap_err()
                .to_string(),
            "/etc/docker/daemon.json: key must be a string at line 1 column 2"
        );
        let mut v = json!([1]);
        assert_eq!(
            add(&mut v, Path::new("/x"), None).unwrap_err().to_string(),
            "the file is not a JSON object"
        );
    }
}
