//! The file API: read and write files (streamed both ways), list, search,
//! tar archives, watches and change lists.
//!
//! Uploads read from any [`AsyncRead`] and downloads hand back an
//! [`AsyncRead`], so no file is ever held whole in memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::Method;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};
use warren_api::{
    ChangeList, FileChange, FileExists, FileList, FileStat, FindResult, GrepResult, MkdirRequest,
    MoveRequest, TarUploadResult, WatchEvent,
};

use crate::process::SseParser;
use crate::routes::encode;
use crate::{error, routes, transport, Client, ClientError};

/// Size of the chunks an upload is cut into.
const CHUNK_BYTES: usize = 64 * 1024;

/// A stream of bytes from the daemon (a file, a tar archive).
pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;

/// Compression of a tar stream on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TarCompression {
    /// Plain tar.
    #[default]
    None,
    /// zstd-compressed tar (the daemon compresses or decompresses).
    Zstd,
}

impl TarCompression {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
        }
    }
}

/// A byte range of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From byte `start` to byte `end` (inclusive), or to the end of the file.
    From {
        /// First byte.
        start: u64,
        /// Last byte, inclusive; `None` for the end of the file.
        end: Option<u64>,
    },
    /// The last this-many bytes.
    Last(u64),
}

impl ByteRange {
    fn header(self) -> String {
        match self {
            Self::From {
                start,
                end: Some(end),
            } => format!("bytes={start}-{end}"),
            Self::From { start, end: None } => format!("bytes={start}-"),
            Self::Last(n) => format!("bytes=-{n}"),
        }
    }
}

/// How to write a file with [`Client::upload_file`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOptions {
    /// Permission bits (default 0644, or the existing file's).
    pub mode: Option<u32>,
    /// Owner of a new file (default: the sandbox's user).
    pub user: Option<String>,
    /// The exact size, when known: sent as `Content-Length`, so an
    /// oversized upload is refused before any byte is sent.
    pub size: Option<u64>,
}

/// A file being downloaded: what the headers said, and the bytes.
pub struct FileDownload {
    /// Bytes in this answer (the whole file, or the range).
    pub content_length: Option<u64>,
    /// Size of the whole file.
    pub file_size: Option<u64>,
    /// Permission bits of the file.
    pub mode: Option<u32>,
    /// `Last-Modified`, as sent.
    pub last_modified: Option<String>,
    /// True for a 206 answer (a range).
    pub partial: bool,
    reader: ByteReader,
}

impl std::fmt::Debug for FileDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDownload")
            .field("content_length", &self.content_length)
            .field("file_size", &self.file_size)
            .field("mode", &self.mode)
            .field("partial", &self.partial)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for FileDownload {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reader.as_mut().poll_read(cx, buf)
    }
}

/// The changes of a file watch as they happen.
pub struct WatchStream {
    body: Incoming,
    parser: SseParser,
    target: String,
}

impl WatchStream {
    /// The next event, or `None` when the daemon ends the watch.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            while let Some(raw) = self.parser.next_event() {
                match serde_json::from_str::<WatchEvent>(&raw.data) {
                    Ok(event) => return Ok(Some(event)),
                    // Events of a newer daemon that this client cannot read.
                    Err(_) if raw.event.as_deref().is_some_and(is_unknown_kind) => continue,
                    Err(e) => {
                        return Err(ClientError::Protocol(format!("bad watch event: {e}")));
                    }
                }
            }
            match transport::next_data(&mut self.body, &self.target).await? {
                Some(data) => self.parser.push(&data),
                None => return Ok(None),
            }
        }
    }
}

fn is_unknown_kind(kind: &str) -> bool {
    !matches!(
        kind,
        "created" | "modified" | "deleted" | "renamed" | "overflow"
    )
}

/// `/v1/sandboxes/{id}/files{suffix}?query`.
fn files_route(id: &str, suffix: &str, params: &[(&str, &str)]) -> String {
    with_query(format!("{}/files{suffix}", routes::sandbox(id)), params)
}

fn with_query(mut route: String, params: &[(&str, &str)]) -> String {
    for (i, (key, value)) in params.iter().enumerate() {
        route.push(if i == 0 { '?' } else { '&' });
        route.push_str(&encode(key));
        route.push('=');
        route.push_str(&encode(value));
    }
    route
}

/// A streamed request body read from `reader`.
fn body_from(reader: impl AsyncRead + Send + 'static) -> transport::StreamingBody {
    let frames = ReaderStream::with_capacity(reader, CHUNK_BYTES).map_ok(Frame::data);
    BodyExt::boxed_unsync(StreamBody::new(frames))
}

fn empty_body() -> transport::StreamingBody {
    BodyExt::boxed_unsync(Empty::<Bytes>::new().map_err(|never| match never {}))
}

/// A response body as a reader.
fn reader_from(body: Incoming) -> ByteReader {
    Box::pin(StreamReader::new(
        body.into_data_stream().map_err(io::Error::other),
    ))
}

fn header_text(response: &hyper::Response<Incoming>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Client {
    /// Sends a request with a streamed (or empty) body; a non-2xx answer
    /// becomes the API error, a 2xx one is returned unread.
    async fn open_streaming(
        &self,
        method: Method,
        route: &str,
        headers: &[(&'static str, String)],
        body: Option<transport::StreamingBody>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let (status, response) = transport::send_body_response(
            &self.target,
            self.api_key.as_deref(),
            method,
            route,
            headers,
            body.unwrap_or_else(empty_body),
        )
        .await?;
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Err(error::api_error(status, &bytes))
    }

    /// `GET …/files/stat`: metadata of one entry (a symlink itself, not its
    /// target).
    pub async fn stat_file(&self, id: &str, path: &str) -> Result<FileStat, ClientError> {
        let route = files_route(id, "/stat", &[("path", path)]);
        self.call(Method::GET, &route, None::<&()>).await
    }

    /// `GET …/files/exists`: whether something is at `path`.
    pub async fn file_exists(&self, id: &str, path: &str) -> Result<FileExists, ClientError> {
        let route = files_route(id, "/exists", &[("path", path)]);
        self.call(Method::GET, &route, None::<&()>).await
    }

    /// `GET …/files/list`: entries of a directory, `depth` levels down
    /// (1: its children), sorted by path.
    pub async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: u32,
    ) -> Result<Vec<FileStat>, ClientError> {
        let depth = depth.to_string();
        let route = files_route(id, "/list", &[("path", path), ("depth", &depth)]);
        let list: FileList = self.call(Method::GET, &route, None::<&()>).await?;
        Ok(list.entries)
    }

    /// `POST …/files/mkdir`: `mkdir -p`, with `mode` for the directories
    /// it creates.
    pub async fn make_dir(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
    ) -> Result<FileStat, ClientError> {
        let req = MkdirRequest {
            path: path.to_owned(),
            mode,
        };
        let route = files_route(id, "/mkdir", &[]);
        self.call(Method::POST, &route, Some(&req)).await
    }

    /// `POST …/files/move`: renames `from` to `to`; an existing `to` is
    /// replaced only with `overwrite`.
    pub async fn move_file(
        &self,
        id: &str,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileStat, ClientError> {
        let req = MoveRequest {
            from: from.to_owned(),
            to: to.to_owned(),
            overwrite: overwrite.then_some(true),
        };
        let route = files_route(id, "/move", &[]);
        self.call(Method::POST, &route, Some(&req)).await
    }

    /// `DELETE …/files`: removes a file, a symlink, an empty directory, or
    /// with `recursive` a whole tree.
    pub async fn remove_file(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ClientError> {
        let recursive = if recursive { "true" } else { "false" };
        let route = files_route(id, "", &[("path", path), ("recursive", recursive)]);
        self.send(Method::DELETE, &route, None::<&()>)
            .await
            .map(drop)
    }

    /// `GET …/files/find`: entries under `root` whose relative path matches
    /// `glob`, at most `limit` (default 1000).
    pub async fn find_files(
        &self,
        id: &str,
        root: &str,
        glob: &str,
        limit: Option<u32>,
    ) -> Result<FindResult, ClientError> {
        let limit = limit.map(|l| l.to_string());
        let mut params = vec![("path", root), ("glob", glob)];
        if let Some(limit) = &limit {
            params.push(("limit", limit));
        }
        let route = files_route(id, "/find", &params);
        self.call(Method::GET, &route, None::<&()>).await
    }

    /// `GET …/files/grep`: lines matching the regular expression `pattern`
    /// in files under `root` (only those whose name matches `glob`, if given).
    pub async fn grep_files(
        &self,
        id: &str,
        root: &str,
        pattern: &str,
        glob: Option<&str>,
        ignore_case: bool,
        limit: Option<u32>,
    ) -> Result<GrepResult, ClientError> {
        let limit = limit.map(|l| l.to_string());
        let mut params = vec![("path", root), ("pattern", pattern)];
        if let Some(glob) = glob {
            params.push(("glob", glob));
        }
        if ignore_case {
            params.push(("ignoreCase", "true"));
        }
        if let Some(limit) = &limit {
            params.push(("limit", limit));
        }
        let route = files_route(id, "/grep", &params);
        self.call(Method::GET, &route, None::<&()>).await
    }

    /// `PUT …/files`: writes `path` from `reader`, streamed. Parent
    /// directories are created; a failed upload leaves no partial file.
    ///
    /// ```no_run
    /// # async fn demo(client: &warren_client::Client, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let file = tokio::fs::File::open("data.csv").await?;
    /// let size = file.metadata().await?.len();
    /// let options = warren_client::UploadOptions { size: Some(size), ..Default::default() };
    /// let stat = client.upload_file(id, "/workspace/data.csv", file, &options).await?;
    /// assert_eq!(stat.size, size);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn upload_file(
        &self,
        id: &str,
        path: &str,
        reader: impl AsyncRead + Send + 'static,
        options: &UploadOptions,
    ) -> Result<FileStat, ClientError> {
        let mode = options.mode.map(|m| format!("{m:04o}"));
        let mut params = vec![("path", path)];
        if let Some(mode) = &mode {
            params.push(("mode", mode));
        }
        if let Some(user) = &options.user {
            params.push(("user", user));
        }
        let route = files_route(id, "", &params);
        let mut headers = vec![("content-type", "application/octet-stream".to_owned())];
        if let Some(size) = options.size {
            headers.push(("content-length", size.to_string()));
        }
        let response = self
            .open_streaming(Method::PUT, &route, &headers, Some(body_from(reader)))
            .await?;
        read_json(&self.target.to_string(), response).await
    }

    /// `GET …/files`: the file's bytes as they arrive, optionally only a
    /// range of them.
    ///
    /// ```no_run
    /// # async fn demo(client: &warren_client::Client, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use warren_client::ByteRange;
    /// let mut tail = client
    ///     .download_file(id, "/workspace/log.txt", Some(ByteRange::Last(4096)))
    ///     .await?;
    /// let mut out = tokio::fs::File::create("log-tail.txt").await?;
    /// tokio::io::copy(&mut tail, &mut out).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn download_file(
        &self,
        id: &str,
        path: &str,
        range: Option<ByteRange>,
    ) -> Result<FileDownload, ClientError> {
        let route = files_route(id, "", &[("path", path)]);
        let headers: Vec<(&'static str, String)> = range
            .map(|r| vec![("range", r.header())])
            .unwrap_or_default();
        let response = self
            .open_streaming(Method::GET, &route, &headers, None)
            .await?;
        let number = |name: &str| header_text(&response, name).and_then(|v| v.parse::<u64>().ok());
        let content_length = number("content-length");
        let partial = response.status().as_u16() == 206;
        let file_size = if partial {
            header_text(&response, "content-range")
                .and_then(|v| v.rsplit('/').next().and_then(|n| n.parse().ok()))
        } else {
            content_length
        };
        let mode = header_text(&response, "x-warren-mode")
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok());
        let last_modified = header_text(&response, "last-modified");
        Ok(FileDownload {
            content_length,
            file_size,
            mode,
            last_modified,
            partial,
            reader: reader_from(response.into_body()),
        })
    }

    /// `GET …/files/tar`: a tar archive of `path` (entries named relative to
    /// its parent), streamed.
    pub async fn download_tar(
        &self,
        id: &str,
        path: &str,
        compression: TarCompression,
    ) -> Result<ByteReader, ClientError> {
        let route = files_route(
            id,
            "/tar",
            &[("path", path), ("compression", compression.as_str())],
        );
        let response = self.open_streaming(Method::GET, &route, &[], None).await?;
        Ok(reader_from(response.into_body()))
    }

    /// `PUT …/files/tar`: unpacks the tar archive read from `reader` into
    /// directory `dir` (created if missing).
    pub async fn upload_tar(
        &self,
        id: &str,
        dir: &str,
        reader: impl AsyncRead + Send + 'static,
        compression: TarCompression,
    ) -> Result<TarUploadResult, ClientError> {
        let route = files_route(
            id,
            "/tar",
            &[("path", dir), ("compression", compression.as_str())],
        );
        let headers = [("content-type", "application/x-tar".to_owned())];
        let response = self
            .open_streaming(Method::PUT, &route, &headers, Some(body_from(reader)))
            .await?;
        read_json(&self.target.to_string(), response).await
    }

    /// `GET …/files/watch`: changes under `path` as they happen, until the
    /// stream is dropped.
    pub async fn watch_files(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<WatchStream, ClientError> {
        let recursive = if recursive { "true" } else { "false" };
        let route = files_route(id, "/watch", &[("path", path), ("recursive", recursive)]);
        let headers = [("accept", "text/event-stream".to_owned())];
        let response = self
            .open_streaming(Method::GET, &route, &headers, None)
            .await?;
        Ok(WatchStream {
            body: response.into_body(),
            parser: SseParser::default(),
            target: self.target.to_string(),
        })
    }

    /// `GET …/changes`: every path the sandbox added, modified or deleted
    /// relative to its image, sorted by path.
    pub async fn changes(&self, id: &str) -> Result<Vec<FileChange>, ClientError> {
        let route = format!("{}/changes", routes::sandbox(id));
        let list: ChangeList = self.call(Method::GET, &route, None::<&()>).await?;
        Ok(list.changes)
    }

    /// `GET …/changes?format=tar`: the changes as a tar stream in OCI layer
    /// form (deletions as `.wh.` entries).
    pub async fn changes_tar(
        &self,
        id: &str,
        compression: TarCompression,
    ) -> Result<ByteReader, ClientError> {
        let route = with_query(
            format!("{}/changes", routes::sandbox(id)),
            &[("format", "tar"), ("compression", compression.as_str())],
        );
        let response = self.open_streaming(Method::GET, &route, &[], None).await?;
        Ok(reader_from(response.into_body()))
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    target: &str,
    response: hyper::Response<Incoming>,
) -> Result<T, ClientError> {
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Http {
            target: target.to_owned(),
            source,
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol(format!("invalid JSON in a file API answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_encode_paths_as_query_values() {
        assert_eq!(
            files_route("abc", "/stat", &[("path", "/a b/c&d=e")]),
            "/v1/sandboxes/abc/files/stat?path=%2Fa%20b%2Fc%26d%3De"
        );
        assert_eq!(
            files_route("abc", "/mkdir", &[]),
            "/v1/sandboxes/abc/files/mkdir"
        );
    }

    #[test]
    fn range_headers() {
        let from = |start, end| ByteRange::From { start, end };
        assert_eq!(from(0, Some(9)).header(), "bytes=0-9");
        assert_eq!(from(5, None).header(), "bytes=5-");
        assert_eq!(ByteRange::Last(3).header(), "bytes=-3");
    }
}
