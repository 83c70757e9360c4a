//! The benchmark report: one row per benchmark (our min/median/max, the peer's median and the
//! ratio), written as `report.json` and as the markdown table of `report.md`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::stats::{ratio, Summary};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid partial report: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("benchmark {name}: {source}")]
    Stats {
        name: String,
        source: super::stats::Error,
    },
}

/// One benchmark's result. `ours` is our median; `min`/`median`/`max` are ours;
/// `ratio` = ours / peer_value. A benchmark that could not run has `error` set and no numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub unit: String,
    pub ours: Option<f64>,
    /// What we are compared with.
    pub peer: String,
    /// The peer's median.
    pub peer_value: Option<f64>,
    pub ratio: Option<f64>,
    pub min: Option<f64>,
    pub median: Option<f64>,
    pub max: Option<f64>,
    /// Rounds behind ours / the peer's figures.
    pub rounds: usize,
    pub peer_rounds: usize,
    /// The target from issue 8, as text (e.g. `ratio <= 0.5`).
    pub goal: String,
    /// How it was measured, caveats.
    #[serde(default)]
    pub notes: String,
    /// Why the benchmark has no figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    /// A row from our samples and the peer's.
    pub fn measured(
        name: &str,
        unit: &str,
        ours: &[f64],
        peer: &str,
        peer_samples: &[f64],
    ) -> Result<Row, Error> {
        let stats = |source| Error::Stats {
            name: name.to_string(),
            source,
        };
        let o = Summary::of(ours).map_err(stats)?;
        let p = Summary::of(peer_samples).map_err(stats)?;
        Ok(Row {
            ours: Some(o.median),
            peer_value: Some(p.median),
            ratio: ratio(o.median, p.median),
            min: Some(o.min),
            median: Some(o.median),
            max: Some(o.max),
            rounds: o.count,
            peer_rounds: p.count,
            ..Row::empty(name, unit, peer)
        })
    }

    /// A benchmark that failed: the error instead of figures (the peer's, if it ran).
    pub fn failed(name: &str, unit: &str, peer: &str, peer_samples: &[f64], error: String) -> Row {
        let p = Summary::of(peer_samples).ok();
        Row {
            peer_value: p.map(|p| p.median),
            peer_rounds: p.map_or(0, |p| p.count),
            error: Some(error),
            ..Row::empty(name, unit, peer)
        }
    }

    fn empty(name: &str, unit: &str, peer: &str) -> Row {
        Row {
            name: name.into(),
            unit: unit.into(),
            ours: None,
            peer: peer.into(),
            peer_value: None,
            ratio: None,
            min: None,
            median: None,
            max: None,
            rounds: 0,
            peer_rounds: 0,
            goal: String::new(),
            notes: String::new(),
            error: None,
        }
    }

    pub fn goal(mut self, goal: &str) -> Row {
        self.goal = goal.into();
        self
    }

    pub fn notes(mut self, notes: impl Into<String>) -> Row {
        self.notes = notes.into();
        self
    }
}

/// One curve of the density plot: per-sandbox memory and start latency against N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DensitySeries {
    /// `ours` or the peer's name.
    pub label: String,
    /// (N, host memory per sandbox in MiB) after the N-th start.
    pub mib_per_sandbox: Vec<(u32, f64)>,
    /// (N, the N-th start's latency to agent-ready in ms).
    pub start_ms: Vec<(u32, f64)>,
}

/// What the lab half of the bench hands back to the host half.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabPartial {
    /// The lab machine as the lab sees itself.
    pub machine: String,
    pub results: Vec<Row>,
    pub density: Vec<DensitySeries>,
}

impl LabPartial {
    pub fn load(path: &Path) -> Result<LabPartial, Error> {
        let text = fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Parse {
            path: path.into(),
            source,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), Error> {
        write(
            path,
            &serde_json::to_string_pretty(self).expect("serialisable"),
        )
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// UTC time the run finished, RFC 3339.
    pub date: String,
    /// The host, one line.
    pub machine: String,
    /// The lab host the Linux guests ran in.
    pub lab_machine: String,
    pub quick: bool,
    pub results: Vec<Row>,
    pub density: Vec<DensitySeries>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    /// The markdown report: the machine, the table, then notes and errors per benchmark.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let mode = if self.quick { " (--quick)" } else { "" };
        let _ = writeln!(md, "# Benchmarks{mode}\n");
        let _ = writeln!(md, "- date: {}", self.date);
        let _ = writeln!(md, "- host: {}", self.machine);
        let _ = writeln!(md, "- lab: {}\n", self.lab_machine);
        md.push_str(
            "| benchmark | unit | ours (median) | min | max | peer | peer (median) | ratio | goal |\n",
        );
        md.push_str("|---|---|---:|---:|---:|---|---:|---:|---|\n");
        for r in &self.results {
            let ours = match &r.error {
                Some(_) => "failed".to_string(),
                None => num(r.ours),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.name,
                r.unit,
                ours,
                num(r.min),
                num(r.max),
                r.peer,
                num(r.peer_value),
                r.ratio.map_or("—".into(), |x| format!("{x:.2}")),
                r.goal
            );
        }
        let notes: Vec<&Row> = self
            .results
            .iter()
            .filter(|r| !r.notes.is_empty() || r.error.is_some())
            .collect();
        if !notes.is_empty() {
            md.push_str("\n## Notes\n\n");
        }
        for r in notes {
            if !r.notes.is_empty() {
                let _ = writeln!(md, "- `{}`: {}", r.name, r.notes);
            }
            if let Some(e) = &r.error {
                let first: String = e.lines().take(6).collect::<Vec<_>>().join(" / ");
                let _ = writeln!(md, "- `{}` failed: {}", r.name, first);
            }
        }
        md
    }
}

/// A figure with 3 significant digits at most (2 decimals under 10, none at 100 and above).
fn num(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// Writes `text` to `path`, creating its directory.
pub fn write(path: &Path, text: &str) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    fs::write(path, text).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            date: "2026-11-23T12:00:00Z".into(),
            machine: "test cpu, 2 cores".into(),
            lab_machine: "lab cpu".into(),
            quick: true,
            results: vec![
                Row::measured(
                    "vmm-floor",
                    "ms",
                    &[30.0, 10.0, 20.0],
                    "qemu",
                    &[80.0, 40.0],
                )
                .unwrap()
                .goal("ratio <= 0.5"),
                Row::failed(
                    "run-true",
                    "ms",
                    "runc",
                    &[5.0],
                    "no VM backend\nline 2".into(),
                ),
            ],
            density: vec![],
        }
    }

    #[test]
    fn measured_row_has_our_summary_and_the_ratio_to_the_peer_median() {
        let r = &sample().results[0];
        assert_eq!(r.ours, Some(20.0));
        assert_eq!(
            (r.min, r.median, r.max),
            (Some(10.0), Some(20.0), Some(30.0))
        );
        assert_eq!(r.peer_value, Some(60.0));
        assert_eq!(r.ratio, Some(20.0 / 60.0));
        assert_eq!((r.rounds, r.peer_rounds), (3, 2));
    }

    #[test]
    fn measured_row_without_samples_names_the_benchmark() {
        let err = Row::measured("density", "n", &[], "qemu", &[1.0]).unwrap_err();
        assert!(err.to_string().contains("density"), "{err}");
    }

    #[test]
    fn json_has_the_required_fields_per_result() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        for key in [
            "name",
            "unit",
            "ours",
            "peer",
            "peer_value",
            "ratio",
            "min",
            "median",
            "max",
        ] {
            assert!(results[0].get(key).is_some(), "missing {key}");
            assert!(results[1].get(key).is_some(), "missing {key} in failed row");
        }
        assert_eq!(results[0]["name"], "vmm-floor");
        assert_eq!(results[0]["ours"], 20.0);
        assert_eq!(results[0]["peer"], "qemu");
        assert!(results[1]["ours"].is_null());
        assert_eq!(results[1]["peer_value"], 5.0);
        assert_eq!(results[1]["error"], "no VM backend\nline 2");
    }

    #[test]
    fn markdown_table_has_one_line_per_result_and_the_machine() {
        let md = sample().to_markdown();
        assert!(md.contains("- host: test cpu, 2 cores"), "{md}");
        assert!(
            md.contains(
                "| vmm-floor | ms | 20.0 | 10.0 | 30.0 | qemu | 60.0 | 0.33 | ratio <= 0.5 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| run-true | ms | failed | — | — | runc | 5.00 | — |  |"),
            "{md}"
        );
        assert!(
            md.contains("- `run-true` failed: no VM backend / line 2"),
            "{md}"
        );
    }

    #[test]
    fn partial_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lab.json");
        let partial = LabPartial {
            machine: "lab".into(),
            results: sample().results,
            density: vec![DensitySeries {
                label: "ours".into(),
                mib_per_sandbox: vec![(1, 12.5)],
                start_ms: vec![(1, 900.0)],
            }],
        };
        partial.save(&path).unwrap();
        assert_eq!(LabPartial::load(&path).unwrap(), partial);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(num(Some(1234.4)), "1234");
        assert_eq!(num(Some(12.34)), "12.3");
        assert_eq!(num(Some(0.456)), "0.46");
        assert_eq!(num(None), "—");
    }
}
