//! The daemon's side of one agent connection: requests go out tagged with a
//! stream id; one reader task routes answers back to their waiters.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use warren_proto::{decode_body, decode_len, encode, Frame, PROTOCOL_VERSION};

use crate::driver::DriverError;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

/// A live, multiplexed connection to one sandbox's agent.
pub struct AgentConn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_stream: AtomicU64,
    alive: Arc<AtomicBool>,
}

fn unavailable(what: impl std::fmt::Display) -> DriverError {
    DriverError::AgentUnavailable(what.to_string())
}

async fn read_one(reader: &mut OwnedReadHalf) -> Result<Frame, DriverError> {
    let mut prefix = [0u8; 4];
    reader
        .read_exact(&mut prefix)
        .await
        .map_err(|e| unavailable(format!("agent closed the connection: {e}")))?;
    let len = decode_len(prefix).map_err(unavailable)?;
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| unavailable(format!("agent closed the connection: {e}")))?;
    decode_body(&body).map_err(unavailable)
}

impl AgentConn {
    /// Connects and performs the version handshake.
    pub async fn connect(socket: &Path) -> Result<Arc<Self>, DriverError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| unavailable(format!("connect {}: {e}", socket.display())))?;
        let (mut reader, mut writer) = stream.into_split();
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            software: Some(format!("warren {}", env!("CARGO_PKG_VERSION"))),
        };
        writer
            .write_all(&encode(&hello).map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
        let answer = tokio::time::timeout(Duration::from_secs(10), read_one(&mut reader))
            .await
            .map_err(|_| unavailable("agent did not answer the handshake within 10 s"))??;
        match answer {
            Frame::Hello { version, .. } if version >= 1 => {}
            other => {
                return Err(unavailable(format!(
                    "unexpected handshake answer: {other:?}"
                )))
            }
        }
        let conn = Arc::new(Self {
            writer: tokio::sync::Mutex::new(writer),
            pending: Pending::default(),
            next_stream: AtomicU64::new(1),
            alive: Arc::new(AtomicBool::new(true)),
        });
        tokio::spawn(route_answers(
            reader,
            Arc::clone(&conn.pending),
            Arc::clone(&conn.alive),
        ));
        Ok(conn)
    }

    /// False once the agent closed the connection.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Sends a request built for a fresh stream id and waits for its answer.
    pub async fn request(&self, build: impl FnOnce(u64) -> Frame) -> Result<Frame, DriverError> {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let frame = build(stream);
        let bytes = encode(&frame).map_err(|e| DriverError::Agent(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stream, tx);
        if !self.is_alive() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&stream);
            return Err(unavailable("agent connection is closed"));
        }
        let written = self.writer.lock().await.write_all(&bytes).await;
        if let Err(e) = written {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&stream);
            return Err(unavailable(format!("send to agent: {e}")));
        }
        rx.await
            .map_err(|_| unavailable("agent connection closed before answering"))
    }
}

async fn route_answers(mut reader: OwnedReadHalf, pending: Pending, alive: Arc<AtomicBool>) {
    loop {
        let frame = match read_one(&mut reader).await {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "agent connection ended");
                break;
            }
        };
        let stream = match &frame {
            Frame::ExecDone(done) => Some(done.stream),
            Frame::Pong { stream } => Some(*stream),
            Frame::Error { stream, message } => {
                if stream.is_none() {
                    tracing::warn!(%message, "agent reported an error");
                }
                *stream
            }
            _ => None,
        };
        if let Some(stream) = stream {
            if let Some(tx) = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&stream)
            {
                let _ = tx.send(frame);
            }
        }
    }
    alive.store(false, Ordering::Release);
    // Dropping the senders wakes every waiter with an error.
    pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}
