//! `pull`: the OCI distribution API (v2), with anonymous, bearer-token
//! and basic authentication.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::sync::mpsc;

use super::blobs::{blob_path, digest_of, io_error, BlobWriter};
use super::oci::{
    choose_platform, Manifest, ManifestDoc, DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST_BYTES,
    OCI_INDEX, OCI_MANIFEST,
};
use super::reference::Reference;
use super::store::report;
use super::{ImageError, ImageInfo, ImageProgress, ImageStore, PullOptions};

/// How often per layer a `Layer` progress event may be sent.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The most Warren reads of a registry's error or token reply.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Authorization for the registry, learned from its 401 challenges.
enum Auth {
    None,
    Basic,
    Bearer(String),
}

/// One pull's connection to a registry.
struct RegistryClient<'a> {
    http: reqwest::Client,
    base: String,
    reference: &'a Reference,
    opts: &'a PullOptions,
    auth: Auth,
}

impl ImageStore {
    /// Pulls `reference` (e.g. `busybox`, `host:5000/team/app:v1`,
    /// `repo@sha256:…`) from its registry and stores it under the
    /// reference's normalized name (a digest-only reference is stored with
    /// the tag `sha256-<hex>`). An index is resolved to linux/amd64.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: Option<mpsc::UnboundedSender<ImageProgress>>,
    ) -> Result<ImageInfo, ImageError> {
        let parsed = Reference::parse(reference)?;
        let name = Reference::store_name(reference)?;
        let mut client = RegistryClient::new(&parsed, opts)?;

        let wanted = parsed
            .digest
            .clone()
            .or_else(|| parsed.tag.clone())
            .unwrap_or_else(|| "latest".to_string());
        let (mut digest, mut bytes, mut media_type) = client.manifest(&wanted).await?;
        if let Some(expected) = &parsed.digest {
            if &digest != expected {
                return Err(ImageError::DigestMismatch(format!(
                    "manifest {expected} (content is {digest})"
                )));
            }
        }
        let mut manifest: Option<Manifest> = None;
        for _ in 0..4 {
            match ManifestDoc::parse(&bytes, &media_type).map_err(as_registry)? {
                ManifestDoc::Manifest(m) => {
                    manifest = Some(m);
                    break;
                }
                ManifestDoc::Index(index) => {
                    let chosen = choose_platform(&index.manifests)
                        .ok_or_else(|| ImageError::NoMatchingPlatform(reference.to_string()))?
                        .digest
                        .clone();
                    let (d, b, m) = client.manifest(&chosen).await?;
                    if d != chosen {
                        return Err(ImageError::DigestMismatch(format!(
                            "manifest {chosen} (content is {d})"
                        )));
                    }
                    (digest, bytes, media_type) = (d, b, m);
                }
            }
        }
        let manifest = manifest.ok_or_else(|| {
            ImageError::Registry(format!("{reference}: indexes nested too deeply"))
        })?;
        report(
            &progress,
            ImageProgress::Resolved {
                digest: digest.clone(),
                layers: manifest.layers.len(),
            },
        );

        let mut pins = self
            .pins
            .pin([digest.clone(), manifest.config.digest.clone()]);
        pins.add(manifest.layers.iter().map(|l| l.digest.clone()));
        self.store_blob_bytes(&bytes, &digest)?;
        if manifest.config.size == 0 || manifest.config.size > MAX_MANIFEST_BYTES {
            return Err(ImageError::Registry(format!(
                "config {} has size {} (must be 1..={MAX_MANIFEST_BYTES} bytes)",
                manifest.config.digest, manifest.config.size
            )));
        }
        client
            .fetch_blob(
                &self.root,
                &manifest.config.digest,
                manifest.config.size,
                &None,
            )
            .await?;
        let config_bytes = super::blobs::read_small_blob(&self.root, &manifest.config.digest)?;
        for layer in &manifest.layers {
            if blob_path(&self.root, &layer.digest)?.exists() {
                report(
                    &progress,
                    ImageProgress::LayerExists {
                        digest: layer.digest.clone(),
                    },
                );
                continue;
            }
            client
                .fetch_blob(&self.root, &layer.digest, layer.size, &progress)
                .await?;
        }
        self.finish_image(
            &name,
            &digest,
            &manifest,
            &config_bytes,
            &mut pins,
            &progress,
        )
        .await
    }

    fn store_blob_bytes(&self, bytes: &[u8], digest: &str) -> Result<(), ImageError> {
        let mut writer = BlobWriter::create(&self.root)?;
        writer
            .write_all(bytes)
            .map_err(io_error("write manifest blob"))?;
        writer.commit(Some(digest))?;
        Ok(())
    }
}

fn as_registry(e: ImageError) -> ImageError {
    match e {
        ImageError::InvalidArchive(msg) => ImageError::Registry(msg),
        other => other,
    }
}

impl<'a> RegistryClient<'a> {
    fn new(reference: &'a Reference, opts: &'a PullOptions) -> Result<Self, ImageError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A stalled transfer fails instead of hanging the pull forever.
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImageError::Registry(format!("HTTP client: {e}")))?;
        let scheme = if opts.insecure || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        Ok(Self {
            http,
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.registry, reference.repository
            ),
            reference,
            opts,
            auth: Auth::None,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> ImageError {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        ImageError::Registry(format!(
            "cannot reach registry {}: {msg}",
            self.reference.registry
        ))
    }

    /// GET `url`, answering one authentication challenge.
    async fn get(&mut self, url: &str, accept: Option<&str>) -> Result<Response, ImageError> {
        let mut challenged = false;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            request = match &self.auth {
                Auth::None => request,
                Auth::Basic => request.basic_auth(
                    self.opts.username.clone().unwrap_or_default(),
                    self.opts.password.clone(),
                ),
                Auth::Bearer(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            };
            let response = request.send().await.map_err(|e| self.unreachable(e))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if challenged {
                return Err(ImageError::Unauthorized(registry_message(response).await));
            }
            challenged = true;
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            self.answer(&challenge, response).await?;
        }
    }

    async fn answer(&mut self, challenge: &str, response: Response) -> Result<(), ImageError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            if self.opts.username.is_none() {
                return Err(ImageError::Unauthorized(format!(
                    "{} requires credentials: {}",
                    self.reference.registry,
                    registry_message(response).await
                )));
            }
            credentials_allowed(&self.base, self.opts.insecure)?;
            self.auth = Auth::Basic;
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ImageError::Unauthorized(format!(
                "{}: unsupported challenge {challenge:?}",
                self.reference.registry
            )));
        }
        let params = parse_challenge(params);
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let realm = param("realm").ok_or_else(|| {
            ImageError::Unauthorized(format!("bearer challenge without realm: {challenge}"))
        })?;
        let scope = param("scope")
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let mut query = vec![("scope", scope)];
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(&realm).query(&query);
        if let Some(user) = &self.opts.username {
            credentials_allowed(&realm, self.opts.insecure)?;
            request = request.basic_auth(user, self.opts.password.clone());
        }
        let token_response = request.send().await.map_err(|e| self.unreachable(e))?;
        if !token_response.status().is_success() {
            let status = token_response.status();
            let msg = registry_message(token_response).await;
            return Err(ImageError::Unauthorized(format!(
                "token from {realm}: {status}: {msg}"
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_capped(token_response, MAX_REPLY_BYTES)
            .await
            .map_err(|e| {
                ImageError::Unauthorized(format!("cannot read the token from {realm}: {e}"))
            })?
            .ok_or_else(|| {
                ImageError::Unauthorized(format!(
                    "token response from {realm} is larger than {MAX_REPLY_BYTES} bytes"
                ))
            })?;
        let token: Token = serde_json::from_slice(&body).map_err(|e| {
            ImageError::Unauthorized(format!("bad token response from {realm}: {e}"))
        })?;
        let token = token.token.or(token.access_token).ok_or_else(|| {
            ImageError::Unauthorized(format!("no token in the response from {realm}"))
        })?;
        self.auth = Auth::Bearer(token);
        Ok(())
    }

    /// Fetches a manifest by tag or digest: `(digest, bytes, media type)`.
    async fn manifest(
        &mut self,
        tag_or_digest: &str,
    ) -> Result<(String, Vec<u8>, String), ImageError> {
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let response = self.get(&url, Some(&accept)).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ImageError::NotFound(format!(
                "{}/{}:{tag_or_digest} (registry says: {})",
                self.reference.registry,
                self.reference.repository,
                registry_message(response).await
            )));
        }
        if !status.is_success() {
            return Err(ImageError::Registry(format!(
                "manifest {tag_or_digest}: {status}: {}",
                registry_message(response).await
            )));
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(ImageError::Registry(format!(
                "manifest {tag_or_digest} is too big"
            )));
        }
        let mut bytes = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(ImageError::Registry(format!(
                    "manifest {tag_or_digest} is too big"
                )));
            }
        }
        Ok((digest_of(&bytes), bytes, media_type))
    }

    /// Streams a blob of `size` bytes (from its descriptor) into the store,
    /// verifying its digest. A registry sending more than `size` bytes is
    /// cut off as soon as it does, so it cannot fill the disk.
    async fn fetch_blob(
        &mut self,
        root: &std::path::Path,
        digest: &str,
        size: u64,
        progress: &Option<mpsc::UnboundedSender<ImageProgress>>,
    ) -> Result<(), ImageError> {
        blob_path(root, digest)?;
        let url = format!("{}/blobs/{digest}", self.base);
        let response = self.get(&url, None).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ImageError::NotFound(format!(
                "blob {digest} in {}/{} (registry says: {})",
                self.reference.registry,
                self.reference.repository,
                registry_message(response).await
            )));
        }
        if !status.is_success() {
            return Err(ImageError::Registry(format!(
                "blob {digest}: {status}: {}",
                registry_message(response).await
            )));
        }
        if response.content_length().is_some_and(|n| n > size) {
            return Err(too_big(digest, size));
        }
        let total = Some(size);
        let mut writer = BlobWriter::create(root)?;
        let mut stream = response.bytes_stream();
        let mut last = Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            if writer.size().saturating_add(chunk.len() as u64) > size {
                return Err(too_big(digest, size));
            }
            // Chunks are small (tens of KiB); a local write does not stall
            // the runtime noticeably.
            writer
                .write_all(&chunk)
                .map_err(io_error(format!("write blob {digest}")))?;
            if last.elapsed() >= PROGRESS_INTERVAL {
                last = Instant::now();
                report(
                    progress,
                    ImageProgress::Layer {
                        digest: digest.to_string(),
                        done: writer.size(),
                        total,
                    },
                );
            }
        }
        report(
            progress,
            ImageProgress::Layer {
                digest: digest.to_string(),
                done: writer.size(),
                total,
            },
        );
        let expected = digest.to_string();
        tokio::task::spawn_blocking(move || writer.commit(Some(&expected)))
            .await
            .map_err(|e| ImageError::Io {
                context: "store blob task".to_string(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(())
    }
}

/// The error for a blob whose content is longer than its descriptor says.
fn too_big(digest: &str, size: u64) -> ImageError {
    ImageError::Registry(format!(
        "blob {digest}: the registry sent more than the {size} bytes its descriptor declares"
    ))
}

/// Sending credentials to `url` is allowed over https, to a loopback host,
/// or when the pull is explicitly `insecure`.
fn credentials_allowed(url: &str, insecure: bool) -> Result<(), ImageError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ImageError::Unauthorized(format!("bad authentication URL {url:?}: {e}")))?;
    let host = parsed.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() == "https" || insecure || loopback {
        return Ok(());
    }
    Err(ImageError::Unauthorized(format!(
        "refusing to send credentials over plain {} to {url} \
         (use https, or allow insecure registries for this pull)",
        parsed.scheme()
    )))
}

/// Reads at most `limit` bytes of `response`'s body: `None` when it is
/// longer (the rest is not read).
async fn read_capped(response: Response, limit: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The registry's error text: the `errors[].message` of its JSON body, or
/// the body itself (read up to [`MAX_REPLY_BYTES`]).
async fn registry_message(response: Response) -> String {
    let status = response.status();
    let (bytes, truncated) = match read_capped(response, MAX_REPLY_BYTES).await {
        Ok(Some(bytes)) => (bytes, false),
        Ok(None) => (Vec::new(), true),
        Err(_) => (Vec::new(), false),
    };
    if truncated {
        return format!("{status} (error body larger than {MAX_REPLY_BYTES} bytes, not read)");
    }
    let body = String::from_utf8_lossy(&bytes).into_owned();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|i| format!("{} {}", i.code, i.message).trim().to_string())
            .collect::<Vec<_>>()
            .join("; "),
        _ if body.trim().is_empty() => status.to_string(),
        _ => body.trim().chars().take(500).collect(),
    }
}

/// Parses `k="v",k2="v2"` (values may contain commas inside quotes).
fn parse_challenge(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((key, value.to_string()));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn bearer_challenge_is_parsed() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(
            p[2],
            (
                "scope".into(),
                "repository:library/busybox:pull,push".into()
            )
        );
    }

    #[test]
    fn credentials_only_go_over_https_or_to_loopback() {
        assert!(credentials_allowed("https://auth.example.com/token", false).is_ok());
        assert!(credentials_allowed("http://localhost:5000/token", false).is_ok());
        assert!(credentials_allowed("http://127.0.0.1:5000/token", false).is_ok());
        assert!(credentials_allowed("http://[::1]:5000/token", false).is_ok());
        assert!(credentials_allowed("http://auth.example.com/token", true).is_ok());
        let err = credentials_allowed("http://auth.example.com/token", false).unwrap_err();
        assert!(
            matches!(&err, ImageError::Unauthorized(m) if m.contains("refusing to send credentials")),
            "{err}"
        );
    }
}
