//! A real `warren serve` on a private data directory, socket and cgroup
//! parent, driven through the real `warren` binary. Everything it created is
//! removed on drop, even when a test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[macro_export]
macro_rules! require_root {
    () => {
        if !harness::is_root() {
            eprintln!("skipped: end-to-end tests need root (namespaces, overlay, cgroups)");
            return;
        }
    };
}

pub fn warren_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warren")
}

pub struct Daemon {
    pub data: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    pub listen: Option<String>,
    /// Extra arguments of `warren serve`.
    pub serve_args: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a daemon with extra `warren serve` arguments.
    pub fn start_with_serve_args(args: &[&str]) -> Self {
        Self::start_full(None, args.iter().map(|a| a.to_string()).collect())
    }

    /// Starts a daemon that also listens on TCP at `listen` (`127.0.0.1:PORT`).
    pub fn start_with(listen: Option<String>) -> Self {
        Self::start_full(listen, Vec::new())
    }

    fn start_full(listen: Option<String>, serve_args: Vec<String>) -> Self {
        warren_linux::cgroup::remove_orphaned_parents("warren-e2e");
        let data = tempfile::tempdir().unwrap();
        let socket = data.path().join("warren.sock");
        let cgroup_parent = format!(
            "warren-e2e-{}-{}",
            std::process::id(),
            data.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches('.')
                .to_lowercase()
        );
        let mut daemon = Self {
            data,
            socket,
            cgroup_parent,
            listen,
            serve_args,
            child: None,
        };
        daemon.spawn();
        daemon
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(warren_bin());
        cmd.arg("--data-dir")
            .arg(self.data.path())
            .arg("--socket")
            .arg(&self.socket)
            .arg("serve")
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(listen) = &self.listen {
            cmd.arg("--listen").arg(listen);
        }
        cmd.args(&self.serve_args);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_unix(&self.socket, "GET", "/healthz", None) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not answer within 30 s: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL, like a crash: no cleanup code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs the CLI against this daemon (never auto-starting another).
    pub fn warren(&self, args: &[&str]) -> Output {
        Command::new(warren_bin())
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--no-autostart")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI with `--json` and parses stdout; panics on failure.
    pub fn warren_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.warren(&all);
        assert!(
            out.status.success(),
            "warren {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bad JSON from warren {args:?}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn create(&self, extra: &[&str]) -> String {
        let mut args = vec!["create"];
        args.extend_from_slice(extra);
        self.warren_json(&args)["id"].as_str().unwrap().to_string()
    }

    /// The sandbox's cgroup directories on this host (v1 controllers or v2).
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        cgroup_parent_dirs(&self.cgroup_parent)
            .into_iter()
            .map(|p| p.join(id))
            .collect()
    }

    /// Host pids inside the sandbox (from its pids or unified cgroup).
    pub fn sandbox_pids(&self, id: &str) -> Vec<i32> {
        self.cgroup_dirs(id)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }
}

/// Deletes the nftables table of the daemon whose data dir is `data_dir`:
/// it outlives the daemon on purpose (sandboxes stay filtered across
/// restarts), so a test daemon's goes with the test.
pub fn remove_nft_table(data_dir: &Path) {
    if let Ok(table) = std::fs::read_to_string(data_dir.join("network/nft-table")) {
        let mut words = table.split_whitespace();
        if let (Some(family), Some(name)) = (words.next(), words.next()) {
            let _ = Command::new("nft")
                .args(["delete", "table", family, name])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

pub fn cgroup_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        vec![root.join(parent)]
    } else {
        ["memory", "pids", "cpu", "freezer"]
            .iter()
            .map(|c| root.join(c))
            .filter(|p| p.is_dir())
            .map(|p| p.join(parent))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Ok(out) = Command::new(warren_bin())
                .args(["--json", "--no-autostart", "--socket"])
                .arg(&self.socket)
                .arg("ls")
                .output()
            {
                if let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    let ids: Vec<String> = list
                        .as_array()
                        .or_else(|| list["sandboxes"].as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s["id"].as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    for id in ids {
                        let _ = self.warren(&["rm", &id]);
                    }
                }
            }
            if let Some(mut child) = self.child.take() {
                // SAFETY: SIGTERM to our own child for a graceful stop.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        remove_nft_table(self.data.path());
        // Whatever is still in our cgroups (a test that failed half-way) dies.
        for parent in cgroup_parent_dirs(&self.cgroup_parent) {
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                    if let Ok(procs) = std::fs::read_to_string(entry.path().join("cgroup.procs")) {
                        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                            // SAFETY: kill(2) on processes in this test's own cgroup.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

/// Asserts that a `warren` command failed with a one-line error that
/// contains `needle` (a refused state transition names the current state).
pub fn assert_conflict(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} in {stderr}");
}

/// One HTTP/1.1 request over a unix socket: (status, body).
pub fn http_unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let stream = UnixStream::connect(socket)?;
    http_roundtrip(stream, method, path, body, None)
}

/// One HTTP/1.1 request over TCP with an optional bearer key.
pub fn http_tcp(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let stream = std::net::TcpStream::connect(addr)?;
    http_roundtrip(stream, method, path, body, key)
}

fn http_roundtrip<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let body = body.unwrap_or("");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: warren\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}
