//! `warren create --network …` flags, `warren network ID …`, and the
//! daemon's network flags.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use warren_api::{NetworkInfo, NetworkMode, NetworkPolicy};

use crate::output::print_json;

/// Parses `none`, `allowlist` or `internet`.
pub fn parse_network_mode(s: &str) -> Result<NetworkMode, String> {
    match s {
        "none" => Ok(NetworkMode::None),
        "allowlist" => Ok(NetworkMode::Allowlist),
        "internet" => Ok(NetworkMode::Internet),
        other => Err(format!("{other:?} is not one of none, allowlist, internet")),
    }
}

/// Parses a DNS server: `IP` (port 53), `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_dns_upstream(s: &str) -> Result<SocketAddr, String> {
    warren_runtime::network::dns::parse_upstream(s)
        .ok_or_else(|| format!("{s:?} is not an IP address or IP:PORT"))
}

/// `warren serve` network flags.
#[derive(Debug, Clone, Default, Args)]
pub struct NetworkServeArgs {
    /// Network mode of sandboxes created without `--network`: none,
    /// allowlist or internet (default internet; none when the host cannot
    /// network sandboxes).
    #[arg(long, env = "WARREN_DEFAULT_NETWORK", value_name = "MODE", value_parser = parse_network_mode)]
    pub default_network: Option<NetworkMode>,
    /// IPv4 range sandbox addresses come from; its first address is the
    /// sandboxes' gateway and DNS server.
    #[arg(long, env = "WARREN_NET_SUBNET", value_name = "CIDR", default_value = warren_server::DEFAULT_SUBNET)]
    pub net_subnet: String,
    /// Upstream DNS server of Warren's resolver, IP or IP:PORT (repeatable;
    /// default: the host's /etc/resolv.conf nameservers).
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = parse_dns_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
}

impl NetworkServeArgs {
    /// The server's settings.
    pub fn settings(&self) -> warren_server::NetworkSettings {
        warren_server::NetworkSettings {
            default_mode: self.default_network,
            subnet: Some(self.net_subnet.clone()),
            dns_upstream: self.dns_upstream.clone(),
        }
    }
}

/// `--network`, `--allow-out`, `--deny-out` of `create` and `run`.
#[derive(Debug, Clone, Default, Args)]
pub struct NetworkCreateOptions {
    /// Network mode: none (loopback only), allowlist (only --allow-out) or
    /// internet (default).
    #[arg(long, value_name = "MODE", value_parser = parse_network_mode)]
    pub network: Option<NetworkMode>,
    /// CIDR, address or domain (`*.example.com` allowed) the sandbox may
    /// reach (repeatable).
    #[arg(long = "allow-out", value_name = "X")]
    pub allow_out: Vec<String>,
    /// CIDR or address the sandbox may not reach (repeatable).
    #[arg(long = "deny-out", value_name = "X")]
    pub deny_out: Vec<String>,
}

impl NetworkCreateOptions {
    /// The policy to send (`None` when no flag was given).
    pub fn to_policy(&self) -> Option<NetworkPolicy> {
        if self.network.is_none() && self.allow_out.is_empty() && self.deny_out.is_empty() {
            return None;
        }
        Some(NetworkPolicy {
            mode: self.network,
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
        })
    }
}

/// `warren network ID [--mode M] [--allow-out X]… [--deny-out X]…`.
#[derive(Debug, Clone, Args)]
pub struct NetworkArgs {
    /// Sandbox id.
    pub id: String,
    /// New mode: none, allowlist or internet.
    #[arg(long, value_name = "MODE", value_parser = parse_network_mode)]
    pub mode: Option<NetworkMode>,
    /// Replace the allowed CIDRs, addresses and domains (repeatable).
    #[arg(long = "allow-out", value_name = "X")]
    pub allow_out: Vec<String>,
    /// Replace the denied CIDRs and addresses (repeatable).
    #[arg(long = "deny-out", value_name = "X")]
    pub deny_out: Vec<String>,
    /// Empty the allow list.
    #[arg(long, conflicts_with = "allow_out")]
    pub clear_allow_out: bool,
    /// Empty the deny list.
    #[arg(long, conflicts_with = "deny_out")]
    pub clear_deny_out: bool,
}

impl NetworkArgs {
    /// Whether any change was asked for (else the command only shows).
    fn changes(&self) -> bool {
        self.mode.is_some()
            || !self.allow_out.is_empty()
            || !self.deny_out.is_empty()
            || self.clear_allow_out
            || self.clear_deny_out
    }
}

/// A list for the PATCH body: replaced when given or cleared, else kept.
fn list_change(list: &[String], clear: bool) -> Option<&[String]> {
    (clear || !list.is_empty()).then_some(list)
}

/// Runs `warren network`: shows the sandbox's policy and address, or
/// changes the policy when a flag is given (then shows the new one).
pub async fn run(
    client: &warren_client::Client,
    args: &NetworkArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let info = if args.changes() {
        client
            .patch_network(
                &args.id,
                args.mode,
                list_change(&args.allow_out, args.clear_allow_out),
                list_change(&args.deny_out, args.clear_deny_out),
            )
            .await?
    } else {
        client.network(&args.id).await?
    };
    if json {
        print_json(&info)?;
    } else {
        print!("{}", describe(&info));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form: one `key: value` line each.
fn describe(info: &NetworkInfo) -> String {
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(", ")
        }
    };
    format!(
        "mode:      {}\nallowOut:  {}\ndenyOut:   {}\naddress:   {}\n",
        info.mode.as_str(),
        list(&info.allow_out),
        list(&info.deny_out),
        info.address.as_deref().unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_upstream_takes_an_ip_or_ip_and_port() {
        assert_eq!(
            parse_dns_upstream("192.0.2.1").unwrap(),
            "192.0.2.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns_upstream("192.0.2.1:5353").unwrap(),
            "192.0.2.1:5353".parse().unwrap()
        );
        assert!(parse_dns_upstream("resolver.example").is_err());
    }

    #[test]
    fn no_flag_sends_no_policy() {
        assert_eq!(NetworkCreateOptions::default().to_policy(), None);
        let opts = NetworkCreateOptions {
            allow_out: vec!["pypi.org".into()],
            ..Default::default()
        };
        assert_eq!(
            opts.to_policy(),
            Some(NetworkPolicy {
                mode: None,
                allow_out: vec!["pypi.org".into()],
                deny_out: Vec::new(),
            })
        );
    }

    #[test]
    fn description_shows_dashes_for_empty_parts() {
        let text = describe(&NetworkInfo {
            mode: NetworkMode::Allowlist,
            allow_out: vec!["a.test".into(), "10.0.0.0/8".into()],
            ..Default::default()
        });
        assert!(text.contains("mode:      allowlist\n"));
        assert!(text.contains("allowOut:  a.test, 10.0.0.0/8\n"));
        assert!(text.contains("denyOut:   -\n"));
        assert!(text.contains("address:   -\n"));
    }
}
