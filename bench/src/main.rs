//! `warren-bench`: Warren's benchmarks, side by side with bwrap, runc, runsc
//! and podman. See bench/README.md.

mod density;
mod env;
mod files;
mod fork;
mod gvisor;
mod image;
mod oci_registry;
mod pause;
mod peers;
mod port_proxy;
mod report;
mod scenarios;
mod stats;
mod streaming;
mod warm_pool;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{bail, Result};
use clap::Parser;

use crate::env::BenchEnv;
use crate::peers::PeerState;
use crate::report::ScenarioResult;
use crate::scenarios::{Ctx, Rounds, AVAILABLE, UNAVAILABLE};

/// Benchmarks Warren against bwrap, runc, runsc (gVisor) and podman.
#[derive(Debug, Parser)]
#[command(name = "warren-bench")]
struct Args {
    /// `all`, or scenario names: create, exec, streaming, files (alias
    /// file-transfer), image, pause-resume, gvisor-suspend, fork, snapshot, concurrent,
    /// density (and the not yet available port-proxy, warm-pool).
    #[arg(required = true, value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// One counted round of each scenario, no warm-up (CI smoke run).
    #[arg(long)]
    quick: bool,
    /// Also write results/baseline.json.
    #[arg(long)]
    save_baseline: bool,
    /// Where the JSON goes (default: bench/results in the source tree).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Override the counted rounds of `create` (default 100) and `exec` (default 200).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Another `warren` binary (e.g. an older commit's) to compare in
    /// `create`: run with its own daemon, interleaved round by round with the
    /// current build, and reported as "warren (baseline build)".
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Expands `all` and checks names.
fn selected(names: &[String]) -> Result<Vec<&'static str>> {
    let mut out: Vec<&'static str> = Vec::new();
    for n in names {
        // The issue calls it "file transfer".
        let n = if n == "file-transfer" {
            "files"
        } else {
            n.as_str()
        };
        let expanded: Vec<&'static str> = if n == "all" {
            AVAILABLE.iter().chain(UNAVAILABLE).copied().collect()
        } else if let Some(s) = AVAILABLE.iter().chain(UNAVAILABLE).find(|s| **s == n) {
            vec![*s]
        } else {
            bail!(
                "unknown scenario {n:?}; known: all, {}, {}",
                AVAILABLE.join(", "),
                UNAVAILABLE.join(", ")
            );
        };
        for s in expanded {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

async fn run(args: Args) -> Result<()> {
    let names = selected(&args.scenarios)?;
    if let Some(b) = &args.baseline_bin {
        if !b.is_file() {
            bail!("--baseline-bin {} is not a file", b.display());
        }
        if !names.contains(&"create") {
            bail!("--baseline-bin is compared in the create scenario; select create (or all)");
        }
    }
    env::raise_nofile_limit();
    tokio::spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        eprintln!("warren-bench: interrupted; cleaning up");
        scenarios::STOP.store(true, Ordering::Relaxed);
    });

    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    let needs_daemon = names.iter().any(|n| AVAILABLE.contains(n));
    let warren_bin = if needs_daemon {
        Some(env::locate_warren()?)
    } else {
        None
    };

    // Declared first so it is dropped last: daemon, cgroups and temp dir go
    // after the peers have cleaned up their own state.
    let mut bench_env = BenchEnv::new()?;
    let mut baseline_env = match &args.baseline_bin {
        Some(_) => Some(BenchEnv::tagged("baseline")?),
        None => None,
    };
    let mut machine = report::machine(warren_bin.as_deref());
    if let Some(b) = &args.baseline_bin {
        machine["baseline_build"] = serde_json::json!({
            "path": b.display().to_string(),
            "version": report::binary_version(b),
        });
    }
    let mut results: Vec<ScenarioResult> = Vec::new();
    let outcome = async {
        let Some(bin) = &warren_bin else {
            return Ok(());
        };
        eprintln!(
            "warren-bench: daemon {} in {}",
            bin.display(),
            bench_env.dir.display()
        );
        let client = bench_env.start_daemon(bin).await?;
        let baseline = match (&mut baseline_env, &args.baseline_bin) {
            (Some(env), Some(bin)) => {
                eprintln!(
                    "warren-bench: baseline daemon {} in {}",
                    bin.display(),
                    env.dir.display()
                );
                Some(env.start_daemon(bin).await?)
            }
            _ => None,
        };
        let mut peers: Vec<(String, PeerState)> = Vec::new();
        if names.contains(&"create") {
            eprintln!("warren-bench: setting up peers (bwrap, runc, runsc, podman)");
            let tmp = bench_env.dir.clone();
            let cg = bench_env.peer_cgroup.clone();
            peers.push(("bwrap".into(), peers::bwrap()));
            peers.push(("runc".into(), peers::runc(&tmp, &cg)));
            peers.push(("runsc".into(), peers::runsc(&tmp, &cg)));
            peers.push(("podman".into(), peers::podman(&tmp, &cg)));
            for (name, state) in &peers {
                eprintln!("  {name}: {}", state.status());
            }
        }
        let mut ctx = Ctx {
            client,
            baseline,
            peers,
            quick: args.quick,
            warren_cgroup: bench_env.warren_cgroup.clone(),
            daemon_pid: bench_env.daemon_pid(),
            tmp: bench_env.dir.clone(),
            peer_cgroup: bench_env.peer_cgroup.clone(),
            warren_bin: bin.clone(),
        };
        for name in &names {
            let r = match *name {
                "create" => {
                    let rounds = if args.quick {
                        Rounds {
                            warmup: 0,
                            counted: 1,
                        }
                    } else {
                        Rounds {
                            warmup: 5,
                            counted: args.rounds.unwrap_or(100),
                        }
                    };
                    eprintln!(
                        "warren-bench: create ({} + {} rounds)",
                        rounds.warmup, rounds.counted
                    );
                    scenarios::create(&mut ctx, rounds).await
                }
                "exec" => {
                    let rounds = if args.quick {
                        Rounds {
                            warmup: 0,
                            counted: 1,
                        }
                    } else {
                        Rounds {
                            warmup: 10,
                            counted: args.rounds.unwrap_or(200),
                        }
                    };
                    eprintln!(
                        "warren-bench: exec ({} + {} rounds)",
                        rounds.warmup, rounds.counted
                    );
                    scenarios::exec(&mut ctx, rounds).await
                }
                "streaming" => {
                    eprintln!(
                        "warren-bench: streaming ({} rounds of {} MiB)",
                        streaming::rounds(args.quick),
                        streaming::size(args.quick) >> 20
                    );
                    streaming::streaming(&mut ctx).await
                }
                "files" => {
                    let r = files::rounds(args.quick);
                    eprintln!(
                        "warren-bench: files ({} + {} rounds of {} MiB, then {} MiB with the daemon's RSS watched)",
                        r.warmup,
                        r.counted,
                        files::size(args.quick) >> 20,
                        files::rss_size(args.quick) >> 20
                    );
                    files::files(&mut ctx).await
                }
                "pause-resume" => {
                    let r = pause::rounds(args.quick);
                    eprintln!(
                        "warren-bench: pause-resume ({} + {} rounds)",
                        r.warmup, r.counted
                    );
                    pause::pause_resume(&mut ctx).await
                }
                "fork" => {
                    let r = fork::rounds(args.quick);
                    eprintln!(
                        "warren-bench: fork ({} + {} rounds of fork, then of create from a small and a 100 MiB snapshot)",
                        r.warmup, r.counted
                    );
                    fork::fork(&mut ctx).await
                }
                "snapshot" => {
                    let r = fork::snapshot_rounds(args.quick);
                    eprintln!(
                        "warren-bench: snapshot ({} + {} rounds of a 100 MiB snapshot and cp -a)",
                        r.warmup, r.counted
                    );
                    fork::snapshot(&mut ctx).await
                }
                "image" => {
                    eprintln!(
                        "warren-bench: image ({} rounds, each on a fresh daemon)",
                        image::rounds(args.quick)
                    );
                    image::image(&mut ctx).await
                }
                "concurrent" => {
                    let total = if args.quick { 16 } else { 64 };
                    eprintln!("warren-bench: concurrent (16 clients, {total} sandboxes)");
                    scenarios::concurrent(&mut ctx, 16, total).await
                }
                "warm-pool" => {
                    let r = warm_pool::rounds(args.quick);
                    eprintln!(
                        "warren-bench: warm-pool ({} + {} claims from a full pool, then as many creates from the template)",
                        r.warmup, r.counted
                    );
                    warm_pool::warm_pool(&mut ctx).await
                }
                "gvisor-suspend" => {
                    let r = gvisor::rounds(args.quick);
                    eprintln!(
                        "warren-bench: gvisor-suspend ({} + {} rounds of suspend+resume, then runsc checkpoint+restore by hand)",
                        r.warmup, r.counted
                    );
                    gvisor::gvisor_suspend(&mut ctx).await
                }
                "port-proxy" => {
                    let r = port_proxy::rounds(args.quick);
                    eprintln!(
                        "warren-bench: port-proxy ({} + {} small requests per path, then one 256 MiB download per path)",
                        r.warmup, r.counted
                    );
                    port_proxy::port_proxy(&mut ctx).await
                }
                "network-modes" => {
                    let r = port_proxy::mode_rounds(args.quick);
                    eprintln!(
                        "warren-bench: network-modes ({} + {} creates per mode: none, internet, allowlist)",
                        r.warmup, r.counted
                    );
                    port_proxy::network_modes(&mut ctx).await
                }
                "density" => {
                    eprintln!(
                        "warren-bench: density (levels {:?} idle sandboxes)",
                        density::levels(args.quick)
                    );
                    density::density(&mut ctx).await
                }
                _ => continue,
            };
            match r {
                Ok(r) => results.push(r),
                Err(e) => {
                    let base_tail = baseline_env
                        .as_ref()
                        .map(|b| format!("\nbaseline daemon log tail:\n{}", b.daemon_log_tail()))
                        .unwrap_or_default();
                    return Err(e.context(format!(
                        "scenario {name} failed; daemon log tail:\n{}{base_tail}",
                        bench_env.daemon_log_tail()
                    )));
                }
            }
        }
        // Peers (podman's storage) clean up here, before the daemon and temp dir.
        drop(ctx);
        anyhow::Ok(())
    }
    .await;
    for name in &names {
        if UNAVAILABLE.contains(name) {
            results.push(ScenarioResult::unavailable(name, args.quick));
        }
    }
    report::print_table(&results);
    report::write_latest(&out_dir, &machine, &results)?;
    println!("wrote {}/<scenario>-latest.json", out_dir.display());
    if args.save_baseline && outcome.is_ok() {
        report::write_baseline(&out_dir, &machine, &results)?;
    }
    drop(baseline_env);
    drop(bench_env);
    outcome
}
