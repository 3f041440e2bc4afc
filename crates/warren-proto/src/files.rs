//! File API frames (v5).
//!
//! Every file request travels on its own connection: after `hello`, the
//! daemon sends one request frame and the agent serves it on that
//! connection's thread, then closes. Bulk data never goes through JSON:
//!
//! * `file_read`, `tar_download`: the agent answers a header frame
//!   (`file_info` or `ack`, or `error`) followed by raw bytes until it closes.
//! * `file_write`, `tar_upload`: the daemon sends the data as chunks
//!   `[u32 BE length][bytes]`, a zero length ending the data (a close before
//!   the end marker aborts); the agent answers `file_info` / `tar_unpacked`
//!   or `error`.
//! * `file_watch`: the agent answers `ack` once the watches are set, then
//!   `file_changed` frames until the daemon closes the connection.
//!
//! Errors are `error` frames with a `code`: `not_found`, `conflict`,
//! `permission_denied`, `no_space`, `too_large`, `invalid` or `io`.

use serde::{Deserialize, Serialize};

/// Kind of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Regular file.
    #[default]
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Device, fifo, socket (or a kind this build does not know).
    #[serde(other)]
    Other,
}

/// Metadata of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileEntry {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Kind of entry.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid inside the sandbox.
    pub uid: u32,
    /// Owner gid inside the sandbox.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Target of a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// A request naming one path (`file_stat`, `tar_download`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FilePathRequest {
    /// Stream id.
    pub stream: u64,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// File-system identity (the sandbox's default user when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_list`: entries of a directory down to `depth` levels.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileListRequest {
    /// Stream id.
    pub stream: u64,
    /// The directory.
    pub path: String,
    /// 1 = only its children.
    pub depth: u32,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_read`: raw bytes of a regular file follow the `file_info` answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileReadRequest {
    /// Stream id.
    pub stream: u64,
    /// The file.
    pub path: String,
    /// First byte sent.
    pub offset: u64,
    /// At most this many bytes (to the end when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_write`: chunked raw bytes follow this frame.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileWriteRequest {
    /// Stream id.
    pub stream: u64,
    /// The file.
    pub path: String,
    /// Permission bits (0644 for a new file, the old file's when replacing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Refuse more than this many bytes (`too_large`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// File-system identity and owner of what is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_mkdir`: `mkdir -p`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileMkdirRequest {
    /// Stream id.
    pub stream: u64,
    /// The directory.
    pub path: String,
    /// Permission bits of created directories (0755 when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_rename`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileRenameRequest {
    /// Stream id.
    pub stream: u64,
    /// Old path.
    pub from: String,
    /// New path (parents created).
    pub to: String,
    /// Replace an existing `to`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub overwrite: bool,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_remove`; answered `ack`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileRemoveRequest {
    /// Stream id.
    pub stream: u64,
    /// The entry.
    pub path: String,
    /// Remove a directory with its contents.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_find`: entries whose path relative to `root` matches `glob`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileFindRequest {
    /// Stream id.
    pub stream: u64,
    /// Where to search.
    pub root: String,
    /// Glob (`*`, `?`, `[…]`, `**`).
    pub glob: String,
    /// Result cap.
    pub max_results: u32,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_grep`: lines matching a regular expression.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileGrepRequest {
    /// Stream id.
    pub stream: u64,
    /// Directory or file to search.
    pub root: String,
    /// Regular expression (Rust `regex` syntax).
    pub pattern: String,
    /// Only files whose name matches this glob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Case-insensitive.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
    /// Match cap.
    pub max_matches: u32,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One matching line.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GrepLine {
    /// File.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    /// The line without its newline, cut to 1000 bytes.
    pub text: String,
}

/// `tar_upload`: chunked tar bytes follow this frame.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TarUploadRequest {
    /// Stream id.
    pub stream: u64,
    /// Directory to unpack into (created).
    pub dir: String,
    /// Refuse more than this many bytes of file content (`too_large`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// File-system identity and owner of what is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `file_watch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileWatchRequest {
    /// Stream id.
    pub stream: u64,
    /// File or directory.
    pub path: String,
    /// Also watch every subdirectory, including ones created later.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
    /// File-system identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Kind of a change seen by a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Created (or moved in).
    #[default]
    Created,
    /// Written and closed, or attributes changed.
    Modified,
    /// Deleted (or moved out).
    Deleted,
    /// Renamed within the watched tree.
    Renamed,
    /// The kernel queue overflowed; events were lost.
    #[serde(other)]
    Overflow,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileChange {
    /// Stream id of the watch.
    pub stream: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Old path of a rename.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The entry is a directory.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_dir: bool,
}

/// Writes the chunk header of `len` bytes of raw data (0 = end of data).
pub fn chunk_header(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

/// Reads the data of a chunked upload as one plain byte stream: `Ok(0)`
/// after the end marker; an `UnexpectedEof` error when the sender closed
/// before it (an aborted upload).
pub struct ChunkReader<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u32,
    ended: bool,
}

impl<R: std::io::Read> ChunkReader<R> {
    /// Reads chunks from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            left: 0,
            ended: false,
        }
    }

    /// True once the end marker was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads and discards the rest of the data up to the end marker.
    pub fn drain(&mut self) -> std::io::Result<u64> {
        std::io::copy(self, &mut std::io::sink())
    }
}

impl<R: std::io::Read> std::io::Read for ChunkReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.left == 0 {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            let mut header = [0u8; 4];
            self.inner.read_exact(&mut header).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::new(e.kind(), "upload aborted before its end marker")
                } else {
                    e
                }
            })?;
            self.left = u32::from_be_bytes(header);
            if self.left == 0 {
                self.ended = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "upload aborted in the middle of a chunk",
            ));
        }
        self.left -= n as u32;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn chunked(parts: &[&[u8]], end: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&chunk_header(p.len() as u32));
            out.extend_from_slice(p);
        }
        if end {
            out.extend_from_slice(&chunk_header(0));
        }
        out
    }

    #[test]
    fn chunks_concatenate_and_stop_at_the_end_marker() {
        let mut wire = chunked(&[b"hello ", b"", b"world"], true);
        wire.extend_from_slice(b"trailing frame");
        let mut r = ChunkReader::new(&wire[..]);
        let mut data = Vec::new();
        // A tiny buffer exercises reads that split chunks.
        let mut buf = [0u8; 3];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        assert_eq!(data, b"hello ");
        // An empty chunk is the end marker: what follows it is not data.
        assert!(r.ended());
        let mut rest = Vec::new();
        r.into_inner().read_to_end(&mut rest).unwrap();
        assert_eq!(
            rest,
            chunked(&[b"world"], true)
                .iter()
                .chain(b"trailing frame")
                .copied()
                .collect::<Vec<u8>>()
        );
    }

    #[test]
    fn close_before_the_end_marker_is_an_abort() {
        for wire in [chunked(&[b"abc"], false), {
            let mut w = chunked(&[b"abcdef"], false);
            w.truncate(7);
            w
        }] {
            let mut r = ChunkReader::new(&wire[..]);
            let err = r.drain().unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
            assert!(!r.ended());
        }
        let wire = chunked(&[b"abc", b"de"], true);
        let mut r = ChunkReader::new(&wire[..]);
        assert_eq!(r.drain().unwrap(), 5);
    }
}
