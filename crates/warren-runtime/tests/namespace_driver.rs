#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Privileged integration tests of the namespace driver: real namespaces,
//! real overlay mounts, real cgroups. They skip (with a printed reason) when
//! not run as root.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{require_root, Harness};
use warren_runtime::{
    Driver, DriverError, ExecSpec, NamespaceConfig, NamespaceDriver, ProcessEvent, RuntimeInfo,
    SpawnSpec,
};

fn mountinfo_mentions(path: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_runs_commands_in_its_own_namespaces() {
    require_root!();
    let h = Harness::new();
    let mut spec = h.spec("nsbasics1");
    spec.env = vec![("GREETING".into(), "hello".into())];
    let info = h.create(&spec).await;
    assert!(info.pid > 1);

    // PID 1 is the agent; our shell is its child in a fresh pid namespace.
    let (code, out, err) = h.sh("nsbasics1", "echo $$; cat /proc/1/comm; ps -o ppid= -p $$ 2>/dev/null || awk '{print $4}' /proc/$$/stat").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[1], "agent", "{out}");
    assert_eq!(
        lines[2].trim(),
        "1",
        "shell's parent must be the agent (pid 1): {out}"
    );

    let (_, out, _) = h
        .sh("nsbasics1", "hostname; pwd; echo $GREETING; id -u")
        .await;
    assert_eq!(out, "nsbasics1\n/workspace\nhello\n0\n");

    // Root inside maps to the unprivileged host range.
    let (_, out, _) = h.sh("nsbasics1", "cat /proc/self/uid_map").await;
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields, vec!["0", "1000000", "65536"]);

    // Only loopback in its network namespace.
    let (_, out, _) = h.sh("nsbasics1", "ls /sys/class/net").await;
    assert_eq!(out.trim(), "lo");

    // Host processes are invisible.
    let (_, out, _) = h.sh("nsbasics1", "ls /proc | grep -c '^[0-9]'").await;
    assert!(
        out.trim().parse::<u32>().unwrap() <= 4,
        "sandbox sees too many processes: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_private_paths_are_invisible_and_system_dirs_read_only() {
    require_root!();
    let h = Harness::new();
    h.create(&h.spec("nsfs1")).await;
    std::fs::create_dir_all("/root").unwrap();
    let marker = PathBuf::from("/root/.warren-test-marker");
    std::fs::write(&marker, "host secret").unwrap();

    let (_, out, _) = h
        .sh(
            "nsfs1",
            "ls -A /root | wc -l; ls -A /home | wc -l; cat /etc/shadow | wc -c; ls /run | wc -l",
        )
        .await;
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "0", "0", "0"],
        "{out}"
    );

    // Warren's data directory is not visible either.
    let (_, out, _) = h
        .sh(
            "nsfs1",
            &format!("ls {} 2>&1 | head -1", h.data.path().display()),
        )
        .await;
    assert!(out.contains("No such file"), "{out}");

    // Writes to /usr fail and never reach the host.
    let (code, _, err) = h.sh("nsfs1", "touch /usr/warren-escape").await;
    assert_ne!(code, 0);
    assert!(
        err.contains("Read-only") || err.contains("Permission denied"),
        "{err}"
    );
    assert!(!std::path::Path::new("/usr/warren-escape").exists());

    // Private writable dirs work and land in the sandbox's upper layer only.
    let (code, out, _) = h
        .sh(
            "nsfs1",
            "echo data > /workspace/f && echo tmp > /tmp/t && cat /workspace/f /tmp/t",
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "data\ntmp\n"));
    assert!(h
        .data
        .path()
        .join("sandboxes/nsfs1/upper/workspace/f")
        .exists());
    assert!(!std::path::Path::new("/workspace/f").exists());

    // /dev is minimal.
    let (_, out, _) = h.sh("nsfs1", "ls /dev | tr '\\n' ' '").await;
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
    ] {
        assert!(
            out.split_whitespace().any(|d| d == dev),
            "/dev lacks {dev}: {out}"
        );
    }
    assert!(!out.contains("vda") && !out.contains("sda"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_missing_binaries_timeouts_and_stdin() {
    require_root!();
    let h = Harness::new();
    h.create(&h.spec("nsexec1")).await;
    let out = h
        .driver
        .exec(
            "nsexec1",
            ExecSpec {
                argv: vec!["definitely-not-a-command".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 127);
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));

    let out = h
        .driver
        .exec(
            "nsexec1",
            ExecSpec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "sleep 30 & sleep 30; echo never".into(),
                ],
                timeout: Some(Duration::from_millis(300)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, 128 + 9);
    // The whole process group died, the background sleep included.
    let (_, ps, _) = h
        .sh(
            "nsexec1",
            "for p in /proc/[0-9]*; do cat $p/comm; done | grep -c sleep || true",
        )
        .await;
    assert_eq!(ps.trim(), "0", "orphaned sleep survived the timeout");

    let out = h
        .driver
        .exec(
            "nsexec1",
            ExecSpec {
                argv: vec!["cat".into()],
                stdin: b"piped input".to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"piped input");

    // Zombies are reaped by the agent.
    let (_, out, _) = h
        .sh(
            "nsexec1",
            "sh -c 'true & exit 0'; sleep 0.2; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l",
        )
        .await;
    assert_eq!(out.trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_pids_limits_hold() {
    require_root!();
    let h = Harness::new();
    let mut spec = h.spec("nslimits1");
    spec.memory_bytes = 64 << 20;
    spec.pids_limit = 32;
    h.create(&spec).await;
    let dirs = h.driver.cgroup_dirs("nslimits1");
    assert!(!dirs.is_empty());
    // Allocating 256 MiB in a 64 MiB sandbox gets the allocator killed.
    let out = h
        .driver
        .exec(
            "nslimits1",
            ExecSpec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "head -c 268435456 /dev/zero | tail > /dev/null".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 128 + 9, "memory hog was not OOM-killed");
    assert!(out.oom_killed, "the OOM kill was not reported");
    let calm = h
        .driver
        .exec(
            "nslimits1",
            ExecSpec {
                argv: vec!["true".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!calm.oom_killed);
    // A fork loop cannot get past 32 tasks: the host sees the cgroup at its
    // limit and counts refused forks (the shell itself dies on EAGAIN).
    let pids_dir = dirs
        .iter()
        .find(|d| d.join("pids.max").exists())
        .expect("pids cgroup");
    assert_eq!(
        std::fs::read_to_string(pids_dir.join("pids.max"))
            .unwrap()
            .trim(),
        "32"
    );
    let (code, _, _) = h
        .sh(
            "nslimits1",
            "i=0; while [ $i -lt 100 ]; do sleep 2 & i=$((i+1)); done; echo finished",
        )
        .await;
    assert_ne!(code, 0, "a shell forking 100 children must hit the limit");
    let current: u32 = std::fs::read_to_string(pids_dir.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 32, "pids.current {current} exceeds the limit");
    let events = std::fs::read_to_string(pids_dir.join("pids.events")).unwrap();
    let refused: u64 = events.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(refused > 0, "no fork was refused: {events}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The sandbox still works afterwards.
    let (code, out, _) = h.sh("nslimits1", "echo alive").await;
    assert_eq!((code, out.as_str()), (0, "alive\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_leaves_nothing_behind() {
    require_root!();
    let h = Harness::new();
    let info = h.create(&h.spec("nsrm1")).await;
    h.sh("nsrm1", "sleep 60 & echo started").await;
    let dirs = h.driver.cgroup_dirs("nsrm1");
    assert!(dirs.iter().all(|d| d.exists()));
    let sandbox_dir = h.data.path().join("sandboxes/nsrm1");
    h.destroy("nsrm1").await;
    assert!(!sandbox_dir.exists(), "sandbox directory left behind");
    assert!(dirs.iter().all(|d| !d.exists()), "cgroups left behind");
    assert!(!mountinfo_mentions(&sandbox_dir), "mounts left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", info.pid)).exists(),
        "sandbox init still exists"
    );
    // Destroying again is fine.
    h.driver.destroy("nsrm1", Some(&info)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_every_process_and_destroy_works_while_paused() {
    require_root!();
    let h = Harness::new();
    let info = h.create(&h.spec("nspause1")).await;
    h.sh("nspause1", "sleep 60 & echo started").await;
    let pausable = h.driver.pausable().expect("the namespace driver can pause");
    let layout = h.driver.cgroup_layout();

    pausable.pause("nspause1").await.unwrap();
    assert!(layout.is_frozen(&h.parent, "nspause1"));
    pausable.resume("nspause1").await.unwrap();
    assert!(!layout.is_frozen(&h.parent, "nspause1"));
    // Resuming what is not frozen is fine, and the agent answers again.
    pausable.resume("nspause1").await.unwrap();
    let (code, out, _) = h.sh("nspause1", "echo back").await;
    assert_eq!((code, out.as_str()), (0, "back\n"));

    // Destroy while frozen: it thaws, kills and removes everything in time.
    pausable.pause("nspause1").await.unwrap();
    let dirs = h.driver.cgroup_dirs("nspause1");
    let started = std::time::Instant::now();
    h.destroy("nspause1").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(dirs.iter().all(|d| !d.exists()), "cgroups left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", info.pid)).exists(),
        "sandbox init still exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_adopts_running_sandboxes() {
    require_root!();
    let h = Harness::new();
    let info = h.create(&h.spec("nsadopt1")).await;
    h.sh("nsadopt1", "echo kept > /workspace/state").await;
    // A second driver on the same data dir (a restarted daemon) reconnects.
    let mut cfg = NamespaceConfig::new(h.data.path());
    cfg.cgroup_parent = h.parent.clone();
    let again = NamespaceDriver::new(cfg).unwrap();
    again.adopt("nsadopt1", &info).await.unwrap();
    let out = again
        .exec(
            "nsadopt1",
            ExecSpec {
                argv: vec!["cat".into(), "/workspace/state".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"kept\n");
    // A stale record (wrong start time) is refused.
    let stale = RuntimeInfo {
        start_time: info.start_time + 1,
        ..info
    };
    assert!(again.adopt("nsadopt1", &stale).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_hardened_and_as_the_requested_user() {
    require_root!();
    let h = Harness::new();
    let mut spec = h.spec("nsuser1");
    spec.user = Some("agent".into());
    h.create(&spec).await;

    // The default user is created on first use, owns the workdir, has no caps.
    let (code, out, err) = h.sh("nsuser1", "id -un; id -u; echo $HOME; stat -c %U /workspace; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        (lines[0], lines[2], lines[3]),
        ("agent", "/home/agent", "agent"),
        "{out}"
    );
    let agent_uid: u32 = lines[1].parse().unwrap();
    assert!((1000..60000).contains(&agent_uid), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(
        out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"),
        "{out}"
    );
    // The user cannot edit the account files; they are the sandbox's own copies.
    let (code, _, _) = h.sh("nsuser1", "echo x >> /etc/passwd").await;
    assert_ne!(code, 0);
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains(&format!("agent:x:{agent_uid}:")),
        "host passwd changed"
    );

    // Root on request: only runc's default capabilities, and seccomp refuses
    // mounts and new user namespaces.
    let out = h
        .driver
        .exec(
            "nsuser1",
            ExecSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), "grep CapBnd /proc/self/status; unshare -U true; echo userns=$?; mount -t tmpfs x /mnt; echo mount=$?".into()],
                user: Some("root".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mask = warren_linux::caps::mask(warren_linux::caps::DEFAULT_CAPABILITIES);
    assert!(text.contains(&format!("CapBnd:\t{mask:016x}")), "{text}");
    assert!(
        text.contains("userns=1") && !text.contains("mount=0"),
        "{text}"
    );

    // A second user is created on demand, with its own id.
    let out = h
        .driver
        .exec(
            "nsuser1",
            ExecSpec {
                argv: vec!["id".into(), "-u".into()],
                user: Some("builder".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let builder_uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(builder_uid >= 1000 && builder_uid != agent_uid);
}

fn shell_spawn(script: &str) -> SpawnSpec {
    SpawnSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Collects a subscription's events until it ends: (bytes by fd in order,
/// dropped count, exit).
async fn drain(
    mut rx: tokio::sync::mpsc::Receiver<ProcessEvent>,
) -> (Vec<(u8, u64, Vec<u8>)>, u64, Option<(i32, bool)>) {
    let (mut chunks, mut dropped, mut exit) = (Vec::new(), 0, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        match event {
            ProcessEvent::Output { fd, offset, data } => chunks.push((fd, offset, data)),
            ProcessEvent::Dropped { count } => dropped += count,
            ProcessEvent::Exited {
                exit_code,
                timed_out,
            } => exit = Some((exit_code, timed_out)),
            ProcessEvent::End { .. } => {}
        }
    }
    (chunks, dropped, exit)
}

fn joined(chunks: &[(u8, u64, Vec<u8>)], fd: u8) -> String {
    chunks
        .iter()
        .filter(|c| c.0 == fd)
        .map(|c| String::from_utf8_lossy(&c.2).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_stream_resume_take_stdin_and_signals() {
    require_root!();
    let h = Harness::new();
    h.create(&h.spec("nsproc1")).await;
    let pc = h.driver.processes().unwrap();

    // Spawn → live output → exit; offsets run across stdout and stderr.
    let p = pc
        .spawn(
            "nsproc1",
            SpawnSpec {
                tag: Some("lines".into()),
                ..shell_spawn("echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 3")
            },
        )
        .await
        .unwrap();
    assert!(p.pid > 1 && p.running, "{p:?}");
    assert_eq!(p.tag.as_deref(), Some("lines"));
    let rx = pc
        .subscribe_output("nsproc1", p.pid, 0, true)
        .await
        .unwrap();
    let (chunks, dropped, exit) = drain(rx).await;
    assert_eq!(dropped, 0);
    assert_eq!(exit, Some((3, false)));
    assert_eq!(joined(&chunks, 1), "one\nthree\n");
    assert_eq!(joined(&chunks, 2), "two\n");
    let mut next = 0;
    for (_, offset, data) in &chunks {
        assert_eq!(*offset, next, "{chunks:?}");
        next += data.len() as u64;
    }
    assert_eq!(next, 14);

    // Resume from an offset in the middle of a chunk: exactly the rest.
    let rx = pc
        .subscribe_output("nsproc1", p.pid, 6, true)
        .await
        .unwrap();
    let (chunks, _, exit) = drain(rx).await;
    assert_eq!(exit, Some((3, false)));
    let rest: Vec<u8> = chunks.iter().flat_map(|c| c.2.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&rest), "o\nthree\n");

    // The finished process is still listed.
    let list = pc.list_processes("nsproc1").await.unwrap();
    let entry = list.iter().find(|e| e.pid == p.pid).unwrap();
    assert!(!entry.running);
    assert_eq!(entry.exit_code, Some(3));
    assert!(entry.ended_ms.unwrap() >= entry.started_ms);

    // Overflow: a small buffer keeps the newest bytes and reports the gap.
    let big = pc
        .spawn(
            "nsproc1",
            SpawnSpec {
                buffer_bytes: Some(64 * 1024),
                ..shell_spawn("head -c 1000000 /dev/zero; echo; echo end")
            },
        )
        .await
        .unwrap();
    let rx = pc
        .subscribe_output("nsproc1", big.pid, 0, true)
        .await
        .unwrap();
    let (_, _, exit) = drain(rx).await;
    assert_eq!(exit, Some((0, false)));
    let rx = pc
        .subscribe_output("nsproc1", big.pid, 0, true)
        .await
        .unwrap();
    let (chunks, dropped, _) = drain(rx).await;
    let kept: u64 = chunks.iter().map(|c| c.2.len() as u64).sum();
    assert!(dropped > 0, "overflow must be reported");
    assert_eq!(
        dropped + kept,
        1_000_005,
        "every byte is either kept or counted"
    );
    assert_eq!(chunks[0].1, dropped, "output resumes right after the gap");
    assert!(joined(&chunks, 1).ends_with("\nend\n"));

    // Stdin: written in order, closed on request.
    let cat = pc
        .spawn(
            "nsproc1",
            SpawnSpec {
                stdin: true,
                ..shell_spawn("tr a-z A-Z")
            },
        )
        .await
        .unwrap();
    let rx = pc
        .subscribe_output("nsproc1", cat.pid, 0, true)
        .await
        .unwrap();
    pc.write_stdin("nsproc1", cat.pid, b"hello ".to_vec(), false)
        .await
        .unwrap();
    pc.write_stdin("nsproc1", cat.pid, b"world\n".to_vec(), true)
        .await
        .unwrap();
    let (chunks, _, exit) = drain(rx).await;
    assert_eq!(joined(&chunks, 1), "HELLO WORLD\n");
    assert_eq!(exit, Some((0, false)));
    let err = pc
        .write_stdin("nsproc1", p.pid, b"x".to_vec(), false)
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::NoStdin(_)), "{err:?}");

    // Signals reach the whole group; unknown pids are reported as such.
    let sleeper = pc
        .spawn("nsproc1", shell_spawn("sleep 100 & sleep 100; echo never"))
        .await
        .unwrap();
    let rx = pc
        .subscribe_output("nsproc1", sleeper.pid, 0, true)
        .await
        .unwrap();
    pc.signal("nsproc1", sleeper.pid, libc::SIGTERM)
        .await
        .unwrap();
    let (chunks, _, exit) = drain(rx).await;
    assert_eq!(exit, Some((128 + libc::SIGTERM, false)));
    assert!(chunks.is_empty());
    let (_, out, _) = h.sh("nsproc1", "pgrep -c sleep || true").await;
    assert_eq!(out.trim(), "0", "the group's background sleep must be gone");
    assert!(matches!(
        pc.signal("nsproc1", 99999, libc::SIGTERM).await,
        Err(DriverError::ProcessNotFound(99999))
    ));
    assert!(matches!(
        pc.subscribe_output("nsproc1", 99999, 0, true).await,
        Err(DriverError::ProcessNotFound(99999))
    ));

    // A timeout kills the process group.
    let slow = pc
        .spawn(
            "nsproc1",
            SpawnSpec {
                timeout: Some(Duration::from_millis(300)),
                ..shell_spawn("echo start; sleep 30")
            },
        )
        .await
        .unwrap();
    let rx = pc
        .subscribe_output("nsproc1", slow.pid, 0, true)
        .await
        .unwrap();
    let (chunks, _, exit) = drain(rx).await;
    assert_eq!(joined(&chunks, 1), "start\n");
    assert_eq!(exit, Some((128 + libc::SIGKILL, true)));

    // A non-following read of a running process ends after the replay.
    let quiet = pc
        .spawn("nsproc1", shell_spawn("echo ready; sleep 30"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rx = pc
        .subscribe_output("nsproc1", quiet.pid, 0, false)
        .await
        .unwrap();
    let (chunks, _, exit) = drain(rx).await;
    assert_eq!(joined(&chunks, 1), "ready\n");
    assert_eq!(exit, None);
    pc.signal("nsproc1", quiet.pid, libc::SIGKILL)
        .await
        .unwrap();

    // Buffered exec still works next to all this.
    let (code, out, _) = h.sh("nsproc1", "echo still").await;
    assert_eq!((code, out.as_str()), (0, "still\n"));
    h.destroy("nsproc1").await;
}

/// Waits until the output of `pid` from `from` contains `needle`; returns
/// the whole output seen and the offset after it.
async fn wait_output(
    pc: &dyn warren_runtime::ProcessControl,
    id: &str,
    pid: i32,
    from: u64,
    needle: &str,
) -> (String, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rx = pc.subscribe_output(id, pid, from, false).await.unwrap();
        let (chunks, _, _) = drain(rx).await;
        let end = chunks.last().map_or(from, |c| c.1 + c.2.len() as u64);
        let text = joined(&chunks, 1);
        if text.contains(needle) {
            return (text, end);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {needle:?} in {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_processes_see_a_terminal_of_the_requested_size_and_follow_resizes() {
    require_root!();
    let h = Harness::new();
    h.create(&h.spec("nspty1")).await;
    let pc = h.driver.processes().unwrap();

    let p = pc
        .spawn(
            "nspty1",
            SpawnSpec {
                argv: vec!["/bin/sh".into()],
                pty: Some((91, 17)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(p.pty && p.stdin, "{p:?}");
    pc.write_stdin(
        "nspty1",
        p.pid,
        b"[ -t 0 ] && [ -t 1 ] && echo tty-$((1+1)); stty size\n".to_vec(),
        false,
    )
    .await
    .unwrap();
    let (text, end) = wait_output(pc, "nspty1", p.pid, 0, "17 91").await;
    assert!(text.contains("tty-2"), "{text:?}");

    pc.resize("nspty1", p.pid, 120, 40).await.unwrap();
    pc.write_stdin("nspty1", p.pid, b"stty size\n".to_vec(), false)
        .await
        .unwrap();
    wait_output(pc, "nspty1", p.pid, end, "40 120").await;

    // Closing stdin of a pty types end-of-file: the shell exits.
    pc.write_stdin("nspty1", p.pid, Vec::new(), true)
        .await
        .unwrap();
    let rx = pc.subscribe_output("nspty1", p.pid, 0, true).await.unwrap();
    let (_, _, exit) = drain(rx).await;
    assert_eq!(exit, Some((0, false)));

    // A process without a pty cannot be resized.
    let plain = pc.spawn("nspty1", shell_spawn("sleep 5")).await.unwrap();
    assert!(!plain.pty);
    let err = pc.resize("nspty1", plain.pid, 80, 24).await.unwrap_err();
    assert!(matches!(err, DriverError::ProcessNotRunning(_)), "{err:?}");
    h.destroy("nspty1").await;
}
