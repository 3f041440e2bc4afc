//! Security regressions, privileges: kernel modules, cgroup release_agent,
//! capabilities and setuid, nested user namespaces, the seccomp filter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/harness/mod.rs"]
mod harness;
#[path = "support/mod.rs"]
mod support;

use harness::Daemon;
use support::{py, read_or_empty, sh, unique, walk};

/// runc's default capability set: chown, dac_override, fowner, fsetid, kill,
/// setgid, setuid, setpcap, net_bind_service, net_raw, sys_chroot, mknod,
/// audit_write, setfcap.
const RUNC_DEFAULT_CAPS: u64 = 0xa80425fb;
const CAP_SYS_ADMIN: u32 = 21;

/// init_module / finit_module / delete_module are refused.
#[test]
fn loading_a_kernel_module_fails() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let modules_before = read_or_empty("/proc/modules");
    let r = py(
        &d,
        &id,
        20,
        r#"
res = {}
image = ctypes.create_string_buffer(b"\x7fELF" + b"\0" * 4092)
res["init_module"] = ename(sc(175, image, 4096, "")[1])
fd = os.open("/usr/bin/true", os.O_RDONLY)
res["finit_module"] = ename(sc(313, fd, "", 0)[1])
res["delete_module"] = ename(sc(176, "ext4", 0o4000)[1])   # O_NONBLOCK
out(res)
"#,
    );
    let res = r.json();
    // Without CONFIG_MODULES the host kernel answers ENOSYS (seccomp, when it
    // filters these, answers EPERM first).
    let no_modules = !std::path::Path::new("/proc/modules").exists();
    for call in ["init_module", "finit_module", "delete_module"] {
        let e = res[call].as_str().unwrap();
        assert!(
            e == "EPERM" || (no_modules && e == "ENOSYS"),
            "{call}: {res}"
        );
    }
    let r = sh(
        &d,
        &id,
        10,
        "modprobe dummy 2>&1; insmod /nonexistent.ko 2>&1; true",
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        modules_before,
        read_or_empty("/proc/modules"),
        "host modules changed"
    );
}

/// CVE-2022-0492: mounting a cgroup v1 hierarchy and writing release_agent
/// fails, directly and from a nested user+mount+cgroup namespace; the host's
/// release_agent files are unchanged.
#[test]
fn cgroup_release_agent_cannot_be_set() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let agents: Vec<_> = walk(std::path::Path::new("/sys/fs/cgroup"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "release_agent"))
        .collect();
    let before: Vec<Vec<u8>> = agents.iter().map(read_or_empty).collect();
    let payload = format!("/tmp/{}", unique("release-agent"));
    let attempt = format!(
        "for ctl in rdma memory pids cpu freezer devices; do
  mkdir -p /tmp/cg-$ctl
  if mount -t cgroup -o $ctl cgroup /tmp/cg-$ctl 2>/dev/null; then
    echo MOUNTED $ctl
    echo 1 > /tmp/cg-$ctl/notify_on_release 2>/dev/null
    echo {payload} > /tmp/cg-$ctl/release_agent 2>/dev/null && echo RELEASE_AGENT $ctl
  fi
done
mkdir -p /tmp/cg2 && mount -t cgroup2 none /tmp/cg2 2>/dev/null && echo MOUNTED cgroup2
ls /sys/fs/cgroup 2>/dev/null | sed 's/^/VISIBLE /'
echo {payload} > /sys/fs/cgroup/release_agent 2>/dev/null && echo RELEASE_AGENT sysfs
true"
    );
    let r = sh(&d, &id, 30, &attempt);
    assert!(r.ok(), "{r:?}");
    assert!(!r.stdout.contains("RELEASE_AGENT"), "{}", r.stdout);
    assert!(!r.stdout.contains("MOUNTED"), "{}", r.stdout);

    // The classic exploit goes through a new user namespace first (refused
    // once seccomp filters CLONE_NEWUSER; release_agent must fail regardless).
    let nested = format!(
        "cat > /tmp/attempt.sh <<'EOF'\n{attempt}\nEOF\nunshare -UrmC --propagation=unchanged sh /tmp/attempt.sh 2>&1; true"
    );
    let r = sh(&d, &id, 30, &nested);
    assert!(!r.stdout.contains("RELEASE_AGENT"), "{}", r.stdout);

    let after: Vec<Vec<u8>> = agents.iter().map(read_or_empty).collect();
    assert_eq!(before, after, "a host release_agent changed");
    for (p, v) in agents.iter().zip(&after) {
        assert!(
            !String::from_utf8_lossy(v).contains(&payload),
            "{}",
            p.display()
        );
    }
}

/// no_new_privs is set, the bounding set is runc's default (no
/// CAP_SYS_ADMIN), and a setuid-root binary run by an unprivileged user in the
/// sandbox gains neither a uid nor capabilities. On the host, the setuid file
/// the sandbox made is owned by the sandbox's unprivileged host uid.
#[test]
fn setuid_binaries_and_capabilities_give_nothing_beyond_the_bounding_set() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let status = sh(&d, &id, 10, "cat /proc/self/status").stdout;
    let field = |k: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("{k} missing: {status}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("NoNewPrivs"), "1");
    let bnd = u64::from_str_radix(&field("CapBnd"), 16).unwrap();
    assert_eq!(
        bnd & (1 << CAP_SYS_ADMIN),
        0,
        "CAP_SYS_ADMIN in bounding set"
    );
    assert_eq!(
        bnd & !RUNC_DEFAULT_CAPS,
        0,
        "caps beyond runc's default: {bnd:#x}"
    );
    for k in ["CapEff", "CapPrm", "CapInh"] {
        let v = u64::from_str_radix(&field(k), 16).unwrap();
        assert_eq!(v & !bnd, 0, "{k} {v:#x} exceeds the bounding set {bnd:#x}");
    }
    assert_eq!(field("CapAmb"), "0000000000000000");

    // A setuid-root copy of python, run as uid 1000 inside the sandbox.
    let probe = "import os; s = open('/proc/self/status').read(); \
                 print('EUID', os.geteuid()); \
                 print([l for l in s.splitlines() if l.startswith('CapEff')][0])";
    let r = sh(
        &d,
        &id,
        20,
        &format!(
            "cp /usr/bin/python3 /workspace/suid-python && chmod 4755 /workspace/suid-python && \
             setpriv --reuid=1000 --regid=1000 --clear-groups /workspace/suid-python -c \"{probe}\"; \
             for b in /usr/bin/su /usr/bin/passwd /usr/bin/newgrp /usr/bin/chsh; do \
               [ -u $b ] && setpriv --reuid=1000 --regid=1000 --clear-groups $b --help </dev/null >/dev/null 2>&1; done; \
             setpriv --reuid=1000 --regid=1000 --clear-groups cat /proc/self/status | grep -E '^(Uid|CapEff)'"
        ),
    );
    assert!(r.stdout.contains("EUID 1000"), "setuid bit honoured: {r:?}");
    assert!(
        r.stdout.contains("CapEff:\t0000000000000000"),
        "caps gained: {r:?}"
    );
    assert!(!r.stdout.contains("EUID 0"), "{r:?}");

    // Host side: the setuid file lives in the upper dir, owned by the
    // sandbox's unprivileged host uid, never by host root.
    use std::os::unix::fs::MetadataExt;
    let upper = d.data_dir().join("sandboxes").join(&id).join("upper");
    let copy = walk(&upper)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "suid-python"))
        .expect("suid-python in the upper dir");
    let meta = std::fs::metadata(&copy).unwrap();
    assert!(meta.uid() >= 100_000, "owned by host uid {}", meta.uid());
}

/// With the `user` option (issue 3), commands run as an unprivileged user who
/// cannot regain root through the image's setuid binaries.
#[test]
fn unprivileged_user_option_cannot_regain_root_through_setuid() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let out = d.warren(&[
        "exec",
        "--timeout",
        "20",
        "--user",
        "agent",
        &id,
        "--",
        "sh",
        "-c",
        "id -u; grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status; \
         su -c 'id -u' root </dev/null 2>&1; \
         touch /usr/x 2>/dev/null && echo WROTE; true",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exec --user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let uid: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(uid >= 1000, "not an unprivileged uid: {stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("CapPrm:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(!stdout.lines().skip(1).any(|l| l.trim() == "0"), "{stdout}");
    assert!(!stdout.contains("WROTE"), "{stdout}");
}

/// A nested user namespace (where the caller would be "root" with a full
/// capability set again) cannot be created: unshare(1), unshare(2) and
/// clone(2) with CLONE_NEWUSER are refused. Needs seccomp (issue 3).
#[test]
fn nested_user_namespace_cannot_be_created() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let target = format!("/tmp/{}", unique("nested"));
    let r = sh(
        &d,
        &id,
        20,
        &format!(
            "mkdir -p {target}; unshare -Urm sh -c 'echo INSIDE; mount -t tmpfs none {target} && echo MOUNTED' 2>&1; true"
        ),
    );
    assert!(!r.stdout.contains("MOUNTED"), "{r:?}");
    assert!(
        !r.stdout.contains("INSIDE"),
        "nested user namespace created: {r:?}"
    );
    assert!(!harness::mountinfo().contains(&target));

    let r = py(
        &d,
        &id,
        20,
        r#"
res = {}
CLONE_NEWUSER = 0x10000000
res["unshare"] = ename(sc(272, CLONE_NEWUSER)[1])
res["unshare_mnt_user"] = ename(sc(272, CLONE_NEWUSER | 0x00020000)[1])
r, e = sc(56, CLONE_NEWUSER | 17, 0, 0, 0, 0)   # clone(CLONE_NEWUSER|SIGCHLD)
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
res["clone"] = "CREATED" if r > 0 else ename(e)
out(res)
"#,
    );
    let res = r.json();
    assert_eq!(res["unshare"], "EPERM", "{res}");
    assert_eq!(res["unshare_mnt_user"], "EPERM", "{res}");
    assert_eq!(res["clone"], "EPERM", "{res}");
}

/// The seccomp filter (issue 3) is installed and refuses the listed syscalls
/// with EPERM (clone3 with ENOSYS, so libcs fall back to clone).
#[test]
fn seccomp_filter_refuses_dangerous_syscalls() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let r = py(
        &d,
        &id,
        20,
        r#"
res = {}
res["Seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
buf = ctypes.create_string_buffer(256)
calls = {
    "mount": (165, 0, 0, 0, 0, 0), "umount2": (166, "/proc", 0), "pivot_root": (155, "/", "/"),
    "open_tree": (428, -100, "/", 0), "move_mount": (429, -1, "", -1, "", 0),
    "fsopen": (430, "tmpfs", 0), "fsmount": (432, -1, 0, 0), "mount_setattr": (442, -1, "", 0, 0, 0),
    "kexec_load": (246, 0, 0, 0, 0), "kexec_file_load": (320, -1, -1, 0, 0, 0),
    "init_module": (175, 0, 0, ""), "finit_module": (313, -1, "", 0), "delete_module": (176, "x", 0),
    "bpf": (321, 0, 0, 0), "perf_event_open": (298, 0, 0, -1, -1, 0), "userfaultfd": (323, 0),
    "keyctl": (250, 0, -3, 0), "add_key": (248, "user", "x", 0, 0, -3), "request_key": (249, "user", "x", 0, 0),
    "name_to_handle_at": (303, -100, "/", buf, buf, 0), "open_by_handle_at": (304, -1, buf, 0),
    "swapon": (167, "/nonexistent", 0), "swapoff": (168, "/nonexistent"),
    "reboot": (169, 0, 0, 0, 0),
    "settimeofday": (164, 0, 0), "clock_settime": (227, 0, 0), "clock_adjtime": (305, 0, 0), "adjtimex": (159, 0),
    "acct": (163, 0), "quotactl": (179, 0, 0, 0, 0), "iopl": (172, 0), "ioperm": (173, 0, 0, 0),
    "unshare_newuser": (272, 0x10000000),
}
for name, args in calls.items():
    r, e = sc(*args)
    res[name] = "0" if r >= 0 else ename(e)
    if r >= 0 and name in ("userfaultfd",):
        os.close(r)
res["clone3"] = ename(sc(435, 0, 0)[1])
# Ordinary syscalls still work.
res["getpid"] = "0" if sc(39)[0] > 0 else "FAILED"
out(res)
"#,
    );
    let res = r.json();
    assert_eq!(res["Seccomp"], "2", "no seccomp filter installed: {res}");
    let obj = res.as_object().unwrap();
    for (name, v) in obj {
        match name.as_str() {
            "Seccomp" | "getpid" => {}
            "clone3" => assert_eq!(v, "ENOSYS", "clone3: {res}"),
            _ => assert_eq!(v, "EPERM", "{name}: {res}"),
        }
    }
    assert_eq!(res["getpid"], "0", "{res}");
}
