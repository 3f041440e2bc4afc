//! End-to-end: pausing and resuming sandboxes through the real CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{assert_conflict, Daemon};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c; sleep 0.05; done";

/// Starts the background counter and waits until it has counted a little.
fn start_counter(d: &Daemon, id: &str) {
    let out = d.warren(&["exec", "-d", id, "--", "sh", "-c", COUNTER]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_counter(d, id).unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "the counter did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The counter's value through the file API (`None` while the file is
/// being rewritten and empty).
fn read_counter(d: &Daemon, id: &str) -> Option<u64> {
    let out = d.warren(&["files", "cat", id, "/tmp/c"]);
    if !out.status.success() {
        return None;
    }
    text(&out.stdout).trim().parse().ok()
}

fn read_counter_soon(d: &Daemon, id: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(n) = read_counter(d, id) {
            return n;
        }
        assert!(Instant::now() < deadline, "could not read /tmp/c");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the kernel reports the sandbox's cgroup frozen (v1 freezer or v2).
fn cgroup_frozen(d: &Daemon, id: &str) -> bool {
    d.cgroup_dirs(id).iter().any(|dir| {
        std::fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            || std::fs::read_to_string(dir.join("cgroup.events"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
    })
}

fn state(d: &Daemon, id: &str) -> String {
    d.warren_json(&["inspect", id])["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn pause_freezes_the_sandbox_and_resume_continues_where_it_stopped() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    start_counter(&d, &id);

    let before = read_counter_soon(&d, &id);
    let paused = d.warren_json(&["pause", &id]);
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["id"], id.as_str());
    assert!(cgroup_frozen(&d, &id), "the cgroup is not frozen");
    assert_eq!(state(&d, &id), "paused");
    std::thread::sleep(Duration::from_secs(1));
    assert!(cgroup_frozen(&d, &id), "the cgroup thawed by itself");

    // While paused nothing reaches the (frozen) agent.
    let out = d.warren(&["exec", &id, "--", "true"]);
    assert_conflict(&out, "paused");
    assert!(
        text(&out.stderr).contains("resume"),
        "{}",
        text(&out.stderr)
    );
    let out = d.warren(&["files", "cat", &id, "/tmp/c"]);
    assert_conflict(&out, "paused");
    let out = d.warren(&["ps", &id]);
    assert_conflict(&out, "paused");

    let resumed = d.warren_json(&["resume", &id]);
    assert_eq!(resumed["state"], "running", "{resumed}");
    assert!(!cgroup_frozen(&d, &id));
    let after = read_counter_soon(&d, &id);
    // About 20 increments would have happened in the second it was paused.
    assert!(
        after >= before && after - before < 10,
        "counter went from {before} to {after} across a 1 s pause"
    );
    // And it keeps counting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_counter(&d, &id).unwrap_or(0) < after + 5 {
        assert!(
            Instant::now() < deadline,
            "the counter stopped after resume"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Commands run again.
    let out = d.warren(&["exec", &id, "--", "echo", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello");
}

#[test]
fn pause_and_resume_refuse_the_wrong_state() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let out = d.warren(&["resume", &id]);
    assert_conflict(&out, "running");
    assert!(
        text(&out.stderr).contains("invalid_state") || text(&out.stderr).contains("409"),
        "{}",
        text(&out.stderr)
    );

    d.warren_json(&["pause", &id]);
    let out = d.warren(&["pause", &id]);
    assert_conflict(&out, "paused");

    let out = d.warren(&["--json", "pause", &id]);
    assert!(!out.status.success());

    d.warren_json(&["resume", &id]);
    let out = d.warren(&["resume", &id]);
    assert_conflict(&out, "running");

    let out = d.warren(&["pause", "nosuchsandbox0000000"]);
    assert!(!out.status.success());
}

#[test]
fn deleting_a_paused_sandbox_leaves_nothing_behind() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    start_counter(&d, &id);
    let pids = d.sandbox_pids(&id);
    assert!(!pids.is_empty());
    d.warren_json(&["pause", &id]);
    assert!(cgroup_frozen(&d, &id));

    let started = Instant::now();
    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "delete took {:?}",
        started.elapsed()
    );
    for dir in d.cgroup_dirs(&id) {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is left"
        );
    }
    assert!(!d.data_dir().join("sandboxes").join(&id).exists());
    let out = d.warren(&["inspect", &id]);
    assert!(!out.status.success());
}

#[test]
fn a_paused_sandbox_stays_paused_across_a_daemon_crash() {
    require_root!();
    let mut d = Daemon::start();
    let id = d.create(&[]);
    start_counter(&d, &id);
    d.warren_json(&["pause", &id]);

    d.kill9();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    d.restart();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "restart took {:?} (did recovery wait on the frozen agent?)",
        started.elapsed()
    );
    assert_eq!(state(&d, &id), "paused");
    assert!(cgroup_frozen(&d, &id), "the restart thawed the sandbox");

    let resumed = d.warren_json(&["resume", &id]);
    assert_eq!(resumed["state"], "running");
    let out = d.warren(&["exec", &id, "--", "echo", "after"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "after");
    // The counter survived the whole thing.
    let n = read_counter_soon(&d, &id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_counter(&d, &id).unwrap_or(0) <= n {
        assert!(Instant::now() < deadline, "the counter does not run");
        std::thread::sleep(Duration::from_millis(50));
    }
}
