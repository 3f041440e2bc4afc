//! Image routes: list, inspect and remove images, import an archive (the
//! request body, streamed to disk) and pull from a registry (progress as
//! server-sent events).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use warren_api::{
    ErrorBody, ErrorCode, ErrorDetail, Image, ImageConfig, ImageLayer, ImageList, ImageRemoved,
    PullImageRequest, PullProgress, PullProgressKind, DEFAULT_IMAGE,
};
use warren_runtime::images::{ImageError, ImageInfo, ImageProgress, ImageStore, PullOptions};

use crate::api_json::ApiJson;
use crate::error::{image_error, ApiError};
use crate::AppState;

/// Least time between two `layer` progress events of a pull, so that a
/// fast download does not become thousands of events.
const LAYER_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// The image routes. Names may arrive URL-encoded (`a%2Fb%3Av1`) or with
/// plain slashes (`a/b:v1`): both reach the same handlers.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/import", post(import_image))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/{*name}", get(get_image).delete(delete_image))
}

/// The built-in image: no layers, a read-only view of the host's system.
fn host_image() -> Image {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    Image {
        name: DEFAULT_IMAGE.to_owned(),
        builtin: true,
        digest: None,
        config_digest: None,
        size: 0,
        layers: Vec::new(),
        architecture: architecture.to_owned(),
        os: std::env::consts::OS.to_owned(),
        created: None,
        config: ImageConfig::default(),
        stored_at: None,
    }
}

/// The API view of a stored image.
pub fn image_to_api(info: ImageInfo) -> Image {
    Image {
        name: info.name,
        builtin: false,
        digest: Some(info.digest),
        config_digest: Some(info.config_digest),
        size: info.size,
        layers: info
            .layers
            .into_iter()
            .map(|l| ImageLayer {
                digest: l.digest,
                diff_id: l.diff_id,
                size: l.size,
            })
            .collect(),
        architecture: info.architecture,
        os: info.os,
        created: info.created,
        config: ImageConfig {
            env: info.config.env,
            working_dir: info.config.working_dir,
            user: info.config.user,
            entrypoint: info.config.entrypoint,
            cmd: info.config.cmd,
        },
        stored_at: Some(info.stored_at),
    }
}

/// The API error for a failed pull: like [`image_error`], except that a
/// missing image is missing from the registry, not from this store.
fn pull_error(err: ImageError) -> ApiError {
    match err {
        ImageError::NotFound(what) => ApiError::new(
            ErrorCode::ImageNotFound,
            format!("the registry has no image {what}"),
        ),
        other => image_error(other),
    }
}

fn store_of(state: &AppState) -> Result<Arc<ImageStore>, ApiError> {
    state.service.images().cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::CapabilityUnsupported,
            "this daemon has no image store; only the built-in host image is available",
        )
    })
}

/// Runs a (file system bound) store call off the async threads.
async fn blocking<T, F>(store: Arc<ImageStore>, call: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&ImageStore) -> Result<T, ImageError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || call(&store))
        .await
        .map_err(|e| ApiError::internal(format!("image store task failed: {e}")))?
        .map_err(image_error)
}

fn is_host(name: &str) -> bool {
    name == DEFAULT_IMAGE
}

/// List images: the built-in `host` image, then stored images by name.
#[utoipa::path(
    get,
    path = "/v1/images",
    tag = "images",
    responses((status = 200, description = "All images", body = ImageList))
)]
pub async fn list_images(State(state): State<AppState>) -> Result<Json<ImageList>, ApiError> {
    let mut images = vec![host_image()];
    if let Some(store) = state.service.images().cloned() {
        let stored = blocking(store, ImageStore::list).await?;
        images.extend(stored.into_iter().map(image_to_api));
    }
    Ok(Json(ImageList { images }))
}

/// Get one image by name (URL-encoded, `:latest` implied) or manifest digest.
#[utoipa::path(
    get,
    path = "/v1/images/{name}",
    tag = "images",
    params(("name" = String, Path, description = "Image name (URL-encoded) or manifest digest")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 404, description = "No such image (`image_not_found`)", body = ErrorBody),
    )
)]
pub async fn get_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Image>, ApiError> {
    if is_host(&name) {
        return Ok(Json(host_image()));
    }
    let store = store_of(&state).map_err(|_| image_error(ImageError::NotFound(name.clone())))?;
    let info = blocking(store, move |s| s.get(&name)).await?;
    Ok(Json(image_to_api(info)))
}

/// Remove an image and the layers no other image uses.
#[utoipa::path(
    delete,
    path = "/v1/images/{name}",
    tag = "images",
    params(("name" = String, Path, description = "Image name (URL-encoded) or manifest digest")),
    responses(
        (status = 200, description = "Removed; what it freed", body = ImageRemoved),
        (status = 404, description = "No such image (`image_not_found`)", body = ErrorBody),
        (status = 409, description = "Sandboxes still use the image (`image_in_use`); the message names them", body = ErrorBody),
        (status = 422, description = "The built-in host image cannot be removed", body = ErrorBody),
    )
)]
pub async fn delete_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ImageRemoved>, ApiError> {
    if is_host(&name) {
        return Err(ApiError::invalid_value(
            "the host image is built in and cannot be removed",
        ));
    }
    let (info, summary) = state.service.remove_image(&name).await?;
    tracing::info!(
        image = %info.name,
        layers_removed = summary.layers_removed,
        bytes_freed = summary.bytes_freed,
        "image removed"
    );
    Ok(Json(ImageRemoved {
        layers_removed: summary.layers_removed as u64,
        bytes_freed: summary.bytes_freed,
    }))
}

/// Query of `POST /v1/images/import`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Name to store the image under, `NAME[:TAG]`.
    name: Option<String>,
}

/// Import an image archive sent as the request body.
///
/// The body is an OCI image layout or a `docker save` archive, as a tar
/// (optionally gzip-compressed), or a plain root file system tarball (which
/// becomes a one-layer image with an empty config). It is streamed to disk
/// and checked against its digests, never held in memory, and has no size
/// limit.
#[utoipa::path(
    post,
    path = "/v1/images/import",
    tag = "images",
    params(("name" = String, Query, description = "Name to store the image under, NAME[:TAG] (`:latest` when no tag)")),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "The archive"),
    responses(
        (status = 201, description = "Imported", body = Image),
        (status = 400, description = "No name given", body = ErrorBody),
        (status = 422, description = "Not a valid image archive, a digest mismatch or a bad name; the message says which", body = ErrorBody),
    )
)]
pub async fn import_image(
    State(state): State<AppState>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let name = query
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid_request("give the image a name: ?name=NAME[:TAG]"))?;
    if is_host(&name) {
        return Err(ApiError::invalid_value(
            "host is the built-in image's name; choose another",
        ));
    }
    let store = store_of(&state)?;
    tracing::info!(image = %name, "importing image");
    let archive = crate::file_transfer::stream_from(body);
    let info = store
        .import(archive, &name, None)
        .await
        .map_err(image_error)?;
    tracing::info!(image = %info.name, digest = %info.digest, "image imported");
    Ok((StatusCode::CREATED, Json(image_to_api(info))))
}

fn progress_to_api(progress: ImageProgress) -> PullProgress {
    let event = |kind, digest| PullProgress {
        kind,
        digest,
        done: None,
        total: None,
        layers: None,
    };
    match progress {
        ImageProgress::Resolved { digest, layers } => PullProgress {
            layers: Some(layers as u64),
            ..event(PullProgressKind::Resolved, digest)
        },
        ImageProgress::Layer {
            digest,
            done,
            total,
        } => PullProgress {
            done: Some(done),
            total,
            ..event(PullProgressKind::Layer, digest)
        },
        ImageProgress::LayerExists { digest } => event(PullProgressKind::LayerExists, digest),
        ImageProgress::Unpacking { digest } => event(PullProgressKind::Unpacking, digest),
    }
}

fn json_event(name: &str, body: &impl serde::Serialize) -> Event {
    let data = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event(name).data(data)
}

fn error_event(err: &ApiError) -> Event {
    json_event(
        "error",
        &ErrorDetail {
            code: err.code.as_str().to_owned(),
            message: err.message.clone(),
        },
    )
}

/// The pull in the background: it runs to the end even if the caller goes
/// away, so an interrupted `warren image pull` leaves no half-stored image.
struct PullTask {
    progress: mpsc::UnboundedReceiver<ImageProgress>,
    result: oneshot::Receiver<Result<ImageInfo, ImageError>>,
}

impl PullTask {
    fn spawn(store: Arc<ImageStore>, reference: String, opts: PullOptions) -> Self {
        let (progress_tx, progress) = mpsc::unbounded_channel();
        let (result_tx, result) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = store.pull(&reference, &opts, Some(progress_tx)).await;
            match &outcome {
                Ok(info) => {
                    tracing::info!(image = %info.name, digest = %info.digest, "image pulled")
                }
                Err(err) => tracing::warn!(%reference, error = %err, "image pull failed"),
            }
            let _ = result_tx.send(outcome);
        });
        Self { progress, result }
    }

    /// The pull's outcome (once its progress channel has closed).
    async fn outcome(
        result: oneshot::Receiver<Result<ImageInfo, ImageError>>,
    ) -> Result<Image, ApiError> {
        match result.await {
            Ok(Ok(info)) => Ok(image_to_api(info)),
            Ok(Err(err)) => Err(pull_error(err)),
            Err(_) => Err(ApiError::internal("the pull task ended without a result")),
        }
    }
}

/// State of the SSE stream of a pull.
struct PullStream {
    first: Option<ImageProgress>,
    progress: mpsc::UnboundedReceiver<ImageProgress>,
    result: Option<oneshot::Receiver<Result<ImageInfo, ImageError>>>,
    last_layer_event: Option<Instant>,
}

impl PullStream {
    /// The next event to send, skipping `layer` events that come too fast
    /// (a layer's last one, with `done == total`, always goes out).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            let progress = match self.first.take() {
                Some(first) => Some(first),
                None => self.progress.recv().await,
            };
            let Some(progress) = progress else {
                let result = self.result.take()?;
                return Some(match PullTask::outcome(result).await {
                    Ok(image) => json_event("done", &image),
                    Err(err) => error_event(&err),
                });
            };
            if let ImageProgress::Layer { done, total, .. } = &progress {
                let finished = *total == Some(*done);
                let recent = self
                    .last_layer_event
                    .is_some_and(|t| t.elapsed() < LAYER_EVENT_INTERVAL);
                if recent && !finished {
                    continue;
                }
                self.last_layer_event = Some(Instant::now());
            }
            return Some(json_event("progress", &progress_to_api(progress)));
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut state| async move {
            let event = state.next_event().await?;
            Some((Ok(event), state))
        })
    }
}

/// Whether the caller asked for one JSON answer rather than an event stream.
fn wants_json_only(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/event-stream")
}

/// Pull an image from a registry.
///
/// By default the answer is a stream of server-sent events: `progress`
/// events (data: `PullProgress`), then either `done` (data: the `Image`) or
/// `error` (data: `{"code","message"}`, with the codes of the error
/// statuses below). Errors found before anything was fetched (a bad
/// reference, an unreachable registry, refused credentials) are answered
/// with their HTTP status instead. With `Accept: application/json` the
/// call blocks until the image is stored and answers with the `Image`.
#[utoipa::path(
    post,
    path = "/v1/images/pull",
    tag = "images",
    request_body = PullImageRequest,
    responses(
        (status = 200, description = "An SSE stream of progress events ending with done or error; with Accept: application/json, the pulled image", content_type = "text/event-stream", body = PullProgress),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 403, description = "The registry refused the credentials (`registry_unauthorized`)", body = ErrorBody),
        (status = 422, description = "Invalid reference, no linux/amd64 image, or a digest mismatch", body = ErrorBody),
        (status = 502, description = "The registry failed or could not be reached (`registry_error`)", body = ErrorBody),
    )
)]
pub async fn pull_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PullImageRequest>,
) -> Result<Response, ApiError> {
    let reference = req.reference.trim().to_owned();
    if reference.is_empty() {
        return Err(ApiError::invalid_value(
            "reference must name an image, for example docker.io/library/alpine:3.20",
        ));
    }
    let store = store_of(&state)?;
    let opts = PullOptions {
        insecure: req.insecure.unwrap_or(false),
        username: req.username,
        password: req.password,
    };
    // Never the password: only the reference and whether credentials came.
    tracing::info!(%reference, insecure = opts.insecure, with_credentials = opts.username.is_some() || opts.password.is_some(), "pulling image");
    let PullTask {
        mut progress,
        result,
    } = PullTask::spawn(store, reference, opts);
    if wants_json_only(&headers) {
        drop(progress);
        let image = PullTask::outcome(result).await?;
        return Ok(Json(image).into_response());
    }
    // Wait for the first sign of life so that early failures get a status.
    let Some(first) = progress.recv().await else {
        let image = PullTask::outcome(result).await?;
        return Ok(Sse::new(futures_util::stream::once(async move {
            Ok::<_, Infallible>(json_event("done", &image))
        }))
        .into_response());
    };
    let stream = PullStream {
        first: Some(first),
        progress,
        result: Some(result),
        last_layer_event: None,
    };
    Ok(Sse::new(stream.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EDQUOT, ENOSPC};

    #[test]
    fn errors_map_to_statuses() {
        let status = |e| image_error(e).status().as_u16();
        assert_eq!(status(ImageError::NotFound("x".into())), 404);
        assert_eq!(status(ImageError::InvalidArchive("x".into())), 422);
        assert_eq!(status(ImageError::InvalidReference("x".into())), 422);
        assert_eq!(status(ImageError::NoMatchingPlatform("x".into())), 422);
        assert_eq!(status(ImageError::DigestMismatch("x".into())), 422);
        assert_eq!(status(ImageError::Unauthorized("x".into())), 403);
        assert_eq!(status(ImageError::Registry("x".into())), 502);
        let io = ImageError::Io {
            context: "x".into(),
            source: std::io::Error::other("y"),
        };
        assert_eq!(status(io), 500);
        for errno in [ENOSPC, EDQUOT] {
            let full = image_error(ImageError::Io {
                context: "write blob".into(),
                source: std::io::Error::from_raw_os_error(errno),
            });
            assert_eq!(full.status().as_u16(), 507);
            assert_eq!(full.code.as_str(), "disk_full");
            assert!(full.message.contains("disk is full"), "{}", full.message);
        }
        let err = image_error(ImageError::NotFound("a/b:1".into()));
        assert_eq!(err.code.as_str(), "image_not_found");
    }

    #[test]
    fn accept_header_picks_json_or_events() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json_only(&headers));
        headers.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(wants_json_only(&headers));
        headers.insert(
            header::ACCEPT,
            "text/event-stream, application/json".parse().unwrap(),
        );
        assert!(!wants_json_only(&headers));
    }

    #[tokio::test]
    async fn fast_layer_events_are_thinned_but_the_last_is_kept() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (result_tx, result) = oneshot::channel();
        for done in 1..=1000u64 {
            tx.send(ImageProgress::Layer {
                digest: "sha256:aa".into(),
                done,
                total: Some(1000),
            })
            .unwrap();
        }
        drop(tx);
        let _ = result_tx.send(Err(ImageError::Registry("gone".into())));
        let mut stream = PullStream {
            first: None,
            progress: rx,
            result: Some(result),
            last_layer_event: None,
        };
        let mut count = 0;
        while stream.next_event().await.is_some() {
            count += 1;
        }
        // First layer event, the final one, and the error.
        assert_eq!(count, 3);
    }
}
