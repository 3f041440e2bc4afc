//! Helpers shared by the security regression tests: run an attempt inside a
//! real sandbox, and host-side fixtures (markers, processes, listeners) that
//! are removed on drop even when an assertion fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crate::harness::{http_unix, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What one command inside a sandbox did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The last stdout line parsed as JSON (the python probes print one).
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().rev().find(|l| !l.trim().is_empty());
        line.and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("probe printed no JSON: {self:?}"))
    }
}

/// Runs `argv` in sandbox `id`, killed after `timeout` seconds.
pub fn exec(d: &Daemon, id: &str, timeout: u32, argv: &[&str]) -> Run {
    let t = timeout.to_string();
    let mut args = vec!["exec", "--timeout", &t, id, "--"];
    args.extend_from_slice(argv);
    let start = Instant::now();
    let out = d.warren(&args);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

pub fn sh(d: &Daemon, id: &str, timeout: u32, script: &str) -> Run {
    exec(d, id, timeout, &["sh", "-c", script])
}

/// Runs a python3 probe (with [`PY_PRELUDE`] prepended) in the sandbox.
pub fn py(d: &Daemon, id: &str, timeout: u32, body: &str) -> Run {
    let script = format!("{PY_PRELUDE}\n{body}");
    exec(d, id, timeout, &["/usr/bin/python3", "-c", &script])
}

/// `sc(nr, *args) -> (ret, errno)` through libc's syscall(2), `ename(errno)`,
/// and `out(obj)` that prints one JSON line. x86_64 syscall numbers.
pub const PY_PRELUDE: &str = r#"
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def _arg(a):
    if isinstance(a, int):
        return ctypes.c_long(a)
    if isinstance(a, str):
        return ctypes.c_char_p(a.encode())
    return a
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    return r, ctypes.get_errno()
def ename(e):
    return errno.errorcode.get(e, str(e))
def out(obj):
    print(json.dumps(obj))
    sys.stdout.flush()
"#;

/// The daemon answers, the host can still fork and open files, and a fresh
/// sandbox still runs a command: checked after every resource bomb.
pub fn assert_host_and_daemon_healthy(d: &Daemon) {
    let (status, _) = http_unix(&d.socket, "GET", "/healthz", None).expect("daemon socket");
    assert_eq!(status, 200, "daemon /healthz after the attempt");
    let st = Command::new("true").status().expect("host can fork");
    assert!(st.success());
    let f = tempfile::tempfile();
    assert!(f.is_ok(), "host can still open files: {f:?}");
    let id = d.create(&[]);
    let r = exec(d, &id, 20, &["echo", "ok"]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (Some(0), "ok"),
        "a second sandbox still executes commands: {r:?}"
    );
    let _ = d.warren(&["rm", &id]);
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("warren-sec-{tag}-{}-{nanos}", std::process::id())
}

/// A file (and the directories it needed) created on the host; removed on drop.
pub struct HostMarker {
    pub path: PathBuf,
    pub content: String,
    created_dir: Option<PathBuf>,
}

impl HostMarker {
    /// Creates `dir/name` with unique content; `dir` is created (and later
    /// removed) when it did not exist.
    pub fn create(dir: &Path, name: &str) -> Self {
        let created_dir = if dir.exists() {
            None
        } else {
            std::fs::create_dir_all(dir).unwrap();
            Some(dir.to_path_buf())
        };
        let path = dir.join(name);
        let content = format!("host-secret {}", unique("content"));
        std::fs::write(&path, &content).unwrap();
        Self {
            path,
            content,
            created_dir,
        }
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A process on the host (outside every sandbox); killed on drop.
pub struct HostProcess {
    pub child: Child,
}

impl HostProcess {
    pub fn sleep() -> Self {
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A line of /proc/<pid>/status, e.g. `TracerPid`.
    pub fn status_field(&self, key: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{key}:"))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host's non-loopback IPv4 addresses (from `ip -4 -o addr`).
pub fn host_ipv4_addrs() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            let addr = words.next()?.split('/').next()?.to_string();
            (!addr.starts_with("127.")).then_some(addr)
        })
        .collect()
}

pub fn read_or_empty(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// `major:minor` of the block device holding the host's root filesystem.
pub fn host_root_device() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata("/").unwrap().dev();
    (libc::major(dev), libc::minor(dev))
}

/// Every path under `root` (no symlink following).
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&p) {
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(path.clone());
                }
                out.push(path);
            }
        }
    }
    out
}
