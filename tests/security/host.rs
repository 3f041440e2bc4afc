//! Security regressions, the host's processes and network: invisible,
//! unsignalable, untraceable, unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/harness/mod.rs"]
mod harness;
#[path = "support/mod.rs"]
mod support;

use harness::Daemon;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use support::{host_ipv4_addrs, py, sh, unique, HostProcess};

/// A host `sleep` is not in the sandbox's /proc, `kill -0`/`kill -9` on its
/// pid fail, pidfd_open fails, and it is still running afterwards.
#[test]
fn host_processes_are_invisible_and_cannot_be_signalled() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let mut host = HostProcess::sleep();
    let pid = host.pid();
    let runner_pid = std::process::id();

    let r = sh(
        &d,
        &id,
        20,
        &format!(
            "set +e
ls /proc | grep -qx {pid} && echo VISIBLE
ls /proc | grep -qx {runner_pid} && echo VISIBLE_RUNNER
kill -0 {pid} 2>/dev/null && echo SIGNALLED0
kill -STOP {pid} 2>/dev/null && echo STOPPED
kill -9 {pid} 2>/dev/null && echo KILLED
kill -9 -1 2>/dev/null
ps -eo pid,comm | grep -w sleep | grep -w {pid} && echo PS
true"
        ),
    );
    assert!(r.ok() || r.code == Some(137), "{r:?}");
    for word in ["VISIBLE", "SIGNALLED0", "STOPPED", "KILLED", "PS"] {
        assert!(!r.stdout.contains(word), "{word}: {r:?}");
    }
    let r = py(
        &d,
        &id,
        20,
        &format!(
            r#"
res = {{}}
res["pidfd_open"] = ename(sc(434, {pid}, 0)[1])
res["kill"] = ename(sc(62, {pid}, 0)[1])
res["tgkill"] = ename(sc(234, {pid}, {pid}, 9)[1])
res["getpgid"] = ename(sc(121, {pid})[1])
res["sched_getparam"] = ename(sc(143, {pid}, ctypes.create_string_buffer(64))[1])
out(res)
"#
        ),
    );
    let res = r.json();
    for (call, v) in res.as_object().unwrap() {
        assert_eq!(v, "ESRCH", "{call} on a host pid: {res}");
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(host.alive(), "host process died");
    let state = host.status_field("State");
    assert!(
        state.starts_with('S') || state.starts_with('R'),
        "host process state {state}"
    );
}

/// PTRACE_ATTACH / PTRACE_SEIZE on a host pid and process_vm_readv fail; the
/// host process has no tracer afterwards.
#[test]
fn ptrace_of_a_host_process_fails() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let mut host = HostProcess::sleep();
    let pid = host.pid();
    let r = py(
        &d,
        &id,
        20,
        &format!(
            r#"
res = {{}}
res["attach"] = ename(sc(101, 16, {pid}, 0, 0)[1])        # PTRACE_ATTACH
res["seize"] = ename(sc(101, 0x4206, {pid}, 0, 0)[1])     # PTRACE_SEIZE
buf = ctypes.create_string_buffer(16)
class IOV(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
local = IOV(ctypes.cast(buf, ctypes.c_void_p), 16)
remote = IOV(0x400000, 16)
res["process_vm_readv"] = ename(sc(310, {pid}, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)[1])
try:
    open("/proc/{pid}/mem", "rb")
    res["proc_mem"] = "OPENED"
except OSError as e:
    res["proc_mem"] = ename(e.errno)
# Tracing inside the sandbox is confined to the sandbox: PID 1 (the agent).
out(res)
"#
        ),
    );
    let res = r.json();
    for (call, v) in res.as_object().unwrap() {
        assert!(
            v == "ESRCH" || v == "EPERM" || v == "ENOENT",
            "{call} on a host pid: {res}"
        );
    }
    assert!(host.alive());
    assert_eq!(host.status_field("TracerPid"), "0", "host process traced");
}

/// With networking off, TCP listeners on the host's 127.0.0.1 and on its
/// other IPv4 addresses, an abstract unix socket and the daemon's socket are
/// all unreachable, and the attempts fail fast; no connection is accepted.
#[test]
fn host_ports_and_sockets_are_unreachable_without_networking() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--network", "none"]);

    let mut listeners = vec![TcpListener::bind("127.0.0.1:0").unwrap()];
    for addr in host_ipv4_addrs() {
        if let Ok(l) = TcpListener::bind(format!("{addr}:0")) {
            listeners.push(l);
        }
    }
    if let Ok(l) = TcpListener::bind("0.0.0.0:0") {
        listeners.push(l);
    }
    let mut targets: Vec<String> = Vec::new();
    for l in &listeners {
        l.set_nonblocking(true).unwrap();
        let a = l.local_addr().unwrap();
        if a.ip().is_unspecified() {
            targets.push(format!("127.0.0.1:{}", a.port()));
            for addr in host_ipv4_addrs() {
                targets.push(format!("{addr}:{}", a.port()));
            }
        } else {
            targets.push(a.to_string());
        }
    }
    // An abstract unix socket lives in the host's network namespace.
    let abstract_name = unique("abstract");
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    abstract_listener.set_nonblocking(true).unwrap();

    let targets_py = targets
        .iter()
        .map(|t| {
            let (h, p) = t.rsplit_once(':').unwrap();
            format!("(\"{h}\", {p})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let r = py(
        &d,
        &id,
        60,
        &format!(
            r#"
import socket, time
res = {{}}
for host, port in [{targets_py}]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    t = time.monotonic()
    try:
        s.connect((host, port))
        res["%s:%d" % (host, port)] = "CONNECTED"
    except OSError as e:
        res["%s:%d" % (host, port)] = "%s %.2f" % (ename(e.errno) if e.errno else type(e).__name__, time.monotonic() - t)
    s.close()
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    u.connect("\0{abstract_name}")
    res["abstract"] = "CONNECTED"
except OSError as e:
    res["abstract"] = ename(e.errno)
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    u.connect("{daemon_socket}")
    res["daemon_socket"] = "CONNECTED"
except OSError as e:
    res["daemon_socket"] = ename(e.errno)
res["interfaces"] = sorted(os.listdir("/sys/class/net"))
out(res)
"#,
            daemon_socket = d.socket.display()
        ),
    );
    let res = r.json();
    assert_eq!(res["interfaces"], serde_json::json!(["lo"]), "{res}");
    for t in &targets {
        let v = res[t.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("{t}: {res}"));
        assert_ne!(v, "CONNECTED", "{t} reachable from the sandbox: {res}");
        let secs: f64 = v
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(99.0);
        assert!(secs < 2.5, "{t}: did not fail fast: {v}");
    }
    assert_ne!(res["abstract"], "CONNECTED", "{res}");
    assert_ne!(res["daemon_socket"], "CONNECTED", "{res}");
    // Nothing reached the host.
    for l in &listeners {
        assert!(l.accept().is_err(), "a host listener accepted a connection");
    }
    assert!(
        abstract_listener.accept().is_err(),
        "abstract socket accepted"
    );
}

/// A setuid-root program a sandbox makes (or an image brings) is owned by the
/// sandbox's root, host uid 1000000. Other host users must not be able to
/// run it from Warren's data directory and become that uid: `sandboxes/` and
/// `images/` are open only to root and the sandboxes' own group.
#[test]
fn host_users_cannot_run_setuid_files_of_sandboxes() {
    require_root!();
    let d = Daemon::start();
    // Make the whole path traversable like a default /var/lib/warren (0711).
    std::fs::set_permissions(
        d.data_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let id = d.create(&[]);
    let r = sh(
        &d,
        &id,
        10,
        "cp /bin/true /workspace/suid && chmod 4755 /workspace/suid && echo ok",
    );
    assert_eq!(r.stdout.trim(), "ok", "{r:?}");
    let upper_file = d
        .data_dir()
        .join(format!("sandboxes/{id}/upper/workspace/suid"));
    let meta = std::fs::metadata(&upper_file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o4000,
        0o4000,
        "the sandbox made a setuid file"
    );
    for dir in ["sandboxes", "images"] {
        let meta = std::fs::metadata(d.data_dir().join(dir)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o710,
            "{dir}"
        );
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0, "{dir}");
    }
    // `nobody` on the host tries to run it.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", "exec \"$0\""])
        .arg(&upper_file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody ran the sandbox's setuid file: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
}
