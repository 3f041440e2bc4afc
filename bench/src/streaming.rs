//! `streaming`: stdout throughput of `head -c N /dev/zero` through the API
//! (start a process, read its SSE output until the exit event, count the
//! decoded bytes) next to a local pipe on the host.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use warren_client::{Client, CreateSandboxRequest, OutputEvent, StartProcessRequest};

use crate::report::{ScenarioResult, SystemResult, Target};
use crate::scenarios::{check_stop, ms_since, Ctx};
use crate::stats;

/// Bytes streamed per round: 1 GiB, or 64 MiB with `--quick`.
pub fn size(quick: bool) -> u64 {
    if quick {
        64 << 20
    } else {
        1 << 30
    }
}

/// Counted rounds (no warm-up: each round moves a lot of data).
pub fn rounds(quick: bool) -> usize {
    if quick {
        1
    } else {
        3
    }
}

/// MB/s (10^6 bytes per second) for `bytes` moved in `ms`.
pub fn mb_per_s(bytes: u64, ms: f64) -> f64 {
    bytes as f64 / 1e6 / (ms / 1000.0)
}

/// One Warren round: what arrived, what the daemon reported dropped, and
/// how many times the stream had to be resumed.
struct Streamed {
    ms: f64,
    delivered: u64,
    dropped: u64,
    resumes: u32,
}

async fn warren_round(client: &Client, id: &str, bytes: u64) -> Result<Streamed> {
    let request = StartProcessRequest {
        cmd: Some(vec![
            "head".into(),
            "-c".into(),
            bytes.to_string(),
            "/dev/zero".into(),
        ]),
        ..Default::default()
    };
    let t = Instant::now();
    let pid = client
        .start_process(id, &request)
        .await
        .context("warren start process")?
        .pid;
    let mut from = None;
    let (mut delivered, mut dropped, mut resumes) = (0u64, 0u64, 0u32);
    loop {
        let mut stream = client
            .process_output(id, pid, from, true)
            .await
            .context("warren process output")?;
        while let Some(event) = stream.next().await.context("reading the output stream")? {
            from = Some(event.id());
            match event {
                OutputEvent::Output { data, .. } => delivered += data.len() as u64,
                OutputEvent::Dropped { bytes, .. } => dropped += bytes,
                OutputEvent::Exit { exit_code, .. } => {
                    let ms = ms_since(t);
                    if exit_code != 0 {
                        bail!("head exited {exit_code}");
                    }
                    return Ok(Streamed {
                        ms,
                        delivered,
                        dropped,
                        resumes,
                    });
                }
            }
        }
        // Cut off as a slow reader: resume where we stopped, as clients do.
        resumes += 1;
        check_stop()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `head -c N /dev/zero | cat > /dev/null` on the host, in ms.
fn pipe_round(bytes: u64) -> Result<f64> {
    let t = Instant::now();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {bytes} /dev/zero | cat > /dev/null"))
        .status()
        .context("spawn sh")?;
    let ms = ms_since(t);
    if !st.success() {
        bail!("local pipe exited with {st}");
    }
    Ok(ms)
}

pub async fn streaming(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let bytes = size(ctx.quick);
    let n = rounds(ctx.quick);
    let sb = ctx
        .client
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .context("warren create")?;
    let mut warren: Vec<Streamed> = Vec::new();
    let mut pipe: Vec<Option<f64>> = Vec::new();
    let outcome = async {
        for round in 0..n {
            check_stop()?;
            // Alternate who goes first.
            for k in 0..2 {
                if (round + k) % 2 == 0 {
                    warren.push(warren_round(&ctx.client, &sb.id, bytes).await?);
                } else {
                    pipe.push(Some(pipe_round(bytes)?));
                }
            }
            if !ctx.quick {
                eprintln!("  streaming: {}/{n} rounds", round + 1);
            }
        }
        anyhow::Ok(())
    }
    .await;
    let deleted = ctx.client.delete_sandbox(&sb.id).await;
    outcome?;
    deleted.context("warren delete")?;

    // Throughput per round counts only delivered bytes.
    let w_ms: Vec<Option<f64>> = warren.iter().map(|r| Some(r.ms)).collect();
    let w_mbps: Vec<f64> = warren.iter().map(|r| mb_per_s(r.delivered, r.ms)).collect();
    let p_mbps: Vec<f64> = pipe
        .iter()
        .flatten()
        .map(|ms| mb_per_s(bytes, *ms))
        .collect();
    let delivered: u64 = warren.iter().map(|r| r.delivered).sum();
    let dropped: u64 = warren.iter().map(|r| r.dropped).sum();
    let resumes: u32 = warren.iter().map(|r| r.resumes).sum();
    let w_med = stats::median(&w_mbps);
    let p_med = stats::median(&p_mbps);
    let mut w = SystemResult::new(
        &format!("warren SSE output of head -c {}", human(bytes)),
        "ok".into(),
        w_ms.clone(),
    );
    w.note = Some(format!(
        "{} MB/s; dropped {} B; resumed {resumes}x",
        w_med.map_or("-".into(), |v| format!("{v:.0}")),
        dropped
    ));
    let mut p = SystemResult::new("local pipe (head | cat)", "ok".into(), pipe.clone());
    p.ratio_vs_warren = stats::pairwise_ratio(&pipe, &w_ms);
    p.note = Some(format!(
        "{} MB/s",
        p_med.map_or("-".into(), |v| format!("{v:.0}"))
    ));
    Ok(ScenarioResult {
        scenario: "streaming".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: 0,
        rounds: n,
        systems: vec![w, p],
        targets: vec![
            Target::at_least(
                "warren stdout streaming throughput (median round, delivered bytes)",
                w_med,
                200.0,
                " MB/s",
            ),
            Target::at_most(
                "bytes dropped by the output buffer",
                Some(dropped as f64),
                0.0,
                "B",
            ),
        ],
        extra: json!({
            "bytes_per_round": bytes,
            "warren_mb_per_s": w_mbps,
            "pipe_mb_per_s": p_mbps,
            "warren_delivered_bytes": delivered,
            "warren_dropped_bytes": dropped,
            "warren_stream_resumes": resumes,
            "commands": {
                "warren": "POST /processes {cmd: [head, -c, N, /dev/zero]}, then GET …/output (SSE) until the exit event, resuming with Last-Event-ID if cut off; timed from the POST",
                "pipe": "sh -c 'head -c N /dev/zero | cat > /dev/null'",
            },
        }),
    })
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}G", bytes >> 30)
    } else {
        format!("{}M", bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(human(size(false)), "1G");
        assert_eq!(human(size(true)), "64M");
        assert!((mb_per_s(200_000_000, 1000.0) - 200.0).abs() < 1e-9);
    }
}
