//! The pure and streaming pieces of the file routes: path and mode rules,
//! `Range` headers, zstd, bodies to and from byte streams, watch events as
//! server-sent events.

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use axum::body::{Body, BodyDataStream};
use axum::response::sse::Event;
use futures_util::{Stream, StreamExt};
use tokio::io::BufReader;
use tokio::sync::mpsc::Receiver;
use tokio_util::io::{ReaderStream, StreamReader};
use warren_api::{
    ChangeKind, FileChange, FileKind, FileStat, WatchEvent, WatchEventKind, MAX_PATH_BYTES,
};
use warren_runtime::ByteStream;

use crate::error::ApiError;

/// Size of the chunks a download is cut into.
const CHUNK_BYTES: usize = 64 * 1024;

/// Checks a sandbox path parameter: absolute, no NUL, at most 4096 bytes.
/// The path is never resolved here; the sandbox's agent does that inside
/// the sandbox's root.
pub fn validate_path(name: &str, path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::invalid_value(format!(
            "{name} must be an absolute path inside the sandbox (starting with /), got {path:?}"
        )));
    }
    if path.contains('\0') {
        return Err(ApiError::invalid_value(format!(
            "{name} must not contain a NUL byte"
        )));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(ApiError::invalid_value(format!(
            "{name} is {} bytes long; the limit is {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    Ok(())
}

/// Parses permission bits written in octal (`644`, `0644`, `0o644`).
pub fn parse_mode(name: &str, text: &str) -> Result<u32, ApiError> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o7777 => Ok(mode),
        _ => Err(ApiError::invalid_value(format!(
            "{name} must be octal permission bits between 0 and 7777 (like 0644), got {text:?}"
        ))),
    }
}

/// Checks numeric permission bits from a JSON body.
pub fn check_mode(name: &str, mode: Option<u32>) -> Result<Option<u32>, ApiError> {
    match mode {
        Some(mode) if mode > 0o7777 => Err(ApiError::invalid_value(format!(
            "{name} must be permission bits between 0 and 4095 (0o7777), got {mode}"
        ))),
        other => Ok(other),
    }
}

/// Parses the `compression` parameter: `none` (default) or `zstd`.
pub fn parse_compression(text: Option<&str>) -> Result<bool, ApiError> {
    match text {
        None | Some("none") => Ok(false),
        Some("zstd") => Ok(true),
        Some(other) => Err(ApiError::invalid_value(format!(
            "compression must be none or zstd, got {other:?}"
        ))),
    }
}

/// One byte range of a `Range: bytes=…` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `A-B` (inclusive) or `A-` (`None`: to the end).
    From {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: Option<u64>,
    },
    /// `-N`: the last N bytes.
    Suffix(u64),
}

/// Parses a `Range` header. Anything but one well-formed byte range is
/// `None`, and the whole file is sent, as RFC 9110 allows.
pub fn parse_range(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if first.is_empty() {
        return Some(ByteRange::Suffix(number(last)?));
    }
    let start = number(first)?;
    if last.is_empty() {
        return Some(ByteRange::From { start, end: None });
    }
    let end = number(last)?;
    (end >= start).then_some(ByteRange::From {
        start,
        end: Some(end),
    })
}

impl ByteRange {
    /// `(offset, length)` within a file of `size` bytes; `None` when the
    /// range is not satisfiable (416).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if size == 0 => None,
            ByteRange::Suffix(n) => {
                let len = n.min(size);
                Some((size - len, len))
            }
            ByteRange::From { start, .. } if start >= size => None,
            ByteRange::From { start, end } => {
                let last = end.map_or(size - 1, |e| e.min(size - 1));
                Some((start, last - start + 1))
            }
        }
    }
}

/// `Last-Modified` value (IMF-fixdate) for seconds since the epoch.
pub fn http_date(mtime: i64) -> String {
    chrono::DateTime::from_timestamp(mtime, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// A response body streaming `stream` in chunks, never holding it whole.
pub fn body_from(stream: ByteStream) -> Body {
    Body::from_stream(ReaderStream::with_capacity(stream, CHUNK_BYTES))
}

/// The same, zstd-compressed on the fly.
pub fn zstd_body_from(stream: ByteStream) -> Body {
    let encoder = ZstdEncoder::new(BufReader::with_capacity(CHUNK_BYTES, stream));
    Body::from_stream(ReaderStream::with_capacity(encoder, CHUNK_BYTES))
}

/// A request body as a byte stream.
pub fn stream_from(body: Body) -> ByteStream {
    Box::pin(StreamReader::new(
        body.into_data_stream()
            .map(|chunk| chunk.map_err(io::Error::other)),
    ))
}

/// Most a refused upload's remaining body is read and thrown away.
const DRAIN_LIMIT_BYTES: u64 = 256 * 1024 * 1024;
/// Longest a refused upload's remaining body is read and thrown away.
const DRAIN_TIME: Duration = Duration::from_secs(10);

type SharedStream = Arc<Mutex<Option<BodyDataStream>>>;

/// A request body that the driver reads as a byte stream and that the
/// handler can take back. After a refusal (413, 507, …) the rest of the
/// body is read and discarded for a while, so that a client still sending
/// reads the error answer instead of a reset connection.
pub struct UploadBody {
    stream: SharedStream,
}

impl UploadBody {
    /// Wraps a request body.
    pub fn new(body: Body) -> Self {
        Self {
            stream: Arc::new(Mutex::new(Some(body.into_data_stream()))),
        }
    }

    /// The body as the driver reads it.
    pub fn reader(&self) -> ByteStream {
        let shared = self.stream.clone();
        let chunks = futures_util::stream::poll_fn(move |cx| {
            // Only this closure and `drain_rest` touch the stream, each
            // briefly; a poisoned lock still holds a usable stream.
            let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(stream) => stream
                    .poll_next_unpin(cx)
                    .map(|chunk| chunk.map(|r| r.map_err(io::Error::other))),
                // Taken back by the handler: the driver sees the end.
                None => Poll::Ready(None),
            }
        });
        Box::pin(StreamReader::new(chunks))
    }

    /// The body, zstd-decompressed on the fly.
    pub fn zstd_reader(&self) -> ByteStream {
        Box::pin(ZstdDecoder::new(BufReader::with_capacity(
            CHUNK_BYTES,
            self.reader(),
        )))
    }

    /// Reads what the client is still sending in the background (bounded
    /// in bytes and time), then lets the connection close.
    pub fn drain_rest(self) {
        let taken = self.stream.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut stream) = taken else {
            return;
        };
        tokio::spawn(async move {
            let drain = async {
                let mut drained = 0u64;
                while let Some(Ok(chunk)) = stream.next().await {
                    drained += chunk.len() as u64;
                    if drained > DRAIN_LIMIT_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

/// The API view of a driver's stat.
pub fn stat_to_api(stat: warren_runtime::FileStat) -> FileStat {
    FileStat {
        path: stat.path,
        kind: kind_to_api(stat.kind),
        size: stat.size,
        mode: stat.mode & 0o7777,
        uid: stat.uid,
        gid: stat.gid,
        mtime: stat.mtime,
        link_target: stat.link_target,
    }
}

/// The API view of a driver's file kind.
pub fn kind_to_api(kind: warren_runtime::FileKind) -> FileKind {
    match kind {
        warren_runtime::FileKind::File => FileKind::File,
        warren_runtime::FileKind::Dir => FileKind::Dir,
        warren_runtime::FileKind::Symlink => FileKind::Symlink,
        warren_runtime::FileKind::Other => FileKind::Other,
    }
}

/// The API view of a driver's change.
pub fn change_to_api(change: warren_runtime::Change) -> FileChange {
    FileChange {
        path: change.path,
        kind: match change.kind {
            warren_runtime::ChangeKind::Added => ChangeKind::Added,
            warren_runtime::ChangeKind::Modified => ChangeKind::Modified,
            warren_runtime::ChangeKind::Deleted => ChangeKind::Deleted,
        },
        size: change.size,
        is_dir: change.is_dir,
    }
}

/// The API view of a driver's watch event.
pub fn watch_event_to_api(event: warren_runtime::WatchEvent) -> WatchEvent {
    WatchEvent {
        kind: match event.kind {
            warren_runtime::WatchKind::Created => WatchEventKind::Created,
            warren_runtime::WatchKind::Modified => WatchEventKind::Modified,
            warren_runtime::WatchKind::Deleted => WatchEventKind::Deleted,
            warren_runtime::WatchKind::Renamed => WatchEventKind::Renamed,
            warren_runtime::WatchKind::Overflow => WatchEventKind::Overflow,
        },
        path: event.path,
        from: event.from,
        is_dir: event.is_dir,
    }
}

/// One server-sent event per watch event, named by its kind; the stream
/// ends when the driver ends the watch.
pub fn watch_events(
    rx: Receiver<warren_runtime::WatchEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        let event = watch_event_to_api(rx.recv().await?);
        let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_owned());
        Some((
            Ok(Event::default().event(event.kind.as_str()).data(data)),
            rx,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_short_and_without_nul() {
        assert!(validate_path("path", "/workspace/a").is_ok());
        assert!(validate_path("path", "/../../etc/passwd").is_ok());
        let err = validate_path("from", "relative").unwrap_err();
        assert_eq!(err.status().as_u16(), 422);
        assert!(err.message.contains("from"), "{}", err.message);
        assert!(validate_path("path", "/a\0b").is_err());
        assert!(validate_path("path", &format!("/{}", "a".repeat(4095))).is_ok());
        assert!(validate_path("path", &format!("/{}", "a".repeat(4096))).is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("mode", "0644").unwrap(), 0o644);
        assert_eq!(parse_mode("mode", "755").unwrap(), 0o755);
        assert_eq!(parse_mode("mode", "0o600").unwrap(), 0o600);
        assert!(parse_mode("mode", "0999").is_err());
        assert!(parse_mode("mode", "17777").is_err());
        assert!(parse_mode("mode", "").is_err());
        assert!(check_mode("mode", Some(0o10000)).is_err());
        assert_eq!(check_mode("mode", Some(0o755)).unwrap(), Some(0o755));
    }

    #[test]
    fn ranges_parse_and_resolve() {
        let r = |h: &str| parse_range(h);
        assert_eq!(
            r("bytes=0-9"),
            Some(ByteRange::From {
                start: 0,
                end: Some(9)
            })
        );
        assert_eq!(
            r("bytes=5-"),
            Some(ByteRange::From {
                start: 5,
                end: None
            })
        );
        assert_eq!(r("bytes=-3"), Some(ByteRange::Suffix(3)));
        assert_eq!(r("bytes=0-1,4-5"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=9-3"), None);
        assert_eq!(r("bytes=a-"), None);
        assert_eq!(r("bytes=-"), None);

        let size = 10;
        assert_eq!(r("bytes=0-9").unwrap().resolve(size), Some((0, 10)));
        assert_eq!(r("bytes=2-100").unwrap().resolve(size), Some((2, 8)));
        assert_eq!(r("bytes=9-").unwrap().resolve(size), Some((9, 1)));
        assert_eq!(r("bytes=10-").unwrap().resolve(size), None);
        assert_eq!(r("bytes=-3").unwrap().resolve(size), Some((7, 3)));
        assert_eq!(r("bytes=-30").unwrap().resolve(size), Some((0, 10)));
        assert_eq!(r("bytes=-0").unwrap().resolve(size), None);
        assert_eq!(r("bytes=0-").unwrap().resolve(0), None);
        assert_eq!(r("bytes=-5").unwrap().resolve(0), None);
    }

    #[test]
    fn compression_is_none_or_zstd() {
        assert!(!parse_compression(None).unwrap());
        assert!(!parse_compression(Some("none")).unwrap());
        assert!(parse_compression(Some("zstd")).unwrap());
        assert!(parse_compression(Some("gzip")).is_err());
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }
}
