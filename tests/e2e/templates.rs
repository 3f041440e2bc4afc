//! End-to-end: templates (built once, reused, rebuilt on a changed recipe,
//! failed setups cleaned up) and warm pools, through the real CLI and API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use harness::{http_unix, Daemon};
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A daemon whose warm pools are removed (with their hidden sandboxes)
/// before the harness cleans up, even when a test fails.
struct PoolDaemon(Daemon);

impl std::ops::Deref for PoolDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for PoolDaemon {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

impl Drop for PoolDaemon {
    fn drop(&mut self) {
        if let Ok((200, body)) = http_unix(&self.0.socket, "GET", "/v1/pools", None) {
            if let Ok(list) = serde_json::from_str::<Value>(&body) {
                for pool in list["pools"].as_array().cloned().unwrap_or_default() {
                    let template = pool["template"].as_str().unwrap_or_default();
                    let _ = http_unix(
                        &self.0.socket,
                        "DELETE",
                        &format!("/v1/pools/{template}"),
                        None,
                    );
                }
            }
        }
    }
}

fn start() -> PoolDaemon {
    PoolDaemon(Daemon::start())
}

/// `warren --json template create NAME ARGS…`: the NDJSON events and
/// whether the command succeeded.
fn build_json(d: &Daemon, name: &str, args: &[&str]) -> (Vec<Value>, bool) {
    let mut all = vec!["--json", "template", "create", name];
    all.extend_from_slice(args);
    let out = d.warren(&all);
    let events: Vec<Value> = text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event {l:?}: {e}")))
        .collect();
    assert!(
        !events.is_empty(),
        "no events from template create: {}",
        text(&out.stderr)
    );
    (events, out.status.success())
}

fn last_kind(events: &[Value]) -> &str {
    events.last().unwrap()["kind"].as_str().unwrap()
}

fn exec_stdout(d: &Daemon, id: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", id, "--"];
    args.extend_from_slice(cmd);
    let out = d.warren(&args);
    assert!(
        out.status.success(),
        "exec {cmd:?} failed: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every sandbox the daemon has: the listed ones and every pool's members.
fn all_sandboxes(d: &Daemon) -> Vec<Value> {
    let (status, body) = http_unix(&d.socket, "GET", "/v1/sandboxes", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let mut all: Vec<Value> = serde_json::from_str::<Value>(&body).unwrap()["sandboxes"]
        .as_array()
        .unwrap()
        .clone();
    let (_, pools) = http_unix(&d.socket, "GET", "/v1/pools", None).unwrap();
    let pools: Value = serde_json::from_str(&pools).unwrap();
    for pool in pools["pools"].as_array().unwrap() {
        all.extend(pool_members(d, pool["template"].as_str().unwrap()));
    }
    all
}

fn pool_members(d: &Daemon, template: &str) -> Vec<Value> {
    let (status, body) = http_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes?pool={template}"),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["sandboxes"]
        .as_array()
        .unwrap()
        .clone()
}

fn member_ids(d: &Daemon, template: &str) -> BTreeSet<String> {
    pool_members(d, template)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

fn pool_ready(d: &Daemon, template: &str) -> u64 {
    d.warren_json(&["pool", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["template"] == template)
        .map(|p| p["ready"].as_u64().unwrap())
        .unwrap_or(0)
}

fn wait_pool_ready(d: &Daemon, template: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pool_ready(d, template) < want {
        assert!(
            Instant::now() < deadline,
            "pool {template} did not reach {want} ready sandboxes: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that the sandbox has the greeting `SETUP_FILES` writes.
fn assert_greeting(d: &Daemon, id: &str) {
    assert_eq!(
        exec_stdout(d, id, &["cat", "/workspace/tools/greeting"]).trim(),
        "hello-from-template"
    );
}

/// A template build streamed over a raw connection, so that a test can
/// act while it runs (or drop the connection mid-build).
struct BuildStream {
    stream: std::os::unix::net::UnixStream,
    seen: Vec<u8>,
}

impl BuildStream {
    /// Posts `body` to `/v1/templates` and reads until the first setup
    /// step has been reported.
    fn start(d: &Daemon, body: &str) -> Self {
        let mut stream = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        write!(
            stream,
            "POST /v1/templates HTTP/1.1\r\nHost: warren\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut build = Self {
            stream,
            seen: Vec::new(),
        };
        build.read_until(|seen| seen.contains("\"step\""));
        build
    }

    /// Reads until `done` holds for everything read so far.
    fn read_until(&mut self, done: impl Fn(&str) -> bool) {
        let mut buf = [0u8; 4096];
        while !done(&text(&self.seen)) {
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended early: {}", text(&self.seen));
            self.seen.extend_from_slice(&buf[..n]);
        }
    }
}

const SETUP_FILES: &str = "mkdir -p /workspace/tools && echo hello-from-template > /workspace/tools/greeting && echo wrote the greeting";
const SETUP_SCRIPT: &str =
    "printf '#!/bin/sh\\necho from-script\\n' > /home/tmpl-hi && chmod +x /home/tmpl-hi";

/// The `template create` flags of the `tools` template's first recipe.
const TOOLS_RECIPE: [&str; 6] = [
    "--setup",
    SETUP_FILES,
    "--setup",
    SETUP_SCRIPT,
    "-e",
    "TOOL_MODE=fast",
];

#[test]
fn a_template_is_built_once_reused_and_rebuilt_when_its_recipe_changes() {
    require_root!();
    let d = start();
    let (events, ok) = build_json(&d, "tools", &TOOLS_RECIPE);
    assert!(ok, "{events:?}\n{}", d.log());
    assert_eq!(last_kind(&events), "done", "{events:?}");
    let steps: Vec<&Value> = events.iter().filter(|e| e["kind"] == "step").collect();
    assert_eq!(steps.len(), 2, "{events:?}");
    assert_eq!(steps[0]["index"], 0);
    assert_eq!(steps[1]["command"], SETUP_SCRIPT);
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "output"
                && e["data"].as_str().unwrap().contains("wrote the greeting")),
        "the setup output is streamed: {events:?}"
    );
    let template = &events.last().unwrap()["template"];
    assert_eq!(template["state"], "ready");
    let snapshot = template["snapshot"].as_str().unwrap().to_owned();
    let hash = template["recipeHash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);
    // No builder is left behind.
    assert!(
        all_sandboxes(&d).iter().all(|s| !s["name"]
            .as_str()
            .unwrap_or("")
            .starts_with("template-build-")),
        "a builder sandbox was left"
    );

    // Sandboxes from it see its files and its environment.
    let sandbox = d.warren_json(&["create", "--template", "tools"]);
    assert_eq!(sandbox["template"], "tools", "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_owned();
    assert_greeting(&d, &id);
    assert_eq!(
        exec_stdout(&d, &id, &["/home/tmpl-hi"]).trim(),
        "from-script"
    );
    assert_eq!(
        exec_stdout(&d, &id, &["sh", "-c", "echo $TOOL_MODE"]).trim(),
        "fast"
    );
    // Each sandbox has its own copy.
    exec_stdout(
        &d,
        &id,
        &["sh", "-c", "echo changed > /workspace/tools/greeting"],
    );
    let other = d.create(&["--template", "tools"]);
    assert_greeting(&d, &other);

    // The same recipe again: reused, nothing runs.
    let (events, ok) = build_json(&d, "tools", &TOOLS_RECIPE);
    assert!(ok);
    assert_eq!(events.len(), 1, "a reuse runs nothing: {events:?}");
    assert_eq!(last_kind(&events), "reused");
    assert_eq!(events[0]["template"]["snapshot"], snapshot.as_str());

    // A changed recipe rebuilds: new hash, new snapshot, new files.
    let (events, ok) = build_json(
        &d,
        "tools",
        &[
            "--setup",
            SETUP_FILES,
            "--setup",
            SETUP_SCRIPT,
            "--setup",
            "echo v2 > /workspace/tools/version",
            "-e",
            "TOOL_MODE=fast",
        ],
    );
    assert!(ok, "{events:?}");
    assert_eq!(last_kind(&events), "done", "{events:?}");
    let rebuilt = &events.last().unwrap()["template"];
    assert_ne!(rebuilt["recipeHash"], hash.as_str());
    let new_snapshot = rebuilt["snapshot"].as_str().unwrap().to_owned();
    assert_ne!(new_snapshot, snapshot);
    let fresh = d.create(&["--template", "tools"]);
    assert_eq!(
        exec_stdout(&d, &fresh, &["cat", "/workspace/tools/version"]).trim(),
        "v2"
    );
    // The sandbox made from the old build still has its files.
    assert_greeting(&d, &other);

    let listed = d.warren_json(&["template", "ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["snapshot"], new_snapshot.as_str());
    let removed = d.warren_json(&["template", "rm", "tools"]);
    assert_eq!(removed["name"], "tools", "{removed}");
    let out = d.warren(&["create", "--template", "tools"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("tools"), "{}", text(&out.stderr));
}

#[test]
fn a_failed_setup_names_the_command_and_leaves_no_builder() {
    require_root!();
    let d = start();
    let failing = "echo about to fail; exit 3";
    let (events, ok) = build_json(
        &d,
        "broken",
        &[
            "--setup",
            "echo first step ran",
            "--setup",
            failing,
            "--setup",
            "echo never-runs",
        ],
    );
    assert!(!ok, "a failed build exits non-zero");
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "failed", "{events:?}");
    assert_eq!(last["command"], failing);
    assert_eq!(last["exitCode"], 3);
    assert!(
        last["message"].as_str().unwrap().contains("about to fail"),
        "{last}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "step" && e["index"] == 2),
        "the build stops at the failing command: {events:?}"
    );
    assert!(
        all_sandboxes(&d).is_empty(),
        "the builder sandbox was left: {:?}",
        all_sandboxes(&d)
    );
    let template = d.warren_json(&["template", "inspect", "broken"]);
    assert_eq!(template["state"], "failed");
    let reason = template["failureReason"].as_str().unwrap();
    assert!(reason.contains(failing) && reason.contains('3'), "{reason}");
    let out = d.warren(&["create", "--template", "broken"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("failed"),
        "{}",
        text(&out.stderr)
    );

    // The text CLI shows the output live and ends with one error line.
    let out = d.warren(&["template", "create", "broken2", "--setup", failing]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("about to fail"),
        "{}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("step 1/1: echo about to fail"), "{stderr}");
    let last_line = stderr.trim().lines().last().unwrap();
    assert!(
        last_line.starts_with("error:")
            && last_line.contains("exit 3")
            && last_line.contains("code 3"),
        "{stderr}"
    );
    assert!(all_sandboxes(&d).is_empty());

    // Bad recipes are refused before anything runs.
    let out = d.warren(&["template", "create", "Bad_Name", "--setup", "true"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("name"), "{}", text(&out.stderr));
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/templates",
        Some(r#"{"name":"x","setup":["true",""]}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("setup[1]"), "{body}");
}

#[test]
fn a_client_that_disconnects_mid_build_leaves_no_builder() {
    require_root!();
    let d = start();
    let build = BuildStream::start(
        &d,
        r#"{"name":"slow","setup":["echo started; sleep 2; echo slept > /workspace/slept"]}"#,
    );
    drop(build);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let template = d.warren_json(&["template", "inspect", "slow"]);
        if template["state"] != "building" {
            assert_eq!(template["state"], "ready", "{template}");
            break;
        }
        assert!(Instant::now() < deadline, "the build never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(all_sandboxes(&d).is_empty(), "{:?}", all_sandboxes(&d));
    let id = d.create(&["--template", "slow"]);
    assert_eq!(
        exec_stdout(&d, &id, &["cat", "/workspace/slept"]).trim(),
        "slept"
    );
}

#[test]
fn a_warm_pool_hands_out_ready_sandboxes_and_refills() {
    require_root!();
    let mut d = start();
    let (events, ok) = build_json(&d, "pooled", &["--setup", SETUP_FILES]);
    assert!(ok, "{events:?}");

    // Bad pools.
    let out = d.warren(&["pool", "create", "nosuch", "--size", "2"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );
    let out = d.warren(&["pool", "create", "pooled", "--size", "0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("size"), "{}", text(&out.stderr));

    let pool = d.warren_json(&["pool", "create", "pooled", "--size", "2"]);
    assert_eq!(pool["size"], 2, "{pool}");
    let out = d.warren(&["pool", "create", "pooled", "--size", "2"]);
    assert!(!out.status.success(), "one pool per template");
    wait_pool_ready(&d, "pooled", 2);

    // Members are hidden from the normal list.
    let listed = d.warren_json(&["ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed}");
    let members = member_ids(&d, "pooled");
    assert_eq!(members.len(), 2);

    // A template with a pool cannot be deleted.
    let out = d.warren(&["template", "rm", "pooled"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("pool"), "{}", text(&out.stderr));

    // A claim hands out one of them, running, with the template's files.
    let claimed = d.warren_json(&[
        "create",
        "--template",
        "pooled",
        "--from-pool",
        "--name",
        "claimed-one",
        "-l",
        "team=a",
    ]);
    let id = claimed["id"].as_str().unwrap().to_owned();
    assert!(
        members.contains(&id),
        "{id} is not from the pool {members:?}"
    );
    assert_eq!(claimed["state"], "running");
    assert_eq!(claimed["name"], "claimed-one");
    assert_eq!(claimed["metadata"]["team"], "a");
    assert_eq!(claimed["template"], "pooled");
    assert_greeting(&d, &id);
    let listed = d.warren_json(&["ls", "-l", "team=a"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(!member_ids(&d, "pooled").contains(&id), "still pooled");

    // The pool refills.
    wait_pool_ready(&d, "pooled", 2);
    let refilled = member_ids(&d, "pooled");
    assert_eq!(refilled.len(), 2);
    assert!(!refilled.contains(&id));

    // A request the claim cannot serve is a normal create.
    let custom = d.warren_json(&["create", "--template", "pooled", "--from-pool", "-e", "X=1"]);
    let custom_id = custom["id"].as_str().unwrap();
    assert!(!refilled.contains(custom_id));
    assert_eq!(
        exec_stdout(&d, custom_id, &["sh", "-c", "echo $X"]).trim(),
        "1"
    );

    // After a daemon restart the members still running are pooled again.
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while member_ids(&d, "pooled") != refilled || pool_ready(&d, "pooled") != 2 {
        assert!(
            Instant::now() < deadline,
            "pool not recovered: {:?} vs {refilled:?}: {}",
            member_ids(&d, "pooled"),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A rebuilt template replaces the idle members: claims get the new files.
    let (events, ok) = build_json(
        &d,
        "pooled",
        &[
            "--setup",
            SETUP_FILES,
            "--setup",
            "echo v2 > /workspace/version",
        ],
    );
    assert!(ok, "{events:?}");
    assert_eq!(last_kind(&events), "done", "{events:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let refilled = loop {
        let now = member_ids(&d, "pooled");
        if now.len() == 2 && now.is_disjoint(&refilled) {
            break now;
        }
        assert!(Instant::now() < deadline, "stale members stayed: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_pool_ready(&d, "pooled", 2);
    let second = d.warren_json(&["create", "--template", "pooled", "--from-pool"]);
    let second_id = second["id"].as_str().unwrap().to_owned();
    assert!(
        refilled.contains(&second_id),
        "{second_id} not from {refilled:?}"
    );
    assert_eq!(
        exec_stdout(&d, &second_id, &["cat", "/workspace/version"]).trim(),
        "v2"
    );
    wait_pool_ready(&d, "pooled", 2);
    let refilled = member_ids(&d, "pooled");

    // Removing the pool deletes its idle members, not the claimed one.
    let out = d.warren(&["pool", "rm", "pooled"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(member_ids(&d, "pooled").is_empty());
    for member in &refilled {
        let (status, _) =
            http_unix(&d.socket, "GET", &format!("/v1/sandboxes/{member}"), None).unwrap();
        assert_eq!(status, 404, "pool member {member} survived pool rm");
        assert!(d.sandbox_pids(member).is_empty());
    }
    assert_eq!(d.warren_json(&["inspect", &id])["state"], "running");

    // Without a pool, --from-pool falls back to a normal create.
    let fallback = d.warren_json(&["create", "--template", "pooled", "--from-pool"]);
    assert_eq!(fallback["state"], "running");
    assert_greeting(&d, fallback["id"].as_str().unwrap());
}

#[test]
fn a_claim_starts_the_idle_clock_afresh() {
    require_root!();
    let d = start();
    let (events, ok) = build_json(&d, "idler", &["--setup", "true"]);
    assert!(ok, "{events:?}");
    d.warren_json(&["pool", "create", "idler", "--size", "1"]);
    wait_pool_ready(&d, "idler", 1);
    // The member idles longer than the idle timeout the claim asks for.
    std::thread::sleep(Duration::from_secs(6));
    let claimed = d.warren_json(&[
        "create",
        "--template",
        "idler",
        "--from-pool",
        "--idle-timeout",
        "4",
    ]);
    let id = claimed["id"].as_str().unwrap().to_owned();
    assert!(
        claimed["lastActivityAt"].is_string(),
        "the claim sets the activity time: {claimed}"
    );
    // The timeout task looks twice a second: a timeout counted from the
    // member's creation would have fired by now.
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = http_unix(&d.socket, "GET", &format!("/v1/sandboxes/{id}"), None).unwrap();
    assert_eq!(status, 200, "the claimed sandbox timed out at once: {body}");
    let sandbox: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sandbox["state"], "running", "{sandbox}");
    // The idle timeout still fires, counted from the claim.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) =
            http_unix(&d.socket, "GET", &format!("/v1/sandboxes/{id}"), None).unwrap();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the idle timeout never fired");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_template_stays_usable_while_rebuilt_and_after_a_failed_rebuild() {
    require_root!();
    let d = start();
    // Text output: the name on stdout once ready.
    let out = d.warren(&["template", "create", "steady", "--setup", SETUP_FILES]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim().lines().last(),
        Some("steady"),
        "{}",
        text(&out.stdout)
    );
    let snapshot = d.warren_json(&["template", "inspect", "steady"])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();

    // A slow rebuild: the template cannot be deleted meanwhile, and
    // creates use the last ready build.
    let mut build = BuildStream::start(
        &d,
        r#"{"name":"steady","setup":["echo started; sleep 3; exit 7"]}"#,
    );
    let (status, body) = http_unix(&d.socket, "DELETE", "/v1/templates/steady", None).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("building"), "{body}");
    let during = d.create(&["--template", "steady"]);
    assert_greeting(&d, &during);
    // The rebuild fails.
    // (The connection stays open: read until the outcome arrives.)
    build.read_until(|seen| seen.contains("\"failed\"") || seen.contains("\"done\""));
    assert!(
        text(&build.seen).contains("\"failed\""),
        "{}",
        text(&build.seen)
    );
    drop(build);
    let template = d.warren_json(&["template", "inspect", "steady"]);
    assert_eq!(template["state"], "failed", "{template}");
    assert_eq!(template["snapshot"], snapshot.as_str(), "{template}");
    let after = d.create(&["--template", "steady"]);
    assert_greeting(&d, &after);

    // A recipe whose builder cannot be made is refused before the stream.
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/templates",
        Some(r#"{"name":"noimage","image":"warren-no-such-image","setup":["true"]}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/templates",
        Some(r#"{"name":"badres","resources":{"memoryMb":-5},"setup":["true"]}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    let (status, _) = http_unix(&d.socket, "GET", "/v1/templates/noimage", None).unwrap();
    assert_eq!(status, 404, "nothing was stored for a refused recipe");
}
