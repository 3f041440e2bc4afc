//! veth pairs, addresses and routes (helper "net-host").
//!
//! Each networked sandbox gets a veth pair: `wv<id13>` on the host, `eth0`
//! in the sandbox's network namespace. Every host veth carries the gateway
//! address `G/32`; the sandbox's address `S/32` is reached through the host
//! route `S/32 dev wv<id13>`, which doubles as the allocation lock: adding
//! it fails with EEXIST when any daemon on the host already uses `S`.

use std::net::Ipv4Addr;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{run, Ipv4Net, NetworkError};

/// The host-side interface name of a sandbox's veth (`wv` + 13 characters,
/// within the kernel's 15-character limit).
pub(crate) fn host_ifname(short: &str) -> String {
    format!("wv{short}")
}

/// Whether a host interface of this name exists.
pub(crate) fn exists(ifname: &str) -> bool {
    Path::new("/sys/class/net").join(ifname).exists()
}

/// The sandbox address routed through this host veth, if any (the address
/// a sandbox keeps across a daemon restart).
pub(crate) async fn routed_address(ifname: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
    let out = run("ip", &["-j", "-4", "route", "show", "dev", ifname], None)
        .await
        .map_err(|e| NetworkError::Failed(format!("list routes of {ifname}: {e}")))?;
    let routes: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let found = routes.as_array().into_iter().flatten().find_map(|route| {
        let dst = route.get("dst")?.as_str()?;
        let addr = dst.strip_suffix("/32").unwrap_or(dst);
        addr.parse::<Ipv4Addr>().ok()
    });
    Ok(found)
}

/// Whether the network namespace of `pid` has an `eth0`.
pub(crate) async fn sandbox_has_eth0(pid: i32) -> bool {
    let pid = pid.to_string();
    run(
        "nsenter",
        &["-t", &pid, "-n", "ip", "link", "show", "dev", "eth0"],
        None,
    )
    .await
    .is_ok()
}

/// Creates the veth pair (`eth0` directly inside the namespace of `pid`),
/// sets the host side up with the gateway address and claims the sandbox's
/// address: one `ip -batch` in the common case (its first candidate
/// address is free), more only when another sandbox holds it.
pub(crate) async fn create_pair(
    ifname: &str,
    pid: i32,
    gateway: Ipv4Addr,
    subnet: Ipv4Net,
    sandbox: &str,
) -> Result<Ipv4Addr, NetworkError> {
    let mut candidates = candidates(subnet, sandbox);
    let first = candidates
        .next()
        .ok_or_else(|| NetworkError::Failed(format!("no free address left in {subnet}")))?;
    // The peer starts down and unconfigured inside the sandbox (which cannot
    // change that: no CAP_NET_ADMIN), so nothing flows before
    // `configure_sandbox`.
    let batch = format!(
        "link add {ifname} type veth peer name eth0 netns {pid}\n\
         addr replace {gateway}/32 dev {ifname}\n\
         link set {ifname} up\n\
         route add {first}/32 dev {ifname} scope link\n"
    );
    let claimed = match run("ip", &["-batch", "-"], Some(&batch)).await {
        Ok(_) => Some(first),
        // Only the route failed (the link exists): the address is taken.
        Err(e) if e.contains("File exists") && exists(ifname) => None,
        Err(e) => {
            if exists(ifname) {
                let _ = delete(ifname).await;
            }
            return Err(NetworkError::Failed(format!(
                "create veth {ifname} into pid {pid}: {e}"
            )));
        }
    };
    // No IPv6 on Warren's links: the host side gets no link-local address.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
    // Strict reverse-path filtering: besides the nftables `antispoof` chain,
    // the kernel drops packets whose source is not routed to this veth.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter"), "1");
    match claimed {
        Some(addr) => Ok(addr),
        None => allocate_from(ifname, subnet, candidates).await,
    }
}

/// Candidate sandbox addresses of `subnet`, starting at a hash of the
/// sandbox id: every host address except the network address, the gateway
/// (the first address) and the broadcast address.
pub(crate) fn candidates(subnet: Ipv4Net, sandbox: &str) -> impl Iterator<Item = Ipv4Addr> {
    let size: u64 = 1u64 << (32 - u32::from(subnet.prefix.min(32)));
    let usable = size.saturating_sub(3);
    let base = u64::from(u32::from(subnet.addr));
    let digest = Sha256::digest(sandbox.as_bytes());
    let seed = u64::from(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]));
    let start = if usable == 0 { 0 } else { seed % usable };
    (0..usable).map(move |i| {
        let offset = 2 + (start + i) % usable;
        Ipv4Addr::from(u32::try_from(base + offset).unwrap_or(u32::MAX))
    })
}

/// Picks the sandbox's address: the first candidate whose host route
/// `S/32 dev ifname` can be added (EEXIST = taken by some daemon).
pub(crate) async fn allocate(
    ifname: &str,
    subnet: Ipv4Net,
    sandbox: &str,
) -> Result<Ipv4Addr, NetworkError> {
    allocate_from(ifname, subnet, candidates(subnet, sandbox)).await
}

async fn allocate_from(
    ifname: &str,
    subnet: Ipv4Net,
    candidates: impl Iterator<Item = Ipv4Addr>,
) -> Result<Ipv4Addr, NetworkError> {
    for addr in candidates {
        let dst = format!("{addr}/32");
        match run(
            "ip",
            &["route", "add", &dst, "dev", ifname, "scope", "link"],
            None,
        )
        .await
        {
            Ok(_) => return Ok(addr),
            Err(e) if e.contains("File exists") => continue,
            Err(e) => {
                return Err(NetworkError::Failed(format!(
                    "add route {dst} dev {ifname}: {e}"
                )))
            }
        }
    }
    Err(NetworkError::Failed(format!(
        "no free address left in {subnet}"
    )))
}

/// Configures the sandbox side (idempotent): loopback and `eth0` up, `S/32`
/// on `eth0`, a link route to the gateway and the default route through it.
/// IPv6 is disabled on `eth0` (sandboxes are IPv4-only).
pub(crate) async fn configure_sandbox(
    pid: i32,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<(), NetworkError> {
    let pid_s = pid.to_string();
    // IPv6 is already off on `eth0`: the sandbox's launch disabled it for
    // interfaces created later (`conf/default/disable_ipv6`).
    let batch = format!(
        "link set lo up\n\
         link set eth0 up\n\
         addr replace {addr}/32 dev eth0\n\
         route replace {gateway}/32 dev eth0 scope link\n\
         route replace default via {gateway} dev eth0\n"
    );
    run(
        "nsenter",
        &["-t", &pid_s, "-n", "ip", "-batch", "-"],
        Some(&batch),
    )
    .await
    .map_err(|e| NetworkError::Failed(format!("configure eth0 in the sandbox (pid {pid}): {e}")))?;
    Ok(())
}

/// Deletes the host veth (its peer and its routes go with it). A missing
/// interface is fine.
pub(crate) async fn delete(ifname: &str) -> Result<(), NetworkError> {
    if !exists(ifname) {
        return Ok(());
    }
    match run("ip", &["link", "del", "dev", ifname], None).await {
        Ok(_) => Ok(()),
        Err(e) if e.contains("Cannot find device") || !exists(ifname) => Ok(()),
        Err(e) => Err(NetworkError::Failed(format!("delete veth {ifname}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_skip_network_gateway_and_broadcast() {
        let subnet: Ipv4Net = "10.9.0.0/29".parse().unwrap();
        let all: Vec<Ipv4Addr> = candidates(subnet, "abc").collect();
        assert_eq!(all.len(), 5);
        let mut sorted = all.clone();
        sorted.sort();
        let expected: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
        assert_eq!(sorted, expected);
        // Deterministic per id.
        assert_eq!(all, candidates(subnet, "abc").collect::<Vec<_>>());
    }

    #[test]
    fn tiny_subnets_have_no_candidates() {
        let subnet: Ipv4Net = "10.9.0.0/31".parse().unwrap();
        assert_eq!(candidates(subnet, "x").count(), 0);
    }
}
