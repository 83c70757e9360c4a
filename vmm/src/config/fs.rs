//! The `--fs tag=TAG,path=DIR[,ro]` flags and the `fs` entries of the JSON file: virtio-fs
//! shares, each checked (tag, directory) and their tags unique.

use std::path::PathBuf;

use serde::Deserialize;

use super::parse::{invalid, Origin};
use super::{ConfigError, FsConfig};
use crate::devices::virtio::fs::TAG_LEN;

/// An `fs` entry of the JSON file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFs {
    pub tag: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// The `--fs` flags if any were given, else the file's entries.
pub(super) fn shares(
    flags: Vec<String>,
    entries: Vec<FileFs>,
) -> Result<Vec<FsConfig>, ConfigError> {
    let (shares, origin) = if flags.is_empty() {
        let origin = Origin::Field("fs");
        let shares = entries
            .into_iter()
            .map(|e| FsConfig {
                tag: e.tag,
                path: e.path,
                read_only: e.read_only,
            })
            .collect::<Vec<_>>();
        (shares, origin)
    } else {
        let origin = Origin::Flag("fs");
        let shares = flags
            .iter()
            .map(|f| parse_fs(f, origin))
            .collect::<Result<Vec<_>, _>>()?;
        (shares, origin)
    };
    for (i, share) in shares.iter().enumerate() {
        check_fs(share, origin)?;
        if shares[..i].iter().any(|s| s.tag == share.tag) {
            return Err(invalid(
                origin,
                format!("tag {:?} is used twice", share.tag),
            ));
        }
    }
    Ok(shares)
}

/// Parses `tag=TAG,path=DIR[,ro]` (in any order).
fn parse_fs(text: &str, origin: Origin) -> Result<FsConfig, ConfigError> {
    const SYNTAX: &str = "expected tag=TAG,path=DIR[,ro]";
    let (mut tag, mut path, mut read_only) = (None, None, false);
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("tag", v)) => tag = Some(v.to_owned()),
            Some(("path", v)) => path = Some(PathBuf::from(v)),
            None if part == "ro" => read_only = true,
            _ => {
                return Err(invalid(
                    origin,
                    format!("unknown option {part:?}; {SYNTAX}"),
                ))
            }
        }
    }
    match (tag, path) {
        (Some(tag), Some(path)) => Ok(FsConfig {
            tag,
            path,
            read_only,
        }),
        (None, _) => Err(invalid(origin, format!("no tag; {SYNTAX}"))),
        (_, None) => Err(invalid(origin, format!("no path; {SYNTAX}"))),
    }
}

fn check_fs(share: &FsConfig, origin: Origin) -> Result<(), ConfigError> {
    let tag = &share.tag;
    if tag.is_empty()
        || tag.len() > TAG_LEN
        || !tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    {
        return Err(invalid(
            origin,
            format!(
                "tag {tag:?} must be 1 to {TAG_LEN} printable ASCII characters, no space or comma"
            ),
        ));
    }
    let path = &share.path;
    if path.to_str().is_none() {
        return Err(invalid(
            origin,
            format!("{}: the path must be valid UTF-8", path.display()),
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(invalid(
            origin,
            format!("{}: not a directory", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(invalid(
            origin,
            format!("{}: No such directory", path.display()),
        )),
        Err(e) => Err(invalid(origin, format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<Vec<FsConfig>, String> {
        shares(args.iter().map(|a| a.to_string()).collect(), Vec::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_parse_in_any_order_and_tags_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let got = flags(&[&format!("tag=a,path={d}"), &format!("ro,path={d},tag=b")]).unwrap();
        assert_eq!(
            got,
            [
                FsConfig {
                    tag: "a".into(),
                    path: d.clone().into(),
                    read_only: false
                },
                FsConfig {
                    tag: "b".into(),
                    path: d.clone().into(),
                    read_only: true
                }
            ]
        );
        assert_eq!(
            flags(&[&format!("tag=a,path={d}"), &format!("tag=a,path={d},ro")]).unwrap_err(),
            "--fs: tag \"a\" is used twice"
        );
    }

    #[test]
    fn json_entries_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"{{"fs": [{{"tag": "vol", "path": "{}", "read_only": true}}]}}"#,
            dir.path().display()
        );
        let file: super::super::FileConfig = serde_json::from_str(&json).unwrap();
        let got = shares(Vec::new(), file.fs).unwrap();
        assert_eq!(
            got,
            [FsConfig {
                tag: "vol".into(),
                path: dir.path().to_owned(),
                read_only: true
            }]
        );
        let bad = r#"{"fs": [{"tag": "vol", "dir": "/x"}]}"#;
        let e = serde_json::from_str::<super::super::FileConfig>(bad).unwrap_err();
        assert!(e.to_string().contains("unknown field `dir`"), "{e}");
    }

    #[test]
    fn bad_shares_name_the_flag_or_field_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let syntax = "expected tag=TAG,path=DIR[,ro]";
        assert_eq!(
            flags(&[&format!("path={d}")]).unwrap_err(),
            format!("--fs: no tag; {syntax}")
        );
        assert_eq!(
            flags(&["tag=a"]).unwrap_err(),
            format!("--fs: no path; {syntax}")
        );
        assert_eq!(
            flags(&[&format!("tag=a,path={d},rw")]).unwrap_err(),
            format!("--fs: unknown option \"rw\"; {syntax}")
        );
        let long = "t".repeat(37);
        for tag in ["", "a b", &long] {
            let e = flags(&[&format!("tag={tag},path={d}")]).unwrap_err();
            assert!(
                e.starts_with(&format!("--fs: tag {tag:?} must be 1 to 36")),
                "{e}"
            );
        }
        assert_eq!(
            flags(&["tag=a,path=/nope"]).unwrap_err(),
            "--fs: /nope: No such directory"
        );
        assert_eq!(
            flags(&[&format!("tag=a,path={}", file.display())]).unwrap_err(),
            format!("--fs: {}: not a directory", file.display())
        );
        let entry = FileFs {
            tag: "x".into(),
            path: "/nope".into(),
            read_only: true,
        };
        assert_eq!(
            shares(Vec::new(), vec![entry]).unwrap_err().to_string(),
            "fs (in --config): /nope: No such directory"
        );
    }
}
