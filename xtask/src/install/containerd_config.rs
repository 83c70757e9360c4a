//! containerd's config.toml: adding our runtime handler (CRI's `runtimes.sandbox`) with
//! `toml_edit`, so that the user's comments, order and formatting survive, and removing it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use toml_edit::{value, DocumentMut, Item, Table};

/// The CRI runtime handler (RuntimeClass `handler`) install adds.
pub const HANDLER: &str = "sandbox";
/// Our runtime type: containerd runs `containerd-shim-sandbox-v2`.
pub const RUNTIME_TYPE: &str = "io.containerd.sandbox.v2";
/// The text of a config install creates (containerd 1.6's current version).
pub const NEW_FILE: &str = "version = 2\n";

/// What the handler's table says.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `runtime_path`: the shim, so containerd needs no `$PATH` entry for the prefix.
    pub shim: PathBuf,
    /// `options.ConfigPath`: the config file the shim reads.
    pub config: PathBuf,
}

/// The outcome of [`add`].
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// The tables created, outermost first; the handler's last.
    Created(Vec<Vec<String>>),
    /// A handler of that name is there already: left as it is.
    Present,
}

/// Where CRI's runtimes live for the config's `version` (1 when absent).
fn runtimes_path(doc: &DocumentMut) -> Result<&'static [&'static str]> {
    match doc.get("version").map(Item::as_integer) {
        None | Some(Some(1)) => Ok(&["plugins", "cri", "containerd", "runtimes"]),
        Some(Some(2)) => Ok(&[
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]),
        Some(Some(3)) => Ok(&[
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]),
        Some(other) => bail!(
            "version = {}: not a containerd config version this install knows (1, 2, 3)",
            other.map_or_else(|| "?".to_string(), |v| v.to_string())
        ),
    }
}

/// Adds the handler unless one of that name exists; every other setting is kept as it is.
pub fn add(doc: &mut DocumentMut, rt: &Runtime) -> Result<Added> {
    let path = runtimes_path(doc)?;
    let mut keys: Vec<String> = Vec::new();
    let mut created = Vec::new();
    let mut table = doc.as_table_mut();
    for key in path {
        keys.push(key.to_string());
        if !table.contains_key(key) {
            let mut t = Table::new();
            t.set_implicit(true);
            table.insert(key, Item::Table(t));
            created.push(keys.clone());
        }
        table = table
            .get_mut(key)
            .and_then(Item::as_table_mut)
            .ok_or_else(|| {
                anyhow!(
                    "{} is not a [table] (an inline table or a value): add the runtime by hand \
                     (docs/containerd.md)",
                    keys.join(".")
                )
            })?;
    }
    if table.contains_key(HANDLER) {
        return Ok(Added::Present);
    }
    let mut handler = Table::new();
    handler.insert("runtime_type", value(RUNTIME_TYPE));
    handler.insert("runtime_path", value(rt.shim.to_string_lossy().as_ref()));
    let mut options = Table::new();
    options.insert("ConfigPath", value(rt.config.to_string_lossy().as_ref()));
    handler.insert("options", Item::Table(options));
    table.insert(HANDLER, Item::Table(handler));
    keys.push(HANDLER.to_string());
    created.push(keys);
    Ok(Added::Created(created))
}

/// Removes what [`add`] created: the handler (if it is still ours) and the tables made for
/// it that are empty now. Returns whether the handler was removed.
pub fn remove(doc: &mut DocumentMut, created: &[Vec<String>]) -> bool {
    let Some((handler, parents)) = created.split_last() else {
        return false;
    };
    let ours = table_at(doc, handler)
        .is_some_and(|t| t.get("runtime_type").and_then(Item::as_str) == Some(RUNTIME_TYPE));
    if ours {
        remove_at(doc, handler);
    }
    for path in parents.iter().rev() {
        if table_at(doc, path).is_some_and(Table::is_empty) {
            remove_at(doc, path);
        }
    }
    ours
}

/// The `options.ConfigPath` of every handler of our runtime type: the config files a
/// running sandbox of this containerd may have been started with.
pub fn config_paths(doc: &DocumentMut) -> Vec<PathBuf> {
    let Ok(path) = runtimes_path(doc) else {
        return Vec::new();
    };
    let keys: Vec<String> = path.iter().map(|k| k.to_string()).collect();
    let Some(runtimes) = table_at(doc, &keys) else {
        return Vec::new();
    };
    runtimes
        .iter()
        .filter_map(|(_, item)| item.as_table())
        .filter(|t| t.get("runtime_type").and_then(Item::as_str) == Some(RUNTIME_TYPE))
        .filter_map(|t| {
            t.get("options")?
                .get("ConfigPath")?
                .as_str()
                .map(PathBuf::from)
        })
        .collect()
}

fn table_at<'a>(doc: &'a DocumentMut, path: &[String]) -> Option<&'a Table> {
    path.iter()
        .try_fold(doc.as_table(), |t, key| t.get(key)?.as_table())
}

fn remove_at(doc: &mut DocumentMut, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let parent = parents
        .iter()
        .try_fold(doc.as_table_mut(), |t, key| t.get_mut(key)?.as_table_mut());
    if let Some(parent) = parent {
        parent.remove(last);
    }
}

/// Parses a config's text; the error names the file.
pub fn parse(path: &Path, text: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER_CONFIG: &str = r#"# my containerd
version = 2
root = "/var/lib/containerd"   # keep me

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true

[metrics]
  address = ""
"#;

    fn rt() -> Runtime {
        Runtime {
            shim: "/opt/sb/bin/containerd-shim-sandbox-v2".into(),
            config: "/etc/sandbox/config.toml".into(),
        }
    }

    #[test]
    fn adding_keeps_every_other_line_and_removing_restores_the_text() {
        let mut doc = parse(Path::new("c"), USER_CONFIG).unwrap();
        let Added::Created(created) = add(&mut doc, &rt()).unwrap() else {
            panic!("not added");
        };
        let text = doc.to_string();
        // Every line of the user's file is still there, comments included.
        for line in USER_CONFIG.lines() {
            assert!(text.lines().any(|l| l == line), "{line:?} lost:\n{text}");
        }
        let added = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sandbox]\n\
                     runtime_type = \"io.containerd.sandbox.v2\"\n\
                     runtime_path = \"/opt/sb/bin/containerd-shim-sandbox-v2\"\n\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sandbox.options]\n\
                     ConfigPath = \"/etc/sandbox/config.toml\"\n";
        assert!(text.contains(added), "{text}");
        assert_eq!(created.len(), 1, "only the handler's table is new");
        // The result is what containerd reads: the same runtimes plus ours.
        let value: toml::Table = toml::from_str(&text).unwrap();
        let runtimes = &value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(
            runtimes["sandbox"]["options"]["ConfigPath"].as_str(),
            Some("/etc/sandbox/config.toml")
        );

        // A second install finds it there and changes nothing.
        assert_eq!(add(&mut doc, &rt()).unwrap(), Added::Present);
        assert_eq!(doc.to_string(), text);
        assert_eq!(
            config_paths(&doc),
            [PathBuf::from("/etc/sandbox/config.toml")]
        );

        assert!(remove(&mut doc, &created));
        assert_eq!(doc.to_string(), USER_CONFIG);
    }

    #[test]
    fn a_new_file_gets_the_tables_it_needs_and_loses_them_again() {
        let mut doc = parse(Path::new("c"), NEW_FILE).unwrap();
        let Added::Created(created) = add(&mut doc, &rt()).unwrap() else {
            panic!("not added");
        };
        assert_eq!(created.len(), 5, "{created:?}");
        let value: toml::Table = toml::from_str(&doc.to_string()).unwrap();
        assert_eq!(
            value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["sandbox"]
                ["runtime_type"]
                .as_str(),
            Some(RUNTIME_TYPE)
        );
        assert!(remove(&mut doc, &created));
        assert_eq!(doc.to_string(), NEW_FILE);
    }

    #[test]
    fn the_table_path_follows_the_config_version() {
        for (text, top) in [
            ("", "cri"),
            ("version = 3\n", "io.containerd.cri.v1.runtime"),
        ] {
            let mut doc = parse(Path::new("c"), text).unwrap();
            add(&mut doc, &rt()).unwrap();
            let value: toml::Table = toml::from_str(&doc.to_string()).unwrap();
            assert!(
                value["plugins"][top]["containerd"]["runtimes"]["sandbox"].is_table(),
                "{doc}"
            );
        }
        let doc = parse(Path::new("c"), "version = 9\n").unwrap();
        assert_eq!(
            runtimes_path(&doc).unwrap_err().to_string(),
            "version = 9: not a containerd config version this install knows (1, 2, 3)"
        );
    }

    #[test]
    fn a_handler_changed_by_the_user_is_not_removed() {
        let mut doc = parse(Path::new("c"), NEW_FILE).unwrap();
        let Added::Created(created) = add(&mut doc, &rt()).unwrap() else {
            panic!("not added");
        };
        let text = doc
            .to_string()
            .replace(RUNTIME_TYPE, "io.containerd.kata.v2");
        let mut doc = parse(Path::new("c"), &text).unwrap();
        assert!(!remove(&mut doc, &created));
        assert!(doc.to_string().contains("io.containerd.kata.v2"));
    }

    #[test]
    fn an_inline_runtimes_table_is_refused_with_its_key() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
                    runtimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n";
        let mut doc = parse(Path::new("c"), text).unwrap();
        assert_eq!(
            add(&mut doc, &rt()).unwrap_err().to_string(),
            "plugins.io.containerd.grpc.v1.cri.containerd.runtimes is not a [table] (an inline \
             table or a value): add the runtime by hand (docs/containerd.md)"
        );
    }
}
