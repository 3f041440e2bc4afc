//! End-to-end: timeouts, idle timeouts, PATCH, auto-resume, suspend to disk
//! (namespace driver) and the event log with SSE, through the real CLI and
//! the real client against a real daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{assert_conflict, http_unix, Daemon};

/// How long a test waits for a timeout to fire (the daemon checks every
/// ~500 ms; a loaded machine can be slow).
const EXPIRY_WAIT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn state(d: &Daemon, id: &str) -> String {
    d.warren_json(&["inspect", id])["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn exists(d: &Daemon, id: &str) -> bool {
    d.warren(&["inspect", id]).status.success()
}

/// Waits until `done` holds, failing after `EXPIRY_WAIT`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + EXPIRY_WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events(d: &Daemon, id: &str) -> Vec<serde_json::Value> {
    d.warren_json(&["events", id])["events"]
        .as_array()
        .unwrap()
        .clone()
}

fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn exec_ok(d: &Daemon, id: &str, script: &str) -> String {
    let out = d.warren(&["exec", id, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "exec {script:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The first `timeout` event in a sandbox's log.
fn timeout_event(log: &[serde_json::Value]) -> &serde_json::Value {
    log.iter()
        .find(|e| e["kind"] == "timeout")
        .unwrap_or_else(|| panic!("no timeout event: {log:?}"))
}

/// Creates a sandbox with `extra` create flags, writes `kept` to
/// /workspace/note in it and suspends it; returns its id.
fn suspended_with_note(d: &Daemon, extra: &[&str]) -> String {
    let id = d.create(extra);
    exec_ok(d, &id, "echo kept > /workspace/note");
    d.warren_json(&["suspend", &id]);
    id
}

/// Asserts that /workspace/note still says `kept` (an exec, so this
/// auto-resumes a sandbox that allows it).
fn assert_note_kept(d: &Daemon, id: &str) {
    assert_eq!(exec_ok(d, id, "cat /workspace/note"), "kept\n");
}

#[test]
fn timeout_deletes_the_sandbox_and_records_why() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--timeout", "3"]);
    let sandbox = d.warren_json(&["inspect", &id]);
    assert_eq!(sandbox["timeoutSecs"], 3);
    assert!(sandbox["expiresAt"].is_string(), "{sandbox}");
    wait_until("the sandbox is deleted by its timeout", || !exists(&d, &id));

    // The events of a deleted sandbox stay readable.
    let log = events(&d, &id);
    assert_eq!(timeout_event(&log)["data"]["reason"], "timeout");
    assert_eq!(kinds(&log).last().unwrap(), "deleted");
    assert!(!d.data_dir().join("sandboxes").join(&id).exists());
}

#[test]
fn on_timeout_pause_pauses_the_sandbox() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--timeout", "3", "--on-timeout", "pause"]);
    wait_until("the sandbox is paused by its timeout", || {
        state(&d, &id) == "paused"
    });
    let sandbox = d.warren_json(&["inspect", &id]);
    assert!(
        sandbox["expiresAt"].is_null(),
        "the timeout fired once: {sandbox}"
    );
    assert!(kinds(&events(&d, &id)).contains(&"timeout".to_owned()));
}

#[test]
fn exec_activity_keeps_an_idle_timeout_from_firing() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--idle-timeout", "5", "--on-timeout", "pause"]);
    // Busy for 8 s, longer than the idle timeout: every exec must find the
    // sandbox running (without auto-resume a paused one would refuse).
    let busy_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < busy_until {
        exec_ok(&d, &id, "true");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(state(&d, &id), "running");
    assert!(!kinds(&events(&d, &id)).contains(&"timeout".to_owned()));
    assert!(d.warren_json(&["inspect", &id])["lastActivityAt"].is_string());

    // Idle now: the idle timeout fires.
    wait_until("the idle sandbox is paused", || state(&d, &id) == "paused");
    assert_eq!(timeout_event(&events(&d, &id))["data"]["reason"], "idle");
}

#[test]
fn patch_extends_a_timeout() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--timeout", "5"]);
    let updated = d.warren_json(&["update", &id, "--timeout", "60"]);
    assert_eq!(updated["timeoutSecs"], 60);
    // Past the original deadline (plus the checker's period): still here.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(state(&d, &id), "running");
    assert!(kinds(&events(&d, &id)).contains(&"extended".to_owned()));

    // 0 clears it; other settings change too.
    let updated = d.warren_json(&[
        "update",
        &id,
        "--timeout",
        "0",
        "--on-timeout",
        "pause",
        "--auto-resume",
        "true",
    ]);
    assert!(updated["timeoutSecs"].is_null(), "{updated}");
    assert!(updated["expiresAt"].is_null(), "{updated}");
    assert_eq!(updated["onTimeout"], "pause");
    assert_eq!(updated["autoResume"], true);
}

#[test]
fn auto_resume_resumes_a_paused_sandbox_on_exec() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--auto-resume"]);
    d.warren_json(&["pause", &id]);
    assert_eq!(state(&d, &id), "paused");
    assert_eq!(exec_ok(&d, &id, "echo hello"), "hello\n");
    assert_eq!(state(&d, &id), "running");
    let log = events(&d, &id);
    let resumed = log.iter().rev().find(|e| e["kind"] == "running").unwrap();
    assert_eq!(resumed["data"]["auto"], true, "{log:?}");

    // Without auto-resume a paused sandbox still refuses.
    let other = d.create(&[]);
    d.warren_json(&["pause", &other]);
    assert_conflict(&d.warren(&["exec", &other, "--", "true"]), "paused");
}

#[test]
fn suspend_keeps_files_stops_processes_and_resume_starts_it_again() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    exec_ok(&d, &id, "echo kept > /workspace/note");
    let out = d.warren(&["exec", "-d", &id, "--", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        exec_ok(&d, &id, "cat /proc/[0-9]*/comm | grep -cx sleep || true").trim(),
        "1",
        "the background process runs before suspend"
    );

    let suspended = d.warren_json(&["suspend", &id]);
    assert_eq!(suspended["state"], "suspended");
    assert_eq!(suspended["memoryPreserved"], false);
    let inspected = d.warren_json(&["inspect", &id]);
    assert_eq!(inspected["memoryPreserved"], false, "{inspected}");
    for dir in d.cgroup_dirs(&id) {
        assert!(
            !dir.exists(),
            "cgroup {} left while suspended",
            dir.display()
        );
    }
    assert!(d.data_dir().join("sandboxes").join(&id).exists());

    // Bad transitions name the current state.
    assert_conflict(&d.warren(&["pause", &id]), "suspended");
    assert_conflict(&d.warren(&["suspend", &id]), "suspended");
    assert_conflict(&d.warren(&["exec", &id, "--", "true"]), "suspended");

    let resumed = d.warren_json(&["resume", &id]);
    assert_eq!(resumed["state"], "running");
    assert!(resumed["memoryPreserved"].is_null(), "{resumed}");
    assert_note_kept(&d, &id);
    assert_eq!(
        exec_ok(&d, &id, "cat /proc/[0-9]*/comm | grep -cx sleep || true").trim(),
        "0",
        "the background process does not survive suspend"
    );

    // A suspended sandbox can be deleted: nothing is left.
    d.warren_json(&["suspend", &id]);
    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!exists(&d, &id));
    assert!(!d.data_dir().join("sandboxes").join(&id).exists());
    for dir in d.cgroup_dirs(&id) {
        assert!(!dir.exists());
    }
}

#[test]
fn auto_resume_starts_a_suspended_sandbox_on_exec() {
    require_root!();
    let d = Daemon::start();
    let id = suspended_with_note(&d, &["--auto-resume"]);
    assert_note_kept(&d, &id);
    assert_eq!(state(&d, &id), "running");
}

#[test]
fn events_stream_replays_after_last_event_id_and_follows_live() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    d.warren_json(&["pause", &id]);
    d.warren_json(&["resume", &id]);
    let log = events(&d, &id);
    assert_eq!(kinds(&log), ["creating", "running", "paused", "running"]);
    let paused_id = log[2]["id"].as_i64().unwrap();

    let client = warren_client::Client::unix(&d.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut stream = client.follow_sandbox_events(&id, paused_id).await.unwrap();
        // Replay: only what came after the given id.
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.kind, "running");
        assert!(first.id > paused_id);
        // Live: a pause now arrives on the open stream.
        let pause = tokio::task::spawn_blocking({
            let (socket, id) = (d.socket.clone(), id.clone());
            move || http_unix(&socket, "POST", &format!("/v1/sandboxes/{id}/pause"), None).unwrap()
        });
        let live = tokio::time::timeout(EXPIRY_WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(live.kind, "paused");
        assert_eq!(pause.await.unwrap().0, 200);
        // The stream ends after the sandbox's deletion.
        let delete = tokio::task::spawn_blocking({
            let (socket, id) = (d.socket.clone(), id.clone());
            move || http_unix(&socket, "DELETE", &format!("/v1/sandboxes/{id}"), None).unwrap()
        });
        let mut rest = Vec::new();
        while let Some(event) = tokio::time::timeout(EXPIRY_WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            rest.push(event.kind);
        }
        assert_eq!(delete.await.unwrap().0, 204);
        assert_eq!(rest.last().map(String::as_str), Some("deleted"), "{rest:?}");
    });

    // The CLI follows a finished log to its end, too.
    let out = d.warren(&["--json", "events", &id, "--follow"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["kind"], "deleted");
}

#[test]
fn bad_lifetime_input_is_refused() {
    require_root!();
    let d = Daemon::start();
    for (body, field) in [
        (r#"{"timeoutSecs": -1}"#, "timeoutSecs"),
        (r#"{"idleTimeoutSecs": 0}"#, "idleTimeoutSecs"),
        (r#"{"timeoutSecs": 2592001}"#, "timeoutSecs"),
    ] {
        let (status, answer) = http_unix(&d.socket, "POST", "/v1/sandboxes", Some(body)).unwrap();
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer.contains(field), "{answer}");
    }
    let list = d.warren_json(&["ls"]);
    let listed = list
        .as_array()
        .or_else(|| list["sandboxes"].as_array())
        .unwrap();
    assert!(listed.is_empty(), "a refused create leaves nothing: {list}");

    let id = d.create(&[]);
    let (status, answer) = http_unix(
        &d.socket,
        "PATCH",
        &format!("/v1/sandboxes/{id}"),
        Some(r#"{"timeoutSecs": -1}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("timeoutSecs"), "{answer}");
    let (status, answer) = http_unix(
        &d.socket,
        "PATCH",
        &format!("/v1/sandboxes/{id}"),
        Some("{}"),
    )
    .unwrap();
    assert_eq!(status, 422, "an empty PATCH changes nothing: {answer}");
    let (status, answer) = http_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{id}/events?after=soon"),
        None,
    )
    .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("invalid_request"), "{answer}");
    let (status, _) = http_unix(
        &d.socket,
        "PATCH",
        "/v1/sandboxes/nosuchsandbox",
        Some(r#"{"timeoutSecs": 5}"#),
    )
    .unwrap();
    assert_eq!(status, 404);
    let (status, answer) = http_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes/nosuchsandbox/suspend",
        None,
    )
    .unwrap();
    assert_eq!(status, 404, "{answer}");
}

#[test]
fn a_suspended_sandbox_stays_suspended_across_a_daemon_restart() {
    require_root!();
    let mut d = Daemon::start();
    let id = suspended_with_note(&d, &[]);
    d.restart();
    assert_eq!(state(&d, &id), "suspended");
    assert_eq!(d.warren_json(&["resume", &id])["state"], "running");
    assert_note_kept(&d, &id);
}

#[test]
fn on_timeout_suspend_suspends_the_sandbox() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--timeout", "1", "--on-timeout", "suspend"]);
    wait_until("the sandbox is suspended by its timeout", || {
        state(&d, &id) == "suspended"
    });
    assert_eq!(d.warren_json(&["inspect", &id])["memoryPreserved"], false);
    assert_eq!(timeout_event(&events(&d, &id))["data"]["action"], "suspend");
}

#[test]
fn concurrent_execs_auto_resume_a_suspended_sandbox_once() {
    require_root!();
    let d = Daemon::start();
    let id = suspended_with_note(&d, &["--auto-resume"]);
    let suspended_at = events(&d, &id).last().unwrap()["id"].as_i64().unwrap();
    std::thread::scope(|scope| {
        let execs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| exec_ok(&d, &id, "cat /workspace/note")))
            .collect();
        for exec in execs {
            assert_eq!(exec.join().unwrap(), "kept\n");
        }
    });
    assert_eq!(state(&d, &id), "running");
    let after: Vec<serde_json::Value> = events(&d, &id)
        .into_iter()
        .filter(|e| e["id"].as_i64().unwrap() > suspended_at)
        .collect();
    assert_eq!(kinds(&after), ["running"], "resumed once: {after:?}");
    assert_eq!(after[0]["data"]["auto"], true);
}

#[test]
fn a_failed_resume_leaves_the_sandbox_suspended_with_a_reason() {
    require_root!();
    let d = Daemon::start();
    let id = suspended_with_note(&d, &[]);
    // Without its writable layer there is nothing to resume from.
    let dir = d.data_dir().join("sandboxes").join(&id);
    let (upper, aside) = (dir.join("upper"), dir.join("upper.aside"));
    if !upper.is_dir() {
        eprintln!("skipping: the sandbox keeps its files on a disk image");
        return;
    }
    std::fs::rename(&upper, &aside).unwrap();
    let out = d.warren(&["resume", &id]);
    assert!(!out.status.success(), "resume without files must fail");
    assert_eq!(state(&d, &id), "suspended");
    let log = events(&d, &id);
    let failed = log
        .iter()
        .find(|e| e["kind"] == "resume_failed")
        .unwrap_or_else(|| panic!("no resume_failed event: {log:?}"));
    assert!(
        failed["data"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{failed}"
    );
    // With its files back it resumes.
    std::fs::rename(&aside, &upper).unwrap();
    assert_eq!(d.warren_json(&["resume", &id])["state"], "running");
    assert_note_kept(&d, &id);
}

#[test]
fn an_event_stream_after_the_deleted_event_ends() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deleted = events(&d, &id).last().unwrap()["id"].as_i64().unwrap();
    let client = warren_client::Client::unix(&d.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for after in [deleted, deleted + 1000] {
            let mut stream = client.follow_sandbox_events(&id, after).await.unwrap();
            let next = tokio::time::timeout(EXPIRY_WAIT, stream.next())
                .await
                .expect("the stream must end, not wait forever")
                .unwrap();
            assert!(next.is_none(), "no events after {after}: {next:?}");
        }
    });
}

#[test]
fn a_request_longer_than_the_idle_timeout_is_not_cut_off() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--idle-timeout", "3", "--on-timeout", "pause"]);
    // In flight for twice the idle timeout: the sandbox is not idle meanwhile.
    assert_eq!(exec_ok(&d, &id, "sleep 6; echo done"), "done\n");
    assert_eq!(state(&d, &id), "running");
    let log = events(&d, &id);
    assert!(!kinds(&log).contains(&"timeout".to_owned()), "{log:?}");
}

#[test]
fn adding_an_idle_timeout_starts_a_new_idle_period() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    // Idle for longer than the timeout about to be set.
    std::thread::sleep(Duration::from_secs(7));
    let updated = d.warren_json(&[
        "update",
        &id,
        "--idle-timeout",
        "5",
        "--on-timeout",
        "pause",
    ]);
    assert_eq!(updated["idleTimeoutSecs"], 5);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        state(&d, &id),
        "running",
        "the idle clock starts at the PATCH"
    );
    wait_until("the idle sandbox is paused", || state(&d, &id) == "paused");
}
