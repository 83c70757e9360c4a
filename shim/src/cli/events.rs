//! `sandbox events`: runc's JSON lines. `--stats` prints one `{"type":"stats",...}` line;
//! otherwise a stats line every `--interval` and an `{"type":"oom",...}` line per OOM kill,
//! until the container is gone.

use std::time::Duration;

use serde_json::json;

use crate::controller::ContainerStats;

use super::backend::CliError;

/// One runc `events` line of type "stats".
pub fn stats_line(id: &str, stats: &ContainerStats) -> String {
    json!({"type": "stats", "id": id, "data": stats.to_runc()}).to_string()
}

/// One runc `events` line of type "oom".
pub fn oom_line(id: &str) -> String {
    json!({"type": "oom", "id": id}).to_string()
}

/// `--interval`: Go-style durations such as 5s, 500ms, 1m, or plain seconds.
pub fn parse_interval(s: &str) -> Result<Duration, CliError> {
    let bad = || CliError::Usage(format!("--interval {s:?}: expected a duration such as 5s"));
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_lines() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("fast").is_err());
        let v: serde_json::Value =
            serde_json::from_str(&stats_line("c1", &ContainerStats::default())).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["id"].as_str()),
            (Some("stats"), Some("c1"))
        );
        assert!(v["data"]["memory"]["usage"].is_object());
        assert_eq!(oom_line("c1"), r#"{"id":"c1","type":"oom"}"#);
    }
}
