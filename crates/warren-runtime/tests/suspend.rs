#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Suspend to disk with the namespace driver: files survive, processes and
//! cgroups do not, resume starts the sandbox again, destroy cleans up.

mod support;

use std::path::Path;

use support::{require_root, Harness};
use warren_runtime::Driver;

fn has_mkfs_ext4() -> bool {
    std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok()
}

/// Whether `pid` is still the process that started at `start_time`.
fn same_process_alive(pid: i32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    // Field 22 overall is the 20th after the command name.
    after_comm
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse::<u64>().ok())
        == Some(start_time)
}

fn mountinfo_mentions(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&path.display().to_string())
}

async fn suspend_resume_round_trip(h: &Harness, id: &str, disk_mb: Option<u64>) {
    let mut spec = h.spec(id);
    spec.disk_mb = disk_mb;
    let info = h.create(&spec).await;
    let (code, _, err) = h
        .sh(
            id,
            "mkdir -p /workspace && echo kept > /workspace/note && \
             (setsid sleep 1000 </dev/null >/dev/null 2>&1 &)",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = h
        .sh(id, "cat /proc/[0-9]*/comm 2>/dev/null | grep -cx sleep")
        .await;
    assert_eq!(out.trim(), "1", "one sleep runs before suspend: {out}");
    let suspending = h.driver.suspending().expect("namespace driver can suspend");
    assert!(!suspending.preserves_memory());

    suspending.suspend(id, &info).await.unwrap();
    assert!(
        !same_process_alive(info.pid, info.start_time),
        "the sandbox init must be gone while suspended"
    );
    for dir in h.driver.cgroup_dirs(id) {
        assert!(
            !dir.exists(),
            "cgroup {} left while suspended",
            dir.display()
        );
    }
    let sandbox_dir = h.data.path().join("sandboxes").join(id);
    assert!(sandbox_dir.exists(), "the sandbox's files must stay");
    if disk_mb.is_some() {
        assert!(sandbox_dir.join("disk.img").is_file());
        assert!(
            !mountinfo_mentions(&sandbox_dir.join("disk")),
            "disk still mounted"
        );
    } else {
        assert!(sandbox_dir.join("upper").is_dir());
    }
    // Commands fail while suspended: the agent is gone.
    assert!(h
        .driver
        .exec(
            id,
            warren_runtime::ExecSpec {
                argv: vec!["true".into()],
                ..Default::default()
            }
        )
        .await
        .is_err());

    let resumed = suspending.resume_suspended(&spec).await.unwrap();
    assert_ne!(
        (resumed.pid, resumed.start_time),
        (info.pid, info.start_time),
        "resume starts a new init"
    );
    let (code, out, err) = h.sh(id, "cat /workspace/note").await;
    assert_eq!((code, out.as_str()), (0, "kept\n"), "{err}");
    let (_, out, _) = h
        .sh(id, "cat /proc/[0-9]*/comm 2>/dev/null | grep -cx sleep")
        .await;
    assert_eq!(out.trim(), "0", "processes do not survive suspend: {out}");
    for dir in h.driver.cgroup_dirs(id) {
        assert!(dir.exists(), "resume recreates cgroup {}", dir.display());
    }

    // Suspend again, then destroy the suspended sandbox: nothing is left.
    suspending.suspend(id, &resumed).await.unwrap();
    h.driver.destroy(id, None).await.unwrap();
    assert!(
        !sandbox_dir.exists(),
        "destroy of a suspended sandbox removes its files"
    );
    for dir in h.driver.cgroup_dirs(id) {
        assert!(!dir.exists());
    }
    h.destroy(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_sandbox_keeps_files_and_loses_processes() {
    require_root!();
    let h = Harness::new();
    suspend_resume_round_trip(&h, "nssuspend1", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_sandbox_with_disk_keeps_its_disk_image() {
    require_root!();
    if !has_mkfs_ext4() {
        eprintln!("skipped: mkfs.ext4 is not installed");
        return;
    }
    let h = Harness::new();
    suspend_resume_round_trip(&h, "nssuspend2", Some(64)).await;
}
