//! `pause-resume`: how long `POST …/pause` and `POST …/resume` take, API
//! round trip included, for a sandbox with a busy process (so the cgroup
//! freezer has a running task to stop). No peer row: `runc pause` drives the
//! same kernel freezer, so the number that matters is Warren's own.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use warren_client::{CreateSandboxRequest, StartProcessRequest};

use crate::report::{ScenarioResult, SystemResult, Target};
use crate::scenarios::{check_stop, ms_since, Ctx, Rounds};

/// Rounds of pause + resume.
pub fn rounds(quick: bool) -> Rounds {
    if quick {
        Rounds {
            warmup: 0,
            counted: 3,
        }
    } else {
        Rounds {
            warmup: 5,
            counted: 100,
        }
    }
}

/// Pauses and resumes one sandbox whose shell loop keeps a CPU busy.
pub async fn pause_resume(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let rounds = rounds(ctx.quick);
    let sb = ctx
        .client
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .context("warren create")?;
    let measured = measure(ctx, &sb.id, rounds).await;
    let deleted = ctx.client.delete_sandbox(&sb.id).await;
    let (pause, resume) = measured?;
    deleted.context("warren delete")?;
    let p = SystemResult::new("warren pause (cgroup freezer)", "ok".into(), pause);
    let r = SystemResult::new("warren resume", "ok".into(), resume);
    let targets = vec![
        Target::at_most(
            "warren pause p50",
            p.summary.as_ref().map(|s| s.p50_ms),
            5.0,
            "ms",
        ),
        Target::at_most(
            "warren resume p50",
            r.summary.as_ref().map(|s| s.p50_ms),
            5.0,
            "ms",
        ),
    ];
    Ok(ScenarioResult {
        scenario: "pause-resume".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: rounds.warmup,
        rounds: rounds.counted,
        systems: vec![p, r],
        targets,
        extra: json!({
            "workload": "one busy shell loop (while :; do :; done) in the sandbox",
        }),
    })
}

async fn measure(
    ctx: &Ctx,
    id: &str,
    rounds: Rounds,
) -> Result<(Vec<Option<f64>>, Vec<Option<f64>>)> {
    ctx.client
        .start_process(
            id,
            &StartProcessRequest {
                cmd: Some(vec!["sh".into(), "-c".into(), "while :; do :; done".into()]),
                ..Default::default()
            },
        )
        .await
        .context("start the busy loop")?;
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for round in 0..rounds.warmup + rounds.counted {
        check_stop()?;
        let t = Instant::now();
        ctx.client.pause_sandbox(id).await.context("warren pause")?;
        let paused = ms_since(t);
        let t = Instant::now();
        ctx.client
            .resume_sandbox(id)
            .await
            .context("warren resume")?;
        let resumed = ms_since(t);
        if round >= rounds.warmup {
            pause.push(Some(paused));
            resume.push(Some(resumed));
        }
    }
    Ok((pause, resume))
}
