//! `files`: upload and download of one large file through the file API
//! (`PUT`/`GET /v1/sandboxes/{id}/files?path=…`, streamed by warren-client
//! over the unix socket), next to a plain `cp` of the same file on the same
//! disk; and the daemon's RSS growth while a bigger file goes up and down
//! (the budget: memory stays flat, ≤ 64 MiB, whatever the size).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use warren_client::{Client, CreateSandboxRequest, UploadOptions};

use crate::report::{ScenarioResult, SystemResult, Target};
use crate::scenarios::{check_stop, ms_since, Ctx, Rounds};
use crate::stats;
use crate::streaming::mb_per_s;

/// The daemon's RSS budget during a transfer, from the issue.
const RSS_BUDGET_MIB: f64 = 64.0;
/// How often the daemon's VmRSS is sampled during the big transfer.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Where the file lands inside the sandbox.
const SANDBOX_PATH: &str = "/workspace/bench.bin";

/// Size of the timed file: 256 MiB, or 32 MiB with `--quick`.
pub fn size(quick: bool) -> u64 {
    if quick {
        32 << 20
    } else {
        256 << 20
    }
}

/// Size of the file moved while the daemon's RSS is watched: 1 GiB, or
/// 128 MiB with `--quick`.
pub fn rss_size(quick: bool) -> u64 {
    if quick {
        128 << 20
    } else {
        1 << 30
    }
}

/// Warm-up and counted rounds.
pub fn rounds(quick: bool) -> Rounds {
    if quick {
        Rounds {
            warmup: 0,
            counted: 1,
        }
    } else {
        Rounds {
            warmup: 1,
            counted: 5,
        }
    }
}

/// Writes `bytes` of incompressible-looking data (xorshift) to `path`.
fn write_source(path: &Path, bytes: u64) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

async fn upload(client: &Client, id: &str, source: &Path, bytes: u64) -> Result<f64> {
    let file = tokio::fs::File::open(source)
        .await
        .with_context(|| format!("open {}", source.display()))?;
    let options = UploadOptions {
        size: Some(bytes),
        ..Default::default()
    };
    let t = Instant::now();
    let stat = client
        .upload_file(id, SANDBOX_PATH, file, &options)
        .await
        .context("warren upload")?;
    let ms = ms_since(t);
    if stat.size != bytes {
        bail!("upload stored {} bytes, sent {bytes}", stat.size);
    }
    Ok(ms)
}

async fn download(client: &Client, id: &str, bytes: u64) -> Result<f64> {
    let t = Instant::now();
    let mut file = client
        .download_file(id, SANDBOX_PATH, None)
        .await
        .context("warren download")?;
    let got = tokio::io::copy(&mut file, &mut tokio::io::sink())
        .await
        .context("reading the download")?;
    let ms = ms_since(t);
    if got != bytes {
        bail!("download delivered {got} bytes, expected {bytes}");
    }
    Ok(ms)
}

/// `cp SOURCE DEST` on the host (same file system as the daemon's data
/// dir), then removes DEST untimed.
fn cp_round(source: &Path, dest: &Path) -> Result<f64> {
    let t = Instant::now();
    let st = std::process::Command::new("cp")
        .arg(source)
        .arg(dest)
        .status()
        .context("spawn cp")?;
    let ms = ms_since(t);
    let _ = std::fs::remove_file(dest);
    if !st.success() {
        bail!("cp exited with {st}");
    }
    Ok(ms)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples the daemon's VmRSS every 20 ms until dropped (or `finish`ed).
struct RssWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, usize)>>,
    before_kib: u64,
}

impl RssWatch {
    fn start(pid: u32) -> Result<RssWatch> {
        let before_kib = vm_rss_kib(pid).context("cannot read the daemon's VmRSS")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut max, mut samples) = (before_kib, 0usize);
            while !flag.load(Ordering::Relaxed) {
                if let Some(kib) = vm_rss_kib(pid) {
                    max = max.max(kib);
                    samples += 1;
                }
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            (max, samples)
        });
        Ok(RssWatch {
            stop,
            thread: Some(thread),
            before_kib,
        })
    }

    /// (RSS before in MiB, max growth in MiB, samples taken).
    fn finish(mut self) -> (f64, f64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (max, samples) = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or((self.before_kib, 0));
        (
            self.before_kib as f64 / 1024.0,
            max.saturating_sub(self.before_kib) as f64 / 1024.0,
            samples,
        )
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RSS growth during one upload and one download of `bytes`.
struct RssOutcome {
    before_mib: f64,
    upload_growth_mib: f64,
    download_growth_mib: f64,
    upload_ms: f64,
    download_ms: f64,
    samples: usize,
}

async fn rss_rounds(ctx: &Ctx, id: &str, source: &Path, bytes: u64) -> Result<RssOutcome> {
    let pid = ctx
        .daemon_pid
        .context("the daemon's pid is unknown (not started by the bench)")?;
    let watch = RssWatch::start(pid)?;
    let upload_ms = upload(&ctx.client, id, source, bytes).await?;
    let (before_mib, upload_growth_mib, up_samples) = watch.finish();
    check_stop()?;
    let watch = RssWatch::start(pid)?;
    let download_ms = download(&ctx.client, id, bytes).await?;
    let (_, download_growth_mib, down_samples) = watch.finish();
    Ok(RssOutcome {
        before_mib,
        upload_growth_mib,
        download_growth_mib,
        upload_ms,
        download_ms,
        samples: up_samples + down_samples,
    })
}

pub async fn files(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let bytes = size(ctx.quick);
    let big = rss_size(ctx.quick);
    let r = rounds(ctx.quick);
    let source = ctx.tmp.join("files-source.bin");
    let big_source = ctx.tmp.join("files-source-big.bin");
    let cp_dest: PathBuf = ctx.tmp.join("files-cp.bin");
    write_source(&source, bytes)?;
    write_source(&big_source, big)?;
    let sb = ctx
        .client
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .context("warren create")?;
    let (mut up, mut down, mut cp) = (Vec::new(), Vec::new(), Vec::new());
    let outcome = async {
        for round in 0..r.warmup + r.counted {
            check_stop()?;
            let counted = round >= r.warmup;
            // Rotate the order: upload+download as one Warren turn, cp the other.
            for k in 0..2 {
                if (round + k) % 2 == 0 {
                    let u = upload(&ctx.client, &sb.id, &source, bytes).await?;
                    let d = download(&ctx.client, &sb.id, bytes).await?;
                    if counted {
                        up.push(Some(u));
                        down.push(Some(d));
                    }
                } else {
                    let c = cp_round(&source, &cp_dest)?;
                    if counted {
                        cp.push(Some(c));
                    }
                }
            }
            if !ctx.quick {
                eprintln!("  files: {}/{} rounds", round + 1, r.warmup + r.counted);
            }
        }
        check_stop()?;
        eprintln!(
            "  files: daemon RSS during a {} MiB upload and download",
            big >> 20
        );
        rss_rounds(ctx, &sb.id, &big_source, big).await
    }
    .await;
    let deleted = ctx.client.delete_sandbox(&sb.id).await;
    let _ = std::fs::remove_file(&source);
    let _ = std::fs::remove_file(&big_source);
    let rss = outcome?;
    deleted.context("warren delete")?;

    let rate = |samples: &[Option<f64>]| -> Vec<f64> {
        samples
            .iter()
            .flatten()
            .map(|ms| mb_per_s(bytes, *ms))
            .collect()
    };
    let (up_rate, down_rate, cp_rate) = (rate(&up), rate(&down), rate(&cp));
    let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let times_cp = |w: &[Option<f64>]| stats::pairwise_ratio(w, &cp);
    let label = human(bytes);
    let mut u = SystemResult::new(
        &format!("warren upload (PUT …/files, {label})"),
        "ok".into(),
        up.clone(),
    );
    u.note = Some(format!(
        "{} MB/s; {}x cp's time",
        fmt(stats::median(&up_rate)),
        times_cp(&up).map_or("-".into(), |v| format!("{v:.2}"))
    ));
    let mut d = SystemResult::new(
        &format!("warren download (GET …/files, {label})"),
        "ok".into(),
        down.clone(),
    );
    d.note = Some(format!(
        "{} MB/s; {}x cp's time",
        fmt(stats::median(&down_rate)),
        times_cp(&down).map_or("-".into(), |v| format!("{v:.2}"))
    ));
    let mut c = SystemResult::new("cp of the same file, same disk", "ok".into(), cp.clone());
    c.ratio_vs_warren = stats::pairwise_ratio(&cp, &up);
    c.note = Some(format!(
        "{} MB/s; cp/download {}",
        fmt(stats::median(&cp_rate)),
        stats::pairwise_ratio(&cp, &down).map_or("-".into(), |v| format!("{v:.2}x"))
    ));
    let mut m = SystemResult::new(
        &format!("daemon RSS growth, {} up / down", human(big)),
        "ok".into(),
        vec![],
    );
    m.note = Some(format!(
        "max +{:.1} / +{:.1} MiB (budget {RSS_BUDGET_MIB:.0}) over {:.0} MiB; {:.0} / {:.0} MB/s",
        rss.upload_growth_mib,
        rss.download_growth_mib,
        rss.before_mib,
        mb_per_s(big, rss.upload_ms),
        mb_per_s(big, rss.download_ms),
    ));
    Ok(ScenarioResult {
        scenario: "files".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: r.warmup,
        rounds: r.counted,
        systems: vec![u, d, c, m],
        targets: vec![
            Target::at_most(
                &format!("daemon RSS growth during a {} upload", human(big)),
                Some(rss.upload_growth_mib),
                RSS_BUDGET_MIB,
                "MiB",
            ),
            Target::at_most(
                &format!("daemon RSS growth during a {} download", human(big)),
                Some(rss.download_growth_mib),
                RSS_BUDGET_MIB,
                "MiB",
            ),
        ],
        extra: json!({
            "bytes_per_round": bytes,
            "upload_mb_per_s": up_rate,
            "download_mb_per_s": down_rate,
            "cp_mb_per_s": cp_rate,
            "rss": {
                "bytes": big,
                "daemon_rss_before_mib": rss.before_mib,
                "upload_max_growth_mib": rss.upload_growth_mib,
                "download_max_growth_mib": rss.download_growth_mib,
                "upload_ms": rss.upload_ms,
                "download_ms": rss.download_ms,
                "samples": rss.samples,
                "sample_interval_ms": RSS_SAMPLE_EVERY.as_millis() as u64,
            },
            "commands": {
                "upload": format!("PUT /v1/sandboxes/{{id}}/files?path={SANDBOX_PATH} with Content-Length, body streamed from a file on the host; timed until the JSON answer"),
                "download": format!("GET /v1/sandboxes/{{id}}/files?path={SANDBOX_PATH}, read to the end and discarded"),
                "cp": "cp SOURCE DEST in the bench's temp dir (same file system as the daemon's data dir), no sync",
                "rss": "VmRSS of the daemon from /proc/PID/status every 20 ms; growth = max during the transfer - value before",
            },
        }),
    })
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_sizes_are_smaller() {
        assert_eq!(human(size(false)), "256 MiB");
        assert_eq!(human(size(true)), "32 MiB");
        assert_eq!(human(rss_size(false)), "1 GiB");
        assert_eq!(human(rss_size(true)), "128 MiB");
    }

    #[test]
    fn source_has_the_exact_size_and_is_not_zeros() {
        let dir = std::env::temp_dir().join(format!("warren-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("src.bin");
        let wrote = write_source(&path, (1 << 20) + 5);
        let data = std::fs::read(&path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(wrote.is_ok());
        assert_eq!(data.len(), (1 << 20) + 5);
        assert!(data.iter().filter(|b| **b == 0).count() < data.len() / 100);
    }
}
