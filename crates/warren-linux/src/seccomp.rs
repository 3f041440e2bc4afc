//! The seccomp policy: reviewed data, compiled to classic BPF.
//!
//! Default allow; the listed calls fail with EPERM (not SIGSYS), so programs
//! get a clean error. `clone3` answers ENOSYS because its flags live in
//! memory a filter cannot read: libc then falls back to `clone`, whose
//! CLONE_NEWUSER flag the filter can see. Non-x86_64 calling conventions
//! (i386 via int 0x80, x32) are refused wholesale, so a table lookup cannot be
//! bypassed by switching ABI.

/// What the filter does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail with EPERM.
    Deny,
    /// Fail with EPERM when any of `flags` is set in argument `arg`.
    DenyIfFlags {
        /// Argument index (0-based).
        arg: u8,
        /// Flag bits (low 32 bits of the argument).
        flags: u32,
    },
    /// Fail with ENOSYS ("not implemented"), so libc falls back.
    NotImplemented,
}

/// One rule of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Syscall name, for review and error messages.
    pub name: &'static str,
    /// x86_64 syscall number.
    pub nr: i64,
    /// What happens.
    pub action: Action,
}

const CLONE_NEWUSER: u32 = libc::CLONE_NEWUSER as u32;

macro_rules! deny {
    ($($name:ident),* $(,)?) => {
        [$(Rule { name: stringify!($name), nr: paste_nr!($name), action: Action::Deny }),*]
    };
}

macro_rules! paste_nr {
    (kexec_load) => {
        libc::SYS_kexec_load
    };
    (kexec_file_load) => {
        libc::SYS_kexec_file_load
    };
    (init_module) => {
        libc::SYS_init_module
    };
    (finit_module) => {
        libc::SYS_finit_module
    };
    (delete_module) => {
        libc::SYS_delete_module
    };
    (bpf) => {
        libc::SYS_bpf
    };
    (perf_event_open) => {
        libc::SYS_perf_event_open
    };
    (userfaultfd) => {
        libc::SYS_userfaultfd
    };
    (keyctl) => {
        libc::SYS_keyctl
    };
    (add_key) => {
        libc::SYS_add_key
    };
    (request_key) => {
        libc::SYS_request_key
    };
    (open_by_handle_at) => {
        libc::SYS_open_by_handle_at
    };
    (name_to_handle_at) => {
        libc::SYS_name_to_handle_at
    };
    (mount) => {
        libc::SYS_mount
    };
    (umount2) => {
        libc::SYS_umount2
    };
    (pivot_root) => {
        libc::SYS_pivot_root
    };
    (move_mount) => {
        libc::SYS_move_mount
    };
    (open_tree) => {
        libc::SYS_open_tree
    };
    (fsopen) => {
        libc::SYS_fsopen
    };
    (fsconfig) => {
        libc::SYS_fsconfig
    };
    (fsmount) => {
        libc::SYS_fsmount
    };
    (fspick) => {
        libc::SYS_fspick
    };
    (mount_setattr) => {
        libc::SYS_mount_setattr
    };
    (swapon) => {
        libc::SYS_swapon
    };
    (swapoff) => {
        libc::SYS_swapoff
    };
    (reboot) => {
        libc::SYS_reboot
    };
    (settimeofday) => {
        libc::SYS_settimeofday
    };
    (clock_settime) => {
        libc::SYS_clock_settime
    };
    (clock_adjtime) => {
        libc::SYS_clock_adjtime
    };
    (adjtimex) => {
        libc::SYS_adjtimex
    };
    (acct) => {
        libc::SYS_acct
    };
    (quotactl) => {
        libc::SYS_quotactl
    };
    (quotactl_fd) => {
        libc::SYS_quotactl_fd
    };
    (iopl) => {
        libc::SYS_iopl
    };
    (ioperm) => {
        libc::SYS_ioperm
    };
    (lookup_dcookie) => {
        libc::SYS_lookup_dcookie
    };
    (uselib) => {
        libc::SYS_uselib
    };
    (vhangup) => {
        libc::SYS_vhangup
    };
    (io_uring_setup) => {
        libc::SYS_io_uring_setup
    };
    (io_uring_enter) => {
        libc::SYS_io_uring_enter
    };
    (io_uring_register) => {
        libc::SYS_io_uring_register
    };
}

/// Calls denied outright: kernel modules and kexec, BPF and perf (kernel
/// attack surface and host observation), userfaultfd (race amplification),
/// the kernel keyring (not namespaced), file handles (the open_by_handle_at
/// escape), every mount API, swap, reboot, the clock, accounting, quotas,
/// port I/O, and io_uring (large attack surface, bypasses this filter).
pub const DENIED: [Rule; 41] = deny![
    kexec_load,
    kexec_file_load,
    init_module,
    finit_module,
    delete_module,
    bpf,
    perf_event_open,
    userfaultfd,
    keyctl,
    add_key,
    request_key,
    open_by_handle_at,
    name_to_handle_at,
    mount,
    umount2,
    pivot_root,
    move_mount,
    open_tree,
    fsopen,
    fsconfig,
    fsmount,
    fspick,
    mount_setattr,
    swapon,
    swapoff,
    reboot,
    settimeofday,
    clock_settime,
    clock_adjtime,
    adjtimex,
    acct,
    quotactl,
    quotactl_fd,
    iopl,
    ioperm,
    lookup_dcookie,
    uselib,
    vhangup,
    io_uring_setup,
    io_uring_enter,
    io_uring_register,
];

/// Calls allowed except for creating a user namespace (which would hand the
/// caller a fresh full capability set).
pub const CONDITIONAL: [Rule; 3] = [
    Rule {
        name: "unshare",
        nr: libc::SYS_unshare,
        action: Action::DenyIfFlags {
            arg: 0,
            flags: CLONE_NEWUSER,
        },
    },
    Rule {
        name: "clone",
        nr: libc::SYS_clone,
        action: Action::DenyIfFlags {
            arg: 0,
            flags: CLONE_NEWUSER,
        },
    },
    Rule {
        name: "clone3",
        nr: libc::SYS_clone3,
        action: Action::NotImplemented,
    },
];

/// The whole default policy.
pub fn default_policy() -> Vec<Rule> {
    DENIED.iter().chain(CONDITIONAL.iter()).copied().collect()
}

// Classic BPF opcodes (linux/filter.h, linux/seccomp.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARGS: u32 = 16;

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInstruction {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> BpfInstruction {
    BpfInstruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> BpfInstruction {
    BpfInstruction { code, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    SECCOMP_RET_ERRNO | (e as u32 & 0xffff)
}

/// Compiles a policy into a BPF program.
pub fn compile(rules: &[Rule]) -> Vec<BpfInstruction> {
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, errno(libc::EPERM)),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, errno(libc::EPERM)),
    ];
    for rule in rules {
        let nr = rule.nr as u32;
        match rule.action {
            Action::Deny => {
                prog.push(jump(BPF_JEQ_K, nr, 0, 1));
                prog.push(stmt(BPF_RET_K, errno(libc::EPERM)));
            }
            Action::NotImplemented => {
                prog.push(jump(BPF_JEQ_K, nr, 0, 1));
                prog.push(stmt(BPF_RET_K, errno(libc::ENOSYS)));
            }
            Action::DenyIfFlags { arg, flags } => {
                // Not this call: skip the 4 instructions below, A still holds nr.
                prog.push(jump(BPF_JEQ_K, nr, 0, 4));
                prog.push(stmt(BPF_LD_W_ABS, OFFSET_ARGS + 8 * u32::from(arg)));
                prog.push(jump(BPF_JSET_K, flags, 0, 1));
                prog.push(stmt(BPF_RET_K, errno(libc::EPERM)));
                prog.push(stmt(BPF_LD_W_ABS, OFFSET_NR));
            }
        }
    }
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions `compile` emits, so the policy's
    /// decisions are tested without installing it.
    fn run(prog: &[BpfInstruction], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let load = |off: u32| -> u32 {
            match off {
                OFFSET_NR => nr,
                OFFSET_ARCH => arch,
                o => {
                    let i = ((o - OFFSET_ARGS) / 8) as usize;
                    args[i] as u32
                }
            }
        };
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS => a = load(ins.k),
                BPF_RET_K => return ins.k,
                BPF_JEQ_K => pc += usize::from(if a == ins.k { ins.jt } else { ins.jf }),
                BPF_JGE_K => pc += usize::from(if a >= ins.k { ins.jt } else { ins.jf }),
                BPF_JSET_K => pc += usize::from(if a & ins.k != 0 { ins.jt } else { ins.jf }),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn decide(nr: i64, arg0: u64) -> u32 {
        run(
            &compile(&default_policy()),
            AUDIT_ARCH_X86_64,
            nr as u32,
            [arg0, 0, 0, 0, 0, 0],
        )
    }

    #[test]
    fn listed_calls_get_eperm_and_others_are_allowed() {
        for rule in DENIED {
            assert_eq!(decide(rule.nr, 0), errno(libc::EPERM), "{}", rule.name);
        }
        for allowed in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_setns,
        ] {
            assert_eq!(decide(allowed, 0), SECCOMP_RET_ALLOW, "syscall {allowed}");
        }
    }

    #[test]
    fn only_user_namespace_creation_is_refused_in_clone_and_unshare() {
        let newuser = u64::from(CLONE_NEWUSER);
        assert_eq!(decide(libc::SYS_unshare, newuser), errno(libc::EPERM));
        assert_eq!(
            decide(libc::SYS_unshare, libc::CLONE_NEWNS as u64 | newuser),
            errno(libc::EPERM)
        );
        assert_eq!(
            decide(libc::SYS_unshare, libc::CLONE_NEWNS as u64),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            decide(libc::SYS_clone, newuser | libc::SIGCHLD as u64),
            errno(libc::EPERM)
        );
        assert_eq!(
            decide(libc::SYS_clone, libc::SIGCHLD as u64),
            SECCOMP_RET_ALLOW,
            "plain fork must work"
        );
        assert_eq!(decide(libc::SYS_clone3, 0), errno(libc::ENOSYS));
    }

    #[test]
    fn other_abis_cannot_bypass_the_table() {
        let prog = compile(&default_policy());
        assert_eq!(
            run(&prog, 0x4000_0003, 1, [0; 6]),
            errno(libc::EPERM),
            "i386"
        );
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 165, [0; 6]),
            errno(libc::EPERM),
            "x32 mount"
        );
    }

    #[test]
    fn policy_covers_what_the_issue_requires() {
        let names: Vec<&str> = default_policy().iter().map(|r| r.name).collect();
        for required in [
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "keyctl",
            "add_key",
            "request_key",
            "open_by_handle_at",
            "name_to_handle_at",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsmount",
            "mount_setattr",
            "swapon",
            "swapoff",
            "reboot",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "acct",
            "quotactl",
            "iopl",
            "ioperm",
            "unshare",
            "clone",
            "clone3",
        ] {
            assert!(
                names.contains(&required),
                "{required} missing from the policy"
            );
        }
    }
}
