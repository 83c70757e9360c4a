//! The guest initramfs: rootfs-image/initramfs.list (gen_init_cpio syntax) → newc cpio, and
//! the same tree as the erofs root image (setup::rootfs).
//! Entries get fixed owners, inode numbers and mtime 0, so equal inputs give equal bytes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::cache::{self, Cache};

/// Bump when the archive layout written below changes.
const RECIPE_VERSION: &str = "initramfs-recipe-4";
/// Initramfs builds kept in the cache (the current one included).
const KEEP_IMAGES: usize = 5;
/// The `file` source that stands for the static agent binary.
pub const AGENT_SOURCE: &str = "@agent";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}:{line}: {reason}: {text:?}")]
    Syntax {
        file: String,
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("{file}:{line}: parent directory of {name} is not declared before it")]
    MissingParent {
        file: String,
        line: usize,
        name: String,
    },
    #[error("cannot read {source_name} for {name}: {error}")]
    Source {
        name: String,
        source_name: String,
        error: io::Error,
    },
    #[error("{name} is too large for a newc archive ({len} bytes)")]
    TooLarge { name: String, len: usize },
    #[error("cannot write the archive: {0}")]
    Write(#[from] io::Error),
}

/// Where a regular file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Agent,
    /// Relative to the list's directory.
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Source),
    Node { block: bool, major: u32, minor: u32 },
    Symlink(String),
}

/// One archive entry; `name` has no leading slash, as the kernel's unpacker expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind,
}

impl Entry {
    fn mode(&self) -> u32 {
        let file_type = match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Node { block: false, .. } => S_IFCHR,
            Kind::Node { block: true, .. } => S_IFBLK,
            Kind::Symlink(_) => S_IFLNK,
        };
        file_type | self.perm
    }
}

/// Parses a list in gen_init_cpio syntax; `file` names it in errors.
pub fn parse_list(file: &str, text: &str) -> Result<Vec<Entry>, Error> {
    let mut entries: Vec<Entry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let syntax = |reason| Error::Syntax {
            file: file.to_string(),
            line: i + 1,
            reason,
            text: raw.to_string(),
        };
        let w: Vec<&str> = line.split_whitespace().collect();
        let (kind, rest) = match (w[0], w.len()) {
            ("dir", 5) => (Kind::Dir, &w[2..5]),
            ("file", 6) => {
                let source = match w[2] {
                    AGENT_SOURCE => Source::Agent,
                    p => Source::Path(PathBuf::from(p)),
                };
                (Kind::File(source), &w[3..6])
            }
            ("slink", 6) => (Kind::Symlink(w[2].to_string()), &w[3..6]),
            ("nod", 8) => {
                let block = match w[5] {
                    "c" => false,
                    "b" => true,
                    _ => return Err(syntax("device type must be c or b")),
                };
                let num = |s: &str| s.parse::<u32>().map_err(|_| syntax("bad device number"));
                let kind = Kind::Node {
                    block,
                    major: num(w[6])?,
                    minor: num(w[7])?,
                };
                (kind, &w[2..5])
            }
            ("dir" | "file" | "slink" | "nod", _) => return Err(syntax("wrong number of fields")),
            _ => return Err(syntax("unknown entry type")),
        };
        let perm = u32::from_str_radix(rest[0], 8)
            .ok()
            .filter(|p| *p <= 0o7777)
            .ok_or_else(|| syntax("bad octal mode"))?;
        let uid = rest[1].parse().map_err(|_| syntax("bad uid"))?;
        let gid = rest[2].parse().map_err(|_| syntax("bad gid"))?;
        let name = w[1].trim_start_matches('/').trim_end_matches('/');
        if name.is_empty()
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(syntax("bad name"));
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            let declared = entries
                .iter()
                .any(|e| e.name == parent && e.kind == Kind::Dir);
            if !declared {
                return Err(Error::MissingParent {
                    file: file.to_string(),
                    line: i + 1,
                    name: name.to_string(),
                });
            }
        }
        entries.push(Entry {
            name: name.to_string(),
            perm,
            uid,
            gid,
            kind,
        });
    }
    Ok(entries)
}

/// Writes the entries and the trailer as a newc archive; `contents` supplies regular files.
pub fn write_archive<W: Write>(
    entries: &[Entry],
    mut contents: impl FnMut(&Source) -> io::Result<Vec<u8>>,
    mut out: W,
) -> Result<W, Error> {
    for (i, e) in entries.iter().enumerate() {
        let data: Vec<u8> = match &e.kind {
            Kind::File(source) => contents(source).map_err(|error| Error::Source {
                name: e.name.clone(),
                source_name: match source {
                    Source::Agent => AGENT_SOURCE.to_string(),
                    Source::Path(p) => p.display().to_string(),
                },
                error,
            })?,
            Kind::Symlink(target) => target.as_bytes().to_vec(),
            Kind::Dir | Kind::Node { .. } => Vec::new(),
        };
        let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
            name: e.name.clone(),
            len: data.len(),
        })?;
        let (rdev_major, rdev_minor) = match e.kind {
            Kind::Node { major, minor, .. } => (major, minor),
            _ => (0, 0),
        };
        let mut w = cpio::newc::Builder::new(&e.name)
            .ino(i as u32 + 1)
            .mode(e.mode())
            .uid(e.uid)
            .gid(e.gid)
            .nlink(if e.kind == Kind::Dir { 2 } else { 1 })
            .mtime(0)
            .rdev_major(rdev_major)
            .rdev_minor(rdev_minor)
            .write(out, size);
        w.write_all(&data)?;
        out = w.finish()?;
    }
    Ok(cpio::newc::trailer(out)?)
}

/// A built initramfs in the cache, with the erofs image of the same tree and the agent copy
/// they contain.
pub struct Initramfs {
    pub cpio: PathBuf,
    pub rootfs: PathBuf,
    pub agent: PathBuf,
    pub built: bool,
}

/// Returns the cached initramfs for this list and agent, writing it first if needed.
pub fn ensure(cache: &Cache, list_path: &Path, agent: &Path) -> anyhow::Result<Initramfs> {
    let list_text = fs::read_to_string(list_path)
        .with_context(|| format!("cannot read {}", list_path.display()))?;
    let entries = parse_list(&list_path.display().to_string(), &list_text)?;
    let base = list_path.parent().unwrap_or(Path::new("."));
    let agent_bytes =
        fs::read(agent).with_context(|| format!("cannot read {}", agent.display()))?;
    let read = |s: &Source| -> io::Result<Vec<u8>> {
        match s {
            Source::Agent => Ok(agent_bytes.clone()),
            Source::Path(p) => fs::read(base.join(p)),
        }
    };

    // The key covers the list and every file it names.
    let mut files: Vec<Vec<u8>> = Vec::new();
    for e in &entries {
        if let Kind::File(Source::Path(p)) = &e.kind {
            files.push(
                fs::read(base.join(p))
                    .with_context(|| format!("cannot read {} for {}", p.display(), e.name))?,
            );
        }
    }
    let mut parts: Vec<&[u8]> = vec![
        RECIPE_VERSION.as_bytes(),
        list_text.as_bytes(),
        &agent_bytes,
    ];
    parts.extend(files.iter().map(Vec::as_slice));
    let key = cache::key(&parts);

    let kind_dir = cache.kind_dir("initramfs")?;
    let dir = kind_dir.join(&key);
    let result = Initramfs {
        cpio: dir.join("initramfs.cpio"),
        rootfs: dir.join("rootfs.erofs"),
        agent: dir.join("sandbox-agent"),
        built: false,
    };
    if result.cpio.is_file() && result.rootfs.is_file() && result.agent.is_file() {
        cache::touch(&dir);
        return Ok(result);
    }
    let tmp = cache::fresh_tmp_dir(&dir)?;
    let out = fs::File::create(tmp.join("initramfs.cpio"))?;
    let out = write_archive(&entries, read, io::BufWriter::new(out))?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let stage = tmp.join("rootfs");
    fs::create_dir(&stage)?;
    super::rootfs::stage_tree(&entries, read, &stage)?;
    super::rootfs::mkfs(&stage, &tmp.join("rootfs.erofs"))?;
    fs::remove_dir_all(&stage)?;
    fs::write(tmp.join("sandbox-agent"), &agent_bytes)?;
    fs::set_permissions(
        tmp.join("sandbox-agent"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    cache::publish_dir(&tmp, &dir)?;
    cache::prune(&kind_dir, KEEP_IMAGES, &dir)?;
    Ok(Initramfs {
        built: true,
        ..result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An entry read back from an archive.
    #[derive(Debug)]
    struct ReadBack {
        name: String,
        mode: u32,
        uid: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn read_back(mut bytes: &[u8]) -> Vec<ReadBack> {
        let mut out = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(bytes).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            let mut rb = ReadBack {
                name: e.name().to_string(),
                mode: e.mode(),
                uid: e.uid(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                data: Vec::new(),
            };
            r.read_to_end(&mut rb.data).unwrap();
            bytes = r.finish().unwrap();
            out.push(rb);
        }
        out
    }

    const LIST: &str = "\
# comment
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /tmp 1777 0 0   # sticky
file /init @agent 0755 0 0
file /etc-hostname hostname 0644 1 2
slink /sbin-init /init 0777 0 0
nod /dev/vda 0600 0 0 b 254 0
";

    #[test]
    fn parses_every_entry_type() {
        let e = parse_list("l", LIST).unwrap();
        assert_eq!(e.len(), 7);
        assert_eq!(e[0].name, "dev");
        assert_eq!(e[0].mode(), 0o040755);
        assert_eq!(
            e[1].kind,
            Kind::Node {
                block: false,
                major: 5,
                minor: 1
            }
        );
        assert_eq!(e[1].mode(), 0o020600);
        assert_eq!(e[2].perm, 0o1777);
        assert_eq!(e[3].kind, Kind::File(Source::Agent));
        assert_eq!(e[4].kind, Kind::File(Source::Path("hostname".into())));
        assert_eq!((e[4].uid, e[4].gid), (1, 2));
        assert_eq!(e[5].kind, Kind::Symlink("/init".into()));
        assert_eq!(e[6].mode(), 0o060600);
    }

    #[test]
    fn archive_reads_back() {
        let entries = parse_list("l", LIST).unwrap();
        let bytes = write_archive(
            &entries,
            |s| match s {
                Source::Agent => Ok(b"\x7fELF agent".to_vec()),
                Source::Path(p) => Ok(p.to_string_lossy().as_bytes().to_vec()),
            },
            Vec::new(),
        )
        .unwrap();
        // newc records are 4-byte aligned.
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let got = read_back(&bytes);
        let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "tmp",
                "init",
                "etc-hostname",
                "sbin-init",
                "dev/vda"
            ]
        );
        assert_eq!(got[1].mode, 0o020600);
        assert_eq!(got[1].rdev, (5, 1));
        assert_eq!(got[3].mode, 0o100755);
        assert_eq!(got[3].data, b"\x7fELF agent");
        assert_eq!(got[4].data, b"hostname");
        assert_eq!(got[4].uid, 1);
        assert_eq!(got[5].mode, 0o120777);
        assert_eq!(got[5].data, b"/init");
        assert_eq!(got[6].rdev, (254, 0));
    }

    #[test]
    fn same_input_same_bytes() {
        let entries = parse_list("l", LIST).unwrap();
        let write = || write_archive(&entries, |_| Ok(vec![1, 2, 3]), Vec::new()).unwrap();
        assert_eq!(write(), write());
    }

    #[test]
    fn unreadable_source_is_named() {
        let entries = parse_list("l", "file /x missing 0644 0 0\n").unwrap();
        let err = write_archive(
            &entries,
            |_| Err(io::Error::from(io::ErrorKind::NotFound)),
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read missing for x"),
            "{err}"
        );
    }

    #[test]
    fn bad_lines_are_rejected_with_their_number() {
        let err = parse_list("l", "dir /a 0755 0 0\nnod /a/c 0600 0 0 x 5 1\n").unwrap_err();
        assert!(err.to_string().starts_with("l:2: device type"), "{err}");
        let err = parse_list("l", "dir /a 0855 0 0\n").unwrap_err();
        assert!(err.to_string().contains("bad octal mode"), "{err}");
        let err = parse_list("l", "pipe /a 0644 0 0\n").unwrap_err();
        assert!(err.to_string().contains("unknown entry type"), "{err}");
        let err = parse_list("l", "dir /a/../b 0755 0 0\n").unwrap_err();
        assert!(err.to_string().contains("bad name"), "{err}");
    }

    #[test]
    fn parent_must_be_declared_first() {
        let err = parse_list("l", "nod /dev/console 0600 0 0 c 5 1\n").unwrap_err();
        assert!(
            matches!(err, Error::MissingParent { ref name, line: 1, .. } if name == "dev/console"),
            "{err}"
        );
    }

    #[test]
    fn the_project_list_has_init_and_console() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs-image/initramfs.list"
        );
        let e = parse_list(path, &fs::read_to_string(path).unwrap()).unwrap();
        let find = |n: &str| e.iter().find(|e| e.name == n).unwrap();
        assert_eq!(find("init").kind, Kind::File(Source::Agent));
        assert_eq!(find("init").perm, 0o755);
        assert_eq!(
            find("dev/console").kind,
            Kind::Node {
                block: false,
                major: 5,
                minor: 1
            }
        );
        for d in ["proc", "sys", "dev", "run", "tmp", "mnt"] {
            assert_eq!(find(d).kind, Kind::Dir, "{d}");
        }
    }
}
