//! linux.resources.devices on cgroup v2: the allow/deny rules compiled to an eBPF
//! BPF_PROG_TYPE_CGROUP_DEVICE program attached to the container's cgroup (last rule wins).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::{CgroupError, Result};

/// One rule: type (None = all), major/minor (None = any), access bits, allow.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    typ: Option<u32>,
    major: Option<u32>,
    minor: Option<u32>,
    access: u32,
    allow: bool,
}

const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;

fn access_bits(s: &str) -> u32 {
    s.chars().fold(0, |acc, c| {
        acc | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

fn dev_type(t: LinuxDeviceType) -> Option<u32> {
    match t {
        LinuxDeviceType::A => None,
        LinuxDeviceType::B => Some(DEV_BLOCK),
        LinuxDeviceType::C | LinuxDeviceType::U | LinuxDeviceType::P => Some(DEV_CHAR),
    }
}

/// The rules in runc's order: the spec's, then the devices every container gets (mknod of
/// anything, the standard nodes, ptys), then an allow for each `linux.devices` node.
pub(crate) fn rules(spec_rules: &[LinuxDeviceCgroup], devices: &[LinuxDevice]) -> Vec<Rule> {
    let mut out: Vec<Rule> = spec_rules
        .iter()
        .map(|r| Rule {
            typ: r.typ().and_then(dev_type),
            major: r.major().filter(|m| *m >= 0).map(|m| m as u32),
            minor: r.minor().filter(|m| *m >= 0).map(|m| m as u32),
            access: access_bits(r.access().as_deref().unwrap_or("rwm")),
            allow: r.allow(),
        })
        .collect();
    let rwm = ACC_READ | ACC_WRITE | ACC_MKNOD;
    let allow = |typ, major, minor, access| Rule {
        typ,
        major,
        minor,
        access,
        allow: true,
    };
    out.push(allow(Some(DEV_CHAR), None, None, ACC_MKNOD));
    out.push(allow(Some(DEV_BLOCK), None, None, ACC_MKNOD));
    for (major, minor) in [
        (1, 3),
        (1, 8),
        (1, 7),
        (5, 0),
        (1, 5),
        (1, 9),
        (5, 1),
        (5, 2),
    ] {
        out.push(allow(Some(DEV_CHAR), Some(major), Some(minor), rwm));
    }
    out.push(allow(Some(DEV_CHAR), Some(136), None, rwm));
    for d in devices {
        out.push(allow(
            dev_type(d.typ()),
            Some(d.major() as u32),
            Some(d.minor() as u32),
            rwm,
        ));
    }
    out
}

/// eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61;
const AND_K: u8 = 0x57;
const RSH_K: u8 = 0x77;
const MOV_K: u8 = 0xb7;
const MOV_X: u8 = 0xbf;
const JNE_K: u8 = 0x55;
const JNE_X: u8 = 0x5d;
const EXIT: u8 = 0x95;

/// Compiles the rules: the last matching rule decides; no match denies.
fn compile(rules: &[Rule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor (struct bpf_cgroup_dev_ctx).
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Each test jumps to the end of the block (symbolic offset -1, fixed below).
        let mut block = Vec::new();
        if let Some(t) = r.typ {
            block.push(insn(JNE_K, 2, 0, -1, t as i32));
        }
        if r.access != (ACC_READ | ACC_WRITE | ACC_MKNOD) {
            block.push(insn(MOV_X, 1, 3, 0, 0));
            block.push(insn(AND_K, 1, 0, 0, r.access as i32));
            block.push(insn(JNE_X, 1, 3, -1, 0));
        }
        if let Some(m) = r.major {
            block.push(insn(JNE_K, 4, 0, -1, m as i32));
        }
        if let Some(m) = r.minor {
            block.push(insn(JNE_K, 5, 0, -1, m as i32));
        }
        block.push(insn(MOV_K, 0, 0, 0, r.allow as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == -1 {
                ins.off = (len - i - 1) as i16;
            }
        }
        let unconditional = len == 2;
        prog.extend(block);
        if unconditional {
            // It matches everything: later blocks would be unreachable, which the verifier refuses.
            return prog;
        }
    }
    prog.push(insn(MOV_K, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    prog
}

/// bpf(2) attributes for BPF_PROG_LOAD (the leading fields; the rest stays zero).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    pad: [u8; 88],
}

/// bpf(2) attributes for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    pad: [u8; 112],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a properly sized, zero-padded bpf_attr prefix that lives for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the program for `rules` and attaches it to the cgroup at `dir`. Returns Ok(false)
/// when the kernel has no cgroup BPF support (the rules are then not enforced).
pub(crate) fn apply(dir: &Path, rules: &[Rule]) -> Result<bool> {
    let fail = |what: &str, e: std::io::Error| CgroupError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(e.kind(), format!("linux.resources.devices: {what}: {e}")),
    };
    let prog = compile(rules);
    let license = c"Apache-2.0";
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        pad: [0; 88],
    };
    let prog_fd = match bpf(BPF_PROG_LOAD, &load) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Ok(false),
        Err(e) => {
            // Load again with the verifier log to say why.
            let mut log = vec![0u8; 64 * 1024];
            let retry = ProgLoad {
                log_level: 1,
                log_size: log.len() as u32,
                log_buf: log.as_mut_ptr() as u64,
                ..load
            };
            let _ = bpf(BPF_PROG_LOAD, &retry);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let last = text.lines().next().unwrap_or_default();
            return Err(fail(
                &format!("load the eBPF device filter (verifier: {last})"),
                e,
            ));
        }
    };
    // SAFETY: the kernel just returned this descriptor to us.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(prog_fd as i32) };
    let cgroup = std::fs::File::open(dir).map_err(|e| fail("open cgroup", e))?;
    let attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        pad: [0; 112],
    };
    bpf(BPF_PROG_ATTACH, &attach).map_err(|e| fail("attach the eBPF device filter", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_end_with_the_spec_devices() {
        let deny_all: LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow":false,"access":"rwm"}"#).unwrap();
        let dev: LinuxDevice =
            serde_json::from_str(r#"{"path":"/dev/fuse","type":"c","major":10,"minor":229}"#)
                .unwrap();
        let r = rules(&[deny_all], &[dev]);
        assert_eq!(
            r[0],
            Rule {
                typ: None,
                major: None,
                minor: None,
                access: 7,
                allow: false
            }
        );
        assert_eq!(
            r.last().unwrap(),
            &Rule {
                typ: Some(DEV_CHAR),
                major: Some(10),
                minor: Some(229),
                access: 7,
                allow: true
            }
        );
        // 6 loads, then per rule at most 8 instructions, then the default deny.
        let prog = compile(&r);
        assert!(prog.len() <= 6 + 8 * r.len() + 2);
        assert_eq!(prog.last().unwrap().code, EXIT);
    }
}
