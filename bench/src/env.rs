//! The bench's private world: a temporary directory, its own Warren daemon,
//! and cgroup parents — all torn down on drop, on success or error.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use warren_client::Client;

/// How long the daemon may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Finds the `warren` binary: `WARREN_BIN`, else `warren` next to this
/// executable (target/release), else target/debug/warren.
pub fn locate_warren() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WARREN_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("WARREN_BIN={} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("cannot find the bench's own executable")?;
    let mut tried = Vec::new();
    if let Some(dir) = exe.parent() {
        let candidates = [
            dir.join("warren"),
            dir.join("../release/warren"),
            dir.join("../debug/warren"),
        ];
        for c in candidates {
            if c.is_file() {
                return Ok(c);
            }
            tried.push(c);
        }
    }
    bail!(
        "cannot find the warren binary (tried {}); build it with `cargo build --release -p warren-cli` or set WARREN_BIN",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Temp dir + cgroup parents; cleaned on drop. Holds the daemon, if started.
pub struct BenchEnv {
    pub dir: PathBuf,
    /// Cgroup parent the Warren daemon uses.
    pub warren_cgroup: String,
    /// Cgroup parent the OCI peers (runc, runsc, podman) use.
    pub peer_cgroup: String,
    daemon: Option<Child>,
    pub socket: PathBuf,
    pub warren_bin: Option<PathBuf>,
}

impl BenchEnv {
    pub fn new() -> Result<BenchEnv> {
        BenchEnv::named(&format!("warren-bench-{}", std::process::id()))
    }

    /// A second world beside [`BenchEnv::new`]'s, for another Warren build:
    /// its own temp dir, socket, data dir and cgroup parent
    /// (`warren-bench-<pid>-<tag>`).
    pub fn tagged(tag: &str) -> Result<BenchEnv> {
        BenchEnv::named(&format!("warren-bench-{}-{tag}", std::process::id()))
    }

    fn named(name: &str) -> Result<BenchEnv> {
        let dir = std::env::temp_dir().join(name);
        if dir.exists() {
            remove_tree(&dir);
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(BenchEnv {
            socket: dir.join("warren.sock"),
            dir,
            warren_cgroup: name.to_string(),
            peer_cgroup: format!("{name}-peers"),
            daemon: None,
            warren_bin: None,
        })
    }

    /// Starts `warren serve` on the private data dir and socket; waits for health.
    pub async fn start_daemon(&mut self, bin: &Path) -> Result<Client> {
        let data = self.dir.join("data");
        fs::create_dir_all(&data)?;
        let log_path = self.dir.join("daemon.log");
        let log = fs::File::create(&log_path)?;
        let log_level = std::env::var("WARREN_BENCH_LOG").unwrap_or_else(|_| "warn".into());
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&self.socket)
            .arg("serve")
            .arg("--cgroup-parent")
            .arg(&self.warren_cgroup)
            .env("RUST_LOG", log_level)
            .env_remove("WARREN_URL")
            .env_remove("WARREN_LISTEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.daemon = Some(child);
        self.warren_bin = Some(bin.to_path_buf());
        let client = Client::unix(&self.socket);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.daemon.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "warren serve exited with {status} before answering; its log:\n{}",
                        tail(&log_path, 20)
                    );
                }
            }
            if client.health().await.is_ok() {
                return Ok(client);
            }
            if Instant::now() > deadline {
                bail!(
                    "warren serve did not answer within {START_TIMEOUT:?}; its log:\n{}",
                    tail(&log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The daemon's pid, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The last lines of the daemon's log (for error reports).
    pub fn daemon_log_tail(&self) -> String {
        tail(&self.dir.join("daemon.log"), 20)
    }

    fn stop_daemon(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    eprintln!("warren-bench: daemon did not stop on SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for BenchEnv {
    fn drop(&mut self) {
        self.stop_daemon();
        // The daemon's nftables table outlives it on purpose; the bench's goes.
        if let Ok(table) = fs::read_to_string(self.dir.join("data/network/nft-table")) {
            let mut words = table.split_whitespace();
            if let (Some(family), Some(name)) = (words.next(), words.next()) {
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", family, name])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        for name in [&self.warren_cgroup, &self.peer_cgroup] {
            remove_cgroup_parent(name);
        }
        unmount_under(&self.dir);
        remove_tree(&self.dir);
    }
}

/// Raises the soft open-files limit to the hard one, so the daemon (which
/// inherits it) can hold an agent connection per sandbox at high density.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `rm -rf`, reporting (not failing) when something stays behind.
fn remove_tree(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if dir.exists() {
            eprintln!("warren-bench: cannot remove {}: {e}", dir.display());
        }
    }
}

/// Lazily unmounts every mount at or below `dir` (leftover overlays), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stderr(Stdio::null())
            .status();
    }
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The directories a cgroup parent named `name` may occupy: every v1
/// hierarchy (`memory`, `pids`, `cpu`, `freezer`, …) and the v2 root.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                dirs.push(p.join(name));
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Kills whatever is left in the cgroup parent `name`, then removes it
/// (children first) in every hierarchy.
pub fn remove_cgroup_parent(name: &str) {
    for dir in cgroup_dirs(name) {
        let mut all = Vec::new();
        collect_dirs(&dir, &mut all);
        // Deepest first.
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in &all {
            kill_procs(d);
        }
        for d in &all {
            let mut removed = false;
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    removed = true;
                    break;
                }
                kill_procs(d);
                std::thread::sleep(Duration::from_millis(20));
            }
            if !removed {
                eprintln!("warren-bench: cannot remove cgroup {}", d.display());
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                collect_dirs(&p, out);
            }
        }
    }
}

fn kill_procs(dir: &Path) {
    // Thaw first on v1 freezer, or SIGKILL would never be delivered.
    let state = dir.join("freezer.state");
    if state.exists() {
        let _ = fs::write(&state, "THAWED");
    }
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 1 {
            // SAFETY: kill(2) on a pid read from a cgroup we created; worst case ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
