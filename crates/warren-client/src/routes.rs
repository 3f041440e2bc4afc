//! The REST routes, built as strings with their path segments and query
//! values percent-encoded.

use std::fmt::Write as _;

use warren_api::SandboxState;

/// `GET /healthz`.
pub(crate) const HEALTH: &str = "/healthz";

/// `POST /v1/sandboxes`.
pub(crate) const SANDBOXES: &str = "/v1/sandboxes";

/// `GET /v1/sandboxes?state=…&metadata.k=v…`.
pub(crate) fn list_sandboxes(state: Option<SandboxState>, metadata: &[(String, String)]) -> String {
    let mut params: Vec<(String, &str)> = Vec::with_capacity(metadata.len() + 1);
    if let Some(state) = state {
        params.push(("state".to_owned(), state.as_str()));
    }
    for (key, value) in metadata {
        params.push((format!("metadata.{key}"), value));
    }
    let mut uri = SANDBOXES.to_owned();
    for (i, (key, value)) in params.iter().enumerate() {
        uri.push(if i == 0 { '?' } else { '&' });
        uri.push_str(&encode(key));
        uri.push('=');
        uri.push_str(&encode(value));
    }
    uri
}

/// `/v1/sandboxes/{id}`.
pub(crate) fn sandbox(id: &str) -> String {
    format!("{SANDBOXES}/{}", encode(id))
}

/// `/v1/sandboxes/{id}/pause`.
pub(crate) fn pause(id: &str) -> String {
    format!("{SANDBOXES}/{}/pause", encode(id))
}

/// `/v1/sandboxes/{id}/resume`.
pub(crate) fn resume(id: &str) -> String {
    format!("{SANDBOXES}/{}/resume", encode(id))
}

/// `/v1/sandboxes/{id}/exec`.
pub(crate) fn exec(id: &str) -> String {
    format!("{SANDBOXES}/{}/exec", encode(id))
}

/// `/v1/sandboxes/{id}/processes`.
pub(crate) fn processes(id: &str) -> String {
    format!("{SANDBOXES}/{}/processes", encode(id))
}

/// `/v1/sandboxes/{id}/processes/{pid}`.
pub(crate) fn process(id: &str, pid: i32) -> String {
    format!("{}/{pid}", processes(id))
}

/// Percent-encodes everything except RFC 3986 unreserved characters, so the
/// result is safe both as a path segment and as a query key or value.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_without_filters_has_no_query() {
        assert_eq!(list_sandboxes(None, &[]), "/v1/sandboxes");
    }

    #[test]
    fn list_with_state_and_labels() {
        let labels = vec![
            ("team".to_owned(), "ml".to_owned()),
            ("run id".to_owned(), "a&b=c/d".to_owned()),
        ];
        assert_eq!(
            list_sandboxes(Some(SandboxState::Running), &labels),
            "/v1/sandboxes?state=running&metadata.team=ml&metadata.run%20id=a%26b%3Dc%2Fd"
        );
    }

    #[test]
    fn list_with_labels_only() {
        let labels = vec![("k".to_owned(), "".to_owned())];
        assert_eq!(list_sandboxes(None, &labels), "/v1/sandboxes?metadata.k=");
    }

    #[test]
    fn ids_cannot_escape_their_segment() {
        assert_eq!(sandbox("abc123"), "/v1/sandboxes/abc123");
        assert_eq!(sandbox("../healthz"), "/v1/sandboxes/..%2Fhealthz");
        assert_eq!(exec("a b?c"), "/v1/sandboxes/a%20b%3Fc/exec");
    }

    #[test]
    fn encodes_utf8_bytes() {
        assert_eq!(encode("é"), "%C3%A9");
    }
}
