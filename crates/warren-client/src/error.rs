//! The one error type of the SDK.

use std::io;

use warren_api::ErrorBody;

/// Everything that can go wrong when talking to a Warren daemon.
///
/// `Display` is a single line meant for users; the variants carry enough
/// detail for programs to decide what to do (see [`ClientError::is_connect`]
/// and [`ClientError::is_not_found`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon address could not be understood.
    #[error("invalid Warren URL {url:?}: {reason}")]
    InvalidUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be opened to the daemon (it is not running, the
    /// socket does not exist, or permission was denied).
    #[error("cannot connect to the Warren daemon at {target}: {source}")]
    Connect {
        /// The socket path or `host:port` that was tried.
        target: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// The daemon answered with an error status and an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status code.
        status: u16,
        /// Stable snake_case error code, for example `not_found`.
        code: String,
        /// A sentence that tells the user what to change.
        message: String,
    },
    /// The connection broke while the request or response was in flight.
    #[error("connection to the Warren daemon at {target} failed: {source}")]
    Http {
        /// The socket path or `host:port` in use.
        target: String,
        /// The HTTP layer's error.
        source: hyper::Error,
    },
    /// The API key cannot be sent (for example it contains a newline).
    #[error("invalid API key: {0}")]
    InvalidApiKey(String),
    /// The daemon answered with something that is not what the API promises.
    #[error("unexpected response from the Warren daemon: {0}")]
    Protocol(String),
}

impl ClientError {
    /// True when no connection could be made, as opposed to the daemon
    /// answering with an error.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// True when nothing listens at the address: the unix socket does not
    /// exist or the connection was refused. This is the case in which a
    /// client may start a daemon itself.
    pub fn is_daemon_absent(&self) -> bool {
        match self {
            Self::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }

    /// True when the daemon answered 404 (unknown sandbox or route).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }

    /// The API error code (`not_found`, `invalid_value`, …) when the daemon
    /// answered with an error.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Longest slice of a non-JSON error body quoted in a message.
const MAX_QUOTED_BODY: usize = 200;

/// Turns a non-2xx response into [`ClientError::Api`]. Bodies that are not an
/// [`ErrorBody`] (a proxy's HTML page, say) still give a readable message.
pub(crate) fn api_error(status: u16, body: &[u8]) -> ClientError {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return ClientError::Api {
            status,
            code: parsed.error.code,
            message: parsed.error.message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let message = if text.is_empty() {
        format!("the daemon answered HTTP {status} with no error body")
    } else {
        let quoted: String = text.chars().take(MAX_QUOTED_BODY).collect();
        format!("the daemon answered HTTP {status}: {quoted}")
    };
    ClientError::Api {
        status,
        code: code_for_status(status).to_owned(),
        message,
    }
}

/// The code Warren would have sent with this status, for bodies without one.
fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_request",
        401 | 403 => "unauthorized",
        404 => "not_found",
        409 => "invalid_state",
        413 => "payload_too_large",
        422 => "invalid_value",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_becomes_api_error() {
        let body = br#"{"error":{"code":"not_found","message":"no sandbox with id abc"}}"#;
        let err = api_error(404, body);
        assert!(err.is_not_found());
        assert_eq!(err.api_code(), Some("not_found"));
        assert_eq!(
            err.to_string(),
            "no sandbox with id abc (not_found, HTTP 404)"
        );
    }

    #[test]
    fn non_json_body_is_quoted_on_one_line() {
        let err = api_error(502, b"<html>\n  Bad   gateway\n</html>\n");
        match &err {
            ClientError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!(*status, 502);
                assert_eq!(code, "internal");
                assert_eq!(
                    message,
                    "the daemon answered HTTP 502: <html> Bad gateway </html>"
                );
            }
            other => panic!("expected Api error, got {other:?}"),
        }
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn empty_body_still_names_status() {
        let err = api_error(401, b"");
        assert_eq!(err.api_code(), Some("unauthorized"));
        assert!(err.to_string().contains("HTTP 401"));
    }

    #[test]
    fn long_body_is_truncated() {
        let body = "x".repeat(10_000);
        let err = api_error(500, body.as_bytes());
        assert!(err.to_string().len() < 400);
    }

    #[test]
    fn refused_and_missing_socket_mean_daemon_absent() {
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionRefused] {
            let err = ClientError::Connect {
                target: "/run/warren/warren.sock".into(),
                source: io::Error::from(kind),
            };
            assert!(err.is_connect());
            assert!(err.is_daemon_absent());
        }
        let denied = ClientError::Connect {
            target: "/run/warren/warren.sock".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(denied.is_connect());
        assert!(!denied.is_daemon_absent());
    }
}
