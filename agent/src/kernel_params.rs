//! Kernel parameters the guest kernel takes from its command line but loses at boot, applied
//! again by PID 1 through /sys/module.
//!
//! `page_reporting.page_reporting_order`: Linux 6.1 overwrites it with the pageblock order
//! (2 MiB) when the balloon driver registers free page reporting, so a smaller order given on
//! the command line never takes effect there. With it, free blocks smaller than 2 MiB reach
//! the host too: the gaps the kernel frees in its own image (text/rodata, rodata/data, init
//! sections), which it fills with a poison byte first, are host memory the guest has written
//! and rarely uses again.

use std::fs;
use std::path::Path;

/// Where the kernel exposes the parameter once the page_reporting code is built in.
const SYSFS: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
/// Its name on the kernel command line.
const CMDLINE_NAME: &str = "page_reporting.page_reporting_order";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{CMDLINE_NAME}={value} on the kernel command line is not a number")]
    BadValue { value: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The order the command line asks for, if any (the last one counts, as for the kernel).
pub fn page_reporting_order(cmdline: &str) -> Result<Option<u32>, Error> {
    let prefix = format!("{CMDLINE_NAME}=");
    match cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .next_back()
    {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::BadValue { value: v.into() }),
    }
}

/// Writes the command line's page reporting order to `sysfs` (normally [`SYSFS`]) when it
/// differs. Nothing to do without the parameter, or without page reporting in the kernel.
pub fn apply_page_reporting_order(cmdline: &str, sysfs: &Path) -> Result<Option<u32>, Error> {
    let Some(order) = page_reporting_order(cmdline)? else {
        return Ok(None);
    };
    let Ok(current) = fs::read_to_string(sysfs) else {
        return Ok(None);
    };
    if current.trim() != order.to_string() {
        fs::write(sysfs, order.to_string()).map_err(|source| Error::Write {
            path: sysfs.display().to_string(),
            source,
        })?;
    }
    Ok(Some(order))
}

/// [`apply_page_reporting_order`] with the running kernel's command line and sysfs file.
pub fn apply(cmdline: &str) -> Result<Option<u32>, Error> {
    apply_page_reporting_order(cmdline, Path::new(SYSFS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_comes_from_the_command_line() {
        let line = "console=ttyS0 page_reporting.page_reporting_order=0 quiet";
        assert_eq!(page_reporting_order(line).unwrap(), Some(0));
        assert_eq!(page_reporting_order("quiet").unwrap(), None);
        assert_eq!(
            page_reporting_order(
                "page_reporting.page_reporting_order=3 x page_reporting.page_reporting_order=5"
            )
            .unwrap(),
            Some(5)
        );
        let e = page_reporting_order("page_reporting.page_reporting_order=lots").unwrap_err();
        assert_eq!(
            e.to_string(),
            "page_reporting.page_reporting_order=lots on the kernel command line is not a number"
        );
    }

    #[test]
    fn a_differing_order_is_written_and_a_missing_file_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("page_reporting_order");
        fs::write(&file, "9\n").unwrap();
        let line = "page_reporting.page_reporting_order=0";
        assert_eq!(apply_page_reporting_order(line, &file).unwrap(), Some(0));
        assert_eq!(fs::read_to_string(&file).unwrap(), "0");
        assert_eq!(apply_page_reporting_order("quiet", &file).unwrap(), None);
        let missing = dir.path().join("none");
        assert_eq!(apply_page_reporting_order(line, &missing).unwrap(), None);
        assert!(!missing.exists());
    }
}
