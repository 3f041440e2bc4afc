//! `warm-pool`: how long `POST /v1/sandboxes {template, fromPool: true}`
//! takes when the template's warm pool has a ready sandbox (target p50 ≤
//! 2 ms), next to a normal create from the same template. API round trip
//! included. Each claim waits (untimed) until the pool is full again, so
//! the background refill never competes with the measured claim.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use warren_client::{CreateSandboxRequest, CreateTemplateRequest, TemplateBuildEvent};

use crate::report::{ScenarioResult, SystemResult, Target};
use crate::scenarios::{check_stop, ms_since, Ctx, Rounds};
use crate::stats::percentile;

/// The template the scenario builds (and removes).
const TEMPLATE: &str = "bench-warm-pool";
/// Ready sandboxes the pool keeps.
const POOL_SIZE: i64 = 4;
/// Longest wait for the pool to refill before a claim.
const REFILL_DEADLINE: Duration = Duration::from_secs(60);

/// Rounds of claim and of normal create.
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

/// Builds the template, measures claims from its pool and normal creates,
/// then removes the pool and (when this run built it) the template.
pub async fn warm_pool(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let rounds = rounds(ctx.quick);
    let recipe = CreateTemplateRequest {
        name: TEMPLATE.into(),
        setup: vec!["mkdir -p /workspace/app && echo ready > /workspace/app/state".into()],
        ..Default::default()
    };
    // A template that was already there (reused) is somebody's: keep it.
    let built = match ctx
        .client
        .create_template(&recipe)
        .await
        .context("build the template")?
        .finish()
        .await?
    {
        TemplateBuildEvent::Done { .. } => true,
        TemplateBuildEvent::Reused { .. } => false,
        other => bail!("the template build failed: {other:?}"),
    };
    let pool_created = ctx
        .client
        .create_pool(TEMPLATE, POOL_SIZE)
        .await
        .context("create the pool");
    let measured = match pool_created {
        Ok(_) => {
            let measured = measure(ctx, rounds).await;
            // Cleanup even when measuring failed.
            let removed = ctx.client.delete_pool(TEMPLATE).await;
            measured.and_then(|m| removed.context("remove the pool").map(|()| m))
        }
        Err(e) => Err(e),
    };
    let template_removed = if built {
        ctx.client.delete_template(TEMPLATE).await.map(|_| ())
    } else {
        Ok(())
    };
    let (claims, creates, fallbacks) = measured?;
    template_removed.context("remove the template")?;

    let p95 = |samples: &[Option<f64>]| {
        let values: Vec<f64> = samples.iter().flatten().copied().collect();
        percentile(&values, 95.0)
    };
    let (claim_p95, create_p95) = (p95(&claims), p95(&creates));
    let claim = SystemResult::new("warren claim from warm pool", "ok".into(), claims);
    let create = SystemResult::new("warren create from template", "ok".into(), creates);
    let claim_p50 = claim.summary.as_ref().map(|s| s.p50_ms);
    let create_p50 = create.summary.as_ref().map(|s| s.p50_ms);
    let ratio = match (create_p50, claim_p50) {
        (Some(c), Some(p)) if p > 0.0 => Some(c / p),
        _ => None,
    };
    eprintln!(
        "warren-bench: warm-pool claim p50 {:.2} ms p95 {:.2} ms; create from template p50 {:.2} ms p95 {:.2} ms; {} fallbacks",
        claim_p50.unwrap_or(f64::NAN),
        claim_p95.unwrap_or(f64::NAN),
        create_p50.unwrap_or(f64::NAN),
        create_p95.unwrap_or(f64::NAN),
        fallbacks
    );
    Ok(ScenarioResult {
        scenario: "warm-pool".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: rounds.warmup,
        rounds: rounds.counted,
        systems: vec![claim, create],
        targets: vec![Target::at_most("warren claim p50", claim_p50, 2.0, "ms")],
        extra: json!({
            "pool_size": POOL_SIZE,
            "claim_p95_ms": claim_p95,
            "create_from_template_p95_ms": create_p95,
            "create_over_claim_p50": ratio,
            "claims_that_fell_back_to_create": fallbacks,
            "workload": "template with one setup command writing a file; claim = POST /v1/sandboxes {template, fromPool: true} with a full pool",
        }),
    })
}

type Samples = Vec<Option<f64>>;

async fn measure(ctx: &Ctx, rounds: Rounds) -> Result<(Samples, Samples, usize)> {
    let client = &ctx.client;
    let claim_req = CreateSandboxRequest {
        template: Some(TEMPLATE.into()),
        from_pool: Some(true),
        ..Default::default()
    };
    let (mut claims, mut fallbacks) = (Vec::new(), 0);
    for round in 0..rounds.warmup + rounds.counted {
        check_stop()?;
        wait_full(ctx).await?;
        let members: BTreeSet<String> = client
            .list_pool_sandboxes(TEMPLATE)
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let t = Instant::now();
        let sb = client
            .create_sandbox(&claim_req)
            .await
            .context("claim from the pool")?;
        let took = ms_since(t);
        client.delete_sandbox(&sb.id).await.context("delete")?;
        if round >= rounds.warmup {
            let claimed = members.contains(&sb.id);
            if !claimed {
                fallbacks += 1;
            }
            claims.push(claimed.then_some(took));
        }
    }
    let create_req = CreateSandboxRequest {
        template: Some(TEMPLATE.into()),
        ..Default::default()
    };
    let mut creates = Vec::new();
    for round in 0..rounds.warmup + rounds.counted {
        check_stop()?;
        let t = Instant::now();
        let sb = client
            .create_sandbox(&create_req)
            .await
            .context("create from the template")?;
        let took = ms_since(t);
        client.delete_sandbox(&sb.id).await.context("delete")?;
        if round >= rounds.warmup {
            creates.push(Some(took));
        }
    }
    Ok((claims, creates, fallbacks))
}

/// Waits until the pool has all its sandboxes ready.
async fn wait_full(ctx: &Ctx) -> Result<()> {
    let started = Instant::now();
    loop {
        let pool = ctx
            .client
            .get_pool(TEMPLATE)
            .await
            .context("get the pool")?;
        if pool.ready >= pool.size {
            return Ok(());
        }
        if started.elapsed() > REFILL_DEADLINE {
            bail!(
                "the pool did not refill within {REFILL_DEADLINE:?} ({} of {} ready)",
                pool.ready,
                pool.size
            );
        }
        check_stop()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
