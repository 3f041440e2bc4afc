//! `gvisor-suspend`: Warren's suspend and resume of a gVisor sandbox (API
//! round trip; memory checkpointed to disk, then restored) next to
//! `runsc checkpoint` and `runsc restore` run by hand on a plain bundle with
//! the same kind of workload. Warren's rows include what the peer does not:
//! closing and re-opening the agent's host socket around the checkpoint,
//! unmounting/mounting the overlay root, deleting the stopped container.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use warren_client::{CreateSandboxRequest, StartProcessRequest};

use crate::report::{ScenarioResult, SystemResult};
use crate::scenarios::{check_stop, ms_since, Ctx, Rounds};
use crate::stats;

/// Two series of round times (ms): (save, restore).
type Samples = (Vec<Option<f64>>, Vec<Option<f64>>);

/// Rounds of suspend + resume.
pub fn rounds(quick: bool) -> Rounds {
    if quick {
        Rounds {
            warmup: 0,
            counted: 3,
        }
    } else {
        Rounds {
            warmup: 2,
            counted: 20,
        }
    }
}

const WORKLOAD: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c; sleep 0.05; done";

/// Runs the scenario.
pub async fn gvisor_suspend(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let rounds = rounds(ctx.quick);
    let runsc_ok = std::process::Command::new("runsc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runsc_ok {
        let mut r = ScenarioResult::unavailable("gvisor-suspend", ctx.quick);
        r.status = "missing: runsc".into();
        return Ok(r);
    }
    let (suspend, resume) = warren_rounds(ctx, rounds).await?;
    let peer_dir = ctx.tmp.join("gvisor-peer");
    let peer = runsc_rounds(&peer_dir, rounds);
    let _ = std::fs::remove_dir_all(&peer_dir);
    let mut systems = vec![
        SystemResult::new("warren suspend (gvisor)", "ok".into(), suspend.clone()),
        SystemResult::new("warren resume (gvisor)", "ok".into(), resume.clone()),
    ];
    match peer {
        Ok((checkpoint, restore)) => {
            let mut c = SystemResult::new(
                "runsc checkpoint (by hand)",
                "ok".into(),
                checkpoint.clone(),
            );
            c.ratio_vs_warren = stats::pairwise_ratio(&checkpoint, &suspend);
            let mut r = SystemResult::new("runsc restore (by hand)", "ok".into(), restore.clone());
            r.ratio_vs_warren = stats::pairwise_ratio(&restore, &resume);
            systems.push(c);
            systems.push(r);
        }
        Err(e) => {
            systems.push(SystemResult::new(
                "runsc checkpoint/restore (by hand)",
                format!("failed: {e:#}"),
                Vec::new(),
            ));
        }
    }
    Ok(ScenarioResult {
        scenario: "gvisor-suspend".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: rounds.warmup,
        rounds: rounds.counted,
        systems,
        targets: Vec::new(),
        extra: json!({
            "workload": WORKLOAD,
            "note": "no target in the issue; the peer rows are the floor runsc itself sets",
        }),
    })
}

async fn warren_rounds(ctx: &Ctx, rounds: Rounds) -> Result<Samples> {
    let sb = ctx
        .client
        .create_sandbox(&CreateSandboxRequest {
            driver: Some("gvisor".into()),
            ..Default::default()
        })
        .await
        .context("warren create --driver gvisor")?;
    let measured = async {
        ctx.client
            .start_process(
                &sb.id,
                &StartProcessRequest {
                    cmd: Some(vec!["sh".into(), "-c".into(), WORKLOAD.into()]),
                    ..Default::default()
                },
            )
            .await
            .context("start the workload")?;
        let (mut suspend, mut resume) = (Vec::new(), Vec::new());
        for round in 0..rounds.warmup + rounds.counted {
            check_stop()?;
            let t = Instant::now();
            let s = ctx
                .client
                .suspend_sandbox(&sb.id)
                .await
                .context("warren suspend")?;
            let suspended = ms_since(t);
            if s.memory_preserved != Some(true) {
                bail!("suspend of a gvisor sandbox did not preserve memory");
            }
            let t = Instant::now();
            ctx.client
                .resume_sandbox(&sb.id)
                .await
                .context("warren resume")?;
            let resumed = ms_since(t);
            if round >= rounds.warmup {
                suspend.push(Some(suspended));
                resume.push(Some(resumed));
            }
        }
        anyhow::Ok((suspend, resume))
    }
    .await;
    let deleted = ctx.client.delete_sandbox(&sb.id).await;
    let measured = measured?;
    deleted.context("warren delete")?;
    Ok(measured)
}

fn runsc(root: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("runsc")
        .arg("--root")
        .arg(root)
        .args(["--network=none"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("runsc")?;
    if !out.status.success() {
        bail!(
            "runsc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Starts `runsc` leaving the sandbox in the background (its stdio is a log
/// file, not our pipes).
fn runsc_detached(root: &Path, log: &Path, args: &[&str]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log)?;
    let status = std::process::Command::new("runsc")
        .arg("--root")
        .arg(root)
        .args(["--network=none"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .status()
        .context("runsc")?;
    if !status.success() {
        bail!(
            "runsc {}: {}",
            args.join(" "),
            std::fs::read_to_string(log).unwrap_or_default().trim()
        );
    }
    Ok(())
}

/// A plain bundle (host /usr, /etc read-only; the same shell workload) and
/// rounds of `runsc checkpoint` + `runsc restore`.
fn runsc_rounds(dir: &Path, rounds: Rounds) -> Result<Samples> {
    let rootfs = dir.join("rootfs");
    for d in ["usr", "etc", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        if Path::new("/").join(link).is_symlink() {
            let _ = std::os::unix::fs::symlink(target, rootfs.join(link));
        } else {
            std::fs::create_dir_all(rootfs.join(link))?;
        }
    }
    let mut mounts = vec![json!({"destination": "/proc", "type": "proc", "source": "proc"})];
    for d in ["usr", "etc", "bin", "lib", "lib64", "sbin"] {
        let host = Path::new("/").join(d);
        if host.is_dir() && !host.is_symlink() {
            mounts.push(json!({"destination": format!("/{d}"), "type": "bind",
                               "source": host, "options": ["rbind", "ro"]}));
        }
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
                    "args": ["/bin/sh", "-c", WORKLOAD],
                    "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
        "root": {"path": rootfs, "readonly": false},
        "hostname": "peer",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                 {"type": "mount"}, {"type": "network"}]},
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    let root = dir.join("state");
    std::fs::create_dir_all(&root)?;
    let (bundle, image, log) = (
        dir.to_string_lossy().into_owned(),
        dir.join("image").to_string_lossy().into_owned(),
        dir.join("runsc.log"),
    );
    let id = format!("warren-bench-{}", std::process::id());
    runsc_detached(&root, &log, &["run", "--detach", "--bundle", &bundle, &id])?;
    let result = (|| {
        let (mut checkpoint, mut restore) = (Vec::new(), Vec::new());
        for round in 0..rounds.warmup + rounds.counted {
            check_stop()?;
            let _ = std::fs::remove_dir_all(&image);
            std::fs::create_dir_all(&image)?;
            let t = Instant::now();
            runsc(&root, &["checkpoint", "--image-path", &image, &id])?;
            let checkpointed = ms_since(t);
            runsc(&root, &["delete", "--force", &id])?;
            let t = Instant::now();
            runsc_detached(
                &root,
                &log,
                &[
                    "restore",
                    "--detach",
                    "--image-path",
                    &image,
                    "--bundle",
                    &bundle,
                    &id,
                ],
            )?;
            let restored = ms_since(t);
            if round >= rounds.warmup {
                checkpoint.push(Some(checkpointed));
                restore.push(Some(restored));
            }
        }
        anyhow::Ok((checkpoint, restore))
    })();
    let _ = runsc(&root, &["delete", "--force", &id]);
    result
}
