//! End-to-end: `warren exec` streams output live and forwards stdin, and
//! deleting a sandbox or a timeout leaves no process of the command behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{warren_bin, Daemon};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `warren` against `d`, with stdin, stdout and stderr piped.
fn spawn_cli(d: &Daemon, args: &[&str]) -> std::process::Child {
    Command::new(warren_bin())
        .arg("--data-dir")
        .arg(d.data_dir())
        .arg("--socket")
        .arg(&d.socket)
        .arg("--no-autostart")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The command name of host pid `pid`, while it exists.
fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Waits until the sandbox's cgroup holds at least `count` processes named
/// `sleep`, and returns every pid it holds except its init (the agent).
fn wait_for_sleepers(d: &Daemon, id: &str, count: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = d.sandbox_pids(id);
        let sleepers = pids
            .iter()
            .filter(|p| comm(**p).as_deref() == Some("sleep"))
            .count();
        if sleepers >= count {
            let mut pids: Vec<i32> = pids
                .into_iter()
                .filter(|p| comm(*p).is_some_and(|c| c == "sleep" || c == "sh"))
                .collect();
            pids.sort_unstable();
            pids.dedup();
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {count} sleeps in {id}: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that none of `pids` is alive (as the same command) within a few
/// seconds.
fn assert_all_gone(pids: &[i32], names: &[Option<String>], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<(i32, String)> = pids
            .iter()
            .zip(names)
            .filter_map(|(pid, name)| {
                let now = comm(*pid)?;
                (Some(&now) == name.as_ref()).then_some((*pid, now))
            })
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: these host processes survived: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exec_streams_output_before_the_command_finishes() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let started = Instant::now();
    let mut child = spawn_cli(
        &d,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo a; sleep 1; echo b >&2; echo c",
        ],
    );
    drop(child.stdin.take());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "a\n");
    // `a` arrived while the command is still sleeping.
    assert!(
        child.try_wait().unwrap().is_none(),
        "the CLI had already exited when `a` arrived"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "`a` took {:?}",
        started.elapsed()
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "c\n");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(stderr, "b\n");
    assert!(child.wait().unwrap().success());
    assert!(started.elapsed() >= Duration::from_secs(1));

    // The exit code is the command's.
    let out = d.warren(&["exec", &id, "--", "sh", "-c", "echo out; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out\n");
}

#[test]
fn exec_forwards_piped_stdin_until_eof() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    // About 1 MiB of text with multi-byte characters, so that chunk
    // boundaries fall inside characters.
    let unit = "stdin é ü 中文 line\n";
    let input = unit.repeat((1 << 20) / unit.len());
    let expected = input.len();
    let mut child = spawn_cli(&d, &["exec", &id, "--", "wc", "-c"]);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(input.as_bytes()).unwrap();
        // Dropping stdin closes it: the command reads EOF.
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), expected.to_string());

    // A command that never reads stdin still finishes at once.
    let mut child = spawn_cli(&d, &["exec", &id, "--", "echo", "no-read"]);
    let _open_stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "no-read\n");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let mut child = spawn_cli(
        &d,
        &[
            "exec",
            "--timeout",
            "2",
            &id,
            "--",
            "sh",
            "-c",
            "sleep 300 & sleep 300 & wait",
        ],
    );
    drop(child.stdin.take());
    let pids = wait_for_sleepers(&d, &id, 2);
    let names: Vec<Option<String>> = pids.iter().map(|p| comm(*p)).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "warren: the command timed out after 2 s and was killed\n"
    );
    assert_all_gone(&pids, &names, "after the timeout");
    // The sandbox is still usable.
    let out = d.warren(&["exec", &id, "--", "echo", "alive"]);
    assert_eq!(text(&out.stdout), "alive\n");
}

#[test]
fn deleting_a_sandbox_leaves_no_orphan() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let out = d.warren(&[
        "exec",
        "-d",
        &id,
        "--",
        "sh",
        "-c",
        "sleep 300 & sleep 300 & wait",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pids = wait_for_sleepers(&d, &id, 2);
    assert!(pids.len() >= 3, "expected sh and two sleeps: {pids:?}");
    // Everything in the sandbox, the agent included.
    let all = d.sandbox_pids(&id);
    let all_names: Vec<Option<String>> = all.iter().map(|p| comm(*p)).collect();
    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_all_gone(&all, &all_names, "after rm");
    assert!(d.sandbox_pids(&id).is_empty());
}
