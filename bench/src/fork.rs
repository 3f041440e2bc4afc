//! `fork` and `snapshot`: how long a fork (count 1) of a nearly empty
//! sandbox and of one holding 100 MiB of changes and a create from a
//! snapshot take, API round trip included, and how long a snapshot of a
//! sandbox with 100 MiB of changes takes next to `cp -a` of the same files
//! on the same file system (the copy a snapshot has to make).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use warren_client::{CreateSandboxRequest, CreateSnapshotRequest, ExecRequest, ForkRequest};

use crate::report::{ScenarioResult, SystemResult, Target};
use crate::scenarios::{check_stop, ms_since, Ctx, Rounds};
use crate::stats;

/// Bytes of changes in the big sandbox.
const BIG_MIB: u64 = 100;

/// Rounds of each measured operation.
pub fn rounds(quick: bool) -> Rounds {
    if quick {
        Rounds {
            warmup: 0,
            counted: 3,
        }
    } else {
        Rounds {
            warmup: 3,
            counted: 50,
        }
    }
}

/// Rounds of the 100 MiB snapshot and its `cp -a` peer.
pub fn snapshot_rounds(quick: bool) -> Rounds {
    if quick {
        Rounds {
            warmup: 0,
            counted: 1,
        }
    } else {
        Rounds {
            warmup: 1,
            counted: 7,
        }
    }
}

async fn sh(ctx: &Ctx, id: &str, script: &str) -> Result<()> {
    let out = ctx
        .client
        .exec(
            id,
            &ExecRequest {
                cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("exec {script}"))?;
    if out.exit_code != 0 {
        bail!("{script} exited {}: {}", out.exit_code, out.stderr);
    }
    Ok(())
}

/// A sandbox holding `mib` MiB of new files: one large file and 1 MiB files.
async fn sandbox_with_changes(ctx: &Ctx, mib: u64) -> Result<String> {
    let sb = ctx
        .client
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .context("warren create")?;
    let half = mib / 2;
    let script = format!(
        "mkdir -p /workspace/many && head -c {}M /dev/urandom > /workspace/large && \
         i=0; while [ $i -lt {} ]; do head -c 1M /dev/urandom > /workspace/many/f$i; i=$((i+1)); done; sync",
        half,
        mib - half
    );
    if let Err(e) = sh(ctx, &sb.id, &script).await {
        let _ = ctx.client.delete_sandbox(&sb.id).await;
        return Err(e);
    }
    Ok(sb.id)
}

fn p95(samples: &[Option<f64>]) -> Option<f64> {
    let present: Vec<f64> = samples.iter().flatten().copied().collect();
    stats::percentile(&present, 95.0)
}

/// `fork`: fork latency (count 1) of a small sandbox and of one with
/// 100 MiB of changes, and create-from-snapshot latency for a small and a
/// 100 MiB snapshot.
pub async fn fork(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let rounds = rounds(ctx.quick);
    let small = ctx
        .client
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .context("warren create")?;
    let big = match sandbox_with_changes(ctx, BIG_MIB).await {
        Ok(id) => id,
        Err(e) => {
            let _ = ctx.client.delete_sandbox(&small.id).await;
            return Err(e);
        }
    };
    let measured = measure_fork(ctx, &small.id, &big, rounds).await;
    let _ = ctx.client.delete_sandbox(&small.id).await;
    let _ = ctx.client.delete_sandbox(&big).await;
    let (forks, big_forks, from_small, from_big, snaps) = measured?;
    for snap in snaps {
        let _ = ctx.client.delete_snapshot(&snap).await;
    }
    let fork_p95 = p95(&forks);
    let mut f = SystemResult::new("warren fork (count 1, small sandbox)", "ok".into(), forks);
    f.note = fork_p95.map(|p| format!("p95 {p:.2} ms"));
    let big_fork_p95 = p95(&big_forks);
    let mut bf = SystemResult::new(
        "warren fork (count 1, 100 MiB of changes)",
        "ok".into(),
        big_forks,
    );
    bf.note = Some(format!(
        "{}; the fork copies the parent's changes while it is frozen, so this grows with them",
        big_fork_p95.map_or_else(|| "no p95".to_owned(), |p| format!("p95 {p:.2} ms"))
    ));
    let s = SystemResult::new(
        "warren create from snapshot (small)",
        "ok".into(),
        from_small,
    );
    let b = SystemResult::new(
        "warren create from snapshot (100 MiB)",
        "ok".into(),
        from_big,
    );
    let targets = vec![
        Target::at_most(
            "warren fork p50",
            f.summary.as_ref().map(|s| s.p50_ms),
            10.0,
            "ms",
        ),
        // The target holds whatever the snapshot's size: reported
        // for the big parent too, missed or not.
        Target::at_most(
            "warren fork p50 (parent with 100 MiB of changes)",
            bf.summary.as_ref().map(|s| s.p50_ms),
            10.0,
            "ms",
        ),
        Target::at_most(
            "create from 100 MiB snapshot p50",
            b.summary.as_ref().map(|s| s.p50_ms),
            10.0,
            "ms",
        ),
    ];
    let size_ratio = match (&b.summary, &s.summary) {
        (Some(b), Some(s)) if s.p50_ms > 0.0 => Some(b.p50_ms / s.p50_ms),
        _ => None,
    };
    Ok(ScenarioResult {
        scenario: "fork".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: rounds.warmup,
        rounds: rounds.counted,
        systems: vec![f, bf, s, b],
        targets,
        extra: json!({
            "fork_p95_ms": fork_p95,
            "big_fork_p95_ms": big_fork_p95,
            "big_fork_rounds": big_rounds(ctx.quick).counted,
            "big_snapshot_mib": BIG_MIB,
            "create_100mib_over_small_p50": size_ratio,
            "workload": "fork: capture of a nearly empty sandbox + create of one child; \
                         create from snapshot: POST /v1/sandboxes {snapshot}; each child is deleted after its round",
        }),
    })
}

type ForkSamples = (
    Vec<Option<f64>>,
    Vec<Option<f64>>,
    Vec<Option<f64>>,
    Vec<Option<f64>>,
    Vec<String>,
);

/// Rounds of the fork of the 100 MiB parent (each copies its changes).
fn big_rounds(quick: bool) -> Rounds {
    snapshot_rounds(quick)
}

/// Forks `parent` (count 1) `rounds` times; the latency of each counted
/// round. Each child (and with it the fork snapshot) is deleted after its
/// round.
async fn time_forks(ctx: &Ctx, parent: &str, rounds: Rounds) -> Result<Vec<Option<f64>>> {
    let mut forks = Vec::new();
    for round in 0..rounds.warmup + rounds.counted {
        check_stop()?;
        let t = Instant::now();
        let forked = ctx
            .client
            .fork_sandbox(
                parent,
                &ForkRequest {
                    count: Some(1),
                    ..Default::default()
                },
            )
            .await
            .context("warren fork")?;
        let ms = ms_since(t);
        for child in &forked.sandboxes {
            ctx.client
                .delete_sandbox(&child.id)
                .await
                .context("delete fork")?;
        }
        if round >= rounds.warmup {
            forks.push(Some(ms));
        }
    }
    Ok(forks)
}

async fn measure_fork(ctx: &Ctx, small: &str, big: &str, rounds: Rounds) -> Result<ForkSamples> {
    let (mut from_small, mut from_big) = (Vec::new(), Vec::new());
    let forks = time_forks(ctx, small, rounds).await?;
    let big_forks = time_forks(ctx, big, big_rounds(ctx.quick)).await?;
    let small_snap = ctx
        .client
        .create_snapshot(small, &CreateSnapshotRequest::default())
        .await
        .context("snapshot the small sandbox")?;
    let big_snap = match ctx
        .client
        .create_snapshot(big, &CreateSnapshotRequest::default())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = ctx.client.delete_snapshot(&small_snap.id).await;
            return Err(e).context("snapshot the 100 MiB sandbox");
        }
    };
    let snaps = vec![small_snap.id.clone(), big_snap.id.clone()];
    // Interleaved, so drift affects both sizes alike.
    for round in 0..rounds.warmup + rounds.counted {
        check_stop()?;
        for (snap, out) in [
            (&small_snap.id, &mut from_small),
            (&big_snap.id, &mut from_big),
        ] {
            let t = Instant::now();
            let sb = ctx
                .client
                .create_sandbox(&CreateSandboxRequest {
                    snapshot: Some(snap.clone()),
                    ..Default::default()
                })
                .await
                .context("create from snapshot")?;
            let ms = ms_since(t);
            ctx.client
                .delete_sandbox(&sb.id)
                .await
                .context("delete sandbox")?;
            if round >= rounds.warmup {
                out.push(Some(ms));
            }
        }
    }
    Ok((forks, big_forks, from_small, from_big, snaps))
}

/// `snapshot`: snapshot of a sandbox with 100 MiB of changes next to
/// `cp -a` of its upper directory on the same file system.
pub async fn snapshot(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let rounds = snapshot_rounds(ctx.quick);
    let id = sandbox_with_changes(ctx, BIG_MIB).await?;
    let measured = measure_snapshot(ctx, &id, rounds).await;
    let _ = ctx.client.delete_sandbox(&id).await;
    let (snaps, copies) = measured?;
    let ratios: Vec<f64> = snaps
        .iter()
        .zip(&copies)
        .filter_map(|(s, c)| match (s, c) {
            (Some(s), Some(c)) if *c > 0.0 => Some(s / c),
            _ => None,
        })
        .collect();
    let ratio = stats::percentile(&ratios, 50.0);
    let s = SystemResult::new("warren snapshot (100 MiB of changes)", "ok".into(), snaps);
    let mut c = SystemResult::new("cp -a of the same files", "ok".into(), copies);
    c.ratio_vs_warren = ratio.map(|r| 1.0 / r);
    let targets = vec![Target::at_most(
        "snapshot time / cp -a time (median of rounds)",
        ratio,
        1.5,
        "x",
    )];
    Ok(ScenarioResult {
        scenario: "snapshot".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: rounds.warmup,
        rounds: rounds.counted,
        systems: vec![s, c],
        targets,
        extra: json!({
            "changes_mib": BIG_MIB,
            "layout": "one 50 MiB file and 50 files of 1 MiB",
            "peer": "cp -a of the sandbox's overlay upper directory to the same file system, page cache warm like Warren's",
        }),
    })
}

async fn measure_snapshot(
    ctx: &Ctx,
    id: &str,
    rounds: Rounds,
) -> Result<(Vec<Option<f64>>, Vec<Option<f64>>)> {
    // Sandboxes with their own disk keep the upper directory on it.
    let dir = ctx.tmp.join("data/sandboxes").join(id);
    let Some(upper) = [dir.join("disk/upper"), dir.join("upper")]
        .into_iter()
        .find(|p| p.is_dir())
    else {
        bail!("no upper directory under {}", dir.display());
    };
    let (mut snaps, mut copies) = (Vec::new(), Vec::new());
    for round in 0..rounds.warmup + rounds.counted {
        check_stop()?;
        let t = Instant::now();
        let snap = ctx
            .client
            .create_snapshot(id, &CreateSnapshotRequest::default())
            .await
            .context("warren snapshot")?;
        let snap_ms = ms_since(t);
        ctx.client
            .delete_snapshot(&snap.id)
            .await
            .context("delete snapshot")?;
        let dest = ctx.tmp.join(format!("cp-copy-{round}"));
        let t = Instant::now();
        let copied = cp_a(&upper, &dest).await;
        let cp_ms = ms_since(t);
        let _ = tokio::fs::remove_dir_all(&dest).await;
        copied?;
        if round >= rounds.warmup {
            snaps.push(Some(snap_ms));
            copies.push(Some(cp_ms));
        }
    }
    Ok((snaps, copies))
}

async fn cp_a(src: &Path, dest: &Path) -> Result<()> {
    let status = tokio::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dest)
        .status()
        .await
        .context("run cp -a")?;
    if !status.success() {
        bail!("cp -a {} {} failed", src.display(), dest.display());
    }
    Ok(())
}
