//! Kconfig fragments and their verification against the `.config` the kernel build produced.
//! Kconfig silently drops options whose dependencies are unmet; this catches that.

use std::collections::HashMap;
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("{file}:{line}: not a Kconfig assignment: {text:?}")]
    Syntax {
        file: String,
        line: usize,
        text: String,
    },
    #[error(
        "{} option(s) of the fragment are not set as requested in .config: {}",
        .0.len(),
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Mismatch(Vec<Mismatch>),
}

/// One option whose value in `.config` differs from the fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub name: String,
    pub wanted: String,
    pub got: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} wanted {} but is {}",
            self.name, self.wanted, self.got
        )
    }
}

/// A fragment: option name → wanted value, where `n` stands for `# CONFIG_X is not set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub options: Vec<(String, String)>,
}

/// Parses one line: `CONFIG_X=v`, `# CONFIG_X is not set`, or `None` for comments/blank.
fn parse_line(line: &str) -> Option<Result<(String, String), ()>> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# CONFIG_") {
        return rest
            .strip_suffix(" is not set")
            .map(|name| Ok((format!("CONFIG_{name}"), "n".to_string())));
    }
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    match line.split_once('=') {
        Some((name, value)) if name.starts_with("CONFIG_") && !name.contains(' ') => {
            Some(Ok((name.to_string(), value.to_string())))
        }
        _ => Some(Err(())),
    }
}

impl Fragment {
    /// `file` is only used in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Fragment, Error> {
        let mut options = Vec::new();
        for (i, line) in text.lines().enumerate() {
            match parse_line(line) {
                None => {}
                Some(Ok(opt)) => options.push(opt),
                Some(Err(())) => {
                    return Err(Error::Syntax {
                        file: file.to_string(),
                        line: i + 1,
                        text: line.to_string(),
                    })
                }
            }
        }
        Ok(Fragment { options })
    }

    /// Checks every option against a `.config`; an option absent from it counts as `n`.
    pub fn verify(&self, dot_config: &str) -> Result<(), Error> {
        let actual: HashMap<String, String> = dot_config
            .lines()
            .filter_map(parse_line)
            .filter_map(Result::ok)
            .collect();
        let mismatches: Vec<Mismatch> = self
            .options
            .iter()
            .filter_map(|(name, wanted)| {
                let got = actual.get(name).map(String::as_str).unwrap_or("n");
                (got != wanted).then(|| Mismatch {
                    name: name.clone(),
                    wanted: wanted.clone(),
                    got: got.to_string(),
                })
            })
            .collect();
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(Error::Mismatch(mismatches))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str = "\
# comment
CONFIG_PVH=y

CONFIG_NR_CPUS=64
# CONFIG_PCI is not set
CONFIG_EROFS_FS=y
";

    #[test]
    fn parses_assignments_and_not_set() {
        let f = Fragment::parse("f", FRAGMENT).unwrap();
        assert_eq!(
            f.options,
            vec![
                ("CONFIG_PVH".into(), "y".into()),
                ("CONFIG_NR_CPUS".into(), "64".into()),
                ("CONFIG_PCI".into(), "n".into()),
                ("CONFIG_EROFS_FS".into(), "y".into()),
            ]
        );
    }

    #[test]
    fn matching_config_passes() {
        let f = Fragment::parse("f", FRAGMENT).unwrap();
        let config =
            "CONFIG_PVH=y\nCONFIG_NR_CPUS=64\n# CONFIG_PCI is not set\nCONFIG_EROFS_FS=y\n";
        f.verify(config).unwrap();
        // An option hidden by unmet dependencies does not appear at all: that is `n`.
        let config = "CONFIG_PVH=y\nCONFIG_NR_CPUS=64\nCONFIG_EROFS_FS=y\n";
        f.verify(config).unwrap();
    }

    #[test]
    fn missing_option_is_named() {
        let f = Fragment::parse("f", FRAGMENT).unwrap();
        let config = "CONFIG_PVH=y\nCONFIG_NR_CPUS=8\n# CONFIG_EROFS_FS is not set\n";
        let err = f.verify(config).unwrap_err();
        assert_eq!(
            err,
            Error::Mismatch(vec![
                Mismatch {
                    name: "CONFIG_NR_CPUS".into(),
                    wanted: "64".into(),
                    got: "8".into()
                },
                Mismatch {
                    name: "CONFIG_EROFS_FS".into(),
                    wanted: "y".into(),
                    got: "n".into()
                },
            ])
        );
        let msg = err.to_string();
        assert!(msg.contains("CONFIG_EROFS_FS wanted y but is n"), "{msg}");
        assert!(msg.contains("CONFIG_NR_CPUS wanted 64 but is 8"), "{msg}");
        assert!(!msg.contains("CONFIG_PVH"), "{msg}");
    }

    #[test]
    fn option_set_but_wanted_off_is_named() {
        let f = Fragment::parse("f", "# CONFIG_PCI is not set\n").unwrap();
        let err = f.verify("CONFIG_PCI=y\n").unwrap_err();
        assert!(err.to_string().contains("CONFIG_PCI wanted n but is y"));
    }

    #[test]
    fn garbage_line_is_a_syntax_error_with_its_line_number() {
        let err = Fragment::parse("guest.config", "CONFIG_A=y\nPVH=y\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest.config:2: not a Kconfig assignment: \"PVH=y\""
        );
    }

    #[test]
    fn the_guest_fragment_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-kernel/guest.config");
        let text = std::fs::read_to_string(path).unwrap();
        let f = Fragment::parse(path, &text).unwrap();
        let has = |n: &str, v: &str| f.options.iter().any(|(a, b)| a == n && b == v);
        assert!(has("CONFIG_PVH", "y"));
        assert!(has("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"));
        assert!(has("CONFIG_MODULES", "n"));
    }
}
