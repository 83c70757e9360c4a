//! The config file's schema (`/etc/sandbox/config.toml`, docs/config.md): one serde struct per
//! section, unknown keys refused, each value with its span so that an error names its line.

use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The whole file; every section and key may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub vm: Vm,
    #[serde(default)]
    pub agent: Agent,
    #[serde(default)]
    pub image: Image,
    #[serde(default)]
    pub state: State,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub shared_fs: SharedFs,
    #[serde(default)]
    pub confinement: Confinement,
    #[serde(default)]
    pub templates: Templates,
}

/// `[vm]`: each sandbox's microVM.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub vcpus: Option<Spanned<u32>>,
    pub memory_mib: Option<Spanned<u32>>,
    pub kernel: Option<Spanned<PathBuf>>,
    pub root_image: Option<Spanned<PathBuf>>,
    pub initrd: Option<Spanned<PathBuf>>,
    pub vmm: Option<Spanned<PathBuf>>,
    pub vmm_log_level: Option<Spanned<String>>,
}

/// `[agent]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub timeout_secs: Option<Spanned<u32>>,
}

/// `[image]`: container images (erofs) built from bundles' rootfs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub cache: Option<Spanned<PathBuf>>,
}

/// `[state]`: where each front end keeps its containers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub root: Option<Spanned<PathBuf>>,
    pub shim_root: Option<Spanned<PathBuf>>,
}

/// `[network]` (issue 17).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub model: Option<Spanned<String>>,
}

/// `[shared_fs]` (issue 18).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedFs {
    pub kind: Option<Spanned<String>>,
    pub cache: Option<Spanned<String>>,
}

/// `[confinement]` (issue 20).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    pub seccomp: Option<Spanned<String>>,
    pub jailer: Option<Spanned<bool>>,
    pub uid_base: Option<Spanned<u32>>,
    pub uid_count: Option<Spanned<u32>>,
}

/// `[templates]` (issue 21).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    pub enabled: Option<Spanned<bool>>,
    pub dir: Option<Spanned<PathBuf>>,
}

/// What is wrong with a file's text: where, which key (when one is concerned), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub line: usize,
    pub column: usize,
    pub key: Option<String>,
    pub message: String,
}

/// Parses `text`: first as TOML (a syntax error has no key), then into the schema (an unknown
/// key, a wrong type or a negative number is named by its dotted key).
pub fn parse(text: &str) -> Result<File, Fault> {
    let tree = DeTable::parse(text).map_err(|e| fault(text, e.span(), None, e.message()))?;
    toml::from_str(text).map_err(|e| {
        let key = e
            .span()
            .and_then(|span| key_at(tree.get_ref(), span.start, &mut Vec::new()));
        fault(text, e.span(), key, e.message())
    })
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn fault(text: &str, span: Option<Range<usize>>, key: Option<String>, message: &str) -> Fault {
    let (line, column) = line_column(text, span.map_or(0, |s| s.start));
    Fault {
        line,
        column,
        key,
        // The parser's messages sometimes end with a newline.
        message: message.trim_end().to_string(),
    }
}

/// The dotted key whose name or value holds byte `offset`, the deepest one.
fn key_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> Option<String> {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(found) = key_at(inner, offset, path) {
                return Some(found);
            }
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return Some(path.join("."));
        }
        path.pop();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_with_its_spans() {
        let text =
            "[vm]\nvcpus = 2\nmemory_mib = 512\nkernel = \"/k\"\n\n[templates]\nenabled = false\n";
        let f = parse(text).unwrap();
        let vcpus = f.vm.vcpus.unwrap();
        assert_eq!(*vcpus.get_ref(), 2);
        assert_eq!(line_column(text, vcpus.span().start), (2, 9));
        assert_eq!(f.vm.kernel.unwrap().into_inner(), PathBuf::from("/k"));
        assert_eq!(f.templates.enabled.map(Spanned::into_inner), Some(false));
        assert!(f.agent.timeout_secs.is_none());
    }

    #[test]
    fn faults_name_line_column_and_key() {
        let f = parse("[vm]\nvcpus = 1\nmemroy_mib = 4\n").unwrap_err();
        assert_eq!((f.line, f.column), (3, 1));
        assert_eq!(f.key.as_deref(), Some("vm.memroy_mib"));
        let f = parse("[vm]\nmemory_mib = \"lots\"\n").unwrap_err();
        assert_eq!((f.line, f.key.as_deref()), (2, Some("vm.memory_mib")));
        let f = parse("[vm\n").unwrap_err();
        assert_eq!((f.line, f.key), (1, None));
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("a\nbé=c", 5), (2, 3));
        assert_eq!(line_column("", 0), (1, 1));
    }
}
