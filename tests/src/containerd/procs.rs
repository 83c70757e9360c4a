//! Finding and removing what a test daemon left behind: processes by command line (with
//! their descendants) and mounts under a directory.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long killed processes may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// PIDs of live processes whose argv satisfies `pred` (kernel threads have none).
pub fn matching(pred: impl Fn(&[String]) -> bool) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let argv = argv(*pid);
            !argv.is_empty() && pred(&argv)
        })
        .collect()
}

/// The command line of `pid`, one string per argument (empty if it is gone).
pub fn argv(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// PIDs of live processes whose executable's name (argv[0]'s last component) is `name`.
pub fn named(name: &str) -> Vec<u32> {
    matching(|argv| Path::new(&argv[0]).file_name().is_some_and(|n| n == name))
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The parent of `pid` from /proc/PID/stat (the field after the parenthesised name).
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and all their descendants.
pub fn with_descendants(roots: &[u32]) -> BTreeSet<u32> {
    let mut set: BTreeSet<u32> = roots.iter().copied().collect();
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, parent(p)?)))
        .collect();
    loop {
        let before = set.len();
        for (pid, ppid) in &parents {
            if set.contains(ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// SIGKILLs `roots` and their descendants, and waits (a while) until they are gone.
pub fn kill_trees(roots: &[u32]) {
    let own = std::process::id();
    let pids: Vec<u32> = with_descendants(roots)
        .into_iter()
        .filter(|p| *p != own && *p > 1)
        .collect();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    let begin = Instant::now();
    while pids.iter().any(|p| alive(*p)) && begin.elapsed() < KILL_WAIT {
        thread::sleep(Duration::from_millis(50));
    }
    let survivors: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    if !survivors.is_empty() {
        // A cleanup path: the test's own leftover checks fail on them; say why here.
        eprintln!(
            "processes {survivors:?} are still alive {} ms after SIGKILL",
            KILL_WAIT.as_millis()
        );
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Mount points at or under `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mount_points(&info)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// The mount points (field 5) of mountinfo text, octal escapes decoded.
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\NNN` (octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts everything under `dir`, innermost (latest) first.
pub fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts.iter().rev() {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let info = "36 25 0:32 / /run/a\\040b rw,relatime shared:1 - tmpfs tmpfs rw\n\
                    37 25 0:33 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mount_points(info),
            vec![PathBuf::from("/run/a b"), PathBuf::from("/proc")]
        );
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trail\\"), "trail\\");
    }

    #[test]
    fn finds_a_child_by_argv_and_kills_its_tree() {
        let marker = format!("procs-test-{}", std::process::id());
        // sh starts a sleep child: killing the tree must take both.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & wait", &marker])
            .spawn()
            .unwrap();
        // Until the forked child has exec'd sleep it still carries sh's argv (the marker).
        let begin = Instant::now();
        let found = loop {
            let found = matching(|argv| argv.contains(&marker));
            if with_descendants(&[child.id()]).len() >= 2 && found.len() == 1 {
                break found;
            }
            assert!(
                begin.elapsed() < Duration::from_secs(10),
                "no exec'd sleep child under sh {}: matching {found:?}",
                child.id()
            );
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(found, vec![child.id()]);
        let tree: Vec<u32> = with_descendants(&found).into_iter().collect();
        kill_trees(&found);
        let _ = child.wait();
        assert!(tree.iter().all(|p| !alive(*p)), "{tree:?} survived");
    }
}
