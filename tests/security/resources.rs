//! Security regressions, resource exhaustion: each bomb is contained by the
//! sandbox's limits, and afterwards the host forks and opens files, the daemon
//! answers, and a second sandbox still runs a command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/harness/mod.rs"]
mod harness;
#[path = "support/mod.rs"]
mod support;

use harness::Daemon;
use std::time::Duration;
use support::{assert_host_and_daemon_healthy, py, sh};

fn cgroup_file(d: &Daemon, id: &str, name: &str) -> Option<String> {
    d.cgroup_dirs(id)
        .iter()
        .find_map(|dir| std::fs::read_to_string(dir.join(name)).ok())
}

/// A fork bomb in a sandbox created with `--pids 64` hits the limit, is
/// killed by the exec timeout, and never holds more than 64 tasks.
#[test]
fn fork_bomb_is_bounded_by_the_pids_limit() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--pids", "64"]);
    let r = sh(
        &d,
        &id,
        8,
        "bomb() { bomb | bomb & }; bomb 2>/dev/null; sleep 6; echo survived",
    );
    assert!(r.elapsed < Duration::from_secs(40), "not bounded: {r:?}");
    let current: u64 = cgroup_file(&d, &id, "pids.current")
        .map(|s| s.trim().parse().unwrap())
        .expect("pids cgroup");
    assert!(current <= 64, "pids.current {current}");
    let max = cgroup_file(&d, &id, "pids.max").unwrap();
    assert_eq!(max.trim(), "64");
    let events = cgroup_file(&d, &id, "pids.events").unwrap_or_default();
    let hit: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(hit > 0, "the bomb never reached the limit: {events:?}");
    assert_host_and_daemon_healthy(&d);
}

/// A 512 MiB allocation in a sandbox created with `--memory 64` is stopped
/// (OOM-killed: 137) and the cgroup never used more than its limit.
#[test]
fn memory_bomb_is_killed_at_the_memory_limit() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--memory", "64"]);
    let r = py(
        &d,
        &id,
        60,
        r#"
chunks = [b"\x01" * (1 << 20) for _ in range(512)]
print("ALLOCATED", len(chunks))
"#,
    );
    assert!(!r.stdout.contains("ALLOCATED"), "{r:?}");
    assert_eq!(r.code, Some(137), "expected an OOM kill: {r:?}");
    assert!(r.elapsed < Duration::from_secs(60), "{r:?}");
    let limit_bytes = 64u64 << 20;
    if let Some(peak) = cgroup_file(&d, &id, "memory.max_usage_in_bytes")
        .or_else(|| cgroup_file(&d, &id, "memory.peak"))
    {
        let peak: u64 = peak.trim().parse().unwrap();
        assert!(peak <= limit_bytes, "peak {peak} above the limit");
    }
    assert_host_and_daemon_healthy(&d);
}

/// The exec result says the command was OOM-killed (issue 3: `oomKilled`).
#[test]
fn memory_bomb_is_reported_as_oom_killed() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--memory", "64"]);
    let out = d.warren(&[
        "--json",
        "exec",
        "--timeout",
        "60",
        &id,
        "--",
        "/usr/bin/python3",
        "-c",
        "chunks = [b'\\x01' * (1 << 20) for _ in range(512)]",
    ]);
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["exitCode"], 137, "{result}");
    assert_eq!(result["oomKilled"], true, "{result}");
    assert_eq!(result["timedOut"], false, "{result}");
    // An ordinary command is not reported as OOM-killed.
    let ok = d.warren_json(&["exec", &id, "--", "true"]);
    assert_eq!(ok["oomKilled"], false, "{ok}");
}

/// Writing 256 MiB into a sandbox created with `--disk 64` fails with
/// ENOSPC/EDQUOT; the host's free space is essentially unchanged.
#[test]
fn disk_fill_is_bounded_by_the_disk_limit() {
    require_root!();
    let d = Daemon::start();
    let free_before = free_bytes(d.data_dir());
    let id = d.create(&["--disk", "64"]);
    let r = sh(
        &d,
        &id,
        60,
        "dd if=/dev/zero of=/workspace/fill bs=1M count=256 2>&1; echo rc=$?; \
         dd if=/dev/zero of=/tmp/fill2 bs=1M count=256 2>&1; echo rc=$?; du -sm /workspace/fill /tmp/fill2",
    );
    assert!(
        r.stdout.contains("No space left") || r.stdout.contains("quota exceeded"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("rc=0"), "{r:?}");
    // With a disk bound, the writable layer lives on the sandbox's own disk.
    let upper = d.data_dir().join("sandboxes").join(&id).join("disk/upper");
    assert!(upper.is_dir(), "no upper layer at {}", upper.display());
    let used: u64 = support::walk(&upper)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(used <= 80 << 20, "upper dir holds {used} bytes");
    let free_after = free_bytes(d.data_dir());
    assert!(
        free_before.saturating_sub(free_after) < 100 << 20,
        "host lost {} bytes",
        free_before.saturating_sub(free_after)
    );
    assert_host_and_daemon_healthy(&d);

    // Removing the sandbox unmounts its disk and frees the loop device.
    let image = d.data_dir().join("sandboxes").join(&id).join("disk.img");
    let out = d.warren(&["rm", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !harness::mountinfo().contains(&id),
        "disk of {id} still mounted"
    );
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(&image.display().to_string()),
        "loop device still attached to {}",
        image.display()
    );
}

fn free_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0);
    st.f_bavail * st.f_frsize
}

/// Opening files until failure ends in the per-process EMFILE, never the
/// host-wide ENFILE; the host still opens files.
#[test]
fn fd_exhaustion_hits_the_per_process_limit() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let r = py(
        &d,
        &id,
        60,
        r#"
import resource
fds = []
err = "none"
for _ in range(5_000_000):
    try:
        fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        err = ename(e.errno)
        break
out({"error": err, "opened": len(fds), "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE))})
"#,
    );
    let res = r.json();
    assert_eq!(res["error"], "EMFILE", "{res}");
    assert_host_opens_files();
    assert_host_and_daemon_healthy(&d);
}

fn assert_host_opens_files() {
    let files: Vec<_> = (0..64).map(|_| tempfile::tempfile()).collect();
    assert!(files.iter().all(Result::is_ok), "host cannot open files");
}

/// How often the sandbox's pids limit refused a fork.
fn limit_hits(d: &Daemon, id: &str) -> u64 {
    cgroup_file(d, id, "pids.events")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

fn pids_current(d: &Daemon, id: &str) -> u64 {
    cgroup_file(d, id, "pids.current")
        .map(|s| s.trim().parse().unwrap())
        .expect("pids cgroup")
}

/// Processes holding every pid slot of the sandbox cannot take down its
/// agent (PID 1, whose threads count against the same limit): requests made
/// meanwhile fail with an error instead of killing it, and once the holders
/// are gone the same sandbox runs commands and serves files again.
#[test]
fn pid_exhaustion_does_not_kill_the_agent() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--pids", "32"]);
    let started = d.warren(&[
        "exec",
        "-d",
        &id,
        "--",
        "/usr/bin/python3",
        "-c",
        "import os, time\n\
         while True:\n    \
             try:\n        pid = os.fork()\n    \
             except OSError:\n        time.sleep(0.05); continue\n    \
             if pid == 0:\n        time.sleep(600); os._exit(0)\n",
    ]);
    assert!(started.status.success(), "{started:?}");
    let holder = String::from_utf8_lossy(&started.stdout).trim().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while limit_hits(&d, &id) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pids never filled: {} in use",
            pids_current(&d, &id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While the limit is reached: each request ends (no hang), the daemon
    // stays up; whether a request succeeds depends on a free slot.
    let _ = d.warren(&["exec", "--timeout", "5", &id, "--", "true"]);
    let _ = d.warren(&["files", "stat", &id, "/"]);
    let killed = d.warren(&["kill", &id, &holder, "--signal", "SIGKILL"]);
    assert!(killed.status.success(), "{killed:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pids_current(&d, &id) > 8 {
        assert!(std::time::Instant::now() < deadline, "holders never exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive = d.warren(&["exec", &id, "--", "echo", "alive"]);
    assert_eq!(
        String::from_utf8_lossy(&alive.stdout).trim(),
        "alive",
        "{alive:?}\n{}",
        d.log()
    );
    let stat = d.warren(&["files", "stat", "--json", &id, "/workspace"]);
    assert!(stat.status.success(), "{stat:?}");
    let inspect = d.warren_json(&["inspect", &id]);
    assert_eq!(inspect["state"], "running", "{inspect}");
    assert_host_and_daemon_healthy(&d);
}
