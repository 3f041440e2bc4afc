//! End-to-end: a gVisor sandbox through the real daemon and CLI — create with
//! `--driver gvisor`, exec, files, and memory-preserving suspend/resume over
//! the API. Skips (with a printed reason) when not root or when `runsc` is
//! missing or cannot run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{http_unix, Daemon};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn skip_reason() -> Option<String> {
    if !harness::is_root() {
        return Some("needs root".into());
    }
    match std::process::Command::new("runsc")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("runsc --version failed: {}", text(&out.stderr))),
        Err(e) => Some(format!("runsc not found: {e}")),
    }
}

const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /workspace/c; sleep 0.05; done";

fn read_counter(d: &Daemon, id: &str) -> Option<u64> {
    let out = d.warren(&["files", "cat", id, "/workspace/c"]);
    if !out.status.success() {
        return None;
    }
    text(&out.stdout).trim().parse().ok()
}

fn counter_soon(d: &Daemon, id: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = read_counter(d, id) {
            return n;
        }
        assert!(Instant::now() < deadline, "could not read the counter");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gvisor_sandbox_suspends_with_its_memory() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let mut d = Daemon::start();
    let id = d.create(&["--driver", "gvisor"]);
    let info = d.warren_json(&["inspect", &id]);
    assert_eq!(info["driver"].as_str(), Some("gvisor"), "{info}");

    let out = d.warren(&["exec", &id, "--", "sh", "-c", "hostname; uname -r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&id), "{}", text(&out.stdout));

    let out = d.warren(&["exec", "-d", &id, "--", "sh", "-c", COUNTER]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut before = counter_soon(&d, &id);
    while before < 3 {
        std::thread::sleep(Duration::from_millis(50));
        before = counter_soon(&d, &id);
    }

    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/suspend"),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let suspended: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(suspended["state"].as_str(), Some("suspended"), "{body}");
    assert_eq!(suspended["memoryPreserved"].as_bool(), Some(true), "{body}");
    let at_suspend: u64 = std::fs::read_to_string(
        d.data_dir()
            .join("sandboxes")
            .join(&id)
            .join("upper/workspace/c"),
    )
    .unwrap()
    .trim()
    .parse()
    // Checkpointed between the shell's truncate and write: `before` bounds it.
    .unwrap_or(before);

    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/resume"),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // The counter continues from its value instead of starting over.
    let after = counter_soon(&d, &id);
    assert!(
        after >= at_suspend,
        "counter restarted: {after} < {at_suspend}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter_soon(&d, &id) <= after {
        assert!(Instant::now() < deadline, "the counter stopped");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A restarted daemon adopts the running gVisor sandbox.
    d.restart();
    let out = d.warren(&["exec", &id, "--", "cat", "/workspace/c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        d.warren_json(&["inspect", &id])["state"].as_str(),
        Some("running")
    );

    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!d.data_dir().join("sandboxes").join(&id).exists());
    assert!(!harness::mountinfo().contains(&format!("sandboxes/{id}/rootfs")));
}

/// A bound unix socket in a gVisor sandbox is a host socket gVisor cannot
/// checkpoint: the suspend is refused with 409 and the sandbox keeps
/// running; `diskMb` is refused with 422.
#[test]
fn gvisor_refusals_leave_sandboxes_usable() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let d = Daemon::start();
    let id = d.create(&["--driver", "gvisor"]);
    let script = "import socket, time\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.bind('/tmp/app.sock')\n\
                  s.listen(1)\n\
                  time.sleep(3600)\n";
    let out = d.warren(&["exec", "-d", &id, "--", "python3", "-c", script]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.warren(&["exec", &id, "--", "test", "-S", "/tmp/app.sock"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/suspend"),
        None,
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("/tmp/app.sock"), "{body}");
    assert_eq!(
        d.warren_json(&["inspect", &id])["state"].as_str(),
        Some("running")
    );
    let out = d.warren(&["exec", &id, "--", "echo", "alive"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "alive");

    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"driver":"gvisor","resources":{"diskMb":100}}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("diskMb"), "{body}");

    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
