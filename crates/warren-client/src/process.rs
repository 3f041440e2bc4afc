//! Background processes: the output stream (server-sent events) and its parser.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hyper::body::Incoming;
use serde::Deserialize;
use warren_api::{DroppedEventData, ExitEventData};

use crate::{transport, ClientError};

/// One event of a process's output stream. Every event carries `id`, the
/// byte offset (across stdout and stderr) after it: pass the last one seen
/// to [`crate::Client::process_output`] to resume exactly there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// A chunk of standard output or standard error.
    Output {
        /// 1 for stdout, 2 for stderr.
        fd: u8,
        /// The exact bytes.
        data: Vec<u8>,
        /// Offset after the chunk.
        id: u64,
    },
    /// Bytes lost because the process's output buffer overflowed before
    /// they were read.
    Dropped {
        /// Number of lost bytes.
        bytes: u64,
        /// Offset where output resumes.
        id: u64,
    },
    /// The process exited; the last event.
    Exit {
        /// Exit code; `128 + N` when killed by signal N.
        exit_code: i32,
        /// True when its timeout killed it.
        timed_out: bool,
        /// Offset after the last output byte.
        id: u64,
    },
}

impl OutputEvent {
    /// The event's id (a byte offset), for resuming.
    pub fn id(&self) -> u64 {
        match self {
            Self::Output { id, .. } | Self::Dropped { id, .. } | Self::Exit { id, .. } => *id,
        }
    }
}

/// One raw server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) id: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

/// Incremental parser of a `text/event-stream` body.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    /// How far `buf` is known to hold no event separator: a large event
    /// arriving in many small reads is scanned once, not once per read.
    scanned: usize,
}

impl SseParser {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffer holds one. Comments
    /// (keep-alives) and blocks without data are skipped.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            // A separator is at most 3 bytes: rescan the last two.
            let from = self.scanned.saturating_sub(2);
            let Some(end) = find_blank_line(&self.buf[from..]).map(|(a, b)| (a + from, b + from))
            else {
                self.scanned = self.buf.len();
                return None;
            };
            self.scanned = 0;
            // Take the block without copying it (the rest is usually short).
            let rest = self.buf.split_off(end.1);
            let block = std::mem::replace(&mut self.buf, rest);
            let text = match std::str::from_utf8(&block[..end.0]) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(&block[..end.0]),
            };
            let mut event = SseEvent::default();
            let mut data: Vec<&str> = Vec::new();
            for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            match data.as_slice() {
                [] => {}
                [one] => {
                    event.data = (*one).to_owned();
                    return Some(event);
                }
                many => {
                    event.data = many.join("\n");
                    return Some(event);
                }
            }
        }
    }
}

/// (end of the block, end of the separator) of the first event block.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
        let i = start + pos;
        if buf.get(i + 1) == Some(&b'\n') {
            return Some((i, i + 2));
        }
        if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
            return Some((i, i + 3));
        }
        start = i + 1;
    }
    None
}

/// The fields of [`warren_api::OutputEventData`] the client uses: the
/// exact bytes are in `base64`, so the (lossy, and for binary output much
/// larger) `text` copy is skipped rather than decoded.
#[derive(Deserialize)]
struct OutputWire {
    fd: u8,
    base64: String,
}

fn decode(event: SseEvent) -> Result<Option<OutputEvent>, ClientError> {
    let bad = |what: &str| ClientError::Protocol(format!("bad output event: {what}"));
    if !matches!(
        event.event.as_deref(),
        Some("stdout" | "stderr" | "dropped" | "exit")
    ) {
        // Unknown events are for newer clients.
        return Ok(None);
    }
    let id = event
        .id
        .as_deref()
        .and_then(|i| i.parse::<u64>().ok())
        .ok_or_else(|| bad("missing or non-numeric id"))?;
    match event.event.as_deref() {
        Some("stdout" | "stderr") => {
            let body: OutputWire =
                serde_json::from_str(&event.data).map_err(|e| bad(&e.to_string()))?;
            let data = STANDARD
                .decode(body.base64.as_bytes())
                .map_err(|e| bad(&e.to_string()))?;
            Ok(Some(OutputEvent::Output {
                fd: body.fd,
                data,
                id,
            }))
        }
        Some("dropped") => {
            let body: DroppedEventData =
                serde_json::from_str(&event.data).map_err(|e| bad(&e.to_string()))?;
            Ok(Some(OutputEvent::Dropped {
                bytes: body.bytes,
                id,
            }))
        }
        Some("exit") => {
            let body: ExitEventData =
                serde_json::from_str(&event.data).map_err(|e| bad(&e.to_string()))?;
            Ok(Some(OutputEvent::Exit {
                exit_code: body.exit_code,
                timed_out: body.timed_out,
                id,
            }))
        }
        _ => Ok(None),
    }
}

/// A process's output as it arrives. The stream ends after
/// [`OutputEvent::Exit`]; it can also end without one (a non-following
/// read, or the daemon ending a reader that fell far behind): resume from
/// the last [`OutputEvent::id`].
pub struct OutputStream {
    body: Incoming,
    parser: SseParser,
    target: String,
}

impl OutputStream {
    pub(crate) fn new(body: Incoming, target: String) -> Self {
        Self {
            body,
            parser: SseParser::default(),
            target,
        }
    }

    /// The next event, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<OutputEvent>, ClientError> {
        loop {
            while let Some(raw) = self.parser.next_event() {
                if let Some(event) = decode(raw)? {
                    return Ok(Some(event));
                }
            }
            match transport::next_data(&mut self.body, &self.target).await? {
                Some(data) => self.parser.push(&data),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere_and_skips_comments() {
        let text = ": keep-alive\n\nevent: stdout\nid: 3\ndata: {\"fd\":1,\"offset\":0,\"text\":\"hi\\n\",\"base64\":\"aGkK\"}\n\nevent: exit\r\nid: 3\r\ndata: {\"exitCode\":0,\"timedOut\":false}\r\n\r\n";
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for byte in text.as_bytes() {
            parser.push(&[*byte]);
            while let Some(e) = parser.next_event() {
                events.push(decode(e).unwrap().unwrap());
            }
        }
        assert_eq!(
            events,
            vec![
                OutputEvent::Output {
                    fd: 1,
                    data: b"hi\n".to_vec(),
                    id: 3
                },
                OutputEvent::Exit {
                    exit_code: 0,
                    timed_out: false,
                    id: 3
                }
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined_and_dropped_decodes() {
        let mut parser = SseParser::default();
        parser
            .push(b"event: x\ndata: a\ndata: b\n\nevent: dropped\nid: 10\ndata: {\"bytes\":4}\n\n");
        let first = parser.next_event().unwrap();
        assert_eq!(first.data, "a\nb");
        assert_eq!(decode(first).unwrap(), None);
        assert_eq!(
            decode(parser.next_event().unwrap()).unwrap(),
            Some(OutputEvent::Dropped { bytes: 4, id: 10 })
        );
        assert!(parser.next_event().is_none());
    }
}
