//! Access control beyond the API key: per-sandbox tokens
//! (`POST /v1/sandboxes/{id}/tokens`), secrets (`/v1/secrets`) and the
//! per-key create rate limit. Authentication itself is `auth.rs`.
//!
//! Two keys live in `<data>/access/` (mode 0700), each 32 random bytes in a
//! 0600 file made once: `token.key` signs tokens (HMAC-SHA256) and
//! `secrets.key` seals secret values (ChaCha20-Poly1305, a random nonce per
//! value, the secret's name as associated data). Secret values never leave
//! this module except as the environment of a sandbox being launched.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex as StdMutex;
use std::time::Instant;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Extension, Json};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use warren_api::{
    ApiKeyScope, CreateSecretRequest, CreateTokenRequest, ErrorBody, ErrorCode, SandboxToken,
    SecretInfo, SecretList, TokenScope, DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS,
};
use warren_store::SecretRecord;

use crate::api_json::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::sandbox_service::SandboxService;
use crate::AppState;

/// Prefix of every sandbox token.
pub(crate) const TOKEN_PREFIX: &str = "wst_";
/// Sandbox creates per key per minute when `--create-rate-limit` is not given.
pub const DEFAULT_CREATES_PER_MINUTE: u32 = 600;
/// Longest secret name in bytes.
const MAX_SECRET_NAME_BYTES: usize = 128;
/// Largest secret value in bytes.
const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;
/// The directory of the keys, inside the data directory.
const ACCESS_DIR: &str = "access";
const TOKEN_KEY_FILE: &str = "token.key";
const SECRETS_KEY_FILE: &str = "secrets.key";
const NONCE_BYTES: usize = 12;

/// Daemon-wide access settings (`warren serve` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessSettings {
    /// Sandbox creates (and forks, per child) allowed per key per minute
    /// (`None`: the built-in default; `Some(0)`: unlimited).
    pub creates_per_minute: Option<u32>,
    /// Also limit local callers (the unix socket without credentials).
    #[serde(default)]
    pub limit_local: bool,
}

/// The service's access state (token signing key, secrets sealing key, rate
/// limiter). The default has fresh in-memory keys (for tests and embedders
/// that never call `start_access`): tokens and secrets then last as long as
/// the process.
pub(crate) struct AccessState {
    token_key: [u8; 32],
    secrets_key: [u8; 32],
    limiter: CreateLimiter,
}

impl Default for AccessState {
    fn default() -> Self {
        Self {
            token_key: random_key(),
            secrets_key: random_key(),
            limiter: CreateLimiter::new(DEFAULT_CREATES_PER_MINUTE, false),
        }
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the OS.
    rand::thread_rng().fill_bytes(&mut key);
    key
}

/// Reads the 32-byte key `dir/name`, making it first if it does not exist.
/// The new key is written to a private temporary file and linked into
/// place, so a concurrent or interrupted start never sees half a key.
fn load_or_make_key(dir: &Path, name: &str) -> anyhow::Result<[u8; 32]> {
    let path = dir.join(name);
    if !path.exists() {
        let staging = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        let written = (|| -> anyhow::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&staging)
                .with_context(|| format!("creating {}", staging.display()))?;
            file.write_all(&random_key())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", staging.display()))?;
            match std::fs::hard_link(&staging, &path) {
                Ok(()) => Ok(()),
                // Someone else made it first: theirs wins.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e).with_context(|| format!("linking {}", path.display())),
            }
        })();
        let _ = std::fs::remove_file(&staging);
        written?;
    }
    let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        anyhow::anyhow!(
            "{} holds {} bytes, not 32; restore it from a backup (removing it \
             invalidates every token, and every secret if it is {SECRETS_KEY_FILE})",
            path.display(),
            bytes.len()
        )
    })
}

/// The signed content of a sandbox token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenClaims {
    /// The sandbox.
    pub sid: String,
    /// What it allows.
    pub scope: TokenScope,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

/// Why a presented token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Malformed, or not signed by this daemon's key.
    Invalid,
    /// Past its expiry.
    Expired,
}

fn token_mac(key: &[u8; 32], payload_b64: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(payload_b64.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `wst_<base64url(JSON claims)>.<base64url(HMAC-SHA256 of the first part)>`.
pub(crate) fn sign_token(key: &[u8; 32], claims: &TokenClaims) -> String {
    // Serializing a struct of strings and integers cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD.encode(json);
    let mac = URL_SAFE_NO_PAD.encode(token_mac(key, &payload));
    format!("{TOKEN_PREFIX}{payload}.{mac}")
}

/// Checks the signature (in constant time), then the expiry against `now`
/// (Unix seconds).
pub(crate) fn verify_token(
    key: &[u8; 32],
    token: &str,
    now: i64,
) -> Result<TokenClaims, TokenError> {
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::Invalid)?;
    let (payload, mac) = body.split_once('.').ok_or(TokenError::Invalid)?;
    let presented = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Invalid)?;
    let expected = token_mac(key, payload);
    if expected.is_empty() || !bool::from(expected.as_slice().ct_eq(presented.as_slice())) {
        return Err(TokenError::Invalid);
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Invalid)?;
    let claims: TokenClaims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Seals `value` under `key`, bound to the secret's `name`:
/// base64(nonce || ciphertext).
fn seal(key: &[u8; 32], name: &str, value: &str) -> Result<String, ApiError> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let mut nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| ApiError::internal(format!("could not seal secret {name:?}")))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(STANDARD.encode(out))
}

/// Opens what [`seal`] made.
fn open(key: &[u8; 32], name: &str, sealed: &str) -> Result<String, ApiError> {
    let unreadable = || {
        ApiError::internal(format!(
            "secret {name:?} cannot be unsealed (was {ACCESS_DIR}/{SECRETS_KEY_FILE} \
             replaced?); set it again with `warren secret set {name}`"
        ))
    };
    let bytes = STANDARD.decode(sealed).map_err(|_| unreadable())?;
    if bytes.len() < NONCE_BYTES {
        return Err(unreadable());
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let plain = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| unreadable())?;
    String::from_utf8(plain).map_err(|_| unreadable())
}

/// Checks a secret name: an environment variable name of at most 128 bytes.
fn validate_secret_name(name: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.len() > MAX_SECRET_NAME_BYTES
    {
        return Err(ApiError::invalid_value(format!(
            "name: {name:?} is not a valid secret name (letters, digits and _, \
             not starting with a digit, at most {MAX_SECRET_NAME_BYTES} bytes)"
        )));
    }
    Ok(())
}

fn secret_info(record: &SecretRecord) -> SecretInfo {
    SecretInfo {
        name: record.name.clone(),
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// A token bucket per caller for sandbox creates.
struct CreateLimiter {
    /// Creates per minute (and the bucket's size); 0: unlimited.
    per_minute: u32,
    limit_local: bool,
    buckets: StdMutex<HashMap<String, Bucket>>,
}

/// Why [`CreateLimiter::take`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimitRefusal {
    /// The bucket is short: retry after this many whole seconds.
    Wait(u64),
    /// More creates at once than the bucket holds: never passes.
    OverCapacity,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl CreateLimiter {
    fn new(per_minute: u32, limit_local: bool) -> Self {
        Self {
            per_minute,
            limit_local,
            buckets: StdMutex::new(HashMap::new()),
        }
    }

    /// The bucket `caller` draws from; `None`: not limited.
    fn bucket_name(&self, caller: &Caller) -> Option<String> {
        if self.per_minute == 0 {
            return None;
        }
        match caller {
            Caller::Local if self.limit_local => Some("local".to_owned()),
            Caller::Local => None,
            Caller::Key { id, .. } => Some(format!("key:{id}")),
            Caller::Token { sandbox, scope } => Some(format!("token:{sandbox}:{}", scope.as_str())),
            Caller::Anonymous => Some("anonymous".to_owned()),
        }
    }

    /// Takes `count` creates from `caller`'s bucket at `now`, or says how
    /// many whole seconds to wait (or that `count` is more than a full
    /// bucket, which waiting never fixes).
    fn take(&self, caller: &Caller, count: u32, now: Instant) -> Result<(), LimitRefusal> {
        let Some(name) = self.bucket_name(caller) else {
            return Ok(());
        };
        if count > self.per_minute {
            return Err(LimitRefusal::OverCapacity);
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let wanted = f64::from(count.max(1));
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(name).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            return Ok(());
        }
        let missing = wanted - bucket.tokens;
        Err(LimitRefusal::Wait(
            ((missing / per_second).ceil() as u64).max(1),
        ))
    }
}

impl SandboxService {
    /// Loads or makes the keys in the data dir (called once by `serve`).
    pub(crate) async fn start_access(
        &mut self,
        data_dir: &std::path::Path,
        settings: &AccessSettings,
    ) -> anyhow::Result<()> {
        let dir = data_dir.join(ACCESS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
        self.access.token_key = load_or_make_key(&dir, TOKEN_KEY_FILE)?;
        self.access.secrets_key = load_or_make_key(&dir, SECRETS_KEY_FILE)?;
        self.access.limiter = CreateLimiter::new(
            settings
                .creates_per_minute
                .unwrap_or(DEFAULT_CREATES_PER_MINUTE),
            settings.limit_local,
        );
        Ok(())
    }

    /// The environment entries of these secrets, by name (422 naming an
    /// unknown one). Called for every launch of a sandbox (create, resume
    /// from suspend), never stored in the record.
    pub(crate) async fn secret_env(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, String)>, ApiError> {
        let mut env: Vec<(String, String)> = Vec::with_capacity(names.len());
        for name in names {
            if env.iter().any(|(seen, _)| seen == name) {
                continue;
            }
            let Some(record) = self.store.get_secret(name).await? else {
                return Err(ApiError::invalid_value(format!(
                    "secrets: no secret named {name:?}; `warren secret ls` lists them"
                )));
            };
            let value = open(&self.access.secrets_key, name, &record.value_sealed)?;
            env.push((name.clone(), value));
        }
        Ok(env)
    }

    /// Who a presented `wst_…` token speaks for.
    pub(crate) fn verify_token(&self, token: &str) -> Result<TokenClaims, TokenError> {
        verify_token(&self.access.token_key, token, Utc::now().timestamp())
    }

    /// Takes `count` sandbox creates from `caller`'s allowance: 429
    /// `rate_limited` (with `Retry-After`) when it is used up, 422
    /// `invalid_value` when `count` alone is more than the limit allows in a
    /// minute (retrying would never help).
    pub(crate) fn check_create_rate(&self, caller: &Caller, count: u32) -> Result<(), ApiError> {
        let per_minute = self.access.limiter.per_minute;
        self.access
            .limiter
            .take(caller, count, Instant::now())
            .map_err(|refusal| match refusal {
                LimitRefusal::Wait(wait) => ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "too many sandbox creates: at most {per_minute} per minute; \
                         retry in {wait} s"
                    ),
                )
                .with_retry_after(wait),
                LimitRefusal::OverCapacity => ApiError::invalid_value(format!(
                    "count {count} exceeds the create rate limit of {per_minute} per minute"
                )),
            })
    }

    /// Mints a token for the sandbox `id` (which must exist).
    async fn mint_token(
        &self,
        id: &str,
        req: &CreateTokenRequest,
    ) -> Result<SandboxToken, ApiError> {
        let ttl = req.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
            return Err(ApiError::invalid_value(format!(
                "ttlSecs: {ttl} is outside 1..={MAX_TOKEN_TTL_SECS}"
            )));
        }
        let sandbox = self.get(id).await?;
        let exp = Utc::now().timestamp().saturating_add(ttl);
        let expires_at: DateTime<Utc> = Utc
            .timestamp_opt(exp, 0)
            .single()
            .ok_or_else(|| ApiError::internal("token expiry out of range"))?;
        let claims = TokenClaims {
            sid: sandbox.id.clone(),
            scope: req.scope,
            exp,
        };
        Ok(SandboxToken {
            token: sign_token(&self.access.token_key, &claims),
            sandbox_id: sandbox.id,
            scope: req.scope,
            expires_at,
        })
    }

    /// Creates or replaces a secret; true when it is new.
    async fn set_secret(&self, req: &CreateSecretRequest) -> Result<(SecretInfo, bool), ApiError> {
        validate_secret_name(&req.name)?;
        if req.value.len() > MAX_SECRET_VALUE_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "value: {} bytes is more than the {MAX_SECRET_VALUE_BYTES}-byte limit",
                    req.value.len()
                ),
            ));
        }
        let sealed = seal(&self.access.secrets_key, &req.name, &req.value)?;
        let existed = self.store.get_secret(&req.name).await?.is_some();
        let record = self
            .store
            .put_secret(&req.name, &sealed, Utc::now().trunc_subsecs(6))
            .await?;
        tracing::info!(secret = %req.name, "secret set");
        Ok((secret_info(&record), !existed))
    }
}

/// Naming secrets in a create puts their values into a sandbox the caller
/// then controls (it can read its own environment): only an admin key or a
/// local caller may (403 `forbidden` otherwise). Forks are not checked: their
/// children inherit names that an admin already chose for the parent.
pub(crate) fn may_name_secrets(caller: &Caller, secrets: &[String]) -> Result<(), ApiError> {
    if secrets.is_empty() {
        return Ok(());
    }
    match caller {
        Caller::Local => Ok(()),
        Caller::Key { scopes, .. } if scopes.contains(&ApiKeyScope::Admin) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::Forbidden,
            "naming secrets needs an admin key (or the local socket): a sandbox \
             can read the values of the secrets it is given",
        )),
    }
}

/// A token can never mint another; keys and local callers can.
fn may_mint(caller: Option<&Caller>) -> Result<(), ApiError> {
    match caller {
        Some(Caller::Local | Caller::Key { .. }) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::Forbidden,
            "only an API key or a local caller can mint sandbox tokens",
        )),
    }
}

/// Mint a short-lived token for one sandbox.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/tokens",
    tag = "access",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "The token (shown only here)", body = SandboxToken),
        (status = 403, description = "The caller is a token, or its key lacks sandboxes:write", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 422, description = "ttlSecs outside 1..=86400", body = ErrorBody),
    )
)]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    UrlPath(id): UrlPath<String>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<SandboxToken>), ApiError> {
    may_mint(caller.as_ref().map(|Extension(c)| c))?;
    let token = state.service.mint_token(&id, &req).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Create or replace a secret. The value is never returned.
#[utoipa::path(
    post,
    path = "/v1/secrets",
    tag = "access",
    request_body = CreateSecretRequest,
    responses(
        (status = 201, description = "Created", body = SecretInfo),
        (status = 200, description = "Replaced", body = SecretInfo),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 413, description = "Value over 64 KiB", body = ErrorBody),
        (status = 422, description = "Invalid name", body = ErrorBody),
    )
)]
pub(crate) async fn set_secret(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<SecretInfo>), ApiError> {
    // Parsed here rather than by ApiJson: serde's messages can quote the
    // input, and the input holds the value.
    let req: CreateSecretRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(format!(
            "expected {{\"name\": \"…\", \"value\": \"…\"}} (invalid JSON at line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let (info, created) = state.service.set_secret(&req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

/// List secrets by name (never their values).
#[utoipa::path(
    get,
    path = "/v1/secrets",
    tag = "access",
    responses((status = 200, description = "Secrets by name", body = SecretList))
)]
pub(crate) async fn list_secrets(
    State(state): State<AppState>,
) -> Result<Json<SecretList>, ApiError> {
    let secrets = state
        .service
        .store
        .list_secrets()
        .await?
        .iter()
        .map(secret_info)
        .collect();
    Ok(Json(SecretList { secrets }))
}

/// Delete a secret. Sandboxes already running keep the value they got.
#[utoipa::path(
    delete,
    path = "/v1/secrets/{name}",
    tag = "access",
    params(("name" = String, Path, description = "Secret name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such secret", body = ErrorBody),
    )
)]
pub(crate) async fn delete_secret(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    if !state.service.store.delete_secret(&name).await? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no secret named {name:?}"),
        ));
    }
    tracing::info!(secret = %name, "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Routes of this module.
pub(crate) fn router() -> axum::Router<crate::AppState> {
    axum::Router::new()
        .route("/v1/sandboxes/{id}/tokens", post(create_token))
        .route("/v1/secrets", post(set_secret).get(list_secrets))
        .route("/v1/secrets/{name}", delete(delete_secret))
}

/// OpenAPI paths and schemas of this module (merged into the document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create_token, set_secret, list_secrets, delete_secret),
    components(schemas(
        ApiKeyScope,
        CreateSecretRequest,
        CreateTokenRequest,
        SandboxToken,
        SecretInfo,
        SecretList,
        TokenScope
    ))
)]
pub(crate) struct ApiDoc;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use warren_api::{ApiKeyScope, TokenScope};

    use super::{
        load_or_make_key, may_name_secrets, open, seal, sign_token, validate_secret_name,
        verify_token, CreateLimiter, LimitRefusal, TokenClaims, TokenError,
    };
    use crate::auth::Caller;

    fn claims(exp: i64) -> TokenClaims {
        TokenClaims {
            sid: "sb1".into(),
            scope: TokenScope::Exec,
            exp,
        }
    }

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let key = [7u8; 32];
        let token = sign_token(&key, &claims(1000));
        assert!(token.starts_with("wst_"));
        assert_eq!(verify_token(&key, &token, 999), Ok(claims(1000)));
        assert_eq!(verify_token(&key, &token, 1000), Err(TokenError::Expired));
        assert_eq!(
            verify_token(&[8u8; 32], &token, 0),
            Err(TokenError::Invalid)
        );
        // Another sandbox in the payload, old signature.
        let (_, mac) = token.split_once('.').unwrap();
        let forged_payload = sign_token(
            &key,
            &TokenClaims {
                sid: "sb2".into(),
                ..claims(1000)
            },
        );
        let (forged_head, _) = forged_payload.split_once('.').unwrap();
        let forged = format!("{forged_head}.{mac}");
        assert_eq!(verify_token(&key, &forged, 0), Err(TokenError::Invalid));
        assert_eq!(
            verify_token(&key, "wst_garbage", 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(verify_token(&key, "wrn_x.y", 0), Err(TokenError::Invalid));
    }

    #[test]
    fn sealed_secrets_open_only_under_their_name_and_key() {
        let key = [1u8; 32];
        let sealed = seal(&key, "A", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, seal(&key, "A", "hunter2").unwrap(), "fresh nonce");
        assert_eq!(open(&key, "A", &sealed).unwrap(), "hunter2");
        let wrong_name = open(&key, "B", &sealed).unwrap_err();
        assert!(!wrong_name.message.contains("hunter2"));
        assert!(open(&[2u8; 32], "A", &sealed).is_err());
    }

    #[test]
    fn secret_names_are_env_names() {
        for ok in ["A", "_x", "OPENAI_API_KEY", "a1"] {
            validate_secret_name(ok).unwrap();
        }
        for bad in ["", "1A", "A-B", "A B", "É", &"A".repeat(129)] {
            let err = validate_secret_name(bad).unwrap_err();
            assert!(err.message.starts_with("name:"), "{}", err.message);
        }
    }

    #[test]
    fn keys_are_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_make_key(dir.path(), "token.key").unwrap();
        let again = load_or_make_key(dir.path(), "token.key").unwrap();
        assert_eq!(first, again);
        let mode = std::fs::metadata(dir.path().join("token.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("short.key"), b"abc").unwrap();
        assert!(load_or_make_key(dir.path(), "short.key").is_err());
        // No staging file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn the_create_limiter_is_a_bucket_per_caller() {
        let limiter = CreateLimiter::new(2, false);
        let key = |id: &str| Caller::Key {
            id: id.into(),
            scopes: vec![ApiKeyScope::Admin],
        };
        let t0 = Instant::now();
        assert_eq!(limiter.take(&key("a"), 1, t0), Ok(()));
        assert_eq!(limiter.take(&key("a"), 1, t0), Ok(()));
        // Two per minute: one more in 30 s.
        assert_eq!(limiter.take(&key("a"), 1, t0), Err(LimitRefusal::Wait(30)));
        assert_eq!(limiter.take(&key("b"), 1, t0), Ok(()));
        assert_eq!(
            limiter.take(&key("a"), 1, t0 + Duration::from_secs(31)),
            Ok(())
        );
        // Local is not limited unless asked.
        for _ in 0..10 {
            assert_eq!(limiter.take(&Caller::Local, 1, t0), Ok(()));
        }
        let strict = CreateLimiter::new(2, true);
        assert_eq!(strict.take(&Caller::Local, 2, t0), Ok(()));
        assert!(strict.take(&Caller::Local, 1, t0).is_err());
        // 0: off.
        let off = CreateLimiter::new(0, true);
        assert_eq!(off.take(&key("a"), 100, t0), Ok(()));
    }

    #[test]
    fn a_count_over_the_limit_is_refused_not_delayed() {
        let limiter = CreateLimiter::new(3, false);
        let key = Caller::Key {
            id: "a".into(),
            scopes: vec![ApiKeyScope::SandboxesWrite],
        };
        let t0 = Instant::now();
        // A fork of 4 children can never fit a bucket of 3, even a full one.
        assert_eq!(limiter.take(&key, 4, t0), Err(LimitRefusal::OverCapacity));
        assert_eq!(
            limiter.take(&key, 4, t0 + Duration::from_secs(3600)),
            Err(LimitRefusal::OverCapacity)
        );
        // It took nothing: the full bucket still serves 3.
        assert_eq!(limiter.take(&key, 3, t0), Ok(()));
        assert_eq!(limiter.take(&key, 1, t0), Err(LimitRefusal::Wait(20)));
        // Unlimited callers are never over capacity.
        assert_eq!(limiter.take(&Caller::Local, 1000, t0), Ok(()));
        assert_eq!(CreateLimiter::new(0, true).take(&key, 1000, t0), Ok(()));
    }

    #[test]
    fn naming_secrets_needs_admin_or_local() {
        let key = |scope| Caller::Key {
            id: "k".into(),
            scopes: vec![scope],
        };
        let names = vec!["OPENAI_API_KEY".to_owned()];
        assert!(may_name_secrets(&Caller::Local, &names).is_ok());
        assert!(may_name_secrets(&key(ApiKeyScope::Admin), &names).is_ok());
        for caller in [
            key(ApiKeyScope::SandboxesWrite),
            key(ApiKeyScope::SandboxesRead),
            Caller::Anonymous,
            Caller::Token {
                sandbox: "sb1".into(),
                scope: TokenScope::Exec,
            },
        ] {
            let err = may_name_secrets(&caller, &names).unwrap_err();
            assert_eq!(err.code, warren_api::ErrorCode::Forbidden, "{caller:?}");
            assert!(err.message.contains("admin"), "{}", err.message);
        }
        // No secrets named: nothing to check.
        assert!(may_name_secrets(&key(ApiKeyScope::SandboxesWrite), &[]).is_ok());
    }
}
