//! Sandbox events: recorded in the store and fanned out to SSE subscribers.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use warren_api::{SandboxEvent, SandboxEventList, SandboxState};
use warren_store::EventRecord;

use crate::error::ApiError;
use crate::sandbox_service::SandboxService;
use crate::AppState;

/// Live events of one sandbox buffered for slow subscribers before they
/// lag (a lagging subscriber re-reads the store, so nothing is lost).
const LIVE_BUFFER: usize = 256;

/// Fans recorded events out to live subscribers, one channel per sandbox
/// that has subscribers.
pub(crate) struct EventHub {
    live: std::sync::Mutex<HashMap<String, broadcast::Sender<SandboxEvent>>>,
    /// Held across storing and publishing an event, so events are
    /// published in id order (a stream skips ids at or below its cursor).
    order: tokio::sync::Mutex<()>,
    /// Set when the server shuts down: open streams end.
    closed: watch::Sender<bool>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            live: std::sync::Mutex::default(),
            order: tokio::sync::Mutex::new(()),
            closed: watch::channel(false).0,
        }
    }
}

impl EventHub {
    fn channels(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<SandboxEvent>>> {
        // Only touched in short non-panicking blocks: a poisoned map is
        // still consistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live events of one sandbox from now on.
    fn subscribe(&self, id: &str) -> broadcast::Receiver<SandboxEvent> {
        self.channels()
            .entry(id.to_owned())
            .or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe()
    }

    /// Sends an event to the sandbox's current subscribers (none is fine);
    /// a channel nobody listens to any more, or of a deleted sandbox, goes.
    fn publish(&self, event: SandboxEvent) {
        let mut channels = self.channels();
        let Some(sender) = channels.get(&event.sandbox_id) else {
            return;
        };
        let id = event.sandbox_id.clone();
        // After `deleted` nothing more comes; subscribers still get the
        // events sent before the channel goes.
        let last = event.kind == SandboxState::Deleted.as_str();
        if sender.send(event).is_err() || sender.receiver_count() == 0 || last {
            channels.remove(&id);
        }
    }

    /// Ends every open event stream (server shutdown).
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }
}

fn to_api(record: EventRecord) -> SandboxEvent {
    SandboxEvent {
        id: record.id,
        sandbox_id: record.sandbox_id,
        kind: record.kind,
        data: record.data,
        at: record.at,
    }
}

impl SandboxService {
    /// Stores an event of a sandbox and publishes it to live subscribers.
    pub(crate) async fn record_event(
        &self,
        id: &str,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<(), ApiError> {
        let _order = self.lifecycle.events.order.lock().await;
        let record = self.store.append_event(id, kind, &data).await?;
        self.lifecycle.events.publish(to_api(record));
        Ok(())
    }

    /// A sandbox's stored events after event `after`, oldest first. Events
    /// outlive their sandbox; 404 only when there is neither.
    pub async fn events(&self, id: &str, after: i64) -> Result<Vec<SandboxEvent>, ApiError> {
        let events = self.store.list_events_after(id, after).await?;
        if events.is_empty()
            && self.store.get_sandbox(id).await?.is_none()
            && self.store.list_events_after(id, 0).await?.is_empty()
        {
            return Err(ApiError::sandbox_not_found(id));
        }
        Ok(events.into_iter().map(to_api).collect())
    }

    /// The sandbox's events after `after`, then live ones; ends after its
    /// `deleted` event, after the replay when the sandbox is already gone,
    /// or when the server shuts down.
    pub(crate) async fn event_stream(
        &self,
        id: &str,
        after: i64,
    ) -> Result<impl Stream<Item = SandboxEvent> + Send + 'static, ApiError> {
        // Subscribe before reading the store so nothing falls in between.
        let live = self.lifecycle.events.subscribe(id);
        let stored = self.events(id, after).await?;
        let closed = self.lifecycle.events.closed.subscribe();
        // Gone already (its `deleted` event may be at or before `after`):
        // nothing more will come.
        let gone = self
            .store
            .get_sandbox(id)
            .await?
            .is_none_or(|r| r.state == SandboxState::Deleted);
        let state = StreamState {
            gone,
            id: id.to_owned(),
            store: self.store.clone(),
            backlog: stored.into(),
            live,
            closed,
            cursor: after,
            done: false,
        };
        Ok(futures_util::stream::unfold(state, StreamState::next))
    }
}

struct StreamState {
    /// The sandbox was gone when the stream began: end after the replay.
    gone: bool,
    id: String,
    store: warren_store::Store,
    backlog: std::collections::VecDeque<SandboxEvent>,
    live: broadcast::Receiver<SandboxEvent>,
    closed: watch::Receiver<bool>,
    cursor: i64,
    done: bool,
}

impl StreamState {
    async fn next(mut self) -> Option<(SandboxEvent, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                if event.id <= self.cursor {
                    continue;
                }
                self.cursor = event.id;
                self.done = event.kind == SandboxState::Deleted.as_str();
                return Some((event, self));
            }
            if self.gone || *self.closed.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.closed.changed() => return None,
            };
            match received {
                Ok(event) => self.backlog.push_back(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: read them back from the store.
                    let stored = self
                        .store
                        .list_events_after(&self.id, self.cursor)
                        .await
                        .ok()?;
                    self.backlog = stored.into_iter().map(to_api).collect();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Query of `GET /v1/sandboxes/{id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Only events with a larger id (like `Last-Event-ID`).
    after: Option<i64>,
}

/// A sandbox's events: JSON by default, or with `Accept: text/event-stream`
/// an SSE stream that replays stored events (after `Last-Event-ID` or
/// `after`) and then follows live ones until the sandbox is deleted.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/events",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), EventsQuery),
    responses(
        (status = 200, description = "The events, oldest first (JSON), or an SSE stream of them (text/event-stream)", body = SandboxEventList),
        (status = 400, description = "A malformed query (invalid_request)", body = warren_api::ErrorBody),
        (status = 404, description = "No such sandbox and no events of it", body = warren_api::ErrorBody),
    )
)]
pub(crate) async fn sandbox_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = last_event_id.or(query.after).unwrap_or(0);
    let wants_stream = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        let events = state.service.events(&id, after).await?;
        return Ok(Json(SandboxEventList { events }).into_response());
    }
    let stream = state.service.event_stream(&id, after).await?;
    Ok(Sse::new(sse_events(stream))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn sse_events(
    events: impl Stream<Item = SandboxEvent> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    use futures_util::StreamExt;
    events.map(|event| {
        let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_owned());
        Ok(Event::default()
            .event(event.kind.clone())
            .id(event.id.to_string())
            .data(data))
    })
}
