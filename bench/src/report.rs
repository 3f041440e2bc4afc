//! Results: the data model, the printed table, the JSON files, and the
//! machine description.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::peers;
use crate::stats::{self, Summary};

/// One system's numbers in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    pub name: String,
    /// "ok", "missing: …", "failed: …".
    pub status: String,
    pub summary: Option<Summary>,
    /// Median over rounds of (this system's time / Warren's full round time).
    pub ratio_vs_warren: Option<f64>,
    /// Median over rounds of (this system's time / Warren's create+exec time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_vs_warren_create_exec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Counted samples, in round order (null = that round did not run).
    pub samples_ms: Vec<Option<f64>>,
}

impl SystemResult {
    pub fn new(name: &str, status: String, samples: Vec<Option<f64>>) -> SystemResult {
        let summary = stats::summarize(&samples);
        SystemResult {
            name: name.to_string(),
            status,
            summary,
            ratio_vs_warren: None,
            ratio_vs_warren_create_exec: None,
            note: None,
            samples_ms: samples
                .into_iter()
                .map(|s| s.map(|v| (v * 1000.0).round() / 1000.0))
                .collect(),
        }
    }
}

/// A goal from the issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub value: Option<f64>,
    pub goal: String,
    /// None when it could not be measured (e.g. peer missing).
    pub met: Option<bool>,
}

impl Target {
    pub fn at_most(what: &str, value: Option<f64>, limit: f64, unit: &str) -> Target {
        Target {
            what: what.into(),
            value,
            goal: format!("≤ {limit} {unit}"),
            met: value.map(|v| v <= limit),
        }
    }
    pub fn at_least(what: &str, value: Option<f64>, limit: f64, unit: &str) -> Target {
        Target {
            what: what.into(),
            value,
            goal: format!("≥ {limit}{unit}"),
            met: value.map(|v| v >= limit),
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    /// "ok", "not available yet", or "failed: …".
    pub status: String,
    pub quick: bool,
    pub warmup: usize,
    pub rounds: usize,
    pub systems: Vec<SystemResult>,
    pub targets: Vec<Target>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub extra: Value,
}

impl ScenarioResult {
    pub fn unavailable(name: &str, quick: bool) -> ScenarioResult {
        ScenarioResult {
            scenario: name.into(),
            status: "not available yet".into(),
            quick,
            warmup: 0,
            rounds: 0,
            systems: vec![],
            targets: vec![],
            extra: Value::Null,
        }
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

/// The table on stdout, then the targets.
pub fn print_table(results: &[ScenarioResult]) {
    let mut rows: Vec<[String; 7]> = vec![[
        "scenario".into(),
        "system".into(),
        "p50 ms".into(),
        "p99 ms".into(),
        "ratio/W".into(),
        "ratio/W c+e".into(),
        "status / note".into(),
    ]];
    for r in results {
        if r.systems.is_empty() {
            rows.push([
                r.scenario.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                r.status.clone(),
            ]);
        }
        for (i, s) in r.systems.iter().enumerate() {
            let mut status = if s.status == "ok" {
                String::new()
            } else {
                s.status.clone()
            };
            if let Some(n) = &s.note {
                if !status.is_empty() {
                    status.push_str("; ");
                }
                status.push_str(n);
            }
            if status.chars().count() > 90 {
                status = status.chars().take(87).collect::<String>() + "...";
            }
            rows.push([
                if i == 0 {
                    r.scenario.clone()
                } else {
                    String::new()
                },
                s.name.clone(),
                ms(s.summary.as_ref().map(|x| x.p50_ms)),
                ms(s.summary.as_ref().map(|x| x.p99_ms)),
                ratio(s.ratio_vs_warren),
                ratio(s.ratio_vs_warren_create_exec),
                status,
            ]);
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    println!();
    for (n, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            if (2..=5).contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                if i < 6 {
                    line.push_str(&" ".repeat(pad));
                }
            }
            line.push_str("  ");
        }
        println!("{}", line.trim_end());
        if n == 0 {
            println!("{}", "-".repeat(widths.iter().sum::<usize>() + 12));
        }
    }
    println!();
    println!("ratio/W     = median over rounds of (this row's time / Warren's first row's time, same round);");
    println!("              in `create` that is create+exec+delete (the peers also tear down).");
    println!(
        "ratio/W c+e = the same against Warren's create+exec only. >1 means Warren is faster."
    );
    if results
        .iter()
        .flat_map(|r| &r.systems)
        .any(|s| s.name.contains("baseline build"))
    {
        println!("baseline build rows: ratio/W = baseline / current build on the matching row, same round");
        println!("              (<1 means the current build is slower).");
    }
    let targets: Vec<(&str, &Target)> = results
        .iter()
        .flat_map(|r| r.targets.iter().map(move |t| (r.scenario.as_str(), t)))
        .collect();
    if !targets.is_empty() {
        println!();
        println!("targets (from the issue):");
        for (scenario, t) in targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            let value = t
                .value
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "  [{verdict:>12}] {scenario}: {} {} (measured {value})",
                t.what, t.goal
            );
        }
    }
}

/// Facts about this machine that move the numbers.
pub fn machine(warren_bin: Option<&Path>) -> Value {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string());
    let cgroup = Path::new("/sys/fs/cgroup");
    let cgroup_mode = if cgroup.join("cgroup.controllers").exists() {
        "v2"
    } else if cgroup.join("unified").exists() {
        "hybrid (v1 controllers + v2 unified)"
    } else {
        "v1"
    };
    let warren_version = warren_bin.and_then(binary_version);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": cpu_model,
        "memory_mib": mem_kib.map(|k| k / 1024),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "os": os,
        "cgroup_mode": cgroup_mode,
        "versions": {
            "warren": warren_version,
            "bwrap": peers::version("bwrap"),
            "runc": peers::version("runc"),
            "runsc": peers::version("runsc"),
            "podman": peers::version("podman"),
        },
    })
}

/// The first line of `bin --version`.
pub fn binary_version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

/// Writes `<dir>/<scenario>-latest.json` for each result.
pub fn write_latest(dir: &Path, machine: &Value, results: &[ScenarioResult]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let when = chrono::Utc::now().to_rfc3339();
    for r in results {
        let doc = json!({ "generated_at": when, "machine": machine, "result": r });
        let path = dir.join(format!("{}-latest.json", r.scenario));
        fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Writes `<dir>/baseline.json` with every scenario.
pub fn write_baseline(dir: &Path, machine: &Value, results: &[ScenarioResult]) -> Result<()> {
    fs::create_dir_all(dir)?;
    let doc = json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "command": "cargo run --release -p warren-bench -- all --save-baseline",
        "machine": machine,
        "results": results,
    });
    let path = dir.join("baseline.json");
    fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
