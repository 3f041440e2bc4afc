//! `image`: a sandbox from a freshly pulled image. A small busybox image is
//! pushed to a local `docker-registry`; each round starts a daemon on a
//! fresh data dir, times `POST /v1/images/pull`, then create + first exec of
//! `true` from that image (first time), and again (second time), next to a
//! `host` sandbox's create + exec on the same daemon.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use warren_client::{Client, CreateSandboxRequest, ExecRequest, PullImageRequest};

use crate::env::BenchEnv;
use crate::oci_registry::{self, LocalRegistry};
use crate::report::{ScenarioResult, SystemResult};
use crate::scenarios::{check_stop, ms_since, Ctx};
use crate::stats;

/// Counted rounds (each on a fresh daemon; no warm-up: "first" is the point).
pub fn rounds(quick: bool) -> usize {
    if quick {
        1
    } else {
        3
    }
}

/// One create + first exec of `/bin/true`, delete untimed: (create, exec) ms.
async fn create_exec(client: &Client, image: Option<&str>) -> Result<(f64, f64)> {
    let request = CreateSandboxRequest {
        image: image.map(str::to_string),
        ..Default::default()
    };
    let t = Instant::now();
    let sb = client
        .create_sandbox(&request)
        .await
        .with_context(|| format!("warren create from {}", image.unwrap_or("host")))?;
    let create = ms_since(t);
    let t = Instant::now();
    let r = client
        .exec(
            &sb.id,
            &ExecRequest {
                cmd: Some(vec!["/bin/true".into()]),
                ..Default::default()
            },
        )
        .await;
    let exec = ms_since(t);
    let deleted = client.delete_sandbox(&sb.id).await;
    let r = r.context("warren exec")?;
    if r.exit_code != 0 {
        bail!(
            "exec of /bin/true exited {}: {}",
            r.exit_code,
            r.stderr.trim()
        );
    }
    deleted.context("warren delete")?;
    Ok((create, exec))
}

/// One round's times, ms.
struct ImageRound {
    pull: f64,
    first: (f64, f64),
    second: (f64, f64),
    host: (f64, f64),
}

async fn round(ctx: &Ctx, n: usize, reference: &str) -> Result<ImageRound> {
    // Declared before the client work so it is dropped (daemon stopped,
    // data dir removed) even when a step fails.
    let mut env = BenchEnv::tagged(&format!("image{n}"))?;
    let client = env.start_daemon(&ctx.warren_bin).await?;
    let outcome = async {
        let t = Instant::now();
        let pulled = client
            .pull_image(&PullImageRequest {
                reference: reference.to_string(),
                insecure: Some(true),
                username: None,
                password: None,
            })
            .await
            .context("warren image pull")?;
        let pull = ms_since(t);
        let first = create_exec(&client, Some(&pulled.name)).await?;
        let second = create_exec(&client, Some(&pulled.name)).await?;
        let host = create_exec(&client, None).await?;
        anyhow::Ok(ImageRound {
            pull,
            first,
            second,
            host,
        })
    }
    .await;
    outcome.with_context(|| format!("daemon log tail:\n{}", env.daemon_log_tail()))
}

pub async fn image(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let n = rounds(ctx.quick);
    if let Some(reason) = oci_registry::unavailable_reason() {
        let mut r = ScenarioResult::unavailable("image", ctx.quick);
        r.status = reason;
        return Ok(r);
    }
    let dir = ctx.tmp.join("image-scenario");
    let layout = dir.join("oci");
    let layer_bytes = oci_registry::write_busybox_layout(&layout)?;
    let registry = LocalRegistry::start(&dir.join("registry"))?;
    let reference = format!("{}/bench/busybox:latest", registry.addr());
    oci_registry::push(&layout, &reference)?;

    let mut rounds_done = Vec::new();
    for i in 0..n {
        check_stop()?;
        rounds_done.push(round(ctx, i, &reference).await?);
        if !ctx.quick {
            eprintln!("  image: {}/{n} rounds", i + 1);
        }
    }
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);

    let col = |f: &dyn Fn(&ImageRound) -> f64| -> Vec<Option<f64>> {
        rounds_done.iter().map(|r| Some(f(r))).collect()
    };
    let pull = col(&|r| r.pull);
    let first = col(&|r| r.first.0 + r.first.1);
    let second = col(&|r| r.second.0 + r.second.1);
    let host = col(&|r| r.host.0 + r.host.1);
    let pull_first = col(&|r| r.pull + r.first.0 + r.first.1);
    let mut rows = vec![
        SystemResult::new("warren pull + first create+exec", "ok".into(), pull_first),
        SystemResult::new("  pull (POST /v1/images/pull)", "ok".into(), pull.clone()),
        SystemResult::new("  first create+exec from it", "ok".into(), first.clone()),
        SystemResult::new("second create+exec from it", "ok".into(), second.clone()),
        SystemResult::new("host image create+exec", "ok".into(), host.clone()),
    ];
    let create_note = |v: &dyn Fn(&ImageRound) -> (f64, f64)| {
        let c: Vec<f64> = rounds_done.iter().map(|r| v(r).0).collect();
        let e: Vec<f64> = rounds_done.iter().map(|r| v(r).1).collect();
        format!(
            "create {:.1} + exec {:.1} ms (p50)",
            stats::median(&c).unwrap_or(f64::NAN),
            stats::median(&e).unwrap_or(f64::NAN)
        )
    };
    rows[2].note = Some(create_note(&|r| r.first));
    rows[3].note = Some(format!(
        "{}; first/second {}",
        create_note(&|r| r.second),
        stats::pairwise_ratio(&first, &second).map_or("-".into(), |v| format!("{v:.2}x"))
    ));
    rows[4].note = Some(format!(
        "{}; second/host {}",
        create_note(&|r| r.host),
        stats::pairwise_ratio(&second, &host).map_or("-".into(), |v| format!("{v:.2}x"))
    ));
    rows[1].note = Some(format!(
        "one {} KiB layer, uncompressed",
        layer_bytes / 1024
    ));
    Ok(ScenarioResult {
        scenario: "image".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: 0,
        rounds: n,
        systems: rows,
        targets: vec![],
        extra: json!({
            "layer_bytes": layer_bytes,
            "commands": {
                "image": "busybox-static's /bin/busybox + applet symlinks, one uncompressed OCI layer, pushed with skopeo to docker-registry on 127.0.0.1",
                "pull": "POST /v1/images/pull {reference, insecure: true} on a daemon with a fresh data dir; timed until the answer",
                "first": "POST /v1/sandboxes {image} + exec /bin/true (delete untimed), right after the pull",
                "second": "the same again on the same daemon",
                "host": "the same with the host image, same daemon",
            },
        }),
    })
}
