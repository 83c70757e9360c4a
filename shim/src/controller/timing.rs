//! Start phase timings (image, vmm spawn, agent ready, create, start) for `--debug`: each
//! phase's duration and the total since the command began.

use std::time::{Duration, Instant};

/// The phases of one start, in order.
#[derive(Debug)]
pub struct Phases {
    begin: Instant,
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
    print: bool,
}

impl Phases {
    /// Starts timing; with `print` each phase is written to stderr as it ends.
    pub fn new(print: bool) -> Phases {
        let now = Instant::now();
        Phases {
            begin: now,
            last: now,
            marks: Vec::new(),
            print,
        }
    }

    /// Ends the current phase under `name`.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        let d = now - self.last;
        self.last = now;
        self.marks.push((name, d));
        if self.print {
            eprintln!("{}", line(name, d, now - self.begin));
        }
    }

    pub fn marks(&self) -> &[(&'static str, Duration)] {
        &self.marks
    }
}

/// `sandbox: phase <name> <ms> ms (total <ms> ms)`.
fn line(name: &str, d: Duration, total: Duration) -> String {
    format!(
        "sandbox: phase {name:<12} {:>8.1} ms (total {:.1} ms)",
        d.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_recorded_in_order() {
        let mut p = Phases::new(false);
        p.mark("image");
        p.mark("vmm spawn");
        let names: Vec<_> = p.marks().iter().map(|m| m.0).collect();
        assert_eq!(names, ["image", "vmm spawn"]);
        let l = line(
            "image",
            Duration::from_micros(1500),
            Duration::from_millis(3),
        );
        assert!(
            l.contains("phase image") && l.contains("1.5 ms") && l.contains("total 3.0 ms"),
            "{l}"
        );
    }
}
