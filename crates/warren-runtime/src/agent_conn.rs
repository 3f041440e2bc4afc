//! The daemon's side of one agent connection: requests go out tagged with a
//! stream id; one reader task routes answers back to their waiters. A request
//! has one answer; a subscription (process output) gets many frames on its
//! stream until a final one (`exited`, `output_end`, `error`).
//!
//! The reader never waits for a slow subscriber: when a subscription's
//! channel is full (or its receiver is gone) the subscription is ended and
//! the agent told to `cancel` it. A reader that resumes from the last offset
//! it saw loses nothing, because the agent keeps the output buffered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use warren_proto::{decode_body, decode_len, encode, Frame, PROTOCOL_VERSION};

use crate::driver::DriverError;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;
type Subscriptions = Arc<Mutex<HashMap<u64, mpsc::Sender<Frame>>>>;
type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// Frames a subscription may have waiting before it is ended as too slow.
pub const SUBSCRIPTION_BACKLOG: usize = 1024;

/// A live, multiplexed connection to one sandbox's agent.
pub struct AgentConn {
    writer: Writer,
    pending: Pending,
    subscriptions: Subscriptions,
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
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            pending: Pending::default(),
            subscriptions: Subscriptions::default(),
            next_stream: AtomicU64::new(1),
            alive: Arc::new(AtomicBool::new(true)),
        });
        tokio::spawn(route_answers(
            reader,
            Router {
                pending: Arc::clone(&conn.pending),
                subscriptions: Arc::clone(&conn.subscriptions),
                writer: Arc::clone(&conn.writer),
            },
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

    /// Opens a subscription: sends the request built for a fresh stream id
    /// and returns the channel of every frame the agent sends on it. The
    /// channel ends after a final frame, when the connection closes, or when
    /// the receiver fell [`SUBSCRIPTION_BACKLOG`] frames behind.
    pub async fn subscribe(
        &self,
        build: impl FnOnce(u64) -> Frame,
    ) -> Result<mpsc::Receiver<Frame>, DriverError> {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let frame = build(stream);
        let bytes = encode(&frame).map_err(|e| DriverError::Agent(e.to_string()))?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BACKLOG);
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stream, tx);
        let remove = || {
            self.subscriptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&stream);
        };
        if !self.is_alive() {
            remove();
            return Err(unavailable("agent connection is closed"));
        }
        if let Err(e) = self.writer.lock().await.write_all(&bytes).await {
            remove();
            return Err(unavailable(format!("send to agent: {e}")));
        }
        Ok(rx)
    }
}

/// Where the reader task delivers frames.
struct Router {
    pending: Pending,
    subscriptions: Subscriptions,
    writer: Writer,
}

fn stream_of(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::ExecDone(done) => Some(done.stream),
        Frame::Output(chunk) => Some(chunk.stream),
        Frame::Pong { stream }
        | Frame::Spawned { stream, .. }
        | Frame::Ack { stream }
        | Frame::Dropped { stream, .. }
        | Frame::Exited { stream, .. }
        | Frame::OutputEnd { stream, .. }
        | Frame::ProcessList { stream, .. } => Some(*stream),
        Frame::Error {
            stream, message, ..
        } => {
            if stream.is_none() {
                tracing::warn!(%message, "agent reported an error");
            }
            *stream
        }
        _ => None,
    }
}

impl Router {
    fn deliver(&self, frame: Frame) {
        let Some(stream) = stream_of(&frame) else {
            return;
        };
        if let Some(tx) = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&stream)
        {
            let _ = tx.send(frame);
            return;
        }
        let mut subs = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = subs.get(&stream) else {
            return;
        };
        let last = matches!(
            frame,
            Frame::Exited { .. } | Frame::OutputEnd { .. } | Frame::Error { .. }
        );
        match tx.try_send(frame) {
            Ok(()) if last => {
                subs.remove(&stream);
            }
            Ok(()) => {}
            Err(_) => {
                // Full (a slow reader) or closed (the reader left): end it,
                // and stop the agent from sending more.
                subs.remove(&stream);
                if !last {
                    let writer = Arc::clone(&self.writer);
                    tokio::spawn(async move {
                        if let Ok(bytes) = encode(&Frame::Cancel { stream }) {
                            let _ = writer.lock().await.write_all(&bytes).await;
                        }
                    });
                }
            }
        }
    }
}

async fn route_answers(mut reader: OwnedReadHalf, router: Router, alive: Arc<AtomicBool>) {
    loop {
        match read_one(&mut reader).await {
            Ok(frame) => router.deliver(frame),
            Err(e) => {
                tracing::debug!(error = %e, "agent connection ended");
                break;
            }
        }
    }
    alive.store(false, Ordering::Release);
    // Dropping the senders wakes every waiter with an error.
    router
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    router
        .subscriptions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}
