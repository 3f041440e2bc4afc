//! Lifetimes, suspend and the event log of sandboxes.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::Method;
use warren_api::{Sandbox, SandboxEvent, SandboxEventList, UpdateSandboxRequest};

use crate::process::SseParser;
use crate::{error, routes, transport, Client, ClientError};

/// A live stream of a sandbox's events (`GET …/events` as SSE).
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    parser: SseParser,
    target: String,
}

impl EventStream {
    /// The next event, or `None` once the stream ends (after the sandbox's
    /// `deleted` event, or when the daemon stops).
    pub async fn next(&mut self) -> Result<Option<SandboxEvent>, ClientError> {
        loop {
            if let Some(raw) = self.parser.next_event() {
                return serde_json::from_str(&raw.data)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(format!("bad sandbox event: {e}")));
            }
            match transport::next_data(&mut self.body, &self.target).await? {
                Some(data) => self.parser.push(&data),
                None => return Ok(None),
            }
        }
    }
}

impl Client {
    /// `POST /v1/sandboxes/{id}/suspend`: saves the sandbox to disk and
    /// stops its processes; `memoryPreserved` in the answer says whether a
    /// resume continues them or starts the sandbox again from its files.
    pub async fn suspend_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        let route = format!("{}/suspend", routes::sandbox(id));
        self.call(Method::POST, &route, None::<&()>).await
    }

    /// `PATCH /v1/sandboxes/{id}`: changes timeouts (`0` clears one; a new
    /// `timeoutSecs` counts from now), the timeout action or auto-resume.
    pub async fn update_sandbox(
        &self,
        id: &str,
        req: &UpdateSandboxRequest,
    ) -> Result<Sandbox, ClientError> {
        self.call(Method::PATCH, &routes::sandbox(id), Some(req))
            .await
    }

    /// `GET /v1/sandboxes/{id}/events`: the sandbox's events after event
    /// `after` (0: all), oldest first. Events outlive their sandbox.
    pub async fn sandbox_events(
        &self,
        id: &str,
        after: i64,
    ) -> Result<Vec<SandboxEvent>, ClientError> {
        let route = format!("{}/events?after={after}", routes::sandbox(id));
        let list: SandboxEventList = self.call(Method::GET, &route, None::<&()>).await?;
        Ok(list.events)
    }

    /// `GET /v1/sandboxes/{id}/events` as SSE: the stored events after
    /// `after` (sent as `Last-Event-ID`), then live ones until the sandbox
    /// is deleted.
    pub async fn follow_sandbox_events(
        &self,
        id: &str,
        after: i64,
    ) -> Result<EventStream, ClientError> {
        let route = format!("{}/events", routes::sandbox(id));
        let headers = [
            ("accept", "text/event-stream".to_owned()),
            ("last-event-id", after.to_string()),
        ];
        let body = Empty::<Bytes>::new();
        let (status, response) = transport::send_body_response(
            &self.target,
            self.api_key.as_deref(),
            Method::GET,
            &route,
            &headers,
            body,
        )
        .await?;
        if !(200..300).contains(&status) {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(error::api_error(status, &bytes));
        }
        Ok(EventStream {
            body: response.into_body(),
            parser: SseParser::default(),
            target: self.target.to_string(),
        })
    }
}
