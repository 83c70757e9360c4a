//! The agent's log: one line per record on stderr, which is the serial console in the guest.
//! Each line carries the guest uptime so boot phases can be read off the console.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct ConsoleLogger {
    level: LevelFilter,
}

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ms = crate::init::uptime_ms().unwrap_or(0);
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // One write per line so lines from different threads do not interleave.
        let line = format!(
            "[{:>5}.{:03}] sandbox-agent {level} {}: {}\n",
            ms / 1000,
            ms % 1000,
            record.target(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the console logger; `debug` also shows ttrpc's and the agent's debug records.
pub fn init(debug: bool) {
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    if log::set_boxed_logger(Box::new(ConsoleLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}
