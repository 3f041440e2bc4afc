//! `density`: many idle sandboxes alive at once. At each level: host memory
//! per sandbox three ways (cgroup accounting, the agent's RSS, the drop of
//! the host's MemAvailable) and the exec round trip on random live sandboxes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use warren_client::{Client, CreateSandboxRequest};

use crate::report::{ScenarioResult, SystemResult, Target};
use crate::scenarios::{check_stop, exec_true, ms_since, Ctx};
use crate::stats;

const MIB: f64 = 1024.0 * 1024.0;
/// Execs of `true` timed at each level, each on a random live sandbox.
const EXECS_PER_LEVEL: usize = 50;
/// Sandboxes deleted at once during cleanup.
const DELETE_PARALLELISM: usize = 8;
/// Goals from the issue, checked at the highest level.
const MEMORY_GOAL_MIB: f64 = 4.0;
const EXEC_GOAL_MS: f64 = 3.0;

/// The levels: sandboxes alive at once.
pub fn levels(quick: bool) -> Vec<usize> {
    if quick {
        vec![5, 10]
    } else {
        vec![100, 300, 500]
    }
}

/// One level's measurements.
#[derive(Debug, Clone, Serialize)]
struct Level {
    sandboxes: usize,
    /// Mean of the sandboxes' cgroup memory usage (v1 memory.usage_in_bytes,
    /// v2 memory.current), MiB.
    cgroup_mib_mean: Option<f64>,
    cgroup_mib_p50: Option<f64>,
    cgroup_mib_max: Option<f64>,
    /// Kernel part of the above (v1 memory.kmem.usage_in_bytes, v2
    /// memory.stat kernel), MiB.
    cgroup_kernel_mib_mean: Option<f64>,
    /// Mean VmRSS of the sandboxes' PID 1 (the agent), MiB.
    agent_rss_mib_mean: Option<f64>,
    /// Mean Pss of the agent (shared pages divided among sharers), MiB.
    agent_pss_mib_mean: Option<f64>,
    /// Agents found (of `sandboxes`).
    agents_found: usize,
    /// (MemAvailable before the first sandbox − now) / sandboxes, MiB.
    mem_available_drop_mib_per_sandbox: Option<f64>,
    /// Growth of the daemon's VmRSS since before the first sandbox / sandboxes, MiB.
    daemon_rss_growth_mib_per_sandbox: Option<f64>,
    exec_samples_ms: Vec<Option<f64>>,
    create_samples_ms: Vec<Option<f64>>,
    fill_s: f64,
}

/// Where the sandbox's memory accounting lives.
fn memory_cgroup(parent: &str, id: &str) -> (PathBuf, bool) {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        (root.join(parent).join(id), true)
    } else {
        (root.join("memory").join(parent).join(id), false)
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// (usage, kernel part) in bytes.
fn cgroup_memory(parent: &str, id: &str) -> (Option<u64>, Option<u64>) {
    let (dir, v2) = memory_cgroup(parent, id);
    if v2 {
        let kernel = fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .and_then(|s| status_field(&s, "kernel"));
        (read_u64(&dir.join("memory.current")), kernel)
    } else {
        (
            read_u64(&dir.join("memory.usage_in_bytes")),
            read_u64(&dir.join("memory.kmem.usage_in_bytes")),
        )
    }
}

/// The first number after `key` at the start of a line (`key value` or `key: value kB`).
fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The sandbox's PID 1 on the host: the process in its cgroup whose NSpid
/// ends in 1 (two entries: host pid, 1), else the lowest pid.
fn agent_pid(parent: &str, id: &str) -> Option<u32> {
    let (dir, _) = memory_cgroup(parent, id);
    let procs = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let init = pids.iter().copied().find(|pid| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("NSpid:"))?.to_string();
                let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
                Some(ids.len() == 2 && ids[1] == "1")
            })
            .unwrap_or(false)
    });
    init.or_else(|| pids.iter().copied().min())
}

/// (VmRSS, Pss) of `pid` in bytes.
fn rss_pss(pid: u32) -> (Option<u64>, Option<u64>) {
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| status_field(&s, "VmRSS"))
        .map(|k| k * 1024);
    let pss = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| status_field(&s, "Pss"))
        .map(|k| k * 1024);
    (rss, pss)
}

fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    status_field(&text, "MemAvailable").map(|k| k * 1024)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A small xorshift generator: which live sandbox each exec goes to.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(nanos | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `density`: fill to each level, measure, and delete everything at the end
/// (also when a level fails).
pub async fn density(ctx: &mut Ctx) -> Result<ScenarioResult> {
    let levels = levels(ctx.quick);
    let mut live: Vec<String> = Vec::new();
    let mut done: Vec<Level> = Vec::new();
    let outcome = fill_and_measure(ctx, &levels, &mut live, &mut done).await;
    let n = live.len();
    if n > 0 {
        eprintln!("  density: deleting {n} sandboxes ({DELETE_PARALLELISM} at a time)");
    }
    let t = Instant::now();
    let deleted = delete_all(&ctx.client, live).await;
    if n > 0 {
        eprintln!(
            "  density: deleted {n} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    outcome?;
    deleted?;
    Ok(result(ctx.quick, &done))
}

async fn fill_and_measure(
    ctx: &Ctx,
    levels: &[usize],
    live: &mut Vec<String>,
    done: &mut Vec<Level>,
) -> Result<()> {
    let parent = ctx.warren_cgroup.as_str();
    let avail_before = mem_available();
    let daemon_before = ctx.daemon_pid.and_then(|p| rss_pss(p).0);
    let mut rng = Rng::seeded();
    let req = CreateSandboxRequest::default();
    for &level in levels {
        let t_fill = Instant::now();
        let mut create_samples = Vec::new();
        while live.len() < level {
            check_stop()?;
            let t = Instant::now();
            let sb = ctx.client.create_sandbox(&req).await.with_context(|| {
                format!("warren create of sandbox {} of {level}", live.len() + 1)
            })?;
            create_samples.push(Some(ms_since(t)));
            live.push(sb.id);
            if live.len().is_multiple_of(50) || live.len() == level {
                eprintln!("  density: {}/{level} sandboxes alive", live.len());
            }
        }
        let fill_s = t_fill.elapsed().as_secs_f64();
        // Let the last agents finish starting before reading their memory.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut usage = Vec::new();
        let mut kernel = Vec::new();
        let mut rss = Vec::new();
        let mut pss = Vec::new();
        for id in live.iter() {
            let (u, k) = cgroup_memory(parent, id);
            usage.extend(u.map(|b| b as f64 / MIB));
            kernel.extend(k.map(|b| b as f64 / MIB));
            if let Some(pid) = agent_pid(parent, id) {
                let (r, p) = rss_pss(pid);
                rss.extend(r.map(|b| b as f64 / MIB));
                pss.extend(p.map(|b| b as f64 / MIB));
            }
        }
        let avail_now = mem_available();
        let per_sandbox = |before: Option<u64>, now: Option<u64>| {
            before
                .zip(now)
                .map(|(b, n)| (b as f64 - n as f64) / MIB / live.len() as f64)
        };
        let daemon_now = ctx.daemon_pid.and_then(|p| rss_pss(p).0);

        let mut exec_samples = Vec::new();
        let exec = exec_true();
        for _ in 0..EXECS_PER_LEVEL {
            check_stop()?;
            let id = &live[rng.below(live.len())];
            let t = Instant::now();
            let r = ctx
                .client
                .exec(id, &exec)
                .await
                .with_context(|| format!("warren exec at {level} sandboxes"))?;
            let took = ms_since(t);
            if r.exit_code != 0 {
                anyhow::bail!("warren exec of `true` exited {} at {level}", r.exit_code);
            }
            exec_samples.push(Some(took));
        }

        let lvl = Level {
            sandboxes: live.len(),
            cgroup_mib_mean: mean(&usage),
            cgroup_mib_p50: stats::median(&usage),
            cgroup_mib_max: usage.iter().copied().reduce(f64::max),
            cgroup_kernel_mib_mean: mean(&kernel),
            agent_rss_mib_mean: mean(&rss),
            agent_pss_mib_mean: mean(&pss),
            agents_found: rss.len(),
            mem_available_drop_mib_per_sandbox: per_sandbox(avail_before, avail_now),
            daemon_rss_growth_mib_per_sandbox: per_sandbox(daemon_now, daemon_before),
            exec_samples_ms: exec_samples,
            create_samples_ms: create_samples,
            fill_s,
        };
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let exec_p50 = stats::summarize(&lvl.exec_samples_ms).map(|s| s.p50_ms);
        eprintln!(
            "  density {level}: MiB/sandbox cgroup {} (kernel {}), agent RSS {} (PSS {}), MemAvailable drop {}, daemon {}; exec p50 {} ms",
            f(lvl.cgroup_mib_mean),
            f(lvl.cgroup_kernel_mib_mean),
            f(lvl.agent_rss_mib_mean),
            f(lvl.agent_pss_mib_mean),
            f(lvl.mem_available_drop_mib_per_sandbox),
            f(lvl.daemon_rss_growth_mib_per_sandbox),
            f(exec_p50),
        );
        done.push(lvl);
    }
    Ok(())
}

/// Deletes `ids` with a few clients at once; every id is tried, the first
/// error is returned.
async fn delete_all(client: &Client, ids: Vec<String>) -> Result<()> {
    let queue = Arc::new(Mutex::new(ids));
    let mut tasks = Vec::new();
    for _ in 0..DELETE_PARALLELISM {
        let client = client.clone();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut first_err = None;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(id) = next else { break };
                if let Err(e) = client.delete_sandbox(&id).await {
                    first_err.get_or_insert(anyhow::Error::new(e).context(format!("delete {id}")));
                }
            }
            first_err.map_or(Ok(()), Err)
        }));
    }
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::Error::new(e).context("delete worker panicked"));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn result(quick: bool, levels: &[Level]) -> ScenarioResult {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let mut systems = Vec::new();
    for l in levels {
        let mut s = SystemResult::new(
            &format!("warren exec at {} live", l.sandboxes),
            "ok".into(),
            l.exec_samples_ms.clone(),
        );
        s.note = Some(format!(
            "MiB/sandbox: cgroup {}, agent RSS {}, MemAvailable drop {}",
            f(l.cgroup_mib_mean),
            f(l.agent_rss_mib_mean),
            f(l.mem_available_drop_mib_per_sandbox)
        ));
        systems.push(s);
    }
    for l in levels {
        let mut s = SystemResult::new(
            &format!("  warren create, filling to {}", l.sandboxes),
            "ok".into(),
            l.create_samples_ms.clone(),
        );
        s.note = Some(format!(
            "{} created in {:.1} s",
            l.create_samples_ms.len(),
            l.fill_s
        ));
        systems.push(s);
    }
    let mut targets = Vec::new();
    if let Some(top) = levels.last() {
        let n = top.sandboxes;
        targets.push(Target::at_most(
            &format!("host memory per sandbox at {n} (cgroup accounting, mean), MiB"),
            top.cgroup_mib_mean,
            MEMORY_GOAL_MIB,
            "MiB",
        ));
        targets.push(Target::at_most(
            &format!("host memory per sandbox at {n} (MemAvailable drop), MiB"),
            top.mem_available_drop_mib_per_sandbox,
            MEMORY_GOAL_MIB,
            "MiB",
        ));
        targets.push(Target::at_most(
            &format!("warren exec p50 at {n} sandboxes"),
            stats::summarize(&top.exec_samples_ms).map(|s| s.p50_ms),
            EXEC_GOAL_MS,
            "ms",
        ));
    }
    let (_, v2) = memory_cgroup("", "");
    ScenarioResult {
        scenario: "density".into(),
        status: "ok".into(),
        quick,
        warmup: 0,
        rounds: EXECS_PER_LEVEL,
        systems,
        targets,
        extra: json!({
            "levels": levels,
            "execs_per_level": EXECS_PER_LEVEL,
            "memory_source": if v2 { "cgroup v2 memory.current (kernel: memory.stat kernel)" } else { "cgroup v1 memory.usage_in_bytes (kernel: memory.kmem.usage_in_bytes)" },
            "agent_rss_source": "VmRSS and smaps_rollup Pss of the sandbox's PID 1 (NSpid ends in 1)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let status = "Name:\twarren-agent\nVmRSSx: 9 kB\nVmRSS:\t    1234 kB\nNSpid:\t42\t1\n";
        assert_eq!(status_field(status, "VmRSS"), Some(1234));
        let stat = "anon 100\nkernel 8192\nkernel_stack 16\n";
        assert_eq!(status_field(stat, "kernel"), Some(8192));
        assert_eq!(status_field(stat, "file"), None);
    }

    #[test]
    fn levels_are_quick_or_full() {
        assert_eq!(levels(true), vec![5, 10]);
        assert_eq!(levels(false), vec![100, 300, 500]);
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng(7);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }
}
