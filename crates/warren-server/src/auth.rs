//! Authentication and authorization of every request, on both listeners.
//!
//! The unix socket is protected by its file mode: a request there without
//! credentials is [`Caller::Local`] and may do everything. A request that
//! carries credentials (an API key `wrn_…` or a sandbox token `wst_…`) is
//! held to them on either listener. On TCP a request without credentials is
//! [`Caller::Anonymous`], which reaches only public paths and the port proxy
//! (whose handler then serves only public ports).
//!
//! What each route needs is decided by one pure function, [`route_rule`],
//! from the method and the path alone. Routes it does not know (a typo, or a
//! route added without a rule) need an `admin` key: a new route is closed to
//! narrower keys and to tokens until someone gives it a rule, and an admin
//! or a local caller still gets the router's 404 for a typo. A unit test
//! walks the OpenAPI document so that a documented route cannot fall through
//! to that catch-all unnoticed.
//!
//! Credentials in the URL (`?token=`): only sandbox tokens (`wst_…`), only
//! on the port proxy and the event-stream routes, and they are removed from
//! the URI before any handler (or the sandbox's app) sees it. An API key
//! (`wrn_…`) there is refused (401): it would end up in browser history,
//! `Referer` headers and the sandbox's app. Any other `token` value is not a
//! Warren credential and is left alone, so that an app behind the proxy with
//! its own `?token=` (Jupyter, say) keeps working.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use warren_api::{ApiKeyScope, ErrorCode, TokenScope};
use warren_store::API_KEY_PREFIX;

use crate::access::{TokenError, TOKEN_PREFIX};
use crate::error::ApiError;
use crate::AppState;

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The local unix socket (file mode 0600).
    Unix,
    /// The TCP listener (`--listen`).
    Tcp,
}

/// Who sent a request, as established by [`authenticate`]; handlers read it
/// from the request extensions (`Extension<Caller>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The unix socket without credentials: everything.
    Local,
    /// An API key with its scopes.
    Key {
        /// The key's id.
        id: String,
        /// Its scopes.
        scopes: Vec<warren_api::ApiKeyScope>,
    },
    /// A sandbox token: one sandbox, one scope.
    Token {
        /// The sandbox it is valid for.
        sandbox: String,
        /// What it allows.
        scope: warren_api::TokenScope,
    },
    /// No credentials on TCP: only public paths and public ports get here.
    Anonymous,
}

/// What one route needs, from [`route_rule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteRule {
    /// The sandbox the route acts on (`/v1/sandboxes/{id}/…`), as written.
    pub sandbox: Option<String>,
    /// The narrowest key scope that may call it; `None`: anyone (public).
    pub key_scope: Option<ApiKeyScope>,
    /// Token scopes that may call it (on their own sandbox only).
    pub token_scopes: &'static [TokenScope],
    /// A request without credentials on TCP gets through (the port proxy,
    /// whose handler then allows only public ports).
    pub anonymous: bool,
    /// Credentials may come as a `token` query parameter (port proxy and
    /// server-sent event routes, for browsers).
    pub query_token: bool,
}

const READ_TOKENS: &[TokenScope] = &[TokenScope::Read, TokenScope::Exec];
const EXEC_TOKENS: &[TokenScope] = &[TokenScope::Exec];
const PORT_LIST_TOKENS: &[TokenScope] = &[TokenScope::Read, TokenScope::Exec, TokenScope::Ports];
const PROXY_TOKENS: &[TokenScope] = &[TokenScope::Ports];
const NO_TOKENS: &[TokenScope] = &[];

impl RouteRule {
    fn public() -> Self {
        Self {
            sandbox: None,
            key_scope: None,
            token_scopes: NO_TOKENS,
            anonymous: true,
            query_token: false,
        }
    }

    fn keys(scope: ApiKeyScope) -> Self {
        Self {
            sandbox: None,
            key_scope: Some(scope),
            token_scopes: NO_TOKENS,
            anonymous: false,
            query_token: false,
        }
    }

    fn on_sandbox(id: &str, scope: ApiKeyScope, tokens: &'static [TokenScope]) -> Self {
        Self {
            sandbox: Some(id.to_owned()),
            token_scopes: tokens,
            ..Self::keys(scope)
        }
    }

    fn with_query_token(self) -> Self {
        Self {
            query_token: true,
            ..self
        }
    }
}

/// Reading routes (GET, HEAD) need `sandboxes:read`, the rest `write_scope`.
fn read_or(method: &Method, write_scope: ApiKeyScope) -> RouteRule {
    if is_read(method) {
        RouteRule::keys(ApiKeyScope::SandboxesRead)
    } else {
        RouteRule::keys(write_scope)
    }
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// What the route `method path` needs (see the module doc). Pure: no I/O.
pub(crate) fn route_rule(method: &Method, path: &str) -> RouteRule {
    known_route_rule(method, path).unwrap_or_else(|| RouteRule::keys(ApiKeyScope::Admin))
}

/// The rule of a route this module knows; `None` for anything else (which
/// [`route_rule`] then closes to all but admin keys and local callers).
fn known_route_rule(method: &Method, path: &str) -> Option<RouteRule> {
    use ApiKeyScope::{Admin, SandboxesRead as Read, SandboxesWrite as Write};
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    // The port proxy forwards whatever path follows the port, empty
    // segments (`/ports/80/`, the app's root) included.
    if let ["v1", "sandboxes", id, "ports", port, ..] = segments.as_slice() {
        if !id.is_empty() && !port.is_empty() {
            return sandbox_subroute_rule(method, id, &segments[3..]);
        }
    }
    // Empty segments (`//`, a trailing `/`) match no other route.
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let read = is_read(method);
    Some(match segments.as_slice() {
        ["healthz"] | ["openapi.json"] => RouteRule::public(),
        ["v1", "sandboxes"] => read_or(method, Write),
        ["v1", "sandboxes", id] => {
            if read {
                RouteRule::on_sandbox(id, Read, READ_TOKENS)
            } else {
                RouteRule::on_sandbox(id, Write, NO_TOKENS)
            }
        }
        ["v1", "sandboxes", id, sub @ ..] => return sandbox_subroute_rule(method, id, sub),
        ["v1", "snapshots", ..] => read_or(method, Write),
        ["v1", "images", ..] | ["v1", "templates", ..] | ["v1", "pools", ..] => {
            read_or(method, Admin)
        }
        ["v1", "secrets", ..] => RouteRule::keys(Admin),
        _ => return None,
    })
}

/// Whether `sub` names a subroute of a sandbox that the router has (by path;
/// the method is judged by [`sandbox_subroute_rule`]).
fn is_sandbox_subroute(sub: &[&str]) -> bool {
    matches!(
        sub,
        ["ports", _, ..]
            | ["ports"]
            | ["events"]
            | ["exec"]
            | ["processes"]
            | ["processes", _]
            | [
                "processes",
                _,
                "output" | "attach" | "stdin" | "signal" | "resize"
            ]
            | ["files"]
            | [
                "files",
                "stat" | "exists" | "list" | "mkdir" | "move" | "find" | "grep" | "tar" | "watch"
            ]
            | ["changes"]
            | ["network"]
            | ["pause" | "resume" | "suspend" | "snapshots" | "fork" | "tokens"]
    )
}

/// Rules for `/v1/sandboxes/{id}/{sub…}` (`sub` is not empty); `None` for a
/// subroute the router does not have.
fn sandbox_subroute_rule(method: &Method, id: &str, sub: &[&str]) -> Option<RouteRule> {
    use ApiKeyScope::{SandboxesRead as Read, SandboxesWrite as Write};
    if !is_sandbox_subroute(sub) {
        return None;
    }
    let read = is_read(method);
    Some(match sub {
        // The port proxy and the TCP tunnel: any method, any key that may
        // change the sandbox, a `ports` token, or anonymous (public ports).
        ["ports", _port, ..] => RouteRule {
            anonymous: true,
            ..RouteRule::on_sandbox(id, Write, PROXY_TOKENS).with_query_token()
        },
        ["ports"] if read => RouteRule::on_sandbox(id, Read, PORT_LIST_TOKENS),
        ["events"] if read => RouteRule::on_sandbox(id, Read, READ_TOKENS).with_query_token(),
        ["processes", _pid, "output"] if read => {
            RouteRule::on_sandbox(id, Read, READ_TOKENS).with_query_token()
        }
        // Attaching types into the process: an exec right despite the GET.
        ["processes", _pid, "attach"] => RouteRule::on_sandbox(id, Write, EXEC_TOKENS),
        ["exec"] | ["processes", ..] | ["files", ..] if !read => {
            RouteRule::on_sandbox(id, Write, EXEC_TOKENS)
        }
        // Every other read of the sandbox: its files, processes, changes,
        // network, events.
        _ if read => RouteRule::on_sandbox(id, Read, READ_TOKENS),
        // Every other change (delete, pause, resume, suspend, snapshots,
        // fork, network, exposed ports, tokens): keys only.
        _ => RouteRule::on_sandbox(id, Write, NO_TOKENS),
    })
}

/// Whether a key with `scopes` may call a route that needs `needed`.
fn key_allows(scopes: &[ApiKeyScope], needed: ApiKeyScope) -> bool {
    scopes.iter().any(|scope| match scope {
        ApiKeyScope::Admin => true,
        ApiKeyScope::SandboxesWrite => needed != ApiKeyScope::Admin,
        ApiKeyScope::SandboxesRead => needed == ApiKeyScope::SandboxesRead,
    })
}

/// Why `caller` may not call a route with `rule`, or `None` when it may.
pub(crate) fn refusal(caller: &Caller, rule: &RouteRule) -> Option<ApiError> {
    // No key scope needed: a public path.
    let needed = rule.key_scope?;
    match caller {
        Caller::Local => None,
        Caller::Anonymous if rule.anonymous => None,
        Caller::Anonymous => Some(ApiError::new(
            ErrorCode::Unauthorized,
            "missing API key: send the header Authorization: Bearer <key>",
        )),
        Caller::Key { scopes, .. } if key_allows(scopes, needed) => None,
        Caller::Key { scopes, .. } => {
            let held: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            Some(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "this API key (scopes: {}) cannot do this; it needs the {} scope",
                    held.join(", "),
                    needed.as_str()
                ),
            ))
        }
        Caller::Token { sandbox, scope } => {
            if rule.sandbox.as_deref() == Some(sandbox.as_str())
                && rule.token_scopes.contains(scope)
            {
                None
            } else {
                Some(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "this token ({} on sandbox {sandbox}) does not allow this request",
                        scope.as_str()
                    ),
                ))
            }
        }
    }
}

/// The Warren credentials among a query's `token` parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct QueryCredentials {
    /// The first sandbox token (`wst_…`), decoded.
    token: Option<String>,
    /// Some `token` parameter holds an API key (`wrn_…`), which is never
    /// accepted in a URL.
    api_key: bool,
}

/// The decoded value of `pair` when it is a `token` parameter.
fn token_param(pair: &str) -> Option<String> {
    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
    (percent_decode(name) == "token").then(|| percent_decode(value))
}

/// Whether the query parameter `pair` is a sandbox token (`token=wst_…`).
fn is_sandbox_token_param(pair: &str) -> bool {
    token_param(pair).is_some_and(|value| value.starts_with(TOKEN_PREFIX))
}

/// The Warren credentials among the `token` query parameters. Values that
/// start with neither `wst_` nor `wrn_` belong to someone else (an app behind
/// the port proxy) and are ignored.
fn query_credentials(query: Option<&str>) -> QueryCredentials {
    let mut found = QueryCredentials::default();
    for value in query.unwrap_or_default().split('&').filter_map(token_param) {
        if value.starts_with(API_KEY_PREFIX) {
            found.api_key = true;
        } else if value.starts_with(TOKEN_PREFIX) && found.token.is_none() {
            found.token = Some(value);
        }
    }
    found
}

/// `query` without its sandbox-token parameters (`None` when nothing is
/// left). Every other parameter, another `token` included, is kept as sent.
fn query_without_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !is_sandbox_token_param(pair))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Removes the sandbox-token query parameters from the request, so that
/// handlers (strict query parsers, the port proxy, the sandbox's app) never
/// see the credential.
fn strip_query_token(req: &mut Request) {
    let Some(query) = req.uri().query() else {
        return;
    };
    let path_and_query = match query_without_token(query) {
        Some(rest) => format!("{}?{rest}", req.uri().path()),
        None => req.uri().path().to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Decodes `%XX` escapes (and `+` as space) of a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who the credential `presented` belongs to (401 when nobody).
async fn caller_for(state: &AppState, presented: &str) -> Result<Caller, ApiError> {
    if presented.starts_with(TOKEN_PREFIX) {
        return match state.service.verify_token(presented) {
            Ok(claims) => Ok(Caller::Token {
                sandbox: claims.sid,
                scope: claims.scope,
            }),
            Err(TokenError::Expired) => {
                Err(ApiError::new(ErrorCode::Unauthorized, "token expired"))
            }
            Err(TokenError::Invalid) => {
                Err(ApiError::new(ErrorCode::Unauthorized, "invalid token"))
            }
        };
    }
    if !presented.starts_with(API_KEY_PREFIX) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "invalid API key: expected a key (wrn_…) or a sandbox token (wst_…)",
        ));
    }
    match state.store.verify_api_key(presented).await? {
        Some(key) => {
            tracing::debug!(key = %key.id, "authenticated");
            Ok(Caller::Key {
                id: key.id,
                scopes: key.scopes,
            })
        }
        None => Err(ApiError::new(ErrorCode::Unauthorized, "invalid API key")),
    }
}

/// Middleware for both listeners: establishes the [`Caller`] and refuses what
/// it may not do (401 without or with bad credentials, 403 outside scope).
pub async fn authenticate(
    State((state, listener)): State<(AppState, Listener)>,
    mut req: Request,
    next: Next,
) -> Response {
    let rule = route_rule(req.method(), req.uri().path());
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .filter(|t| t.starts_with(API_KEY_PREFIX) || t.starts_with(TOKEN_PREFIX))
        .map(str::to_owned);
    // Some other bearer (for an app behind the port proxy, say) is not a
    // Warren credential on the proxy; anywhere else it is a bad key.
    let foreign_bearer = header.is_none()
        && req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .is_some();
    let in_query = query_credentials(req.uri().query());
    if in_query.api_key {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "API keys are not accepted in the URL (they would leak into browser history, \
             Referer headers and the sandbox's app): send the header Authorization: Bearer \
             <key>, or mint a sandbox token (wst_…) for ?token=",
        )
        .into_response();
    }
    let from_query = in_query.token;
    if from_query.is_some() && !rule.query_token {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "a sandbox token in the token query parameter is accepted only on port-proxy \
             and event-stream routes; send the header Authorization: Bearer <token>",
        )
        .into_response();
    }
    if foreign_bearer && !rule.anonymous {
        return ApiError::new(ErrorCode::Unauthorized, "invalid API key").into_response();
    }
    if from_query.is_some() {
        strip_query_token(&mut req);
    }
    let caller = match header.or(from_query) {
        Some(presented) => match caller_for(&state, &presented).await {
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        },
        None => match listener {
            Listener::Unix => Caller::Local,
            Listener::Tcp => Caller::Anonymous,
        },
    };
    if let Some(refused) = refusal(&caller, &rule) {
        return refused.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::http::Method;
    use warren_api::{ApiKeyScope, ErrorCode, TokenScope};

    use super::{
        bearer_token, known_route_rule, query_credentials, refusal, route_rule, Caller,
        QueryCredentials, RouteRule,
    };

    #[test]
    fn parses_bearer_header() {
        assert_eq!(bearer_token("Bearer wrn_abc"), Some("wrn_abc"));
        assert_eq!(bearer_token("bearer  wrn_abc "), Some("wrn_abc"));
        assert_eq!(bearer_token("Basic dXNlcg=="), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("wrn_abc"), None);
    }

    #[test]
    fn strips_only_sandbox_tokens_from_the_query() {
        use super::query_without_token;
        assert_eq!(query_without_token("token=wst_x.y"), None);
        assert_eq!(
            query_without_token("follow=false&token=wst_x.y&from=3"),
            Some("follow=false&from=3".into())
        );
        // Encoded name or value: still a sandbox token, still removed.
        assert_eq!(
            query_without_token("%74oken=%77st_x.y&a=1"),
            Some("a=1".into())
        );
        // Not Warren's: an app's own token stays, as sent.
        assert_eq!(
            query_without_token("token=abc123&token=wst_x.y"),
            Some("token=abc123".into())
        );
        assert_eq!(query_without_token("tokens=1"), Some("tokens=1".into()));
    }

    fn creds(token: Option<&str>, api_key: bool) -> QueryCredentials {
        QueryCredentials {
            token: token.map(str::to_owned),
            api_key,
        }
    }

    #[test]
    fn reads_warren_credentials_from_the_query() {
        assert_eq!(
            query_credentials(Some("a=1&token=wst_x.y")),
            creds(Some("wst_x.y"), false)
        );
        assert_eq!(
            query_credentials(Some("token=wst_a%2Db")),
            creds(Some("wst_a-b"), false)
        );
        // A key in the URL is flagged (and refused by `authenticate`).
        assert_eq!(query_credentials(Some("token=wrn_abc")), creds(None, true));
        assert_eq!(
            query_credentials(Some("token=%77rn_abc&token=wst_t")),
            creds(Some("wst_t"), true)
        );
        // Someone else's token (Jupyter's `?token=`) is not a credential.
        assert_eq!(query_credentials(Some("token=abc123")), creds(None, false));
        assert_eq!(
            query_credentials(Some("token=abc123&token=wst_t")),
            creds(Some("wst_t"), false)
        );
        assert_eq!(query_credentials(Some("tokens=wst_t")), creds(None, false));
        assert_eq!(query_credentials(Some("token=")), creds(None, false));
        assert_eq!(query_credentials(None), creds(None, false));
    }

    fn key(scope: ApiKeyScope) -> Caller {
        Caller::Key {
            id: "key_x".into(),
            scopes: vec![scope],
        }
    }

    fn token(sandbox: &str, scope: TokenScope) -> Caller {
        Caller::Token {
            sandbox: sandbox.into(),
            scope,
        }
    }

    fn rule(method: &str, path: &str) -> RouteRule {
        route_rule(&Method::from_bytes(method.as_bytes()).unwrap(), path)
    }

    /// Which callers may call `method path`: (local, anonymous, read key,
    /// write key, admin key, read token, exec token, ports token), tokens
    /// for sandbox `sb1`.
    fn allowed(method: &str, path: &str) -> [bool; 8] {
        let rule = rule(method, path);
        let callers = [
            Caller::Local,
            Caller::Anonymous,
            key(ApiKeyScope::SandboxesRead),
            key(ApiKeyScope::SandboxesWrite),
            key(ApiKeyScope::Admin),
            token("sb1", TokenScope::Read),
            token("sb1", TokenScope::Exec),
            token("sb1", TokenScope::Ports),
        ];
        callers.map(|c| refusal(&c, &rule).is_none())
    }

    const T: bool = true;
    const F: bool = false;

    #[test]
    fn public_paths_are_open_to_everyone() {
        for path in ["/healthz", "/openapi.json"] {
            assert_eq!(allowed("GET", path), [T; 8], "{path}");
        }
    }

    #[test]
    fn sandbox_collection_and_lifecycle() {
        //                local anon read write admin tRead tExec tPorts
        assert_eq!(allowed("GET", "/v1/sandboxes"), [T, F, T, T, T, F, F, F]);
        assert_eq!(allowed("POST", "/v1/sandboxes"), [T, F, F, T, T, F, F, F]);
        assert_eq!(
            allowed("GET", "/v1/sandboxes/sb1"),
            [T, F, T, T, T, T, T, F]
        );
        assert_eq!(
            allowed("GET", "/v1/sandboxes/sb2"),
            [T, F, T, T, T, F, F, F]
        );
        for (method, path) in [
            ("DELETE", "/v1/sandboxes/sb1"),
            ("PATCH", "/v1/sandboxes/sb1"),
            ("POST", "/v1/sandboxes/sb1/pause"),
            ("POST", "/v1/sandboxes/sb1/resume"),
            ("POST", "/v1/sandboxes/sb1/suspend"),
            ("POST", "/v1/sandboxes/sb1/tokens"),
            ("POST", "/v1/sandboxes/sb1/snapshots"),
            ("POST", "/v1/sandboxes/sb1/fork"),
            ("PATCH", "/v1/sandboxes/sb1/network"),
            ("PUT", "/v1/sandboxes/sb1/ports"),
        ] {
            assert_eq!(
                allowed(method, path),
                [T, F, F, T, T, F, F, F],
                "{method} {path}"
            );
        }
    }

    #[test]
    fn processes_exec_and_files() {
        for (method, path) in [
            ("GET", "/v1/sandboxes/sb1/processes"),
            ("GET", "/v1/sandboxes/sb1/processes/7"),
            ("GET", "/v1/sandboxes/sb1/files"),
            ("GET", "/v1/sandboxes/sb1/files/stat"),
            ("GET", "/v1/sandboxes/sb1/files/list"),
            ("GET", "/v1/sandboxes/sb1/files/tar"),
            ("GET", "/v1/sandboxes/sb1/files/watch"),
            ("GET", "/v1/sandboxes/sb1/changes"),
            ("GET", "/v1/sandboxes/sb1/network"),
        ] {
            assert_eq!(
                allowed(method, path),
                [T, F, T, T, T, T, T, F],
                "{method} {path}"
            );
        }
        for (method, path) in [
            ("POST", "/v1/sandboxes/sb1/exec"),
            ("POST", "/v1/sandboxes/sb1/processes"),
            ("POST", "/v1/sandboxes/sb1/processes/7/stdin"),
            ("POST", "/v1/sandboxes/sb1/processes/7/signal"),
            ("POST", "/v1/sandboxes/sb1/processes/7/resize"),
            ("GET", "/v1/sandboxes/sb1/processes/7/attach"),
            ("PUT", "/v1/sandboxes/sb1/files"),
            ("DELETE", "/v1/sandboxes/sb1/files"),
            ("POST", "/v1/sandboxes/sb1/files/mkdir"),
            ("POST", "/v1/sandboxes/sb1/files/move"),
            ("PUT", "/v1/sandboxes/sb1/files/tar"),
        ] {
            assert_eq!(
                allowed(method, path),
                [T, F, F, T, T, F, T, F],
                "{method} {path}"
            );
        }
        // Another sandbox's exec: never with a token for sb1.
        assert_eq!(
            allowed("POST", "/v1/sandboxes/sb2/exec"),
            [T, F, F, T, T, F, F, F]
        );
    }

    #[test]
    fn event_streams_take_query_tokens() {
        for path in [
            "/v1/sandboxes/sb1/events",
            "/v1/sandboxes/sb1/processes/7/output",
        ] {
            assert_eq!(allowed("GET", path), [T, F, T, T, T, T, T, F], "{path}");
            assert!(rule("GET", path).query_token, "{path}");
        }
        assert!(!rule("GET", "/v1/sandboxes/sb1").query_token);
        assert!(!rule("GET", "/v1/sandboxes/sb1/files").query_token);
    }

    #[test]
    fn ports_list_proxy_and_tunnel() {
        assert_eq!(
            allowed("GET", "/v1/sandboxes/sb1/ports"),
            [T, F, T, T, T, T, T, T]
        );
        for (method, path) in [
            ("GET", "/v1/sandboxes/sb1/ports/8080"),
            ("POST", "/v1/sandboxes/sb1/ports/8080/api/x"),
            ("GET", "/v1/sandboxes/sb1/ports/5432/tcp"),
            ("GET", "/v1/sandboxes/sb1/ports/8080/"),
            ("GET", "/v1/sandboxes/sb1/ports/8080/static//app.js"),
        ] {
            // Anonymous gets through; the proxy then serves only public ports.
            assert_eq!(
                allowed(method, path),
                [T, T, F, T, T, F, F, T],
                "{method} {path}"
            );
            assert!(rule(method, path).query_token);
            assert_eq!(rule(method, path).sandbox.as_deref(), Some("sb1"));
        }
        assert_eq!(
            allowed("GET", "/v1/sandboxes/sb2/ports/8080"),
            [T, T, F, T, T, F, F, F]
        );
    }

    #[test]
    fn snapshots_images_templates_pools() {
        for path in ["/v1/snapshots", "/v1/snapshots/snap_1"] {
            assert_eq!(allowed("GET", path), [T, F, T, T, T, F, F, F], "{path}");
        }
        assert_eq!(
            allowed("DELETE", "/v1/snapshots/snap_1"),
            [T, F, F, T, T, F, F, F]
        );
        for path in [
            "/v1/images",
            "/v1/images/docker.io/library/alpine:3.20",
            "/v1/templates",
            "/v1/templates/py",
            "/v1/pools",
            "/v1/pools/py",
        ] {
            assert_eq!(allowed("GET", path), [T, F, T, T, T, F, F, F], "{path}");
        }
        for (method, path) in [
            ("POST", "/v1/images/pull"),
            ("POST", "/v1/images/import"),
            ("DELETE", "/v1/images/alpine"),
            ("POST", "/v1/templates"),
            ("DELETE", "/v1/templates/py"),
            ("POST", "/v1/pools"),
            ("DELETE", "/v1/pools/py"),
        ] {
            assert_eq!(
                allowed(method, path),
                [T, F, F, F, T, F, F, F],
                "{method} {path}"
            );
        }
    }

    #[test]
    fn secrets_are_admin_only() {
        for (method, path) in [
            ("GET", "/v1/secrets"),
            ("POST", "/v1/secrets"),
            ("DELETE", "/v1/secrets/OPENAI_API_KEY"),
        ] {
            assert_eq!(
                allowed(method, path),
                [T, F, F, F, T, F, F, F],
                "{method} {path}"
            );
        }
    }

    #[test]
    fn unknown_routes_need_admin() {
        for (method, path) in [
            ("GET", "/v2/nothing"),
            ("GET", "/v1/sandboxes/"),
            ("GET", "/v1//sandboxes"),
            ("POST", "/v1/whatever"),
        ] {
            assert_eq!(
                allowed(method, path),
                [T, F, F, F, T, F, F, F],
                "{method} {path}"
            );
        }
    }

    #[test]
    fn refusals_carry_the_right_codes() {
        let anon = refusal(&Caller::Anonymous, &rule("GET", "/v1/sandboxes")).unwrap();
        assert_eq!(anon.code, ErrorCode::Unauthorized);
        let narrow = refusal(
            &key(ApiKeyScope::SandboxesRead),
            &rule("POST", "/v1/sandboxes"),
        )
        .unwrap();
        assert_eq!(narrow.code, ErrorCode::Forbidden);
        assert!(
            narrow.message.contains("sandboxes:write"),
            "{}",
            narrow.message
        );
        let other = refusal(
            &token("sb1", TokenScope::Exec),
            &rule("GET", "/v1/sandboxes/sb2"),
        )
        .unwrap();
        assert_eq!(other.code, ErrorCode::Forbidden);
    }

    /// Documented routes that may be classified by the catch-all (none
    /// today). Adding one here is a decision: it then needs an admin key.
    const CATCH_ALL_ALLOWED: &[(&str, &str)] = &[];

    /// A concrete path for an OpenAPI path template.
    fn concrete(template: &str) -> String {
        template
            .split('/')
            .map(|segment| match segment {
                "{id}" => "sb1",
                "{pid}" => "7",
                "{port}" => "8080",
                s if s.starts_with('{') => "x",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_documented_route_has_its_own_rule() {
        let doc = crate::openapi();
        let mut checked = 0;
        for (template, item) in &doc.paths.paths {
            let operations = [
                (Method::GET, item.get.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::DELETE, item.delete.is_some()),
                (Method::OPTIONS, item.options.is_some()),
                (Method::HEAD, item.head.is_some()),
                (Method::PATCH, item.patch.is_some()),
                (Method::TRACE, item.trace.is_some()),
            ];
            for (method, present) in operations {
                if !present || CATCH_ALL_ALLOWED.contains(&(method.as_str(), template.as_str())) {
                    continue;
                }
                let path = concrete(template);
                assert!(
                    known_route_rule(&method, &path).is_some(),
                    "{method} {template} falls through to the catch-all rule; give it a \
                     rule in auth.rs"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} operations in the document");
    }

    #[test]
    fn unknown_sandbox_subroutes_fall_through() {
        for (method, path) in [
            ("GET", "/v1/sandboxes/sb1/secrets"),
            ("POST", "/v1/sandboxes/sb1/whatever"),
            ("GET", "/v1/sandboxes/sb1/files/stat/more"),
            ("GET", "/v1/sandboxes/sb1/processes/7/output/x"),
        ] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(known_route_rule(&method, path).is_none(), "{method} {path}");
            assert_eq!(
                allowed(method.as_str(), path),
                [T, F, F, F, T, F, F, F],
                "{method} {path}"
            );
        }
    }

    #[test]
    fn head_reads_like_get_and_options_writes() {
        for path in [
            "/v1/sandboxes",
            "/v1/sandboxes/sb1",
            "/v1/sandboxes/sb1/files",
            "/v1/sandboxes/sb1/events",
            "/v1/sandboxes/sb1/ports",
            "/v1/snapshots",
            "/v1/images",
            "/v1/secrets",
            "/healthz",
        ] {
            assert_eq!(rule("HEAD", path), rule("GET", path), "{path}");
        }
        // HEAD of attach is still an exec right.
        assert_eq!(
            allowed("HEAD", "/v1/sandboxes/sb1/processes/7/attach"),
            [T, F, F, T, T, F, T, F]
        );
        // OPTIONS is not a read: never for read keys or read tokens.
        assert_eq!(
            allowed("OPTIONS", "/v1/sandboxes/sb1"),
            [T, F, F, T, T, F, F, F]
        );
        assert_eq!(
            allowed("OPTIONS", "/v1/sandboxes/sb1/files"),
            [T, F, F, T, T, F, T, F]
        );
        assert_eq!(allowed("OPTIONS", "/v1/images"), [T, F, F, F, T, F, F, F]);
        // A CORS preflight to the proxy goes to the proxy (public ports).
        assert_eq!(
            allowed("OPTIONS", "/v1/sandboxes/sb1/ports/8080/api"),
            [T, T, F, T, T, F, F, T]
        );
    }

    #[test]
    fn encoded_slashes_never_widen_a_token() {
        // The router decodes `%2F` inside one segment (`{id}` = "sb1/exec"):
        // the rule sees a sandbox id that is not the token's, so tokens fail
        // closed; keys keep their usual rights.
        for (method, path) in [
            ("GET", "/v1/sandboxes/sb1%2Fexec"),
            ("POST", "/v1/sandboxes/sb1%2Fexec"),
            ("GET", "/v1/sandboxes/sb1%2F..%2Fsb2"),
            ("GET", "/v1/sandboxes/sb1%2fevents"),
        ] {
            let allowed = allowed(method, path);
            assert_eq!(&allowed[5..], &[F, F, F], "{method} {path}");
        }
        // `files%2Fstat` is not the `files/stat` route: unknown, admin only.
        assert_eq!(
            allowed("GET", "/v1/sandboxes/sb1/files%2Fstat"),
            [T, F, F, F, T, F, F, F]
        );
        // An encoded slash in the proxied path stays the proxy's business.
        assert_eq!(
            allowed("GET", "/v1/sandboxes/sb1/ports/8080/a%2Fb"),
            [T, T, F, T, T, F, F, T]
        );
        assert_eq!(
            rule("GET", "/v1/sandboxes/sb1/ports/8080/a%2Fb")
                .sandbox
                .as_deref(),
            Some("sb1")
        );
        // Images are named with slashes, encoded or not: a read either way.
        assert_eq!(
            allowed("GET", "/v1/images/docker.io%2Flibrary%2Falpine"),
            [T, F, T, T, T, F, F, F]
        );
    }
}
