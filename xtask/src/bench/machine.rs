//! A one-line description of the machine a benchmark ran on: CPU model, cores, memory,
//! kernel, OS and what serves /dev/kvm (the figures mean little without it).

use std::fs;
use std::path::Path;

/// E.g. `AMD EPYC 7B13, 2 cores, 23.5 GiB, Linux 6.1.0-27-amd64, Debian GNU/Linux 12
/// (bookworm), /dev/kvm: kvm_pvm`.
pub fn describe() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{}, {} cores, {:.1} GiB, Linux {}, {}, /dev/kvm: {}",
        cpu_model(&cpuinfo),
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        mem_total_kib(&meminfo) as f64 / (1024.0 * 1024.0),
        kernel.trim(),
        pretty_name(&os),
        kvm_provider()
    )
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU".into(), |(_, v)| v.trim().to_string())
}

fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pretty_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("unknown OS".into(), |v| v.trim_matches('"').to_string())
}

/// The loaded KVM module: kvm_pvm (paravirtual), kvm_intel, kvm_amd, or none.
fn kvm_provider() -> &'static str {
    if !Path::new("/dev/kvm").exists() {
        return "absent";
    }
    ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .unwrap_or("present")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_memory_and_os() {
        let cpu = "processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nprocessor\t: 1\n";
        assert_eq!(cpu_model(cpu), "AMD EPYC 7B13 64-Core Processor");
        assert_eq!(mem_total_kib("MemTotal:       24631224 kB\n"), 24631224);
        assert_eq!(
            pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(cpu_model(""), "unknown CPU");
    }

    #[test]
    fn describes_this_machine() {
        let d = describe();
        assert!(d.contains(" cores, ") && d.contains("Linux "), "{d}");
    }
}
