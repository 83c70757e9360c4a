//! The lab half of the bench: the host re-invokes xtask in one lab VM, which runs every
//! Linux-booting benchmark and writes its rows to a file in the shared working directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sandbox_tests::{artifacts, lab};

use super::report::{LabPartial, Row};
use super::{boot_to_agent, density, log, machine, memory, run_true, Args, Guest, Plan};

/// Flags of the re-invocation inside the lab (hidden).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InsideArgs {
    /// Run the lab benchmarks here (set when xtask re-invokes itself in the lab).
    #[arg(long, hide = true)]
    pub inside: bool,
    /// Where the lab half writes its rows.
    #[arg(long, hide = true)]
    pub partial: Option<PathBuf>,
    /// Where the lab half writes `<done> <total> <message>` as it goes.
    #[arg(long, hide = true)]
    pub progress_file: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub vmm: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub sandbox: Option<PathBuf>,
}

/// Steps the lab half counts, for the progress bar.
fn total_steps(plan: Plan) -> u64 {
    (plan.rounds * 2 + plan.memory_rounds * 2) as u64 + u64::from(plan.density) * 2
}

/// The rows of every lab benchmark, all failed with `error` (the lab could not run them).
fn all_failed(error: &str) -> Vec<Row> {
    [
        ("boot-to-agent", "ms", "qemu microvm"),
        ("memory-per-sandbox", "MiB", "qemu microvm"),
        ("density", "guests", "qemu microvm"),
        ("run-true", "ms", "runc"),
    ]
    .iter()
    .map(|(name, unit, peer)| Row::failed(name, unit, peer, &[], error.to_string()))
    .collect()
}

/// Host side: boots the lab, follows its progress, returns what it wrote.
pub fn from_host(args: &Args, plan: Plan, out: &Path, vmm: &Path, sandbox: &Path) -> LabPartial {
    match run_lab(args, plan, out, vmm, sandbox) {
        Ok(p) => p,
        Err(e) => LabPartial {
            machine: "lab failed".into(),
            results: all_failed(&format!("{e:#}")),
            density: Vec::new(),
        },
    }
}

fn run_lab(args: &Args, plan: Plan, out: &Path, vmm: &Path, sandbox: &Path) -> Result<LabPartial> {
    super::guest_paths(vmm)?;
    // Under the working directory, which the lab shares writable.
    let dir = artifacts::workspace_root().join("target").join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = out;
    let partial = dir.join("lab-partial.json");
    let progress = dir.join("lab-progress");
    let _ = fs::remove_file(&partial);
    let _ = fs::remove_file(&progress);
    let _ = fs::remove_file(dir.join("lab.log"));
    // A private copy: others' `cargo xtask` builds may replace the binary before the lab
    // execs it.
    let exe = dir.join("xtask-lab");
    let me = std::env::current_exe().context("locating the xtask binary")?;
    let _ = fs::remove_file(&exe);
    fs::copy(&me, &exe)
        .with_context(|| format!("copying {} to {}", me.display(), exe.display()))?;
    let mut argv: Vec<std::ffi::OsString> = vec![exe.into(), "bench".into(), "--inside".into()];
    for (flag, value) in [
        ("--partial", partial.as_os_str()),
        ("--progress-file", progress.as_os_str()),
        ("--vmm", vmm.as_os_str()),
        ("--sandbox", sandbox.as_os_str()),
    ] {
        argv.push(flag.into());
        argv.push(value.into());
    }
    argv.extend(
        [
            "--rounds".to_string(),
            plan.rounds.to_string(),
            "--density".into(),
            plan.density.to_string(),
            "--budget-mib".into(),
            plan.budget_mib.to_string(),
        ]
        .map(Into::into),
    );
    if args.quick {
        argv.push("--quick".into());
    }
    if let Some(only) = &args.only {
        argv.push("--only".into());
        argv.push(only.join(",").into());
    }
    let opts = lab::Options {
        cwd: Some(artifacts::workspace_root()),
        stream: false,
        capture: true,
        ..crate::lab::options(args.timeout, args.lab_memory, false)?
    };

    let bar = ProgressBar::new(total_steps(plan));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_message("lab: booting the lab VM");
    bar.enable_steady_tick(Duration::from_millis(200));
    let worker = thread::spawn(move || lab::run(&argv, &opts));
    while !worker.is_finished() {
        if let Some((done, msg)) = fs::read_to_string(&progress)
            .ok()
            .and_then(|t| parse_progress(&t))
        {
            bar.set_position(done);
            bar.set_message(format!("lab: {msg}"));
        }
        thread::sleep(Duration::from_millis(300));
    }
    let ended = worker.join().expect("lab thread");
    let (status, stderr) = match &ended {
        Ok(out) => (out.status.to_string(), out.stderr_str()),
        Err(e) => (format!("error: {e}"), String::new()),
    };
    bar.finish_with_message(format!("lab done ({status})"));
    let loaded = LabPartial::load(&partial);
    let _ = fs::remove_file(&partial);
    if let (Ok(p), Ok(out)) = (&loaded, &ended) {
        if out.status == 0 {
            return Ok(p.clone());
        }
    }
    // Keep what the lab finished; the rest fails with the lab's end.
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let mut p = loaded.unwrap_or_default();
    if p.machine.is_empty() {
        p.machine = format!("lab run failed ({status})");
    }
    let error = format!(
        "lab run ended with status {status} before this benchmark finished; see {}; \
         stderr ends:\n{}",
        dir.join("lab.log").display(),
        tail.join("\n")
    );
    let have: Vec<String> = p.results.iter().map(|r| r.name.clone()).collect();
    p.results.extend(
        all_failed(&error)
            .into_iter()
            .filter(|r| !have.contains(&r.name) && args.selects(&r.name)),
    );
    Ok(p)
}

/// `3 20 boot-to-agent` → (3, "boot-to-agent").
fn parse_progress(text: &str) -> Option<(u64, String)> {
    let mut parts = text.trim().splitn(3, ' ');
    let done = parts.next()?.parse().ok()?;
    let _total = parts.next()?;
    Some((done, parts.next().unwrap_or("").to_string()))
}

/// Lab side: runs the benchmarks, saving the partial report after each.
pub fn inside(a: &Args, plan: Plan) -> Result<()> {
    let partial_path = a
        .inside
        .partial
        .clone()
        .context("--partial is required with --inside")?;
    if let Some(dir) = partial_path.parent() {
        log::open(&dir.join("lab.log"));
    }
    let vmm = a
        .inside
        .vmm
        .clone()
        .context("--vmm is required with --inside")?;
    let sandbox = a
        .inside
        .sandbox
        .clone()
        .context("--sandbox is required with --inside")?;
    let guest = Guest {
        vmm,
        vmlinux: artifacts::vmlinux()?,
        rootfs: artifacts::rootfs()?,
    };
    let bar = ProgressBar::with_draw_target(Some(total_steps(plan)), ProgressDrawTarget::hidden());
    let reporter = a.inside.progress_file.clone().map(|path| {
        let bar = bar.clone();
        thread::spawn(move || {
            while !bar.is_finished() {
                let line = format!(
                    "{} {} {}",
                    bar.position(),
                    bar.length().unwrap_or(0),
                    bar.message()
                );
                let _ = fs::write(&path, line);
                thread::sleep(Duration::from_millis(500));
            }
        })
    });
    let mut partial = LabPartial {
        machine: format!("{} (lab: QEMU TCG, nested SVM KVM)", machine::describe()),
        ..Default::default()
    };
    let save = |p: &LabPartial| p.save(&partial_path);
    save(&partial)?;

    let step = |name: &str, label: &str| {
        if !a.selects(name) {
            return false;
        }
        bar.set_message(label.to_string());
        log::line(&format!("bench: {label}"));
        true
    };
    if step("boot-to-agent", "boot-to-agent") {
        let row = boot_to_agent::run(&guest, plan.rounds, &bar);
        partial.results.push(row);
        save(&partial)?;
    }
    if step("memory-per-sandbox", "memory-per-sandbox") {
        let row = memory::run(&sandbox, &guest, plan.memory_rounds, &bar);
        partial.results.push(row);
        save(&partial)?;
    }
    if step("density", &format!("density (N = {})", plan.density)) {
        let (rows, series) = density::run(&sandbox, &guest, plan.density, plan.budget_mib, &bar);
        partial.results.extend(rows);
        partial.density = series;
        save(&partial)?;
    }
    if step("run-true", "run-true") {
        let row = run_true::run(&sandbox, &guest, plan.rounds, &bar);
        partial.results.push(row);
        save(&partial)?;
    }
    bar.finish();
    if let Some(r) = reporter {
        let _ = r.join();
    }
    for r in &partial.results {
        log::line(&format!(
            "bench: {} ours {:?} peer {:?} error {:?}",
            r.name, r.ours, r.peer_value, r.error
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(
            parse_progress("3 20 density (N = 4)\n"),
            Some((3, "density (N = 4)".into()))
        );
        assert_eq!(parse_progress("x 20 y"), None);
        assert_eq!(parse_progress(""), None);
    }

    #[test]
    fn every_lab_benchmark_gets_a_failed_row() {
        let rows = all_failed("no lab");
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["boot-to-agent", "memory-per-sandbox", "density", "run-true"]
        );
        assert!(rows.iter().all(|r| r.error.as_deref() == Some("no lab")));
    }
}
