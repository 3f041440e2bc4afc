#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Privileged tests of the host side of sandbox networking: real veth pairs,
//! routes and nftables rules. A "sandbox" is a process in its own network
//! namespace (`unshare -n sleep`); the "internet" is a test network
//! namespace on a TEST-NET-3 address (203.0.113.0/24) with an HTTP server
//! in it; DNS goes to Warren's resolver, whose upstream is a fake server
//! written here. Nothing leaves the machine. Skipped (with a printed reason)
//! when not root or when `ip`, `nft`, `nsenter`, `unshare`, `curl` or
//! `python3` is missing.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Harness;
use warren_runtime::network::{
    compile, host_interface, short_id, table_name, CompiledPolicy, HostNetwork, Ipv4Net, NetMode,
    NetworkConfig,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why these tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in [
        "ip", "nft", "nsenter", "unshare", "curl", "python3", "sleep",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

macro_rules! require_prerequisites {
    () => {
        if let Some(reason) = missing_prerequisite() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "`{cmd}` failed: {out}");
    out
}

/// Everything a test made, removed on drop (also when the test fails).
#[derive(Default)]
struct Cleanup {
    children: Vec<Child>,
    /// `ip rule` selectors to delete.
    rules: Vec<String>,
    netns: Vec<String>,
    links: Vec<String>,
    tables: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for rule in &self.rules {
            let _ = sh(&format!("ip rule del {rule}"));
        }
        for ns in &self.netns {
            let _ = sh(&format!(
                "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}"
            ));
        }
        for link in &self.links {
            let _ = sh(&format!("ip link del dev {link} 2>/dev/null"));
        }
        for table in &self.tables {
            let _ = sh(&format!("nft delete table inet {table} 2>/dev/null"));
        }
    }
}

/// The test's "internet": a namespace holding `addr` with an HTTP server on
/// `port`, reached from the host through a veth.
struct Internet {
    /// Its network namespace and the host side of its veth.
    ns: String,
    host_if: String,
    addr: Ipv4Addr,
    /// The host side's address (a host address, which sandboxes must not reach).
    host_addr: Ipv4Addr,
    port: u16,
    /// A private (RFC 1918) address of the same host, when free.
    private: Option<Ipv4Addr>,
}

fn unique() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn wait_for_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn make_internet(cleanup: &mut Cleanup) -> Internet {
    let tag = unique();
    let ns = format!("wt-{tag}");
    let host_if = format!("wti{tag}");
    must(&format!("ip netns add {ns}"));
    cleanup.netns.push(ns.clone());
    must(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {ns}"
    ));
    cleanup.links.push(host_if.clone());
    must(&format!("ip link set {host_if} up"));
    // A free /30 of TEST-NET-3: the host route is the lock (EEXIST = taken).
    let mut block = None;
    for b in (0..64u8).rev() {
        let base = Ipv4Addr::new(203, 0, 113, b * 4);
        if sh(&format!("ip route add {base}/30 dev {host_if}")).0 {
            block = Some(b * 4);
            break;
        }
    }
    let b = block.expect("a free /30 in 203.0.113.0/24");
    let host_addr = Ipv4Addr::new(203, 0, 113, b + 1);
    let addr = Ipv4Addr::new(203, 0, 113, b + 2);
    must(&format!("ip addr add {host_addr}/32 dev {host_if}"));
    let private_addr = Ipv4Addr::new(172, 30, 113, b + 2);
    let private = sh(&format!("ip route add {private_addr}/32 dev {host_if}"))
        .0
        .then(|| {
            must(&format!("ip -n {ns} addr add {private_addr}/32 dev eth0"));
            private_addr
        });
    must(&format!(
        "ip -n {ns} link set lo up && ip -n {ns} link set eth0 up && \
         ip -n {ns} addr add {addr}/30 dev eth0 && \
         ip -n {ns} route add default via {host_addr}"
    ));
    let port = 18080;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "hello from the test internet\n",
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-m", "http.server"])
        .args([&port.to_string(), "--bind", "0.0.0.0"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cleanup.children.push(child);
    wait_for_tcp(SocketAddr::from((addr, port)));
    cleanup.dirs.push(dir);
    Internet {
        ns,
        host_if,
        addr,
        host_addr,
        port,
        private,
    }
}

/// A "sandbox": a process in its own network namespace, which (like a
/// real sandbox's launch) turns IPv6 off for interfaces added later.
fn make_sandbox(cleanup: &mut Cleanup) -> i32 {
    let child = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; exec sleep 600",
        ])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    cleanup.children.push(child);
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) {
            if ns != own && comm.trim() == "sleep" {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "unshare -n did not happen");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_sandbox(cleanup: &mut Cleanup, pid: i32) {
    if let Some(i) = cleanup.children.iter().position(|c| c.id() as i32 == pid) {
        let mut child = cleanup.children.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// curl from inside the sandbox: its exit code (0 ok, 7 refused, 28 timeout).
async fn curl_in(pid: i32, url: &str) -> i32 {
    let out = tokio::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "curl",
            "-sS",
            "-o",
            "/dev/null",
        ])
        .args(["--connect-timeout", "5", "--max-time", "10", url])
        .output()
        .await
        .unwrap();
    out.status.code().unwrap_or(-1)
}

async fn start_network(
    cleanup: &mut Cleanup,
    subnet: &str,
    upstream: Vec<SocketAddr>,
    instance: &str,
    state: &std::path::Path,
) -> std::sync::Arc<HostNetwork> {
    cleanup.tables.push(table_name(instance));
    HostNetwork::start(NetworkConfig {
        subnet: subnet.parse().unwrap(),
        dns_upstream: upstream,
        instance: instance.into(),
        state_dir: state.to_path_buf(),
    })
    .await
    .unwrap()
}

fn policy(mode: NetMode, allow: &[&str], deny: &[&str]) -> CompiledPolicy {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    let deny: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
    compile(mode, &allow, &deny).unwrap()
}

/// A /24 for a test's daemon that overlaps no host route made by something
/// else than Warren (`HostNetwork::start` refuses those). Call once per test.
fn test_subnet(n: u32) -> String {
    let routes: Vec<Ipv4Net> = {
        let out = must("ip -j -4 route show");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["dev"].as_str().unwrap_or_default().starts_with("wv"))
            .filter_map(|r| {
                let dst = r["dst"].as_str()?;
                let dst = if dst.contains('/') {
                    dst.to_owned()
                } else {
                    format!("{dst}/32")
                };
                dst.parse().ok()
            })
            .collect()
    };
    let first = (std::process::id() * 8 + n) % 256;
    (0..256)
        .map(|k| format!("10.254.{}.0/24", (first + k * 8) % 256))
        .find(|candidate| {
            let c: Ipv4Net = candidate.parse().unwrap();
            !routes.iter().any(|r| {
                let prefix = r.prefix.min(c.prefix);
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix))
                };
                u32::from(r.addr) & mask == u32::from(c.addr) & mask
            })
        })
        .expect("a free /24 in 10.254.0.0/16")
}

/// Places a host at 169.254.169.254 (cloud metadata) in the test internet,
/// reached by policy routing from `subnet` only (the host's own route to
/// that address stays as it is). Without the always-blocked rule a sandbox
/// would reach it: checked with `ip route get` from the sandbox's address.
fn place_metadata_host(cleanup: &mut Cleanup, net: &Internet, subnet: &str) {
    let c: Ipv4Net = subnet.parse().unwrap();
    let table = 31000 + u32::from(c.addr.octets()[2]);
    must(&format!(
        "ip -n {ns} addr add 169.254.169.254/32 dev eth0",
        ns = net.ns
    ));
    must(&format!(
        "ip route replace 169.254.169.254/32 dev {} table {table}",
        net.host_if
    ));
    let rule = format!("from {subnet} to 169.254.169.254/32 lookup {table} priority 900");
    must(&format!("ip rule add {rule}"));
    cleanup.rules.push(rule);
}

/// The host interface a packet from `addr` (arriving on `iif`) to the
/// metadata address is routed out of.
fn metadata_route(addr: Ipv4Addr, iif: &str) -> String {
    must(&format!(
        "ip route get 169.254.169.254 from {addr} iif {iif}"
    ))
}

fn host_addresses() -> Vec<Ipv4Addr> {
    let out = must("ip -j -4 addr show");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect()
}

fn nft_has(table: &str, kind: &str, name: &str) -> bool {
    let (ok, out) = sh(&format!("nft -j list table inet {table}"));
    if !ok {
        return false;
    }
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|item| item[kind]["name"].as_str() == Some(name))
}

/// The conntrack mark a sandbox chain sets (its policy generation).
fn chain_mark(table: &str, chain: &str) -> Option<u64> {
    let out = must(&format!("nft -j list chain inet {table} {chain}"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["nftables"]
        .as_array()?
        .iter()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .find_map(|expr| expr["mangle"]["value"].as_u64())
}

fn route_exists(addr: Ipv4Addr) -> bool {
    let out = must(&format!("ip -j -4 route show {addr}/32"));
    out.trim() != "[]" && !out.trim().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_apply_fail_fast_and_change_live() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let net = make_internet(&mut cleanup);
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let subnet_text = test_subnet(0);
    place_metadata_host(&mut cleanup, &net, &subnet_text);
    let hn = start_network(&mut cleanup, &subnet_text, vec![], &instance, state.path()).await;
    let subnet: Ipv4Net = subnet_text.parse().unwrap();
    assert_eq!(
        std::fs::read_to_string(state.path().join("resolv.conf")).unwrap(),
        format!("nameserver {}\n", hn.gateway())
    );
    let pid = make_sandbox(&mut cleanup);
    let web = format!("http://{}:{}/", net.addr, net.port);

    // internet: reaches the test internet.
    let addr = hn
        .apply(
            "netsbx1aaaaaaaaaaaaaa",
            pid,
            &policy(NetMode::Internet, &[], &[]),
        )
        .await
        .unwrap()
        .expect("an address");
    assert!(
        subnet.contains(addr) && addr != hn.gateway(),
        "{addr} in {subnet}"
    );
    assert!(route_exists(addr), "host route to {addr}");
    assert_eq!(curl_in(pid, &web).await, 0, "internet mode reaches {web}");
    // Applying the same policy again changes nothing.
    let again = hn
        .apply(
            "netsbx1aaaaaaaaaaaaaa",
            pid,
            &policy(NetMode::Internet, &[], &[]),
        )
        .await
        .unwrap();
    assert_eq!(again, Some(addr));
    assert_eq!(curl_in(pid, &web).await, 0);

    // allowlist without that address: refused at once (7), not a timeout (28).
    hn.apply(
        "netsbx1aaaaaaaaaaaaaa",
        pid,
        &policy(NetMode::Allowlist, &[], &[]),
    )
    .await
    .unwrap();
    assert_eq!(curl_in(pid, &web).await, 7, "allowlist without the address");

    // allowlist with its network: reached.
    let block = format!("{}/30", Ipv4Addr::from(u32::from(net.addr) & !3));
    hn.apply(
        "netsbx1aaaaaaaaaaaaaa",
        pid,
        &policy(NetMode::Allowlist, &[&block], &[]),
    )
    .await
    .unwrap();
    assert_eq!(curl_in(pid, &web).await, 0, "allowOut {block}");

    // denyOut wins over an allowOut CIDR.
    let single = net.addr.to_string();
    hn.apply(
        "netsbx1aaaaaaaaaaaaaa",
        pid,
        &policy(NetMode::Allowlist, &[&block], &[&single]),
    )
    .await
    .unwrap();
    assert_eq!(
        curl_in(pid, &web).await,
        7,
        "denyOut {single} over allowOut {block}"
    );
    hn.apply(
        "netsbx1aaaaaaaaaaaaaa",
        pid,
        &policy(NetMode::Internet, &[], &[&single]),
    )
    .await
    .unwrap();
    assert_eq!(curl_in(pid, &web).await, 7, "denyOut in internet mode");

    // The host: its own addresses, the gateway's other ports, its loopback.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
    let lo_port = loopback.local_addr().unwrap().port();
    hn.apply(
        "netsbx1aaaaaaaaaaaaaa",
        pid,
        &policy(NetMode::Internet, &[], &[]),
    )
    .await
    .unwrap();
    assert_eq!(curl_in(pid, &web).await, 0, "internet again after the deny");
    let mut targets = host_addresses();
    targets.push(hn.gateway());
    targets.push(net.host_addr);
    for host in targets {
        let code = curl_in(pid, &format!("http://{host}:{host_port}/")).await;
        assert_ne!(code, 0, "host address {host} reachable from the sandbox");
        if !host.is_loopback() {
            assert_eq!(code, 7, "host address {host}: fail fast");
        }
    }
    let code = curl_in(pid, &format!("http://127.0.0.1:{lo_port}/")).await;
    assert_ne!(code, 0, "the host's 127.0.0.1 listener reachable");
    // Link-local (cloud metadata, a real host here) and the sandbox
    // subnet: rejected.
    let route = metadata_route(addr, &host_interface("netsbx1aaaaaaaaaaaaaa"));
    assert!(
        route.contains(&net.host_if),
        "metadata host not routed: {route}"
    );
    for blocked in ["169.254.169.254", &hn.gateway().to_string()] {
        let code = curl_in(pid, &format!("http://{blocked}:{}/", net.port)).await;
        assert_eq!(code, 7, "{blocked}");
    }
    drop((listener, loopback));

    // Private ranges: blocked unless an allowOut CIDR allows them; the
    // Warren subnet and the gateway stay blocked even then.
    match net.private {
        Some(private) => {
            let url = format!("http://{private}:{}/", net.port);
            assert_eq!(
                curl_in(pid, &url).await,
                7,
                "private {private} in internet mode"
            );
            hn.apply(
                "netsbx1aaaaaaaaaaaaaa",
                pid,
                &policy(NetMode::Internet, &["172.16.0.0/12", "10.0.0.0/8"], &[]),
            )
            .await
            .unwrap();
            assert_eq!(
                curl_in(pid, &url).await,
                0,
                "private {private} allowed by allowOut"
            );
            let gw = format!("http://{}:{}/", hn.gateway(), net.port);
            assert_eq!(curl_in(pid, &gw).await, 7, "gateway despite allowOut 10/8");
        }
        None => eprintln!("note: no free private test address; private-range checks skipped"),
    }

    // none: the interface goes, nothing is reachable.
    let none = hn
        .apply(
            "netsbx1aaaaaaaaaaaaaa",
            pid,
            &policy(NetMode::None, &[], &[]),
        )
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_ne!(curl_in(pid, &web).await, 0);
    assert!(!route_exists(addr));
    // And back: internet again works.
    hn.apply(
        "netsbx1aaaaaaaaaaaaaa",
        pid,
        &policy(NetMode::Internet, &[], &[]),
    )
    .await
    .unwrap();
    assert_eq!(curl_in(pid, &web).await, 0, "none → internet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_leaves_no_interface_route_chain_or_set() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let hn = start_network(
        &mut cleanup,
        &test_subnet(1),
        vec![],
        &instance,
        state.path(),
    )
    .await;
    let table = table_name(&instance);
    let pid = make_sandbox(&mut cleanup);
    let id = "netsbx2bbbbbbbbbbbbbb";
    let ifname = host_interface(id);
    // A pid in the host's own namespace (a stale pid) is refused before
    // anything changes: the host's default route stays as it is.
    let default_route = must("ip -j -4 route show default");
    let own = i32::try_from(std::process::id()).unwrap();
    let err = hn
        .apply(id, own, &policy(NetMode::Internet, &[], &[]))
        .await
        .expect_err("apply into the host's namespace");
    assert!(
        err.to_string().contains("host's network namespace"),
        "{err}"
    );
    assert_eq!(must("ip -j -4 route show default"), default_route);
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&ifname)
        .exists());
    assert!(!nft_has(&table, "chain", &format!("sb_{}", short_id(id))));
    assert_eq!(hn.address_of(id), None);
    let addr = hn
        .apply(
            id,
            pid,
            &policy(NetMode::Allowlist, &["198.51.100.0/24"], &[]),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(std::path::Path::new("/sys/class/net")
        .join(&ifname)
        .exists());
    assert!(nft_has(&table, "chain", &format!("sb_{}", short_id(id))));
    assert!(nft_has(
        &table,
        "set",
        &format!("resolved_{}", short_id(id))
    ));
    // Sandbox side: eth0 with S/32, default route via G, no IPv6 address.
    let inside = must(&format!("nsenter -t {pid} -n ip -j addr show dev eth0"));
    assert!(
        inside.contains(&format!("\"local\":\"{addr}\"")),
        "{inside}"
    );
    assert!(!inside.contains("inet6"), "eth0 has IPv6: {inside}");
    let routes = must(&format!("nsenter -t {pid} -n ip -j route show default"));
    assert!(routes.contains(&hn.gateway().to_string()), "{routes}");

    hn.detach(id).await.unwrap();
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&ifname)
        .exists());
    assert!(!route_exists(addr));
    assert!(!nft_has(&table, "chain", &format!("sb_{}", short_id(id))));
    assert!(!nft_has(
        &table,
        "set",
        &format!("resolved_{}", short_id(id))
    ));
    let map = must(&format!("nft -j list map inet {table} sandboxes"));
    assert!(!map.contains(&ifname), "{map}");
    let set = must(&format!("nft -j list set inet {table} ifaces"));
    assert!(!set.contains(&ifname), "{set}");
    let (has_eth0, _) = sh(&format!("nsenter -t {pid} -n ip link show dev eth0"));
    assert!(!has_eth0);
    // Detaching again is fine.
    hn.detach(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_addresses_and_drops_chains_of_gone_sandboxes() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let net = make_internet(&mut cleanup);
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let table = table_name(&instance);
    let web = format!("http://{}:{}/", net.addr, net.port);
    let kept = make_sandbox(&mut cleanup);
    let gone = make_sandbox(&mut cleanup);
    let subnet = test_subnet(2);
    place_metadata_host(&mut cleanup, &net, &subnet);
    let first = start_network(&mut cleanup, &subnet, vec![], &instance, state.path()).await;
    let addr = first
        .apply(
            "netsbx3keptcccccccccc",
            kept,
            &policy(NetMode::Internet, &[], &[]),
        )
        .await
        .unwrap()
        .unwrap();
    first
        .apply(
            "netsbx3gonecccccccccc",
            gone,
            &policy(NetMode::Internet, &[], &[]),
        )
        .await
        .unwrap();
    drop(first);
    let kept_chain = format!("sb_{}", short_id("netsbx3keptcccccccccc"));
    let mark = chain_mark(&table, &kept_chain).expect("a conntrack mark in the chain");
    // While the daemon is down, sandboxes stay filtered by their chains.
    assert_eq!(curl_in(kept, &web).await, 0);
    let route = metadata_route(addr, &host_interface("netsbx3keptcccccccccc"));
    assert!(
        route.contains(&net.host_if),
        "metadata host not routed: {route}"
    );
    let metadata = format!("http://169.254.169.254:{}/", net.port);
    assert_eq!(curl_in(kept, &metadata).await, 7);
    kill_sandbox(&mut cleanup, gone);
    // The kernel tears the namespace (and the veth) down asynchronously.
    let gone_if =
        std::path::Path::new("/sys/class/net").join(host_interface("netsbx3gonecccccccccc"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gone_if.exists() {
        assert!(Instant::now() < deadline, "veth of a killed sandbox stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = start_network(&mut cleanup, &subnet, vec![], &instance, state.path()).await;
    assert!(
        !nft_has(
            &table,
            "chain",
            &format!("sb_{}", short_id("netsbx3gonecccccccccc"))
        ),
        "stale chain kept"
    );
    assert!(nft_has(
        &table,
        "chain",
        &format!("sb_{}", short_id("netsbx3keptcccccccccc"))
    ));
    let again = second
        .apply(
            "netsbx3keptcccccccccc",
            kept,
            &policy(NetMode::Allowlist, &[], &[]),
        )
        .await
        .unwrap();
    assert_eq!(again, Some(addr), "the address survives a restart");
    assert_eq!(
        chain_mark(&table, &kept_chain),
        Some(mark),
        "a restart's re-apply keeps the generation (cuts no connection)"
    );
    assert_eq!(curl_in(kept, &web).await, 7);
    second
        .apply(
            "netsbx3keptcccccccccc",
            kept,
            &policy(NetMode::Internet, &[], &[]),
        )
        .await
        .unwrap();
    assert_eq!(curl_in(kept, &web).await, 0);
}

/// The names a fake upstream was asked, in order.
type Asked = Arc<Mutex<Vec<String>>>;

/// A fake upstream DNS server: `web.test` → `answer` (TTL 1 s: the
/// firewall's minimum decides how long it stays open), anything else
/// NXDOMAIN. Records the names it is asked.
async fn fake_upstream(answer: Ipv4Addr) -> (SocketAddr, tokio::task::JoinHandle<()>, Asked) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let asked: Asked = Arc::default();
    let record = Arc::clone(&asked);
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let q = &buf[..n];
            if n < 12 {
                continue;
            }
            // The question: labels up to the root, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).to_lowercase());
                i += 1 + len;
            }
            let qend = i + 5;
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let name = labels.join(".");
            record.lock().unwrap().push(name.clone());
            let hit = name == "web.test" && qtype == 1;
            let mut r = Vec::new();
            r.extend_from_slice(&q[0..2]);
            r.extend_from_slice(&[0x81, if name == "web.test" { 0x80 } else { 0x83 }]);
            r.extend_from_slice(&[0, 1, 0, u8::from(hit), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..qend]);
            if hit {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                r.extend_from_slice(&answer.octets());
            }
            let _ = sock.send_to(&r, from).await;
        }
    });
    (addr, task, asked)
}

/// Asks `name` (type A) from inside the sandbox, to an arbitrary server
/// address on port 53 (the firewall redirects it to Warren's resolver).
/// Returns (rcode, first address).
async fn resolve_in(pid: i32, name: &str) -> (u8, Option<Ipv4Addr>) {
    let script = format!(
        r#"
import socket, struct
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in "{name}".split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("192.0.2.53", 53))
r = s.recv(1500)
an = struct.unpack(">H", r[6:8])[0]
print(r[3] & 15, ".".join(map(str, r[-4:])) if an else "-")
"#
    );
    let out = tokio::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "python3", "-c", &script])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "DNS query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut words = text.split_whitespace();
    let rcode = words.next().unwrap().parse().unwrap();
    let addr = words.next().and_then(|w| w.parse().ok());
    (rcode, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_names_open_the_firewall_in_allowlist_mode() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let net = make_internet(&mut cleanup);
    let (upstream, upstream_task, _) = fake_upstream(net.addr).await;
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let table = table_name(&instance);
    let hn = start_network(
        &mut cleanup,
        &test_subnet(3),
        vec![upstream],
        &instance,
        state.path(),
    )
    .await;
    let pid = make_sandbox(&mut cleanup);
    let id = "netsbx4dnsdddddddddd";
    let web = format!("http://{}:{}/", net.addr, net.port);
    hn.apply(id, pid, &policy(NetMode::Allowlist, &["web.test"], &[]))
        .await
        .unwrap();
    assert_eq!(curl_in(pid, &web).await, 7, "not resolved yet");
    let (rcode, answer) = resolve_in(pid, "other.test").await;
    assert_eq!(
        (rcode, answer),
        (5, None),
        "names outside the allowlist: REFUSED"
    );
    let (rcode, answer) = resolve_in(pid, "web.test").await;
    assert_eq!((rcode, answer), (0, Some(net.addr)));
    let set = must(&format!(
        "nft -j list set inet {table} resolved_{}",
        short_id(id)
    ));
    assert!(set.contains(&net.addr.to_string()), "{set}");
    assert_eq!(
        curl_in(pid, &web).await,
        0,
        "a resolved address is reachable"
    );
    // A policy change forgets what the old policy resolved.
    hn.apply(id, pid, &policy(NetMode::Allowlist, &["other.test"], &[]))
        .await
        .unwrap();
    assert_eq!(curl_in(pid, &web).await, 7, "old resolutions are dropped");
    upstream_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_sandbox_resolves_through_warren_and_reaches_allowed_names() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let net = make_internet(&mut cleanup);
    let (upstream, upstream_task, _) = fake_upstream(net.addr).await;
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let hn = start_network(
        &mut cleanup,
        &test_subnet(4),
        vec![upstream],
        &instance,
        state.path(),
    )
    .await;
    let resolv = warren_runtime::network::resolv_conf_path(state.path());
    let h = Harness::with_config(|cfg| cfg.resolv_conf = Some(resolv.clone()));
    let id = "netsbx5nsdriverrrrrrr";
    let info = h.create(&h.spec(id)).await;
    let (code, out, err) = h.sh(id, "cat /etc/resolv.conf").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("nameserver {}\n", hn.gateway()));
    let pid = warren_runtime::Driver::network_namespace_pid(&h.driver, &info).unwrap();
    hn.apply(id, pid, &policy(NetMode::Allowlist, &["web.test"], &[]))
        .await
        .unwrap()
        .unwrap();
    let port = net.port;
    let (code, out, err) = h
        .sh(
            id,
            &format!("curl -sS --connect-timeout 5 http://web.test:{port}/"),
        )
        .await;
    assert_eq!(code, 0, "curl by name inside the sandbox: {out}{err}");
    assert!(out.contains("hello from the test internet"), "{out}");
    let (code, _, err) = h
        .sh(id, "curl -sS --connect-timeout 5 http://other.test:80/")
        .await;
    assert_eq!(
        code, 6,
        "a name outside the allowlist does not resolve: {err}"
    );
    hn.detach(id).await.unwrap();
    h.destroy(id).await;
    upstream_task.abort();
}

/// An image layer made of busybox (`/bin/sh`, `/bin/cat`) plus `etc`
/// entries, under the harness's data directory (reachable by sandbox ids),
/// owned by the sandbox's root like unpacked image layers.
fn busybox_layer(h: &Harness, name: &str, etc: impl FnOnce(&std::path::Path)) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = h.data.path().join(name);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    std::fs::set_permissions(
        dir.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for applet in ["sh", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    etc(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Owned by the sandbox's root, like unpacked image layers.
    let base = warren_runtime::NamespaceConfig::new("/unused").id_map_base;
    must(&format!("chown -hR {base}:{base} {}", dir.display()));
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_resolv_conf_symlinks_are_replaced_never_followed() {
    require_prerequisites!();
    if !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("skipping: /bin/busybox missing (Debian package busybox-static)");
        return;
    }
    let mut cleanup = Cleanup::default();
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let hn = start_network(
        &mut cleanup,
        &test_subnet(5),
        vec![],
        &instance,
        state.path(),
    )
    .await;
    let resolv = warren_runtime::network::resolv_conf_path(state.path());
    let h = Harness::with_config(|cfg| cfg.resolv_conf = Some(resolv.clone()));
    // A host file the image's symlink points at: must stay untouched.
    let outside = h.data.path().join("outside-resolv.conf");
    std::fs::write(&outside, "nameserver 192.0.2.99\n").unwrap();
    let expected = format!("nameserver {}\n", hn.gateway());

    let symlinked = busybox_layer(&h, "layer-symlink", |dir| {
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("etc/resolv.conf")).unwrap();
    });
    let no_etc = busybox_layer(&h, "layer-no-etc", |_| {});
    let etc_link = busybox_layer(&h, "layer-etc-link", |dir| {
        std::os::unix::fs::symlink(h.data.path(), dir.join("etc")).unwrap();
    });
    for (id, layer) in [
        ("netsbx6symlinkkkkkkk", &symlinked),
        ("netsbx6noetcccccccccc", &no_etc),
    ] {
        let mut spec = h.spec(id);
        spec.image = "test".into();
        spec.layers = vec![layer.clone()];
        spec.workdir = "/".into();
        h.create(&spec).await;
        let (code, out, err) = h.sh(id, "cat /etc/resolv.conf").await;
        assert_eq!(code, 0, "{id}: {err}");
        assert_eq!(out, expected, "{id}");
        let (code, _, _) = h.sh(id, "echo x > /etc/resolv.conf").await;
        assert_ne!(code, 0, "{id}: resolv.conf is read-only");
        h.destroy(id).await;
    }
    // /etc itself a symlink (out of the root): no bind at all.
    let id = "netsbx6etclinkkkkkkkk";
    let mut spec = h.spec(id);
    spec.image = "test".into();
    spec.layers = vec![etc_link];
    spec.workdir = "/".into();
    h.create(&spec).await;
    h.destroy(id).await;
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "nameserver 192.0.2.99\n",
        "the host file behind the image's symlink changed"
    );
    assert!(
        std::fs::symlink_metadata(symlinked.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the image layer itself is untouched"
    );
    assert!(!h.data.path().join("resolv.conf").exists());
}

/// Sends, from inside the sandbox `pid`, one hand-built UDP DNS query for
/// `name` with source address `src` (a raw socket with IP_HDRINCL, as a
/// sandbox with CAP_NET_RAW can) to `dst:53`.
async fn send_raw_dns(pid: i32, src: Ipv4Addr, dst: Ipv4Addr, name: &str) {
    let script = format!(
        r#"
import socket, struct
src, dst, name = "{src}", "{dst}", "{name}"
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
udp = struct.pack(">HHHH", 40053, 53, 8 + len(q), 0) + q
def csum(b):
    s = sum(struct.unpack("!10H", b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack(">H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, (dst, 0))
"#
    );
    let out = tokio::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "python3", "-c", &script])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "raw send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_asked(asked: &Asked, name: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if asked.lock().unwrap().iter().any(|n| n == name) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_cannot_spoof_each_other_and_the_lan_cannot_use_the_resolver() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let net = make_internet(&mut cleanup);
    let (upstream, upstream_task, asked) = fake_upstream(net.addr).await;
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let hn = start_network(
        &mut cleanup,
        &test_subnet(6),
        vec![upstream],
        &instance,
        state.path(),
    )
    .await;
    let victim = make_sandbox(&mut cleanup);
    let attacker = make_sandbox(&mut cleanup);
    let internet = policy(NetMode::Internet, &[], &[]);
    let victim_addr = hn
        .apply("netsbx7victimmmmmmmm", victim, &internet)
        .await
        .unwrap()
        .unwrap();
    let attacker_addr = hn
        .apply("netsbx7attackerrrrrr", attacker, &internet)
        .await
        .unwrap()
        .unwrap();
    let anywhere = Ipv4Addr::new(192, 0, 2, 53);
    // Control: the same raw packet with the sender's own address is
    // resolved (so the spoofed one below is really sent and really checked).
    send_raw_dns(attacker, attacker_addr, anywhere, "own-source.test").await;
    assert!(
        wait_asked(&asked, "own-source.test", Duration::from_secs(5)).await,
        "a raw query with the sandbox's own address was not resolved: {:?}",
        asked.lock().unwrap()
    );
    // Another sandbox's source address: dropped before the resolver.
    send_raw_dns(attacker, victim_addr, anywhere, "spoofed.test").await;
    send_raw_dns(attacker, victim_addr, hn.gateway(), "spoofed.test").await;
    assert!(
        !wait_asked(&asked, "spoofed.test", Duration::from_secs(2)).await,
        "a query spoofing another sandbox's address reached the resolver"
    );
    // The LAN (here: the test internet, whose route to the host is its
    // veth) cannot use the resolver, though it listens on 0.0.0.0.
    let script = format!(
        r#"
import socket, struct
q = struct.pack(">HHHHHH", 0x4343, 0x0100, 1, 0, 0, 0) + b"\x03lan\x04test\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(q, ("{host}", {port}))
try:
    s.recv(1500)
    print("answered")
except socket.timeout:
    print("silent")
"#,
        host = net.host_addr,
        port = hn.resolver_port()
    );
    let out = must(&format!(
        "ip netns exec {} python3 -c '{}'",
        net.ns,
        script.replace('\'', "'\\''")
    ));
    assert_eq!(out.trim(), "silent", "a LAN host used the resolver");
    assert!(!asked.lock().unwrap().iter().any(|n| n == "lan.test"));
    upstream_task.abort();
}

/// A TCP echo server on `port` in the test internet.
fn start_echo_server(cleanup: &mut Cleanup, net: &Internet, port: u16) {
    let script = format!(
        r#"
import socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {port}))
srv.listen()
def echo(c):
    while True:
        d = c.recv(100)
        if not d:
            break
        c.sendall(d)
while True:
    c, _ = srv.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"#
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &net.ns, "python3", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cleanup.children.push(child);
    wait_for_tcp(SocketAddr::from((net.addr, port)));
}

/// A client in the sandbox holding one TCP connection: each line written
/// to it is sent, and the reply (or the error) comes back as a line.
struct Conversation {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Conversation {
    async fn open(pid: i32, to: SocketAddr) -> Conversation {
        use tokio::io::AsyncBufReadExt;
        let script = format!(
            r#"
import socket, sys
s = socket.create_connection(("{ip}", {port}), timeout=5)
print("connected", flush=True)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        r = s.recv(100)
        print(r.decode().strip() if r else "closed", flush=True)
    except Exception as e:
        print("error", type(e).__name__, flush=True)
"#,
            ip = to.ip(),
            port = to.port()
        );
        let mut child = tokio::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut c = Conversation {
            child,
            stdin,
            stdout,
        };
        assert_eq!(c.line().await, "connected");
        c
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.stdout.next_line())
            .await
            .expect("the client answers")
            .unwrap()
            .unwrap_or_else(|| "client exited".into())
    }

    async fn say(&mut self, word: &str) -> String {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .unwrap();
        self.line().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_resolved_addresses_outlive_their_elements_until_the_policy_changes() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let net = make_internet(&mut cleanup);
    let echo_port = 18081;
    start_echo_server(&mut cleanup, &net, echo_port);
    let (upstream, upstream_task, _) = fake_upstream(net.addr).await;
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let hn = start_network(
        &mut cleanup,
        &test_subnet(7),
        vec![upstream],
        &instance,
        state.path(),
    )
    .await;
    let element_timeout = Duration::from_secs(3);
    hn.set_min_resolved_timeout(element_timeout);
    let pid = make_sandbox(&mut cleanup);
    let id = "netsbx8markkkkkkkkkk";
    hn.apply(id, pid, &policy(NetMode::Allowlist, &["web.test"], &[]))
        .await
        .unwrap();
    let (rcode, answer) = resolve_in(pid, "web.test").await;
    let resolved_at = Instant::now();
    assert_eq!((rcode, answer), (0, Some(net.addr)));
    let mut conversation = Conversation::open(pid, SocketAddr::from((net.addr, echo_port))).await;
    assert!(
        resolved_at.elapsed() < element_timeout,
        "the connection took too long to open for this test"
    );
    assert_eq!(conversation.say("one").await, "one");
    tokio::time::sleep(
        (element_timeout + Duration::from_millis(1500)).saturating_sub(resolved_at.elapsed()),
    )
    .await;
    // The element is gone: a new connection is refused...
    let web = format!("http://{}:{}/", net.addr, net.port);
    assert_eq!(curl_in(pid, &web).await, 7, "the resolved element expired");
    // ...but the connection opened through it lives on.
    assert_eq!(
        conversation.say("two").await,
        "two",
        "cut when its element expired"
    );
    // A policy change (a new generation) cuts it.
    hn.apply(id, pid, &policy(NetMode::Allowlist, &["other.test"], &[]))
        .await
        .unwrap();
    let reply = conversation.say("three").await;
    assert_ne!(reply, "three", "a policy change kept an old connection");
    let _ = conversation.child.kill().await;
    upstream_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_to_private_addresses_open_nothing() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let net = make_internet(&mut cleanup);
    let Some(private) = net.private else {
        eprintln!("skipping: no free private test address");
        return;
    };
    // DNS rebinding: an allowed name answers with a LAN address.
    let (upstream, upstream_task, _) = fake_upstream(private).await;
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let hn = start_network(
        &mut cleanup,
        &test_subnet(8),
        vec![upstream],
        &instance,
        state.path(),
    )
    .await;
    let pid = make_sandbox(&mut cleanup);
    let id = "netsbx9rebindddddddd";
    let url = format!("http://{private}:{}/", net.port);
    hn.apply(id, pid, &policy(NetMode::Internet, &["web.test"], &[]))
        .await
        .unwrap();
    assert_eq!(resolve_in(pid, "web.test").await, (0, Some(private)));
    assert_eq!(
        curl_in(pid, &url).await,
        7,
        "a name opened a private address"
    );
    // An allowOut CIDR still allows the range.
    hn.apply(
        id,
        pid,
        &policy(NetMode::Allowlist, &["web.test", "172.16.0.0/12"], &[]),
    )
    .await
    .unwrap();
    assert_eq!(curl_in(pid, &url).await, 0, "allowOut 172.16.0.0/12");
    upstream_task.abort();
}

/// A /29 has five sandbox addresses. Five sandboxes whose hashed first
/// choices collide (likely, with five ids into five slots) still get five
/// different addresses (the host route is the lock: EEXIST moves on to the
/// next candidate), and a sixth gets a clear error and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subnet_hands_out_each_address_once_then_refuses() {
    require_prerequisites!();
    let mut cleanup = Cleanup::default();
    let state = tempfile::tempdir().unwrap();
    let instance = format!("t{}", unique());
    let base: Ipv4Net = test_subnet(7).parse().unwrap();
    let subnet = format!("{}/29", base.addr);
    let hn = start_network(&mut cleanup, &subnet, vec![], &instance, state.path()).await;
    let internet = policy(NetMode::Internet, &[], &[]);
    let mut addrs = Vec::new();
    for k in 0..5 {
        let pid = make_sandbox(&mut cleanup);
        let id = format!("alloc{k}{}", "c".repeat(14));
        let addr = hn.apply(&id, pid, &internet).await.unwrap().unwrap();
        assert!(!addrs.contains(&addr), "{addr} handed out twice: {addrs:?}");
        addrs.push(addr);
    }
    let pid = make_sandbox(&mut cleanup);
    let id = format!("alloc9{}", "c".repeat(14));
    let err = hn
        .apply(&id, pid, &internet)
        .await
        .expect_err("a sixth address");
    assert!(err.to_string().contains("no free address"), "{err}");
    assert!(!std::path::Path::new("/sys/class/net")
        .join(host_interface(&id))
        .exists());
    assert!(!nft_has(
        &table_name(&instance),
        "chain",
        &format!("sb_{}", short_id(&id))
    ));
    for k in 0..5 {
        hn.detach(&format!("alloc{k}{}", "c".repeat(14)))
            .await
            .unwrap();
    }
}
