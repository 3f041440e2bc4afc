//! This daemon's nftables table and the per-sandbox chains (helper "net-host").
//!
//! One table `inet warren_<instance>` per daemon holds:
//! - `ifaces`: the names of this daemon's host veths;
//! - `sandboxes`: a verdict map from host veth to the sandbox's chain;
//! - `deny`: TCP reset, else ICMP admin-prohibited (denied traffic fails fast);
//! - `input`: from sandboxes only DNS to the resolver and replies;
//! - `forward`: from sandboxes IPv4 through their chain, no IPv6; towards
//!   them only replies;
//! - `prerouting` (nat): DNS from sandboxes goes to Warren's resolver;
//! - `postrouting` (nat): masquerade what leaves for the world;
//! - per sandbox: chain `sb_<id13>` and timeout set `resolved_<id13>`.
//!
//! Every change is one `nft -f -` transaction: it applies whole or not at all.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::{run, CompiledPolicy, Ipv4Net, NetMode, NetworkError};

/// Destinations no sandbox may reach, whatever its policy.
pub const ALWAYS_BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Private ranges: blocked unless an `allowOut` CIDR allows them.
pub const PRIVATE_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// Shortest time an address handed out by the resolver stays allowed
/// (the default; tests may lower it).
pub const MIN_RESOLVED_TIMEOUT: Duration = Duration::from_secs(60);

/// The most addresses a sandbox's resolved set holds.
pub const RESOLVED_SET_SIZE: u32 = 65536;

/// This daemon's table.
#[derive(Debug, Clone)]
pub(crate) struct Firewall {
    table: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
}

/// `{ a, b }` for nft, without nets contained in another one of the list.
fn net_set(nets: &[Ipv4Net]) -> String {
    let contains = |outer: &Ipv4Net, inner: &Ipv4Net| {
        outer.prefix <= inner.prefix && {
            let mask = if outer.prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(outer.prefix))
            };
            u32::from(inner.addr) & mask == u32::from(outer.addr) & mask
        }
    };
    let mut kept: Vec<Ipv4Net> = Vec::new();
    for (i, net) in nets.iter().enumerate() {
        let covered = nets.iter().enumerate().any(|(j, other)| {
            j != i && contains(other, net) && (other.prefix < net.prefix || j < i)
        });
        if !covered && !kept.contains(net) {
            kept.push(*net);
        }
    }
    let items: Vec<String> = kept.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

fn parse_nets(list: &[&str]) -> Vec<Ipv4Net> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

impl Firewall {
    pub(crate) fn new(instance: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Self {
        Self {
            table: super::table_name(instance),
            subnet,
            gateway,
        }
    }

    /// The table's name (without the family).
    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    /// The script that (re)creates the table's base chains. Existing
    /// per-sandbox chains, sets and map entries survive, so sandboxes stay
    /// filtered across a daemon restart until they are re-applied.
    pub(crate) fn base_script(&self, resolver_port: u16) -> String {
        let t = format!("inet {}", self.table);
        let g = self.gateway;
        let mut s = String::new();
        let _ = writeln!(s, "add table {t}");
        let _ = writeln!(s, "add set {t} ifaces {{ type ifname; }}");
        let _ = writeln!(s, "add map {t} sandboxes {{ type ifname : verdict; }}");
        let _ = writeln!(s, "add chain {t} deny");
        let _ = writeln!(s, "flush chain {t} deny");
        let _ = writeln!(
            s,
            "add rule {t} deny meta l4proto tcp reject with tcp reset"
        );
        let _ = writeln!(
            s,
            "add rule {t} deny reject with icmpx type admin-prohibited"
        );
        // Anti-spoofing: a sandbox (which may have CAP_NET_RAW) may only
        // send from the address routed to its own veth, so it can never pass
        // for another sandbox (at the resolver, or to the firewall).
        let _ = writeln!(
            s,
            "add chain {t} antispoof {{ type filter hook prerouting priority raw; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {t} antispoof");
        let _ = writeln!(
            s,
            "add rule {t} antispoof iifname @ifaces fib saddr . iif oif missing drop"
        );
        let chains = [
            ("input", "filter hook input priority filter"),
            ("forward", "filter hook forward priority filter"),
            ("prerouting", "nat hook prerouting priority dstnat"),
            ("postrouting", "nat hook postrouting priority srcnat"),
        ];
        for (name, hook) in chains {
            let _ = writeln!(s, "add chain {t} {name} {{ type {hook}; policy accept; }}");
            let _ = writeln!(s, "flush chain {t} {name}");
        }
        // Nothing from outside may pass for a sandbox (any daemon's: `wv*`),
        // and the resolver (bound to 0.0.0.0) serves this daemon's
        // sandboxes only, never the LAN.
        let _ = writeln!(
            s,
            "add rule {t} input iifname != \"wv*\" iifname != \"lo\" ip saddr {subnet} drop",
            subnet = self.subnet
        );
        let _ = writeln!(
            s,
            "add rule {t} input iifname != @ifaces meta l4proto {{ tcp, udp }} th dport {resolver_port} drop"
        );
        // The host itself: only DNS to the resolver (and replies).
        let _ = writeln!(
            s,
            "add rule {t} input iifname @ifaces meta nfproto ipv6 goto deny"
        );
        let _ = writeln!(
            s,
            "add rule {t} input iifname @ifaces ct state established,related accept"
        );
        let _ = writeln!(
            s,
            "add rule {t} input iifname @ifaces ip daddr {g} meta l4proto {{ tcp, udp }} th dport {resolver_port} accept"
        );
        let _ = writeln!(s, "add rule {t} input iifname @ifaces goto deny");
        // Forwarding: each sandbox through its own chain; no IPv6.
        let _ = writeln!(
            s,
            "add rule {t} forward iifname @ifaces meta nfproto ipv6 goto deny"
        );
        let _ = writeln!(s, "add rule {t} forward iifname vmap @sandboxes");
        let _ = writeln!(s, "add rule {t} forward iifname @ifaces goto deny");
        let _ = writeln!(
            s,
            "add rule {t} forward oifname @ifaces ct state established,related accept"
        );
        let _ = writeln!(s, "add rule {t} forward oifname @ifaces goto deny");
        // DNS goes to Warren's resolver, whatever server the image names.
        let _ = writeln!(
            s,
            "add rule {t} prerouting iifname @ifaces meta nfproto ipv4 meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {g}:{resolver_port}"
        );
        let _ = writeln!(
            s,
            "add rule {t} postrouting iifname @ifaces oifname != @ifaces masquerade"
        );
        s
    }

    /// Installs or refreshes the base chains.
    pub(crate) async fn install(&self, resolver_port: u16) -> Result<(), NetworkError> {
        nft(&self.base_script(resolver_port)).await.map_err(|e| {
            NetworkError::Unavailable(format!("install nftables table {}: {e}", self.table))
        })
    }

    /// The script that gives one sandbox its chain (replacing its rules) and
    /// registers its host veth. `flush_resolved` empties its resolved set
    /// (the policy changed: addresses allowed for old names go). `mark` is
    /// the conntrack mark of this policy generation: connections opened
    /// through a resolved address get it and stay allowed after the
    /// address's element times out, until the generation changes (a new
    /// mark with every flush).
    pub(crate) fn sandbox_script(
        &self,
        short: &str,
        ifname: &str,
        policy: &CompiledPolicy,
        flush_resolved: bool,
        mark: u32,
    ) -> String {
        let t = format!("inet {}", self.table);
        let chain = format!("sb_{short}");
        let set = format!("resolved_{short}");
        let mut s = String::new();
        let _ = writeln!(s, "{}", resolved_set_decl(&t, &set));
        if flush_resolved {
            let _ = writeln!(s, "flush set {t} {set}");
        }
        let _ = writeln!(s, "add chain {t} {chain}");
        let _ = writeln!(s, "flush chain {t} {chain}");
        let mut blocked = parse_nets(ALWAYS_BLOCKED);
        blocked.push(self.subnet);
        blocked.push(Ipv4Net {
            addr: self.gateway,
            prefix: 32,
        });
        let _ = writeln!(
            s,
            "add rule {t} {chain} ip daddr {} goto deny",
            net_set(&blocked)
        );
        let private = net_set(&parse_nets(PRIVATE_RANGES));
        let _ = writeln!(
            s,
            "add rule {t} {chain} ct state established,related ct mark {mark} accept"
        );
        // A name never opens a private range (DNS rebinding); an allowOut
        // CIDR still can, below.
        let _ = writeln!(
            s,
            "add rule {t} {chain} ip daddr @{set} ip daddr != {private} ct mark set {mark} accept"
        );
        if !policy.deny_nets.is_empty() {
            let _ = writeln!(
                s,
                "add rule {t} {chain} ip daddr {} goto deny",
                net_set(&policy.deny_nets)
            );
        }
        if !policy.allow_nets.is_empty() {
            let _ = writeln!(
                s,
                "add rule {t} {chain} ip daddr {} accept",
                net_set(&policy.allow_nets)
            );
        }
        let _ = writeln!(s, "add rule {t} {chain} ip daddr {private} goto deny");
        if policy.mode == NetMode::Internet {
            let _ = writeln!(s, "add rule {t} {chain} meta nfproto ipv4 accept");
        }
        let _ = writeln!(s, "add rule {t} {chain} goto deny");
        let _ = writeln!(s, "add element {t} ifaces {{ \"{ifname}\" }}");
        let _ = writeln!(
            s,
            "add element {t} sandboxes {{ \"{ifname}\" : jump {chain} }}"
        );
        s
    }

    /// Gives a sandbox its chain, atomically.
    pub(crate) async fn set_sandbox(
        &self,
        short: &str,
        ifname: &str,
        policy: &CompiledPolicy,
        flush_resolved: bool,
        mark: u32,
    ) -> Result<(), NetworkError> {
        nft(&self.sandbox_script(short, ifname, policy, flush_resolved, mark))
            .await
            .map_err(|e| NetworkError::Failed(format!("set the firewall rules of {ifname}: {e}")))
    }

    /// The script that removes a sandbox's chain, set and registration.
    /// It first makes sure each exists, so it succeeds whatever is left.
    pub(crate) fn remove_script(&self, short: &str, ifname: &str) -> String {
        let t = format!("inet {}", self.table);
        let chain = format!("sb_{short}");
        let set = format!("resolved_{short}");
        let mut s = String::new();
        let _ = writeln!(s, "{}", resolved_set_decl(&t, &set));
        let _ = writeln!(s, "add chain {t} {chain}");
        let _ = writeln!(s, "add element {t} ifaces {{ \"{ifname}\" }}");
        let _ = writeln!(
            s,
            "add element {t} sandboxes {{ \"{ifname}\" : jump {chain} }}"
        );
        let _ = writeln!(s, "delete element {t} sandboxes {{ \"{ifname}\" }}");
        let _ = writeln!(s, "delete element {t} ifaces {{ \"{ifname}\" }}");
        let _ = writeln!(s, "flush chain {t} {chain}");
        let _ = writeln!(s, "delete chain {t} {chain}");
        let _ = writeln!(s, "delete set {t} {set}");
        s
    }

    /// Removes a sandbox's chain, set and registration (missing ones are fine).
    pub(crate) async fn remove_sandbox(
        &self,
        short: &str,
        ifname: &str,
    ) -> Result<(), NetworkError> {
        nft(&self.remove_script(short, ifname)).await.map_err(|e| {
            NetworkError::Failed(format!("remove the firewall rules of {ifname}: {e}"))
        })
    }

    /// Allows a sandbox to reach addresses its resolver handed out, for
    /// `timeout` (at least 1 s; the caller applies the minimum); an address
    /// already there gets the new timeout.
    pub(crate) async fn allow_resolved(
        &self,
        short: &str,
        addrs: &[Ipv4Addr],
        timeout: Duration,
    ) -> Result<(), NetworkError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let secs = timeout.as_secs().max(1);
        let t = format!("inet {}", self.table);
        let set = format!("resolved_{short}");
        let with_timeout: Vec<String> = addrs
            .iter()
            .map(|a| format!("{a} timeout {secs}s"))
            .collect();
        let plain: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        // add (so it exists) → delete → add: refreshes the timeout of an
        // address that was already allowed, in one transaction.
        let script = format!(
            "add element {t} {set} {{ {w} }}\ndelete element {t} {set} {{ {p} }}\nadd element {t} {set} {{ {w} }}\n",
            w = with_timeout.join(", "),
            p = plain.join(", "),
        );
        nft(&script)
            .await
            .map_err(|e| NetworkError::Failed(format!("allow resolved addresses in {set}: {e}")))
    }

    /// The conntrack mark in a sandbox's chain (`None`: no chain, or no
    /// mark in it). Lets a restarted daemon keep the generation, so its
    /// re-apply of the same policy cuts no connection.
    pub(crate) async fn sandbox_mark(&self, short: &str) -> Option<u32> {
        let chain = format!("sb_{short}");
        let out = run(
            "nft",
            &["-j", "list", "chain", "inet", &self.table, &chain],
            None,
        )
        .await
        .ok()?;
        let parsed: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
        parsed
            .get("nftables")?
            .as_array()?
            .iter()
            .filter_map(|item| item.get("rule")?.get("expr")?.as_array())
            .flatten()
            .filter_map(|expr| expr.get("mangle"))
            .filter(|m| {
                m.get("key")
                    .and_then(|k| k.get("ct"))
                    .and_then(|c| c.get("key"))
                    == Some(&serde_json::Value::from("mark"))
            })
            .find_map(|m| u32::try_from(m.get("value")?.as_u64()?).ok())
            .filter(|mark| *mark != 0)
    }

    /// Short ids of the sandbox chains in the table (for clean-up at start).
    pub(crate) async fn sandbox_chains(&self) -> Result<Vec<String>, NetworkError> {
        let out = run("nft", &["-j", "list", "table", "inet", &self.table], None)
            .await
            .map_err(|e| NetworkError::Failed(format!("list table {}: {e}", self.table)))?;
        let parsed: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        let chains = parsed
            .get("nftables")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| item.get("chain")?.get("name")?.as_str())
            .filter_map(|name| name.strip_prefix("sb_"))
            .map(str::to_owned)
            .collect();
        Ok(chains)
    }

    /// Deletes the whole table (tests, and a daemon that stops networking).
    pub(crate) async fn delete_table(&self) -> Result<(), NetworkError> {
        let script = format!(
            "add table inet {t}\ndelete table inet {t}\n",
            t = self.table
        );
        nft(&script)
            .await
            .map_err(|e| NetworkError::Failed(format!("delete table {}: {e}", self.table)))
    }
}

/// The declaration of a sandbox's resolved set (idempotent).
fn resolved_set_decl(t: &str, set: &str) -> String {
    format!("add set {t} {set} {{ type ipv4_addr; flags timeout; size {RESOLVED_SET_SIZE}; }}")
}

async fn nft(script: &str) -> Result<(), String> {
    run("nft", &["-f", "-"], Some(script)).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> Firewall {
        Firewall::new(
            "abcd1234",
            "10.213.0.0/16".parse().unwrap(),
            Ipv4Addr::new(10, 213, 0, 1),
        )
    }

    fn policy(mode: NetMode, allow: &[&str], deny: &[&str]) -> CompiledPolicy {
        CompiledPolicy {
            mode,
            allow_nets: allow.iter().map(|s| s.parse().unwrap()).collect(),
            allow_domains: Vec::new(),
            deny_nets: deny.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn position(script: &str, needle: &str) -> usize {
        script
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{script}"))
    }

    #[test]
    fn sandbox_chain_order_is_blocked_resolved_deny_allow_private_mode() {
        let p = policy(NetMode::Internet, &["10.1.0.0/16"], &["203.0.113.7"]);
        let s = fw().sandbox_script("abc", "wvabc", &p, false, 7);
        let blocked = position(&s, "127.0.0.0/8");
        let established = position(&s, "ct state established,related ct mark 7 accept");
        let resolved = position(&s, "ip daddr @resolved_abc ip daddr != ");
        let deny = position(&s, "{ 203.0.113.7/32 } goto deny");
        let allow = position(&s, "{ 10.1.0.0/16 } accept");
        let private = position(&s, "100.64.0.0/10 } goto deny");
        let mode = position(&s, "meta nfproto ipv4 accept");
        assert!(blocked < established && established < resolved);
        assert!(resolved < deny && deny < allow);
        assert!(allow < private && private < mode);
        // The Warren subnet is always blocked (G is inside it).
        assert!(s[blocked..resolved].contains("10.213.0.0/16"));
        assert!(!s.contains("flush set"));
    }

    #[test]
    fn allowlist_ends_in_deny_without_accept_all() {
        let p = policy(NetMode::Allowlist, &[], &[]);
        let s = fw().sandbox_script("abc", "wvabc", &p, true, 9);
        assert!(!s.contains("meta nfproto ipv4 accept"));
        assert!(s.contains("flush set inet warren_abcd1234 resolved_abc"));
        assert!(s
            .trim_end()
            .lines()
            .rev()
            .nth(2)
            .unwrap()
            .ends_with("goto deny"));
    }

    #[test]
    fn nested_nets_are_merged() {
        let nets: Vec<Ipv4Net> = ["10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8", "1.2.3.4/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(net_set(&nets), "{ 10.0.0.0/8, 1.2.3.4/32 }");
    }

    #[test]
    fn base_script_dnats_dns_to_the_resolver() {
        let s = fw().base_script(5353);
        assert!(s.contains("th dport 53 dnat ip to 10.213.0.1:5353"));
        assert!(s.contains("ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport 5353 accept"));
        assert!(s.contains("iifname vmap @sandboxes"));
    }

    #[test]
    fn base_script_blocks_spoofing_and_outside_use_of_the_resolver() {
        let s = fw().base_script(5353);
        assert!(
            s.contains("antispoof { type filter hook prerouting priority raw; policy accept; }")
        );
        assert!(s.contains("antispoof iifname @ifaces fib saddr . iif oif missing drop"));
        assert!(
            s.contains("input iifname != \"wv*\" iifname != \"lo\" ip saddr 10.213.0.0/16 drop")
        );
        let outside = position(
            &s,
            "input iifname != @ifaces meta l4proto { tcp, udp } th dport 5353 drop",
        );
        assert!(outside < position(&s, "input iifname @ifaces goto deny"));
    }

    #[test]
    fn resolved_addresses_never_open_private_ranges_and_get_the_mark() {
        let p = policy(NetMode::Allowlist, &[], &[]);
        let s = fw().sandbox_script("abc", "wvabc", &p, false, 42);
        let line = s.lines().find(|l| l.contains("@resolved_abc")).unwrap();
        for range in PRIVATE_RANGES {
            assert!(line.contains(range), "{range} missing in {line}");
        }
        assert!(line.ends_with("ct mark set 42 accept"), "{line}");
        assert!(s.contains("size 65536;"));
    }
}
