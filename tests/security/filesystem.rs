//! Security regressions, filesystem: each test runs one escape attempt inside a
//! real sandbox, asserts it fails, and checks the host side is unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/harness/mod.rs"]
mod harness;
#[path = "support/mod.rs"]
mod support;

use harness::Daemon;
use support::{exec, host_root_device, py, read_or_empty, sh, unique, walk, HostMarker};

/// `mount -t tmpfs`, mount(2), and the new mount API (fsopen) all fail; the
/// host's mount table never sees the target.
#[test]
fn mounting_a_filesystem_fails() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let target = format!("/tmp/{}", unique("mnt"));

    let r = sh(
        &d,
        &id,
        20,
        &format!("mkdir -p {target} && mount -t tmpfs none {target} && echo MOUNTED; grep -c ' {target} ' /proc/self/mountinfo"),
    );
    assert!(
        !r.stdout.contains("MOUNTED"),
        "mount -t tmpfs succeeded: {r:?}"
    );

    let r = py(
        &d,
        &id,
        20,
        &format!(
            r#"
os.makedirs("{target}", exist_ok=True)
res = {{}}
res["mount"] = ename(sc(165, "none", "{target}", "tmpfs", 0, 0)[1])
res["bind"] = ename(sc(165, "/", "{target}", 0, 0x1000 | 0x4000, 0)[1])   # MS_BIND|MS_REC
res["remount_usr_rw"] = ename(sc(165, 0, "/usr", 0, 0x20 | 0x1000, 0)[1])  # MS_REMOUNT|MS_BIND
res["umount_proc"] = ename(sc(166, "/proc/sys", 2)[1])                     # MNT_DETACH
res["fsopen"] = ename(sc(430, "tmpfs", 0)[1])
res["open_tree"] = ename(sc(428, -100, "/", 1)[1])                          # OPEN_TREE_CLONE
res["pivot_root"] = ename(sc(155, "{target}", "{target}")[1])
res["mounted"] = any(" {target} " in l for l in open("/proc/self/mountinfo"))
out(res)
"#
        ),
    );
    let res = r.json();
    for call in [
        "mount",
        "bind",
        "remount_usr_rw",
        "umount_proc",
        "fsopen",
        "open_tree",
    ] {
        assert_eq!(res[call], "EPERM", "{call}: {res}");
    }
    assert_ne!(res["pivot_root"], "0", "{res}");
    assert_eq!(res["mounted"], false, "{res}");
    assert!(
        !harness::mountinfo().contains(&target),
        "the host's mount table shows {target}"
    );
    // /usr is still read-only inside.
    let r = sh(&d, &id, 10, "touch /usr/warren-sec-probe && echo WROTE");
    assert!(!r.stdout.contains("WROTE"), "{r:?}");
}

/// /etc/shadow and friends read nothing of the host's, and cannot be written.
#[test]
fn host_shadow_files_are_not_readable_or_writable() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let files = [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/shadow-",
        "/etc/gshadow-",
    ];
    let before: Vec<Vec<u8>> = files.iter().map(read_or_empty).collect();

    let r = py(
        &d,
        &id,
        20,
        r#"
res = {}
for p in ["/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-"]:
    try:
        res[p] = open(p, "rb").read().decode("latin-1")
    except OSError as e:
        res[p] = "ERR " + ename(e.errno)
    try:
        with open(p, "ab") as f:
            f.write(b"pwned::0:0:::::\n")
        res[p + " write"] = "WROTE"
    except OSError as e:
        res[p + " write"] = "ERR " + ename(e.errno)
out(res)
"#,
    );
    let res = r.json();
    for (path, host) in files.iter().zip(&before) {
        let seen = res[*path].as_str().unwrap();
        let host = String::from_utf8_lossy(host);
        assert!(
            seen.starts_with("ERR") || seen.is_empty(),
            "{path} is readable in the sandbox: {seen:?}"
        );
        for line in host.lines().filter(|l| l.len() > 3) {
            assert!(!seen.contains(line), "{path}: host line visible");
        }
        assert_ne!(res[format!("{path} write")], "WROTE", "{path}: {res}");
    }
    let after: Vec<Vec<u8>> = files.iter().map(read_or_empty).collect();
    assert_eq!(before, after, "host shadow files changed");
}

/// Markers the host puts in /root, /home/<x>, /var/lib, /run, /tmp and the
/// data dir are invisible by every route (direct, /proc/*/root, `..`, find).
#[test]
fn host_paths_outside_the_image_view_are_invisible() {
    require_root!();
    let d = Daemon::start();
    let name = unique("marker");
    let home_dir = std::path::PathBuf::from(format!("/home/{}", unique("user")));
    let markers = [
        HostMarker::create(std::path::Path::new("/root"), &name),
        HostMarker::create(&home_dir, &name),
        HostMarker::create(std::path::Path::new("/var/lib"), &name),
        HostMarker::create(std::path::Path::new("/run"), &name),
        HostMarker::create(std::path::Path::new("/tmp"), &name),
        HostMarker::create(d.data_dir(), &name),
    ];
    let id = d.create(&[]);

    let mut script = String::from("set +e\n");
    for m in &markers {
        let p = m.path.display();
        for route in ["", "/proc/1/root", "/proc/self/root", "/../../.."] {
            script.push_str(&format!(
                "cat {route}{p} 2>/dev/null && echo \"LEAK {route}{p}\"\n"
            ));
        }
        let dir = m.path.parent().unwrap().display();
        script.push_str(&format!(
            "ls -a {dir} 2>/dev/null | grep -q {name} && echo \"LISTED {dir}\"\n"
        ));
    }
    script.push_str(&format!(
        "find / -name '{name}*' -not -path '/proc/*' -not -path '/sys/*' 2>/dev/null | sed 's/^/FOUND /'\n"
    ));
    let r = sh(&d, &id, 60, &script);
    assert!(r.elapsed.as_secs() < 60, "probe timed out: {r:?}");
    for m in &markers {
        assert!(
            !r.stdout.contains(&m.content),
            "host content of {} visible: {r:?}",
            m.path.display()
        );
    }
    assert!(
        !r.stdout.contains("LEAK") && !r.stdout.contains("LISTED") && !r.stdout.contains("FOUND"),
        "{}",
        r.stdout
    );
    // The host's markers are untouched.
    for m in &markers {
        assert_eq!(std::fs::read_to_string(&m.path).unwrap(), m.content);
    }
}

/// Writes to the read-only host view (/usr, /etc, /opt) fail and the host's
/// files are unchanged.
#[test]
fn host_system_directories_are_read_only() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let name = unique("ro");
    let watched = ["/etc/passwd", "/etc/hosts", "/etc/hostname", "/usr/bin/env"];
    let before: Vec<Vec<u8>> = watched.iter().map(read_or_empty).collect();

    let r = sh(
        &d,
        &id,
        30,
        &format!(
            "set +e
for dir in /usr /usr/bin /etc /opt /usr/lib; do touch $dir/{name} 2>/dev/null && echo \"CREATED $dir\"; done
echo 'pwned:x:0:0::/:/bin/sh' >> /etc/passwd 2>/dev/null || echo 'PRIVATE passwd not writable'
echo pwned > /etc/hostname 2>/dev/null && echo 'WROTE hostname'
cp /bin/sh /usr/bin/env 2>/dev/null && echo 'WROTE env'
rm -f /etc/hosts 2>/dev/null && echo 'REMOVED hosts'
chmod 777 /usr/bin 2>/dev/null && echo 'CHMOD usr'
true"
        ),
    );
    assert!(r.ok(), "{r:?}");
    // /etc/passwd and /etc/group are the sandbox's private copies (so users
    // can be added): root may write them, the host's must stay unchanged
    // (checked below with the other watched files).
    assert_eq!(r.stdout.trim(), "", "writes to the host view succeeded");
    for dir in ["/usr", "/usr/bin", "/etc", "/opt", "/usr/lib"] {
        let p = std::path::Path::new(dir).join(&name);
        let existed = p.exists();
        let _ = std::fs::remove_file(&p);
        assert!(!existed, "{} created on the host", p.display());
    }
    let after: Vec<Vec<u8>> = watched.iter().map(read_or_empty).collect();
    assert_eq!(before, after, "host files changed");
}

/// mknod of the host's root disk fails; if a node appeared anyway it cannot
/// be read; nothing device-like lands in the sandbox's upper dir on the host.
#[test]
fn device_node_for_the_host_disk_cannot_be_made_or_read() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let (major, minor) = host_root_device();

    let r = py(
        &d,
        &id,
        30,
        &format!(
            r#"
import stat
res = {{}}
dev = os.makedev({major}, {minor})
for p in ["/tmp/hostdisk", "/dev/vda", "/workspace/hostdisk", "/dev/shm/hostdisk"]:
    try:
        os.mknod(p, stat.S_IFBLK | 0o600, dev)
        res[p] = "CREATED"
    except OSError as e:
        res[p] = ename(e.errno)
    try:
        fd = os.open(p, os.O_RDONLY)
        data = os.read(fd, 512)
        res[p + " read"] = "READ %d" % len(data)
    except OSError as e:
        res[p + " read"] = ename(e.errno)
# Also the character devices for memory and raw ports.
for name, maj, mi in [("mem", 1, 1), ("kmsg", 1, 11), ("port", 1, 4)]:
    p = "/tmp/" + name
    try:
        os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(maj, mi))
        res[p] = "CREATED"
    except OSError as e:
        res[p] = ename(e.errno)
    try:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 1)
        res[p + " read"] = "READ"
    except OSError as e:
        res[p + " read"] = ename(e.errno)
out(res)
"#
        ),
    );
    let res = r.json();
    for (key, value) in res.as_object().unwrap() {
        let v = value.as_str().unwrap();
        if key.ends_with(" read") {
            assert!(!v.starts_with("READ"), "{key}: {res}");
        } else {
            assert_ne!(v, "CREATED", "mknod {key} succeeded: {res}");
        }
    }
    let r = sh(
        &d,
        &id,
        10,
        &format!("mknod /tmp/vda2 b {major} {minor} && echo MADE"),
    );
    assert!(!r.stdout.contains("MADE"), "{r:?}");

    // Host side: no device node in the sandbox's upper dir.
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let upper = d.data_dir().join("sandboxes").join(&id).join("upper");
    for p in walk(&upper) {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let ft = meta.file_type();
        // Overlay whiteouts are 0:0 character devices; anything else is a leak.
        let real_device = ft.is_block_device() || (ft.is_char_device() && meta.rdev() != 0);
        assert!(!real_device, "device node on the host: {}", p.display());
    }
}

/// open_by_handle_at (the "shocker" escape) is refused, with a forged ext4
/// root handle and with a real handle from name_to_handle_at.
#[test]
fn open_by_handle_at_against_the_host_fs_is_denied() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let r = py(
        &d,
        &id,
        20,
        r#"
class FH(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]
res = {}
mount_fd = os.open("/etc", os.O_RDONLY)    # a bind of the host's root filesystem
# Forged: ext4 FILEID_INO32_GEN for the root inode 2, generation 0.
forged = FH(8, 1)
forged.f_handle[0] = 2
r, e = sc(304, mount_fd, ctypes.byref(forged), os.O_RDONLY)
res["forged"] = "OPENED" if r >= 0 else ename(e)
# A genuine handle of /etc/hostname, then reopen through it.
real = FH(128, 0)
mnt_id = ctypes.c_int(0)
r, e = sc(303, -100, "/etc/hostname", ctypes.byref(real), ctypes.byref(mnt_id), 0)
res["name_to_handle_at"] = "0" if r == 0 else ename(e)
if r == 0:
    r, e = sc(304, mount_fd, ctypes.byref(real), os.O_RDONLY)
    res["real"] = "OPENED" if r >= 0 else ename(e)
else:
    res["real"] = "no handle"
out(res)
"#,
    );
    let res = r.json();
    assert_eq!(res["forged"], "EPERM", "{res}");
    assert_ne!(res["real"], "OPENED", "{res}");
    if res["name_to_handle_at"] == "0" {
        assert_eq!(res["real"], "EPERM", "{res}");
    }
}

/// CVE-2019-5736 pattern: the runtime binary cannot be opened for writing
/// through /proc/self/exe or /proc/1/exe (or the bind at /.warren/agent), and
/// the host's copy is byte-for-byte unchanged.
#[test]
fn runtime_binary_cannot_be_overwritten_through_proc_exe() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let agent = d.data_dir().join("bin").join("warren-agent");
    let agent_before = std::fs::read(&agent).unwrap();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let python_before = std::fs::read(&python).unwrap();

    let r = py(
        &d,
        &id,
        30,
        r#"
res = {}
for p in ["/proc/1/exe", "/proc/self/exe", "/.warren/agent"]:
    for mode, flags in [("wronly", os.O_WRONLY), ("rdwr", os.O_RDWR), ("trunc", os.O_WRONLY | os.O_TRUNC)]:
        try:
            fd = os.open(p, flags)
            os.write(fd, b"\x7fELF pwned\n")
            res[p + " " + mode] = "WROTE"
        except OSError as e:
            res[p + " " + mode] = ename(e.errno)
    # O_PATH first, then re-open through the fd's magic link.
    try:
        fd = os.open(p, os.O_PATH)
        fd2 = os.open("/proc/self/fd/%d" % fd, os.O_WRONLY)
        os.write(fd2, b"pwned")
        res[p + " reopen"] = "WROTE"
    except OSError as e:
        res[p + " reopen"] = ename(e.errno)
    try:
        os.truncate(p, 0)
        res[p + " truncate"] = "WROTE"
    except OSError as e:
        res[p + " truncate"] = ename(e.errno)
out(res)
"#,
    );
    let res = r.json();
    for (k, v) in res.as_object().unwrap() {
        assert_ne!(v, "WROTE", "{k}: {res}");
    }
    let r = sh(
        &d,
        &id,
        10,
        "cp /bin/sh /proc/1/exe 2>&1; cat /bin/sh > /.warren/agent 2>&1; true",
    );
    assert!(r.ok(), "{r:?}");
    assert!(
        std::fs::read(&agent).unwrap() == agent_before,
        "host agent binary changed"
    );
    assert!(
        std::fs::read(&python).unwrap() == python_before,
        "host python3 changed"
    );
    // And the sandbox still works (its agent is intact).
    let r = exec(&d, &id, 10, &["echo", "alive"]);
    assert_eq!(r.stdout.trim(), "alive", "{r:?}");
}

/// Python probe: every fd of this process and of PID 1 that names a path must
/// be that same file inside the sandbox (or the null device); prints offenders.
const FD_PROBE: &str = r#"
res = {"bad": [], "fds": {}}
def check(pid):
    base = "/proc/%s/fd" % pid
    for n in os.listdir(base):
        try:
            target = os.readlink(base + "/" + n)
        except OSError:
            continue
        res["fds"]["%s/%s" % (pid, n)] = target
        if not target.startswith("/"):
            continue   # socket:, pipe:, anon_inode:
        try:
            st = os.stat(base + "/" + n)
        except OSError as e:
            res["bad"].append([pid, n, target, "stat " + ename(e.errno)])
            continue
        if os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3 and (st.st_mode & 0o170000) == 0o020000:
            continue   # the null device, wherever it was opened
        try:
            inside = os.stat(target)
            same = (inside.st_dev, inside.st_ino) == (st.st_dev, st.st_ino)
        except OSError:
            same = False
        if not same:
            res["bad"].append([pid, n, target, "not this file inside the sandbox"])
check("self")
check("1")
cwd = os.readlink("/proc/self/cwd")
res["cwd"] = cwd
res["cwd_inside"] = os.path.samestat(os.stat("/proc/self/cwd"), os.stat(cwd))
res["root"] = os.readlink("/proc/1/root")
out(res)
"#;

/// CVE-2024-21626 pattern: no fd of PID 1 or of a command refers to a host
/// path (the data dir, the host's /dev/pts, …) and the cwd is inside.
#[test]
fn no_fd_in_the_sandbox_refers_to_a_host_path() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let r = py(&d, &id, 20, FD_PROBE);
    let res = r.json();
    assert_eq!(res["cwd_inside"], true, "{res}");
    assert_eq!(res["root"], "/", "{res}");
    let data = d.data_dir().display().to_string();
    for (fd, target) in res["fds"].as_object().unwrap() {
        let t = target.as_str().unwrap();
        assert!(!t.starts_with(&data), "fd {fd} -> host data dir {t}");
    }
    assert_eq!(
        res["bad"],
        serde_json::json!([]),
        "fds naming files outside the sandbox: {res}"
    );
}

/// Whatever PID 1 holds open, a leaked fd is never writable to a host file
/// and never a directory a command can chdir through (`--cwd /proc/self/fd/N`,
/// `/proc/1/fd/N`): the resulting cwd is always inside the sandbox.
#[test]
fn leaked_fds_give_no_host_write_or_host_cwd() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let r = py(
        &d,
        &id,
        20,
        r#"
res = {}
for n in os.listdir("/proc/1/fd"):
    p = "/proc/1/fd/" + n
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) == 0o100000:
            res[p] = "WRITABLE FILE " + os.readlink(p)
    except OSError:
        pass
    try:
        os.chdir(p)
        res[p + " chdir"] = os.getcwd()
    except OSError:
        pass
out(res)
"#,
    );
    let res = r.json();
    assert_eq!(res, serde_json::json!({}), "leaked fds usable: {res}");

    let data = d.data_dir().display().to_string();
    for n in 0..12 {
        for base in ["/proc/self/fd", "/proc/1/fd"] {
            let cwd = format!("{base}/{n}");
            let out = d.warren(&[
                "exec",
                "--timeout",
                "10",
                "--cwd",
                &cwd,
                &id,
                "--",
                "/usr/bin/python3",
                "-c",
                "import os; c = os.readlink('/proc/self/cwd'); print(c, os.path.samestat(os.stat('.'), os.stat(c)))",
            ]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            if out.status.success() {
                assert!(
                    !stdout.contains(&data) && stdout.trim().ends_with("True"),
                    "--cwd {cwd} escaped: {stdout}"
                );
            }
        }
    }
}

/// /proc/sysrq-trigger and /proc/sys cannot be written; host values unchanged.
#[test]
fn sysrq_trigger_and_proc_sys_are_not_writable() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let watched = [
        "/proc/sys/kernel/sysrq",
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/vm/overcommit_memory",
        "/proc/sys/kernel/panic",
    ];
    let before: Vec<Vec<u8>> = watched.iter().map(read_or_empty).collect();
    let r = py(
        &d,
        &id,
        20,
        r#"
res = {}
for p, v in [("/proc/sysrq-trigger", b"h"), ("/proc/sys/kernel/sysrq", b"1"),
             ("/proc/sys/kernel/core_pattern", b"|/tmp/pwn"),
             ("/proc/sys/vm/overcommit_memory", b"1"), ("/proc/sys/kernel/panic", b"1"),
             ("/proc/sys/vm/drop_caches", b"3")]:
    try:
        with open(p, "wb") as f:
            f.write(v)
        res[p] = "WROTE"
    except OSError as e:
        res[p] = ename(e.errno)
out(res)
"#,
    );
    let res = r.json();
    for (k, v) in res.as_object().unwrap() {
        assert_ne!(v, "WROTE", "{k}: {res}");
    }
    let after: Vec<Vec<u8>> = watched.iter().map(read_or_empty).collect();
    assert_eq!(before, after, "host /proc/sys values changed");
}
