//! The scenarios. Each returns a [`ScenarioResult`]; Warren failing is an
//! error, a peer failing is a status in the table.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use warren_client::{Client, CreateSandboxRequest, ExecRequest};

use crate::peers::{first_line, PeerState};
use crate::report::{ScenarioResult, SystemResult, Target};
use crate::stats;

/// Set by ctrl-c / SIGTERM; rounds stop and cleanup runs.
pub static STOP: AtomicBool = AtomicBool::new(false);

pub(crate) fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Scenarios that exist in the issue but whose Warren capability is not built yet.
pub const UNAVAILABLE: &[&str] = &[];
/// Scenarios that run today, in `all` order.
pub const AVAILABLE: &[&str] = &[
    "create",
    "exec",
    "streaming",
    "files",
    "image",
    "pause-resume",
    "gvisor-suspend",
    "fork",
    "snapshot",
    "warm-pool",
    "concurrent",
    "density",
    "port-proxy",
    "network-modes",
];

/// Round counts: (warm-up, counted).
#[derive(Clone, Copy)]
pub struct Rounds {
    pub warmup: usize,
    pub counted: usize,
}

pub struct Ctx {
    pub client: Client,
    /// A second Warren build's daemon (`--baseline-bin`), compared in `create`.
    pub baseline: Option<Client>,
    pub peers: Vec<(String, PeerState)>,
    pub quick: bool,
    /// The daemon's cgroup parent (for cgroup accounting in `density`).
    pub warren_cgroup: String,
    /// The daemon's pid (for its RSS in `density`).
    pub daemon_pid: Option<u32>,
    /// Temporary directory for peers' state.
    pub tmp: std::path::PathBuf,
    /// Cgroup parent for the peers' containers.
    pub peer_cgroup: String,
    /// The `warren` binary the daemon runs (`image` starts fresh daemons).
    pub warren_bin: std::path::PathBuf,
}

pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub(crate) fn exec_true() -> ExecRequest {
    ExecRequest {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    }
}

/// Warren's times for one create → exec → delete, in ms.
struct WarrenRound {
    create: f64,
    exec: f64,
    delete: f64,
}

async fn warren_round(client: &Client, request: &CreateSandboxRequest) -> Result<WarrenRound> {
    let t0 = Instant::now();
    let sb = client
        .create_sandbox(request)
        .await
        .context("warren create")?;
    let create = ms_since(t0);
    let t1 = Instant::now();
    let r = client.exec(&sb.id, &exec_true()).await;
    let exec = ms_since(t1);
    let t2 = Instant::now();
    let d = client.delete_sandbox(&sb.id).await;
    let delete = ms_since(t2);
    let r = r.context("warren exec")?;
    if r.exit_code != 0 {
        bail!(
            "warren exec of `true` exited {}: {}",
            r.exit_code,
            r.stderr.trim()
        );
    }
    d.context("warren delete")?;
    Ok(WarrenRound {
        create,
        exec,
        delete,
    })
}

/// The create request of the `create` scenario: loopback only, like the
/// peers' containers (the `network-modes` scenario measures what each
/// network mode adds).
pub(crate) fn loopback_only() -> CreateSandboxRequest {
    CreateSandboxRequest {
        network: Some(warren_api::NetworkPolicy {
            mode: Some(warren_api::NetworkMode::None),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `create`: create → first exec of `true` → delete, interleaved with peers
/// (and with the baseline build's daemon when there is one).
pub async fn create(ctx: &mut Ctx, rounds: Rounds) -> Result<ScenarioResult> {
    // System 0 is Warren, then the baseline build if any, then the peers.
    let n_base = usize::from(ctx.baseline.is_some());
    let n_sys = 1 + n_base + ctx.peers.len();
    let total = rounds.warmup + rounds.counted;
    let mut w_full = Vec::new();
    let mut w_create = Vec::new();
    let mut w_exec = Vec::new();
    let mut w_delete = Vec::new();
    let mut w_ce = Vec::new();
    let mut b_create = Vec::new();
    let mut b_ce = Vec::new();
    let mut b_full = Vec::new();
    let mut peer_samples: Vec<Vec<Option<f64>>> = vec![Vec::new(); ctx.peers.len()];
    for round in 0..total {
        check_stop()?;
        let counted = round >= rounds.warmup;
        // Rotate who goes first so order effects spread evenly.
        for k in 0..n_sys {
            let which = (round + k) % n_sys;
            if which == 0 {
                let w = warren_round(&ctx.client, &loopback_only()).await?;
                if counted {
                    w_full.push(Some(w.create + w.exec + w.delete));
                    w_create.push(Some(w.create));
                    w_exec.push(Some(w.exec));
                    w_delete.push(Some(w.delete));
                    w_ce.push(Some(w.create + w.exec));
                }
                continue;
            }
            if which <= n_base {
                if let Some(base) = &ctx.baseline {
                    // Builds from before networking take no `network` field.
                    let b = warren_round(base, &CreateSandboxRequest::default())
                        .await
                        .context("baseline build")?;
                    if counted {
                        b_create.push(Some(b.create));
                        b_ce.push(Some(b.create + b.exec));
                        b_full.push(Some(b.create + b.exec + b.delete));
                    }
                }
                continue;
            }
            let (_, state) = &mut ctx.peers[which - 1 - n_base];
            let sample = match state {
                PeerState::Ready(peer) => {
                    let id = format!("{}-{round}", std::process::id());
                    let t = Instant::now();
                    let r = peer.round(&id);
                    let took = ms_since(t);
                    peer.after_round(&id);
                    match r {
                        Ok(()) => Some(took),
                        Err(e) => {
                            *state = PeerState::Failed(format!(
                                "round {round}: {}",
                                first_line(&e.to_string())
                            ));
                            None
                        }
                    }
                }
                _ => None,
            };
            if counted {
                peer_samples[which - 1 - n_base].push(sample);
            }
        }
        if !ctx.quick && (round + 1) % 20 == 0 {
            eprintln!("  create: {}/{total} rounds", round + 1);
        }
    }
    let mut systems = vec![
        SystemResult::new("warren create+exec+delete", "ok".into(), w_full.clone()),
        SystemResult::new("warren create+exec", "ok".into(), w_ce.clone()),
        SystemResult::new("  warren create", "ok".into(), w_create.clone()),
        SystemResult::new("  warren first exec", "ok".into(), w_exec),
        SystemResult::new("  warren delete", "ok".into(), w_delete),
    ];
    let mut baseline_targets = Vec::new();
    let mut baseline_extra = serde_json::Value::Null;
    if ctx.baseline.is_some() {
        let p50 = |v: &[Option<f64>]| stats::summarize(v).map(|s| s.p50_ms);
        let mut rows = Vec::new();
        let mut summary = serde_json::Map::new();
        for (label, key, cur, base) in [
            (
                "warren (baseline build) create+exec+delete",
                "create_exec_delete",
                &w_full,
                &b_full,
            ),
            (
                "warren (baseline build) create+exec",
                "create_exec",
                &w_ce,
                &b_ce,
            ),
            (
                "  warren (baseline build) create",
                "create",
                &w_create,
                &b_create,
            ),
        ] {
            let mut s = SystemResult::new(label, "ok".into(), base.clone());
            // baseline / current, per round: < 1 means the current build is slower.
            s.ratio_vs_warren = stats::pairwise_ratio(base, cur);
            let (pc, pb) = (p50(cur), p50(base));
            let r = pc.zip(pb).map(|(c, b)| c / b);
            if let Some(r) = r {
                s.note = Some(format!("current/baseline p50 {r:.3}x (budget 1.20x)"));
            }
            summary.insert(
                key.into(),
                json!({ "current_p50_ms": pc, "baseline_p50_ms": pb, "current_over_baseline_p50": r }),
            );
            rows.push(s);
            if key != "create_exec_delete" {
                baseline_targets.push(Target::at_most(
                    &format!(
                        "{} p50, current build / baseline build",
                        key.replace('_', "+")
                    ),
                    r,
                    1.2,
                    "x",
                ));
            }
        }
        systems.extend(rows);
        baseline_extra = serde_json::Value::Object(summary);
    }
    let mut ratios = Vec::new();
    for ((name, state), samples) in ctx.peers.iter().zip(peer_samples) {
        let mut s = SystemResult::new(name, state.status(), samples.clone());
        s.ratio_vs_warren = stats::pairwise_ratio(&samples, &w_full);
        s.ratio_vs_warren_create_exec = stats::pairwise_ratio(&samples, &w_ce);
        ratios.push((
            name.clone(),
            s.ratio_vs_warren,
            s.ratio_vs_warren_create_exec,
        ));
        systems.push(s);
    }
    let ce_p50 = systems[1].summary.as_ref().map(|s| s.p50_ms);
    let ratio_of = |peer: &str| ratios.iter().find(|r| r.0 == peer).and_then(|r| r.1);
    let mut targets = vec![
        Target::at_most("warren create+exec p50", ce_p50, 10.0, "ms"),
        Target::at_least(
            "runc run / warren create+exec+delete (median per-round ratio)",
            ratio_of("runc"),
            3.0,
            "x",
        ),
        Target::at_least(
            "podman run / warren create+exec+delete (median per-round ratio)",
            ratio_of("podman"),
            10.0,
            "x",
        ),
    ];
    targets.extend(baseline_targets);
    Ok(ScenarioResult {
        scenario: "create".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: rounds.warmup,
        rounds: rounds.counted,
        systems,
        targets,
        extra: json!({
            "peer_commands": {
                "bwrap": "bwrap --unshare-all --die-with-parent --ro-bind / / true",
                "runc": "runc run (bundle: empty rootfs + ro binds of /usr, /etc; symlinks /bin,/lib,...) ; runc delete -f untimed",
                "runsc": "runsc --network=none run of the same bundle; runsc delete -force untimed",
                "podman": "podman --runtime runc run --rm --network none <imported tar of /usr/bin/true + libs> /usr/bin/true",
            },
            "baseline_build": baseline_extra,
        }),
    })
}

/// `exec`: exec round trip of `true` on one running sandbox, interleaved
/// with spawning `true` on the host (the floor) and with `runc exec` /
/// `podman exec` of `true` in one running container each.
pub async fn exec(ctx: &mut Ctx, rounds: Rounds) -> Result<ScenarioResult> {
    eprintln!("  starting long-running runc and podman containers (sleep infinity)");
    let mut peers: Vec<(String, PeerState)> = vec![
        (
            "runc exec".into(),
            crate::peers::runc_exec(&ctx.tmp, &ctx.peer_cgroup),
        ),
        (
            "podman exec".into(),
            crate::peers::podman_exec(&ctx.tmp, &ctx.peer_cgroup),
        ),
    ];
    for (name, state) in &peers {
        eprintln!("  {name}: {}", state.status());
    }
    let sb = ctx
        .client
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .context("warren create")?;
    let result = exec_rounds(&ctx.client, &sb.id, rounds, &mut peers).await;
    let deleted = ctx.client.delete_sandbox(&sb.id).await;
    let (warren, host, peer_samples) = result?;
    deleted.context("warren delete")?;
    let w = SystemResult::new("warren exec round trip", "ok".into(), warren.clone());
    let mut h = SystemResult::new("host spawn of true (floor)", "ok".into(), host.clone());
    h.ratio_vs_warren = stats::pairwise_ratio(&host, &warren);
    let p50 = w.summary.as_ref().map(|s| s.p50_ms);
    let mut systems = vec![w, h];
    for ((name, state), samples) in peers.iter().zip(peer_samples) {
        let mut s = SystemResult::new(name, state.status(), samples.clone());
        s.ratio_vs_warren = stats::pairwise_ratio(&samples, &warren);
        systems.push(s);
    }
    // Containers go before the daemon and the temp dir.
    drop(peers);
    Ok(ScenarioResult {
        scenario: "exec".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: rounds.warmup,
        rounds: rounds.counted,
        systems,
        targets: vec![Target::at_most(
            "warren exec round trip p50",
            p50,
            2.0,
            "ms",
        )],
        extra: json!({
            "peer_commands": {
                "runc exec": "runc exec <container> true; container: runc run -d of the create scenario's bundle with args sleep infinity",
                "podman exec": "podman exec <container> /usr/bin/true; container: podman --runtime runc run -d --network none of an imported tar of true + sleep + libs, /usr/bin/sleep infinity",
            },
        }),
    })
}

type Samples = Vec<Option<f64>>;

async fn exec_rounds(
    client: &Client,
    id: &str,
    rounds: Rounds,
    peers: &mut [(String, PeerState)],
) -> Result<(Samples, Samples, Vec<Samples>)> {
    let mut warren = Vec::new();
    let mut host = Vec::new();
    let mut peer_samples: Vec<Samples> = vec![Vec::new(); peers.len()];
    let req = exec_true();
    let n_sys = 2 + peers.len();
    for round in 0..rounds.warmup + rounds.counted {
        check_stop()?;
        let counted = round >= rounds.warmup;
        // Rotate who goes first so order effects spread evenly.
        for k in 0..n_sys {
            let which = (round + k) % n_sys;
            if which == 0 {
                let t = Instant::now();
                let r = client.exec(id, &req).await.context("warren exec")?;
                let took = ms_since(t);
                if r.exit_code != 0 {
                    bail!("warren exec of `true` exited {}", r.exit_code);
                }
                if counted {
                    warren.push(Some(took));
                }
            } else if which == 1 {
                let t = Instant::now();
                let st = std::process::Command::new("true")
                    .status()
                    .context("spawn true")?;
                let took = ms_since(t);
                if counted {
                    host.push(st.success().then_some(took));
                }
            } else {
                let (_, state) = &mut peers[which - 2];
                let sample = match state {
                    PeerState::Ready(peer) => {
                        let t = Instant::now();
                        let r = peer.round(id);
                        let took = ms_since(t);
                        match r {
                            Ok(()) => Some(took),
                            Err(e) => {
                                *state = PeerState::Failed(format!(
                                    "round {round}: {}",
                                    first_line(&e.to_string())
                                ));
                                None
                            }
                        }
                    }
                    _ => None,
                };
                if counted {
                    peer_samples[which - 2].push(sample);
                }
            }
        }
    }
    Ok((warren, host, peer_samples))
}

/// `concurrent`: `workers` clients create+exec+delete `total` sandboxes.
pub async fn concurrent(ctx: &mut Ctx, workers: usize, total: usize) -> Result<ScenarioResult> {
    if !ctx.quick {
        // Warm-up batch, not counted.
        run_concurrent(&ctx.client, workers, workers).await?;
    }
    let (lat, wall) = run_concurrent(&ctx.client, workers, total).await?;
    let per_sec = total as f64 / wall;
    let mut s = SystemResult::new(
        "warren create+exec+delete",
        "ok".into(),
        lat.into_iter().map(Some).collect(),
    );
    s.note = Some(format!(
        "{per_sec:.1} sandboxes/s ({total} with {workers} clients in {:.2} s)",
        wall
    ));
    Ok(ScenarioResult {
        scenario: "concurrent".into(),
        status: "ok".into(),
        quick: ctx.quick,
        warmup: if ctx.quick { 0 } else { workers },
        rounds: total,
        systems: vec![s],
        targets: vec![],
        extra: json!({ "workers": workers, "total": total, "wall_s": wall, "sandboxes_per_sec": per_sec }),
    })
}

/// Returns per-sandbox latencies (ms) and wall time (s).
async fn run_concurrent(client: &Client, workers: usize, total: usize) -> Result<(Vec<f64>, f64)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                check_stop()?;
                let w = warren_round(&client, &loopback_only()).await?;
                lat.push(w.create + w.exec + w.delete);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await.context("worker panicked")? {
            Ok(l) => all.extend(l),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((all, start.elapsed().as_secs_f64()))
}
