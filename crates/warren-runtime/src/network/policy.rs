//! Egress policies: parsing and checking `allowOut` / `denyOut` entries, and
//! matching names against domain patterns (helper "net-policy-dns").
//!
//! Accepted entries:
//! - an IPv4 address (`198.51.100.7`, stored as a `/32`);
//! - an IPv4 CIDR (`203.0.113.0/24`). Host bits are accepted and cleared
//!   (`10.1.2.3/8` means `10.0.0.0/8`), the way `ip route` treats them;
//! - in `allowOut` only, a domain name (`example.com`) or a wildcard
//!   (`*.example.com`: every name strictly below `example.com`, not the name
//!   itself). Names are lowercased and one trailing dot is dropped. Labels
//!   follow RFC 1123 (1–63 characters of `[a-z0-9-]`, not starting or ending
//!   with `-`), the name has at most 253 characters and at least two labels
//!   besides the `*` (so `*.com` is refused: it would allow a whole TLD), and
//!   `*` may only be the whole first label. The last label may not be all
//!   digits (such an entry is read as a malformed address instead).
//!
//! IPv6 entries are refused (sandboxes have IPv4 only), as are empty entries
//! and lists of more than [`MAX_ENTRIES`] entries. Surrounding whitespace is
//! ignored. Duplicate entries are kept once.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The most entries `allowOut` or `denyOut` may hold.
pub const MAX_ENTRIES: usize = 256;

/// The longest domain name, in characters, without the trailing dot.
const MAX_NAME_LEN: usize = 253;

/// The longest label of a domain name.
const MAX_LABEL_LEN: usize = 63;

/// The network mode (mirrors the API's `NetworkMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    /// Loopback only.
    None,
    /// Only what the policy allows.
    Allowlist,
    /// Everything but what is denied or always blocked.
    Internet,
}

/// An IPv4 network: address and prefix length (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// The netmask of this network as a number.
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        }
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
        // Digits only: `u8::from_str` would also take "+8".
        let prefix: u8 = Some(prefix)
            .filter(|p| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?} has a prefix length outside 0..=32"))?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

/// A domain pattern: `example.com` (that name) or `*.example.com` (any name
/// below it, not the name itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern {
    /// Lowercase, without a trailing dot.
    pub suffix: String,
    /// `*.` form.
    pub wildcard: bool,
}

impl DomainPattern {
    /// Whether `name` (already lowercase, without a trailing dot) matches.
    fn matches_normalised(&self, name: &str) -> bool {
        if self.wildcard {
            name.len() > self.suffix.len() + 1
                && name.ends_with(self.suffix.as_str())
                && name.as_bytes()[name.len() - self.suffix.len() - 1] == b'.'
        } else {
            name == self.suffix
        }
    }

    /// Whether `name` matches (case-insensitive, a trailing dot ignored).
    pub fn matches(&self, name: &str) -> bool {
        self.matches_normalised(&normalise_name(name))
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.suffix)
        } else {
            f.write_str(&self.suffix)
        }
    }
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// The mode.
    pub mode: NetMode,
    /// Allowed networks and addresses.
    pub allow_nets: Vec<Ipv4Net>,
    /// Allowed domain patterns.
    pub allow_domains: Vec<DomainPattern>,
    /// Denied networks and addresses.
    pub deny_nets: Vec<Ipv4Net>,
}

/// A bad `allowOut`/`denyOut` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} entry {entry:?}: {reason}")]
pub struct PolicyError {
    /// `allowOut` or `denyOut`.
    pub field: &'static str,
    /// The entry as given.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One parsed entry.
enum Entry {
    Net(Ipv4Net),
    Domain(DomainPattern),
}

/// Checks and compiles a policy.
pub fn compile(
    mode: NetMode,
    allow_out: &[String],
    deny_out: &[String],
) -> Result<CompiledPolicy, PolicyError> {
    let mut policy = CompiledPolicy {
        mode,
        allow_nets: Vec::new(),
        allow_domains: Vec::new(),
        deny_nets: Vec::new(),
    };
    check_count("allowOut", allow_out)?;
    check_count("denyOut", deny_out)?;
    for raw in allow_out {
        match parse_entry(raw).map_err(|reason| error("allowOut", raw, reason))? {
            Entry::Net(net) => push_unique(&mut policy.allow_nets, net),
            Entry::Domain(pattern) => push_unique(&mut policy.allow_domains, pattern),
        }
    }
    for raw in deny_out {
        match parse_entry(raw).map_err(|reason| error("denyOut", raw, reason))? {
            Entry::Net(net) => push_unique(&mut policy.deny_nets, net),
            Entry::Domain(_) => {
                return Err(error(
                    "denyOut",
                    raw,
                    "denyOut takes IPv4 addresses and CIDRs, not domain names".into(),
                ))
            }
        }
    }
    Ok(policy)
}

impl CompiledPolicy {
    /// Whether the resolver may answer this name: every name in `internet`
    /// mode, names matching an `allowOut` domain pattern in `allowlist` mode,
    /// none in `none` mode. Case-insensitive; a trailing dot is ignored.
    pub fn allows_name(&self, name: &str) -> bool {
        match self.mode {
            NetMode::Internet => true,
            NetMode::Allowlist => self.matches_domain(name),
            NetMode::None => false,
        }
    }

    /// Whether the name matches one of the `allowOut` domain patterns,
    /// whatever the mode. The resolver opens the firewall only for the
    /// addresses of such names (in `internet` mode other names resolve but
    /// their addresses stay subject to `denyOut` and the private-range block).
    pub fn matches_domain(&self, name: &str) -> bool {
        if self.allow_domains.is_empty() {
            return false;
        }
        let name = normalise_name(name);
        self.allow_domains
            .iter()
            .any(|pattern| pattern.matches_normalised(&name))
    }
}

fn error(field: &'static str, entry: &str, reason: String) -> PolicyError {
    PolicyError {
        field,
        entry: entry.to_owned(),
        reason,
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn check_count(field: &'static str, entries: &[String]) -> Result<(), PolicyError> {
    match entries.get(MAX_ENTRIES) {
        Some(first_extra) => Err(error(
            field,
            first_extra,
            format!(
                "{field} has {} entries; at most {MAX_ENTRIES} are allowed",
                entries.len()
            ),
        )),
        None => Ok(()),
    }
}

/// Lowercases and drops one trailing dot.
fn normalise_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Parses one entry, returning why it is malformed.
fn parse_entry(raw: &str) -> Result<Entry, String> {
    let entry = raw.trim();
    if entry.is_empty() {
        return Err("empty entry".into());
    }
    if entry.contains(':') {
        let addr = entry.split_once('/').map_or(entry, |(addr, _)| addr);
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        if addr.parse::<Ipv6Addr>().is_ok() {
            return Err("IPv6 is not supported: sandboxes have IPv4 only".into());
        }
        return Err(
            "not an IPv4 address, IPv4 CIDR or domain name (ports and URLs are not accepted)"
                .into(),
        );
    }
    if entry.contains('/') {
        return entry.parse::<Ipv4Net>().map(Entry::Net).map_err(|_| {
            "not a valid IPv4 CIDR (expected ADDRESS/PREFIX with a prefix of 0 to 32)".into()
        });
    }
    let last_label = entry
        .strip_suffix('.')
        .unwrap_or(entry)
        .rsplit('.')
        .next()
        .unwrap_or_default();
    if !last_label.is_empty() && last_label.bytes().all(|b| b.is_ascii_digit()) {
        return entry
            .parse::<Ipv4Addr>()
            .map(|addr| Entry::Net(Ipv4Net { addr, prefix: 32 }))
            .map_err(|_| "not a valid IPv4 address".into());
    }
    parse_domain(entry).map(Entry::Domain)
}

/// Parses `example.com` or `*.example.com`.
fn parse_domain(entry: &str) -> Result<DomainPattern, String> {
    if !entry.is_ascii() {
        return Err(
            "domain names must be ASCII (write internationalised names in punycode, xn--…)".into(),
        );
    }
    let name = normalise_name(entry);
    if name.len() > MAX_NAME_LEN {
        return Err(format!("domain name longer than {MAX_NAME_LEN} characters"));
    }
    let (wildcard, suffix) = match name.strip_prefix("*.") {
        Some(suffix) => (true, suffix),
        None => (false, name.as_str()),
    };
    let labels: Vec<&str> = suffix.split('.').collect();
    for label in &labels {
        check_label(label)?;
    }
    if labels.len() < 2 {
        return Err(if wildcard {
            "a wildcard needs a domain of at least two labels after \"*.\" (e.g. *.example.com)"
                .into()
        } else {
            "a domain name needs at least two labels (e.g. example.com)".into()
        });
    }
    Ok(DomainPattern {
        suffix: suffix.to_owned(),
        wildcard,
    })
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("domain name has an empty label".into());
    }
    if label.contains('*') {
        return Err("\"*\" is only allowed as the whole first label (*.example.com)".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "domain label {label:?} is longer than {MAX_LABEL_LEN} characters"
        ));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "domain label {label:?} contains {bad:?} (allowed: letters, digits, '-')"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("domain label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn strings(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    fn allow(entries: &[&str]) -> Result<CompiledPolicy, PolicyError> {
        compile(NetMode::Allowlist, &strings(entries), &[])
    }

    fn deny(entries: &[&str]) -> Result<CompiledPolicy, PolicyError> {
        compile(NetMode::Internet, &[], &strings(entries))
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_cidrs_compile() {
        let policy = allow(&[
            "198.51.100.7",
            "203.0.113.0/24",
            " 10.0.0.0/8 ",
            "0.0.0.0/0",
        ])
        .unwrap();
        assert_eq!(
            policy.allow_nets,
            vec![
                net("198.51.100.7/32"),
                net("203.0.113.0/24"),
                net("10.0.0.0/8"),
                net("0.0.0.0/0")
            ]
        );
        assert!(policy.allow_domains.is_empty());
        assert!(policy.deny_nets.is_empty());
        assert_eq!(policy.mode, NetMode::Allowlist);
    }

    #[test]
    fn cidr_host_bits_are_cleared() {
        let policy = allow(&["10.1.2.3/8", "192.168.7.9/31"]).unwrap();
        assert_eq!(
            policy.allow_nets,
            vec![net("10.0.0.0/8"), net("192.168.7.8/31")]
        );
        assert_eq!(policy.allow_nets[0].addr, Ipv4Addr::new(10, 0, 0, 0));
    }

    #[test]
    fn bad_cidrs_and_addresses_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0.0/abc",
            "300.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "10.0.0.256/24",
            "/24",
        ] {
            let err = allow(&[bad]).unwrap_err();
            assert_eq!(err.field, "allowOut", "{bad}");
            assert_eq!(err.entry, bad);
            let err = deny(&[bad]).unwrap_err();
            assert_eq!(err.field, "denyOut", "{bad}");
        }
    }

    #[test]
    fn domains_are_normalised() {
        let policy = allow(&["Example.COM.", "*.Pypi.org", "a-b.c0.io"]).unwrap();
        assert_eq!(
            policy.allow_domains,
            vec![
                DomainPattern {
                    suffix: "example.com".into(),
                    wildcard: false
                },
                DomainPattern {
                    suffix: "pypi.org".into(),
                    wildcard: true
                },
                DomainPattern {
                    suffix: "a-b.c0.io".into(),
                    wildcard: false
                },
            ]
        );
        assert_eq!(policy.allow_domains[1].to_string(), "*.pypi.org");
        assert!(policy.allow_nets.is_empty());
    }

    #[test]
    fn bad_domains_are_refused() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        for bad in [
            "localhost",
            "*.com",
            "*",
            "*.",
            "a.*.example.com",
            "*example.com",
            "foo*.example.com",
            "**.example.com",
            "-a.example.com",
            "a-.example.com",
            "a..example.com",
            ".example.com",
            "example.com..",
            "exa_mple.com",
            "exa mple.com",
            "ex@mple.com",
            "bücher.de",
            "http://example.com",
            "example.com:443",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let err = allow(&[bad]).unwrap_err();
            assert_eq!(err.field, "allowOut", "{bad}");
            assert_eq!(err.entry, bad, "{bad}");
        }
    }

    #[test]
    fn label_and_name_length_limits() {
        let label63 = format!("{}.com", "a".repeat(63));
        assert!(allow(&[label63.as_str()]).is_ok());
        // 4 labels of 61 + ".com": 61*4 + 3 + 4 = 251 characters.
        let name251 = format!("{}.com", vec!["b".repeat(61); 4].join("."));
        assert_eq!(name251.len(), 251);
        assert!(allow(&[name251.as_str()]).is_ok());
        assert!(allow(&[format!("{name251}.").as_str()]).is_ok());
        let name254 = format!("{}.co", vec!["c".repeat(62); 4].join("."));
        assert_eq!(name254.len(), 254);
        assert!(allow(&[name254.as_str()]).is_err());
    }

    #[test]
    fn ipv6_is_refused_with_a_clear_reason() {
        for bad in [
            "::1",
            "2001:db8::1",
            "2001:db8::/32",
            "[2001:db8::1]",
            "fe80::1",
        ] {
            let err = allow(&[bad]).unwrap_err();
            assert_eq!(
                err.reason,
                "IPv6 is not supported: sandboxes have IPv4 only"
            );
            let err = deny(&[bad]).unwrap_err();
            assert_eq!(err.field, "denyOut");
            assert!(err.to_string().contains("IPv6 is not supported"), "{err}");
        }
    }

    #[test]
    fn deny_takes_addresses_only() {
        let policy = deny(&["198.51.100.7", "203.0.113.0/24"]).unwrap();
        assert_eq!(
            policy.deny_nets,
            vec![net("198.51.100.7/32"), net("203.0.113.0/24")]
        );
        let err = deny(&["example.com"]).unwrap_err();
        assert_eq!(err.field, "denyOut");
        assert!(err.reason.contains("denyOut takes IPv4 addresses"), "{err}");
        assert!(deny(&["*.example.com"]).is_err());
    }

    #[test]
    fn empty_entries_are_refused() {
        for bad in ["", "   ", "\t"] {
            let err = allow(&[bad]).unwrap_err();
            assert_eq!(err.reason, "empty entry");
            assert!(deny(&[bad]).is_err());
        }
    }

    #[test]
    fn too_many_entries_are_refused() {
        let many: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        assert!(compile(
            NetMode::Allowlist,
            &many[..MAX_ENTRIES],
            &many[..MAX_ENTRIES]
        )
        .is_ok());
        let err = compile(NetMode::Allowlist, &many, &[]).unwrap_err();
        assert_eq!(err.field, "allowOut");
        assert!(err.reason.contains("257 entries"), "{err}");
        let err = compile(NetMode::Allowlist, &[], &many).unwrap_err();
        assert_eq!(err.field, "denyOut");
    }

    #[test]
    fn error_display_names_field_and_entry() {
        let err = allow(&["example.com", "bad..name"]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("allowOut entry \"bad..name\": "), "{text}");
        let err = deny(&["10.0.0.0/40"]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("denyOut entry \"10.0.0.0/40\": "));
    }

    #[test]
    fn duplicates_are_kept_once() {
        let policy =
            allow(&["a.example.com", "A.example.com.", "10.0.0.1", "10.0.0.1/32"]).unwrap();
        assert_eq!(policy.allow_domains.len(), 1);
        assert_eq!(policy.allow_nets.len(), 1);
    }

    #[test]
    fn allowlist_matches_exact_and_wildcard_names() {
        let policy = allow(&["example.com", "*.pypi.org"]).unwrap();
        assert!(policy.allows_name("example.com"));
        assert!(policy.allows_name("EXAMPLE.com."));
        assert!(!policy.allows_name("www.example.com"));
        assert!(!policy.allows_name("example.com.evil.net"));
        assert!(!policy.allows_name("notexample.com"));
        assert!(policy.allows_name("files.pypi.org"));
        assert!(policy.allows_name("a.b.Pypi.ORG."));
        assert!(
            !policy.allows_name("pypi.org"),
            "the wildcard excludes the name itself"
        );
        assert!(!policy.allows_name("evilpypi.org"));
        assert!(!policy.allows_name(".pypi.org"));
        assert!(!policy.allows_name(""));
        assert!(!policy.allows_name("."));
    }

    #[test]
    fn modes_decide_names() {
        let entries = strings(&["example.com"]);
        let internet = compile(NetMode::Internet, &entries, &[]).unwrap();
        assert!(internet.allows_name("anything.test"));
        assert!(internet.matches_domain("example.com"));
        assert!(!internet.matches_domain("anything.test"));
        let none = compile(NetMode::None, &entries, &[]).unwrap();
        assert!(!none.allows_name("example.com"));
        let empty = compile(NetMode::Allowlist, &[], &[]).unwrap();
        assert!(!empty.allows_name("example.com"));
    }

    #[test]
    fn nets_contain_addresses() {
        let n = net("203.0.113.0/24");
        assert!(n.contains(Ipv4Addr::new(203, 0, 113, 200)));
        assert!(!n.contains(Ipv4Addr::new(203, 0, 114, 1)));
        assert!(net("0.0.0.0/0").contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert!(net("10.0.0.1").contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!net("10.0.0.1").contains(Ipv4Addr::new(10, 0, 0, 2)));
    }
}
