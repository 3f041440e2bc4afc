//! The sandbox file API: the optional [`FileControl`] capability.
//!
//! Every path is a path inside the sandbox and is resolved inside its root
//! (the agent does the work inside the sandbox's mount namespace, opening
//! paths with `openat2(RESOLVE_IN_ROOT)`), so no request can read or write a
//! host file. Bulk data (read, write, tar) travels as raw bytes on a
//! dedicated agent connection, so memory stays flat whatever the size.

use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::driver::DriverError;

/// A stream of bytes coming out of (or going into) a sandbox.
pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// Kind of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileKind {
    /// Regular file.
    #[default]
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed for listings).
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// What `stat` says about one entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileStat {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Kind of entry.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner uid inside the sandbox.
    pub uid: u32,
    /// Owner gid inside the sandbox.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Target of a symlink.
    pub link_target: Option<String>,
}

/// How to write a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteSpec {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Permission bits of the file (`None`: 0644, or the existing file's).
    pub mode: Option<u32>,
    /// Refuse with more than this many bytes ([`DriverError::TooLarge`]);
    /// the partial file is removed.
    pub max_bytes: Option<u64>,
    /// Owner of a new file and parent directories (`None`: the sandbox's
    /// default user).
    pub user: Option<String>,
}

/// A content search.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrepSpec {
    /// Directory (or file) to search.
    pub root: String,
    /// Regular expression (Rust `regex` syntax).
    pub pattern: String,
    /// Only files whose name matches this glob.
    pub glob: Option<String>,
    /// Case-insensitive.
    pub ignore_case: bool,
    /// Stop after this many matches.
    pub max_matches: u32,
}

/// One line that matched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrepMatch {
    /// File.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    /// The line, without its newline, cut to 1000 bytes.
    pub text: String,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchResult<T> {
    /// Results, in walk order.
    pub items: Vec<T>,
    /// The cap was reached; there may be more.
    pub truncated: bool,
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// Created.
    Created,
    /// Written and closed, or attributes changed.
    Modified,
    /// Deleted.
    Deleted,
    /// Renamed (`path` is the new name, `from` the old).
    Renamed,
    /// Events were lost (the kernel queue overflowed).
    Overflow,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchKind,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Old path of a rename, when both ends were seen.
    pub from: Option<String>,
    /// The entry is a directory.
    pub is_dir: bool,
}

/// Summary of a tar upload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnpackSummary {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// File operations inside a running sandbox.
///
/// Errors: [`DriverError::NotFound`] (404), [`DriverError::Conflict`] (409:
/// a directory where a file was expected or the reverse, a non-empty
/// directory without `recursive`, an existing target), [`DriverError::PermissionDenied`]
/// (403), [`DriverError::NoSpace`] (507), [`DriverError::TooLarge`] (413),
/// [`DriverError::Invalid`] (422: a relative path, a NUL byte, a bad regex).
#[async_trait]
pub trait FileControl: Send + Sync {
    /// Metadata of one entry (symlinks are not followed for the last component).
    async fn stat(&self, id: &str, path: &str) -> Result<FileStat, DriverError>;

    /// Entries of a directory; `depth` 1 lists only its children, more
    /// descends (never through symlinks). Sorted by path.
    async fn list(&self, id: &str, path: &str, depth: u32) -> Result<Vec<FileStat>, DriverError>;

    /// Opens a regular file for reading, from `offset`, at most `len` bytes.
    /// Returns the file's stat (its full size) and the bytes.
    async fn read(
        &self,
        id: &str,
        path: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<(FileStat, ByteStream), DriverError>;

    /// Writes a file from `body`, creating parent directories. The data goes
    /// to a temporary file renamed into place at the end, so a failed or
    /// refused upload leaves no partial file and keeps the old one.
    async fn write(
        &self,
        id: &str,
        spec: WriteSpec,
        body: ByteStream,
    ) -> Result<FileStat, DriverError>;

    /// `mkdir -p` with `mode` for the directories it creates.
    async fn mkdir(&self, id: &str, path: &str, mode: Option<u32>)
        -> Result<FileStat, DriverError>;

    /// Renames `from` to `to` (parents of `to` created); refuses to replace an
    /// existing `to` unless `overwrite`.
    async fn rename(
        &self,
        id: &str,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileStat, DriverError>;

    /// Removes a file, a symlink, an empty directory, or (with `recursive`)
    /// a whole tree. Removing `/` is refused.
    async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), DriverError>;

    /// Entries under `root` whose path relative to `root` matches `glob`
    /// (`*`, `?`, `[…]`, `**`), at most `max_results`.
    async fn find(
        &self,
        id: &str,
        root: &str,
        glob: &str,
        max_results: u32,
    ) -> Result<SearchResult<FileStat>, DriverError>;

    /// Lines matching a regular expression in files under `root`.
    async fn grep(&self, id: &str, spec: GrepSpec) -> Result<SearchResult<GrepMatch>, DriverError>;

    /// A tar archive (uncompressed) of `path` (a directory or one file); the
    /// entries are named relative to `path`'s parent, like `tar -C parent name`.
    async fn download_tar(&self, id: &str, path: &str) -> Result<ByteStream, DriverError>;

    /// Unpacks an uncompressed tar archive into directory `dir` (created).
    /// Entries that would land outside `dir` are refused.
    async fn upload_tar(
        &self,
        id: &str,
        dir: &str,
        body: ByteStream,
        max_bytes: Option<u64>,
    ) -> Result<UnpackSummary, DriverError>;

    /// Watches `path` for changes until the receiver is dropped.
    async fn watch(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<mpsc::Receiver<WatchEvent>, DriverError>;
}
