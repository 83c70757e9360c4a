//! The lab half's log: timestamped lines appended to a file in the shared working directory,
//! so that a slow or stuck lab run can be followed from the host while it runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

static LOG: Mutex<Option<(File, Instant)>> = Mutex::new(None);

/// Starts logging to `path` (appending).
pub fn open(path: &Path) {
    if let Ok(f) = OpenOptions::new().create(true).append(true).open(path) {
        *LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some((f, Instant::now()));
    }
}

/// `[  12.345] msg` to the log file (if open) and to stdout.
pub fn line(msg: &str) {
    let mut guard = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let text = match guard.as_mut() {
        Some((f, start)) => {
            let text = format!("[{:>8.3}] {msg}\n", start.elapsed().as_secs_f64());
            let _ = f.write_all(text.as_bytes());
            text
        }
        None => format!("{msg}\n"),
    };
    print!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_with_a_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.log");
        open(&path);
        line("first");
        line("second");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with('[') && lines[0].ends_with("] first"),
            "{text}"
        );
        assert!(lines[1].ends_with("] second"));
    }
}
