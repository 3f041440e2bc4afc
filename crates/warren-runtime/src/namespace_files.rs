//! [`FileControl`] for the namespace driver. Every call opens its own
//! connection to the sandbox's agent (hello, one request frame); bulk data
//! then flows raw on that connection, so memory stays flat whatever the
//! size, and a long transfer never holds up the shared connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use warren_proto::{
    chunk_header, decode_body, decode_len, encode, ChangeKind, EntryKind, FileEntry,
    FileFindRequest, FileGrepRequest, FileListRequest, FileMkdirRequest, FilePathRequest,
    FileReadRequest, FileRemoveRequest, FileRenameRequest, FileWatchRequest, FileWriteRequest,
    Frame, TarUploadRequest, PROTOCOL_VERSION,
};

use crate::agent_host::AgentHost;
use crate::driver::DriverError;
use crate::files::{
    ByteStream, FileControl, FileKind, FileStat, GrepMatch, GrepSpec, SearchResult, UnpackSummary,
    WatchEvent, WatchKind, WriteSpec,
};

/// The first protocol version with file frames.
const FILES_VERSION: u32 = 5;
/// Bulk data moves in chunks of this size.
const CHUNK: usize = 256 * 1024;
/// How long the agent may take to answer `hello`.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Watch events buffered for a slow receiver before the agent is held back.
const WATCH_BACKLOG: usize = 256;

fn unavailable(what: impl std::fmt::Display) -> DriverError {
    DriverError::AgentUnavailable(what.to_string())
}

async fn read_frame(stream: &mut UnixStream) -> Result<Frame, DriverError> {
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| unavailable(format!("agent closed the file connection: {e}")))?;
    let len = decode_len(prefix).map_err(unavailable)?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| unavailable(format!("agent closed the file connection: {e}")))?;
    decode_body(&body).map_err(unavailable)
}

/// Maps an agent `error` frame of a file request onto a driver error.
pub(crate) fn file_error(code: Option<&str>, message: String) -> DriverError {
    match code {
        Some("not_found") => DriverError::NotFound(message),
        Some("conflict") => DriverError::Conflict(message),
        Some("permission_denied") => DriverError::PermissionDenied(message),
        Some("no_space") => DriverError::NoSpace(message),
        Some("too_large") => DriverError::TooLarge(message),
        Some("invalid") => DriverError::Invalid(message),
        _ => DriverError::Agent(message),
    }
}

fn unexpected(frame: Frame) -> DriverError {
    match frame {
        Frame::Error { message, code, .. } => file_error(code.as_deref(), message),
        other => DriverError::Agent(format!("unexpected answer {other:?}")),
    }
}

fn stat_of(e: FileEntry) -> FileStat {
    FileStat {
        path: e.path,
        kind: match e.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Dir => FileKind::Dir,
            EntryKind::Symlink => FileKind::Symlink,
            EntryKind::Other => FileKind::Other,
        },
        size: e.size,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        link_target: e.link_target,
    }
}

fn info(frame: Frame) -> Result<FileStat, DriverError> {
    match frame {
        Frame::FileInfo { entry, .. } => Ok(stat_of(entry)),
        other => Err(unexpected(other)),
    }
}

fn event_of(change: warren_proto::FileChange) -> WatchEvent {
    WatchEvent {
        kind: match change.kind {
            ChangeKind::Created => WatchKind::Created,
            ChangeKind::Modified => WatchKind::Modified,
            ChangeKind::Deleted => WatchKind::Deleted,
            ChangeKind::Renamed => WatchKind::Renamed,
            ChangeKind::Overflow => WatchKind::Overflow,
        },
        path: change.path,
        from: change.from,
        is_dir: change.is_dir,
    }
}

/// A reader that must deliver exactly `remaining` bytes: an early end is
/// an error, so a transfer cut short is never mistaken for the whole file.
struct ExactLen<R> {
    inner: R,
    remaining: u64,
}

impl<R: AsyncRead + Unpin> AsyncRead for ExactLen<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.remaining == 0 {
            return Poll::Ready(Ok(()));
        }
        let max = buf
            .remaining()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let mut limited = buf.take(max);
        let before = limited.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {
                let n = limited.filled().len() - before;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file transfer ended {} bytes early", self.remaining),
                    )));
                }
                // SAFETY: the `n` bytes were initialized by the inner read
                // into the same memory.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                self.remaining -= n as u64;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Passes a tar stream through and checks its structure on the way: every
/// header block is followed by its data, and the archive must end with the
/// two zero blocks. The agent writes them only when every entry was read,
/// so an end of stream before them (an unreadable entry, the agent gone)
/// is an error on the reader, never a silently shorter archive. Sizes are
/// read from the headers (octal or base-256); the agent's archives have no
/// pax size overrides.
struct TarEnd<R> {
    inner: R,
    /// The header block being collected.
    header: [u8; 512],
    filled: usize,
    /// Data (padded to whole blocks) still to pass before the next header.
    skip: u64,
    /// Consecutive zero blocks seen where a header was due.
    zero_blocks: u8,
    /// Both end blocks were seen.
    ended: bool,
    path: String,
}

impl<R> TarEnd<R> {
    fn new(inner: R, path: &str) -> Self {
        Self {
            inner,
            header: [0; 512],
            filled: 0,
            skip: 0,
            zero_blocks: 0,
            ended: false,
            path: path.to_string(),
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(512 - self.filled);
            self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled < 512 {
                continue;
            }
            self.filled = 0;
            if self.header.iter().all(|b| *b == 0) {
                self.zero_blocks += 1;
                self.ended = self.zero_blocks >= 2;
                continue;
            }
            self.zero_blocks = 0;
            let size = header_size(&self.header).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad tar header from the agent: {}", self.path),
                )
            })?;
            self.skip = size.div_ceil(512) * 512;
        }
        Ok(())
    }
}

/// The entry size of a tar header block (bytes 124..136): octal, or
/// base-256 when the first byte has its high bit set.
fn header_size(header: &[u8; 512]) -> Option<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        if field[0] != 0x80 || field[1..4].iter().any(|b| *b != 0) {
            return None;
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&field[4..12]);
        let size = u64::from_be_bytes(bytes);
        // Room for the padding: refuse sizes that cannot be real.
        return (size < u64::MAX / 2).then_some(size);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

impl<R: AsyncRead + Unpin> AsyncRead for TarEnd<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let new = &buf.filled()[before..];
                if new.is_empty() && !this.ended {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the archive of {} is incomplete: the sandbox's agent stopped before \
                             its end (an entry it could not read, e.g. permission denied)",
                            this.path
                        ),
                    )));
                }
                let result = this.feed(new);
                if result.is_err() {
                    // An error hands over no bytes.
                    buf.set_filled(before);
                }
                Poll::Ready(result)
            }
            other => other,
        }
    }
}

/// Sends `body` as chunks; stops early (without the end marker, which
/// aborts the upload) past `max_bytes`. `Ok(Err(e))`: the body itself failed
/// or was too large; `Err`: the socket failed (the agent has an answer).
async fn send_chunks(
    stream: &mut UnixStream,
    mut body: ByteStream,
    max_bytes: Option<u64>,
) -> Result<Result<(), DriverError>, io::Error> {
    let mut buf = vec![0u8; 4 + CHUNK];
    let mut total = 0u64;
    loop {
        let n = match body.read(&mut buf[4..]).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Ok(Err(DriverError::Io {
                    context: "read the upload body".into(),
                    source: e,
                }))
            }
        };
        total += n as u64;
        if let Some(max) = max_bytes {
            if total > max {
                return Ok(Err(DriverError::TooLarge(format!(
                    "upload exceeds the limit of {max} bytes"
                ))));
            }
        }
        buf[..4].copy_from_slice(&chunk_header(n as u32));
        stream.write_all(&buf[..4 + n]).await?;
    }
    stream.write_all(&chunk_header(0)).await?;
    Ok(Ok(()))
}

/// The file API's connections: one fresh agent connection per request.
#[async_trait]
trait FileConns: AgentHost {
    /// A new connection to the sandbox's agent with `request` sent on it.
    async fn file_conn(&self, id: &str, request: &Frame) -> Result<UnixStream, DriverError> {
        let socket = self.agent_socket(id);
        let mut stream = UnixStream::connect(&socket)
            .await
            .map_err(|e| unavailable(format!("connect {}: {e}", socket.display())))?;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            software: Some(format!("warren {}", env!("CARGO_PKG_VERSION"))),
        };
        let mut out = encode(&hello).map_err(unavailable)?;
        out.extend(encode(request).map_err(|e| DriverError::Invalid(e.to_string()))?);
        stream.write_all(&out).await.map_err(unavailable)?;
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream))
            .await
            .map_err(|_| unavailable("agent did not answer the handshake within 10 s"))??;
        match answer {
            Frame::Hello { version, .. } if version >= FILES_VERSION => Ok(stream),
            Frame::Hello { version, .. } => Err(unavailable(format!(
                "the sandbox's agent speaks protocol v{version}; the file API needs v{FILES_VERSION} \
                 (recreate the sandbox)"
            ))),
            other => Err(unavailable(format!("unexpected handshake answer: {other:?}"))),
        }
    }

    /// One request, one answer frame.
    async fn file_request(&self, id: &str, request: Frame) -> Result<Frame, DriverError> {
        let mut stream = self.file_conn(id, &request).await?;
        read_frame(&mut stream).await
    }

    /// Sends `body` after `request` and waits for the agent's verdict.
    async fn file_upload(
        &self,
        id: &str,
        request: Frame,
        body: ByteStream,
        max_bytes: Option<u64>,
    ) -> Result<Frame, DriverError> {
        let mut stream = self.file_conn(id, &request).await?;
        match send_chunks(&mut stream, body, max_bytes).await {
            Ok(Ok(())) => read_frame(&mut stream).await,
            // Closing without the end marker makes the agent drop the
            // partial data.
            Ok(Err(e)) => Err(e),
            // The agent stopped reading: it refused (its answer is waiting)
            // or died.
            Err(send_error) => match read_frame(&mut stream).await {
                Ok(frame) => Ok(frame),
                Err(_) => Err(unavailable(format!("send to agent: {send_error}"))),
            },
        }
    }
}

impl<T: AgentHost + ?Sized> FileConns for T {}

#[async_trait]
impl<T: AgentHost> FileControl for T {
    async fn stat(&self, id: &str, path: &str) -> Result<FileStat, DriverError> {
        let request = Frame::FileStat(FilePathRequest {
            path: path.into(),
            ..Default::default()
        });
        info(self.file_request(id, request).await?)
    }

    async fn list(&self, id: &str, path: &str, depth: u32) -> Result<Vec<FileStat>, DriverError> {
        let request = Frame::FileList(FileListRequest {
            path: path.into(),
            depth,
            ..Default::default()
        });
        match self.file_request(id, request).await? {
            Frame::FileEntries { entries, .. } => Ok(entries.into_iter().map(stat_of).collect()),
            other => Err(unexpected(other)),
        }
    }

    async fn read(
        &self,
        id: &str,
        path: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<(FileStat, ByteStream), DriverError> {
        let request = Frame::FileRead(FileReadRequest {
            path: path.into(),
            offset,
            len,
            ..Default::default()
        });
        let mut stream = self.file_conn(id, &request).await?;
        let stat = info(read_frame(&mut stream).await?)?;
        let available = stat.size.saturating_sub(offset);
        let count = len.map_or(available, |l| l.min(available));
        let body = ExactLen {
            inner: stream,
            remaining: count,
        };
        Ok((stat, Box::pin(body)))
    }

    async fn write(
        &self,
        id: &str,
        spec: WriteSpec,
        body: ByteStream,
    ) -> Result<FileStat, DriverError> {
        let max_bytes = spec.max_bytes;
        let request = Frame::FileWrite(FileWriteRequest {
            stream: 0,
            path: spec.path,
            mode: spec.mode,
            max_bytes: spec.max_bytes,
            user: spec.user,
        });
        info(self.file_upload(id, request, body, max_bytes).await?)
    }

    async fn mkdir(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
    ) -> Result<FileStat, DriverError> {
        let request = Frame::FileMkdir(FileMkdirRequest {
            path: path.into(),
            mode,
            ..Default::default()
        });
        info(self.file_request(id, request).await?)
    }

    async fn rename(
        &self,
        id: &str,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileStat, DriverError> {
        let request = Frame::FileRename(FileRenameRequest {
            from: from.into(),
            to: to.into(),
            overwrite,
            ..Default::default()
        });
        info(self.file_request(id, request).await?)
    }

    async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), DriverError> {
        let request = Frame::FileRemove(FileRemoveRequest {
            path: path.into(),
            recursive,
            ..Default::default()
        });
        match self.file_request(id, request).await? {
            Frame::Ack { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn find(
        &self,
        id: &str,
        root: &str,
        glob: &str,
        max_results: u32,
    ) -> Result<SearchResult<FileStat>, DriverError> {
        let request = Frame::FileFind(FileFindRequest {
            root: root.into(),
            glob: glob.into(),
            max_results,
            ..Default::default()
        });
        match self.file_request(id, request).await? {
            Frame::FileEntries {
                entries, truncated, ..
            } => Ok(SearchResult {
                items: entries.into_iter().map(stat_of).collect(),
                truncated,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn grep(&self, id: &str, spec: GrepSpec) -> Result<SearchResult<GrepMatch>, DriverError> {
        let request = Frame::FileGrep(FileGrepRequest {
            stream: 0,
            root: spec.root,
            pattern: spec.pattern,
            glob: spec.glob,
            ignore_case: spec.ignore_case,
            max_matches: spec.max_matches,
            user: None,
        });
        match self.file_request(id, request).await? {
            Frame::GrepMatches {
                matches, truncated, ..
            } => Ok(SearchResult {
                items: matches
                    .into_iter()
                    .map(|m| GrepMatch {
                        path: m.path,
                        line: m.line,
                        text: m.text,
                    })
                    .collect(),
                truncated,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn download_tar(&self, id: &str, path: &str) -> Result<ByteStream, DriverError> {
        let request = Frame::TarDownload(FilePathRequest {
            path: path.into(),
            ..Default::default()
        });
        let mut stream = self.file_conn(id, &request).await?;
        match read_frame(&mut stream).await? {
            Frame::Ack { .. } => Ok(Box::pin(TarEnd::new(stream, path))),
            other => Err(unexpected(other)),
        }
    }

    async fn upload_tar(
        &self,
        id: &str,
        dir: &str,
        body: ByteStream,
        max_bytes: Option<u64>,
    ) -> Result<UnpackSummary, DriverError> {
        let request = Frame::TarUpload(TarUploadRequest {
            stream: 0,
            dir: dir.into(),
            max_bytes,
            user: None,
        });
        // The limit is on file content, which only the agent sees; the
        // archive itself is larger (headers, padding).
        match self.file_upload(id, request, body, None).await? {
            Frame::TarUnpacked { entries, bytes, .. } => Ok(UnpackSummary { entries, bytes }),
            other => Err(unexpected(other)),
        }
    }

    async fn watch(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<mpsc::Receiver<WatchEvent>, DriverError> {
        let request = Frame::FileWatch(FileWatchRequest {
            path: path.into(),
            recursive,
            ..Default::default()
        });
        let mut stream = self.file_conn(id, &request).await?;
        match read_frame(&mut stream).await? {
            Frame::Ack { .. } => {}
            other => return Err(unexpected(other)),
        }
        let (tx, rx) = mpsc::channel(WATCH_BACKLOG);
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = read_frame(&mut stream) => frame,
                    () = tx.closed() => return,
                };
                match frame {
                    Ok(Frame::FileChanged(change)) => {
                        if tx.send(event_of(change)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "file watch ended");
                        return;
                    }
                }
            }
            // Dropping `stream` closes the connection; the agent then
            // removes its watches.
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_error_codes_map_to_driver_errors() {
        let cases = [
            ("not_found", "NotFound"),
            ("conflict", "Conflict"),
            ("permission_denied", "PermissionDenied"),
            ("no_space", "NoSpace"),
            ("too_large", "TooLarge"),
            ("invalid", "Invalid"),
            ("io", "Agent"),
        ];
        for (code, variant) in cases {
            let e = file_error(Some(code), "msg: /p".into());
            assert!(format!("{e:?}").starts_with(variant), "{code} -> {e:?}");
            assert!(e.to_string().contains("msg: /p"));
        }
    }

    #[tokio::test]
    async fn exact_len_errors_on_a_short_stream() {
        let mut full = ExactLen {
            inner: &b"hello world"[..],
            remaining: 5,
        };
        let mut out = Vec::new();
        full.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello");
        let mut short = ExactLen {
            inner: &b"abc"[..],
            remaining: 5,
        };
        let mut out = Vec::new();
        let err = short.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    fn archive(entries: &[(&str, usize)], end: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, size) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(*size as u64);
            // All zeros: data that looks like end blocks must not count.
            b.append_data(&mut h, name, &vec![0u8; *size][..]).unwrap();
        }
        if end {
            b.into_inner().unwrap()
        } else {
            let out = b.get_ref().clone();
            std::mem::forget(b);
            out
        }
    }

    async fn read_through(wire: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut r = TarEnd::new(&wire[..], "/d");
        r.read_to_end(&mut out).await?;
        assert_eq!(out, wire);
        Ok(out)
    }

    #[tokio::test]
    async fn tar_streams_must_reach_their_end_blocks() {
        let long = "long/".repeat(40);
        let entries = [("a", 3000), (long.trim_end_matches('/'), 1), ("z", 0)];
        assert!(read_through(archive(&entries, true)).await.is_ok());
        assert!(read_through(archive(&[], true)).await.is_ok());
        // Cut after whole entries (whose zero data looks like end blocks),
        // inside a header, inside data: all errors.
        let cut = archive(&entries, false);
        let err = read_through(cut.clone()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("incomplete"), "{err}");
        let full = archive(&entries, true);
        for at in [0, 100, 512, 700, full.len() - 512, full.len() - 1] {
            assert!(
                read_through(full[..at].to_vec()).await.is_err(),
                "cut at {at}"
            );
        }
        // A size no archive can have.
        let mut bad = archive(&[("x", 1)], true);
        bad[124] = 0x80;
        bad[125..136].fill(0xff);
        assert!(read_through(bad).await.is_err());
    }

    #[test]
    fn header_sizes_parse_octal_and_base256() {
        let mut h = tar::Header::new_gnu();
        h.set_size(12345);
        assert_eq!(header_size(h.as_bytes()), Some(12345));
        h.set_size(1 << 40);
        assert_eq!(header_size(h.as_bytes()), Some(1 << 40));
    }

    #[tokio::test]
    async fn chunks_stop_without_end_marker_past_the_limit() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let body: ByteStream = Box::pin(&b"0123456789"[..]);
        let sent = send_chunks(&mut a, body, Some(20)).await.unwrap();
        assert!(sent.is_ok());
        drop(a);
        let mut wire = Vec::new();
        b.read_to_end(&mut wire).await.unwrap();
        assert_eq!(&wire[..4], &10u32.to_be_bytes());
        assert_eq!(&wire[4..14], b"0123456789");
        assert_eq!(&wire[14..], &0u32.to_be_bytes());

        let (mut a, mut b) = UnixStream::pair().unwrap();
        let body: ByteStream = Box::pin(&b"0123456789"[..]);
        let sent = send_chunks(&mut a, body, Some(4)).await.unwrap();
        assert!(matches!(sent, Err(DriverError::TooLarge(_))));
        drop(a);
        let mut wire = Vec::new();
        b.read_to_end(&mut wire).await.unwrap();
        // Nothing that could end the upload cleanly was sent.
        assert!(wire.is_empty());
    }
}
