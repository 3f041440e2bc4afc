//! `GET …/processes/{pid}/attach`: a process's stdin and output over one
//! WebSocket.
//!
//! Client → server: binary messages are stdin bytes; text messages are JSON
//! [`AttachControl`] (`resize`, `signal`, `close_stdin`). Server → client:
//! binary messages are output bytes (everything of a pty process, stdout of
//! others), text messages are JSON [`AttachEvent`]s (`output` for stderr of a
//! non-pty process, `dropped`, `error`, and the final `exit`, after which the
//! server closes the socket).
//!
//! The socket is only a reader of the process's output buffer in the agent:
//! the process never waits for it. When this reader falls behind, its
//! subscription is cut and resumed from the last byte it sent, with a
//! `dropped` message if the buffer overflowed meanwhile. When the client goes
//! away the process keeps running untouched.

use axum::extract::ws::{Message, WebSocket};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::sync::mpsc::Receiver;
use warren_api::{AttachControl, AttachEvent, PtySize};
use warren_runtime::ProcessEvent;

use crate::AppState;

/// Runs one attached socket until the process exits or the client leaves.
pub async fn run(
    mut socket: WebSocket,
    state: AppState,
    id: String,
    pid: i32,
    mut cursor: u64,
    first: Receiver<ProcessEvent>,
) {
    let mut rx = Some(first);
    loop {
        let Some(events) = rx.as_mut() else {
            // The subscription ended early (this reader fell behind): resume.
            match state.service.process_output(&id, pid, cursor, true).await {
                Ok(r) => rx = Some(r),
                Err(e) => {
                    let _ = send_event(
                        &mut socket,
                        &AttachEvent::Error {
                            message: e.message.clone(),
                        },
                    )
                    .await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            }
            continue;
        };
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    rx = None;
                    continue;
                };
                let sent = match event {
                    ProcessEvent::Output { fd, offset, data } => {
                        cursor = offset + data.len() as u64;
                        if fd == 2 {
                            send_event(&mut socket, &AttachEvent::Output { fd, base64: STANDARD.encode(&data) }).await
                        } else {
                            socket.send(Message::Binary(data.into())).await.is_ok()
                        }
                    }
                    ProcessEvent::Dropped { count } => {
                        cursor += count;
                        send_event(&mut socket, &AttachEvent::Dropped { bytes: count }).await
                    }
                    ProcessEvent::End { .. } => true,
                    ProcessEvent::Exited { exit_code, timed_out } => {
                        let _ = send_event(&mut socket, &AttachEvent::Exit { exit_code, timed_out }).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                };
                if !sent {
                    return;
                }
            }
            message = socket.recv() => {
                let Some(Ok(message)) = message else { return };
                let result = match message {
                    Message::Binary(data) => {
                        state.service.process_stdin(&id, pid, data.to_vec(), false).await
                    }
                    Message::Text(text) => match serde_json::from_str::<AttachControl>(text.as_str()) {
                        Ok(AttachControl::Resize { cols, rows }) => {
                            state.service.resize_process(&id, pid, PtySize { cols, rows }).await
                        }
                        Ok(AttachControl::Signal { signal }) => {
                            state.service.signal_process(&id, pid, &signal).await
                        }
                        Ok(AttachControl::CloseStdin) => {
                            state.service.process_stdin(&id, pid, Vec::new(), true).await
                        }
                        Err(e) => Err(crate::error::ApiError::invalid_request(format!(
                            "bad control message: {e}; expected {{\"type\": \"resize\" | \"signal\" | \"close_stdin\", ...}}"
                        ))),
                    },
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => Ok(()),
                };
                if let Err(e) = result {
                    if !send_event(&mut socket, &AttachEvent::Error { message: e.message.clone() }).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn send_event(socket: &mut WebSocket, event: &AttachEvent) -> bool {
    let text = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    socket.send(Message::Text(text.into())).await.is_ok()
}
