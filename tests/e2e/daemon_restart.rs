//! End-to-end: sandboxes survive their daemon's crash; a restarted daemon
//! re-adopts the live ones and marks the dead ones failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use harness::Daemon;

#[test]
fn sandboxes_and_their_files_survive_a_daemon_sigkill() {
    require_root!();
    let mut d = Daemon::start();
    let id = d.create(&[]);
    let out = d.warren(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo precious > /workspace/data; sleep 300 > /dev/null 2>&1 &",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids_before = d.sandbox_pids(&id);

    d.kill9();
    // With no daemon, the sandbox's processes keep running.
    for pid in &pids_before {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "sandbox process {pid} died with the daemon"
        );
    }
    d.restart();

    let inspect = d.warren_json(&["inspect", &id]);
    assert_eq!(inspect["state"], "running", "{inspect}");
    let out = d.warren(&["exec", &id, "--", "cat", "/workspace/data"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "precious\n");
    let out = d.warren(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do cat $p/comm; done | grep -c sleep",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "background process lost across the restart"
    );
}

#[test]
fn sandboxes_that_died_while_the_daemon_was_down_are_marked_failed() {
    require_root!();
    let mut d = Daemon::start();
    let id = d.create(&[]);
    d.kill9();
    for pid in d.sandbox_pids(&id) {
        // SAFETY: kill(2) on the processes of the sandbox this test created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    d.restart();
    let inspect = d.warren_json(&["inspect", &id]);
    assert_eq!(inspect["state"], "failed", "{inspect}");
    assert!(
        inspect["failureReason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{inspect}"
    );
    // Its files are still there until it is removed, and rm cleans up.
    assert!(d
        .data_dir()
        .join("sandboxes")
        .join(&id)
        .join("upper")
        .exists());
    let out = d.warren(&["exec", &id, "--", "true"]);
    assert!(!out.status.success());
    let out = d.warren(&["rm", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.data_dir().join("sandboxes").join(&id).exists());
    assert!(d.cgroup_dirs(&id).iter().all(|p| !p.exists()));
}
