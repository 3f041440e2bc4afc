//! A process's output events as server-sent events.

use std::convert::Infallible;

use axum::response::sse::Event;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::Stream;
use tokio::sync::mpsc::Receiver;
use warren_api::{DroppedEventData, ExitEventData, OutputEventData};
use warren_runtime::ProcessEvent;

/// One SSE event per process event; each `id` is the byte offset after it.
/// The stream ends after `exit`, or early when the driver ends the
/// subscription (the client then resumes with `Last-Event-ID`).
pub fn events(
    rx: Receiver<ProcessEvent>,
    from: u64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((rx, from, false), |(mut rx, cursor, done)| async move {
        if done {
            return None;
        }
        let (event, cursor, done) = match rx.recv().await? {
            ProcessEvent::Output { fd, offset, data } => {
                let cursor = offset + data.len() as u64;
                let body = OutputEventData {
                    fd,
                    offset,
                    text: String::from_utf8_lossy(&data).into_owned(),
                    base64: STANDARD.encode(&data),
                };
                let name = if fd == 2 { "stderr" } else { "stdout" };
                (json_event(name, cursor, &body), cursor, false)
            }
            ProcessEvent::Dropped { count } => {
                let cursor = cursor + count;
                let body = DroppedEventData { bytes: count };
                (json_event("dropped", cursor, &body), cursor, false)
            }
            ProcessEvent::End { .. } => return None,
            ProcessEvent::Exited {
                exit_code,
                timed_out,
            } => {
                let body = ExitEventData {
                    exit_code,
                    timed_out,
                };
                (json_event("exit", cursor, &body), cursor, true)
            }
        };
        Some((Ok(event), (rx, cursor, done)))
    })
}

fn json_event(name: &str, id: u64, body: &impl serde::Serialize) -> Event {
    let data = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event(name).id(id.to_string()).data(data)
}
