//! End-to-end: background processes through the real daemon, its SSE output
//! stream (with `Last-Event-ID` resume) and the `warren` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{http_unix, Daemon};
use warren_client::{Client, OutputEvent};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_for_status(d: &Daemon, id: &str, pid: i32, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = d.warren_json(&["ps", id]);
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .cloned()
            .unwrap_or_else(|| panic!("pid {pid} not listed: {list}"));
        if entry["status"] == status {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "{pid} never became {status}: {entry}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn background_process_output_resumes_exactly_and_cli_manages_processes() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);

    // `exec -d` prints the pid and returns while the command runs.
    let started = Instant::now();
    let out = d.warren(&[
        "exec",
        "-d",
        "--tag",
        "ticker",
        &id,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.3; done; echo done >&2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(1));
    let pid: i32 = text(&out.stdout).trim().parse().unwrap();
    let expected = "line1\nline2\nline3\nline4\nline5\nline6\n";

    let client = Client::unix(&d.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Read the first two chunks live, then disconnect.
        let mut stream = client.process_output(&id, pid, None, true).await.unwrap();
        let mut seen = Vec::new();
        let mut last_id = 0;
        for _ in 0..2 {
            match stream.next().await.unwrap().unwrap() {
                OutputEvent::Output { fd: 1, data, id } => {
                    seen.extend(data);
                    last_id = id;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(stream);
        assert_eq!(last_id as usize, seen.len());
        assert_eq!(text(&seen), expected[..seen.len()]);

        // Reconnect with Last-Event-ID: exactly the rest, then the exit.
        let mut stream = client
            .process_output(&id, pid, Some(last_id), true)
            .await
            .unwrap();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let exit = loop {
            match stream.next().await.unwrap() {
                Some(OutputEvent::Output { fd: 1, data, .. }) => stdout.extend(data),
                Some(OutputEvent::Output { data, .. }) => stderr.extend(data),
                Some(OutputEvent::Exit { exit_code, id, .. }) => break (exit_code, id),
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("stream ended without an exit event"),
            }
        };
        assert_eq!(text(&stdout), expected[seen.len()..]);
        assert_eq!(text(&stderr), "done\n");
        assert_eq!(exit, (0, (expected.len() + 5) as u64));
    });

    // The raw stream is SSE with ids and named events.
    let (status, body) = http_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{id}/processes/{pid}/output"),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("event: stdout"), "{body}");
    assert!(body.contains("event: stderr"), "{body}");
    assert!(body.contains("event: exit"), "{body}");
    assert!(body.contains("id: 41"), "{body}");

    // `logs` prints the kept output; `logs -f` of a finished process too.
    let out = d.warren(&["logs", &id, &pid.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), expected);
    assert_eq!(text(&out.stderr), "done\n");
    let out = d.warren(&["logs", "-f", &id, &pid.to_string()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), expected);

    // A long-running process: listed as running, killed by signal name.
    let out = d.warren(&["exec", "-d", &id, "--", "sh", "-c", "echo up; sleep 100"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sleeper = text(&out.stdout).trim().to_owned();
    let sleeper_pid: i32 = sleeper.parse().unwrap();
    wait_for_status(&d, &id, sleeper_pid, "running");
    let table = text(&d.warren(&["ps", &id]).stdout);
    assert!(
        table.contains("ticker") && table.contains("exited (0)"),
        "{table}"
    );
    assert!(table.contains("running"), "{table}");

    let out = d.warren(&["kill", &id, &sleeper, "--signal", "SIGBOGUS"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("SIGTERM"),
        "{}",
        text(&out.stderr)
    );
    let out = d.warren(&["kill", &id, &sleeper, "--signal", "SIGKILL"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let entry = wait_for_status(&d, &id, sleeper_pid, "exited");
    assert_eq!(entry["exitCode"], 137);
    let out = d.warren(&["logs", "-f", &id, &sleeper]);
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(text(&out.stdout), "up\n");

    // Bad input: unknown pid 404, stdin without stdin 409.
    let out = d.warren(&["logs", &id, "99999"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not_found"),
        "{}",
        text(&out.stderr)
    );
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/processes/{sleeper}/stdin"),
        Some(r#"{"data":"x"}"#),
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    let (status, _) = http_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{id}/processes/99999"),
        None,
    )
    .unwrap();
    assert_eq!(status, 404);

    // Stdin through the API.
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/processes"),
        Some(r#"{"shell":"tr a-z A-Z","stdin":true}"#),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let tr: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tr_pid = tr["pid"].as_i64().unwrap();
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/processes/{tr_pid}/stdin"),
        Some(r#"{"data":"shout\n","close":true}"#),
    )
    .unwrap();
    assert_eq!(status, 204, "{body}");
    let out = d.warren(&["logs", "-f", &id, &tr_pid.to_string()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "SHOUT\n");

    // Plain exec is still buffered and unchanged.
    let out = d.warren(&["exec", &id, "--", "echo", "plain"]);
    assert_eq!(text(&out.stdout), "plain\n");
}
