//! End-to-end: the real `warren` CLI against a real daemon and real sandboxes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use harness::Daemon;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_creates_executes_deletes_and_propagates_the_exit_code() {
    require_root!();
    let d = Daemon::start();
    let out = d.warren(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; hostname; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("out"));
    let hostname = lines.next().unwrap();
    assert!(
        hostname.len() == 20
            && hostname
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "{hostname}"
    );
    assert!(text(&out.stderr).contains("err"));
    // `run` deleted its sandbox.
    let list = d.warren_json(&["ls"]);
    assert_eq!(list.as_array().map(Vec::len).unwrap_or(0), 0, "{list}");
    assert!(!d.data_dir().join("sandboxes").join(hostname).exists());
}

#[test]
fn sandbox_lifecycle_through_the_cli_leaves_nothing_behind() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[
        "--name",
        "demo",
        "--memory",
        "128",
        "--cpus",
        "0.5",
        "--pids",
        "64",
        "--env",
        "GREETING=hi",
        "--label",
        "team=ml",
        "--workdir",
        "/srv/app",
    ]);
    assert!(
        id.len() == 20
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "{id}"
    );

    let out = d.warren(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd; cat /sys/fs/cgroup/pids.max 2>/dev/null || true",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("hi\n/srv/app\n"),
        "{}",
        text(&out.stdout)
    );

    let inspect = d.warren_json(&["inspect", &id]);
    assert_eq!(inspect["state"], "running");
    assert_eq!(inspect["name"], "demo");
    assert_eq!(inspect["resources"]["memoryMb"], 128);
    assert_eq!(inspect["resources"]["pidsLimit"], 64);
    assert_eq!(inspect["metadata"]["team"], "ml");

    // Limits reached the kernel.
    let dirs = d.cgroup_dirs(&id);
    let memory = dirs.iter().find_map(|p| {
        std::fs::read_to_string(p.join("memory.limit_in_bytes"))
            .ok()
            .or_else(|| std::fs::read_to_string(p.join("memory.max")).ok())
    });
    assert_eq!(memory.unwrap().trim(), (128u64 << 20).to_string());

    let listed = d.warren_json(&["ls", "--label", "team=ml"]);
    assert!(listed.to_string().contains(&id));
    let other = d.warren_json(&["ls", "--label", "team=web"]);
    assert!(!other.to_string().contains(&id));

    let pids = d.sandbox_pids(&id);
    assert!(!pids.is_empty());
    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Nothing left: no mounts, cgroups, processes, directories.
    assert!(
        !harness::mountinfo().contains(&id),
        "mount of {id} left behind"
    );
    assert!(
        dirs.iter().all(|p| !p.exists()),
        "cgroups left behind: {dirs:?}"
    );
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "process {pid} survived rm: {state}"
        );
    }
    assert!(!d.data_dir().join("sandboxes").join(&id).exists());

    // Using a deleted sandbox is a clear one-line error, not a crash.
    let out = d.warren(&["exec", &id, "--", "true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error:") && err.contains(&id), "{err}");
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    require_root!();
    let d = Daemon::start();
    for (args, needle) in [
        (vec!["create", "--memory", "0"], "memoryMb"),
        (vec!["create", "--image", "no-such-image"], "image"),
        (
            vec!["exec", "aaaaaaaaaaaaaaaaaaaa", "--", "true"],
            "aaaaaaaaaaaaaaaaaaaa",
        ),
        (vec!["inspect", "nope"], "nope"),
        (vec!["create", "--env", "NOEQUALS"], "K=V"),
    ] {
        let out = d.warren(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
    // The daemon is still fine and nothing half-created is listed.
    let list = d.warren_json(&["ls"]);
    assert_eq!(list.as_array().map(Vec::len).unwrap_or(0), 0, "{list}");
}

#[test]
fn exec_reports_missing_programs_and_timeouts_as_results() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let out = d.warren(&["exec", &id, "--", "no-such-program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("not found"));

    // With --json the result is printed and the exit code is still the command's.
    let out = d.warren(&["--json", "exec", "--timeout", "1", &id, "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(137));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["timedOut"], true, "{result}");
    assert_eq!(result["exitCode"], 137);
}

#[test]
fn without_a_daemon_the_cli_starts_one() {
    require_root!();
    let data = tempfile::tempdir().unwrap();
    let socket = data.path().join("auto.sock");
    let parent = format!("warren-e2e-auto-{}", std::process::id());
    let out = std::process::Command::new(harness::warren_bin())
        .env("WARREN_CGROUP_PARENT", &parent)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--socket")
        .arg(&socket)
        .args(["run", "--", "echo", "hi"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    // Stop the auto-started daemon before asserting.
    let pid: Option<i32> = stderr
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok());
    if let Some(pid) = pid {
        // SAFETY: SIGTERM to the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    for dir in harness::cgroup_parent_dirs(&parent) {
        let _ = std::fs::remove_dir(dir);
    }
    harness::remove_nft_table(data.path());
    assert!(out.status.success(), "{stderr}");
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(stderr.contains("started daemon"), "{stderr}");
    assert!(pid.is_some(), "no daemon pid in: {stderr}");
}
