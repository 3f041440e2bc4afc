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

/// Picks a random number kept only in its memory, writes it once to
/// `secret.start`, then rewrites `secret.now` every 0.05 s.
const SECRET: &str = "
import os, time
secret = int.from_bytes(os.urandom(4), 'big')
open('/workspace/secret.start', 'w').write(str(secret))
while True:
    open('/workspace/secret.now.tmp', 'w').write(str(secret))
    os.rename('/workspace/secret.now.tmp', '/workspace/secret.now')
    time.sleep(0.05)
";

/// The number in `path` once it is there (polls for up to 60 s).
fn number_soon(d: &Daemon, id: &str, path: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.warren(&["files", "cat", id, path]);
        if out.status.success() {
            if let Ok(n) = text(&out.stdout).trim().parse() {
                return n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {path} never held a number: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The python process's in-memory value, written again after we remove its
/// file (so only a running process with the value in memory can answer).
fn fresh_secret(d: &Daemon, id: &str) -> u64 {
    let out = d.warren(&["exec", id, "--", "rm", "-f", "/workspace/secret.now"]);
    assert!(out.status.success(), "{id}: {}", text(&out.stderr));
    number_soon(d, id, "/workspace/secret.now")
}

/// `POST /v1/sandboxes/{id}/fork {"count": 2, "memory": true}` on a gVisor
/// sandbox: both copies run the parent's processes with their memory, the
/// parent keeps running, and the copies' files are their own. A namespace
/// sandbox refuses `memory: true` with 409 `capability_unsupported`.
#[test]
fn gvisor_fork_with_memory_copies_running_processes() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let d = Daemon::start();
    let parent = d.create(&["--driver", "gvisor"]);
    let out = d.warren(&["exec", "-d", &parent, "--", "python3", "-c", SECRET]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = number_soon(&d, &parent, "/workspace/secret.start");
    assert_eq!(fresh_secret(&d, &parent), secret);

    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{parent}/fork"),
        Some(r#"{"count":2,"memory":true}"#),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}\n{}", d.log());
    let forked: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(forked["snapshot"].as_str().is_some(), "{body}");
    let sandboxes = forked["sandboxes"].as_array().unwrap();
    assert_eq!(sandboxes.len(), 2, "{body}");
    let children: Vec<String> = sandboxes
        .iter()
        .map(|s| {
            assert_eq!(s["state"].as_str(), Some("running"), "{body}");
            assert_eq!(s["driver"].as_str(), Some("gvisor"), "{body}");
            s["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(children[0], children[1]);
    assert!(!children.contains(&parent));

    // Each copy's python process runs on with the parent's value.
    for child in &children {
        assert_eq!(
            d.warren_json(&["inspect", child])["state"].as_str(),
            Some("running")
        );
        assert_eq!(fresh_secret(&d, child), secret, "{child}");
    }
    // The parent keeps running with its value.
    assert_eq!(
        d.warren_json(&["inspect", &parent])["state"].as_str(),
        Some("running")
    );
    assert_eq!(fresh_secret(&d, &parent), secret);

    // A copy's file changes stay its own.
    let out = d.warren(&[
        "exec",
        &children[0],
        "--",
        "sh",
        "-c",
        "echo mine > /workspace/own",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = d.warren(&["files", "cat", &children[0], "/workspace/own"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "mine");
    for other in [&children[1], &parent] {
        let out = d.warren(&["exec", other, "--", "test", "-e", "/workspace/own"]);
        assert!(
            !out.status.success(),
            "{other} sees the file of {}",
            children[0]
        );
    }

    // A namespace sandbox cannot fork with memory.
    let plain = d.create(&["--driver", "namespace"]);
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{plain}/fork"),
        Some(r#"{"count":2,"memory":true}"#),
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        refused["error"]["code"].as_str(),
        Some("capability_unsupported"),
        "{body}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace"),
        "{body}"
    );

    for id in children.iter().chain([&parent, &plain]) {
        let out = d.warren(&["rm", id]);
        assert!(out.status.success(), "rm {id}: {}", text(&out.stderr));
        assert!(!d.data_dir().join("sandboxes").join(id).exists(), "{id}");
    }
    let listed = d.warren_json(&["ls"]);
    let left = listed
        .as_array()
        .or_else(|| listed["sandboxes"].as_array())
        .map(|a| a.iter().filter(|s| s["state"] != "deleted").count())
        .unwrap_or(0);
    assert_eq!(left, 0, "{listed}");
}
