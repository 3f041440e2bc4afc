//! Image names and registry references: parsing and validation.

use super::ImageError;

/// Docker Hub's registry host, used for references without one.
pub(crate) const DOCKER_HUB: &str = "registry-1.docker.io";

/// A parsed registry reference (`busybox`, `host:5000/team/app:v1`,
/// `repo@sha256:…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), e.g. `registry-1.docker.io`.
    pub registry: String,
    /// Repository, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, when given (`latest` when neither a tag nor a digest is).
    pub tag: Option<String>,
    /// Digest `sha256:…`, when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a pull reference. `busybox` becomes
    /// `registry-1.docker.io/library/busybox:latest`.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let invalid = || ImageError::InvalidReference(reference.to_string());
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                parse_digest(digest).map_err(|_| invalid())?;
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        let (host, path) = split_host(rest);
        let (path, tag) = split_tag(path);
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid());
            }
        }
        if !valid_repository(path) {
            return Err(invalid());
        }
        if let Some(host) = host {
            if !valid_host(host) {
                return Err(invalid());
            }
        }
        let registry = match host {
            None | Some("docker.io") | Some("index.docker.io") => DOCKER_HUB.to_string(),
            Some(host) => host.to_string(),
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Whether the registry may be spoken to over plain HTTP without
    /// `insecure`: loopback hosts only.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => self.registry.split(':').next().unwrap_or(&self.registry),
        };
        matches!(host, "localhost" | "127.0.0.1" | "::1")
    }

    /// What `reference` is stored as: the reference as written, normalized;
    /// a digest-only reference gets the tag `sha256-<hex>` so it never
    /// replaces a tagged image.
    pub(crate) fn store_name(reference: &str) -> Result<String, ImageError> {
        match reference.split_once('@') {
            None => normalize_name(reference),
            Some((rest, digest)) => {
                let (_, path) = split_host(rest);
                if split_tag(path).1.is_some() {
                    normalize_name(rest)
                } else {
                    let hex = parse_digest(digest)?;
                    normalize_name(&format!("{rest}:sha256-{hex}"))
                }
            }
        }
    }
}

/// Validates a name (`[host[:port]/]repo/path[:tag]`) and adds `:latest`
/// when it has no tag. The name `host` is reserved for the host image.
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let invalid = || ImageError::InvalidReference(name.to_string());
    let (host, path) = split_host(name);
    let (path, tag) = split_tag(path);
    if let Some(host) = host {
        if !valid_host(host) {
            return Err(invalid());
        }
    }
    if !valid_repository(path) || (host.is_none() && path == "host") {
        return Err(invalid());
    }
    let tag = tag.unwrap_or("latest");
    if !valid_tag(tag) {
        return Err(invalid());
    }
    Ok(match host {
        Some(host) => format!("{host}/{path}:{tag}"),
        None => format!("{path}:{tag}"),
    })
}

/// Returns the hex part of a `sha256:<64 hex>` digest.
pub(crate) fn parse_digest(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(ImageError::InvalidReference(digest.to_string())),
    }
}

/// Splits `host[:port]/rest` when the first component looks like a host
/// (has a `.` or `:`, or is `localhost`), as docker does.
fn split_host(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Splits a trailing `:tag` off the last path component.
fn split_tag(path: &str) -> (&str, Option<&str>) {
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    match path[last_slash..].rfind(':') {
        Some(i) => (&path[..last_slash + i], Some(&path[last_slash + i + 1..])),
        None => (path, None),
    }
}

fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[') {
        let Some((addr, port)) = v6.split_once(']') else {
            return false;
        };
        let port_ok = port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return !addr.is_empty()
            && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
            && port_ok;
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn valid_repository(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|component| {
            !component.is_empty()
                && component != "."
                && component != ".."
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

fn valid_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn short_names_go_to_docker_hub_library() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, DOCKER_HUB);
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        let r = Reference::parse("docker.io/user/app:1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            (DOCKER_HUB, "user/app")
        );
        assert_eq!(r.tag.as_deref(), Some("1.2"));
    }

    #[test]
    fn host_port_repo_tag_and_digest() {
        let r = Reference::parse("127.0.0.1:5000/test/busybox:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/busybox");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback());
        let r = Reference::parse(&format!("localhost:5000/a/b@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(format!("sha256:{HEX}")));
        assert!(r.is_loopback());
        let r = Reference::parse("[::1]:5000/x:y").unwrap();
        assert!(r.is_loopback());
        assert!(!Reference::parse("ghcr.io/org/tool").unwrap().is_loopback());
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "a:",
            "a@sha256:12",
            "x/../y",
            "a:b c",
            "ho st/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn store_names() {
        assert_eq!(Reference::store_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            Reference::store_name(&format!("h:1/a@sha256:{HEX}")).unwrap(),
            format!("h:1/a:sha256-{HEX}")
        );
        assert_eq!(
            Reference::store_name(&format!("a:t@sha256:{HEX}")).unwrap(),
            "a:t"
        );
    }

    #[test]
    fn names_are_normalized_and_validated() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalize_name("tools/bb:1.0_rc-2").unwrap(),
            "tools/bb:1.0_rc-2"
        );
        assert_eq!(
            normalize_name("127.0.0.1:5000/tools/busybox").unwrap(),
            "127.0.0.1:5000/tools/busybox:latest"
        );
        assert_eq!(
            normalize_name("host:tag-ok/x").unwrap_err().to_string(),
            ImageError::InvalidReference("host:tag-ok/x".into()).to_string()
        );
        for bad in [
            "host",
            "host:latest",
            "UPPER",
            "a b",
            "a/",
            "/a",
            "a:",
            "a:b/c:",
            &format!("a:{}", "t".repeat(129)),
            "x:tag!",
        ] {
            assert!(normalize_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_name(&format!("a:{}", "t".repeat(128))).is_ok());
        assert!(normalize_name("example.com/host").is_ok());
    }

    #[test]
    fn digests() {
        assert_eq!(parse_digest(&format!("sha256:{HEX}")).unwrap(), HEX);
        assert!(parse_digest("sha256:ABC").is_err());
        assert!(parse_digest(&format!("sha512:{HEX}")).is_err());
    }
}
