//! linux.seccomp compiled to a classic BPF program without libseccomp: architecture check,
//! one block per syscall rule (with 64-bit argument conditions), then the default action.

mod syscalls_x86_64;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

/// The filter could not be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule cannot be expressed.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON path.
        field: String,
        /// Why.
        message: String,
    },
    /// The kernel refused the filter.
    #[error("linux.seccomp: install filter: {0}")]
    Install(std::io::Error),
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// Looks up a syscall number by name on this architecture.
pub fn syscall_number(name: &str) -> Option<u32> {
    syscalls_x86_64::SYSCALLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr)
}

/// The names of every syscall this build knows (useful to write allow-lists).
pub fn known_syscalls() -> impl Iterator<Item = &'static str> {
    syscalls_x86_64::SYSCALLS.iter().map(|(n, _)| *n)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> u32 {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | errno,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | errno,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActNotify => RET_ALLOW,
    }
}

/// A jump target inside one rule block.
#[derive(Clone, Copy)]
enum To {
    /// Skip this many instructions.
    Skip(u8),
    /// The end of the block: the rule does not match.
    Fail,
}

struct Insn {
    code: u16,
    jt: To,
    jf: To,
    k: u32,
}

fn ld(off: u32) -> Insn {
    Insn {
        code: LD_W_ABS,
        jt: To::Skip(0),
        jf: To::Skip(0),
        k: off,
    }
}
fn jmp(code: u16, k: u32, jt: To, jf: To) -> Insn {
    Insn { code, jt, jf, k }
}

/// Instructions testing one argument condition; falls through when it holds.
fn condition(arg: &LinuxSeccompArg) -> Vec<Insn> {
    let lo_off = 16 + 8 * arg.index() as u32;
    let hi_off = lo_off + 4;
    let (vh, vl) = ((arg.value() >> 32) as u32, arg.value() as u32);
    let next = To::Skip(0);
    use LinuxSeccompOperator as Op;
    use To::{Fail, Skip};
    match arg.op() {
        Op::ScmpCmpEq => vec![
            ld(hi_off),
            jmp(JEQ_K, vh, next, Fail),
            ld(lo_off),
            jmp(JEQ_K, vl, next, Fail),
        ],
        Op::ScmpCmpNe => vec![
            ld(hi_off),
            jmp(JEQ_K, vh, next, Skip(2)),
            ld(lo_off),
            jmp(JEQ_K, vl, Fail, next),
        ],
        Op::ScmpCmpGt | Op::ScmpCmpGe => vec![
            ld(hi_off),
            jmp(JGT_K, vh, Skip(3), next),
            jmp(JEQ_K, vh, next, Fail),
            ld(lo_off),
            jmp(
                if arg.op() == Op::ScmpCmpGt {
                    JGT_K
                } else {
                    JGE_K
                },
                vl,
                next,
                Fail,
            ),
        ],
        Op::ScmpCmpLt | Op::ScmpCmpLe => vec![
            ld(hi_off),
            jmp(JGT_K, vh, Fail, next),
            jmp(JEQ_K, vh, next, Skip(2)),
            ld(lo_off),
            jmp(
                if arg.op() == Op::ScmpCmpLt {
                    JGE_K
                } else {
                    JGT_K
                },
                vl,
                Fail,
                next,
            ),
        ],
        Op::ScmpCmpMaskedEq => {
            let d = arg.value_two().unwrap_or(0);
            let (dh, dl) = ((d >> 32) as u32, d as u32);
            vec![
                ld(hi_off),
                Insn {
                    code: AND_K,
                    jt: next,
                    jf: next,
                    k: vh,
                },
                jmp(JEQ_K, dh, next, Fail),
                ld(lo_off),
                Insn {
                    code: AND_K,
                    jt: next,
                    jf: next,
                    k: vl,
                },
                jmp(JEQ_K, dl, next, Fail),
            ]
        }
    }
}

fn block(nr: u32, conds: &[LinuxSeccompArg], ret: u32) -> Vec<libc::sock_filter> {
    let mut insns = vec![ld(0), jmp(JEQ_K, nr, To::Skip(0), To::Fail)];
    for c in conds {
        insns.extend(condition(c));
    }
    insns.push(Insn {
        code: RET_K,
        jt: To::Skip(0),
        jf: To::Skip(0),
        k: ret,
    });
    let len = insns.len();
    insns
        .iter()
        .enumerate()
        .map(|(i, ins)| {
            let resolve = |t: To| match t {
                To::Skip(n) => n,
                To::Fail => (len - i - 1) as u8,
            };
            libc::sock_filter {
                code: ins.code,
                jt: resolve(ins.jt),
                jf: resolve(ins.jf),
                k: ins.k,
            }
        })
        .collect()
}

/// Compiles the spec's filter. Unknown syscall names are skipped, as runc does.
pub fn compile(spec: &LinuxSeccomp) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let default = action(spec.default_action(), spec.default_errno_ret());
    let ret = |k| libc::sock_filter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k,
    };
    let mut prog = vec![
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 4,
        },
        libc::sock_filter {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        ret(RET_KILL_PROCESS),
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        ret(RET_KILL_PROCESS),
    ];
    for (i, rule) in spec.syscalls().iter().flatten().enumerate() {
        let ret = action(rule.action(), rule.errno_ret());
        if ret == default {
            continue;
        }
        let args = rule.args().as_deref().unwrap_or_default();
        // Like runc: several conditions on the same argument are alternatives, not a conjunction.
        let mut seen = [0u8; 6];
        args.iter().for_each(|a| seen[a.index().min(5)] += 1);
        let alternatives: Vec<&[LinuxSeccompArg]> = if seen.iter().any(|n| *n > 1) {
            args.iter().map(std::slice::from_ref).collect()
        } else {
            vec![args]
        };
        for name in rule.names() {
            let Some(nr) = syscall_number(name) else {
                tracing::debug!("linux.seccomp.syscalls[{i}]: unknown syscall {name}, skipped");
                continue;
            };
            for conds in &alternatives {
                prog.extend(block(nr, conds, ret));
            }
        }
    }
    prog.push(ret(default));
    if prog.len() > 4096 {
        return Err(SeccompError::Invalid {
            field: "linux.seccomp.syscalls".into(),
            message: format!(
                "the filter needs {} instructions, more than 4096",
                prog.len()
            ),
        });
    }
    Ok(prog)
}

/// Installs a compiled filter on the calling thread with the spec's flags.
pub fn install(
    prog: &[libc::sock_filter],
    flags: &[LinuxSeccompFilterFlag],
) -> Result<(), SeccompError> {
    let mut bits: libc::c_ulong = 0;
    for f in flags {
        bits |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 32,
        };
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1 as libc::c_ulong, // SECCOMP_SET_MODE_FILTER
            bits,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    /// Runs the filter in a forked child and returns what `getpriority`-free probes saw.
    fn in_child(prog: &[libc::sock_filter], probe: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw syscalls and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) affects only this process.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if install(prog, &[]).is_ok() {
                    probe()
                } else {
                    99
                };
                // SAFETY: _exit is async-signal-safe and ends the forked child.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, c) => c,
                    other => panic!("child: {other:?}"),
                }
            }
        }
    }

    fn errno_of_dup3(fd: i32) -> i32 {
        // SAFETY: dup3 on possibly invalid fds only returns an error.
        let rc = unsafe { libc::syscall(libc::SYS_dup3, fd, 1000, 0) };
        if rc < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        } else {
            0
        }
    }

    #[test]
    fn errno_rule_with_argument_condition() {
        let f = filter(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["dup3"],
            "action":"SCMP_ACT_ERRNO","errnoRet":42,"args":[{"index":0,"value":7,"op":"SCMP_CMP_GT"}]}]}"#,
        );
        let prog = compile(&f).unwrap();
        assert_eq!(in_child(&prog, || errno_of_dup3(8)), 42);
        // dup3(5, ...) does not match the condition: EBADF from the kernel.
        assert_eq!(in_child(&prog, || errno_of_dup3(5)), libc::EBADF);
    }

    #[test]
    fn masked_eq_and_default_errno() {
        let f = filter(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["dup3"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":255,"valueTwo":9,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        let prog = compile(&f).unwrap();
        assert_eq!(in_child(&prog, || errno_of_dup3(0x109)), libc::EPERM);
        assert_eq!(in_child(&prog, || errno_of_dup3(0x108)), libc::EBADF);
    }
}
