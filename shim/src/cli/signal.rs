//! `kill`'s signal argument, shared by both backends: a name with or without `SIG`, in any
//! case, or a number, as runc accepts it.

use std::str::FromStr;

use nix::sys::signal::Signal;

use super::backend::CliError;

/// Parses "KILL", "SIGKILL" or "9".
pub fn parse_signal(s: &str) -> Result<Signal, CliError> {
    let bad = || CliError::Usage(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("BOGUS").is_err());
    }
}
