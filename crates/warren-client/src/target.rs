//! Where the daemon is: a unix socket or a TCP `host:port`, parsed from a URL.

use std::fmt;
use std::path::PathBuf;

use crate::ClientError;

/// The daemon's socket when nothing else is configured.
pub const DEFAULT_SOCKET_PATH: &str = "/run/warren/warren.sock";

/// The address of a Warren daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket path (the local default; no API key needed).
    Unix(PathBuf),
    /// A TCP daemon, reached over plain HTTP.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// Path prefix put before every route (empty, or `/something`
        /// without a trailing slash), for daemons behind a reverse proxy.
        base_path: String,
    },
}

impl Target {
    /// Parses `unix:/path`, `unix:///path` or `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Target, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = url.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("no socket path after `unix:`"));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if url.starts_with("https://") {
            return Err(invalid(
                "https is not supported by this client; use http:// behind a TLS proxy or a unix socket",
            ));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(invalid("expected http://host:port or unix:/path/to/socket"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported; use an API key",
            ));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad host or port"))?;
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if path.contains('?') || path.contains('#') {
            return Err(invalid("a query or fragment is not allowed"));
        }
        Ok(Target::Tcp {
            host: host.to_owned(),
            port,
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The value of the HTTP `Host` header for this target.
    pub(crate) fn host_header(&self) -> String {
        match self {
            Target::Unix(_) => "localhost".to_owned(),
            Target::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Tcp { host, port, .. } => format!("{host}:{port}"),
        }
    }

    /// The request target (path and query) for a route such as `/v1/sandboxes`.
    pub(crate) fn request_uri(&self, route: &str) -> String {
        match self {
            Target::Unix(_) => route.to_owned(),
            Target::Tcp { base_path, .. } => format!("{base_path}{route}"),
        }
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; port 80 by default.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => 80,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, 80)),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "{}", path.display()),
            Target::Tcp { base_path, .. } => write!(f, "http://{}{base_path}", self.host_header()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, base_path: &str) -> Target {
        Target::Tcp {
            host: host.into(),
            port,
            base_path: base_path.into(),
        }
    }

    #[test]
    fn parses_unix_urls() {
        assert_eq!(
            Target::parse("unix:/run/w.sock").ok(),
            Some(Target::Unix("/run/w.sock".into()))
        );
        assert_eq!(
            Target::parse("unix:///run/w.sock").ok(),
            Some(Target::Unix("/run/w.sock".into()))
        );
        assert!(Target::parse("unix:").is_err());
    }

    #[test]
    fn parses_http_urls() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080").ok(),
            Some(tcp("127.0.0.1", 8080, ""))
        );
        assert_eq!(
            Target::parse("http://warren.local/").ok(),
            Some(tcp("warren.local", 80, ""))
        );
        assert_eq!(
            Target::parse("http://[::1]:9000/warren/").ok(),
            Some(tcp("::1", 9000, "/warren"))
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "https://x:1",
            "ftp://x",
            "localhost:8080",
            "http://:80",
            "http://h:notaport",
            "http://h:99999",
            "http://u:p@h:1",
            "http://h:1/?q=1",
            "http://::1:80",
        ] {
            let err = Target::parse(bad).err();
            assert!(
                matches!(err, Some(ClientError::InvalidUrl { .. })),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn builds_host_header_and_uri() {
        let t = tcp("::1", 9000, "/warren");
        assert_eq!(t.host_header(), "[::1]:9000");
        assert_eq!(t.request_uri("/v1/sandboxes"), "/warren/v1/sandboxes");
        assert_eq!(t.to_string(), "http://[::1]:9000/warren");
        let u = Target::Unix("/s".into());
        assert_eq!(u.host_header(), "localhost");
        assert_eq!(u.request_uri("/healthz"), "/healthz");
    }
}
