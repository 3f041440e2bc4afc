//! The tests' own little internet: a network namespace made by the test,
//! linked to the host by a veth pair, holding TEST-NET-2/3 hosts (plus a
//! stand-in metadata address and an RFC 1918 host) that serve HTTP, and a
//! DNS server answering `web.test`, `web2.test` and `other.test`. The host
//! routes those /32s into the namespace; nothing leaves the machine.
//! Everything is removed on drop. Worlds are built one at a time (an
//! exclusive `flock` on [`LOCK_FILE`], so separate test binaries wait for
//! each other too) because their routes live in the host's table.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::harness::Daemon;

/// The web host `web.test` (TEST-NET-2).
pub const WEB: &str = "198.51.100.80";
/// A second web host in the same /24, `web2.test`.
pub const WEB2: &str = "198.51.100.81";
/// The DNS server (TEST-NET-2), given to the daemon as `--dns-upstream`.
pub const DNS: &str = "198.51.100.53";
/// The web host `other.test` (TEST-NET-3).
pub const OTHER: &str = "203.0.113.90";
/// A stand-in for the cloud metadata service.
pub const METADATA: &str = "169.254.169.254";
/// A private (RFC 1918) web host.
pub const PRIVATE: &str = "10.99.77.7";

/// Host side and namespace side of the link into the world.
const LINK_HOST: &str = "10.254.253.1";
const LINK_WORLD: &str = "10.254.253.2";
const NETNS_PREFIX: &str = "warren-li-";
/// Held (exclusive `flock`) by the process whose world exists.
pub const LOCK_FILE: &str = "/run/warren-little-internet.lock";

static SERIAL: Mutex<()> = Mutex::new(());

/// Why these tests cannot run here (`None`: they can).
pub fn missing_tools() -> Option<String> {
    for (tool, arg) in [
        ("ip", "-V"),
        ("nft", "--version"),
        ("python3", "--version"),
        ("curl", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("{tool} is not available"));
        }
    }
    None
}

/// Skips the test (with the reason) without root or without the tools.
#[macro_export]
macro_rules! require_network_tools {
    () => {
        require_root!();
        if let Some(reason) = little_internet::missing_tools() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes namespaces (and so their links and routes) left by a test
/// process that died before its drop ran.
fn remove_stale_worlds() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = run(&["ip", "netns", "del", &name]);
            let _ = run(&["ip", "link", "del", &format!("wli{pid}")]);
        }
    }
}

/// Takes the machine-wide world lock (waits for another test binary's
/// world to go); released when the file closes.
fn lock_worlds() -> File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("open {LOCK_FILE}: {e}"));
    loop {
        // SAFETY: flock(2) on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return file;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "flock {LOCK_FILE}: {err}"
        );
    }
}

/// Whether the host already routes 169.254.169.254 by a /32 of its own (a
/// cloud host reaching its metadata service): the world then leaves it
/// alone and has no metadata stand-in.
fn host_routes_metadata() -> bool {
    let out = run(&[
        "ip",
        "-4",
        "route",
        "show",
        "exact",
        &format!("{METADATA}/32"),
    ]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// The running world.
pub struct World {
    netns: String,
    host_if: String,
    server: Option<Child>,
    /// Whether the host routes [`METADATA`] to the world's stand-in (else
    /// the host has a route of its own there, left untouched).
    pub metadata_stand_in: bool,
    _serial: MutexGuard<'static, ()>,
    // Dropped last: the next world is built after this one is gone.
    _lock: File,
}

impl World {
    /// Builds the world and waits until its servers listen.
    pub fn start() -> World {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let lock = lock_worlds();
        remove_stale_worlds();
        let metadata_stand_in = !host_routes_metadata();
        if !metadata_stand_in {
            eprintln!(
                "note: the host has its own route to {METADATA}; the world adds no stand-in \
                 there (checks that need one are skipped)"
            );
        }
        let pid = std::process::id().to_string();
        let mut world = World {
            netns: format!("{NETNS_PREFIX}{pid}"),
            host_if: format!("wli{pid}"),
            server: None,
            metadata_stand_in,
            _serial: serial,
            _lock: lock,
        };
        let (ns, hif) = (world.netns.clone(), world.host_if.clone());
        let _ = run(&["ip", "netns", "del", &ns]);
        let _ = run(&["ip", "link", "del", &hif]);
        must(&["ip", "netns", "add", &ns]);
        must(&[
            "ip", "link", "add", &hif, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        must(&["ip", "addr", "add", &format!("{LINK_HOST}/30"), "dev", &hif]);
        must(&["ip", "link", "set", &hif, "up"]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{LINK_WORLD}/30"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        must(&["ip", "-n", &ns, "route", "add", "default", "via", LINK_HOST]);
        for addr in [WEB, WEB2, DNS, OTHER, METADATA, PRIVATE] {
            if addr == METADATA && !metadata_stand_in {
                continue;
            }
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ]);
            must(&[
                "ip",
                "route",
                "replace",
                &format!("{addr}/32"),
                "via",
                LINK_WORLD,
                "dev",
                &hif,
            ]);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "python3", "-u", "-c"])
            .arg(include_str!("world.py"))
            .args(["--dns", DNS])
            .args(["--name", &format!("web.test={WEB}")])
            .args(["--name", &format!("web2.test={WEB2}")])
            .args(["--name", &format!("other.test={OTHER}")])
            .args(["--name", &format!("meta.test={METADATA}")]);
        for addr in [WEB, WEB2, OTHER, METADATA, PRIVATE] {
            cmd.args(["--http", addr]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        world.server = Some(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the world's servers did not start");
        world
    }

    /// `warren serve` arguments pointing the daemon's resolver at the
    /// world's DNS server, with sandbox addresses from `subnet`.
    pub fn serve_args(subnet: &str) -> Vec<String> {
        vec![
            "--dns-upstream".into(),
            DNS.into(),
            "--net-subnet".into(),
            subnet.into(),
        ]
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The python server may outlive `ip netns exec`'s pid: kill every
        // process in the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on processes in this test's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Deleting the link removes the routes through it.
        let _ = run(&["ip", "link", "del", &self.host_if]);
        let _ = run(&["ip", "netns", "del", &self.netns]);
    }
}

/// What one command inside a sandbox did.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `argv` in the sandbox (killed after 30 s).
pub fn exec(d: &Daemon, id: &str, argv: &[&str]) -> Outcome {
    let mut args = vec!["exec", "--timeout", "30", id, "--"];
    args.extend_from_slice(argv);
    let start = Instant::now();
    let out = d.warren(&args);
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// `curl` of `http://HOST/` in the sandbox (connecting 8 s at most, 10 s
/// in all: exit 28 means the connection attempt went unanswered).
pub fn curl(d: &Daemon, id: &str, host: &str) -> Outcome {
    exec(
        d,
        id,
        &[
            "curl",
            "-sS",
            "--connect-timeout",
            "8",
            "--max-time",
            "10",
            &format!("http://{host}/"),
        ],
    )
}

/// Asserts the sandbox reaches the world host `host` (a name or address)
/// and gets the body of `addr`.
pub fn assert_reaches(d: &Daemon, id: &str, host: &str, addr: &str) {
    let o = curl(d, id, host);
    assert_eq!(o.code, Some(0), "{host} should be reachable: {o:?}");
    assert_eq!(o.stdout.trim(), format!("hello from {addr}"), "{o:?}");
}

/// Asserts that the sandbox cannot reach `host` and is told so: curl fails,
/// not by its own timeout (exit 28: packets silently dropped, or a name
/// lookup left hanging).
pub fn assert_blocked_fast(d: &Daemon, id: &str, host: &str) {
    let o = curl(d, id, host);
    assert_ne!(o.code, Some(0), "{host} should be blocked: {o:?}");
    assert_ne!(
        o.code,
        Some(28),
        "{host} should be refused, not dropped silently: {o:?}"
    );
}

/// The names of the host's links (`ip -j link`).
pub fn host_links() -> Vec<String> {
    let out = run(&["ip", "-j", "link"]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect()
}

/// The host veth of sandbox `id`: `wv` + the first 13 characters of its id.
pub fn host_veth(id: &str) -> String {
    format!("wv{}", &id[..13.min(id.len())])
}

/// The host's IPv4 routes as text (`ip -4 route`).
pub fn host_routes() -> String {
    String::from_utf8_lossy(&run(&["ip", "-4", "route"]).stdout).into_owned()
}

/// A daemon whose nftables table (`inet warren_<instance>`, kept by a
/// normal stop so running sandboxes stay filtered) is deleted after it
/// stopped.
pub struct NetDaemon(Option<Daemon>);

impl NetDaemon {
    /// Starts a daemon with these `warren serve` arguments.
    pub fn start(args: &[String]) -> Self {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self(Some(Daemon::start_with_serve_args(&args)))
    }

    /// The table names this daemon's log mentions.
    fn tables(&self) -> Vec<String> {
        let log = self.0.as_ref().map(Daemon::log).unwrap_or_default();
        let mut tables: Vec<String> = log
            .match_indices("warren_")
            .filter_map(|(at, _)| {
                let name = log.get(at..at + 15)?;
                name[7..]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit())
                    .then(|| name.to_string())
            })
            .collect();
        tables.sort();
        tables.dedup();
        tables
    }
}

impl std::ops::Deref for NetDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for NetDaemon {
    fn deref_mut(&mut self) -> &mut Daemon {
        self.0.as_mut().unwrap()
    }
}

impl Drop for NetDaemon {
    fn drop(&mut self) {
        let tables = self.tables();
        drop(self.0.take());
        for table in tables {
            let _ = run(&["nft", "delete", "table", "inet", &table]);
        }
    }
}
