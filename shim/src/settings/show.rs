//! `sandbox config`: the effective settings as a config file, each value followed by where it
//! came from (default, file and line, environment variable, flag).

use std::fmt::Write as _;

use super::keys::entries;
use super::Settings;

/// The text `sandbox config` prints; valid TOML (the sources are comments).
pub fn render(s: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The effective configuration; after each value, where it came from (docs/config.md)."
    );
    let found = if s.config_found {
        ""
    } else {
        "; not found, so no file applies"
    };
    let _ = writeln!(
        out,
        "# config file: {} ({}{found})",
        s.config_file.value.display(),
        s.config_file.source
    );
    let rows: Vec<(&str, String, String)> = entries(s)
        .into_iter()
        .map(|e| {
            let body = match &e.value {
                Some(v) => format!("{} = {v}", e.key),
                None => format!("# {} unset", e.key),
            };
            (e.section, body, e.source.to_string())
        })
        .collect();
    let width = rows
        .iter()
        .map(|(_, body, _)| body.len())
        .max()
        .unwrap_or(0);
    let mut section = "";
    for (sect, body, source) in rows {
        if sect != section {
            let _ = writeln!(out, "\n[{sect}]");
            section = sect;
        }
        let _ = writeln!(out, "{body:<width$}  # {source}");
    }
    out
}

/// The config file `cargo xtask install` writes when there is none (`sandbox config
/// --default`): every key commented out with its default and what it is.
pub fn render_default(defaults: &Settings) -> String {
    let mut out = String::from(
        "# sandbox's config file, read by the sandbox CLI and containerd-shim-sandbox-v2\n\
         # (docs/config.md). Every key is shown commented out with its default: uncomment a\n\
         # line to change it. Precedence: default < this file < SANDBOX_* variables < flags.\n",
    );
    let mut section = "";
    for e in entries(defaults) {
        if e.section != section {
            let _ = writeln!(out, "\n[{}]", e.section);
            section = e.section;
        }
        let _ = writeln!(out, "# {}", e.doc);
        let _ = match &e.value {
            Some(v) => writeln!(out, "# {} = {v}", e.key),
            None => writeln!(out, "# {} (unset)", e.key),
        };
    }
    out
}
