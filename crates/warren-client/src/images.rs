//! Images: list, inspect, remove, import an archive (streamed from any
//! reader) and pull from a registry (with a progress stream).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::Method;
use tokio::io::{AsyncRead, ReadBuf};
use warren_api::{ErrorDetail, Image, ImageList, ImageRemoved, PullImageRequest, PullProgress};

use crate::process::SseParser;
use crate::routes::encode;
use crate::{error, transport, Client, ClientError};

/// `GET/POST /v1/images`.
const IMAGES: &str = "/v1/images";

/// Bytes read from an archive per request body frame.
const CHUNK_BYTES: usize = 64 * 1024;

/// `/v1/images/{name}`, the name percent-encoded (it may hold `/` and `:`).
fn image_route(name: &str) -> String {
    format!("{IMAGES}/{}", encode(name))
}

/// One event of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// Progress: the manifest was resolved, layer bytes arrived, a layer
    /// was already stored, or a layer is being unpacked.
    Progress(PullProgress),
    /// The image is stored; the last event.
    Done(Box<Image>),
}

/// A pull's events as they arrive; see [`Client::pull_image_with_progress`].
pub struct PullStream {
    body: Incoming,
    parser: SseParser,
    target: String,
    finished: bool,
}

impl PullStream {
    /// The next event; `None` after [`PullEvent::Done`]. A failed pull is an
    /// `Err` ([`ClientError::Api`] with the daemon's code, for example
    /// `registry_unauthorized` or `registry_error`).
    pub async fn next(&mut self) -> Result<Option<PullEvent>, ClientError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            while let Some(raw) = self.parser.next_event() {
                let bad =
                    |e: serde_json::Error| ClientError::Protocol(format!("bad pull event: {e}"));
                match raw.event.as_deref() {
                    Some("progress") => {
                        let progress = serde_json::from_str(&raw.data).map_err(bad)?;
                        return Ok(Some(PullEvent::Progress(progress)));
                    }
                    Some("done") => {
                        self.finished = true;
                        let image = serde_json::from_str(&raw.data).map_err(bad)?;
                        return Ok(Some(PullEvent::Done(Box::new(image))));
                    }
                    Some("error") => {
                        self.finished = true;
                        let detail: ErrorDetail = serde_json::from_str(&raw.data).map_err(bad)?;
                        return Err(ClientError::Api {
                            status: status_for_code(&detail.code),
                            code: detail.code,
                            message: detail.message,
                        });
                    }
                    // Unknown events are for newer clients.
                    _ => {}
                }
            }
            let Some(data) = transport::next_data(&mut self.body, &self.target).await? else {
                return Err(ClientError::Protocol(
                    "the pull stream ended without a result".to_owned(),
                ));
            };
            self.parser.push(&data);
        }
    }
}

/// The HTTP status that goes with an error code sent inside a stream.
fn status_for_code(code: &str) -> u16 {
    match code {
        "invalid_request" => 400,
        "unauthorized" => 401,
        "registry_unauthorized" => 403,
        "not_found" | "image_not_found" => 404,
        "invalid_state" | "image_in_use" => 409,
        "invalid_value" => 422,
        "registry_error" => 502,
        "unavailable" => 503,
        _ => 500,
    }
}

/// A request body read from an [`AsyncRead`] as it is sent.
struct ReaderBody {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    buf: Vec<u8>,
    size: Option<u64>,
    done: bool,
}

impl hyper::body::Body for ReaderBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut read = ReadBuf::new(&mut this.buf);
        match this.reader.as_mut().poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => {
                this.done = true;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(())) => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.size.map(SizeHint::with_exact).unwrap_or_default()
    }
}

impl Client {
    /// `GET /v1/images`: the built-in `host` image, then stored images by name.
    pub async fn list_images(&self) -> Result<Vec<Image>, ClientError> {
        let list: ImageList = self.call(Method::GET, IMAGES, None::<&()>).await?;
        Ok(list.images)
    }

    /// `GET /v1/images/{name}`: one image by name (`:latest` implied) or
    /// manifest digest; `image_not_found` (404) when there is none.
    pub async fn get_image(&self, name: &str) -> Result<Image, ClientError> {
        self.call(Method::GET, &image_route(name), None::<&()>)
            .await
    }

    /// `DELETE /v1/images/{name}`: removes the image and the layers no
    /// other image uses. Fails with `image_in_use` (409) while sandboxes
    /// use it; the message names them.
    pub async fn delete_image(&self, name: &str) -> Result<ImageRemoved, ClientError> {
        self.call(Method::DELETE, &image_route(name), None::<&()>)
            .await
    }

    /// `POST /v1/images/import`: stores the archive read from `archive` (an
    /// OCI layout or `docker save` tarball, optionally gzipped, or a plain
    /// rootfs tarball) as `name`. The archive is streamed, never held in
    /// memory; pass its `size` when known. An invalid archive is an
    /// `invalid_value` (422) error with the importer's message.
    pub async fn import_image(
        &self,
        name: &str,
        archive: impl AsyncRead + Send + 'static,
        size: Option<u64>,
    ) -> Result<Image, ClientError> {
        let route = format!("{IMAGES}/import?name={}", encode(name));
        let body = ReaderBody {
            reader: Box::pin(archive),
            buf: vec![0; CHUNK_BYTES],
            size,
            done: false,
        };
        let headers = [("content-type", "application/x-tar".to_owned())];
        let (status, body) = transport::send_body(
            &self.target,
            self.api_key.as_deref(),
            Method::POST,
            &route,
            &headers,
            body,
        )
        .await?;
        let bytes = collect(body, &self.target.to_string()).await?;
        if !(200..300).contains(&status) {
            return Err(error::api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("invalid JSON in answer to import: {e}")))
    }

    /// `POST /v1/images/pull`: pulls an image and returns it once stored.
    pub async fn pull_image(&self, req: &PullImageRequest) -> Result<Image, ClientError> {
        self.call(Method::POST, &format!("{IMAGES}/pull"), Some(req))
            .await
    }

    /// `POST /v1/images/pull` with progress: the events as they arrive,
    /// ending with [`PullEvent::Done`]. Errors found before anything was
    /// fetched (bad reference, unreachable registry, refused credentials)
    /// are returned here directly.
    pub async fn pull_image_with_progress(
        &self,
        req: &PullImageRequest,
    ) -> Result<PullStream, ClientError> {
        let json = serde_json::to_vec(req)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("accept", "text/event-stream".to_owned()),
        ];
        let (status, body) = transport::send_body(
            &self.target,
            self.api_key.as_deref(),
            Method::POST,
            &format!("{IMAGES}/pull"),
            &headers,
            Full::new(Bytes::from(json)),
        )
        .await?;
        if !(200..300).contains(&status) {
            let bytes = collect(body, &self.target.to_string()).await?;
            return Err(error::api_error(status, &bytes));
        }
        Ok(PullStream {
            body,
            parser: SseParser::default(),
            target: self.target.to_string(),
            finished: false,
        })
    }
}

async fn collect(body: Incoming, target: &str) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|source| ClientError::Http {
            target: target.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_one_encoded_segment() {
        assert_eq!(
            image_route("127.0.0.1:5000/test/busybox:v1"),
            "/v1/images/127.0.0.1%3A5000%2Ftest%2Fbusybox%3Av1"
        );
    }

    #[test]
    fn stream_error_codes_get_their_status() {
        assert_eq!(status_for_code("registry_unauthorized"), 403);
        assert_eq!(status_for_code("registry_error"), 502);
        assert_eq!(status_for_code("invalid_value"), 422);
        assert_eq!(status_for_code("something_new"), 500);
    }

    #[tokio::test]
    async fn reader_body_yields_the_reader_bytes_then_ends() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let body = ReaderBody {
            reader: Box::pin(std::io::Cursor::new(data.clone())),
            buf: vec![0; CHUNK_BYTES],
            size: Some(data.len() as u64),
            done: false,
        };
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(200_000));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.as_ref(), data.as_slice());
    }
}
