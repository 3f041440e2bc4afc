//! Sandbox networking on the host: each sandbox that may reach the network
//! gets a veth pair into its own network namespace, a /32 address routed by
//! the host, NAT, and an nftables chain that enforces its egress policy.
//! DNS goes to Warren's resolver, which answers only the names the policy
//! allows and opens the firewall for the addresses it hands out.
//!
//! Why veth + nftables rather than a user-space stack (pasta, slirp): the
//! kernel forwards packets (no copy through a process, no extra process per
//! sandbox), and a policy change is one atomic `nft -f -` transaction that
//! also cuts existing connections, since every packet from a sandbox goes
//! through its chain (not only new ones). The one exception: a connection
//! opened through an address the resolver handed out carries the conntrack
//! mark of the policy generation it was opened under and stays allowed
//! after that address's firewall element times out, until the policy
//! changes (a new generation, a new mark).
//!
//! Security properties beyond the policy itself:
//! - a sandbox can only send from its own address (the `antispoof` chain
//!   and strict `rp_filter` on its veth), so it can never pass for another
//!   sandbox, at the resolver or the firewall;
//! - the resolver, bound to 0.0.0.0, only serves this daemon's veths, and
//!   nothing arriving from outside may use a sandbox subnet address;
//! - a domain allow never opens a private range (RFC 1918, CGNAT): a name
//!   that resolves to one (DNS rebinding into the host's LAN) stays
//!   blocked, unless an `allowOut` CIDR allows that range;
//! - `apply` refuses a pid that is in the daemon's own network namespace
//!   (a stale pid would otherwise reconfigure the host's network).
//!
//! Layout:
//! - host veth `wv<id13>` with the gateway `G/32` (the subnet's first
//!   address, on every host veth) and the route `S/32 dev wv<id13>`, which
//!   is also the lock that allocates `S` among all daemons on the host;
//! - in the sandbox, `eth0` with `S/32`, a link route to `G`, default via
//!   `G`; no IPv6;
//! - nftables table `inet warren_<instance>` (see `firewall.rs`);
//! - DNS (port 53, any server) redirected to Warren's resolver on `G`.
//!
//! The tools are shelled out to in batch mode: `ip`, `nft`, `nsenter`.
//!
//! OWNERS (issue 7): helper "net-host" owns this file, `link.rs` and
//! `firewall.rs`; helper "net-policy-dns" owns `policy.rs` and `dns.rs`.

pub mod dns;
mod firewall;
mod link;
pub mod policy;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

pub use firewall::{ALWAYS_BLOCKED, MIN_RESOLVED_TIMEOUT, PRIVATE_RANGES};
pub use policy::{compile, CompiledPolicy, DomainPattern, Ipv4Net, NetMode, PolicyError};

/// Why the host could not network a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The host lacks what networking needs (a tool, a kernel feature).
    #[error("sandbox networking is unavailable on this host: {0}")]
    Unavailable(String),
    /// A host command or syscall failed.
    #[error("{0}")]
    Failed(String),
}

/// Daemon-wide network configuration.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Sandbox addresses come from here; its first address is the gateway
    /// (and the resolver's address) every sandbox routes through.
    pub subnet: Ipv4Net,
    /// Upstream DNS servers for names the policy allows.
    pub dns_upstream: Vec<SocketAddr>,
    /// Unique per data directory: names this daemon's nftables table, so that
    /// several daemons on one host (tests) never touch each other's rules.
    pub instance: String,
    /// Directory for files sandboxes see (the generated `resolv.conf`).
    pub state_dir: PathBuf,
}

/// The host side of sandbox networking for one daemon.
pub struct HostNetwork {
    inner: Arc<Clients>,
    resolver: dns::Resolver,
    /// Serializes changes (apply/detach) so two never interleave.
    changes: tokio::sync::Mutex<()>,
}

/// How many `nft` processes opening resolved addresses run at once.
const RESOLVED_NFT_SLOTS: usize = 4;
/// Past this many cached "open until" entries of a sandbox, expired ones
/// are pruned.
const OPEN_CACHE_PRUNE: usize = 4096;

/// What the resolver sees of the sandboxes: their addresses and policies,
/// and the firewall it opens for resolved addresses.
struct Clients {
    firewall: firewall::Firewall,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    registry: RwLock<Registry>,
    /// Held shared by `allow_resolved` from its policy check to the end of
    /// its nft call, exclusively by `apply` from the firewall change to the
    /// registration of the new policy: an answer to a query made under the
    /// old policy can never land in a freshly flushed resolved set.
    gate: tokio::sync::RwLock<()>,
    /// Bounds the `nft` processes of `allow_resolved`.
    nft_slots: tokio::sync::Semaphore,
    /// The shortest time a resolved address stays open, in milliseconds.
    min_resolved_ms: AtomicU64,
}

#[derive(Default)]
struct Registry {
    by_addr: HashMap<Ipv4Addr, String>,
    by_id: HashMap<String, Entry>,
}

/// One sandbox as the resolver sees it.
struct Entry {
    /// `None` until its interface is set up.
    addr: Option<Ipv4Addr>,
    policy: Arc<CompiledPolicy>,
    /// The conntrack mark of its policy generation.
    mark: u32,
    /// Resolved addresses known open in its set, and until when.
    open: HashMap<Ipv4Addr, Instant>,
}

impl Clients {
    /// Records the policy just written to the firewall (with its mark);
    /// `flushed` forgets what the old policy's resolutions opened.
    fn set_policy(&self, sandbox: &str, policy: Arc<CompiledPolicy>, mark: u32, flushed: bool) {
        let mut reg = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match reg.by_id.get_mut(sandbox) {
            Some(entry) => {
                entry.policy = policy;
                entry.mark = mark;
                if flushed {
                    entry.open.clear();
                }
            }
            None => {
                reg.by_id.insert(
                    sandbox.to_owned(),
                    Entry {
                        addr: None,
                        policy,
                        mark,
                        open: HashMap::new(),
                    },
                );
            }
        }
    }

    /// Records the sandbox's address (its policy must be set already).
    fn set_address(&self, sandbox: &str, addr: Ipv4Addr) {
        let mut reg = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = reg.by_id.get_mut(sandbox) else {
            return;
        };
        let old = entry.addr.replace(addr);
        if let Some(old) = old.filter(|old| *old != addr) {
            reg.by_addr.remove(&old);
        }
        reg.by_addr.insert(addr, sandbox.to_owned());
    }

    fn unregister(&self, sandbox: &str) {
        let mut reg = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = reg.by_id.remove(sandbox).and_then(|e| e.addr) {
            // The address may belong to another sandbox by now (this one's
            // veth died and the address was handed out again): only this
            // sandbox's own entry goes.
            if reg.by_addr.get(&addr).is_some_and(|owner| owner == sandbox) {
                reg.by_addr.remove(&addr);
            }
        }
    }

    /// The sandbox's registered policy and mark.
    fn registered(&self, sandbox: &str) -> Option<(Arc<CompiledPolicy>, u32)> {
        let reg = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        reg.by_id
            .get(sandbox)
            .map(|entry| (entry.policy.clone(), entry.mark))
    }

    fn min_resolved_timeout(&self) -> Duration {
        Duration::from_millis(self.min_resolved_ms.load(Ordering::Relaxed))
    }
}

/// A conntrack mark for a new policy generation: random, never 0 (the mark
/// of every unmarked connection) and never `old`.
fn new_mark(old: Option<u32>) -> u32 {
    loop {
        let mark: u32 = rand::random();
        if mark != 0 && Some(mark) != old {
            return mark;
        }
    }
}

#[async_trait]
impl dns::DnsClients for Clients {
    fn policy_for(&self, source: Ipv4Addr) -> Option<(String, Arc<CompiledPolicy>)> {
        let reg = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let id = reg.by_addr.get(&source)?;
        let entry = reg.by_id.get(id)?;
        Some((id.clone(), entry.policy.clone()))
    }

    async fn allow_resolved(
        &self,
        sandbox: &str,
        policy: &Arc<CompiledPolicy>,
        addrs: &[Ipv4Addr],
        ttl: Duration,
    ) {
        let _gate = self.gate.read().await;
        let timeout = ttl.max(self.min_resolved_timeout());
        let now = Instant::now();
        let needed: Vec<Ipv4Addr> = {
            let reg = self.registry.read().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = reg.by_id.get(sandbox) else {
                return;
            };
            if !Arc::ptr_eq(&entry.policy, policy) {
                tracing::debug!(sandbox, "policy changed since the query; nothing opened");
                return;
            }
            // An address open for at least half the timeout needs no refresh.
            addrs
                .iter()
                .copied()
                .filter(|addr| {
                    entry
                        .open
                        .get(addr)
                        .is_none_or(|until| until.saturating_duration_since(now) < timeout / 2)
                })
                .collect()
        };
        if needed.is_empty() {
            return;
        }
        let Ok(_slot) = self.nft_slots.acquire().await else {
            return;
        };
        match self
            .firewall
            .allow_resolved(&short_id(sandbox), &needed, timeout)
            .await
        {
            Ok(()) => {
                let mut reg = self
                    .registry
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(entry) = reg
                    .by_id
                    .get_mut(sandbox)
                    .filter(|entry| Arc::ptr_eq(&entry.policy, policy))
                {
                    if entry.open.len() > OPEN_CACHE_PRUNE {
                        entry.open.retain(|_, until| *until > now);
                    }
                    for addr in needed {
                        entry.open.insert(addr, now + timeout);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sandbox, error = %e, "could not open the firewall for resolved addresses");
            }
        }
    }
}

/// The first 13 characters of a sandbox id, as used in interface, chain and
/// set names (anything but `[a-z0-9]` becomes `_`).
pub fn short_id(sandbox: &str) -> String {
    sandbox
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
        .collect()
}

/// The host-side veth name of a sandbox: `wv` + [`short_id`].
pub fn host_interface(sandbox: &str) -> String {
    link::host_ifname(&short_id(sandbox))
}

/// The name of the nftables table (family `inet`) of the daemon with this
/// instance string.
pub fn table_name(instance: &str) -> String {
    format!("warren_{instance}")
}

/// The gateway of a subnet: its first address.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.addr).wrapping_add(1))
}

/// Runs a host tool; `Err` carries its stderr (or why it could not run).
pub(crate) async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        // Error texts are matched (e.g. "File exists"): never translated.
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("run {program}: {e}"))?;
    // Writing the input and waiting share one deadline (the child is killed
    // on drop when it passes).
    let exchange = async {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|e| format!("write to {program}: {e}"))?;
            drop(pipe);
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| format!("wait for {program}: {e}"))
    };
    let out = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("{program} did not finish within 30 s"))??;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(if err.is_empty() {
            format!("{program} exited with {}", out.status)
        } else {
            err
        })
    }
}

impl HostNetwork {
    /// Checks the host, enables IPv4 forwarding, (re)creates this daemon's
    /// nftables table and starts the resolver.
    ///
    /// The table's base chains are rewritten; per-sandbox chains that
    /// survive a restart keep filtering their sandboxes until
    /// [`apply`](Self::apply) replaces them, and those whose interface is
    /// gone are removed. Writes `<state_dir>/resolv.conf` (`nameserver G`).
    /// Empty `dns_upstream` means the host's /etc/resolv.conf nameservers.
    /// Fails with [`NetworkError::Unavailable`] when the subnet overlaps a
    /// host route that is not on a Warren veth (`wv*`). Logs when it turns
    /// IPv4 forwarding on, and warns when the host's iptables FORWARD policy
    /// is DROP (which would drop sandbox traffic).
    pub async fn start(config: NetworkConfig) -> Result<Arc<Self>, NetworkError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetworkError::Unavailable(
                "the daemon is not root (veth and nftables need CAP_NET_ADMIN)".into(),
            ));
        }
        for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("nsenter", "--version")] {
            run(tool, &[arg], None)
                .await
                .map_err(|e| NetworkError::Unavailable(format!("`{tool}` is not usable: {e}")))?;
        }
        if config.subnet.prefix > 29 {
            return Err(NetworkError::Failed(format!(
                "subnet {} is too small (at most /29)",
                config.subnet
            )));
        }
        check_subnet_is_free(config.subnet).await?;
        let forwarding =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        if forwarding.trim() != "1" {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| NetworkError::Unavailable(format!("enable IPv4 forwarding: {e}")))?;
            tracing::info!("enabled IPv4 forwarding on the host (net.ipv4.ip_forward 0 -> 1)");
        }
        warn_about_iptables_forward_policy().await;
        let gateway = gateway_of(config.subnet);
        let inner = Arc::new(Clients {
            firewall: firewall::Firewall::new(&config.instance, config.subnet, gateway),
            subnet: config.subnet,
            gateway,
            registry: RwLock::default(),
            gate: tokio::sync::RwLock::new(()),
            nft_slots: tokio::sync::Semaphore::new(RESOLVED_NFT_SLOTS),
            min_resolved_ms: AtomicU64::new(
                u64::try_from(MIN_RESOLVED_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            ),
        });
        let upstream = if config.dns_upstream.is_empty() {
            dns::upstreams_from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            )
        } else {
            config.dns_upstream.clone()
        };
        let clients: Arc<dyn dns::DnsClients> = inner.clone();
        let resolver = dns::Resolver::start(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            upstream,
            clients,
        )
        .await
        .map_err(|e| NetworkError::Failed(format!("start the DNS resolver: {e}")))?;
        inner.firewall.install(resolver.port()).await?;
        // Chains of sandboxes that are gone (their veth died with them).
        for short in inner.firewall.sandbox_chains().await? {
            let ifname = link::host_ifname(&short);
            if !link::exists(&ifname) {
                inner.firewall.remove_sandbox(&short, &ifname).await?;
            }
        }
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            NetworkError::Failed(format!("create {}: {e}", config.state_dir.display()))
        })?;
        let resolv = resolv_conf_path(&config.state_dir);
        std::fs::write(&resolv, format!("nameserver {gateway}\n"))
            .map_err(|e| NetworkError::Failed(format!("write {}: {e}", resolv.display())))?;
        tracing::info!(
            table = inner.firewall.table(),
            subnet = %config.subnet,
            %gateway,
            dns_port = resolver.port(),
            "sandbox networking ready"
        );
        Ok(Arc::new(Self {
            inner,
            resolver,
            changes: tokio::sync::Mutex::new(()),
        }))
    }

    /// The gateway address: the sandboxes' default route and DNS server.
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.gateway
    }

    /// The sandbox subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.inner.subnet
    }

    /// The port the resolver listens on (UDP and TCP, all addresses); DNS
    /// from sandboxes is redirected there.
    pub fn resolver_port(&self) -> u16 {
        self.resolver.port()
    }

    /// The name of this daemon's nftables table (family `inet`).
    pub fn table(&self) -> &str {
        self.inner.firewall.table()
    }

    /// The address of a sandbox networked by this daemon, if any.
    pub fn address_of(&self, sandbox: &str) -> Option<Ipv4Addr> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .get(sandbox)
            .and_then(|entry| entry.addr)
    }

    /// Changes the shortest time an address handed out by the resolver
    /// stays open (default [`MIN_RESOLVED_TIMEOUT`]; at least 1 s). For
    /// tests, which cannot wait a minute for an element to expire.
    pub fn set_min_resolved_timeout(&self, min: Duration) {
        let ms = u64::try_from(min.max(Duration::from_secs(1)).as_millis()).unwrap_or(u64::MAX);
        self.inner.min_resolved_ms.store(ms, Ordering::Relaxed);
    }

    /// Gives the sandbox whose network namespace holds `netns_pid` this
    /// policy. Idempotent and used for every change: `none` removes its
    /// interface; other modes create it if missing (keeping the address it
    /// has, e.g. after a daemon restart) and replace its rules atomically.
    /// Returns its address (`None` in `none` mode).
    pub async fn apply(
        &self,
        sandbox: &str,
        netns_pid: i32,
        policy: &CompiledPolicy,
    ) -> Result<Option<Ipv4Addr>, NetworkError> {
        if policy.mode == NetMode::None {
            self.detach(sandbox).await?;
            return Ok(None);
        }
        ensure_foreign_netns(netns_pid)?;
        let _guard = self.changes.lock().await;
        let short = short_id(sandbox);
        let ifname = link::host_ifname(&short);
        // A veth left from an earlier namespace (resume) is replaced.
        if link::exists(&ifname) && !link::sandbox_has_eth0(netns_pid).await {
            link::delete(&ifname).await?;
        }
        let created = !link::exists(&ifname);
        // The rules and a new interface are made at the same time: the
        // sandbox's `eth0` stays down and unaddressed (it cannot change that)
        // until both are in place, so nothing flows without its chain. The
        // resolver sees the new policy as soon as the firewall has it (and
        // no answer to an older query lands in between: the gate).
        let firewall = async {
            let _gate = self.inner.gate.write().await;
            let (registered, flush_resolved, mark) = match self.inner.registered(sandbox) {
                // Unchanged: the same generation, in-flight queries still count.
                Some((old, mark)) if *old == *policy => (old, false, mark),
                Some((_, mark)) => (Arc::new(policy.clone()), true, new_mark(Some(mark))),
                // First apply since this daemon started: keep the chain's
                // generation (a restart's re-apply cuts nothing).
                None => {
                    // Without an interface there is no connection to keep:
                    // skip reading the old chain (an `nft list`).
                    let old_mark = if created {
                        None
                    } else {
                        self.inner.firewall.sandbox_mark(&short).await
                    };
                    let mark = old_mark.unwrap_or_else(|| new_mark(None));
                    (Arc::new(policy.clone()), false, mark)
                }
            };
            self.inner
                .firewall
                .set_sandbox(&short, &ifname, policy, flush_resolved, mark)
                .await?;
            self.inner
                .set_policy(sandbox, registered, mark, flush_resolved);
            Ok::<_, NetworkError>(())
        };
        let new_link = async {
            if created {
                let (gateway, subnet) = (self.inner.gateway, self.inner.subnet);
                link::create_pair(&ifname, netns_pid, gateway, subnet, sandbox)
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        };
        let (ruled, linked) = tokio::join!(firewall, new_link);
        let result = async {
            ruled?;
            let addr = match linked? {
                Some(addr) => addr,
                None => match link::routed_address(&ifname).await? {
                    Some(addr) => addr,
                    None => link::allocate(&ifname, self.inner.subnet, sandbox).await?,
                },
            };
            link::configure_sandbox(netns_pid, addr, self.inner.gateway).await?;
            Ok::<_, NetworkError>(addr)
        }
        .await;
        match result {
            Ok(addr) => {
                self.inner.set_address(sandbox, addr);
                Ok(Some(addr))
            }
            Err(e) => {
                if created {
                    if link::exists(&ifname) {
                        let _ = link::delete(&ifname).await;
                    }
                    let _ = self.inner.firewall.remove_sandbox(&short, &ifname).await;
                    self.inner.unregister(sandbox);
                }
                Err(e)
            }
        }
    }

    /// Removes the sandbox's interface, rules and resolver entry (missing
    /// ones are fine).
    pub async fn detach(&self, sandbox: &str) -> Result<(), NetworkError> {
        let _guard = self.changes.lock().await;
        let short = short_id(sandbox);
        let ifname = link::host_ifname(&short);
        {
            // In-flight `allow_resolved` calls finish first; later ones find
            // no sandbox (and a re-apply gets a fresh, empty set).
            let _gate = self.inner.gate.write().await;
            self.inner.unregister(sandbox);
        }
        link::delete(&ifname).await?;
        self.inner.firewall.remove_sandbox(&short, &ifname).await
    }

    /// Deletes this daemon's nftables table (every sandbox loses its
    /// network access). For tests and for turning networking off; a normal
    /// daemon stop keeps the table so running sandboxes stay filtered.
    pub async fn remove_table(&self) -> Result<(), NetworkError> {
        self.inner.firewall.delete_table().await
    }
}

/// Refuses a pid whose network namespace is the daemon's own: configuring
/// "the sandbox side" there would rewrite the host's addresses and default
/// route (a stale pid, reused by a host process).
fn ensure_foreign_netns(pid: i32) -> Result<(), NetworkError> {
    match crate::netns::in_daemon_namespace(pid) {
        Ok(false) => Ok(()),
        Ok(true) => Err(NetworkError::Failed(format!(
            "pid {pid} is in the host's network namespace, not a sandbox's (a stale pid?); refusing to configure it"
        ))),
        Err(e) => Err(NetworkError::Failed(format!(
            "read the network namespace of pid {pid}: {e}"
        ))),
    }
}

/// Refuses a subnet that overlaps a host route Warren did not make (one
/// not on a `wv*` veth): sandbox routes would shadow part of the host's
/// network, or the host's routes would capture sandbox traffic.
async fn check_subnet_is_free(subnet: Ipv4Net) -> Result<(), NetworkError> {
    let out = run("ip", &["-j", "-4", "route", "show"], None)
        .await
        .map_err(|e| NetworkError::Unavailable(format!("list the host's routes: {e}")))?;
    let routes: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    for route in routes.as_array().into_iter().flatten() {
        let Some(dst) = route.get("dst").and_then(serde_json::Value::as_str) else {
            continue;
        };
        let dev = route
            .get("dev")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if dst == "default" || dev.starts_with("wv") {
            continue;
        }
        let net = if dst.contains('/') {
            dst.parse::<Ipv4Net>()
        } else {
            format!("{dst}/32").parse::<Ipv4Net>()
        };
        let Ok(net) = net else {
            continue;
        };
        if nets_overlap(net, subnet) {
            let via = if dev.is_empty() { "?" } else { dev };
            return Err(NetworkError::Unavailable(format!(
                "the sandbox subnet {subnet} overlaps the host route {dst} (dev {via}); choose another with --net-subnet"
            )));
        }
    }
    Ok(())
}

/// Whether two networks share an address.
fn nets_overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    let prefix = a.prefix.min(b.prefix).min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(a.addr) & mask == u32::from(b.addr) & mask
}

/// Warns when the host's iptables FORWARD policy drops what it does not
/// accept (Docker sets this): forwarded sandbox traffic would be dropped
/// there, whatever Warren's table allows.
async fn warn_about_iptables_forward_policy() {
    let Ok(rules) = run("iptables", &["-S", "FORWARD"], None).await else {
        return;
    };
    if rules.lines().any(|line| line.trim() == "-P FORWARD DROP") {
        tracing::warn!(
            "the host's iptables FORWARD policy is DROP: sandbox traffic will be dropped by it \
             unless an iptables rule accepts it (e.g. `iptables -I FORWARD -i wv+ -j ACCEPT` and \
             `iptables -I FORWARD -o wv+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)"
        );
    }
}

/// Path of the `resolv.conf` a sandbox gets bind-mounted over
/// `/etc/resolv.conf` (written by [`HostNetwork::start`]).
pub fn resolv_conf_path(state_dir: &Path) -> PathBuf {
    state_dir.join("resolv.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn overlapping_nets() {
        assert!(nets_overlap(net("10.0.0.0/8"), net("10.213.0.0/16")));
        assert!(nets_overlap(net("10.213.0.0/16"), net("10.213.5.5/32")));
        assert!(!nets_overlap(
            net("10.254.253.0/30"),
            net("10.254.252.0/24")
        ));
        assert!(!nets_overlap(net("192.168.0.0/16"), net("10.213.0.0/16")));
    }

    #[test]
    fn the_daemons_own_namespace_is_refused() {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let err = ensure_foreign_netns(pid).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("host's network namespace")),
            "{err:?}"
        );
    }

    #[test]
    fn marks_are_never_zero_nor_the_old_one() {
        for _ in 0..1000 {
            let mark = new_mark(Some(5));
            assert!(mark != 0 && mark != 5);
        }
    }
}
