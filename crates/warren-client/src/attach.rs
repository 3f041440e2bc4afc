//! `GET …/processes/{pid}/attach`: a WebSocket to a process over the same
//! unix or TCP transport as every other call.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

use crate::{ClientError, Target};

/// The byte stream under an attached WebSocket (unix or TCP).
pub trait AttachIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AttachIo for T {}

/// An attached process: send [`WsMessage::Binary`] for stdin and
/// [`WsMessage::Text`] with a JSON [`warren_api::AttachControl`]; receive
/// binary output and JSON [`warren_api::AttachEvent`] text messages.
pub type Attached = WebSocketStream<Box<dyn AttachIo>>;

pub(crate) async fn connect(
    target: &Target,
    api_key: Option<&str>,
    route: &str,
) -> Result<Attached, ClientError> {
    let protocol_error = |e: String| ClientError::Protocol(format!("attach {route}: {e}"));
    let uri = format!("ws://{}{}", target.host_header(), target.request_uri(route));
    let mut request = uri
        .into_client_request()
        .map_err(|e| protocol_error(e.to_string()))?;
    if let Some(key) = api_key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ClientError::InvalidApiKey(
                "it contains characters not allowed in an HTTP header".into(),
            )
        })?;
        request.headers_mut().insert("authorization", value);
    }
    let io: Box<dyn AttachIo> =
        match target {
            Target::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(|source| {
                ClientError::Connect {
                    target: target.to_string(),
                    source,
                }
            })?),
            Target::Tcp { host, port, .. } => {
                let stream =
                    TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|source| ClientError::Connect {
                            target: target.to_string(),
                            source,
                        })?;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
        };
    match tokio_tungstenite::client_async(request, io).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(crate::error::api_error(
            response.status().as_u16(),
            response.body().as_deref().unwrap_or_default(),
        )),
        Err(e) => Err(protocol_error(e.to_string())),
    }
}
