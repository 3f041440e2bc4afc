//! One HTTP/1.1 exchange per connection, over a unix socket or TCP.
//!
//! A fresh connection per request keeps the client free of pool state; on a
//! unix socket the connect costs microseconds.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

use crate::{ClientError, Target};

/// How long to wait for a TCP connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status code and the whole body.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// Sends one request and reads the whole response.
pub(crate) async fn send(
    target: &Target,
    api_key: Option<&str>,
    method: Method,
    route: &str,
    body: Option<Vec<u8>>,
) -> Result<Response, ClientError> {
    let request = build_request(target, api_key, method, route, body)?;
    let response = open(target, request).await?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Http {
            target: target.to_string(),
            source,
        })?
        .to_bytes();
    Ok(Response { status, body })
}

/// Sends a GET with extra headers and returns the status and the body as it
/// arrives (for server-sent events).
pub(crate) async fn stream(
    target: &Target,
    api_key: Option<&str>,
    route: &str,
    headers: &[(&'static str, String)],
) -> Result<(u16, Incoming), ClientError> {
    let mut request = build_request(target, api_key, Method::GET, route, None)?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|e| ClientError::Protocol(format!("bad header {name}: {e}")))?;
        request.headers_mut().insert(*name, value);
    }
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let response = open(target, request).await?;
    Ok((response.status().as_u16(), response.into_body()))
}

/// Sends a request with any body (a streamed upload, say) and extra
/// headers; returns the status and the response body as it arrives.
pub(crate) async fn send_body<B>(
    target: &Target,
    api_key: Option<&str>,
    method: Method,
    route: &str,
    headers: &[(&'static str, String)],
    body: B,
) -> Result<(u16, Incoming), ClientError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (status, response) =
        send_body_response(target, api_key, method, route, headers, body).await?;
    Ok((status, response.into_body()))
}

/// A request body streamed from the caller (file and tar uploads).
pub(crate) type StreamingBody = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

/// Like [`send_body`], but returns the whole response (headers included)
/// with its body unread.
pub(crate) async fn send_body_response<B>(
    target: &Target,
    api_key: Option<&str>,
    method: Method,
    route: &str,
    headers: &[(&'static str, String)],
    body: B,
) -> Result<(u16, hyper::Response<Incoming>), ClientError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut request = build_request(target, api_key, method, route, None)?.map(|_| body);
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|e| ClientError::Protocol(format!("bad header {name}: {e}")))?;
        request.headers_mut().insert(*name, value);
    }
    let response = open(target, request).await?;
    Ok((response.status().as_u16(), response))
}

/// Connects, sends the request and returns the response with its body unread.
async fn open<B>(
    target: &Target,
    request: Request<B>,
) -> Result<hyper::Response<Incoming>, ClientError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match target {
        Target::Unix(path) => {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| connect_error(target, source))?;
            exchange(target, TokioIo::new(stream), request).await
        }
        Target::Tcp { host, port, .. } => {
            let connect = TcpStream::connect((host.as_str(), *port));
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(result) => result.map_err(|source| connect_error(target, source))?,
                Err(_) => {
                    return Err(connect_error(
                        target,
                        io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
                    ))
                }
            };
            // Requests are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            exchange(target, TokioIo::new(stream), request).await
        }
    }
}

fn build_request(
    target: &Target,
    api_key: Option<&str>,
    method: Method,
    route: &str,
    body: Option<Vec<u8>>,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(target.request_uri(route))
        .header(HOST, target.host_header())
        .header(ACCEPT, "application/json");
    if let Some(key) = api_key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ClientError::InvalidApiKey(
                "it contains characters not allowed in an HTTP header".into(),
            )
        })?;
        builder = builder.header(AUTHORIZATION, value);
    }
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Protocol(format!("cannot build request for {route}: {e}")))
}

async fn exchange<IO, B>(
    target: &Target,
    io: IO,
    request: Request<B>,
) -> Result<hyper::Response<Incoming>, ClientError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http_error = |source| ClientError::Http {
        target: target.to_string(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_error)?;
    // The connection task ends by itself once the response has been read and
    // `sender` is dropped; its own errors surface through `send_request`.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(http_error)
}

/// The next chunk of data of a streamed response body, or `None` at its end;
/// frames that carry no data (trailers) are skipped. `target` names the
/// daemon in the error.
pub(crate) async fn next_data(
    body: &mut Incoming,
    target: &str,
) -> Result<Option<Bytes>, ClientError> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(source)) => {
                return Err(ClientError::Http {
                    target: target.to_owned(),
                    source,
                })
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

fn connect_error(target: &Target, source: io::Error) -> ClientError {
    ClientError::Connect {
        target: target.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_host_auth_and_content_type() {
        let target = Target::parse("http://example.test:7000/api").unwrap();
        let req = build_request(
            &target,
            Some("wk_secret"),
            Method::POST,
            "/v1/sandboxes",
            Some(b"{}".to_vec()),
        )
        .unwrap();
        assert_eq!(req.uri(), "/api/v1/sandboxes");
        assert_eq!(req.headers()[HOST], "example.test:7000");
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer wk_secret");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn request_without_key_or_body_has_neither_header() {
        let target = Target::Unix("/run/warren/warren.sock".into());
        let req = build_request(&target, None, Method::GET, "/healthz", None).unwrap();
        assert!(req.headers().get(AUTHORIZATION).is_none());
        assert!(req.headers().get(CONTENT_TYPE).is_none());
        assert_eq!(req.headers()[HOST], "localhost");
    }

    #[test]
    fn key_with_newline_is_rejected() {
        let target = Target::Unix("/s".into());
        let err = build_request(&target, Some("a\nb"), Method::GET, "/healthz", None).unwrap_err();
        assert!(matches!(err, ClientError::InvalidApiKey(_)));
    }
}
