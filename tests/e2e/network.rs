//! End-to-end: sandbox egress policies against the tests' own little
//! internet (test hosts in a network namespace, a test DNS server), through
//! the real daemon, CLI and HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod little_internet;

use std::time::{Duration, Instant};

use harness::{http_unix, Daemon};
use little_internet::{
    assert_blocked_fast, assert_reaches, exec, host_links, host_routes, host_veth, NetDaemon,
    World, OTHER, WEB, WEB2,
};

/// A daemon whose resolver asks the world's DNS server, with sandbox
/// addresses from `subnet` (each test its own).
fn daemon(subnet: &str) -> NetDaemon {
    NetDaemon::start(&World::serve_args(subnet))
}

/// The sandbox's network as `warren network ID --json` shows it.
fn network_json(d: &Daemon, id: &str) -> serde_json::Value {
    d.warren_json(&["network", id])
}

/// The interfaces inside the sandbox (from /sys/class/net).
fn sandbox_links(d: &Daemon, id: &str) -> Vec<String> {
    let o = exec(d, id, &["ls", "/sys/class/net"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let mut links: Vec<String> = o.stdout.split_whitespace().map(String::from).collect();
    links.sort();
    links
}

#[test]
fn internet_sandbox_reaches_test_hosts_by_address_and_name_and_leaves_nothing() {
    require_network_tools!();
    let _world = World::start();
    let d = daemon("10.215.1.0/24");
    let id = d.create(&[]);

    let inspect = d.warren_json(&["inspect", &id]);
    assert_eq!(inspect["network"]["mode"], "internet", "{inspect}");
    let address = inspect["network"]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {inspect}"))
        .to_string();
    assert!(address.starts_with("10.215.1."), "{address}");
    assert_eq!(network_json(&d, &id)["address"], address.as_str());
    assert_eq!(sandbox_links(&d, &id), ["eth0", "lo"]);

    assert_reaches(&d, &id, WEB, WEB);
    assert_reaches(&d, &id, "web.test", WEB);
    assert_reaches(&d, &id, "other.test", OTHER);

    assert!(host_links().contains(&host_veth(&id)), "{:?}", host_links());
    let rm = d.warren(&["rm", &id]);
    assert!(rm.status.success(), "{rm:?}");
    assert!(
        !host_links().contains(&host_veth(&id)),
        "the host veth outlived its sandbox: {:?}",
        host_links()
    );
    assert!(
        !host_routes().contains(&format!("{address} ")),
        "a route to {address} outlived its sandbox: {}",
        host_routes()
    );
}

#[test]
fn allowlist_reaches_allowed_names_and_denied_ones_fail_fast() {
    require_network_tools!();
    let _world = World::start();
    let d = daemon("10.215.2.0/24");
    let id = d.create(&["--network", "allowlist", "--allow-out", "web.test"]);
    let net = network_json(&d, &id);
    assert_eq!(net["mode"], "allowlist", "{net}");
    assert_eq!(net["allowOut"], serde_json::json!(["web.test"]), "{net}");

    assert_reaches(&d, &id, "web.test", WEB);
    assert_blocked_fast(&d, &id, "other.test");
    assert_blocked_fast(&d, &id, OTHER);
    assert_blocked_fast(&d, &id, WEB2);
}

#[test]
fn a_deny_wins_over_a_cidr_allow() {
    require_network_tools!();
    let _world = World::start();
    let d = daemon("10.215.3.0/24");
    let id = d.create(&[
        "--network",
        "allowlist",
        "--allow-out",
        "198.51.100.0/24",
        "--deny-out",
        WEB,
    ]);
    assert_reaches(&d, &id, WEB2, WEB2);
    assert_blocked_fast(&d, &id, WEB);
    assert_blocked_fast(&d, &id, OTHER);

    let id = d.create(&["--deny-out", "203.0.113.0/24"]);
    assert_eq!(network_json(&d, &id)["mode"], "internet");
    assert_reaches(&d, &id, WEB, WEB);
    assert_blocked_fast(&d, &id, OTHER);
}

#[test]
fn a_policy_change_on_a_running_sandbox_takes_effect() {
    require_network_tools!();
    let _world = World::start();
    let d = daemon("10.215.4.0/24");
    let id = d.create(&["--network", "none"]);
    assert_eq!(sandbox_links(&d, &id), ["lo"]);
    assert_eq!(network_json(&d, &id)["address"], serde_json::Value::Null);
    let o = exec(
        &d,
        &id,
        &["curl", "-sS", "--max-time", "10", "http://198.51.100.80/"],
    );
    assert_ne!(o.code, Some(0), "{o:?}");

    // none → internet
    let net = d.warren_json(&["network", &id, "--mode", "internet"]);
    assert_eq!(net["mode"], "internet", "{net}");
    assert!(net["address"].is_string(), "{net}");
    assert_reaches(&d, &id, "web.test", WEB);
    assert_reaches(&d, &id, OTHER, OTHER);

    // internet → allowlist
    d.warren_json(&[
        "network",
        &id,
        "--mode",
        "allowlist",
        "--allow-out",
        "web.test",
    ]);
    assert_reaches(&d, &id, "web.test", WEB);
    assert_blocked_fast(&d, &id, "other.test");
    assert_blocked_fast(&d, &id, OTHER);

    // allowlist → internet with a deny; the allow list is kept.
    let net = d.warren_json(&["network", &id, "--mode", "internet", "--deny-out", WEB]);
    assert_eq!(net["allowOut"], serde_json::json!(["web.test"]), "{net}");
    assert_eq!(net["denyOut"], serde_json::json!([WEB]), "{net}");
    assert_reaches(&d, &id, OTHER, OTHER);
    assert_blocked_fast(&d, &id, WEB);

    // Clearing the deny list opens it again.
    d.warren_json(&["network", &id, "--clear-deny-out"]);
    assert_reaches(&d, &id, WEB, WEB);

    // internet → none
    let net = d.warren_json(&["network", &id, "--mode", "none"]);
    assert_eq!(net["mode"], "none", "{net}");
    assert_eq!(net["address"], serde_json::Value::Null, "{net}");
    assert_eq!(sandbox_links(&d, &id), ["lo"]);
    let o = exec(
        &d,
        &id,
        &["curl", "-sS", "--max-time", "10", "http://198.51.100.80/"],
    );
    assert_ne!(o.code, Some(0), "{o:?}");

    // Every change was recorded, with the mode and lists.
    let (status, body) = http_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{id}/events"),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let changes: Vec<&serde_json::Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "network_changed")
        .collect();
    assert_eq!(changes.len(), 5, "{body}");
    assert_eq!(changes[4]["data"]["mode"], "none", "{body}");
}

#[test]
fn malformed_entries_are_refused_naming_them() {
    require_network_tools!();
    let d = daemon("10.215.5.0/24");
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"network": {"mode": "allowlist", "allowOut": ["web.test", "10.0.0.0/33"]}}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("10.0.0.0/33"), "{body}");

    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"network": {"allowOut": ["bad..name"]}}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("bad..name"), "{body}");

    let id = d.create(&["--network", "none"]);
    let (status, body) = http_unix(
        &d.socket,
        "PATCH",
        &format!("/v1/sandboxes/{id}/network"),
        Some(r#"{"allowOut": ["exa mple.com"]}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("exa mple.com"), "{body}");

    let out = d.warren(&["create", "--allow-out", "300.1.1.1/8"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("300.1.1.1/8"), "{stderr}");

    // An empty change is refused, not recorded.
    let (status, body) = http_unix(
        &d.socket,
        "PATCH",
        &format!("/v1/sandboxes/{id}/network"),
        Some("{}"),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("nothing to change"), "{body}");

    let out = d.warren(&["network", &id, "--deny-out", "10.1.2.3/99"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("10.1.2.3/99"), "{stderr}");
    // The refused change left the policy alone.
    assert_eq!(
        d.warren_json(&["network", &id])["denyOut"],
        serde_json::json!([])
    );
}

#[test]
fn the_policy_survives_a_daemon_kill_and_restart() {
    require_network_tools!();
    let _world = World::start();
    let mut d = daemon("10.215.6.0/24");
    let id = d.create(&["--network", "allowlist", "--allow-out", "web.test"]);
    let before = network_json(&d, &id);
    assert_reaches(&d, &id, "web.test", WEB);

    d.kill9();
    d.restart();

    let after = network_json(&d, &id);
    assert_eq!(after, before, "policy and address after the restart");
    assert_reaches(&d, &id, "web.test", WEB);
    assert_blocked_fast(&d, &id, "other.test");
    assert_blocked_fast(&d, &id, OTHER);
    let net = d.warren_json(&["network", &id, "--mode", "internet"]);
    assert_eq!(net["address"], before["address"], "{net}");
    assert_reaches(&d, &id, OTHER, OTHER);
}

#[test]
fn fork_children_suspend_and_resume_keep_the_policy() {
    require_network_tools!();
    let _world = World::start();
    let d = daemon("10.215.7.0/24");
    let id = d.create(&["--network", "allowlist", "--allow-out", "web.test"]);

    let fork = d.warren_json(&["fork", &id]);
    let child = fork["sandboxes"][0]["id"].as_str().unwrap().to_string();
    let net = network_json(&d, &child);
    assert_eq!(net["mode"], "allowlist", "{net}");
    assert_eq!(net["allowOut"], serde_json::json!(["web.test"]), "{net}");
    assert_ne!(net["address"], network_json(&d, &id)["address"], "{net}");
    assert_reaches(&d, &child, "web.test", WEB);
    assert_blocked_fast(&d, &child, "other.test");

    // Suspended: no interface, no address; a change is kept for the resume.
    let out = d.warren(&["suspend", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(network_json(&d, &id)["address"], serde_json::Value::Null);
    let net = d.warren_json(&["network", &id, "--allow-out", "other.test"]);
    assert_eq!(net["allowOut"], serde_json::json!(["other.test"]), "{net}");
    let out = d.warren(&["resume", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(network_json(&d, &id)["address"].is_string());
    assert_reaches(&d, &id, "other.test", OTHER);
    assert_blocked_fast(&d, &id, "web.test");
}

#[test]
fn gvisor_sandboxes_get_none_and_refuse_other_modes() {
    require_network_tools!();
    let d = daemon("10.215.8.0/24");
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"driver": "gvisor"}"#),
    )
    .unwrap();
    if status != 201 && status != 200 {
        eprintln!("skipped: no gvisor driver here ({status}: {body})");
        return;
    }
    let sandbox: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sandbox["network"]["mode"], "none", "{body}");
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"driver": "gvisor", "network": {"mode": "internet"}}"#),
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("capability_unsupported"), "{body}");
    let id = sandbox["id"].as_str().unwrap();
    let out = d.warren(&["network", id, "--mode", "allowlist"]);
    assert!(!out.status.success(), "{out:?}");
}

/// The sandbox's firewall chain name (`sb_` + its short id).
fn sandbox_chain(id: &str) -> String {
    let short: String = id
        .chars()
        .take(13)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("sb_{short}")
}

/// The daemon's nftables table as text (`nft list table …`).
fn nft_table(d: &Daemon) -> String {
    let name = std::fs::read_to_string(d.data_dir().join("network/nft-table")).unwrap();
    let mut args = vec!["list", "table"];
    args.extend(name.split_whitespace());
    let out = std::process::Command::new("nft")
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "nft {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_sandbox_whose_processes_died_refuses_changes_and_fails_without_leftovers() {
    require_network_tools!();
    let _world = World::start();
    let d = daemon("10.215.11.0/24");
    let id = d.create(&[]);
    let chain = sandbox_chain(&id);
    assert!(nft_table(&d).contains(&chain), "no chain {chain}");

    let pids = d.sandbox_pids(&id);
    assert!(!pids.is_empty());
    for pid in pids {
        // SAFETY: kill(2) on this test's sandbox processes.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.sandbox_pids(&id).is_empty() {
        assert!(Instant::now() < deadline, "the sandbox's processes stayed");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Its recorded pid is stale: no change may touch that namespace.
    let (status, body) = http_unix(
        &d.socket,
        "PATCH",
        &format!("/v1/sandboxes/{id}/network"),
        Some(r#"{"mode": "allowlist"}"#),
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("invalid_state"), "{body}");

    // The next exec finds it gone: failed, and its rules and address go.
    let o = exec(&d, &id, &["true"]);
    assert_ne!(o.code, Some(0), "{o:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.warren_json(&["inspect", &id])["state"] != "failed" {
        assert!(Instant::now() < deadline, "not failed: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let net = network_json(&d, &id);
    assert_eq!(net["address"], serde_json::Value::Null, "{net}");
    assert!(
        !nft_table(&d).contains(&chain),
        "the chain {chain} of a failed sandbox stayed"
    );
    assert!(!host_links().contains(&host_veth(&id)));
}

#[test]
fn a_template_builder_has_its_network_and_pool_claims_keep_the_members() {
    require_network_tools!();
    let _world = World::start();
    let d = daemon("10.215.10.0/24");
    // The builder may reach web.test only, and fetches from it.
    let out = d.warren(&[
        "template",
        "create",
        "netbuilt",
        "--network",
        "allowlist",
        "--allow-out",
        "web.test",
        "--setup",
        "curl -sS --connect-timeout 8 --max-time 10 http://web.test/ > /root/fetched",
        "--setup",
        "! curl -sS --connect-timeout 8 --max-time 10 http://other.test/",
    ]);
    assert!(
        out.status.success(),
        "template build: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let template = d.warren_json(&["template", "inspect", "netbuilt"]);
    assert_eq!(
        template["recipe"]["network"]["mode"], "allowlist",
        "{template}"
    );

    let pool = d.warren_json(&["pool", "create", "netbuilt", "--size", "1"]);
    assert_eq!(pool["size"], 1, "{pool}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (member, member_address) = loop {
        let ready = d
            .warren_json(&["pool", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["template"] == "netbuilt")
            .and_then(|p| p["ready"].as_u64())
            .unwrap_or(0);
        if ready >= 1 {
            let (status, body) =
                http_unix(&d.socket, "GET", "/v1/sandboxes?pool=netbuilt", None).unwrap();
            assert_eq!(status, 200, "{body}");
            let members: serde_json::Value = serde_json::from_str(&body).unwrap();
            let m = &members["sandboxes"][0];
            break (
                m["id"].as_str().unwrap().to_string(),
                m["network"]["address"].clone(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "the pool never filled: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(member_address.is_string(), "{member_address}");

    // The claim is the member, with its network: the daemon's default mode
    // (not the builder's allowlist) and its address.
    let claimed = d.warren_json(&["create", "--template", "netbuilt", "--from-pool"]);
    let id = claimed["id"].as_str().unwrap().to_string();
    assert_eq!(id, member, "{claimed}");
    assert_eq!(claimed["network"]["mode"], "internet", "{claimed}");
    assert_eq!(claimed["network"]["address"], member_address, "{claimed}");
    let net = network_json(&d, &id);
    assert_eq!(net["mode"], "internet", "{net}");
    assert_eq!(net["address"], member_address, "{net}");
    let o = exec(&d, &id, &["cat", "/root/fetched"]);
    assert_eq!(o.stdout.trim(), format!("hello from {WEB}"), "{o:?}");
    assert_reaches(&d, &id, "other.test", OTHER);

    let out = d.warren(&["pool", "rm", "netbuilt"]);
    assert!(out.status.success(), "{out:?}");
}
