//! Templates (built with a streamed NDJSON log) and warm pools.

use bytes::BytesMut;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Method;
use warren_api::{
    CreatePoolRequest, CreateTemplateRequest, Pool, PoolList, Sandbox, SandboxList, Template,
    TemplateBuildEvent, TemplateList, TemplateRemoved,
};

use crate::routes::encode;
use crate::{error, transport, Client, ClientError};

/// `GET/POST /v1/templates`.
const TEMPLATES: &str = "/v1/templates";
/// `GET/POST /v1/pools`.
const POOLS: &str = "/v1/pools";

/// A template build's events as they arrive; see [`Client::create_template`].
pub struct TemplateBuildStream {
    body: Incoming,
    buffer: BytesMut,
    target: String,
    finished: bool,
}

impl TemplateBuildStream {
    /// The next event; `None` after the last one (`reused`, `done` or
    /// `failed`). A failed setup is an event, not an `Err`.
    pub async fn next(&mut self) -> Result<Option<TemplateBuildEvent>, ClientError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let text = String::from_utf8_lossy(&line[..end]);
                if text.trim().is_empty() {
                    continue;
                }
                let event: TemplateBuildEvent = serde_json::from_str(&text)
                    .map_err(|e| ClientError::Protocol(format!("bad template build event: {e}")))?;
                if matches!(
                    event,
                    TemplateBuildEvent::Reused { .. }
                        | TemplateBuildEvent::Done { .. }
                        | TemplateBuildEvent::Failed { .. }
                ) {
                    self.finished = true;
                }
                return Ok(Some(event));
            }
            let Some(data) = transport::next_data(&mut self.body, &self.target).await? else {
                return Err(ClientError::Protocol(
                    "the template build stream ended without a result".to_owned(),
                ));
            };
            self.buffer.extend_from_slice(&data);
        }
    }

    /// Reads the stream to its end and returns the last event.
    pub async fn finish(mut self) -> Result<TemplateBuildEvent, ClientError> {
        let mut last = None;
        while let Some(event) = self.next().await? {
            last = Some(event);
        }
        last.ok_or_else(|| ClientError::Protocol("the template build sent no event".to_owned()))
    }
}

impl Client {
    /// `POST /v1/templates`: builds the template (or reuses the ready one
    /// with the same recipe). Returns the build's events as they arrive:
    /// `step` and `output` while the setup runs, then `reused`, `done` or
    /// `failed`. An invalid recipe is an `Err` here (422).
    pub async fn create_template(
        &self,
        req: &CreateTemplateRequest,
    ) -> Result<TemplateBuildStream, ClientError> {
        let json = serde_json::to_vec(req)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("accept", "application/x-ndjson".to_owned()),
        ];
        let (status, body) = transport::send_body(
            &self.target,
            self.api_key.as_deref(),
            Method::POST,
            TEMPLATES,
            &headers,
            Full::new(bytes::Bytes::from(json)),
        )
        .await?;
        if !(200..300).contains(&status) {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(error::api_error(status, &bytes));
        }
        Ok(TemplateBuildStream {
            body,
            buffer: BytesMut::new(),
            target: self.target.to_string(),
            finished: false,
        })
    }

    /// `GET /v1/templates`: templates by name.
    pub async fn list_templates(&self) -> Result<Vec<Template>, ClientError> {
        let list: TemplateList = self.call(Method::GET, TEMPLATES, None::<&()>).await?;
        Ok(list.templates)
    }

    /// `GET /v1/templates/{name}`.
    pub async fn get_template(&self, name: &str) -> Result<Template, ClientError> {
        let route = format!("{TEMPLATES}/{}", encode(name));
        self.call(Method::GET, &route, None::<&()>).await
    }

    /// `DELETE /v1/templates/{name}`: refused (409) while the template has
    /// a warm pool. Its snapshot is deleted unless sandboxes still use it.
    pub async fn delete_template(&self, name: &str) -> Result<TemplateRemoved, ClientError> {
        let route = format!("{TEMPLATES}/{}", encode(name));
        self.call(Method::DELETE, &route, None::<&()>).await
    }

    /// `POST /v1/pools`: keeps `size` sandboxes of the template ready.
    pub async fn create_pool(&self, template: &str, size: i64) -> Result<Pool, ClientError> {
        let req = CreatePoolRequest {
            template: template.to_owned(),
            size,
        };
        self.call(Method::POST, POOLS, Some(&req)).await
    }

    /// `GET /v1/pools`.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, ClientError> {
        let list: PoolList = self.call(Method::GET, POOLS, None::<&()>).await?;
        Ok(list.pools)
    }

    /// `GET /v1/pools/{template}`.
    pub async fn get_pool(&self, template: &str) -> Result<Pool, ClientError> {
        let route = format!("{POOLS}/{}", encode(template));
        self.call(Method::GET, &route, None::<&()>).await
    }

    /// `DELETE /v1/pools/{template}`: removes the pool and its idle sandboxes.
    pub async fn delete_pool(&self, template: &str) -> Result<(), ClientError> {
        let route = format!("{POOLS}/{}", encode(template));
        self.send(Method::DELETE, &route, None::<&()>)
            .await
            .map(drop)
    }

    /// `GET /v1/sandboxes?pool=TEMPLATE`: the idle members of a warm pool
    /// (hidden from [`Client::list_sandboxes`]).
    pub async fn list_pool_sandboxes(&self, template: &str) -> Result<Vec<Sandbox>, ClientError> {
        let route = format!("/v1/sandboxes?pool={}", encode(template));
        let list: SandboxList = self.call(Method::GET, &route, None::<&()>).await?;
        Ok(list.sandboxes)
    }
}
